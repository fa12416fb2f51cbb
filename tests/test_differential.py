"""Differential test of the two scheduler cores on random coroutine programs.

Hypothesis draws a small *program description*: a tree of coroutines, each a
list of operations -- spawn, call (bare generator or ``call()``), ``return`` /
``end(v)``, join, kill (of a coroutine it or its parent spawned, of itself,
its parent, the root), sleep (also through a user SleepEvent subclass), null,
ValueEvent, raise (Boom, the "quiet" connection errors, SystemExit), an
ExceptionEvent, yield of a non-event or of a plain Event subclass, a user
WaitableEvent or a core fd event on always-ready pipes, reuse of an
existing generator (spawn/call it again), a child run in a
``fail_after``/``move_on_after`` scope or a ``shield``, a child as the body
of a ``task_group`` and children spawned into that group, a child called inside
an ``async with`` scope block (fail_after, move_on_after, shield; entered and
left as ``async with`` does). Each coroutine is a generator that yields its
events, one that takes them with ``yield from`` (the iterator behind
``await``), or an ``async def`` that awaits such a generator, so native
coroutines are spawned, called, joined and killed too. Each operation's errors are caught
there or propagate to the caller; a coroutine may also raise or yield again
when it is closed. One interpreter (``coro``) turns the description into
generators that append what they observe to a trace. The same description
runs on the pure core and on the compiled core, each under the virtual clock
(``Loop(virtual_time=True)``), in the order coroutines became ready or shuffled
by a drawn ``schedule_seed``, and the traces, the outcome of ``run()`` (its
value, or the exception's type, message and identity), what was logged on the
"bluelet" logger and which generators were left unclosed must all be equal.

Boundedness: nesting depth <= 3 below the root, <= 8 operations per
coroutine, <= 10 coroutines per program, and no loops, so every program
terminates; a deadlock ends ``run()`` with RuntimeError, which is compared
like any other outcome. A second generator stresses the timer heap (hundreds
of sleepers, killed in bulk), and hand-written programs pin expected traces.

Sleep durations are small dyadic fractions (k/1024 s, about 0, 1, 2 and 5 ms):
sums of decimal durations such as 0.1 + 0.2 round, so "equal" deadlines reached
by different paths might not tie; dyadic durations add exactly.

200 derandomized examples run in CI; ``BLUELET_DIFFERENTIAL_EXAMPLES=20000``
runs that many random ones offline (``--hypothesis-seed`` picks them).

Needs the compiled core: without it these tests fail when
``BLUELET_REQUIRE_EXTENSIONS=1`` and are skipped otherwise.
"""

import inspect
import logging
import os
import re
import time
import types

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import bluelet  # noqa: E402
from bluelet import _impl  # noqa: E402

#: Random programs compared per run. ``BLUELET_DIFFERENTIAL_EXAMPLES=20000``
#: runs more offline, with random draws (``--hypothesis-seed`` picks them).
OFFLINE = "BLUELET_DIFFERENTIAL_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("BLUELET_DIFFERENTIAL_EXAMPLES", "200"))

pytestmark = pytest.mark.timeout(0 if OFFLINE else 100)  # 0: none

REQUIRE_EXTENSIONS = os.environ.get("BLUELET_REQUIRE_EXTENSIONS", "") not in ("", "0")

MAX_DEPTH = 3          # levels below the root
MAX_OPS = 8            # operations per coroutine
MAX_COROUTINES = 10    # coroutines (tree nodes) per program
SLEEPS = (0.0, 1 / 1024, 2 / 1024, 5 / 1024)
#: What a "raise" op raises: ours, the "quiet" connection errors (they end only
#: their own coroutine), and a BaseException that is not an Exception.
RAISABLE = ("Boom", "ConnectionResetError", "BrokenPipeError", "SystemExit")
#: A user WaitableEvent on descriptors that are always ready (a pipe holding
#: data that nobody drains; a pipe with room), or broken in some way.
WAITABLE_MODES = ("r", "w", "rw", "none", "raise_waitables", "raise_fire")
#: Core fd events on always-ready pipes: read 1 byte, write 1 byte, wait_*.
IO_MODES = ("read", "write", "readable", "writable")


