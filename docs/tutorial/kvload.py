"""Tutorial, step 4: load kvserver.py from a pool of workers fed by a Queue.

``python kvload.py 10000`` stores 10,000 keys through 8 connections and
prints the rate.
"""

import sys
import time

import bluelet
import kvclient


def feed(jobs, commands, workers):
    """Queue every command, then one None per worker: "no more"."""
    for command in commands:
        yield jobs.put(command)  # waits while the queue is full
    for _ in range(workers):
        yield jobs.put(None)


def worker(host, port, jobs):
    """Send commands from ``jobs`` over one connection; return the replies."""
    conn = yield kvclient.connect(host, port)
    try:
        replies = []
        while True:
            command = yield jobs.get()  # waits while the queue is empty
            if command is None:
                return replies
            replies.append((yield kvclient.request(conn, command)))
    finally:
        conn.close()


def load(host, port, commands, workers=8):
    """Send ``commands`` over ``workers`` connections; return all replies."""
    # Bounded, so the feeder runs only a little ahead of the workers
    # however many commands there are.
    jobs = bluelet.Queue(maxsize=2 * workers)
    results = yield bluelet.join_all(
        [feed(jobs, commands, workers)]
        + [worker(host, port, jobs) for _ in range(workers)])
    return [reply for replies in results[1:] for reply in replies]


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    commands = ["SET key%d value%d" % (i, i) for i in range(count)]
    started = time.perf_counter()
    replies = bluelet.run(load("127.0.0.1", 4916, commands))
    elapsed = time.perf_counter() - started
    print("%d replies in %.2f s (%.0f requests/s)"
          % (len(replies), elapsed, len(replies) / elapsed))
