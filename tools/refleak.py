"""Reference-leak check of both cores, on a debug interpreter.

Run by tools/check_memory.sh with Debian's python3.11-dbg, from a copy of the
tree with the compiled core built in place. Each scenario is a bluelet
program of about a thousand events; it runs three times to warm up (free
lists, caches, interned strings), then ``ROUNDS`` times more, with
``sys.gettotalrefcount()`` read after each (and a garbage collection). A
scenario leaks if the count grows in every measured round and by more than
``SLACK`` references a round in all: one reference lost per event shows as
about a thousand a round. Exits 1 naming the leaking scenarios.
"""

import contextvars
import gc
import os
import ssl
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bluelet  # noqa: E402
from bluelet import _impl  # noqa: E402

ROUNDS = 5
SLACK = 20
HOST = "127.0.0.1"
VAR = contextvars.ContextVar("refleak", default=None)


def sleeper(seconds):
    VAR.set(seconds)
    yield bluelet.sleep(seconds)


def spawn_kill():
    def root():
        gens = [sleeper(10) for _ in range(300)]
        for gen in gens:
            yield bluelet.spawn(gen)
        yield bluelet.null()
        for gen in gens:
            yield bluelet.kill(gen)
        quick = [sleeper(0) for _ in range(300)]
        for gen in quick:
            yield bluelet.spawn(gen)
        for gen in quick:
            yield bluelet.join(gen)
    bluelet.run(root(), virtual_time=True)


def scopes():
    def failing():
        yield bluelet.sleep(1)

    def root():
        for _ in range(200):
            yield bluelet.timeout(1, bluelet.null())
            yield bluelet.move_on_after(0.001, bluelet.sleep(1))
            yield bluelet.shield(bluelet.ValueEvent(1))
            try:
                yield bluelet.fail_after(0.001, failing())
            except bluelet.Timeout:
                pass
    bluelet.run(root(), virtual_time=True)


def task_groups():
    def member(fail):
        yield bluelet.sleep(0.01)
        if fail:
            raise ValueError("member failed")

    def body(group):
        for i in range(5):
            yield group.spawn(member(i == 4))

    def root():
        for _ in range(40):
            try:
                yield bluelet.task_group(body)
            except Exception:
                pass
    bluelet.run(root(), virtual_time=True)


def queues():
    def producer(queue, lock):
        for i in range(500):
            yield lock.acquire()
            lock.release()
            yield queue.put(i)

    def root():
        queue, lock = bluelet.Queue(4), bluelet.Lock()
        yield bluelet.spawn(producer(queue, lock))
        for _ in range(500):
            yield queue.get()
    bluelet.run(root(), virtual_time=True)


def echo_pair(context=None, client_context=None, exchanges=100):
    def handler(conn):
        try:
            while True:
                line = yield conn.readline()
                if not line:
                    break
                yield conn.sendall(line)
        finally:
            conn.close()

    def root():
        listener = bluelet.Listener(HOST, 0, ssl=context)
        srv = accept_loop(listener, handler)
        yield bluelet.spawn(srv)
        for _ in range(2):
            conn = yield bluelet.connect(HOST, listener.port, ssl=client_context,
                                         server_hostname="localhost" if client_context else None)
            for i in range(exchanges):
                yield conn.sendall(b"line %d\n" % i)
                yield conn.readline()
            conn.close()
        yield bluelet.kill(srv)
        listener.close()
    bluelet.run(root())


def accept_loop(listener, handler):
    while True:
        conn = yield listener.accept()
        yield bluelet.spawn(handler(conn))


def echo():
    echo_pair()


def tls_contexts():
    directory = tempfile.mkdtemp(prefix="bluelet-refleak-")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


def main():
    if not hasattr(sys, "gettotalrefcount"):
        raise SystemExit("tools/refleak.py needs a debug interpreter (sys.gettotalrefcount)")
    server_ctx, client_ctx = tls_contexts()

    def tls():
        echo_pair(server_ctx, client_ctx, exchanges=30)

    scenarios = [spawn_kill, scopes, task_groups, queues, echo, tls]
    leaks = []
    for core in ("cython", "python"):
        _impl.use(core)
        for scenario in scenarios:
            for _ in range(3):
                scenario()
            gc.collect()
            counts = [sys.gettotalrefcount()]
            for _ in range(ROUNDS):
                scenario()
                gc.collect()
                counts.append(sys.gettotalrefcount())
            steps = [b - a for a, b in zip(counts, counts[1:])]
            growth = counts[-1] - counts[0]
            leaking = all(step > 0 for step in steps) and growth > SLACK * ROUNDS
            print("%-7s %-12s refs per round %s%s" % (
                core, scenario.__name__, steps, "  LEAK" if leaking else ""), flush=True)
            if leaking:
                leaks.append("%s on the %s core" % (scenario.__name__, core))
    if leaks:
        print("reference leaks: " + ", ".join(leaks), file=sys.stderr)
        raise SystemExit(1)
    print("refleak: no steady growth in %d scenarios on both cores" % len(scenarios))


if __name__ == "__main__":
    main()