def require_both_cores():
    try:
        _impl.load("cython")
    except ImportError as exc:
        message = ("the compiled core bluelet._loop does not import (%s: %s); the "
                   "differential test compares it with the pure core" % (type(exc).__name__, exc))
        if REQUIRE_EXTENSIONS:
            pytest.fail(message + " -- BLUELET_REQUIRE_EXTENSIONS=1 makes this a failure")
        pytest.skip(message + " (set BLUELET_REQUIRE_EXTENSIONS=1 to fail instead)")


class Boom(Exception):
    """The only exception programs raise on purpose."""

    def __repr__(self):
        return "Boom(%r)" % (self.args[0],)


# ---------------------------------------------------------------------------
# Program descriptions
#
# node   = (nid, ops, on_close[, style])
# style: "yield" (the default), "yield from" (events taken with yield from),
#        "async" (an async def awaiting the "yield from" interpreter)
# op     = (kind, arg, catch)      catch: the op's yield is in try/except Exception
# on_close: None | "raise" (raise Boom when killed (Cancelled) or closed)
#               | "yield" (yield again when killed or closed)
# targets: ("spawned", k)  k-th coroutine this one spawned (k = -1: the latest)
#          ("child", k)    k-th generator this coroutine created (spawned or called)
#          ("sibling", k)  k-th coroutine its parent spawned so far (maybe itself)
#          ("self",) ("parent",) ("root",)
# ---------------------------------------------------------------------------

_INDEX = st.integers(-1, 3)  # -1: the latest
TARGET = st.one_of(
    st.tuples(st.sampled_from(["spawned", "spawned", "spawned", "child", "sibling", "sibling"]),
              _INDEX),
    st.sampled_from([("self",), ("parent",), ("root",)]),
)
#: The argument of each operation kind.
ARGS = {
    "null": st.none(),
    "sleep": st.sampled_from(SLEEPS + SLEEPS[:2]),  # short ones twice: more ties
    "sub_sleep": st.sampled_from(SLEEPS),
    "value": st.integers(0, 9),
    "join": TARGET,
    "kill": TARGET,
    "io": st.sampled_from(IO_MODES),
    "return": st.integers(0, 9),
    "end": st.integers(0, 9),
    "raise": st.sampled_from(RAISABLE),
    "exc_event": st.none(),
    "badyield": st.none(),
    "plain_event": st.none(),
    "waitable": st.sampled_from(WAITABLE_MODES),
    "reuse": st.tuples(st.sampled_from(["spawn", "call", "bare"]), TARGET),
}
#: Operation kinds, repeated to weight the draw: joins, kills and sleeps are
#: what interleave coroutines; errors are rarer so that programs live long
#: enough to interleave.
SIMPLE_KINDS = (
    ["join"] * 4 + ["kill"] * 3 + ["sleep"] * 5 + ["null", "value", "sub_sleep", "io"] * 2
    + ["return", "end", "raise", "exc_event", "badyield", "plain_event", "waitable", "reuse"]
)
#: Most errors are caught where they happen; the rest propagate to the
#: caller or end run().
CATCH = st.sampled_from([True, True, True, False])
NEST_VERB = st.sampled_from(["spawn", "spawn", "call", "bare", "fail_after", "move_on_after",
                             "shield", "group", "gspawn", "block_fail_after",
                             "block_move_on_after", "block_shield"])
#: Verbs whose child runs in a scope with a deadline (drawn from SLEEPS).
SCOPE_VERBS = ("fail_after", "move_on_after")
#: Verbs whose child is called inside a scope block: the scope function's name.
BLOCK_VERBS = {"block_fail_after": "fail_after", "block_move_on_after": "move_on_after",
               "block_shield": "shield"}
STYLE = st.sampled_from(["yield", "yield", "yield from", "async"])
#: The schedule: the order ready coroutines became ready in (None), or
#: shuffled by a seed, which both cores must follow alike.
SEED = st.one_of(st.none(), st.integers(0, 2 ** 64 - 1))


@st.composite
def programs(draw):
    budget = [MAX_COROUTINES - 1]

    def node(nid, depth):
        ops = []
        for i in range(draw(st.integers(0, MAX_OPS))):
            can_nest = depth < MAX_DEPTH and budget[0] > 0
            if can_nest and draw(st.integers(0, 2)) == 0:
                budget[0] -= 1
                verb = draw(NEST_VERB)
                child = node("%s.%d" % (nid, i), depth + 1)
                if verb in SCOPE_VERBS or verb in BLOCK_VERBS:
                    op = (verb, (draw(st.sampled_from(SLEEPS)), child))
                else:
                    op = (verb, child)
            else:
                kind = draw(st.sampled_from(SIMPLE_KINDS))
                op = (kind, draw(ARGS[kind]))
            ops.append(op + (draw(CATCH),))
        on_close = draw(st.sampled_from([None, None, None, "raise", "yield"]))
        return (nid, tuple(ops), on_close, draw(STYLE))

    return node("r", 0)


