"""Calls into a running loop from other threads: current_token and from_thread.

Every test takes the ``core`` fixture (runs once per scheduler core) and
``no_fd_leak``. Threads are joined with a timeout, and every wait in them is
bounded, so nothing can hang.
"""

import threading

import pytest

import bluelet
from bluelet import _impl, from_thread

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_fd_leak")]

WAIT = 10.0  # seconds: an upper bound for things that happen "at once"


class Boom(Exception):
    """An exception no library code raises by itself."""


def in_thread(target):
    """Start ``target`` in a thread; a coroutine that waits for it to end
    (keeping the loop alive meanwhile) and gives what it returned or raises
    what it raised."""
    box = {}

    def body():
        try:
            box["value"] = target()
        except BaseException as exc:  # handed to the waiting coroutine
            box["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()

    def wait():
        yield bluelet.to_thread(thread.join, WAIT)
        assert not thread.is_alive(), "the thread did not finish"
        if "error" in box:
            raise box.pop("error")
        return box["value"]

    return wait()


def test_run_gives_the_coroutines_result_in_the_thread(core):
    seen = []

    def work(x):
        seen.append((threading.get_ident(), bluelet.current() is not None))
        yield bluelet.sleep(0.001)
        return x * 2

    def root():
        token = bluelet.current_token()
        return (yield in_thread(lambda: from_thread.run(work(21), token=token)))

    assert bluelet.run(root()) == 42
    assert seen == [(threading.get_ident(), True)]  # ran in the loop's thread


def test_run_takes_async_def(core):
    async def work():
        await bluelet.sleep(0)
        return "async"

    def root():
        token = bluelet.current_token()
        return (yield in_thread(lambda: from_thread.run(work(), token=token)))

    assert bluelet.run(root()) == "async"


def test_run_raises_the_coroutines_exception_in_the_thread_only(core):
    def work():
        yield bluelet.null()
        raise Boom("from the loop")

    def root():
        token = bluelet.current_token()
        try:
            yield in_thread(lambda: from_thread.run(work(), token=token))
        except Boom as exc:
            return str(exc)

    # The run itself goes on: the exception is the thread's.
    assert bluelet.run(root()) == "from the loop"


def test_run_sync_calls_in_the_loops_thread(core):
    def root():
        token = bluelet.current_token()
        queue = bluelet.Queue()
        loop_thread = threading.get_ident()

        def put(item):
            assert threading.get_ident() == loop_thread
            queue.put_nowait(item)
            return "put"

        answers = yield in_thread(lambda: [from_thread.run_sync(put, i, token=token)
                                           for i in range(3)])
        got = []
        for _ in range(3):
            got.append((yield queue.get()))
        return answers, got

    assert bluelet.run(root()) == (["put"] * 3, [0, 1, 2])


def test_run_sync_raises_in_the_thread(core):
    def fail():
        raise Boom("sync")

    def root():
        token = bluelet.current_token()
        with pytest.raises(Boom, match="sync"):
            yield in_thread(lambda: from_thread.run_sync(fail, token=token))
        return "ok"

    assert bluelet.run(root()) == "ok"


def test_run_sync_refuses_a_function_that_returns_a_coroutine(core):
    def gen():
        yield bluelet.null()

    def root():
        token = bluelet.current_token()
        with pytest.raises(TypeError, match="from_thread.run"):
            yield in_thread(lambda: from_thread.run_sync(gen, token=token))
        return "ok"

    assert bluelet.run(root()) == "ok"


def test_to_thread_worker_needs_no_token(core):
    def work():
        yield bluelet.null()
        return threading.get_ident()

    def blocking():
        inner = from_thread.run(work())
        return inner, from_thread.run_sync(lambda: "sync")

    def root():
        return (yield bluelet.to_thread(blocking))

    ident, sync = bluelet.run(root())
    assert ident == threading.get_ident()
    assert sync == "sync"


def test_a_plain_thread_needs_a_token(core):
    def root():
        with pytest.raises(RuntimeError, match="current_token"):
            yield in_thread(lambda: from_thread.run_sync(print))
        return "ok"

    assert bluelet.run(root()) == "ok"


def test_misuse_is_refused_at_the_call(core):
    def root():
        token = bluelet.current_token()
        with pytest.raises(TypeError, match="coroutine"):
            from_thread.run(lambda: None, token=token)
        with pytest.raises(TypeError, match="callable"):
            from_thread.run_sync(42, token=token)
        with pytest.raises(TypeError, match="current_token"):
            from_thread.run_sync(print, token="not a token")
        coro = bluelet.sleep(0)
        gen = (x for x in ())
        # In the loop's own thread it would wait for itself.
        with pytest.raises(RuntimeError, match="own thread"):
            from_thread.run(gen, token=token)
        with pytest.raises(RuntimeError, match="own thread"):
            from_thread.run_sync(print, token=token)
        yield coro
        return token == bluelet.current_token()

    assert bluelet.run(root()) is True


def test_current_token_outside_a_loop():
    with pytest.raises(RuntimeError, match="running bluelet loop"):
        bluelet.current_token()


def test_after_the_run_has_ended(core):
    def root():
        yield bluelet.null()
        return bluelet.current_token()

    token = bluelet.run(root())
    gen = (x for x in ())
    with pytest.raises(bluelet.RunFinishedError):
        from_thread.run(gen, token=token)
    with pytest.raises(bluelet.RunFinishedError):
        from_thread.run_sync(print, token=token)


def test_a_call_accepted_as_the_run_ends_is_answered(core):
    """The root ends while a thread's coroutine is still running: the
    coroutine is closed and the thread hears RunFinishedError."""
    started = threading.Event()
    outcome = {}

    def forever():
        started.set()
        while True:
            yield bluelet.sleep(10)

    def caller(token):
        try:
            from_thread.run(forever(), token=token)
        except bluelet.RunFinishedError as exc:
            outcome["error"] = exc

    thread = None

    def root():
        nonlocal thread
        thread = threading.Thread(target=caller, args=(bluelet.current_token(),), daemon=True)
        thread.start()
        yield bluelet.to_thread(started.wait, WAIT)
        # Interrupted, the run ends with the root and closes the others.
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bluelet.run(root())
    thread.join(WAIT)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), bluelet.RunFinishedError)


