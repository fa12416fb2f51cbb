"""Scheduler behaviour: run/null/spawn/call/end/join/kill/sleep, exceptions,
deadlock, user WaitableEvents, read/write on pipes, scale, KeyboardInterrupt.

Every test takes the ``core`` fixture, so it runs once per scheduler core, and
uses the public API (``bluelet.run``, ``bluelet.null``, ...) as programs do.
Names are looked up on the ``bluelet`` module at call time, never imported
with ``from``, because the fixture swaps them. ``WaitableEvent`` subclasses are
defined inside the tests, after the swap (``_fd_readable_event`` builds one
when a test calls it). Scaffolding shared with test_sockets.py is in
``_helpers``.

No timing assertions beyond generous lower bounds: ordering is observed with
event lists, and every test is bounded (a module-wide timeout guards against a
core that hangs).
"""

import logging
import os
import socket
import sys
import time

import pytest

import bluelet
from _helpers import fail_after, pipe_files, raw_pipes, sigint_soon, sleeper

pytestmark = pytest.mark.timeout(30)


class Boom(Exception):
    """An exception no library code raises by itself."""


def _raised(exc):
    """The ``sys.exc_info()`` of ``exc`` raised and caught here."""
    try:
        raise exc
    except type(exc):
        return sys.exc_info()


def _fd_readable_event(fire):
    """A WaitableEvent subclass, built now from the active core's class: an
    instance made with an int descriptor waits until it is readable, then its
    ``fire()`` returns ``fire(fd)``."""

    class FdReadable(bluelet.WaitableEvent):
        def __init__(self, fd):
            self.fd = fd

        def waitables(self):
            return (self.fd,), (), ()

        def fire(self):
            return fire(self.fd)

    return FdReadable


def _read_100(fd):
    return os.read(fd, 100)


def _step_noting(log, note):
    """Coroutine: note ``note`` in ``log`` at its first step, then null() once."""
    log.append(note)
    yield bluelet.null()


def _then_noting(log, note, sleep=None):
    """Coroutine: yield null(), or sleep(``sleep``) if given, then note
    ``note`` in ``log`` (so only if it got that far)."""
    if sleep is None:
        yield bluelet.null()
    else:
        yield bluelet.sleep(sleep)
    log.append(note)


def _noting(log, name, event):
    """Coroutine: yield ``event``; note "<name> resumed" in ``log`` if the
    yield returns, and "<name> finally" however the coroutine ends."""
    try:
        yield event
        log.append(name + " resumed")
    finally:
        log.append(name + " finally")


# ---------------------------------------------------------------------------
# The core fixture and the IMPLEMENTATION flag
# ---------------------------------------------------------------------------


def test_implementation_matches_core(core):
    assert bluelet.IMPLEMENTATION == core
    assert bluelet.IMPLEMENTATION in ("python", "cython")


# ---------------------------------------------------------------------------
# run() and the root's result
# ---------------------------------------------------------------------------


def test_run_returns_root_return_value(core):
    def root():
        yield bluelet.null()
        return 42

    assert bluelet.run(root()) == 42


def test_run_returns_root_end_value(core):
    after = []

    def root():
        yield bluelet.null()
        yield bluelet.end("done")
        after.append("ran past end")

    assert bluelet.run(root()) == "done"
    assert after == []


def test_run_returns_none_without_return(core):
    def root():
        yield bluelet.null()

    assert bluelet.run(root()) is None


def test_run_waits_for_spawned_coroutines(core):
    events = []

    def root():
        yield bluelet.spawn(_then_noting(events, "child done", sleep=0.02))
        events.append("root done")
        return "r"

    assert bluelet.run(root()) == "r"
    assert events == ["root done", "child done"]


def test_run_can_be_called_again_after_a_failure(core):
    def bad():
        yield bluelet.null()
        raise Boom()

    with pytest.raises(Boom):
        bluelet.run(bad())

    def good():
        yield bluelet.null()
        return "fine"

    assert bluelet.run(good()) == "fine"


# ---------------------------------------------------------------------------
# Classic programs of the original
# ---------------------------------------------------------------------------


def test_classic_delegation_program(core):
    """The original's delegation demo: child ends with a value via end()."""
    trace = []

    def child():
        trace.append("child started")
        yield bluelet.null()
        trace.append("child resumed")
        yield bluelet.null()
        trace.append("child ending")
        yield bluelet.end(42)

    def parent():
        trace.append("parent started")
        yield bluelet.null()
        trace.append("parent resumed")
        result = yield child()
        trace.append("child returned %r" % (result,))
        trace.append("parent ending")

    bluelet.run(parent())
    assert trace == [
        "parent started",
        "parent resumed",
        "child started",
        "child resumed",
        "child ending",
        "child returned 42",
        "parent ending",
    ]


def test_classic_sleepy_program(core):
    """The original's sleepy demo: spawned sleepers wake shortest first."""
    woke = []

    def sleeper(duration):
        yield bluelet.sleep(duration)
        woke.append(duration)

    def sleepy():
        for d in (0.0, 0.02, 0.06, 0.1):
            yield bluelet.spawn(sleeper(d))

    bluelet.run(sleepy())
    assert woke == [0.0, 0.02, 0.06, 0.1]


def test_call_chain_three_deep_mixed_return_styles(core):
    """root -> a (bare generator) -> b (call, end) -> c (call, return)."""
    trace = []

    def c(x):
        yield bluelet.null()
        trace.append("c")
        return x + 1

    def b(x):
        v = yield bluelet.call(c(x))
        trace.append("b got %d" % v)
        yield bluelet.end(v * 10)

    def a(x):
        v = yield b(x)  # bare generator: same as call
        trace.append("a got %d" % v)
        return v + 5

    def root():
        v = yield a(1)
        trace.append("root got %d" % v)
        return v

    assert bluelet.run(root()) == 25
    assert trace == ["c", "b got 2", "a got 20", "root got 25"]


