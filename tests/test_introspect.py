"""Introspection: current(), tasks(), dump(), dump_on() and the slow-step warning."""

import io
import logging
import os
import re
import signal
import threading
import time

import pytest

import bluelet
from bluelet import _impl, _introspect
from bluelet._records import TaskInfo


def _line_of(marker):
    """The line number in this file of the line ending in ``# <marker>``."""
    with open(__file__) as source:
        for number, line in enumerate(source, 1):
            if line.rstrip().endswith("# " + marker):
                return number
    raise AssertionError("marker %r not found" % marker)


def _where(func, marker):
    return 'File "%s", line %d, in %s' % (__file__, _line_of(marker), func.__qualname__)


def _info_when_waiting(*coros):
    """Spawn ``coros``, let each reach its first wait, and return the TaskInfo
    of each; then kill them."""
    def main():
        for coro in coros:
            yield bluelet.spawn(coro)
        # sleep(0) resumes after the next poll: every spawned coroutine has
        # run up to its wait by then (null() would come back before their
        # first steps, which run on the pass after the spawn, as in 0.2.0).
        yield bluelet.sleep(0)
        infos = {info.coroutine: info for info in bluelet.tasks()}
        for coro in coros:
            yield bluelet.kill(coro)
        return [infos[coro] for coro in coros]
    return bluelet.run(main())


