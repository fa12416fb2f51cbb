"""Cancellation: deadlines as scopes, shield(), task groups, a context per coroutine.

Every test runs on both cores (``core`` fixture). Sleep-only programs run
under the virtual clock, so their timings are exact and take no real time.
"""

import contextvars
import gc
import math
import sys
import tracemalloc

import pytest

import bluelet
from _helpers import HOST, open_pair

pytestmark = pytest.mark.timeout(30)

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


class Boom(Exception):
    pass


def kill_after(seconds, coro):
    """Coroutine: spawn ``coro``, kill it ``seconds`` later; the kill's value."""
    yield bluelet.spawn(coro)
    yield bluelet.sleep(seconds)
    return (yield bluelet.kill(coro))


def ticker(ticks, period=0.005):
    while True:
        ticks.append(bluelet.current_time())
        yield bluelet.sleep(period)


# ---------------------------------------------------------------------------
# Deadlines as scopes
# ---------------------------------------------------------------------------

def idle_reader(conn, log):
    """The issue's reader: an idle timeout per read, retried on Timeout."""
    while True:
        try:
            return (yield conn.recv(10, timeout=0.01))
        except bluelet.Timeout:
            log.append("idle")


def test_nested_deadline_ends_at_the_outer_one_while_others_run(core, no_fd_leak):
    ticks, log = [], []

    def root():
        listener = bluelet.Listener(HOST, 0)
        conn, peer = yield from open_pair(listener)
        t = ticker(ticks)
        yield bluelet.spawn(t)
        start = bluelet.current_time()
        try:
            yield bluelet.timeout(0.05, idle_reader(peer, log))
        except bluelet.Timeout:
            log.append("outer timeout")
        elapsed = bluelet.current_time() - start
        before = len(ticks)
        yield bluelet.sleep(0.03)
        after = len(ticks)
        yield bluelet.kill(t)
        for sock in (conn, peer, listener):
            sock.close()
        return elapsed, before, after

    elapsed, before, after = bluelet.run(root())
    assert log[-1] == "outer timeout"
    assert 3 <= log.count("idle") <= 5        # each inner deadline was its own Timeout
    assert 0.05 <= elapsed < 1.0
    assert after > before                     # the ticker kept ticking after it


def test_expired_scope_is_not_caught_by_except_exception_oserror_or_timeout(core):
    caught = []

    def stubborn():
        for handler in (Exception, OSError, bluelet.Timeout):
            try:
                yield bluelet.sleep(1)
            except handler:
                caught.append(handler.__name__)   # must never happen
        return "fell through"

    def root():
        try:
            yield bluelet.timeout(0.1, stubborn())
        except bluelet.Timeout as exc:
            return str(exc)

    assert bluelet.run(root(), virtual_time=True) == "timed out after 0.1 s"
    assert caught == []


def test_cancellation_inside_the_body_is_cancelled_and_finally_runs(core):
    seen = []

    def body():
        try:
            yield bluelet.sleep(1)
        except bluelet.Cancelled as exc:
            seen.append(str(exc))
            raise
        finally:
            seen.append("finally")

    def root():
        with pytest.raises(bluelet.Timeout):
            yield bluelet.fail_after(0.25, body())
        return seen

    assert bluelet.run(root(), virtual_time=True) == [
        "the deadline of a 0.25 s scope passed", "finally"]


def test_move_on_after_gives_none_and_the_value_otherwise(core):
    def root():
        late = yield bluelet.move_on_after(0.1, bluelet.sleep(1))
        on_time = yield bluelet.move_on_after(1, bluelet.ValueEvent(7))
        return late, on_time, bluelet.current_time()

    assert bluelet.run(root(), virtual_time=True) == (None, 7, 0.1)


def nap(seconds, log, name):
    try:
        yield bluelet.sleep(seconds)
        log.append(name + " woke")
        return name
    finally:
        log.append(name + " finally")