@pytest.mark.parametrize("style", ["return", "end"])
@pytest.mark.parametrize("via", ["call", "bare"])
def test_return_and_end_are_equivalent(core, style, via):
    def child():
        yield bluelet.null()
        if style == "return":
            return ("value", 7)
        yield bluelet.end(("value", 7))

    def root():
        if via == "call":
            v = yield bluelet.call(child())
        else:
            v = yield child()
        return v

    assert bluelet.run(root()) == ("value", 7)


def test_call_child_without_result_gives_none(core):
    def child():
        yield bluelet.null()

    def root():
        v = yield bluelet.call(child())
        w = yield child()
        return (v, w)

    assert bluelet.run(root()) == (None, None)


def test_call_child_with_no_yields(core):
    def child():
        return "immediate"
        yield  # pragma: no cover - makes this a generator

    def root():
        return (yield bluelet.call(child()))

    assert bluelet.run(root()) == "immediate"


def test_end_closes_the_generator_before_parent_resumes(core):
    events = []

    def child():
        try:
            yield bluelet.end(5)
            events.append("after end")
        finally:
            events.append("child finally")

    def root():
        v = yield bluelet.call(child())
        events.append("parent got %r" % (v,))

    bluelet.run(root())
    assert events == ["child finally", "parent got 5"]


def test_call_child_starts_on_the_next_pass_as_in_0_2_0(core):
    # The callee is queued behind the coroutines already runnable: 0.2.0
    # runs the spawned one's first step, then the callee's (docs/order.md).
    trace = []

    def root():
        yield bluelet.spawn(_step_noting(trace, "other"))
        yield bluelet.call(_step_noting(trace, "child"))
        trace.append("root")

    bluelet.run(root())
    assert trace == ["other", "child", "root"]


def test_child_exception_raised_in_parent_at_yield(core):
    events = []
    err = Boom("from child")

    def grandchild():
        yield bluelet.null()
        raise err

    def child():
        try:
            yield grandchild()
            events.append("child continued")
        finally:
            events.append("child finally")

    def root():
        try:
            yield bluelet.call(child())
        except Boom as e:
            events.append(("caught", e))
        yield bluelet.null()
        return "survived"

    assert bluelet.run(root()) == "survived"
    assert events == ["child finally", ("caught", err)]


def test_parent_can_handle_child_exception_and_call_again(core):
    def flaky(n):
        yield bluelet.null()
        if n < 2:
            raise ValueError(n)
        return n

    def root():
        n = 0
        while True:
            try:
                return (yield flaky(n))
            except ValueError:
                n += 1

    assert bluelet.run(root()) == 2


# ---------------------------------------------------------------------------
# FIFO fairness
# ---------------------------------------------------------------------------


def _taking_turns(trace, name, rounds):
    """Coroutine: ``rounds`` times, note name and round in ``trace``, then null()."""
    for i in range(rounds):
        trace.append("%s%d" % (name, i))
        yield bluelet.null()


def test_null_round_robin_is_strict(core):
    trace = []

    def root():
        yield bluelet.spawn(_taking_turns(trace, "a", 4))
        yield bluelet.spawn(_taking_turns(trace, "b", 4))
        yield bluelet.spawn(_taking_turns(trace, "c", 4))

    bluelet.run(root())
    # Each spawn is handled on the pass after its yield, so the three start
    # one pass apart, then take turns in the order they were spawned.
    assert trace == ["a0", "a1", "b0", "a2", "b1", "c0", "a3", "b2", "c1", "b3", "c2", "c3"]


def test_root_takes_part_in_round_robin(core):
    trace = []

    def root():
        for n in "abc":
            yield bluelet.spawn(_taking_turns(trace, n, 3))
        for i in range(3):
            trace.append("r%d" % i)
            yield bluelet.null()

    bluelet.run(root())
    # The root runs first in each pass: it was there first.
    assert trace == ["a0", "r0", "a1", "b0", "r1", "a2", "b1", "c0", "r2", "b2", "c1", "c2"]


def test_null_goes_behind_all_ready_coroutines(core):
    trace = []

    def once(name):
        trace.append(name)
        yield bluelet.null()
        trace.append(name + "2")

    def root():
        for n in ("x", "y", "z"):
            yield bluelet.spawn(once(n))
        trace.append("root before null")
        yield bluelet.null()
        trace.append("root after null")

    bluelet.run(root())
    # A null() resumes on the next pass, in place order: the root (first
    # place) before the children; each child starts the pass after its spawn.
    assert trace == ["x", "root before null", "x2", "y", "root after null", "y2", "z", "z2"]


def test_spawned_children_run_in_spawn_order(core):
    trace = []

    def root():
        for i in range(20):
            yield bluelet.spawn(_step_noting(trace, i))

    bluelet.run(root())
    assert trace == list(range(20))


# ---------------------------------------------------------------------------
# spawn
# ---------------------------------------------------------------------------


def test_spawn_parent_continues_before_child_runs(core):
    trace = []

    def root():
        yield bluelet.spawn(_step_noting(trace, "child"))
        trace.append("parent after spawn")
        yield bluelet.spawn(_step_noting(trace, "child"))
        trace.append("parent after second spawn")

    bluelet.run(root())
    assert trace == ["parent after spawn", "parent after second spawn", "child", "child"]


def _not_generators():
    def genfunc():
        yield 1

    async def acoro():
        pass

    return [42, "gen", [1, 2], None, genfunc, lambda: None, iter([1, 2]), acoro]