def _full_pipe():
    """A pipe whose write end has no room left."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
    return r, w


# ---------------------------------------------------------------------------
# current()
# ---------------------------------------------------------------------------

def test_current_is_none_outside_a_loop(core):
    assert bluelet.current() is None


def test_current_is_the_spawned_coroutine_even_inside_a_call(core):
    seen = []

    def inner():
        seen.append(("inner", bluelet.current()))
        yield bluelet.null()

    def child():
        seen.append(("child", bluelet.current()))
        yield inner()

    def main():
        seen.append(("main", bluelet.current()))
        yield bluelet.spawn(kid)
        yield bluelet.join(kid)

    kid = child()
    root = main()
    bluelet.run(root)
    assert seen == [("main", root), ("child", kid), ("inner", kid)]


# ---------------------------------------------------------------------------
# tasks()
# ---------------------------------------------------------------------------

def test_tasks_outside_a_loop_raises(core):
    with pytest.raises(RuntimeError):
        bluelet.tasks()


def test_tasks_lists_every_live_coroutine_as_taskinfo(core):
    def sleeper():
        yield bluelet.sleep(30)

    def main():
        yield bluelet.spawn(a)
        yield bluelet.spawn(b)
        infos = bluelet.tasks()
        yield bluelet.kill(a)
        yield bluelet.kill(b)
        return infos

    a, b = sleeper(), sleeper()
    root = main()
    infos = bluelet.run(root)
    assert all(isinstance(info, TaskInfo) for info in infos)
    assert {info.coroutine for info in infos} == {root, a, b}
    by_coro = {info.coroutine: info for info in infos}
    assert by_coro[root].state == "running"
    assert by_coro[a].state == "ready"


def test_tasks_ready(core):
    def idle():
        yield bluelet.null()

    def main():
        yield bluelet.spawn(coro)
        return [info for info in bluelet.tasks() if info.coroutine is coro]

    coro = idle()
    [info] = bluelet.run(main())
    assert (info.state, info.detail) == ("ready", "ready to run")
    assert info.chain == [coro]


def test_tasks_describes_a_user_event_left_for_the_next_poll(core):
    # Two waiters woken by one poll; the first lets an error reach its
    # caller, which ends that pass (0.2.0's order), so the second, a user
    # WaitableEvent, waits for the next poll with its fire() not done.
    # tasks() in between must describe it, not read a descriptor it lacks.
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()

    class Readable(bluelet.WaitableEvent):
        def waitables(self):
            return (r2,), (), ()

        def fire(self):
            return os.read(r2, 1)

    def inner():
        yield bluelet.wait_readable(r1)
        raise ValueError("after the poll")

    def first():
        try:
            yield inner()
        except ValueError:
            return [info for info in bluelet.tasks() if info.coroutine is other]

    def second():
        return (yield Readable())

    other = second()

    def root():
        task = first()
        yield bluelet.spawn(task)
        yield bluelet.sleep(0)  # inner waits by then, at an earlier place than other's
        yield bluelet.spawn(other)
        yield bluelet.sleep(0)  # both wait by then
        os.write(w1, b"x")
        os.write(w2, b"y")
        infos = yield bluelet.join(task)
        return infos, (yield bluelet.join(other))

    try:
        [info], fired = bluelet.run(root())
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)
    assert (info.state, fired) == ("io", b"y")
    assert info.detail.startswith("about to fire <")


@pytest.mark.parametrize("direction", ["readable", "writable"])
def test_tasks_waiting_for_io_names_the_fd_and_direction(core, direction):
    # An empty pipe's read end is never readable; a full one's write end
    # never writable.
    r, w = _full_pipe() if direction == "writable" else os.pipe()
    fd = w if direction == "writable" else r
    wait = bluelet.wait_writable if direction == "writable" else bluelet.wait_readable
    try:
        def waiter():
            yield wait(fd)

        [info] = _info_when_waiting(waiter())
    finally:
        os.close(r)
        os.close(w)
    assert info.state == "io"
    assert info.detail == "waiting for fd %d to be %s" % (fd, direction)


def test_tasks_sleeping_says_until_when(core):
    def sleeper():
        yield bluelet.sleep(30)

    before = time.monotonic()
    [info] = _info_when_waiting(sleeper())
    assert info.state == "sleeping"
    until = float(re.match(r"sleeping until (\d+\.\d+)", info.detail).group(1))
    assert before + 29 <= until <= time.monotonic() + 31


def test_tasks_joining_names_the_joined_coroutine(core):
    def sleeper():
        yield bluelet.sleep(30)

    def joiner():
        yield bluelet.join(target)

    target = sleeper()
    [info, _] = _info_when_waiting(joiner(), target)
    assert info.state == "joining"
    assert repr(target) in info.detail


def test_tasks_parked_in_a_wait_queue(core):
    queue = _impl.WaitQueue()

    def parked():
        yield queue.wait()

    [info] = _info_when_waiting(parked())
    assert info.state == "parked"
    assert repr(queue) in info.detail


def test_tasks_waiting_for_another_thread(core):
    def waiter():
        yield _impl.Completion()

    [info] = _info_when_waiting(waiter())
    assert info.state == "thread"
    assert "thread" in info.detail


def test_tasks_chain_shows_the_delegation_outermost_first(core):
    def inner():
        yield bluelet.sleep(30)

    def outer():
        yield callee

    callee = inner()
    coro = outer()
    [info] = _info_when_waiting(coro)
    assert info.state == "sleeping"
    assert info.coroutine is coro
    assert info.chain == [coro, callee]


# ---------------------------------------------------------------------------
# dump()
# ---------------------------------------------------------------------------

def _dump_inner():
    yield bluelet.sleep(30)  # dump: inner waits here


def _dump_outer():
    yield _dump_inner()  # dump: outer delegates here


def _dump_reader(fd):
    yield bluelet.wait_readable(fd)  # dump: reader waits here


def _dump_idle():
    yield bluelet.null()


def test_dump_shows_each_coroutine_its_state_and_where_it_waits(core):
    r, w = os.pipe()

    def main():
        coros = [_dump_outer(), _dump_reader(r), _dump_idle()]
        for coro in coros[:2]:
            yield bluelet.spawn(coro)
        yield bluelet.sleep(0)  # after the next poll: both wait by then
        yield bluelet.spawn(coros[2])
        text = bluelet.dump()  # dump: main is running here
        for coro in coros:
            yield bluelet.kill(coro)
        return text, coros

    try:
        text, coros = bluelet.run(main())
    finally:
        os.close(r)
        os.close(w)
    outer, reader, idle = coros
    assert "4 live coroutines (%s core)" % core in text
    assert "Coroutine _dump_outer (0x%x): sleeping until " % id(outer) in text
    outer_at = text.index(_where(_dump_outer, "dump: outer delegates here"))
    inner_at = text.index(_where(_dump_inner, "dump: inner waits here"))
    assert outer_at < inner_at  # innermost call last, as in a traceback
    assert "    yield bluelet.sleep(30)  # dump: inner waits here" in text
    assert "Coroutine _dump_reader (0x%x): waiting for fd %d to be readable" % (id(reader), r) in text
    assert _where(_dump_reader, "dump: reader waits here") in text
    assert "Coroutine _dump_idle (0x%x): ready to run" % id(idle) in text
    assert 'line %d, in _dump_idle [not started]' % _dump_idle.__code__.co_firstlineno in text
    assert _where(main, "dump: main is running here") + " [running]" in text


def test_dump_also_writes_to_a_file(core):
    def main():
        out = io.StringIO()
        text = bluelet.dump(out)
        yield bluelet.null()
        return text, out.getvalue()

    text, written = bluelet.run(main())
    assert written == text
    assert "Coroutine %s" % main.__qualname__ in text


def test_dump_outside_a_loop_raises(core):
    with pytest.raises(RuntimeError):
        bluelet.dump()


def test_dump_shows_a_finished_generator_as_such(core):
    def done():
        yield bluelet.null()

    gen = done()
    list(gen)
    text = _introspect.format_tasks([TaskInfo(gen, "running", "running now", [gen])])
    assert 'line %d, in %s [finished]' % (done.__code__.co_firstlineno, done.__qualname__) in text


# ---------------------------------------------------------------------------
# dump_on()
# ---------------------------------------------------------------------------

@pytest.fixture
def sigusr1_restored():
    """Whatever a test does, SIGUSR1's handler is put back afterwards."""
    previous = signal.getsignal(signal.SIGUSR1)
    yield previous
    signal.signal(signal.SIGUSR1, previous)


