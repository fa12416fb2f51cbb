"""signal() waits and run(handle_signals=True), on every core.

Signals are sent with os.kill from a threading.Timer started once the
coroutines are waiting, or raised synchronously with signal.raise_signal.
Every wait is under a bluelet.timeout, so a lost signal fails the test
instead of hanging it. A guard handler for SIGUSR1 is installed around each
test, so a stray signal never kills the test process, and doubles as "the
previous handler" that must be restored.
"""

import os
import signal
import socket
import threading
import time

import pytest

import bluelet

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0  # seconds: an upper bound for things that happen "at once"


def _send_later(signum, delay=0.05):
    timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
    return timer


@pytest.fixture
def usr1():
    """A recording Python handler for SIGUSR1 around the test; restored after."""
    received = []

    def guard(signum, frame):
        received.append(signum)

    previous = signal.signal(signal.SIGUSR1, guard)
    try:
        yield guard, received
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.fixture
def wakeup_pipe():
    """A wakeup fd set before the test, to check it is restored after."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = signal.set_wakeup_fd(w)
    try:
        yield w
    finally:
        signal.set_wakeup_fd(previous)
        os.close(r)
        os.close(w)


@pytest.fixture
def stop_handlers():
    """SIGINT and SIGTERM handlers as they were; restored after the test."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield saved
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------
# signal(): waiting for one signal
# ---------------------------------------------------------------------------


def test_signal_from_a_timer_thread_wakes_the_waiter(core, usr1, wakeup_pipe):
    guard, received = usr1

    def root():
        waiter = bluelet.timeout(WAIT, bluelet.signal(signal.SIGUSR1))
        task = _wait_for(waiter)
        yield bluelet.spawn(task)
        yield bluelet.null()  # the waiter is parked
        _send_later(signal.SIGUSR1)
        return (yield bluelet.join(task))

    assert bluelet.run(root()) == signal.SIGUSR1
    assert received == []  # delivered to the coroutine, not to the old handler
    assert signal.getsignal(signal.SIGUSR1) is guard
    assert signal.set_wakeup_fd(wakeup_pipe) == wakeup_pipe


def _wait_for(event):
    return (yield event)


def test_one_signal_wakes_every_waiter(core, usr1):
    woke = []

    def waiter(n):
        woke.append((n, (yield bluelet.timeout(WAIT, bluelet.signal(signal.SIGUSR1)))))

    def root():
        for n in range(3):
            yield bluelet.spawn(waiter(n))
        yield bluelet.null()
        _send_later(signal.SIGUSR1)

    bluelet.run(root())
    assert woke == [(0, signal.SIGUSR1), (1, signal.SIGUSR1), (2, signal.SIGUSR1)]


def _raise_soon(signum):
    """A coroutine that raises ``signum`` in the loop once the others wait
    (sleep(0) resumes after the next poll, when nothing is ready)."""
    yield bluelet.sleep(0)
    signal.raise_signal(signum)


def test_waits_for_its_own_signal_only(core, usr1):
    guard, received = usr1
    woke = []

    def waiter():
        woke.append((yield bluelet.timeout(WAIT, bluelet.signal(signal.SIGUSR2))))

    def root():
        yield bluelet.spawn(waiter())
        yield bluelet.null()  # the waiter is parked
        signal.raise_signal(signal.SIGUSR1)
        for _ in range(3):
            yield bluelet.null()
        before = list(woke)
        signal.raise_signal(signal.SIGUSR2)
        return before

    previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        assert bluelet.run(root()) == []
        assert woke == [signal.SIGUSR2]
        assert received == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_signal_between_two_waits_is_remembered(core):
    # The handler before is not a Python function (here SIG_IGN; SIG_DFL
    # alike): an arrival while nobody waits is kept for the next wait.
    def root():
        yield bluelet.spawn(_raise_soon(signal.SIGUSR2))
        yield bluelet.timeout(WAIT, bluelet.signal(signal.SIGUSR2))
        signal.raise_signal(signal.SIGUSR2)  # nobody waits now
        signal.raise_signal(signal.SIGUSR2)  # counts as one, like POSIX signals
        again = yield bluelet.timeout(WAIT, bluelet.signal(signal.SIGUSR2))
        try:
            yield bluelet.timeout(0.05, bluelet.signal(signal.SIGUSR2))
        except bluelet.Timeout:
            return again, "no third"
        return again, "third"

    previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        assert bluelet.run(root()) == (signal.SIGUSR2, "no third")
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_previous_python_handler_gets_signals_nobody_waits_for(core, usr1):
    guard, received = usr1

    def root():
        yield bluelet.spawn(_raise_soon(signal.SIGUSR1))
        yield bluelet.timeout(WAIT, bluelet.signal(signal.SIGUSR1))
        signal.raise_signal(signal.SIGUSR1)  # nobody waits: the guard gets it
        return list(received)

    assert bluelet.run(root()) == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) is guard