@pytest.mark.parametrize("factory", ["spawn", "call", "join", "kill"])
def test_non_generator_raises_typeerror_at_the_call(core, factory):
    fn = getattr(bluelet, factory)
    for obj in _not_generators():
        with pytest.raises(TypeError, match="needs a coroutine"):
            fn(obj)


def test_spawn_non_generator_inside_coroutine_raises_at_call(core):
    def root():
        try:
            ev = bluelet.spawn(123)
        except TypeError:
            return "caught at call"
        yield ev  # pragma: no cover
        return "not raised"

    assert bluelet.run(root()) == "caught at call"


def test_spawn_already_running_coroutine_raises_at_yield(core):
    events = []

    def root():
        c = sleeper(0.05, events, "child finally")
        yield bluelet.spawn(c)
        yield bluelet.null()  # child now blocked in its sleep
        ev = bluelet.spawn(c)  # no error at the call
        try:
            yield ev
        except ValueError:
            events.append("ValueError at yield")
        yield bluelet.join(c)
        events.append("joined")

    bluelet.run(root())
    assert events == ["ValueError at yield", "child finally", "joined"]


def test_spawn_of_generator_running_in_a_call_chain_raises(core):
    """A generator another coroutine is delegating to (call) is running."""
    trace = []
    h = {}

    def c():
        trace.append("c start")
        yield bluelet.sleep(0.05)
        trace.append("c end")
        return "c result"

    def other():
        yield bluelet.null()  # by now root has called c, which sleeps
        try:
            yield bluelet.spawn(h["c"])
            trace.append("spawn accepted")
        except ValueError:
            trace.append("ValueError")

    def root():
        h["c"] = c()
        yield bluelet.spawn(other())
        v = yield h["c"]
        trace.append(("root got", v))

    bluelet.run(root())
    assert trace == ["c start", "ValueError", "c end", ("root got", "c result")]


def test_spawn_of_self_raises_at_yield(core):
    me = []

    def root():
        try:
            yield bluelet.spawn(me[0])
        except ValueError:
            return "ValueError"
        return "no error"

    g = root()
    me.append(g)
    assert bluelet.run(g) == "ValueError"


# ---------------------------------------------------------------------------
# Unhandled exceptions
# ---------------------------------------------------------------------------


def test_unhandled_exception_in_spawned_ends_run_after_cleanup(core):
    events = []
    err = Boom("spawned failed")

    def reader(rf):
        try:
            yield bluelet.read(rf, 10)
        finally:
            events.append("reader finally")

    def joiner(g):
        try:
            yield bluelet.join(g)
        finally:
            events.append("joiner finally")

    def failing():
        yield bluelet.sleep(0)  # after the next poll: the others wait by then
        events.append("raising")
        raise err

    def root(rf):
        try:
            s = sleeper(10, events)
            yield bluelet.spawn(s)
            yield bluelet.spawn(joiner(s))
            yield bluelet.spawn(reader(rf))
            yield bluelet.spawn(failing())
            yield bluelet.call(sleeper(10, events, "inner finally"))
            events.append("root continued")
        finally:
            events.append("root finally")

    t0 = time.monotonic()
    with pipe_files() as (rf, wf), pytest.raises(Boom) as ei:
        bluelet.run(root(rf))
    assert ei.value is err
    assert events[0] == "raising"
    assert sorted(events[1:]) == [
        "inner finally", "joiner finally", "reader finally", "root finally", "sleeper finally",
    ]
    assert time.monotonic() - t0 < 5  # did not wait for the 10 s sleepers


def test_unhandled_exception_in_root_ends_run_after_cleanup(core):
    events = []
    err = Boom("root failed")

    def root():
        yield bluelet.spawn(sleeper(10, events))
        yield bluelet.sleep(0)  # after the next poll: the sleeper sleeps by then
        raise err

    with pytest.raises(Boom) as ei:
        bluelet.run(root())
    assert ei.value is err
    assert events == ["sleeper finally"]


def test_exception_in_unjoined_child_while_root_joins_other(core):
    err = Boom()

    def forever():
        yield bluelet.sleep(10)

    def failing():
        yield bluelet.sleep(0.01)
        raise err

    def root():
        f = forever()
        yield bluelet.spawn(f)
        yield bluelet.spawn(failing())
        yield bluelet.join(f)

    with pytest.raises(Boom) as ei:
        bluelet.run(root())
    assert ei.value is err


@pytest.mark.parametrize(
    "exc_type", [ConnectionResetError, BrokenPipeError, ConnectionAbortedError]
)
def test_connection_errors_end_only_that_coroutine(core, exc_type, caplog):
    caplog.set_level(logging.DEBUG, logger="bluelet")
    events = []

    def victim():
        try:
            yield bluelet.null()
            raise exc_type("peer went away")
        finally:
            events.append("victim finally")

    def root():
        yield bluelet.spawn(victim())
        yield bluelet.sleep(0.01)
        events.append("root goes on")
        return "root ok"

    assert bluelet.run(root()) == "root ok"
    assert events == ["victim finally", "root goes on"]
    assert any(
        (r.name == "bluelet" or r.name.startswith("bluelet."))
        and r.levelno == logging.DEBUG
        for r in caplog.records
    ), "expected a DEBUG record on logger 'bluelet'"


@pytest.mark.parametrize(
    "exc_type", [ConnectionResetError, BrokenPipeError, ConnectionAbortedError]
)
def test_connection_error_is_raised_in_a_joiner(core, exc_type):
    def victim():
        yield bluelet.null()
        raise exc_type("peer went away")

    def root():
        v = victim()
        yield bluelet.spawn(v)
        try:
            yield bluelet.join(v)
        except exc_type as exc:
            return "join raised %s" % exc
        return "join returned"

    assert bluelet.run(root()) == "join raised peer went away"


