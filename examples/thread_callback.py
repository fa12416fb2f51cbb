"""A thread calling back into the loop: ``bluelet.from_thread``.

    python examples/thread_callback.py

A blocking library -- here a "sensor" read with ``time.sleep`` -- runs in a
plain thread and hands each reading to the loop with
``from_thread.run_sync`` (a function called in the loop's thread) and asks
the loop to do I/O for it with ``from_thread.run`` (a coroutine, whose
result comes back to the thread). ``bluelet.current_token()``, taken in the
loop, names the loop for the thread.
"""

import threading
import time

import bluelet
from bluelet import from_thread


def sensor(token, readings, stop):
    """The blocking side: a plain thread."""
    for value in range(1, 4):
        time.sleep(0.01)  # a blocking read
        from_thread.run_sync(readings.put_nowait, value, token=token)
    ack = from_thread.run(acknowledge(3), token=token)  # waits for the coroutine
    print("thread got", ack)
    from_thread.run_sync(readings.put_nowait, stop, token=token)


def acknowledge(count):
    yield bluelet.sleep(0.01)  # I/O the loop does for the thread
    return "ack %d readings" % count


def main():
    readings = bluelet.Queue()
    stop = object()
    thread = threading.Thread(target=sensor, args=(bluelet.current_token(), readings, stop))
    thread.start()
    # Waiting for the thread tells the loop a thread will call in: with
    # every coroutine waiting on the queue alone, it would report a deadlock.
    joiner = bluelet.to_thread(thread.join)
    yield bluelet.spawn(joiner)
    while True:
        value = yield readings.get()
        if value is stop:
            break
        print("loop got reading", value)
    yield bluelet.join(joiner)


if __name__ == "__main__":
    bluelet.run(main())
