"""Tutorial, steps 2 and 5: a key-value server speaking a line protocol.

One command per line, one reply line each::

    SET key value   ->  OK
    GET key         ->  the value, or NOT FOUND
    DEL key         ->  OK, or NOT FOUND

Run it with ``python kvserver.py [PORT [SNAPSHOT.json]]`` (port 4916 by
default); with a snapshot file it saves the store there every 10 seconds and
when stopped with Ctrl-C.
"""

import json
import os
import sys

import bluelet


def execute(store, words):
    """Carry out one command (a list of words) on ``store``; return a reply."""
    if len(words) == 3 and words[0] == "SET":
        store[words[1]] = words[2]
        return "OK"
    if len(words) == 2 and words[0] == "GET":
        return store.get(words[1], "NOT FOUND")
    if len(words) == 2 and words[0] == "DEL":
        found = store.pop(words[1], None) is not None
        return "OK" if found else "NOT FOUND"
    return "ERROR expected SET key value, GET key or DEL key"


def session(store, conn):
    """Answer one client's commands until it hangs up."""
    while True:
        line = yield conn.readline()
        if not line.endswith(b"\n"):  # end of stream (b"" or half a line)
            return
        words = line.decode("utf-8", "replace").split()
        reply = execute(store, words)
        yield conn.sendall(reply.encode("utf-8") + b"\n")


def save(store, path):
    """Write ``store`` to ``path`` as JSON. Blocks: run it in a thread."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(store, f)
    # Readers see the old file or the new one, never half of one.
    os.replace(temporary, path)


def snapshot(store, path, every):
    """Save ``store`` to ``path`` every ``every`` seconds, for ever."""
    while True:
        yield bluelet.sleep(every)
        # A copy: the thread must not read the dict while sessions change it.
        yield bluelet.to_thread(save, dict(store), path)


def main(port=4916, path=None):
    """Serve on 127.0.0.1:``port`` until Ctrl-C; snapshots go to ``path``."""
    store = {}
    if path:
        yield bluelet.spawn(snapshot(store, path, every=10))
    yield bluelet.server("127.0.0.1", port, lambda conn: session(store, conn))
    # Ctrl-C stopped the server once its sessions had finished (or after
    # its grace period); the snapshot loop is cancelled when main returns.
    if path:
        yield bluelet.to_thread(save, store, path)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 4916
    path = sys.argv[2] if len(sys.argv) > 2 else None
    bluelet.run(main(port, path), handle_signals=True)