@pytest.mark.parametrize(
    "exc_type", [ConnectionResetError, BrokenPipeError, ConnectionAbortedError]
)
def test_connection_error_escaping_the_root_ends_run(core, exc_type):
    """The root's failure is the program's: run() raises it and closes the rest."""
    events = []

    def bystander():
        try:
            yield bluelet.sleep(30)
        finally:
            events.append("bystander closed")

    def root():
        yield bluelet.spawn(bystander())
        yield bluelet.sleep(0)  # after the next poll: the bystander sleeps by then
        raise exc_type("peer went away")

    with pytest.raises(exc_type, match="peer went away"):
        bluelet.run(root())
    assert events == ["bystander closed"]


def test_connection_error_in_delegate_is_raised_in_caller(core):
    def child():
        yield bluelet.null()
        raise ConnectionResetError("reset")

    def root():
        try:
            yield child()
        except ConnectionResetError:
            return "caught"
        return "not raised"

    assert bluelet.run(root()) == "caught"


# ---------------------------------------------------------------------------
# Yielding things that are not events
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [5, "not an event", [1, 2, 3], None, 3.5, {"a": 1}, object],
    ids=["int", "str", "list", "None", "float", "dict", "type"],
)
def test_yielding_non_event_raises_typeerror_at_yield(core, value):
    def root():
        try:
            yield value
        except TypeError as e:
            msg = str(e)
        else:  # pragma: no cover
            return "no error"
        # The coroutine goes on normally after catching it.
        yield bluelet.null()
        v = yield bluelet.ValueEvent("after")
        return (msg, v)

    msg, v = bluelet.run(root())
    assert repr(value) in msg
    assert v == "after"


def test_yielding_a_non_event_raises_typeerror_naming_it(core):
    obj = object()
    text = repr(obj)

    def root():
        try:
            yield obj
        except TypeError as e:
            return str(e)
        return "no error"

    msg = bluelet.run(root())
    assert "must yield events or coroutines" in msg
    assert text in msg


def test_yielding_non_event_uncaught_ends_run_with_typeerror(core):
    events = []

    def bad():
        yield bluelet.null()
        yield 12345

    def root():
        yield bluelet.spawn(sleeper(10, events))
        yield bluelet.spawn(bad())

    with pytest.raises(TypeError, match="12345"):
        bluelet.run(root())
    assert events == ["sleeper finally"]


def test_yielding_non_event_in_delegate_reaches_caller(core):
    def child():
        yield "bogus"

    def root():
        try:
            yield child()
        except TypeError as e:
            return str(e)

    assert "'bogus'" in bluelet.run(root())


# ---------------------------------------------------------------------------
# join
# ---------------------------------------------------------------------------


def test_join_waits_for_child(core):
    events = []

    def root():
        c = _then_noting(events, "child done", sleep=0.02)
        yield bluelet.spawn(c)
        v = yield bluelet.join(c)
        events.append(("joined", v))

    bluelet.run(root())
    assert events == ["child done", ("joined", None)]


def test_join_of_finished_coroutine_returns_at_once(core):
    events = []

    def root():
        q = _then_noting(events, "quick done")
        yield bluelet.spawn(_then_noting(events, "slow done", sleep=0.3))
        yield bluelet.spawn(q)
        yield bluelet.sleep(0.02)
        assert "quick done" in events
        v = yield bluelet.join(q)
        events.append(("joined", v))
        v = yield bluelet.join(q)  # again
        events.append(("joined again", v))

    bluelet.run(root())
    assert events == [
        "quick done",
        ("joined", None),
        ("joined again", None),
        "slow done",
    ]


def test_join_of_coroutine_that_never_yielded(core):
    def instant():
        return 1
        yield  # pragma: no cover

    def root():
        c = instant()
        yield bluelet.spawn(c)
        yield bluelet.join(c)
        return "joined"

    assert bluelet.run(root()) == "joined"


def test_many_joiners_all_woken(core):
    woken = []

    def child():
        yield bluelet.sleep(0.02)

    def joiner(c, i):
        yield bluelet.join(c)
        woken.append(i)

    def root():
        c = child()
        yield bluelet.spawn(c)
        for i in range(5):
            yield bluelet.spawn(joiner(c, i))
        yield bluelet.join(c)
        woken.append("root")

    bluelet.run(root())
    assert sorted(woken, key=str) == sorted([0, 1, 2, 3, 4, "root"], key=str)


@pytest.mark.parametrize("verb", ["join", "kill"])
def test_join_or_kill_of_never_spawned_raises_at_yield(core, verb):
    def never():
        yield bluelet.null()

    g = never()

    def root():
        ev = getattr(bluelet, verb)(g)  # no error at the call
        try:
            yield ev
        except ValueError:
            return "ValueError"
        return "no error"

    try:
        assert bluelet.run(root()) == "ValueError"
    finally:
        g.close()


# ---------------------------------------------------------------------------
# kill
# ---------------------------------------------------------------------------


def test_kill_closes_call_chain_innermost_first_and_wakes_joiners(core):
    events = []

    def joiner(v):
        v_ = yield bluelet.join(v)
        events.append(("joiner woke", v_))

    def root():
        b = _noting(events, "b", bluelet.sleep(10))
        a = _noting(events, "a", bluelet.call(b))
        v = _noting(events, "outer", bluelet.call(a))
        yield bluelet.spawn(v)
        yield bluelet.spawn(joiner(v))
        yield bluelet.sleep(0.02)  # victim is now blocked in b's sleep
        r = yield bluelet.kill(v)
        events.append(("killer resumed", r))
        yield bluelet.join(v)
        events.append("root joined")

    t0 = time.monotonic()
    bluelet.run(root())
    assert time.monotonic() - t0 < 5
    assert events[:4] == ["b finally", "a finally", "outer finally", ("killer resumed", None)]
    assert sorted(events[4:], key=str) == sorted(
        [("joiner woke", None), "root joined"], key=str
    )