# ---------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def norm(text):
    """Strip memory addresses from reprs (they differ between runs)."""
    return _ADDRESS.sub(" at 0x?", text)


class Context:
    def __init__(self):
        self.trace = []
        self.gens = {}       # nid -> generator
        self.parent = {}     # nid -> parent nid
        self.on_close = {}   # nid -> on_close
        self.children = {}   # nid -> the generators it created, in order
        self.spawned = {}    # nid -> the generators it spawned, in order
        self.raised = []     # every Boom raised on purpose, to check identity
        self.done = False    # after run(): closing zombies must not yield again
        self.groups = {}     # nid of a task group's body -> the group
        self.inner = []      # the generators that async nodes await
        self.env = None      # per-run classes and pipes, built after the core switch


def make_coroutine(node, ctx):
    """The coroutine of ``node`` in its style."""
    style = node[3] if len(node) > 3 else "yield"
    if style == "async":
        return awaiting(node, ctx)
    return coro(node, ctx, style == "yield from")


async def awaiting(node, ctx):
    gen = coro(node, ctx, True)
    # Kept, as ctx.gens keeps the coroutines: a generator left suspended by a
    # failed close() must not be finalized (running its finally) whenever
    # one core or the other happens to drop its last reference.
    ctx.inner.append(gen)
    return await _delegate(gen)


@types.coroutine
def _delegate(gen):
    return (yield from gen)


def in_block(block, event):
    """What ``async with block: got = await event`` does, in a generator:
    the same events, through the iterators ``await`` uses."""
    yield from block.__aenter__()
    try:
        got = yield event
    except BaseException as exc:
        if not (yield from block.__aexit__(type(exc), exc, exc.__traceback__)):
            raise
        return None
    yield from block.__aexit__(None, None, None)
    return got


