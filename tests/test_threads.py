"""to_thread, the thread limit, and read/write on regular files through threads.

Every test takes the ``core`` fixture (runs once per scheduler core). Calls
that must block wait on ``threading.Event``s the test controls, always with
a timeout, so nothing depends on the machine's speed and nothing can hang.
"""

import os
import subprocess
import sys
import textwrap
import threading

import pytest

import bluelet
from _helpers import core_env

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0  # seconds: an upper bound for things that happen "at once"


class Boom(Exception):
    """An exception no library code raises by itself."""


@pytest.fixture
def thread_limit():
    """Set the pool size for one test; restore the previous one after."""
    previous = []

    def set_limit(n):
        previous.append(bluelet.set_thread_limit(n))

    yield set_limit
    if previous:
        bluelet.set_thread_limit(previous[0])


# ---------------------------------------------------------------------------
# Results and exceptions
# ---------------------------------------------------------------------------


def test_result_of_the_call(core):
    def add(a, b, *, scale):
        return (a + b) * scale, threading.get_ident()

    def root():
        return (yield bluelet.to_thread(add, 1, 2, scale=10))

    value, ident = bluelet.run(root())
    assert value == 30
    assert ident != threading.get_ident()


def test_exception_raised_at_the_yield(core):
    def fail():
        raise Boom("from the thread")

    def root():
        try:
            yield bluelet.to_thread(fail)
        except Boom as error:
            return str(error), error.__traceback__ is not None
        return "not raised"

    assert bluelet.run(root()) == ("from the thread", True)


def test_uncaught_thread_exception_ends_run(core):
    def fail():
        raise Boom("nobody caught me")

    def root():
        yield bluelet.to_thread(fail)

    with pytest.raises(Boom, match="nobody caught me"):
        bluelet.run(root())


def test_not_callable_is_a_type_error_at_the_call(core):
    with pytest.raises(TypeError):
        bluelet.to_thread(42)


def test_other_coroutines_run_while_a_call_blocks(core):
    release = threading.Event()
    trace = []

    def blocking():
        return release.wait(WAIT)

    def other():
        for i in range(3):
            trace.append(i)
            yield bluelet.null()
        release.set()  # only reachable if the loop was not blocked

    def root():
        yield bluelet.spawn(other())
        released = yield bluelet.to_thread(blocking)
        trace.append("back")
        return released

    assert bluelet.run(root()) is True
    assert trace == [0, 1, 2, "back"]


def _gather(calls):
    """Spawn every call, then join them in order: their results."""
    for call in calls:
        yield bluelet.spawn(call)
    results = []
    for call in calls:
        results.append((yield bluelet.join(call)))
    return results


def test_spawned_call_is_joined_for_its_result(core):
    calls = [bluelet.to_thread(pow, 2, n) for n in range(5)]
    assert bluelet.run(_gather(calls)) == [1, 2, 4, 8, 16]


# ---------------------------------------------------------------------------
# Cancellation: killed or timed out while the thread works
# ---------------------------------------------------------------------------


def test_killed_while_waiting_drops_the_result(core):
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    events = []

    def blocking():
        started.set()
        release.wait(WAIT)
        finished.set()
        return "dropped"

    def waiter():
        try:
            events.append((yield bluelet.to_thread(blocking)))
        finally:
            events.append("waiter finally")

    def root():
        w = waiter()
        yield bluelet.spawn(w)
        yield bluelet.to_thread(started.wait, WAIT)  # w's call is running now
        yield bluelet.kill(w)
        events.append("killed")
        release.set()
        # The loop lives on while the abandoned call finishes; nothing comes back.
        done = yield bluelet.to_thread(finished.wait, WAIT)
        return done, (yield bluelet.join(w))

    assert bluelet.run(root()) == (True, None)
    assert events == ["waiter finally", "killed"]


def test_timeout_while_waiting_raises_timeout(core):
    release = threading.Event()

    def root():
        try:
            yield bluelet.timeout(0.05, bluelet.to_thread(release.wait, WAIT))
        except bluelet.Timeout:
            return "timed out"
        finally:
            release.set()
        return "finished"

    assert bluelet.run(root()) == "timed out"


def test_call_not_started_never_runs_once_its_waiter_is_killed(core, thread_limit):
    thread_limit(1)
    release = threading.Event()
    ran = []

    def root():
        first = bluelet.to_thread(release.wait, WAIT)
        queued = bluelet.to_thread(ran.append, "queued call ran")
        yield bluelet.spawn(first)
        yield bluelet.spawn(queued)
        yield bluelet.null()  # both handed to the pool; the one thread is busy
        yield bluelet.kill(queued)
        release.set()
        yield bluelet.join(first)
        # Same pool, one thread: a call made now runs after anything queued.
        yield bluelet.to_thread(ran.append, "later call ran")

    bluelet.run(root())
    assert ran == ["later call ran"]


# ---------------------------------------------------------------------------
# The pool's bound
# ---------------------------------------------------------------------------