@pytest.mark.parametrize("outer, inner, expected", [
    # The inner deadline passes first: its own Timeout, caught inside.
    (1.0, 0.1, ["inner finally", "inner Timeout", "after woke", "after finally", "done"]),
    # The outer one first: the inner scope does not catch it; the outer does.
    (0.1, 1.0, ["inner finally", "outer Timeout"]),
    # Both at once: the outer one is the cancellation.
    (0.1, 0.1, ["inner finally", "outer Timeout"]),
])
def test_nested_scopes_in_every_order(core, outer, inner, expected):
    log = []

    def middle():
        try:
            yield bluelet.timeout(inner, nap(5, log, "inner"))
        except bluelet.Timeout:
            log.append("inner Timeout")
        yield from nap(0.2, log, "after")
        log.append("done")

    def root():
        try:
            yield bluelet.timeout(outer, middle())
        except bluelet.Timeout:
            log.append("outer Timeout")
        return log

    assert bluelet.run(root(), virtual_time=True) == expected


@pytest.mark.parametrize("outer_verb, inner_verb", [
    ("move_on_after", "fail_after"), ("fail_after", "move_on_after"),
    ("move_on_after", "move_on_after")])
def test_mixed_scopes_the_outermost_expired_one_decides(core, outer_verb, inner_verb):
    def root():
        inner = getattr(bluelet, inner_verb)(1.0, bluelet.sleep(5))
        try:
            value = yield getattr(bluelet, outer_verb)(0.1, inner)
        except bluelet.Timeout:
            return "Timeout", bluelet.current_time()
        return value, bluelet.current_time()

    expected = "Timeout" if outer_verb == "fail_after" else None
    assert bluelet.run(root(), virtual_time=True) == (expected, 0.1)


def test_a_coroutine_that_keeps_swallowing_is_closed_and_reported(core):
    ticks = []

    def swallower():
        while True:
            try:
                yield bluelet.sleep(1)
            except bluelet.Cancelled:
                pass

    def root():
        t = ticker(ticks, 0.01)
        yield bluelet.spawn(t)
        try:
            yield bluelet.timeout(0.05, swallower())
        finally:
            yield bluelet.kill(t)

    with pytest.raises(RuntimeError, match="carried on while being cancelled"):
        bluelet.run(root(), virtual_time=True)
    assert len(ticks) >= 5


def test_current_deadline(core):
    seen = []

    def look():
        seen.append(bluelet.current_deadline())
        yield bluelet.null()

    def root():
        yield from look()
        yield bluelet.timeout(2, bluelet.timeout(1, look()))
        yield bluelet.timeout(1, bluelet.move_on_after(3, look()))
        yield bluelet.timeout(1, bluelet.shield(look()))
        yield bluelet.timeout(1, bluelet.shield(bluelet.timeout(4, look())))
        return seen

    assert bluelet.run(root(), virtual_time=True) == [math.inf, 1, 1, math.inf, 4]


def test_many_expired_inner_deadlines_keep_memory_flat(core):
    """Each retry of the issue's reader adds and drops a deadline: the
    loop's memory must not grow with the count of retries."""

    def retries(count):
        for _ in range(count):
            try:
                yield bluelet.timeout(0.001, bluelet.sleep(1))
            except bluelet.Timeout:
                pass

    def measure(count):
        tracemalloc.start()
        try:
            def root():
                yield from retries(200)  # warm up: free lists, heap arrays
                base = tracemalloc.get_traced_memory()[0]
                yield from retries(count)
                return tracemalloc.get_traced_memory()[0] - base
            return bluelet.run(root(), virtual_time=True)
        finally:
            tracemalloc.stop()

    assert measure(20000) < 64 * 1024


def test_deadline_reaches_the_waiter_the_moment_it_passes(core, no_fd_leak):
    """A scope's cancellation interrupts a wait on a socket with no data."""

    def root():
        listener = bluelet.Listener(HOST, 0)
        conn, peer = yield from open_pair(listener)
        try:
            got = yield bluelet.move_on_after(0.05, peer.recv(10))
            yield conn.sendall(b"late")
            data = yield peer.recv(10, timeout=5)
        finally:
            for sock in (conn, peer, listener):
                sock.close()
        return got, data

    assert bluelet.run(root()) == (None, b"late")