def test_timeout_and_kill_while_waiting_restore_everything(core, usr1, wakeup_pipe):
    guard, received = usr1
    events = []

    def waiter():
        try:
            yield bluelet.signal(signal.SIGUSR1)
        finally:
            events.append("killed waiter finally")

    def root():
        try:
            yield bluelet.timeout(0.05, bluelet.signal(signal.SIGUSR1))
        except bluelet.Timeout:
            events.append("timed out")
        w = waiter()
        yield bluelet.spawn(w)
        yield bluelet.null()
        yield bluelet.kill(w)

    bluelet.run(root())
    assert events == ["timed out", "killed waiter finally"]
    assert signal.getsignal(signal.SIGUSR1) is guard
    assert signal.set_wakeup_fd(wakeup_pipe) == wakeup_pipe
    signal.raise_signal(signal.SIGUSR1)
    assert received == [signal.SIGUSR1]


def test_waiter_left_at_the_end_of_run_restores_everything(core, usr1, wakeup_pipe):
    guard, received = usr1

    def waiter():
        yield bluelet.signal(signal.SIGUSR1)

    def root():
        yield bluelet.spawn(waiter())
        yield bluelet.null()
        raise RuntimeError("the root fails while a coroutine waits for a signal")

    with pytest.raises(RuntimeError, match="root fails"):
        bluelet.run(root())
    assert signal.getsignal(signal.SIGUSR1) is guard
    assert signal.set_wakeup_fd(wakeup_pipe) == wakeup_pipe


def test_signal_needs_the_main_thread(core):
    outcome = []

    def root():
        try:
            yield bluelet.signal(signal.SIGUSR1)
        except RuntimeError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=bluelet.run, args=(root(),))
    thread.start()
    thread.join(WAIT)
    assert len(outcome) == 1 and "main thread" in outcome[0]


def test_not_a_signal_is_a_value_error_at_the_call(core):
    with pytest.raises(ValueError):
        bluelet.signal(100000)


# ---------------------------------------------------------------------------
# run(handle_signals=True)
# ---------------------------------------------------------------------------


def _stoppable_program(signum, events, root_returns):
    """A root with three children, all asleep when ``signum`` arrives."""

    def child(n):
        try:
            yield bluelet.sleep(WAIT * 2)
        finally:
            events.append("child %d finally" % n)

    def root():
        for n in range(3):
            yield bluelet.spawn(child(n))
        yield bluelet.null()  # the children are asleep
        try:
            _send_later(signum)
            yield bluelet.sleep(WAIT)
            events.append("not interrupted")
        except KeyboardInterrupt as interrupt:
            events.append("root caught %r" % (interrupt,))
            if root_returns:
                return "stopped cleanly"
            raise
        finally:
            events.append("root finally")

    return root()