def test_many_threads_calling_in_at_once(core):
    """8 threads × 50 calls each, into one loop: every call answered once,
    in order per thread."""
    threads, calls = 8, 50

    def root():
        token = bluelet.current_token()
        counter = [0]

        def bump(n):
            counter[0] += 1
            return n

        def work(n):
            yield bluelet.null()
            return -n

        def client(k):
            out = []
            for i in range(calls):
                out.append(from_thread.run_sync(bump, i, token=token))
                out.append(from_thread.run(work(i), token=token))
            return k, out

        waits = [in_thread(lambda k=k: client(k)) for k in range(threads)]
        results = yield bluelet.join_all(waits)
        return counter[0], results

    count, results = bluelet.run(root())
    assert count == threads * calls
    expected = [v for i in range(calls) for v in (i, -i)]
    assert sorted(results) == [(k, expected) for k in range(threads)]


def test_guest_loop_is_woken_by_a_thread(core):
    """Under asyncio (guest mode), a thread's call wakes the loop too."""

    def work():
        yield bluelet.null()
        return "guest"

    def root():
        token = bluelet.current_token()
        return (yield in_thread(lambda: from_thread.run(work(), token=token)))

    assert bluelet.run(root(), host="asyncio") == "guest"


def test_the_core_makes_every_accepted_call(core):
    """Loop.call_soon_threadsafe: calls run in order in the loop's thread;
    one accepted just before the run ends is made while it ends, where
    Loop.spawn refuses; after the end, no call is accepted."""
    made = []

    def root():
        loop = _impl.running_loop()
        loop.call_soon_threadsafe(lambda: made.append(1))
        loop.call_soon_threadsafe(lambda: made.append(2))
        yield bluelet.sleep(0.001)  # a poll: both are made

        def at_the_end():
            with pytest.raises(bluelet.RunFinishedError):
                loop.spawn(x for x in ())
            made.append("end")

        loop.call_soon_threadsafe(at_the_end)  # the run ends before the next poll
        return loop

    loop = bluelet.run(root())
    assert made == [1, 2, "end"]
    with pytest.raises(bluelet.RunFinishedError):
        loop.call_soon_threadsafe(print)


def test_run_sync_wakes_coroutines_that_wait(core):
    """A queue put and a flag set made by run_sync wake the coroutines
    already waiting for them (no coroutine runs during the call)."""
    def root():
        token = bluelet.current_token()
        queue, flag = bluelet.Queue(), bluelet.Flag()

        def feed():
            for item in range(3):
                from_thread.run_sync(queue.put_nowait, item, token=token)
            from_thread.run_sync(flag.set, token=token)

        waiter_saw = []

        def wait_flag():
            waiter_saw.append((yield flag.wait()))

        yield bluelet.spawn(wait_flag())
        feeder = in_thread(feed)
        yield bluelet.spawn(feeder)  # keeps the loop waiting for the thread
        got = []
        for _ in range(3):
            got.append((yield queue.get()))
        yield bluelet.join(feeder)
        yield bluelet.sleep(0)
        return got, waiter_saw

    assert bluelet.run(root()) == ([0, 1, 2], [True])