def test_many_calls_run_at_most_limit_at_once(core, thread_limit):
    limit, calls = 3, 12
    thread_limit(limit)
    # Every call waits until `limit` calls are inside at once: with fewer
    # threads the barrier breaks (after WAIT); with more, `peak` shows it.
    barrier = threading.Barrier(limit, timeout=WAIT)
    lock = threading.Lock()
    active = [0]
    peak = [0]

    def work(n):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            barrier.wait()
            return n * n
        finally:
            with lock:
                active[0] -= 1

    results = bluelet.run(_gather([bluelet.to_thread(work, n) for n in range(calls)]))
    assert results == [n * n for n in range(calls)]
    assert peak[0] == limit


def test_set_thread_limit_returns_the_previous_limit(core, thread_limit):
    thread_limit(2)
    assert bluelet.set_thread_limit(5) == 2
    assert bluelet.set_thread_limit(None) == 5
    default = bluelet.set_thread_limit(2)
    assert default == min(32, (os.cpu_count() or 1) + 4)
    for bad in (0, -1, 1.5, "4"):
        with pytest.raises(ValueError):
            bluelet.set_thread_limit(bad)


def test_pending_calls_are_withdrawn_at_interpreter_exit(core, tmp_path):
    # A loop still running in a daemon thread when the program ends: its
    # queued calls must not run (each would take a second) nor be waited for.
    script = tmp_path / "exit.py"
    script.write_text(textwrap.dedent("""
        import sys, threading, time
        import bluelet

        bluelet.set_thread_limit(1)
        started = threading.Event()

        def first():
            started.set()
            time.sleep(0.2)

        def queued(n):
            time.sleep(1)
            print("queued call", n, "ran", flush=True)

        def root():
            yield bluelet.spawn(bluelet.to_thread(first))
            for n in range(10):
                yield bluelet.spawn(bluelet.to_thread(queued, n))

        threading.Thread(target=bluelet.run, args=(root(),), daemon=True).start()
        started.wait(5)
        print(bluelet.IMPLEMENTATION, "main thread exits", flush=True)
    """))
    env = core_env(core)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=8, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "%s main thread exits\n" % core


# ---------------------------------------------------------------------------
# read / write on regular files go through threads
# ---------------------------------------------------------------------------


class _Traced:
    """A file object that records the thread each read and write ran in."""

    def __init__(self, f):
        self._f = f
        self.threads = set()

    def fileno(self):
        return self._f.fileno()

    def read(self, *args):
        self.threads.add(threading.get_ident())
        return self._f.read(*args)

    def write(self, data):
        self.threads.add(threading.get_ident())
        return self._f.write(data)


def test_regular_file_write_then_read(core, tmp_path):
    path = tmp_path / "data.bin"
    payload = bytes(range(256)) * 300

    def root():
        with open(path, "wb") as f:
            traced = _Traced(f)
            yield bluelet.write(traced, payload)
            yield bluelet.write(traced, bytearray(b"tail"))
        with open(path, "rb") as f:
            head = yield bluelet.read(f, 10)
            rest = yield bluelet.read(f)
            end = yield bluelet.read(f, 10)
        return traced.threads, head, rest, end

    threads, head, rest, end = bluelet.run(root())
    assert threading.get_ident() not in threads
    assert head + rest == payload + b"tail"
    assert len(head) == 10
    assert end == b""


def test_regular_file_read_runs_in_a_thread(core, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"hello")

    def root():
        with open(path, "rb") as f:
            traced = _Traced(f)
            return (yield bluelet.read(traced)), traced.threads

    data, threads = bluelet.run(root())
    assert data == b"hello"
    assert threads and threading.get_ident() not in threads


def test_unbuffered_file_write_writes_everything(core, tmp_path):
    path = tmp_path / "raw.bin"
    payload = b"x" * 1_000_000

    def root():
        with open(path, "wb", buffering=0) as f:
            yield bluelet.write(f, memoryview(payload))

    bluelet.run(root())
    assert path.read_bytes() == payload


def test_regular_file_write_of_str_is_a_type_error_at_the_call(core, tmp_path):
    with open(tmp_path / "t.txt", "wb") as f:
        with pytest.raises(TypeError):
            bluelet.write(f, "text")


def test_regular_file_read_error_raised_at_the_yield(core, tmp_path):
    path = tmp_path / "w.bin"

    def root():
        with open(path, "wb") as f:  # write-only: reading fails
            try:
                yield bluelet.read(f, 10)
            except OSError as error:
                return type(error).__name__
        return "no error"

    assert bluelet.run(root()) == "UnsupportedOperation"


def test_pipes_are_still_waited_on_by_the_loop(core):
    r, w = os.pipe()
    with os.fdopen(r, "rb", buffering=0) as rf, os.fdopen(w, "wb", buffering=0) as wf:
        traced = _Traced(rf)

        def writer():
            yield bluelet.write(wf, b"through the pipe")

        def root():
            yield bluelet.spawn(writer())
            return (yield bluelet.read(traced, 100))

        assert bluelet.run(root()) == b"through the pipe"
        assert traced.threads == {threading.get_ident()}