@pytest.mark.parametrize("signum, raised, seen", [
    (signal.SIGINT, KeyboardInterrupt, "KeyboardInterrupt()"),
    (signal.SIGTERM, SystemExit, "KeyboardInterrupt('SIGTERM')"),
], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_raises_in_root_then_cancels_the_rest(core, stop_handlers, signum, raised, seen):
    events = []
    with pytest.raises(raised) as info:
        bluelet.run(_stoppable_program(signum, events, False), handle_signals=True)
    if raised is SystemExit:
        assert info.value.code == 128 + signal.SIGTERM
        assert isinstance(info.value.__cause__, KeyboardInterrupt)
    # The root hears it first, while the children still live; they are
    # cancelled when the root has ended.
    assert events[:2] == ["root caught %s" % seen, "root finally"]
    assert sorted(events[2:]) == ["child 0 finally", "child 1 finally", "child 2 finally"]
    assert signal.getsignal(signal.SIGINT) is stop_handlers[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is stop_handlers[signal.SIGTERM]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_caught_by_the_root_lets_run_return(core, stop_handlers, signum):
    events = []
    result = bluelet.run(_stoppable_program(signum, events, True), handle_signals=True)
    assert result == "stopped cleanly"
    assert events[1] == "root finally"
    assert sorted(events[2:]) == ["child 0 finally", "child 1 finally", "child 2 finally"]


def test_a_stop_signal_taken_by_another_thread_still_stops_the_loop(core, stop_handlers):
    """SIGTERM blocked in the main thread, so the kernel hands it to another
    one: its C handler writes the wake-up byte, which wakes the poll, but its
    Python handler is left for the main thread's next bytecode. The compiled
    loop runs none before it polls again, so it must run the handler itself,
    or the stop waits for the next wake-up (here the end of the sleep)."""
    events = []

    def send_from_here():
        # Threads inherit the creator's mask: this one takes SIGTERM again.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    def root():
        sender = threading.Thread(target=send_from_here, daemon=True)
        sender.start()
        try:
            yield bluelet.sleep(WAIT)
            return "slept through it"
        except KeyboardInterrupt:
            return "stopped"
        finally:
            sender.join()

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    try:
        assert bluelet.run(root(), handle_signals=True) == "stopped"
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def test_root_that_caught_the_stop_can_let_a_child_finish(core, stop_handlers):
    """The interrupt goes to the root only: a child is still running after it."""
    events = []

    def worker():
        for step in range(3):
            yield bluelet.sleep(0.5)
            events.append("step %d" % step)
        return "finished"

    def root():
        child = worker()
        yield bluelet.spawn(child)
        try:
            _send_later(signal.SIGTERM)
            yield bluelet.sleep(WAIT * 2)
        except KeyboardInterrupt:
            events.append("root caught")
        return (yield bluelet.join(child))

    assert bluelet.run(root(), handle_signals=True) == "finished"
    assert events.index("root caught") < events.index("step 2") == len(events) - 1


def _handed_an_item_then_interrupted(events, more_yields):
    """A root that is handed an item by a child which then raises SIGINT, in
    one turn: the root is ready with the item when the interrupt arrives."""
    queue = bluelet.Queue()

    def child():
        yield queue.put("accepted connection")
        signal.raise_signal(signal.SIGINT)

    def root():
        yield bluelet.spawn(child())
        item = yield queue.get()
        events.append(item)
        if more_yields:
            try:
                yield bluelet.sleep(WAIT)
                events.append("not interrupted")
            except KeyboardInterrupt:
                events.append("interrupted at the next yield")

    return root()


def test_a_result_due_to_the_root_is_not_lost_to_an_interrupt(core, stop_handlers):
    events = []
    try:
        bluelet.run(_handed_an_item_then_interrupted(events, True), handle_signals=True)
    except KeyboardInterrupt:
        # Not let through: pytest would take it for Ctrl-C and stop the run.
        pytest.fail("the interrupt took the place of the item due to the root: %r" % events)
    assert events == ["accepted connection", "interrupted at the next yield"]


def test_an_interrupt_due_when_the_root_ends_is_raised_by_run(core, stop_handlers):
    events = []
    with pytest.raises(KeyboardInterrupt):
        bluelet.run(_handed_an_item_then_interrupted(events, False), handle_signals=True)
    assert events == ["accepted connection"]


def test_handle_signals_replaces_and_restores_custom_handlers(core, stop_handlers):
    seen = []

    def custom(signum, frame):
        seen.append(signum)

    signal.signal(signal.SIGINT, custom)
    signal.signal(signal.SIGTERM, custom)

    def root():
        assert signal.getsignal(signal.SIGINT) is not custom
        _send_later(signal.SIGTERM)
        yield bluelet.sleep(WAIT)

    with pytest.raises(SystemExit):
        bluelet.run(root(), handle_signals=True)
    assert seen == []
    assert signal.getsignal(signal.SIGINT) is custom
    assert signal.getsignal(signal.SIGTERM) is custom


def test_signal_wait_for_sigint_under_handle_signals(core, stop_handlers):
    # An explicit wait takes the signal; once nobody waits, SIGINT stops the run.
    def root():
        yield bluelet.spawn(_raise_soon(signal.SIGINT))
        got = yield bluelet.timeout(WAIT, bluelet.signal(signal.SIGINT))
        try:
            _send_later(signal.SIGINT)
            yield bluelet.sleep(WAIT)
        except KeyboardInterrupt:
            return got

    assert bluelet.run(root(), handle_signals=True) == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is stop_handlers[signal.SIGINT]


def test_handle_signals_needs_the_main_thread(core, stop_handlers):
    outcome = []
    started = []

    def root():
        started.append(True)
        yield bluelet.null()

    def in_thread():
        try:
            bluelet.run(root(), handle_signals=True)
        except RuntimeError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(WAIT)
    assert len(outcome) == 1 and "main thread" in outcome[0]
    assert started == []


# ---------------------------------------------------------------------------
# run() without options, and its other options
# ---------------------------------------------------------------------------


def test_run_without_options_is_the_plain_run(core, stop_handlers):
    def root():
        assert signal.getsignal(signal.SIGINT) is stop_handlers[signal.SIGINT]
        yield bluelet.null()
        return [info.coroutine for info in bluelet.tasks()]

    gen = root()
    assert bluelet.run(gen) == [gen]


def test_run_passes_virtual_time_and_slow_step(core, caplog):
    def root():
        yield bluelet.sleep(3600)  # instant under virtual time
        time.sleep(0.05)           # a slow step

    with caplog.at_level("WARNING", logger="bluelet"):
        bluelet.run(root(), virtual_time=True, slow_step=0.01)
    assert any("without yielding" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("handle_signals", [False, True])
def test_ctrl_c_ends_run_after_the_root_ended(core, stop_handlers, handle_signals):
    # The root has returned; another coroutine waits on a socket that never
    # gets data. Ctrl-C must still end run() (0.2.0 raised at once), not be
    # swallowed while the loop goes back to waiting.
    left, right = socket.socketpair()
    try:
        def reader():
            yield bluelet.Connection(left, None).recv(10)

        def root():
            yield bluelet.spawn(reader())
            yield bluelet.null()

        _send_later(signal.SIGINT, 0.2)
        with pytest.raises(KeyboardInterrupt):
            bluelet.run(root(), handle_signals=handle_signals)
    finally:
        left.close()
        right.close()