# ---------------------------------------------------------------------------
# shield()
# ---------------------------------------------------------------------------

def test_shield_runs_its_body_to_the_end_past_an_outer_deadline(core):
    log = []

    def cleanup():
        yield bluelet.sleep(0.5)
        log.append(("flushed", bluelet.current_time()))
        return "flushed"

    def body():
        value = yield bluelet.shield(cleanup())
        log.append(value)
        yield bluelet.sleep(0)  # the first scheduling point after the shield
        log.append("never")

    def root():
        try:
            yield bluelet.timeout(0.1, body())
        except bluelet.Timeout:
            log.append(("Timeout", bluelet.current_time()))
        return log

    assert bluelet.run(root(), virtual_time=True) == [
        ("flushed", 0.5), "flushed", ("Timeout", 0.5)]


def test_a_deadline_set_inside_a_shield_still_applies(core):
    def root():
        got = yield bluelet.timeout(0.1, bluelet.shield(
            bluelet.move_on_after(0.3, bluelet.sleep(1))))
        return got, bluelet.current_time()

    # Shielded from the outer 0.1 s; the inner 0.3 s ends the sleep; the
    # outer cancellation has no scheduling point left before the scope ends.
    assert bluelet.run(root(), virtual_time=True) == (None, 0.3)


def test_kill_of_a_shielded_coroutine_lands_after_the_shield(core):
    log = []

    def victim():
        try:
            yield bluelet.shield(nap(0.5, log, "shielded"))
            log.append("after shield")
            yield bluelet.sleep(1)
            log.append("never")
        finally:
            log.append("victim finally")

    def root():
        result = yield from kill_after(0.1, victim())  # waits until the victim has ended
        log.append(("killed", bluelet.current_time(), result))
        return log

    assert bluelet.run(root(), virtual_time=True) == [
        "shielded woke", "shielded finally", "after shield", "victim finally",
        ("killed", 0.5, None)]


def test_a_finally_block_can_say_goodbye_inside_a_shield_when_killed(core, no_fd_leak):
    def handler(peer):
        try:
            yield bluelet.sleep(10)
        finally:
            yield bluelet.shield(peer.sendall(b"goodbye\n"))
            peer.close()

    def root():
        listener = bluelet.Listener(HOST, 0)
        conn, peer = yield from open_pair(listener)
        yield from kill_after(0.01, handler(peer))
        line = yield conn.readline(timeout=5)
        rest = yield conn.recv(10, timeout=5)
        conn.close()
        listener.close()
        return line, rest

    assert bluelet.run(root()) == (b"goodbye\n", b"")


def test_without_shield_a_finally_block_cannot_wait_when_killed(core):
    log = []

    def victim():
        try:
            yield bluelet.sleep(10)
        finally:
            try:
                yield bluelet.sleep(0.1)
            except bluelet.Cancelled:
                log.append("cleanup cancelled")

    def root():
        yield from kill_after(0.01, victim())
        return log

    assert bluelet.run(root(), virtual_time=True) == ["cleanup cancelled"]


# ---------------------------------------------------------------------------
# Task groups
# ---------------------------------------------------------------------------

def worker(seconds, log, name, fail=False):
    try:
        yield bluelet.sleep(seconds)
        if fail:
            raise Boom(name)
        log.append(name + " done")
        return name
    finally:
        log.append(name + " finally")


def test_group_returns_the_body_result_once_every_member_has_ended(core):
    log = []

    def body(group):
        yield group.spawn(worker(0.3, log, "a"))
        yield group.spawn(worker(0.1, log, "b"))
        return "body result"

    def root():
        result = yield bluelet.task_group(body)
        return result, bluelet.current_time(), log

    assert bluelet.run(root(), virtual_time=True) == (
        "body result", 0.3, ["b done", "b finally", "a done", "a finally"])