def coro(node, ctx, via_iter=False):
    nid, ops, on_close = node[:3]
    trace = ctx.trace
    trace.append(("start", nid))
    children = ctx.children.setdefault(nid, [])
    spawned = ctx.spawned.setdefault(nid, [])

    def take(event):
        # An event's value, by yield or by the iterator await uses.
        if via_iter:
            return (yield from event)
        return (yield event)

    def make(child, spawn=False):
        gen = make_coroutine(child, ctx)
        ctx.gens[child[0]] = gen
        ctx.parent[child[0]] = nid
        ctx.on_close[child[0]] = child[2]
        children.append(gen)
        if spawn:
            spawned.append(gen)
        return gen

    def resolve(target):
        if target[0] in ("child", "spawned"):
            mine = children if target[0] == "child" else spawned
            return mine[target[1] % len(mine)] if mine else None
        if target[0] == "sibling":
            siblings = ctx.spawned.get(ctx.parent.get(nid), [])
            return siblings[target[1] % len(siblings)] if siblings else None
        if target[0] == "self":
            return ctx.gens[nid]
        if target[0] == "parent":
            parent = ctx.parent.get(nid)
            return None if parent is None else ctx.gens[parent]
        return ctx.gens["r"]

    def boom(i):
        exc = Boom("%s:%d" % (nid, i))
        ctx.raised.append(exc)
        return exc

    try:
        for i, (kind, arg, catch) in enumerate(ops):
            try:
                if kind == "null":
                    got = yield from take(bluelet.null())
                elif kind == "sleep":
                    got = yield from take(bluelet.sleep(arg))
                elif kind == "value":
                    got = yield from take(bluelet.ValueEvent(arg))
                elif kind == "spawn":
                    got = yield from take(bluelet.spawn(make(arg, spawn=True)))
                elif kind == "call":
                    got = yield from take(bluelet.call(make(arg)))
                elif kind == "bare":
                    got = yield make(arg)
                elif kind in SCOPE_VERBS:
                    seconds, child = arg
                    got = yield getattr(bluelet, kind)(seconds, make(child))
                elif kind == "shield":
                    got = yield bluelet.shield(make(arg))
                elif kind in BLOCK_VERBS:
                    seconds, child = arg
                    scope = getattr(bluelet, BLOCK_VERBS[kind])
                    block = scope() if kind == "block_shield" else scope(seconds)
                    got = yield from in_block(block, bluelet.call(make(child)))
                elif kind == "group":
                    def body(group, child=arg):
                        ctx.groups[child[0]] = group
                        return make(child)
                    got = yield bluelet.task_group(body)
                elif kind == "gspawn":
                    group = ctx.groups.get(nid)
                    if group is None:
                        trace.append(("skip", nid, i))
                        continue
                    got = yield group.spawn(make(arg))
                elif kind in ("join", "kill"):
                    target = resolve(arg)
                    if target is None:
                        trace.append(("skip", nid, i))
                        continue
                    verb = bluelet.join if kind == "join" else bluelet.kill
                    got = yield from take(verb(target))
                elif kind == "reuse":
                    verb, spec = arg
                    target = resolve(spec)
                    if target is None:
                        trace.append(("skip", nid, i))
                        continue
                    if verb == "spawn":
                        got = yield bluelet.spawn(target)
                    elif verb == "call":
                        got = yield bluelet.call(target)
                    else:
                        got = yield target
                elif kind == "return":
                    trace.append(("return", nid, arg))
                    return arg
                elif kind == "end":
                    trace.append(("end", nid, arg))
                    yield bluelet.end(arg)
                    trace.append(("after end!", nid))
                    continue
                elif kind == "raise":
                    if arg == "Boom":
                        raise boom(i)
                    raise {"ConnectionResetError": ConnectionResetError,
                           "BrokenPipeError": BrokenPipeError,
                           "SystemExit": SystemExit}[arg]("%s:%d" % (nid, i))
                elif kind == "exc_event":
                    got = yield bluelet.ExceptionEvent(boom(i))
                elif kind == "badyield":
                    got = yield ("not", "an", "event", i)
                elif kind == "plain_event":
                    got = yield ctx.env.PlainEvent()
                elif kind == "sub_sleep":
                    got = yield ctx.env.MySleep(arg)
                elif kind == "waitable":
                    got = yield ctx.env.waitable(arg, (nid, i))
                elif kind == "io":
                    got = yield ctx.env.io(arg)
                else:  # pragma: no cover
                    raise AssertionError(kind)
            except BaseException as exc:
                if not catch or not isinstance(exc, Exception):
                    trace.append(("raising", nid, i, norm(repr(exc))))
                    raise
                trace.append(("caught", nid, i, norm(repr(exc))))
            else:
                trace.append(("got", nid, i, got))
        trace.append(("fell off", nid))
        return "result of " + nid
    except (GeneratorExit, bluelet.Cancelled):
        trace.append(("closed", nid))
        if on_close == "raise":
            raise boom(-1)
        if on_close == "yield" and not ctx.done:
            yield bluelet.null()
        raise
    finally:
        trace.append(("finally", nid))


class Environment:
    """What programs use beyond the verbs, built from the active core's classes."""

    def __init__(self):
        self.ready_r, ready_w = os.pipe()      # holds one byte, never drained: readable
        os.write(ready_w, b"!")
        self.room_r, self.room_w = os.pipe()   # nobody reads: writable (small writes)
        data_r, data_w = os.pipe()             # plenty to read, one byte per read
        os.write(data_w, b"x" * 4096)
        os.close(data_w)
        self.data = os.fdopen(data_r, "rb", buffering=0)
        self.sink = os.fdopen(os.dup(self.room_w), "wb", buffering=0)
        self.fds = [self.ready_r, ready_w, self.room_r, self.room_w]

        class PlainEvent(bluelet.Event):
            """An Event subclass the scheduler cannot wait for."""

        class MySleep(bluelet.SleepEvent):
            """A user subclass of a core event: still a sleep."""

        class Waitable(bluelet.WaitableEvent):
            def __init__(self, mode, tag, env):
                self.mode, self.tag, self.env = mode, tag, env

            def waitables(self):
                if self.mode == "raise_waitables":
                    raise Boom("waitables %s:%d" % self.tag)
                if self.mode == "none":
                    return (), (), ()
                r = [self.env.ready_r] if "r" in self.mode or self.mode == "raise_fire" else []
                w = [self.env.room_w] if "w" in self.mode else []
                return r, w, ()

            def fire(self):
                if self.mode == "raise_fire":
                    raise Boom("fire %s:%d" % self.tag)
                return ("fired",) + self.tag

            def __repr__(self):
                return "<Waitable %s %s:%d>" % ((self.mode,) + self.tag)

        self.PlainEvent, self.MySleep, self._Waitable = PlainEvent, MySleep, Waitable

    def waitable(self, mode, tag):
        return self._Waitable(mode, tag, self)

    def io(self, mode):
        if mode == "read":
            return bluelet.read(self.data, 1)
        if mode == "write":
            return bluelet.write(self.sink, b"y")
        if mode == "readable":
            return bluelet.wait_readable(self.ready_r)
        return bluelet.wait_writable(self.room_w)

    def close(self):
        self.data.close()
        self.sink.close()
        for fd in self.fds:
            os.close(fd)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        self.records.append((record.levelname, norm(record.getMessage()),
                             None if exc is None else norm(repr(exc))))