def test_kill_of_ready_not_started_coroutine(core):
    events = []

    def root():
        v = _step_noting(events, "victim ran")
        yield bluelet.spawn(v)
        yield bluelet.kill(v)
        yield bluelet.sleep(0.01)
        yield bluelet.join(v)
        events.append("root done")

    bluelet.run(root())
    assert events == ["root done"]


def test_kill_of_finished_coroutine_is_noop(core):
    events = []

    def root():
        c = _then_noting(events, "child done")
        yield bluelet.spawn(c)
        yield bluelet.join(c)
        r = yield bluelet.kill(c)
        events.append(("killed", r))
        yield bluelet.kill(c)
        events.append("killed again")
        return "ok"

    assert bluelet.run(root()) == "ok"
    assert events == ["child done", ("killed", None), "killed again"]


@pytest.mark.parametrize("where", ["own-body", "delegate"])
def test_coroutine_killing_its_own_task_ends_with_finally(core, where):
    """The kill comes from the task's own body, or from a delegate it calls."""
    events = []
    me = []

    def inner():
        try:
            yield bluelet.kill(me[0])
            events.append("inner continued")
        finally:
            events.append("inner finally")

    def victim():
        try:
            events.append("start")
            if where == "own-body":
                yield bluelet.kill(me[0])
            else:
                yield bluelet.call(inner())
            events.append("victim continued")
        finally:
            events.append("victim finally")

    def root():
        v = victim()
        me.append(v)
        yield bluelet.spawn(v)
        yield bluelet.join(v)
        events.append("joined")
        return "root ok"

    assert bluelet.run(root()) == "root ok"
    if where == "own-body":
        assert events == ["start", "victim finally", "joined"]
    else:
        assert events == ["start", "inner finally", "victim finally", "joined"]


def test_kill_sibling_blocked_in_join(core):
    events = []

    def root():
        f = sleeper(10, events, "forever finally")
        w = _noting(events, "waiter", bluelet.join(f))
        yield bluelet.spawn(f)
        yield bluelet.spawn(w)
        yield bluelet.null()
        yield bluelet.kill(w)
        yield bluelet.kill(f)
        events.append("root done")

    t0 = time.monotonic()
    bluelet.run(root())
    assert time.monotonic() - t0 < 5
    assert events == ["waiter finally", "forever finally", "root done"]


# ---------------------------------------------------------------------------
# Deadlock
# ---------------------------------------------------------------------------


def _spawn_two_joining_each_other(events):
    """Coroutine: spawn ``a`` and ``b``, each joining the other, so neither can
    ever wake; each notes "<name> finally" in ``events`` when it is closed.
    Returns ``(a, b)``."""
    h = {}

    def joining(name, other):
        try:
            yield bluelet.join(h[other])
        finally:
            events.append(name + " finally")

    h["a"], h["b"] = joining("a", "b"), joining("b", "a")
    yield bluelet.spawn(h["a"])
    yield bluelet.spawn(h["b"])
    return h["a"], h["b"]


def test_deadlock_two_coroutines_joining_each_other(core):
    events = []

    def root():
        a, _ = yield _spawn_two_joining_each_other(events)
        try:
            yield bluelet.join(a)
        finally:
            events.append("root finally")

    with pytest.raises(RuntimeError, match=r"^deadlock: "):
        bluelet.run(root())
    assert sorted(events) == ["a finally", "b finally", "root finally"]


def test_deadlock_detected_after_root_finished(core):
    events = []

    def root():
        yield _spawn_two_joining_each_other(events)
        return "root returned"

    with pytest.raises(RuntimeError, match=r"^deadlock: "):
        bluelet.run(root())
    assert sorted(events) == ["a finally", "b finally"]


def test_deadlock_detected_promptly_after_a_sleeper_was_killed(core):
    events = []

    def root():
        s = sleeper(10, events)
        yield bluelet.spawn(s)
        yield bluelet.null()
        yield bluelet.kill(s)  # its 10 s deadline must not keep the loop waiting
        yield _spawn_two_joining_each_other(events)

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^deadlock: "):
        bluelet.run(root())
    assert time.monotonic() - t0 < 5
    assert sorted(events) == ["a finally", "b finally", "sleeper finally"]


def test_self_join_is_not_a_hang(core):
    """A coroutine joining itself can never wake: deadlock or error, not hang."""
    me = []

    def root():
        yield bluelet.join(me[0])

    g = root()
    me.append(g)
    with pytest.raises((RuntimeError, ValueError)):
        bluelet.run(g)


# ---------------------------------------------------------------------------
# User WaitableEvent subclasses
# ---------------------------------------------------------------------------


def test_waitable_event_fires_when_pipe_readable(core):
    PipeRead = _fd_readable_event(lambda fd: ("fired", os.read(fd, 100)))
    events = []
    with raw_pipes(1) as [(r, w)]:

        def writer():
            yield bluelet.sleep(0.03)
            events.append("writing")
            os.write(w, b"ping")

        def root():
            yield bluelet.spawn(writer())
            v = yield PipeRead(r)
            events.append(v)
            return v

        assert bluelet.run(root()) == ("fired", b"ping")
        assert events == ["writing", ("fired", b"ping")]


def test_waitable_event_with_file_objects_and_write_direction(core):
    class Readable(bluelet.WaitableEvent):
        def __init__(self, f):
            self.f = f

        def waitables(self):
            return [self.f], [], []

        def fire(self):
            return self.f.read(100)

    class Writable(bluelet.WaitableEvent):
        def __init__(self, f, data):
            self.f, self.data = f, data

        def waitables(self):
            return (), (self.f,), ()

        def fire(self):
            return self.f.write(self.data)

    with pipe_files() as (rf, wf):

        def reader():
            return (yield Readable(rf))

        def root():
            n = yield Writable(wf, b"hello")
            data = yield reader()
            return n, data

        assert bluelet.run(root()) == (5, b"hello")


