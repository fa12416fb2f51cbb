"""Programs written in bluelet 0.2.0's API, run on 0.2.0 itself and on our cores.

The machinery behind tests/test_order_020.py:

- ``reference()`` loads tests/reference/bluelet_020.py (bluelet 0.2.0 as
  published) as module ``bluelet_020`` and instruments it: a virtual clock and
  a fake ``select`` (``time`` and ``select`` are module globals there), a fixed
  fire order, and hooks that see when 0.2.0 *handles* a join, a kill or an
  ``end()``, so that the harness can tell when a run hit one of the deliberate
  differences (see FILTERS).
- ``programs()`` is a hypothesis strategy for program descriptions; ``coro``
  interprets one against a module object ``bl`` (``bluelet_020`` or
  ``bluelet``), so the same description runs on each.
- ``run_reference`` / ``run_ours`` run a description and return a ``Run``:
  the trace of what the coroutines saw, the outcome of ``run()``, and (0.2.0
  only) the deliberate differences the run hit; ``run_020`` / ``run_core``
  do the same for a hand-written program. ``check_program`` compares.

The 0.2.0 run under a virtual clock
    ``time.time()`` is a counter; ``select(r, w, x, timeout)`` polls the real
    descriptors without waiting and, when nothing is ready, moves the clock on
    by ``timeout`` (the earliest sleeper is then due). With nothing ready and
    no sleeper (timeout None) 0.2.0 would wait forever: ``Deadlock`` is raised
    (after a short real wait when a TCP socket is involved, for bytes still in
    flight on loopback). 0.2.0 does not even call ``select`` when nothing is
    waitable, it spins; the ``_event_select`` wrapper raises ``Deadlock`` then.

The fire order
    0.2.0's ``_event_select`` returns the events to fire as a ``set``: their
    order is unspecified (hash order). The wrapper returns them as a list in
    the order of ``threads.values()``, which is the order in which the
    coroutines were added (place order), the order our cores use. Without it
    the reference would not be deterministic.

Sleeps
    Every sleep op of a program has its own exponent e and sleeps 2**-e s.
    The virtual clock only ever moves to a deadline, so each deadline is the
    start time plus a sum of distinct powers of two along a chain of sleeps:
    two sleepers can never share a deadline (sums of distinct powers of two
    differ), and all of it is exact in binary floating point. The order in
    which sleepers wake is thus determined.
"""

import collections
import importlib.util
import inspect
import os
import select as _select
import socket
import sys
import threading

from hypothesis import strategies as st

import bluelet
from bluelet import _impl

REFERENCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "reference", "bluelet_020.py")
HOST = "127.0.0.1"

#: Real seconds to wait for loopback TCP bytes in flight before declaring a
#: 0.2.0 deadlock (a socket pair is synchronous and needs no wait).
IN_FLIGHT_WAIT = 0.05
#: Real seconds after which a run on our core counts as hung (it never is
#: when it behaves like 0.2.0: the program then finishes in milliseconds).
WATCHDOG_SECONDS = 5.0
#: The same for a program on which 0.2.0 hit a deliberate difference: ours
#: may then wait forever (a deadlock), and only the trace before that counts.
SHORT_WATCHDOG_SECONDS = 0.1
#: Selects per 0.2.0 run before the harness gives up (never reached: every
#: op runs at most once).
MAX_SELECTS = 2000

# ---------------------------------------------------------------------------
# Program size. Our cores poll I/O after 256 passes without a poll (the
# ``fairness`` difference: 0.2.0 has no such bound). No program can get near
# it: every pass handles at least one event, and each resume of a coroutine
# is preceded by at most four handled events of its op (call: the call, the
# callee's first step, the callee's end() and the caller's resume; readline
# is a call as well), so the passes between two polls are at most
# 4 * (ops + coroutines) <= 4 * (MAX_TREE_OPS + 1 + MAX_CHANNELS * 8 + MAX_COROUTINES)
# = 4 * (24 + 1 + 16 + 8) = 196 < 256 (the 1: a spawn added so that a channel
# has two coroutines to connect). The 0.2.0 run also counts this bound as it
# goes (``Context.work``) and would report the ``fairness`` filter.
# ---------------------------------------------------------------------------

