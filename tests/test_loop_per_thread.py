"""One loop per thread: several loops running at once in one process, each
in its own thread, handing data across with Completion -- on both cores, and
with the GIL off on a free-threaded interpreter."""

import queue
import socket
import sys
import sysconfig
import threading
import time

import pytest

import bluelet
from _helpers import free_port

pytestmark = pytest.mark.timeout(60)

THREADS = 8
ITEMS = 300


def test_eight_loops_hand_items_around_a_ring_through_completions(core):
    # Thread i's loop receives items for it from thread i-1: the sender
    # takes a Completion that thread i's loop made (from a thread-safe
    # queue) and delivers an item into it. Every item must arrive once.
    slots = [queue.Queue() for _ in range(THREADS)]
    received = [[] for _ in range(THREADS)]
    failures = []

    def receiver(i):
        for _ in range(ITEMS):
            completion = bluelet.Completion()
            slots[i].put(completion)
            received[i].append((yield completion))

    def sender(i):
        target = slots[(i + 1) % THREADS]
        for n in range(ITEMS):
            completion = yield bluelet.to_thread(target.get, True, 30)
            completion.set_result((i, n))
            if n % 16 == 0:
                yield bluelet.null()

    def main(i):
        yield bluelet.join_all([receiver(i), sender(i)])

    def thread(i):
        try:
            bluelet.run(main(i))
        except BaseException as error:  # reported by the test, in its thread
            failures.append((i, error))

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    for i, items in enumerate(received):
        assert items == [((i - 1) % THREADS, n) for n in range(ITEMS)]


def test_a_queue_shared_by_two_threads_loops_is_refused_where_it_is_woken(core):
    flag = bluelet.Flag()
    waiting = threading.Event()
    outcome = []

    def waiter():
        waiting.set()
        outcome.append((yield flag.wait()))

    def own_loop():
        yield bluelet.spawn(waiter())
        # Woken by its own loop at last (after the other thread's refusal),
        # it has kept its place.
        yield bluelet.to_thread(refused.wait, 30)
        flag.set()

    refused = threading.Event()

    def other_loop():
        yield bluelet.to_thread(waiting.wait, 30)
        with pytest.raises(RuntimeError, match="another thread's loop.*Completion"):
            flag.set()
        refused.set()

    thread = threading.Thread(target=lambda: bluelet.run(own_loop()))
    thread.start()
    try:
        bluelet.run(other_loop())
    finally:
        refused.set()
        thread.join(30)
    assert outcome == [True]


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="a GIL build: the GIL is on whatever bluelet declares")
def test_importing_bluelet_leaves_the_gil_off():
    # The compiled core declares itself safe without the GIL; an undeclared
    # extension would turn it back on at import.
    assert not sys._is_gil_enabled()


GIL_OFF = bool(sysconfig.get_config_var("Py_GIL_DISABLED")) and not sys._is_gil_enabled()


def _echo(conn):
    while True:
        data = yield conn.recv(100)
        if not data:
            return
        yield conn.sendall(threading.current_thread().name.encode() + b" " + data)


@pytest.mark.skipif(GIL_OFF, reason="the GIL is off here: server(threads=N) serves")
def test_server_threads_is_refused_with_the_gil_pointing_to_workers(core):
    with pytest.raises(RuntimeError, match=r"free-threaded Python.*use workers=4"):
        bluelet.server("127.0.0.1", 0, _echo, threads=4)


@pytest.mark.skipif(not GIL_OFF or not sys.platform.startswith("linux"),
                    reason="needs the GIL off (3.13t, 3.14t) and Linux's SO_REUSEPORT")
def test_server_threads_serves_each_connection_in_one_of_its_threads(core):
    port = free_port()

    def client(n):
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        with sock:
            sock.sendall(b"%d" % n)
            return sock.recv(100).decode()

    def main():
        serving = bluelet.server("127.0.0.1", port, _echo, threads=4, grace=1)
        yield bluelet.spawn(serving)
        replies = yield bluelet.join_all([bluelet.to_thread(client, n) for n in range(40)])
        yield bluelet.kill(serving)
        return replies

    replies = bluelet.run(main())
    assert [reply.split()[1] for reply in replies] == [str(n) for n in range(40)]
    names = {reply.split()[0] for reply in replies}
    assert names <= {"bluelet-server-%d" % n for n in range(4)} and len(names) >= 2
    # Every thread's loop has ended and closed its listener: the port is free.
    assert not any(t.name.startswith("bluelet-server-") for t in threading.enumerate())
    with socket.socket() as probe:
        with pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))


RUNS_LEAVE_NO_LOOP = """
import gc, sys
import bluelet
from bluelet import _impl

def child():
    yield bluelet.sleep(0)

def main():
    yield bluelet.spawn(child())
    yield bluelet.sleep(0)

_impl.use(sys.argv[1])
for _ in range(3):
    bluelet.run(main())
gc.collect()
print(len([o for o in gc.get_objects() if type(o) is _impl.Loop]))
"""


def test_a_finished_run_leaves_no_loop_behind(core, tmp_path):
    # Task records point at their loop while they run; a record kept past
    # the run (the root's) must not keep the loop alive, since the compiled
    # core's records are not seen by the cyclic collector. In a fresh
    # interpreter: what other tests hold (a traceback, say) does not count.
    import subprocess

    from _helpers import core_env

    # cwd: sys.path[0] for -c; a source tree there would shadow the bluelet
    # under test (in CI, the installed one).
    done = subprocess.run([sys.executable, "-c", RUNS_LEAVE_NO_LOOP, core], env=core_env(core),
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def _reader_in_a_thread(conn):
    """Start a thread whose own loop waits in ``conn.recv``; returns the
    thread, an Event set once the loop is parked on the socket, and the
    list the thread's outcome goes to."""
    parked, outcome = threading.Event(), []

    def reader():
        try:
            yield conn.recv(10)
        except bluelet.SocketClosedError as exc:
            outcome.append(exc)

    def watch(coro):
        # Set once the reader really waits on the descriptor in this loop,
        # so the close below is the cross-loop case, not a closed() check.
        for _ in range(5000):
            if any(t.coroutine is coro and t.state == "io" for t in bluelet.tasks()):
                parked.set()
                return
            yield bluelet.sleep(0.001)

    def root():
        coro = reader()
        yield bluelet.spawn(coro)
        yield bluelet.spawn(watch(coro))
        yield bluelet.join(coro)

    thread = threading.Thread(target=bluelet.run, args=(root(),), daemon=True)
    thread.start()
    return thread, parked, outcome


@pytest.mark.parametrize("closer", ["plain thread", "another loop"])
def test_a_close_in_one_thread_wakes_a_waiter_in_another_threads_loop(core, closer):
    ours, theirs = socket.socketpair()
    conn = bluelet.Connection(ours, "pair")
    try:
        thread, parked, outcome = _reader_in_a_thread(conn)
        assert parked.wait(10), "the reader never waited on the socket"
        if closer == "plain thread":
            conn.close()
        else:
            def close_it():
                conn.close()
                yield bluelet.null()

            bluelet.run(close_it())
        thread.join(10)
        assert not thread.is_alive(), "the waiter in the other loop was never woken"
        assert len(outcome) == 1 and "closed" in str(outcome[0])
    finally:
        conn.close()
        theirs.close()