def test_waitable_event_fires_once_when_one_of_several_is_ready(core):
    fired = []

    class AnyOf(bluelet.WaitableEvent):
        def __init__(self, fds):
            self.fds = fds

        def waitables(self):
            return list(self.fds), (), ()

        def fire(self):
            fired.append("fire")
            return "one is ready"

    with raw_pipes(2) as [(r1, _), (r2, w2)]:
        os.write(w2, b"x")  # only the second pipe is readable

        def root():
            v = yield AnyOf([r1, r2])
            yield bluelet.sleep(0.02)  # a second fire() would show up here
            return v

        assert bluelet.run(root()) == "one is ready"
        assert fired == ["fire"]


def test_waitable_event_fire_exception_raised_at_yield(core):
    err = Boom("fire failed")

    def read_then_fail(fd):
        os.read(fd, 100)
        raise err

    Failing = _fd_readable_event(read_then_fail)
    with raw_pipes(1) as [(r, w)]:
        os.write(w, b"x")

        def root():
            try:
                yield Failing(r)
            except Boom as e:
                return ("caught", e)
            return "no error"

        result = bluelet.run(root())
        assert result == ("caught", err)
        assert result[1] is err


def test_waitable_event_unhandled_fire_exception_ends_run(core):
    err = Boom()

    def fail(fd):
        raise err

    Failing = _fd_readable_event(fail)
    with raw_pipes(1) as [(r, w)]:
        os.write(w, b"x")

        def root():
            yield Failing(r)

        with pytest.raises(Boom) as ei:
            bluelet.run(root())
        assert ei.value is err


def test_waitable_event_with_no_waitables_raises_valueerror(core):
    class Empty(bluelet.WaitableEvent):
        def waitables(self):
            return (), (), ()

        def fire(self):  # pragma: no cover
            return "fired"

    class Default(bluelet.WaitableEvent):
        pass

    def root():
        out = []
        for ev in (Empty(), Default()):
            try:
                v = yield ev
            except ValueError:
                out.append("ValueError")
            else:  # pragma: no cover
                out.append(("value", v))
        return out

    assert bluelet.run(root()) == ["ValueError", "ValueError"]


def test_many_waitable_events_on_pipes(core):
    PipeRead = _fd_readable_event(_read_100)
    got = []
    with raw_pipes(20) as pipes:

        def reader(i, r):
            data = yield PipeRead(r)
            got.append((i, data))

        def root():
            for i, (r, _) in enumerate(pipes):
                yield bluelet.spawn(reader(i, r))
            yield bluelet.sleep(0.01)
            for i, (_, w) in reversed(list(enumerate(pipes))):
                os.write(w, b"%d" % i)
                yield bluelet.sleep(0.001)

        bluelet.run(root())
        assert sorted(got) == [(i, b"%d" % i) for i in range(20)]


@pytest.mark.parametrize("how", ["waitable-event", "wait_readable"])
def test_int_fd_number_reused_within_one_run(core, how):
    """Waiting on raw int fds: a pipe is closed and the next one gets the same
    fd number; waiting on the new one must still work (0.2.0 programs do this)."""
    PipeRead = _fd_readable_event(_read_100)
    fds_seen = []

    def writer(w):
        yield bluelet.sleep(0.01)
        os.write(w, b"data")

    def once():
        with raw_pipes(1) as [(r, w)]:
            fds_seen.append(r)
            yield bluelet.spawn(writer(w))
            if how == "waitable-event":
                data = yield PipeRead(r)
            else:
                yield bluelet.wait_readable(r)
                data = os.read(r, 100)
            return data

    def root():
        wd = fail_after(1.5, "reader of a reused fd")
        yield bluelet.spawn(wd)
        got = []
        for _ in range(3):
            got.append((yield once()))
        yield bluelet.kill(wd)
        return got

    assert bluelet.run(root()) == [b"data"] * 3
    assert len(set(fds_seen)) < len(fds_seen)  # the scenario really reused a number


# ---------------------------------------------------------------------------
# ValueEvent / ExceptionEvent / event classes
# ---------------------------------------------------------------------------


def test_value_event(core):
    trace = []

    def root():
        yield bluelet.spawn(_step_noting(trace, "other"))
        v = yield bluelet.ValueEvent({"k": 1})
        trace.append(("root", v))
        return v

    assert bluelet.run(root()) == {"k": 1}
    # The ValueEvent took a pass: the root resumes on the pass where the
    # spawned coroutine takes its first step, before it (an earlier place).
    assert trace == [("root", {"k": 1}), "other"]


def test_exception_event(core):
    exc_info = _raised(Boom("stored"))

    def root():
        try:
            yield bluelet.ExceptionEvent(exc_info)
        except Boom as e:
            return e
        return None

    assert bluelet.run(root()) is exc_info[1]


def test_exception_event_uncaught_ends_run(core):
    exc_info = _raised(Boom("stored"))

    def root():
        yield bluelet.ExceptionEvent(exc_info)

    with pytest.raises(Boom) as ei:
        bluelet.run(root())
    assert ei.value is exc_info[1]