MAX_DEPTH = 3            # nesting below the root
MAX_OPS = 6              # ops per coroutine drawn for the tree
MAX_TREE_OPS = 24        # ops of the whole tree, before the socket ops are woven in
MAX_COROUTINES = 8       # coroutines (tree nodes), root included
MAX_CHANNELS = 2         # each adds at most 3 sends + close + 3 reads + 1 accept
FAIRNESS_BOUND = 250     # passes our cores run before polling: 256

#: The deliberate differences between 0.2.0 and our cores that a 0.2.0 run
#: can hit, by the name the tests count them under. A run that hits one is
#: compared with ours only up to the point where it hit it. The other
#: differences are kept out of the programs by construction (see
#: tests/test_order_020.py's docstring).
FILTERS = {
    "kill-undone": "0.2.0 killed a coroutine whose event was still to be handled later in "
                   "the same pass: it is advanced anyway from the pass snapshot and re-added "
                   "(a pending end(), its own or readline's, fails with KeyError instead)",
    "kill-joiner-revived": "0.2.0 killed a coroutine waiting in join(); it stays among the "
                           "joiners and is resumed when the joined coroutine ends",
    "join-finished": "join of a coroutine that had already ended: 0.2.0 waits forever "
                     "(ours returns at once)",
    "kill-finished": "kill of a coroutine that had already ended: 0.2.0's kill_thread fails "
                     "with KeyError, thrown into the root (ours: nothing to do)",
    "spawned-error": "an exception escaped a spawned coroutine (or the root) that others "
                     "were joining: 0.2.0 ends run(), ours raises it in the joiners",
    "deadlock": "coroutines waiting for each other (or for bytes that never come): 0.2.0 "
                "hangs, ours raises RuntimeError('deadlock ...') or hangs on the socket",
    "io-error": "a socket operation failed in 0.2.0's fire(): it ends the coroutine with "
                "None for its caller (ours raises the error at the yield)",
    "fairness": "more passes without a poll than our cores allow (256)",
}


class Boom(Exception):
    """The only exception programs raise on purpose."""


class Deadlock(BaseException):
    """0.2.0 can make no progress. A BaseException: programs catch only Boom."""


class Hung(AssertionError):
    """Our core did not finish within WATCHDOG_SECONDS."""


# ---------------------------------------------------------------------------
# The instrumented reference
# ---------------------------------------------------------------------------

class _Active:
    """The Context of the 0.2.0 run in progress (None between runs)."""
    ctx = None


class _Clock:
    """Stands in for module ``time`` in bluelet_020: virtual seconds."""

    def __init__(self):
        self.now = 1.0  # not 0.0: 0.2.0 takes a wakeup time of 0.0 for "no sleeper"

    def time(self):
        return self.now

    def sleep(self, seconds):
        # 0.2.0 sleeps only when it has sleepers and nothing to select on.
        self.now += seconds


class _Select:
    """Stands in for module ``select`` in bluelet_020."""

    error = OSError

    def __init__(self, clock, ctx):
        self.clock = clock
        self.ctx = ctx

    def select(self, rlist, wlist, xlist, timeout):
        ready = _select.select(rlist, wlist, xlist, 0)
        if any(ready):
            return ready
        if timeout is not None:
            self.clock.now += timeout  # nothing ready: the earliest sleeper is due
            return ready
        if any(sock.family == socket.AF_INET for sock in list(rlist) + list(wlist)):
            ready = _select.select(rlist, wlist, xlist, IN_FLIGHT_WAIT)
            if any(ready):
                return ready
        raise self.ctx.deadlock("0.2.0 waits for sockets nothing will make ready")


_reference = None