def _state(coroutine):
    """inspect's state of a generator or a native coroutine, without its prefix."""
    if inspect.isgenerator(coroutine):
        return inspect.getgeneratorstate(coroutine)[len("GEN_"):]
    return inspect.getcoroutinestate(coroutine)[len("CORO_"):]


def run_program(core, program, virtual_time=True, seed=None):
    """Run ``program`` on ``core``; return everything observable about the run."""
    previous = _impl.use(core)
    logger = logging.getLogger("bluelet")
    handler = _Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    ctx = Context()
    try:
        ctx.env = Environment()
        root = make_coroutine(program, ctx)
        ctx.gens["r"] = root
        ctx.on_close["r"] = program[2]
        try:
            value = bluelet._impl.Loop(virtual_time=virtual_time, schedule_seed=seed).run(root)
        except BaseException as exc:  # SystemExit from a program, too
            same = [i for i, raised in enumerate(ctx.raised) if raised is exc]
            outcome = ("raised", type(exc).__name__, norm(str(exc)), same)
        else:
            outcome = ("returned", value)
        trace = list(ctx.trace)
        # Started and not ended; a generator made but never run (created
        # during a kill, say) holds nothing to close.
        alive = sorted(nid for nid, gen in ctx.gens.items()
                       if _state(gen) not in ("CREATED", "CLOSED"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        _impl.use(previous)
        # Close what a failed close() left suspended, quietly and off the record.
        ctx.done = True
        for gen in list(ctx.gens.values()) + ctx.inner:
            try:
                gen.close()
            except BaseException:
                pass
        if ctx.env is not None:
            ctx.env.close()
    return {"trace": trace, "outcome": outcome, "log": handler.records, "alive": alive,
            "on_close": ctx.on_close}


def check_same(program, seed=None):
    require_both_cores()
    results = {core: run_program(core, program, seed=seed) for core in ("python", "cython")}
    py, cy = results["python"], results["cython"]
    assert cy["trace"] == py["trace"]
    assert cy["outcome"] == py["outcome"]
    assert cy["log"] == py["log"]
    assert cy["alive"] == py["alive"]
    # Contract checks that hold for both: every coroutine was closed, except one
    # whose close() failed because it yielded again; end() stops a coroutine.
    for result in (py, cy):
        assert all(result["on_close"][nid] == "yield" for nid in result["alive"]), result["alive"]
        assert not any(entry[0] == "after end!" for entry in result["trace"])
    return py


# ---------------------------------------------------------------------------
# Hand-written regression programs
# ---------------------------------------------------------------------------

def N(nid, *ops, on_close=None):
    """A node; ops are (kind, arg) or (kind, arg, catch) with catch defaulting to False."""
    return (nid, tuple(op if len(op) == 3 else op + (False,) for op in ops), on_close)


CHILD = ("spawned", 0)

# Sleepers wake by deadline; equal deadlines FIFO; the root joins both.
EX_SLEEPERS = N("r",
                ("spawn", N("r.0", ("sleep", 5 / 1024), ("value", 1))),
                ("spawn", N("r.1", ("sleep", 1 / 1024), ("null", None))),
                ("spawn", N("r.2", ("sleep", 1 / 1024), ("return", 3))),
                ("join", CHILD), ("join", ("spawned", 1)), ("return", 7))
# A called child raises; the caller catches it; then end() with a value.
EX_CALL_RAISE = N("r",
                  ("call", N("r.0", ("null", None), ("raise", "Boom")), True),
                  ("bare", N("r.1", ("end", 4))),
                  ("end", 9))
# Kill a spawned sibling that is in the middle of a call chain and sleeping.
EX_KILL_CHAIN = N("r",
                  ("spawn", N("r.0", ("bare", N("r.0.0", ("call", N("r.0.0.0",
                                                                   ("sleep", 2 / 1024))))))),
                  # Sleeps past the passes that build the chain (each call
                  # starts its callee a pass later), not past r.0.0.0's sleep.
                  ("sleep", 1 / 1024),
                  ("kill", CHILD), ("join", CHILD), ("kill", CHILD))
# Uncaught exception in a spawned coroutine while others sleep: run() raises it
# after closing the rest, whose close raises too (logged, not raised).
EX_UNCAUGHT = N("r",
                ("spawn", N("r.0", ("sleep", 5 / 1024), on_close="raise")),
                ("spawn", N("r.1", ("exc_event", None))),
                ("sleep", 2 / 1024))
# Deadlock: parent joins child, child joins parent.
EX_DEADLOCK = N("r", ("spawn", N("r.0", ("join", ("parent",)))), ("join", CHILD))
# Errors thrown in at the yield: non-event, join self, kill of a never-spawned
# (called) coroutine, respawn of a running one, kill self.
EX_ERRORS = N("r",
              ("badyield", None, True), ("join", ("self",), True),
              ("call", N("r.2", ("kill", ("self",), True), ("join", ("root",), True),
                         ("reuse", ("spawn", ("root",)), True), ("value", 5)), True),
              ("reuse", ("call", CHILD), True), ("reuse", ("spawn", CHILD), True),
              ("kill", ("self",)), ("value", 1))
# A coroutine that yields while being closed: close() fails with RuntimeError.
EX_CLOSE_YIELDS = N("r", ("spawn", N("r.0", ("sleep", 1 / 1024), on_close="yield")),
                    ("kill", CHILD, True), ("return", 1))
# A called child ends its whole task by killing its spawned parent.
EX_KILL_OWN_TASK = N("r", ("spawn", N("r.0", ("call", N("r.0.0", ("kill", ("parent",)))),
                                      ("value", 2))),
                     ("join", CHILD), ("value", 3))
# Three joiners of one sleeping coroutine wake in the order they joined.
EX_JOINERS = N("r",
               ("spawn", N("r.0", ("sleep", 2 / 1024), ("value", 0))),
               ("spawn", N("r.1", ("join", ("sibling", 0)), ("value", 1))),
               ("spawn", N("r.2", ("join", ("sibling", 0)), ("value", 2))),
               ("join", CHILD), ("value", 3))
# Sleep 0 among null()s and ValueEvents: ready-queue order vs expired timers.
EX_SLEEP_ZERO = N("r",
                  ("spawn", N("r.0", ("sleep", 0.0), ("value", 1), ("sleep", 0.0))),
                  ("spawn", N("r.1", ("null", None), ("null", None), ("null", None))),
                  ("sleep", 0.0), ("null", None), ("value", 2))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not OFFLINE, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs(), SEED)
@example(EX_SLEEPERS, None)
@example(EX_CALL_RAISE, None)
@example(EX_KILL_CHAIN, None)
@example(EX_UNCAUGHT, None)
@example(EX_DEADLOCK, None)
@example(EX_ERRORS, None)
@example(EX_CLOSE_YIELDS, None)
@example(EX_KILL_OWN_TASK, None)
@example(EX_SLEEP_ZERO, None)
@example(EX_JOINERS, None)
def _random_programs(program, seed):
    check_same(program, seed)


def test_cores_agree_on_random_programs():
    require_both_cores()  # before hypothesis starts: a clean skip or failure
    _random_programs()


# ---------------------------------------------------------------------------
# The timer heap under load: many sleepers, many cancelled by kill
#
# The random programs above stay far below the 64 cancelled timers after which
# both cores compact their heap (heapq in one, a C heap in the other); this
# test crosses it: up to 300 sleepers with 1-3 sleeps each, killed in bulk.
# ---------------------------------------------------------------------------

@st.composite
def timer_programs(draw):
    # n sleepers whose 1-3 sleeps come cyclically from a short drawn pattern:
    # cheap to draw and to shrink, yet hundreds of timers with many ties.
    n = draw(st.one_of(st.integers(1, 20), st.integers(65, 300)))
    pattern = draw(st.lists(st.integers(0, 15), min_size=1, max_size=8))
    stride = draw(st.integers(1, 5))
    sleepers = [[pattern[(i * stride + k) % len(pattern)] for k in range(1 + i % 3)]
                for i in range(n)]
    actions = draw(st.lists(st.one_of(
        st.tuples(st.just("kill"), st.integers(0, 299), st.integers(1, 120)),
        st.tuples(st.just("sleep"), st.integers(0, 15), st.just(0)),
        st.tuples(st.just("null"), st.just(0), st.just(0)),
    ), max_size=12))
    return sleepers, actions


def run_timer_program(core, program):
    sleepers, actions = program
    previous = _impl.use(core)
    trace = []
    try:
        def sleeper(i, ticks):
            try:
                for k, tick in enumerate(ticks):
                    yield bluelet.sleep(tick / 1024)
                    trace.append(("woke", i, k))
            finally:
                trace.append(("finally", i))

        def root():
            gens = [sleeper(i, ticks) for i, ticks in enumerate(sleepers)]
            for gen in gens:
                yield bluelet.spawn(gen)
            for kind, a, b in actions:
                if kind == "kill":
                    # Kill a run of b sleepers from a (mod n): bulk cancellation.
                    for j in range(b):
                        yield bluelet.kill(gens[(a + j * 7) % len(gens)])
                    trace.append(("killed", a, b))
                elif kind == "sleep":
                    yield bluelet.sleep(a / 1024)
                    trace.append(("root woke", a))
                else:
                    yield bluelet.null()
                    trace.append(("root null",))
            return len(trace)

        result = bluelet._impl.Loop(virtual_time=True).run(root())
    finally:
        _impl.use(previous)
    return trace, result


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(timer_programs())
@example(([[15, 15, 15]] * 300, [("sleep", 1, 0), ("kill", 0, 120), ("kill", 5, 120),
                                 ("sleep", 2, 0), ("kill", 11, 100), ("sleep", 15, 0)]))
@example(([[k % 16, 1] for k in range(200)], [("kill", 3, 90), ("null", 0, 0), ("sleep", 3, 0),
                                               ("kill", 4, 90), ("sleep", 0, 0)]))
def _timer_programs(program):
    assert run_timer_program("cython", program) == run_timer_program("python", program)


def test_cores_agree_on_timer_heap_under_cancellation():
    require_both_cores()
    _timer_programs()


# A few of the regression programs with their expected behaviour spelled out,
# so that "both cores agree" cannot hide "both cores are wrong".

def test_regression_sleepers_trace():
    result = check_same(EX_SLEEPERS)
    woke = [e for e in result["trace"] if e[0] in ("got", "return") and e[1] != "r"]
    # r.1 and r.2 share a deadline and wake FIFO; r.0 wakes last.
    assert woke == [("got", "r.1", 0, None), ("got", "r.2", 0, None), ("return", "r.2", 3),
                    ("got", "r.1", 1, None), ("got", "r.0", 0, None), ("got", "r.0", 1, 1)]
    assert result["outcome"] == ("returned", 7)


def test_regression_call_raise_is_caught_by_caller():
    result = check_same(EX_CALL_RAISE)
    assert ("caught", "r", 0, "Boom('r.0:1')") in result["trace"]
    assert ("got", "r", 1, 4) in result["trace"]
    assert result["outcome"] == ("returned", 9)


def test_regression_kill_closes_chain_innermost_first():
    result = check_same(EX_KILL_CHAIN)
    closes = [e for e in result["trace"] if e[0] == "finally"]
    assert closes[:3] == [("finally", "r.0.0.0"), ("finally", "r.0.0"), ("finally", "r.0")]
    assert result["outcome"] == ("returned", "result of r")


def test_regression_uncaught_exception_is_the_same_object():
    result = check_same(EX_UNCAUGHT)
    assert result["outcome"] == ("raised", "Boom", "r.1:0", [0])
    assert ("finally", "r.0") in result["trace"]
    assert [level for level, _, _ in result["log"]] == ["ERROR"]


def test_regression_joiners_wake_in_join_order():
    result = check_same(EX_JOINERS)
    trace = result["trace"]
    after = trace[trace.index(("finally", "r.0")) + 1:]
    # The root joined first (before r.1 and r.2 even started), then r.1, then
    # r.2; each join evaluates to r.0's result.
    assert [e for e in after if e[0] == "got" and e[2] == (3 if e[1] == "r" else 0)] == [
        ("got", "r", 3, "result of r.0"), ("got", "r.1", 0, "result of r.0"),
        ("got", "r.2", 0, "result of r.0")]


def test_regression_deadlock():
    result = check_same(EX_DEADLOCK)
    kind, name, message, _ = result["outcome"]
    assert (kind, name) == ("raised", "RuntimeError") and "deadlock" in message


def test_real_time_and_virtual_time_agree_on_widely_separated_sleeps():
    """Under virtual time both cores give the trace real time gives (0.01 s vs 0.05 s)."""
    require_both_cores()
    programs_ = [
        N("r",
          ("spawn", N("r.0", ("sleep", 0.05), ("value", 1))),
          ("spawn", N("r.1", ("sleep", 0.01), ("value", 2), ("sleep", 0.01))),
          ("join", CHILD), ("join", ("spawned", 1)), ("return", 5)),
        # r.0 kills the root at ~0.05 s, while the root sleeps from ~0.02 s to ~0.07 s.
        N("r",
          ("spawn", N("r.0", ("sleep", 0.05), ("kill", ("parent",)), ("value", 4))),
          ("call", N("r.1", ("sleep", 0.01), ("sleep", 0.01))),
          ("sleep", 0.05), ("value", 3)),
    ]
    for program in programs_:
        results = {}
        for core in ("python", "cython"):
            for virtual in (False, True):
                started = time.monotonic()
                results[core, virtual] = run_program(core, program, virtual_time=virtual)
                elapsed = time.monotonic() - started
                if not virtual:
                    assert elapsed >= 0.05  # generous lower bound: it really slept
        reference = results["python", False]
        for key, result in results.items():
            assert result["trace"] == reference["trace"], key
            assert result["outcome"] == reference["outcome"], key


# ---------------------------------------------------------------------------
# Descriptor edge cases found by exploring beyond the random programs. Each
# states the behaviour both cores share.
# ---------------------------------------------------------------------------

def _outcome_of(core, make_root):
    previous = _impl.use(core)
    try:
        try:
            return ("returned", bluelet._impl.Loop(virtual_time=True).run(make_root()))
        except Exception as exc:
            return ("raised", type(exc).__name__)
    finally:
        _impl.use(previous)


def test_wait_on_closed_socket_fails_the_same_way():
    import socket

    def make_root():
        def root():
            sock = socket.socket()
            sock.close()  # fileno() is -1 from now on
            try:
                yield bluelet.wait_readable(sock)
            except Exception as exc:
                return ("at the yield", type(exc).__name__)
        return root()

    require_both_cores()
    assert _outcome_of("python", make_root) == _outcome_of("cython", make_root)


@pytest.mark.parametrize("core", ["python", "cython"])
def test_read_to_eof_on_a_regular_file(core, tmp_path):
    if core == "cython":
        require_both_cores()
    path = tmp_path / "data"
    path.write_bytes(b"hello\n" * 3)

    def make_root():
        def root():
            with open(path, "rb") as f:
                return (yield bluelet.read(f))
        return root()

    assert _outcome_of(core, make_root) == ("returned", b"hello\n" * 3)


def test_cores_agree_when_more_than_1023_fds_are_ready():
    require_both_cores()
    resource = pytest.importorskip("resource")
    count = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * count + 64
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip("needs %d open files, the hard limit is %d" % (needed, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    pipes = [os.pipe() for _ in range(count)]
    try:
        for _, w in pipes:
            os.write(w, b"x")  # every read end stays readable

        def traced(core):
            previous = _impl.use(core)
            trace = []
            try:
                def waiter(i, fd):
                    yield bluelet.wait_readable(fd)
                    trace.append(("woke", i))
                    yield bluelet.null()
                    trace.append(("after", i))

                def root():
                    for i, (r, _) in enumerate(pipes):
                        yield bluelet.spawn(waiter(i, r))

                bluelet._impl.Loop(virtual_time=True).run(root())
            finally:
                _impl.use(previous)
            return trace

        assert traced("cython") == traced("python")
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        if soft < needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