def test_factories_return_public_event_classes(core):
    def g():
        yield bluelet.null()

    gen = g()
    try:
        assert isinstance(bluelet.null(), bluelet.Event)
        assert isinstance(bluelet.sleep(0.1), bluelet.SleepEvent)
        assert isinstance(bluelet.spawn(gen), bluelet.SpawnEvent)
        assert isinstance(bluelet.join(gen), bluelet.JoinEvent)
        assert isinstance(bluelet.kill(gen), bluelet.KillEvent)
        assert isinstance(bluelet.call(gen), bluelet.DelegationEvent)
        assert isinstance(bluelet.end(1), bluelet.ReturnEvent)
        for cls in (
            bluelet.WaitableEvent, bluelet.ValueEvent, bluelet.ExceptionEvent,
            bluelet.SpawnEvent, bluelet.JoinEvent, bluelet.KillEvent,
            bluelet.DelegationEvent, bluelet.ReturnEvent, bluelet.SleepEvent,
            bluelet.ReadEvent, bluelet.WriteEvent,
        ):
            assert issubclass(cls, bluelet.Event), cls
    finally:
        gen.close()


# ---------------------------------------------------------------------------
# sleep
# ---------------------------------------------------------------------------


def test_sleep_lasts_at_least_its_duration(core):
    def root():
        t0 = time.monotonic()
        yield bluelet.sleep(0.05)
        return time.monotonic() - t0

    assert bluelet.run(root()) >= 0.05 * 0.98


def test_sleep_returns_none_and_accepts_int_and_negative(core):
    def root():
        a = yield bluelet.sleep(0)
        b = yield bluelet.sleep(-1)
        c = yield bluelet.sleep(-0.5)
        return a, b, c

    t0 = time.monotonic()
    assert bluelet.run(root()) == (None, None, None)
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("bad", ["x", "0.01", None, [0.01]], ids=["str", "numeric-str", "None", "list"])
def test_sleep_rejects_non_number_with_typeerror(core, bad):
    def root():
        try:
            yield bluelet.sleep(bad)  # raised at the call or at the yield
        except TypeError:
            return "TypeError"
        except Exception as e:  # pragma: no cover - reported by the assert
            return "%s: %s" % (type(e).__name__, e)
        return "accepted"

    assert bluelet.run(root()) == "TypeError"


def test_sleep_rejects_nan_with_valueerror(core):
    def root():
        try:
            yield bluelet.sleep(float("nan"))  # raised at the call or at the yield
        except ValueError:
            return "ValueError"
        return "accepted"

    assert bluelet.run(root()) == "ValueError"


@pytest.mark.parametrize("duration", [float("inf"), 1e10], ids=["inf", "1e10"])
def test_very_long_sleep_does_not_break_other_waits(core, duration):
    """A coroutine sleeping "forever" is the nearest deadline while another
    waits on a pipe: the program goes on and the sleeper can be killed."""
    events = []
    with pipe_files() as (rf, wf):

        def root():
            f = _noting(events, "forever", bluelet.sleep(duration))
            yield bluelet.spawn(f)
            yield bluelet.null()  # f is now asleep
            wf.write(b"x")
            data = yield bluelet.read(rf, 10)
            yield bluelet.kill(f)
            return data

        assert bluelet.run(root()) == b"x"
        assert events == ["forever finally"]


def test_sleepers_wake_in_deadline_order(core):
    woke = []
    durations = [0.05, 0.01, 0.04, 0.02, 0.03]

    def root():
        for d in durations:
            yield bluelet.spawn(_then_noting(woke, d, sleep=d))

    bluelet.run(root())
    assert woke == sorted(durations)


def test_ready_coroutines_run_while_others_sleep(core):
    trace = []

    def busy():
        for _ in range(50):
            yield bluelet.null()
        trace.append("busy")

    def root():
        yield bluelet.spawn(_then_noting(trace, "sleeper", sleep=0.1))
        yield bluelet.spawn(busy())

    bluelet.run(root())
    assert trace == ["busy", "sleeper"]


# ---------------------------------------------------------------------------
# read / write / wait_readable / wait_writable / notify_closing on pipes
# ---------------------------------------------------------------------------


def test_read_write_pipe(core):
    with pipe_files() as (rf, wf):

        def writer():
            yield bluelet.sleep(0.02)
            yield bluelet.write(wf, b"abc")

        def root():
            yield bluelet.spawn(writer())
            data = yield bluelet.read(rf, 100)
            return data

        assert bluelet.run(root()) == b"abc"


def test_read_to_eof_with_bufsize_none(core):
    chunks = [b"hello", b" ", b"world", b"x" * 3000]
    with pipe_files() as (rf, wf):

        def writer():
            for c in chunks:
                yield bluelet.sleep(0.005)
                yield bluelet.write(wf, c)
            wf.close()

        def root():
            yield bluelet.spawn(writer())
            data = yield bluelet.read(rf)
            return data

        assert bluelet.run(root()) == b"".join(chunks)


def test_read_at_eof_returns_empty(core):
    with pipe_files() as (rf, wf):
        wf.close()

        def root():
            a = yield bluelet.read(rf, 10)
            b = yield bluelet.read(rf)
            return a, b

        assert bluelet.run(root()) == (b"", b"")


def test_wait_readable_and_writable(core):
    with pipe_files() as (rf, wf):

        def writer():
            yield bluelet.sleep(0.02)
            v = yield bluelet.wait_writable(wf)
            wf.write(b"z")
            return v

        def root():
            yield bluelet.spawn(writer())
            v = yield bluelet.wait_readable(rf)
            return v, rf.read(10)

        assert bluelet.run(root()) == (None, b"z")


def test_notify_closing_wakes_waiter_with_socket_closed_error(core):
    events = []
    with pipe_files() as (rf, wf):

        def waiter():
            try:
                yield bluelet.wait_readable(rf)
                events.append("woke normally")
            except bluelet.SocketClosedError:
                events.append("SocketClosedError")

        def root():
            w = waiter()
            yield bluelet.spawn(w)
            yield bluelet.sleep(0.02)
            bluelet.notify_closing(rf)
            yield bluelet.join(w)
            events.append("joined")

        t0 = time.monotonic()
        bluelet.run(root())
        assert time.monotonic() - t0 < 5
        assert events == ["SocketClosedError", "joined"]