def reference():
    """The instrumented bluelet 0.2.0 module (loaded once)."""
    global _reference
    if _reference is None:
        spec = importlib.util.spec_from_file_location("bluelet_020", REFERENCE_PATH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _instrument(module)
        _reference = module
    return _reference


def _hook_attribute(cls, name, kind):
    """Make ``cls.name`` a property whose reads report ``kind``: 0.2.0's run()
    reads ``JoinEvent.child``, ``KillEvent.child`` and ``ReturnEvent.value``
    exactly when it handles the event, and nowhere else."""
    slot = "_order_" + name

    def get(self):
        ctx = _Active.ctx
        if ctx is not None:
            # Read by run() itself, whose local ``coro`` is the coroutine
            # whose event this is.
            ctx.handled(kind, self, sys._getframe(1).f_locals.get("coro"))
        return self.__dict__[slot]

    def set_(self, value):
        self.__dict__[slot] = value

    setattr(cls, name, property(get, set_))


def _instrument(mod):
    _hook_attribute(mod.JoinEvent, "child", "join")
    _hook_attribute(mod.KillEvent, "child", "kill")
    _hook_attribute(mod.ReturnEvent, "value", "end")

    for cls in (mod.ReceiveEvent, mod.SendEvent, mod.AcceptEvent):
        def fire(self, _fire=cls.fire):
            try:
                return _fire(self)
            except OSError:
                if _Active.ctx is not None:
                    _Active.ctx.filter("io-error")
                raise
        cls.fire = fire

    unordered = mod._event_select

    def _event_select(events):
        # 0.2.0 returns a set (arbitrary order); fire in place order instead.
        events = list(events)
        ctx = _Active.ctx
        if ctx is not None:
            ctx.polled()
        ready = unordered(events)
        fired = [event for event in events if event in ready]
        if events and not fired and not any(isinstance(e, mod.SleepEvent) for e in events):
            # Nothing waitable, nothing ready: 0.2.0 would spin forever.
            raise ctx.deadlock("0.2.0 spins: every coroutine waits for another")
        return fired

    mod._event_select = _event_select


# ---------------------------------------------------------------------------
# The interpreter
#
# program = (root_node, channels)
# node    = (nid, ops)
# op      = (kind, arg, catch)   catch: a Boom raised at this op is caught here
#   null, value v, sleep e (2**-e s), end v, return, raise, exc_event
#   spawn node, call node, bare node (yield the generator itself)
#   join k, kill k       the k-th (mod n) spawned coroutine, root first, in
#                        the order the spawns were handled (join skips itself)
#   accept ch            take channel ch's server end from its listener (TCP)
#   send (ch, data), sendall (ch, data), close ch     on ch's writing end
#   recv (ch, n), readline (ch, None)                 on ch's reading end
# channel = (kind, server_writes): "pair" (socket.socketpair()) or "tcp"
#   (a Listener on 127.0.0.1 and a client connected before run(); the server
#   end is accepted in the program). Bytes go one way, writer to reader.
# ---------------------------------------------------------------------------

class Run:
    """What one run of a program showed."""

    def __init__(self, trace, outcome, filters, cut, unclosed, hung=None):
        self.trace = trace        # what the coroutines observed, in order
        self.outcome = outcome    # ("returned",) or ("raised", type name, message)
        self.filters = filters    # deliberate differences hit (0.2.0 run only), in order
        self.cut = cut            # len(trace) when the first of them was hit
        self.unclosed = unclosed  # generators still suspended after run()
        self.hung = hung          # len(trace) when our run had to be unstuck, or None


class Context:
    """The state of one run of a program."""

    def __init__(self, bl, reference_run):
        self.bl = bl
        self.reference_run = reference_run  # the instrumented 0.2.0 run
        self.trace = []
        self.cleanups = []     # finally blocks that ran (kept out of the trace)
        self.gens = {}         # nid -> generator
        self.tasks = ["r"]     # spawned coroutines in the order their spawns were handled
        self.conns = {}        # (channel, "w" or "r") -> Connection
        self.listeners = {}    # channel -> Listener
        self.sockets = []      # everything to close at the end
        self.channels = ()     # the program's channel descriptions
        self.filters = []
        self.cut = None
        self.done = False
        self.hung = None       # our run: len(trace) when the watchdog fired
        # 0.2.0 bookkeeping, for the filters
        self.events = {}       # id(event) -> (event, nid, task, target)
        self.task_of = {}      # id(generator) -> (generator, task), readline's too
        self.finished = set()  # tasks that have ended (returned, raised, end()ed, killed)
        self.killed = {}       # task -> the filter a later step of it means
        self.joining = {}      # joiner task -> joined task, from the join's handling on
        self.join_yielded = {} # the same from the yield on (ours handles it there)
        self.work = 0          # bound on the passes since the last poll
        self.selects = 0

    # -- filters (0.2.0 run) ------------------------------------------------

    def filter(self, name):
        if not self.filters:
            self.cut = len(self.trace)  # the runs must agree up to here
        if name not in self.filters:
            self.filters.append(name)

    def deadlock(self, message):
        self.filter("deadlock")
        return Deadlock(message)

    def polled(self):
        self.work = 0
        self.selects += 1
        if self.selects > MAX_SELECTS:
            raise self.deadlock("too many selects")

    def note(self, event, nid, task, target):
        """Remember who yielded ``event`` (0.2.0 run): its handling is hooked."""
        if self.reference_run:
            self.events[id(event)] = (event, nid, task, target)
            if isinstance(event, self.bl.JoinEvent):
                self.join_yielded[task] = target
            if target in self.finished:
                # Already over at the yield: ours returns at once (join) or
                # has nothing to do (kill), within the same step. 0.2.0 gets
                # to it on the next pass, if the run lasts that long.
                self.filter("join-finished" if isinstance(event, self.bl.JoinEvent)
                            else "kill-finished")

    def handled(self, kind, event, coro):
        """0.2.0 handles ``event`` of generator ``coro`` now (a hooked read)."""
        entry = self.task_of.get(id(coro))
        if entry is not None and entry[0] is coro and entry[1] in self.killed:
            # An event of a killed coroutine, handled later in the pass of
            # the kill: 0.2.0 acts on it anyway (or fails with KeyError).
            self.filter("kill-undone")
        info = self.events.get(id(event))
        if info is None or info[0] is not event:
            return  # an end() of 0.2.0's own readline
        _, nid, task, target = info
        if kind == "join":
            if target in self.finished:
                self.filter("join-finished")
            self.joining[task] = target
        elif kind == "kill":
            if target in self.finished:
                self.filter("kill-finished")
            else:
                self.killed[target] = ("kill-joiner-revived" if target in self.joining
                                       else "kill-undone")
                self.finished.add(target)
        elif nid == task:  # end() of a spawned coroutine
            self.finished.add(task)

    def stepped(self, task):
        """A coroutine of ``task`` runs a step (starts or is resumed)."""
        if not self.reference_run or self.done:
            return
        self.joining.pop(task, None)
        self.join_yielded.pop(task, None)
        self.work += 4
        if self.work > FAIRNESS_BOUND:
            self.filter("fairness")
        if task in self.killed:
            self.filter(self.killed[task])

    def ended(self, nid, task, escaping):
        """Generator ``nid`` of ``task`` returns, or lets a Boom escape."""
        if not self.reference_run or self.done or nid != task:
            return
        self.finished.add(task)
        # Joiners as ours sees them: from the yield of the join on (0.2.0
        # registers them a pass later; a Boom in between ends its run()).
        if escaping and any(joined == task and joiner not in self.killed
                            for joiner, joined in self.join_yielded.items()):
            self.filter("spawned-error")

    # -- program helpers ----------------------------------------------------

    def make(self, node, task):
        gen = coro(node, self, task)
        self.gens[node[0]] = gen
        self.task_of[id(gen)] = (gen, task)
        return gen

    def target(self, k, task, kind):
        candidates = [t for t in self.tasks if not (kind == "join" and t == task)]
        if not candidates:
            return None
        return candidates[k % len(candidates)]

    def setup(self, channels):
        bl = self.bl
        for ch, (kind, server_writes) in enumerate(channels):
            if kind == "pair":
                a, b = socket.socketpair()
                self.sockets += [a, b]
                self.conns[ch, "w"] = bl.Connection(a, None)
                self.conns[ch, "r"] = bl.Connection(b, None)
            else:
                listener = bl.Listener(HOST, 0)
                self.sockets.append(listener.sock)
                self.listeners[ch] = listener
                address = (HOST, listener.sock.getsockname()[1])
                client = socket.create_connection(address)
                self.sockets.append(client)
                _no_delay(client)
                # The connection is waiting in the accept queue before run().
                _select.select([listener.sock], [], [], 5.0)
                self.conns[ch, "r" if server_writes else "w"] = bl.Connection(client, address)

    def accepted(self, ch, conn, channels):
        self.sockets.append(conn.sock)
        _no_delay(conn.sock)
        self.conns[ch, "w" if channels[ch][1] else "r"] = conn

    def finish(self):
        """Close what the run left open: generators (0.2.0 drops killed ones
        unclosed), then sockets. Nothing is traced from here on."""
        self.done = True
        for gen in self.gens.values():
            try:
                gen.close()
            except BaseException:
                pass
        for sock in self.sockets:
            sock.close()


def _no_delay(sock):
    """Small writes go out at once, on both sides of a TCP channel, whatever
    the kernel's ACK timing: ours sets this in Connection, 0.2.0 does not, and
    Nagle's algorithm would make 0.2.0's arrivals depend on timing."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def coro(node, ctx, task):
    """The generator for ``node``; ``task`` is the spawned coroutine (nid) it
    runs in: its own nid if spawned (or the root), its caller's if called."""
    nid, ops = node
    bl = ctx.bl
    trace = ctx.trace
    ctx.stepped(task)
    trace.append(("start", nid))
    try:
        for i, (kind, arg, catch) in enumerate(ops):
            try:
                if kind == "null":
                    got = yield bl.null()
                elif kind == "value":
                    got = yield bl.ValueEvent(arg)
                elif kind == "sleep":
                    got = yield bl.sleep(2.0 ** -arg)
                elif kind == "spawn":
                    got = yield bl.spawn(ctx.make(arg, arg[0]))
                    ctx.tasks.append(arg[0])  # the spawn has been handled
                elif kind == "call":
                    got = yield bl.call(ctx.make(arg, task))
                elif kind == "bare":
                    got = yield ctx.make(arg, task)
                elif kind in ("join", "kill"):
                    target = ctx.target(arg, task, kind)
                    if target is None:
                        trace.append(("skip", nid, i))
                        continue
                    gen = ctx.gens[target]
                    event = bl.join(gen) if kind == "join" else bl.kill(gen)
                    ctx.note(event, nid, task, target)
                    got = yield event
                    if kind == "join":
                        got = "joined"  # 0.2.0: None; ours: the result (join-result)
                elif kind == "end":
                    trace.append(("end", nid, i, arg))
                    event = bl.end(arg)
                    ctx.note(event, nid, task, None)
                    yield event
                    trace.append(("after end!", nid, i))
                    continue
                elif kind == "return":
                    trace.append(("return", nid, i))
                    ctx.ended(nid, task, False)
                    return  # a bare return: 0.2.0 drops return values
                elif kind == "raise":
                    raise Boom("%s:%d" % (nid, i))
                elif kind == "exc_event":
                    exc = Boom("%s:%d" % (nid, i))
                    got = yield bl.ExceptionEvent((Boom, exc, None))
                elif kind == "accept":
                    conn = yield ctx.listeners[arg].accept()
                    ctx.accepted(arg, conn, ctx.channels)
                    got = "accepted"
                elif kind in ("send", "sendall"):
                    conn = ctx.conns[arg[0], "w"]
                    got = yield getattr(conn, kind)(arg[1])
                elif kind == "recv":
                    got = yield ctx.conns[arg[0], "r"].recv(arg[1])
                elif kind == "readline":
                    event = ctx.conns[arg[0], "r"].readline()
                    ctx.task_of[id(event)] = (event, task)  # 0.2.0: a generator, called
                    got = yield event
                elif kind == "close":
                    ctx.conns[arg, "w"].close()
                    trace.append(("closed", nid, i))
                    continue
                else:  # pragma: no cover
                    raise AssertionError(kind)
            except Boom as exc:
                ctx.stepped(task)
                if not catch:
                    trace.append(("raising", nid, i, str(exc)))
                    raise
                trace.append(("caught", nid, i, str(exc)))
            else:
                ctx.stepped(task)
                trace.append(("got", nid, i, got))
        trace.append(("fell off", nid))
        ctx.ended(nid, task, False)
    except Boom:
        ctx.ended(nid, task, True)
        raise
    finally:
        # Not traced: ours runs it at the kill (Cancelled), 0.2.0 when the
        # dropped generator is collected (kill-closes).
        ctx.cleanups.append(nid)


# ---------------------------------------------------------------------------
# Running a program
# ---------------------------------------------------------------------------

def _unclosed(ctx):
    """Generators that started and were not closed (one created for a spawn
    or call that run() never got to has not started)."""
    return sorted(nid for nid, gen in ctx.gens.items()
                  if inspect.getgeneratorstate(gen) == inspect.GEN_SUSPENDED)


def _outcome(exc):
    if exc is None:
        return ("returned",)  # run()'s value is not compared: 0.2.0 returns None
    return ("raised", type(exc).__name__, str(exc))


def run_020(build):
    """Run ``build(bl, ctx)`` (which returns the root generator) on the
    instrumented bluelet 0.2.0 under its virtual clock."""
    mod = reference()
    ctx = Context(mod, True)
    clock = _Clock()
    mod.time = clock
    mod.select = _Select(clock, ctx)
    _Active.ctx = ctx
    error = None
    try:
        root = build(mod, ctx)
        try:
            mod.run(root)
        except BaseException as exc:  # Boom, Deadlock, KeyError from kill-finished, ...
            error = exc
        unclosed = _unclosed(ctx)
        trace = list(ctx.trace)
    finally:
        _Active.ctx = None
        ctx.finish()
    return Run(trace, _outcome(error), ctx.filters, ctx.cut, unclosed)


def run_core(build, watchdog_seconds=WATCHDOG_SECONDS):
    """Run ``build(bl, ctx)`` on the active core of bluelet, under virtual time.

    A run still going after ``watchdog_seconds`` (real time) is stuck on a
    socket (0.2.0 finished the program in milliseconds, or deadlocked): every
    socket is shut down so that it ends, and it is marked hung.
    """
    ctx = Context(bluelet, False)
    loop = _impl.Loop(virtual_time=True)

    def unstick():
        ctx.hung = len(ctx.trace)  # entries from here on may be the shutdown's doing
        for sock in list(ctx.sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    watchdog = threading.Timer(watchdog_seconds, unstick)
    watchdog.daemon = True
    error = None
    try:
        root = build(bluelet, ctx)
        watchdog.start()
        try:
            loop.run(root)
        except BaseException as exc:
            error = exc
        finally:
            watchdog.cancel()
        unclosed = _unclosed(ctx)
        trace = list(ctx.trace)
    finally:
        ctx.finish()
    return Run(trace, _outcome(error), [], None, unclosed, ctx.hung)


def _builder(program):
    root_node, channels = program

    def build(bl, ctx):
        ctx.channels = channels
        ctx.setup(channels)
        return ctx.make(root_node, "r")

    return build


def run_reference(program):
    """Run a program description on the instrumented bluelet 0.2.0."""
    return run_020(_builder(program))


def run_ours(program, watchdog_seconds=WATCHDOG_SECONDS):
    """Run a program description on the active core."""
    return run_core(_builder(program), watchdog_seconds)


def check_program(program):
    """Run ``program`` on 0.2.0 and on the active core; AssertionError if
    they disagree. Return None if the whole runs were compared, or the name
    of the deliberate difference 0.2.0 hit: then only the traces up to the
    point where it was hit are compared (after it they may differ)."""
    ref = run_reference(program)
    if ref.filters:
        # Ours may well wait forever where 0.2.0 deadlocked, or after the
        # difference: a short watchdog, and a hang is no failure here.
        ours = run_ours(program, SHORT_WATCHDOG_SECONDS)
        cut = ref.cut if ours.hung is None else min(ref.cut, ours.hung)
        if ours.trace[:cut] != ref.trace[:cut]:
            raise AssertionError("the runs differ before 0.2.0 hit %r (at trace entry %d)\n%s" % (
                ref.filters[0], ref.cut, mismatch_report(program, ref, ours, cut)))
        return ref.filters[0]
    ours = run_ours(program)
    if ours.hung is not None:
        raise Hung("our core hung on this program (0.2.0 finished it)\n"
                   + mismatch_report(program, ref, ours))
    if ours.trace != ref.trace or ours.outcome != ref.outcome:
        raise AssertionError(mismatch_report(program, ref, ours))
    # Our run closes every coroutine before it returns (killed ones at the
    # kill); 0.2.0 leaves killed ones to the garbage collector (kill-closes).
    assert ours.unclosed == [], ours.unclosed
    return None


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------

def describe(program):
    """``program`` as indented pseudo-code."""
    root_node, channels = program
    lines = []
    for ch, (kind, server_writes) in enumerate(channels):
        if kind == "pair":
            lines.append("channel %d: socketpair, writer end -> reader end" % ch)
        else:
            lines.append("channel %d: tcp, %s writes"
                         % (ch, "server" if server_writes else "client"))

    def walk(node, indent, how):
        nid, ops = node
        lines.append("%s%s %s:" % ("    " * indent, how, nid))
        for i, (kind, arg, catch) in enumerate(ops):
            if kind in ("spawn", "call", "bare"):
                uncaught = not catch and kind != "spawn"  # a spawn gets no error back
                walk(arg, indent + 1, "%d %s%s" % (i, kind, " (uncaught)" if uncaught else ""))
                continue
            text = kind if arg is None else "%s %r" % (kind, arg)
            if kind == "sleep":
                text = "sleep 2**-%d" % arg
            if not catch and kind in ("raise", "exc_event"):
                text += " (uncaught)"
            lines.append("%s%d %s" % ("    " * (indent + 1), i, text))

    walk(root_node, 0, "root")
    return "\n".join(lines)


def mismatch_report(program, ref, ours, cut=None):
    lines = ["program:", describe(program), "", "program = %r" % (program,), ""]
    if cut is None:
        lines += ["outcome 0.2.0: %r" % (ref.outcome,), "outcome ours:  %r" % (ours.outcome,), ""]
    first = next((i for i, (a, b) in enumerate(zip(ref.trace, ours.trace)) if a != b),
                 min(len(ref.trace), len(ours.trace)))
    lines.append("traces (first difference at %d):" % first)
    lines.append("      %-42s %s" % ("0.2.0", "ours"))
    for i in range(max(len(ref.trace), len(ours.trace))):
        if i == cut:
            lines.append("     ---- 0.2.0 hit %s here; not compared from here on ----"
                         % (ref.filters[0],))
        a = ref.trace[i] if i < len(ref.trace) else ""
        b = ours.trace[i] if i < len(ours.trace) else ""
        lines.append("%s%3d  %-42s %s" % ("!" if a != b and (cut is None or i < cut) else " ",
                                          i, a, b))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Program descriptions (hypothesis)
# ---------------------------------------------------------------------------

PAYLOADS = (b"a", b"bc", b"d\n", b"\n", b"ef\ngh", b"ij\n\n")
READ_SIZES = (1, 2, 3, 64)
_INDEX = st.integers(0, 7)
#: The argument of each simple op (sleep exponents are drawn at the end).
ARGS = {
    "null": st.none(),
    "value": st.integers(0, 9),
    "sleep": st.none(),
    "join": _INDEX,
    "kill": _INDEX,
    "end": st.integers(0, 9),
    "return": st.none(),
    "raise": st.none(),
    "exc_event": st.none(),
}
#: Repeated to weight the draw: sleeps, joins and kills interleave coroutines;
#: errors are rarer so that programs live long enough to interleave.
SIMPLE_KINDS = (["null"] * 3 + ["value"] + ["sleep"] * 3 + ["join"] * 3 + ["kill"] * 2
                + ["end", "return", "raise", "raise", "exc_event"])
NEST_VERB = st.sampled_from(["spawn", "spawn", "call", "bare"])
#: Most Booms are caught where they happen; the rest go to the caller (or end run()).
CATCH = st.sampled_from([True, True, True, False])


@st.composite
def programs(draw, channels=True):
    nodes_left = [MAX_COROUTINES - 2]  # one more may be added for the channels
    ops_left = [MAX_TREE_OPS]
    ops_of = {}   # nid -> mutable list of [kind, arg, catch]
    order = []    # nids in the order they were drawn

    def node(nid, depth):
        ops = ops_of[nid] = []
        order.append(nid)
        for i in range(draw(st.integers(0, MAX_OPS))):
            if not ops_left[0]:
                break
            ops_left[0] -= 1
            if depth < MAX_DEPTH and nodes_left[0] and draw(st.integers(0, 2)) == 0:
                nodes_left[0] -= 1
                verb = draw(NEST_VERB)
                ops.append([verb, node("%s.%d" % (nid, i), depth + 1), draw(CATCH)])
            else:
                kind = draw(st.sampled_from(SIMPLE_KINDS))
                ops.append([kind, draw(ARGS[kind]), False if kind == "raise" else draw(CATCH)])
        return nid

    def weave(ops, sequence, start, end):
        """Insert ``sequence`` into ``ops[start:end]`` at drawn places, keeping its order."""
        slots = sorted(draw(st.integers(start, end)) for _ in sequence)
        for offset, (slot, op) in enumerate(zip(slots, sequence)):
            ops.insert(slot + offset, op)

    node("r", 0)

    # Where socket ops can go: nodes that run at all (created before their
    # parent's first op that ends it), before their own first such op, in
    # two different tasks (a caller waiting for its callee cannot feed it).
    live, task_of, path, reachable = {}, {"r": "r"}, {"r": ()}, ["r"]
    for nid in order:
        ops = ops_of[nid]
        live[nid] = next((i for i, (kind, _, catch) in enumerate(ops)
                          if kind in ("return", "end", "raise")
                          or (kind == "exc_event" and not catch)), len(ops))
        if nid in task_of:
            for op in ops[:live[nid]]:
                kind, arg, _ = op
                if kind in ("spawn", "call", "bare"):
                    task_of[arg] = arg if kind == "spawn" else task_of[nid]
                    path[arg] = path[nid] + ((nid, op),)  # (ancestor, its op leading here)
                    reachable.append(arg)
    if channels and len(set(task_of.values())) == 1:
        # No two tasks to put a channel between: the root spawns one more.
        nid = "r.%d" % len(ops_of["r"])
        ops_of[nid] = []
        order.append(nid)
        op = ["spawn", nid, True]
        ops_of["r"].insert(live["r"], op)
        live[nid], task_of[nid], path[nid] = 0, nid, (("r", op),)
        live["r"] += 1
        reachable.append(nid)

    def index(nid, op):
        return next(i for i, mine in enumerate(ops_of[nid]) if mine is op)

    def can_feed(writer, reader):
        """Whether ``writer`` can run while ``reader`` waits for it: not in
        the same task, and not when their nearest common ancestor calls its
        way down to the reader before it creates the writer (it would wait
        for the reader)."""
        if task_of[writer] == task_of[reader]:
            return False
        above_w, above_r = dict(path[writer]), dict(path[reader])
        if reader in above_w or writer in above_r:
            return True  # one creates the other (first_slot orders the reads)
        names = [nid for nid, _ in path[reader]]
        ancestor = [nid for nid in names if nid in above_w][-1]
        steps = [op for _, op in path[reader][names.index(ancestor):]]
        return not (all(op[0] in ("call", "bare") for op in steps)
                    and index(ancestor, above_r[ancestor]) < index(ancestor, above_w[ancestor]))

    pairs = [(w, r) for w in reachable for r in reachable if can_feed(w, r)]

    def first_slot(nid, other):
        """The first place in ``nid`` where its ops can wait for ``other``:
        after the op of ``nid`` that leads to ``other``, if there is one."""
        for ancestor, op in path[other]:
            if ancestor == nid:
                return next(i for i, mine in enumerate(ops_of[nid]) if mine is op) + 1
        return 0

    chans = []
    for ch in range(draw(st.sampled_from([0, 1, 1, 2, 2])) if channels and pairs else 0):
        kind = draw(st.sampled_from(["pair", "tcp"]))
        server_writes = draw(st.booleans()) if kind == "tcp" else None
        writer, reader = draw(st.sampled_from(pairs))
        sends = [[draw(st.sampled_from(["send", "sendall"])), (ch, draw(st.sampled_from(PAYLOADS))),
                  True] for _ in range(draw(st.integers(1, 3)))]
        reads = [["readline", (ch, None), True] if draw(st.booleans())
                 else ["recv", (ch, draw(st.sampled_from(READ_SIZES))), True]
                 for _ in range(draw(st.integers(1, 3)))]
        # The writer closes its end after its last send: a reader that asks
        # for more than was sent gets b"" instead of waiting forever.
        writes = sends + [["close", ch, True]]
        if kind == "tcp":
            (writes if server_writes else reads).insert(0, ["accept", ch, True])
        weave(ops_of[writer], writes, 0, live[writer])
        live[writer] += len(writes)
        weave(ops_of[reader], reads, first_slot(reader, writer), live[reader])
        live[reader] += len(reads)
        chans.append((kind, server_writes))

    used = set()
    for nid in order:
        for op in ops_of[nid]:
            if op[0] == "sleep":
                op[1] = draw(st.sampled_from([e for e in range(1, 31) if e not in used]))
                used.add(op[1])

    def freeze(nid):
        return (nid, tuple((kind, freeze(arg) if kind in ("spawn", "call", "bare") else arg, catch)
                           for kind, arg, catch in ops_of[nid]))

    return (freeze("r"), tuple(chans))


def count_ops(program):
    """(coroutines, ops) of a program, for the size bound."""
    counts = collections.Counter()

    def walk(node):
        counts["coroutines"] += 1
        for kind, arg, _ in node[1]:
            counts["ops"] += 1
            if kind in ("spawn", "call", "bare"):
                walk(arg)

    walk(program[0])
    return counts["coroutines"], counts["ops"]