def test_group_raises_every_failure_together_and_cancels_the_rest(core):
    log = []

    def fails_when_cancelled():
        try:
            yield bluelet.sleep(10)
        except bluelet.Cancelled:
            raise Boom("y")

    def body(group):
        yield group.spawn(worker(0.1, log, "x", fail=True))
        yield group.spawn(fails_when_cancelled())
        yield group.spawn(worker(5, log, "slow"))
        yield bluelet.sleep(10)
        log.append("body never")

    def root():
        try:
            yield bluelet.task_group(body)
        except ExceptionGroup as group:
            return sorted(str(exc) for exc in group.exceptions), bluelet.current_time()

    assert bluelet.run(root(), virtual_time=True) == (["x", "y"], 0.1)
    assert "slow finally" in log and "body never" not in log


def test_group_wraps_a_single_failure_too(core):
    def body(group):
        yield group.spawn(worker(0.1, [], "only", fail=True))

    def root():
        with pytest.raises(ExceptionGroup) as info:
            yield bluelet.task_group(body)
        return [type(exc).__name__ for exc in info.value.exceptions]

    assert bluelet.run(root(), virtual_time=True) == ["Boom"]


def server_like(port_box, log):
    """Gets ready after 0.2 s, says so with its 'port', then serves."""
    yield bluelet.sleep(0.2)
    yield bluelet.started(8080)
    log.append("serving")
    yield bluelet.sleep(10)


def test_group_start_waits_for_started_and_gives_its_value(core):
    log = []

    def body(group):
        port = yield group.start(server_like(None, log))
        log.append(("ready", port, bluelet.current_time()))
        yield group.cancel()

    def root():
        result = yield bluelet.task_group(body)
        return result, log

    # started() wakes the starter; the member goes on until it waits.
    assert bluelet.run(root(), virtual_time=True) == (None, ["serving", ("ready", 8080, 0.2)])


def test_group_start_raises_what_fails_before_started(core):
    def broken():
        yield bluelet.sleep(0.1)
        raise Boom("before started")

    def silent():
        yield bluelet.sleep(0.1)

    def body(group):
        with pytest.raises(Boom):
            yield group.start(broken())
        with pytest.raises(RuntimeError, match="without calling bluelet.started"):
            yield group.start(silent())
        return "body ok"

    assert bluelet.run(bluelet.task_group(body), virtual_time=True) == "body ok"


def test_killing_the_owner_cancels_every_member_first(core):
    log = []

    def body(group):
        yield group.spawn(worker(10, log, "a"))
        yield group.spawn(worker(10, log, "b"))
        yield bluelet.sleep(10)

    def owner():
        try:
            yield bluelet.task_group(body)
        finally:
            log.append("owner finally")

    def root():
        yield from kill_after(1, owner())
        return log

    assert bluelet.run(root(), virtual_time=True) == [
        "a finally", "b finally", "owner finally"]


def test_a_deadline_around_a_group_cancels_it(core):
    log = []

    def body(group):
        yield group.spawn(worker(10, log, "a"))
        yield bluelet.sleep(10)

    def root():
        got = yield bluelet.move_on_after(0.5, bluelet.task_group(body))
        return got, bluelet.current_time(), log

    assert bluelet.run(root(), virtual_time=True) == (None, 0.5, ["a finally"])


def test_members_can_spawn_into_a_running_group(core):
    log = []

    def spawner(group, depth):
        log.append(("member", depth))
        yield bluelet.sleep(0.1)
        if depth < 3:
            yield group.spawn(spawner(group, depth + 1))

    def body(group):
        yield group.spawn(spawner(group, 0))

    def root():
        yield bluelet.task_group(body)
        return log, bluelet.current_time()

    assert bluelet.run(root(), virtual_time=True) == (
        [("member", 0), ("member", 1), ("member", 2), ("member", 3)], 0.4)