# ---------------------------------------------------------------------------
# Scale
# ---------------------------------------------------------------------------


def test_ten_thousand_sleepers_and_one_busy_coroutine(core):
    n = 10_000
    woke = []
    busy_done = []

    def sleeper(i):
        yield bluelet.sleep(0.2 + (i % 101) / 1000.0)
        woke.append(i)

    def busy():
        for _ in range(1000):
            yield bluelet.null()
        busy_done.append(len(woke))

    def root():
        for i in range(n):
            yield bluelet.spawn(sleeper(i))
        yield bluelet.spawn(busy())

    # Virtual time: the sleepers' deadlines cannot pass while busy runs,
    # however slow the machine (the polls for fairness jump no clock).
    bluelet.run(root(), virtual_time=True)
    assert busy_done == [0]  # busy finished before any sleeper woke
    assert len(woke) == n
    assert sorted(woke) == list(range(n))


def test_thousand_spawned_coroutines_joined(core):
    done = []

    def worker(i):
        yield bluelet.null()
        done.append(i)
        return i

    def root():
        gens = [worker(i) for i in range(1000)]
        for g in gens:
            yield bluelet.spawn(g)
        results = []
        for g in gens:
            results.append((yield bluelet.join(g)))
        return len(done), results

    count, results = bluelet.run(root())
    assert count == 1000
    assert results == list(range(1000))
    assert sorted(done) == list(range(1000))


# ---------------------------------------------------------------------------
# KeyboardInterrupt while the scheduler waits
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("wait", ["sleep", "pipe"])
def test_keyboard_interrupt_thrown_into_root(core, wait):
    events = []

    def root(rf):
        yield bluelet.spawn(sleeper(10, events, "child finally"))
        try:
            if wait == "sleep":
                yield bluelet.sleep(5)
            else:
                yield bluelet.read(rf, 10)
        except KeyboardInterrupt:
            events.append("root caught")
            return "stopped"
        return "not interrupted"

    t0 = time.monotonic()
    with pipe_files() as (rf, wf), sigint_soon():
        result = bluelet.run(root(rf))
    assert result == "stopped"
    assert sorted(events) == ["child finally", "root caught"]
    assert time.monotonic() - t0 < 4


def test_keyboard_interrupt_goes_to_innermost_of_root_call_chain(core):
    events = []

    def inner():
        try:
            yield bluelet.sleep(5)
        except KeyboardInterrupt:
            events.append("inner caught")
            return "inner stopped"
        finally:
            events.append("inner finally")

    def middle():
        try:
            v = yield bluelet.call(inner())
            events.append(("middle got", v))
            return v
        finally:
            events.append("middle finally")

    def root():
        v = yield middle()
        return v

    with sigint_soon():
        result = bluelet.run(root())
    assert result == "inner stopped"
    assert events == [
        "inner caught",
        "inner finally",
        ("middle got", "inner stopped"),
        "middle finally",
    ]


def test_keyboard_interrupt_uncaught_propagates_out_of_run(core):
    events = []

    def root():
        try:
            yield bluelet.sleep(5)
        finally:
            events.append("root finally")

    with sigint_soon(), pytest.raises(KeyboardInterrupt):
        bluelet.run(root())
    assert events == ["root finally"]


# ---------------------------------------------------------------------------
# timeout() around a single event (the body runs in a core-made wrapper)
# ---------------------------------------------------------------------------


def test_timeout_around_an_event_gives_its_value_or_raises_timeout(core):
    def root():
        got = [(yield bluelet.timeout(1.0, bluelet.ValueEvent("v")))]
        got.append((yield bluelet.timeout(1.0, bluelet.sleep(0.001))))
        try:
            yield bluelet.timeout(0.01, bluelet.sleep(5))
        except bluelet.Timeout as exc:
            got.append(str(exc))
        return got

    assert bluelet.run(root()) == ["v", None, "timed out after 0.01 s"]


def test_timeout_around_an_event_passes_a_tuple_value_whole(core):
    """The wrapper made for the event is resumed with the value as one
    argument (Python 3.9's path once spread a tuple into several)."""
    def root():
        return (yield bluelet.timeout(1.0, bluelet.ValueEvent((b"data", ("127.0.0.1", 9)))))

    assert bluelet.run(root()) == (b"data", ("127.0.0.1", 9))


def test_timeout_around_a_socket_send_completes(core):
    a, b = socket.socketpair()
    conn = bluelet.Connection(a, None)

    def root():
        try:
            yield bluelet.timeout(5, conn.sendall(b"x" * 10))
            return b.recv(10)
        finally:
            conn.close()
            b.close()

    assert bluelet.run(root()) == b"x" * 10


def test_a_coroutine_spinning_on_null_does_not_starve_timers_or_io(core):
    # 0.2.0 polled only when nothing was ready, so this spinner froze every
    # timer and socket; ours polls after 256 passes without a poll.
    left, right = socket.socketpair()
    done = []

    def sleeper():
        yield bluelet.sleep(0.01)
        done.append("timer")

    def reader():
        data = yield bluelet.Connection(left, None).recv(10)
        done.append(data)

    def spinner():
        for spins in range(20_000_000):
            if len(done) == 2:
                return spins
            yield bluelet.null()
        return None

    def root():
        right.sendall(b"ready")
        yield bluelet.spawn(sleeper())
        yield bluelet.spawn(reader())
        return (yield spinner())

    try:
        spins = bluelet.run(root())
    finally:
        left.close()
        right.close()
    assert spins is not None, "the spinner starved the timer or the socket"
    assert set(done) == {b"ready", "timer"}