def test_dump_on_prints_the_dump_to_stderr_on_sigusr1(core, capfd, sigusr1_restored):
    def sleeper():
        yield bluelet.sleep(30)

    def main():
        yield bluelet.spawn(coro)
        yield bluelet.sleep(0)  # after the next poll: the sleeper sleeps by then
        signal.raise_signal(signal.SIGUSR1)
        yield bluelet.kill(coro)

    coro = sleeper()
    restore = bluelet.dump_on()
    try:
        bluelet.run(main())
    finally:
        restore()
    err = capfd.readouterr().err
    assert "2 live coroutines" in err
    assert "Coroutine %s (0x%x): sleeping until" % (sleeper.__qualname__, id(coro)) in err
    assert "Coroutine %s" % main.__qualname__ in err


def test_dump_on_works_while_the_loop_waits_for_io(core, capfd, sigusr1_restored):
    r, w = os.pipe()

    def waiter():
        yield bluelet.wait_readable(r)

    def poke():
        # Aim at the main thread, so its poll is interrupted by the signal.
        time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        time.sleep(0.05)
        os.write(w, b"x")

    restore = bluelet.dump_on(signal.SIGUSR1)
    thread = threading.Thread(target=poke)
    try:
        thread.start()
        bluelet.run(waiter())
    finally:
        thread.join()
        restore()
        os.close(r)
        os.close(w)
    err = capfd.readouterr().err
    assert "Coroutine %s (0x" % waiter.__qualname__ in err
    assert "waiting for fd %d to be readable" % r in err


def test_dump_on_outside_a_loop_says_so(core, capfd, sigusr1_restored):
    restore = bluelet.dump_on()
    try:
        signal.raise_signal(signal.SIGUSR1)
    finally:
        restore()
    assert "no loop is running" in capfd.readouterr().err


def test_dump_on_restore_puts_the_previous_handler_back(core, sigusr1_restored):
    def mine(signum, frame):
        pass

    signal.signal(signal.SIGUSR1, mine)
    restore = bluelet.dump_on(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) is not mine
    restore()
    assert signal.getsignal(signal.SIGUSR1) is mine
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    restore()  # a second call does nothing
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN


def test_dump_on_needs_the_main_thread(core, sigusr1_restored):
    errors = []

    def install():
        try:
            bluelet.dump_on()
        except ValueError as error:
            errors.append(error)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert signal.getsignal(signal.SIGUSR1) is sigusr1_restored


# ---------------------------------------------------------------------------
# slow_step
# ---------------------------------------------------------------------------

def _hog():
    yield bluelet.null()
    time.sleep(0.2)  # blocks the loop: no yield for 0.2 s
    yield bluelet.null()


def test_slow_step_warns_about_a_coroutine_that_does_not_yield(core, caplog):
    with caplog.at_level(logging.WARNING, logger="bluelet"):
        bluelet.run(_hog(), slow_step=0.05)
    warnings = [record for record in caplog.records
                if record.name == "bluelet" and record.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "_hog" in message
    assert "without yielding" in message
    assert "slow_step=0.05" in message


def test_slow_step_is_quiet_when_steps_are_quick(core, caplog):
    def quick():
        for _ in range(100):
            yield bluelet.null()

    with caplog.at_level(logging.WARNING, logger="bluelet"):
        bluelet.run(quick(), slow_step=5.0)
    assert not [record for record in caplog.records if record.name == "bluelet"]


def test_no_slow_step_warning_unless_asked(core, caplog):
    with caplog.at_level(logging.WARNING, logger="bluelet"):
        bluelet.run(_hog())
    assert not [record for record in caplog.records if record.name == "bluelet"]