def test_spawning_into_an_ended_group_is_an_error(core):
    kept = []

    def body(group):
        kept.append(group)
        yield bluelet.null()

    def root():
        yield bluelet.task_group(body)
        with pytest.raises(RuntimeError, match="has ended"):
            yield kept[0].spawn(worker(0, [], "late"))
        return "ok"

    assert bluelet.run(root(), virtual_time=True) == "ok"


def test_group_arguments_are_checked_at_the_call(core):
    with pytest.raises(TypeError):
        bluelet.task_group("not callable")

    def root():
        with pytest.raises(TypeError, match="must return a coroutine"):
            yield bluelet.task_group(lambda group: None)

        def body(group):
            with pytest.raises(TypeError):
                group.spawn(lambda: None)
            yield bluelet.null()
        yield bluelet.task_group(body)
        return "ok"

    assert bluelet.run(root(), virtual_time=True) == "ok"


# ---------------------------------------------------------------------------
# A contextvars context per coroutine
# ---------------------------------------------------------------------------

request_id = contextvars.ContextVar("request_id", default=None)


def test_each_spawned_coroutine_has_its_own_context(core):
    seen = {}

    def handler(name):
        request_id.set(name)
        yield bluelet.sleep(0.1)
        seen[name] = request_id.get()

    def helper():
        request_id.set("set by a callee")
        yield bluelet.null()

    def root():
        request_id.set("root")
        a, b = handler("a"), handler("b")
        yield bluelet.spawn(a)
        yield bluelet.spawn(b)
        yield bluelet.join(a)
        yield bluelet.join(b)
        seen["root after siblings"] = request_id.get()
        yield helper()                        # a call shares its caller's context
        seen["root after call"] = request_id.get()

    request_id.set("outside")
    bluelet.run(root(), virtual_time=True)
    assert seen == {"a": "a", "b": "b", "root after siblings": "root",
                    "root after call": "set by a callee"}
    assert request_id.get() == "outside"      # run() left the caller's context as it was


def test_a_spawned_coroutine_starts_from_a_copy_of_its_spawners_context(core):
    def child():
        inherited = request_id.get()
        request_id.set("child's own")
        yield bluelet.null()
        return inherited

    def root():
        request_id.set("from the spawner")
        c = child()
        yield bluelet.spawn(c)
        inherited = yield bluelet.join(c)
        return inherited, request_id.get()

    assert bluelet.run(root(), virtual_time=True) == ("from the spawner", "from the spawner")


def test_finally_blocks_of_a_killed_coroutine_see_its_context(core):
    seen = []

    def victim():
        request_id.set("victim")
        try:
            yield bluelet.sleep(10)
        finally:
            seen.append(request_id.get())

    def root():
        request_id.set("killer")
        yield from kill_after(0.1, victim())
        seen.append(request_id.get())

    bluelet.run(root(), virtual_time=True)
    assert seen == ["victim", "killer"]


# ---------------------------------------------------------------------------
# The compiled core holds no reference it should not
# ---------------------------------------------------------------------------

def _generator_types():
    """Every generator type alive in the process (Cython makes its own)."""
    return [obj for obj in gc.get_objects()
            if isinstance(obj, type) and obj.__name__ in ("generator", "_cython_generator")]


def test_timeouts_leave_no_reference_on_any_generator_type(core):
    """Cython 3.3's generator type gained a reference per generator the core
    made (timeout()'s body wrapper): the core makes no generators now."""

    def root(count):
        for _ in range(count):
            yield bluelet.timeout(1, bluelet.null())
            yield bluelet.move_on_after(1, bluelet.ValueEvent(1))

    bluelet.run(root(100), virtual_time=True)
    before = {id(t): sys.getrefcount(t) for t in _generator_types()}
    bluelet.run(root(5000), virtual_time=True)
    grown = [(t, sys.getrefcount(t) - before[id(t)]) for t in _generator_types()
             if id(t) in before and sys.getrefcount(t) - before[id(t)] > 100]
    assert grown == []
