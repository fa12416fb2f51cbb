"""The scheduler core, pure-Python twin of ``_loop.pyx``.

What the core owns
    The event classes coroutines yield, the per-coroutine record (``_Task``),
    the FIFO ready queue, the heap of sleepers, the table of descriptors
    being waited on and the poller behind it. Everything above the core
    (sockets, and later sync, threads, signals) only builds events.

How a coroutine runs
    A *task* is one spawned generator plus the chain of sub-coroutines it is
    delegating to (``call``); the innermost generator is the one resumed.
    The order is 0.2.0's (docs/order.md): every generator has a *place*,
    taken when it is added (spawned or called); the loop runs *passes*, each
    running the tasks that were ready when it began, in place order, until
    a pass finds nothing to do; only then is I/O polled. An event that
    0.2.0 handles a pass later (call, return, spawn, kill, timeout) waits in
    ``pending`` for the next pass, unless nothing else is ready, when no
    order can tell and it is handled at once (the speed of a lone chain of
    calls). I/O that is likely to succeed is tried right after the next
    poll (``_S_TRY``), as 0.2.0 fires it once select() says so. The I/O
    of a task woken by the poll is done at its turn in the pass after the
    poll, just before it resumes, so a round's I/O goes in place order and
    nothing received can be lost to a kill or deadline landing between.

Invariants
    - Place order: tasks run in the order of their innermost generator's
      place; a task is appended to the ready list only when it changes
      state to ready, so it is never queued twice, and the list is sorted
      only when appends broke the order. Killed tasks stay queued but are
      skipped. An error that reaches a caller ends the pass: the tasks not
      yet run join the next one (0.2.0 restarts its pass there).
    - Fairness: after ``_MAX_PASSES`` passes without a poll, I/O is polled
      without waiting, so a task that never waits cannot starve the rest.
    - Cost per event is O(1), but for the sort of a pass whose tasks became
      ready out of place order (O(log n) each): no pass over all tasks;
      descriptors stay registered with the poller between waits (interest is
      dropped lazily, when the poller reports an fd nobody waits for).
    - One ready waiter per fd direction is woken per readiness report; more
      waiters queue FIFO behind it.
    - A finished coroutine is remembered (its generator is exhausted) so that
      ``join`` returns at once; every ``finally`` runs on kill and shutdown.
    - A cancellation (a kill, a passed deadline) is raised only at scheduling
      points, and raised again there through the ready list like any
      resume, so a coroutine that swallows it cannot hold the loop; a
      shield() scope hides what is outside it (docs/cancellation.md).
    - Each task's steps run in its own contextvars context.
    - An unhandled exception ends ``run()`` with that exception after all
      other coroutines are closed; a reset or broken connection ends only its
      own coroutine.

Twin rule
    ``_loop.pyx`` has the same names, in the same order, with the same
    comments. Change both in one commit. Docstrings live here; the compiled
    twin points to them.
"""

import collections
import contextvars
import errno
import functools
import heapq
import inspect
import logging
import numbers
import math
import operator
import select
import selectors
import socket
import threading
import os
import time
import types
import weakref

from ._coroutines import FREE_THREADED as _FREE_THREADED
from ._coroutines import driven as _driven, frame as _frame, not_an_event as _not_an_event
from ._debug import creation_site, dropped, never_yielded
from ._debug import table_lock as _table_lock
from ._debug import default as default_debug
from ._errors import Cancelled, RunFinishedError, SocketClosedError, Timeout
from ._records import TaskInfo

__all__ = [
    "Event", "WaitableEvent", "ValueEvent", "ExceptionEvent", "SpawnEvent",
    "JoinEvent", "KillEvent", "DelegationEvent", "ReturnEvent", "SleepEvent",
    "ReadEvent", "WriteEvent", "AcceptEvent", "ReceiveEvent", "SendEvent",
    "Loop", "run", "null", "sleep", "spawn", "call", "end", "join", "kill",
    "later", "wait_readable", "wait_writable", "notify_closing",
    "timeout", "fail_after", "move_on_after", "shield", "current_deadline",
    "current_time", "WaitQueue", "Completion", "current", "tasks", "wakeup_fd",
    "running_loop", "iscoroutine",
]

log = logging.getLogger("bluelet")

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

# Event kinds: the core dispatches on these instead of isinstance chains.
_K_NONE = 0        # plain Event subclass: not something the core can wait for
_K_VALUE = 1
_K_IO = 2
_K_SLEEP = 3
_K_CALL = 4
_K_RETURN = 5
_K_SPAWN = 6
_K_JOIN = 7
_K_KILL = 8
_K_WAITABLE = 9
_K_EXCEPTION = 10
_K_TIMEOUT = 11
_K_PARK = 12
_K_EXTERNAL = 13
_K_LATER = 14
_K_SCOPE = 15      # entering or leaving an ``async with`` scope block

# Kinds that are scheduling points: where a cancellation is raised.
_SCHEDULING_POINTS = frozenset((_K_VALUE, _K_IO, _K_SLEEP, _K_JOIN, _K_WAITABLE,
                                _K_PARK, _K_EXTERNAL, _K_LATER))

# Kinds 0.2.0 handles on the pass after the one that yielded them (a
# timeout() is a call with a deadline, so it goes with them).
_NEXT_PASS = frozenset((_K_CALL, _K_RETURN, _K_SPAWN, _K_KILL, _K_TIMEOUT))

# Task states; from _S_IO up, the task waits for something.
_S_READY = 0
_S_RUNNING = 1
_S_DONE = 2
_S_IO = 3
_S_SLEEP = 4
_S_JOIN = 5
_S_PARK = 6
_S_EXTERNAL = 7
_S_TRY = 8         # runs (trying its I/O) once the next poll has run

# Readiness bits, the epoll values so the Linux poller needs no translation.
READ = 0x001      # EPOLLIN
WRITE = 0x004     # EPOLLOUT
_ERRORS = 0x018   # EPOLLERR | EPOLLHUP: wake both directions, the I/O reports it

# A sendall or write that made progress but must wait for more room.
_WOULD_BLOCK = object()

# Errors that end only the coroutine they escape from (not the root), as in 0.2.0.
_QUIET = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

# The largest value a descriptor can have (a C int).
_MAX_FD = 0x7fffffff

# Heap entries of cancelled sleepers are left in place; rebuild when they are
# the majority, so a program that keeps cancelling timers stays bounded.
_STALE_TIMER_FLOOR = 64

# Poll at least this often (seconds): pollers overflow on sleep(inf).
_MAX_TIMEOUT = 86400.0

# Passes run before I/O is polled (without waiting) even though tasks are
# still ready. 0.2.0 has no bound, so a coroutine yielding null() in a loop
# starved every socket and timer; real 0.2.0 programs settle within a few
# passes, so this bound changes no order they rely on.
_MAX_PASSES = 256

# What a scope does when its deadline passes: fail_after() raises Timeout
# where it returns, move_on_after() gives None there; shield() has no
# deadline and hides every cancellation from outside it.
_M_FAIL = 0
_M_MOVE_ON = 1
_M_SHIELD = 2

# The hooks a Loop's ``hooks`` object may have, and the bits of _wants that
# say which it is called at (Instrument's methods, in this order).
_HOOK_NAMES = ("task_spawned", "task_scheduled", "before_step", "after_step",
               "task_exited", "before_poll", "after_poll")
_H_SPAWNED = 0x01
_H_SCHEDULED = 0x02
_H_BEFORE_STEP = 0x04
_H_AFTER_STEP = 0x08
_H_EXITED = 0x10
_H_BEFORE_POLL = 0x20
_H_AFTER_POLL = 0x40

# Cancellations a coroutine may swallow (catch and carry on to the next
# scheduling point) before it is closed: a bound, not a policy; a loop that
# catches Cancelled would otherwise never end.
_MAX_SWALLOWS = 100

# Debug mode (bluelet._debug): events made while it is on are held in
# _unyielded (id -> (event, where it was made)) until they are yielded; the
# loop reports those that nothing else holds any more. Off, an event costs
# nothing more to make.
_debug = False
_unyielded = {}

# A Completion is claimed for delivery under this lock: two threads
# delivering at once must not both get through (one raises instead).
_delivery_lock = threading.Lock()

_monotonic = time.monotonic
_GeneratorType = types.GeneratorType
_CoroutineType = types.CoroutineType
# What the core runs: a generator, or a native (async def) coroutine.
_COROUTINE_TYPES = (_GeneratorType, _CoroutineType)


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------

class Event:
    """Base class of everything a coroutine may yield to the scheduler.

    An event is also awaitable, for ``async def`` coroutines
    (``data = await conn.recv(10)``), and iterable, for a typed ``yield
    from`` in generators (``data = yield from conn.recv(10)``); either hands
    the event to the scheduler as ``yield`` does and gives the same value.
    ``Event[T]`` names an event whose value is a T.
    """

    __slots__ = ("_armed",)
    _kind = _K_NONE

    # The event is its own iterator, which allocates nothing: ``await`` (or
    # ``yield from``) arms it, its first __next__ hands it to the scheduler,
    # and the resume ends the iteration with the value the scheduler sent
    # (None through __next__, anything else through send(), as CPython's
    # await asks). Arming and that first __next__ are consecutive bytecodes
    # of one coroutine, so a shared event (null()) serves any number of
    # awaiters -- under the GIL: without it, coroutines of other threads'
    # loops may arm null() in between, so each await of it arms a fresh one.
    # An exception thrown in goes past it: it has no throw().
    def __await__(self):
        if _FREE_THREADED and self is _NULL:
            return ValueEvent(None).__await__()
        self._armed = True
        return self

    def __iter__(self):
        if _FREE_THREADED and self is _NULL:
            return ValueEvent(None).__iter__()
        self._armed = True
        return self

    def __next__(self):
        try:
            armed = self._armed
        except AttributeError:  # never armed: next() without iter()
            armed = False
        if armed:
            self._armed = False
            return self
        raise StopIteration

    def send(self, value):
        """End an ``await`` (or ``yield from``) of this event with ``value``:
        how CPython hands an awaiting coroutine what the scheduler sent."""
        raise StopIteration(value)

    @classmethod
    def __class_getitem__(cls, item):
        return cls


# Debug mode, here: Event.__new__ holds each event in _unyielded while it
# is on. It is installed the first time debug mode is turned on (CPython
# cannot take a __new__ back off a class), so a program that never turns it
# on pays nothing; the compiled twin tests a flag in Event.__cinit__.
def _debug_new(cls, *args, **kwargs):
    if (args or kwargs) and cls.__init__ is object.__init__:
        # What object.__new__ says when __new__ is not overridden.
        raise TypeError("%s() takes no arguments" % cls.__name__)
    event = object.__new__(cls)
    if _debug:
        site = creation_site()
        if site is not None:
            with _table_lock:
                _unyielded[id(event)] = (event, site)
    return event


# What inspect.signature() says of an event class stays its __init__'s.
_debug_new.__signature__ = inspect.signature(lambda cls: None)


def _used(event):
    """Debug mode: yielded (or entered, for a scope block): nothing to report;
    nor for the event a scope runs, which the scope's yield hands over."""
    if _unyielded:
        with _table_lock:
            _unyielded.pop(id(event), None)
            if type(event) is _TimeoutEvent and isinstance(event.body, Event):
                _unyielded.pop(id(event.body), None)


def _sweep_unyielded():
    """Debug mode: report the events nothing but _unyielded holds any more."""
    for event, site in dropped(_unyielded):
        # A wait queue or a Completion lives longer than one yield, and
        # may never be waited on: only one-shot events are reported.
        if not isinstance(event, (WaitQueue, Completion)):
            never_yielded(type(event).__name__, site)


class WaitableEvent(Event):
    """An event that completes when descriptors become ready.

    Subclasses define ``waitables()`` and ``fire()``. The scheduler watches
    the descriptors and calls ``fire()`` once any of them is ready; its
    return value is the value of the ``yield`` (its exception is raised
    there).
    """

    __slots__ = ()
    _kind = _K_WAITABLE

    def waitables(self):
        """Return three iterables of objects with ``fileno()`` (or fds).

        They are watched for reading, writing and exceptional conditions
        (the last watched like reading: epoll reports errors as readable).
        """
        return (), (), ()

    def fire(self):
        """Called when a waitable is ready; returns the coroutine's value."""
        return None


class ValueEvent(Event):
    """Resume the coroutine with ``value``, after every already-ready one."""

    __slots__ = ("_value",)
    _kind = _K_VALUE

    def __init__(self, value):
        self._value = value

    @property
    def value(self):
        """The value the ``yield`` evaluates to (read-only: null() is shared)."""
        return self._value


class ExceptionEvent(Event):
    """Raise an exception at the ``yield``.

    ``exc_info`` is a ``sys.exc_info()`` triple or an exception instance.
    """

    __slots__ = ("exc_info", "_exc")
    _kind = _K_EXCEPTION

    def __init__(self, exc_info):
        self.exc_info = exc_info
        if isinstance(exc_info, BaseException):
            self._exc = exc_info
        else:
            try:
                self._exc = exc_info[1].with_traceback(exc_info[2])
            except BaseException:
                _used(self)  # debug mode: the caller gets this error, not a warning too
                raise


class SpawnEvent(Event):
    """Start ``coro`` as a concurrent coroutine; the spawner goes on at once."""

    __slots__ = ("spawned",)
    _kind = _K_SPAWN

    def __init__(self, coro):
        self.spawned = coro


class JoinEvent(Event):
    """Wait until the spawned coroutine ``child`` has finished."""

    __slots__ = ("child",)
    _kind = _K_JOIN

    def __init__(self, child):
        self.child = child


class KillEvent(Event):
    """Stop the spawned coroutine ``child`` and the calls it is inside."""

    __slots__ = ("child",)
    _kind = _K_KILL

    def __init__(self, child):
        self.child = child


class DelegationEvent(Event):
    """Run ``coro`` as a sub-coroutine; resume with its result."""

    __slots__ = ("spawned",)
    _kind = _K_CALL

    def __init__(self, coro):
        self.spawned = coro


class _LaterEvent(Event):
    """Resume on the next pass, as ``ValueEvent`` does, with ``func(*args)``
    called then: what it takes (buffered bytes) cannot be lost to a kill or
    deadline landing at the ``yield``."""

    __slots__ = ("func", "args")
    _kind = _K_LATER

    def __init__(self, func, args):
        self.func = func
        self.args = args


class ReturnEvent(Event):
    """Finish the current coroutine, handing ``value`` to its caller."""

    __slots__ = ("value",)
    _kind = _K_RETURN

    def __init__(self, value):
        self.value = value


class _TimeoutEvent(Event):
    """Run ``body`` (an event or a coroutine) in a scope: with a deadline
    (``mode`` _M_FAIL or _M_MOVE_ON) or shielded (_M_SHIELD). Without a
    body it is a scope block, for ``async with``: the scope covers the
    block's statements."""

    __slots__ = ("seconds", "body", "mode", "_scope", "cancelled_caught")
    _kind = _K_TIMEOUT

    def __init__(self, seconds, body, mode):
        self.seconds = seconds
        self.body = body
        self.mode = mode
        self._scope = None           # the active _Scope of a block
        self.cancelled_caught = False

    def __aenter__(self):
        return _ScopeEdge(self, False, None)

    def __aexit__(self, exc_type, exc, traceback):
        return _ScopeEdge(self, True, exc)


class _ScopeEdge(Event):
    """Enter or leave the scope of ``block`` (a _TimeoutEvent without a
    body), from ``async with``. Leaving, ``exc`` is the exception going
    out of the block; the value says whether the block swallows it (its
    own cancellation, in move_on_after), or a Timeout is raised instead
    (its own cancellation, in timeout)."""

    __slots__ = ("block", "leaving", "exc")
    _kind = _K_SCOPE

    def __init__(self, block, leaving, exc):
        self.block = block
        self.leaving = leaving
        self.exc = exc


class WaitQueue(Event):
    """A FIFO of coroutines parked until another coroutine wakes them.

    ``yield queue.wait()`` parks the running coroutine at the back;
    ``queue.wake(value)`` resumes the one that waited longest with ``value``.
    Locks, queues and flags are built on it.
    """

    __slots__ = ("_waiters", "_external")
    _kind = _K_PARK

    def __init__(self, external=False):
        self._waiters = collections.deque()
        # Whether something outside the loop (a signal) wakes it: while a
        # coroutine waits here the loop stays alive and its waker open.
        self._external = external

    def __len__(self):
        return len(self._waiters)

    def wait(self):
        """Event: park until woken; the value is the one given to ``wake``."""
        return self

    def wake(self, value=None, exc=None):
        """Resume the longest waiter with ``value`` (or raise ``exc`` in it).

        Returns False when nobody waits.
        """
        if not self._waiters:
            return False
        # Taken from the line only once unparked: a waiter of another
        # thread's loop (refused there) keeps its place.
        _running_loop()._unpark(self._waiters[0], value, exc)
        self._waiters.popleft()
        return True

    def wake_all(self, value=None, exc=None):
        """Resume every waiter, oldest first; returns how many there were."""
        count = len(self._waiters)
        while self._waiters:
            self.wake(value, exc)
        return count


class Completion(Event):
    """A result another thread will deliver: ``value = yield completion``.

    Create it inside a running coroutine; then, from any thread, call
    ``set_result`` or ``set_exception`` exactly once. The loop is woken
    through a socket pair, so nothing polls.
    """

    __slots__ = ("_loop", "_task", "_done", "_delivered", "_value", "_exc")
    _kind = _K_EXTERNAL

    def __init__(self):
        self._loop = _running_loop()
        self._loop._expect_external()
        self._task = None
        self._done = False        # delivered and seen by the loop thread
        self._delivered = False   # delivered by some thread
        self._value = None
        self._exc = None

    def set_result(self, value):
        """Deliver ``value`` to the coroutine (any thread, once)."""
        self._deliver(value, None)

    def set_exception(self, exc):
        """Raise ``exc`` in the coroutine (any thread, once)."""
        self._deliver(None, exc)

    def _deliver(self, value, exc):
        with _delivery_lock:
            if self._delivered:
                raise RuntimeError("Completion delivered twice")
            self._delivered = True
        self._value = value
        self._exc = exc
        self._loop._post(self)


class SleepEvent(WaitableEvent):
    """Resume after at least ``duration`` seconds (monotonic clock)."""

    __slots__ = ("wakeup_time", "duration")
    _kind = _K_SLEEP

    def __init__(self, duration):
        try:
            self.duration = _seconds(duration)
        except BaseException:
            _used(self)  # debug mode: the caller gets this error, not a warning too
            raise
        self.wakeup_time = _monotonic() + self.duration

    def time_left(self):
        """Seconds until the deadline, never negative."""
        return max(self.wakeup_time - _monotonic(), 0.0)


class _FdEvent(WaitableEvent):
    """An event on one descriptor, run by the core's fast path.

    ``_attempt()`` performs the operation: it returns the result, or
    ``_WOULD_BLOCK`` / raises BlockingIOError when the descriptor is not
    ready yet. Events whose operation usually succeeds at once try it before
    waiting (``_try_first``); the others wait for readiness first.
    """

    __slots__ = ("_fileobj", "_fileno", "_mask")
    _kind = _K_IO
    _try_first = False

    def _watch(self, fileobj, mask):
        self._fileobj = fileobj
        try:
            self._fileno = _fileno(fileobj)
        except BaseException:
            _used(self)  # debug mode: the caller gets this error, not a warning too
            raise
        self._mask = mask

    def _attempt(self):
        return None


class ReadEvent(_FdEvent):
    """Read up to ``bufsize`` from file-like ``fd`` once it is readable.

    With ``bufsize`` None, read until end of file.
    """

    __slots__ = ("fd", "bufsize", "_chunks")

    def __init__(self, fd, bufsize):
        self.fd = fd
        self.bufsize = bufsize
        self._chunks = []
        self._watch(fd, READ)

    def _attempt(self):
        if self.bufsize is not None:
            data = self.fd.read(self.bufsize)
            # Raw files in non-blocking mode return None instead of raising.
            return _WOULD_BLOCK if data is None else data
        # One read per readiness report: ``fd`` may be in blocking mode.
        data = self.fd.read(65536)
        if data:
            self._chunks.append(data)
            return _WOULD_BLOCK
        if data is None:
            return _WOULD_BLOCK
        return data[:0].join(self._chunks)


class WriteEvent(_FdEvent):
    """Write all of ``data`` to file-like ``fd`` as it becomes writable."""

    __slots__ = ("fd", "data", "_view", "_sent")

    def __init__(self, fd, data):
        self.fd = fd
        self.data = data
        try:
            self._view = _byte_view(data)
        except BaseException:
            _used(self)  # debug mode: the caller gets this error, not a warning too
            raise
        self._sent = 0
        self._watch(fd, WRITE)

    def _attempt(self):
        view = self._view
        while self._sent < len(view):
            written = self.fd.write(view[self._sent:])
            if written is None:
                return _WOULD_BLOCK
            self._sent += written
        return None


class AcceptEvent(_FdEvent):
    """Accept a connection on ``listener``; the value is a Connection.

    The listener provides ``sock`` and ``_accepted(sock, addr)``, which wraps
    the new socket.
    """

    __slots__ = ("listener",)
    _try_first = True

    def __init__(self, listener):
        self.listener = listener
        self._watch(listener.sock, READ)

    def _attempt(self):
        sock, addr = self.listener.sock.accept()
        return self.listener._accepted(sock, addr)


class ReceiveEvent(_FdEvent):
    """Receive up to ``bufsize`` bytes from ``conn``; b'' at end of stream."""

    __slots__ = ("conn", "bufsize")

    def __init__(self, conn, bufsize):
        self.conn = conn
        self.bufsize = bufsize
        self._watch(conn.sock, READ)

    def _attempt(self):
        return self.conn.sock.recv(self.bufsize)


class SendEvent(_FdEvent):
    """Send ``data`` on ``conn``: once (value: bytes sent) or all of it."""

    __slots__ = ("conn", "data", "sendall", "_view", "_sent")
    # Socket buffers usually have room: trying first saves a poll.
    _try_first = True

    def __init__(self, conn, data, sendall=False):
        self.conn = conn
        self.data = data
        self.sendall = bool(sendall)
        try:
            self._view = _byte_view(data)
        except BaseException:
            _used(self)  # debug mode: the caller gets this error, not a warning too
            raise
        self._sent = 0
        self._watch(conn.sock, WRITE)

    def _attempt(self):
        sock = self.conn.sock
        if not self.sendall:
            return sock.send(self._view)
        view = self._view
        while self._sent < len(view):
            self._sent += sock.send(view[self._sent:])
        return None


def _seconds(duration):
    """A duration as a float >= 0, or TypeError/ValueError at the call."""
    if not isinstance(duration, (int, float)) and not isinstance(duration, numbers.Real):
        raise TypeError("a duration must be a number of seconds, not %r" % (duration,))
    seconds = float(duration)
    if math.isnan(seconds):
        raise ValueError("a duration cannot be NaN")
    return max(seconds, 0.0)


def _fileno(fileobj):
    """The descriptor of ``fileobj`` (or ``fileobj`` itself), checked at the call."""
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if not 0 <= fd <= _MAX_FD:
        raise ValueError("%r is not an open file descriptor (fileno %r)" % (fileobj, fd))
    return fd


def _byte_view(data):
    # Validates at the call (str raises TypeError here, not at the yield)
    # and counts bytes, not items, for multi-byte buffers.
    view = memoryview(data)
    return view if view.itemsize == 1 and view.ndim == 1 else view.cast("B")


# ---------------------------------------------------------------------------
# Event constructors (the public verbs)
# ---------------------------------------------------------------------------

_NULL = ValueEvent(None)

# What a connection with 0.2.0's error semantics turns a failed I/O into.
_END_NONE = ReturnEvent(None)


def _generator_error(obj, verb):
    """The TypeError for ``verb`` given ``obj`` if it is not a coroutine, else None."""
    if type(obj) in _COROUTINE_TYPES:
        return None
    return TypeError("%s() needs a coroutine (a generator or an async def coroutine), not %r"
                     % (verb, obj))


def _require_generator(obj, verb):
    error = _generator_error(obj, verb)
    if error is not None:
        raise error


def null():
    """Event: give way; resume with None after every already-ready coroutine."""
    return _NULL


def sleep(seconds):
    """Event: resume after at least ``seconds`` seconds."""
    return SleepEvent(seconds)


def spawn(coro):
    """Event: start generator ``coro`` concurrently; the caller goes on."""
    _require_generator(coro, "spawn")
    return SpawnEvent(coro)


def call(coro):
    """Event: run generator ``coro`` to its end; the value is its result.

    Yielding the generator itself means the same.
    """
    _require_generator(coro, "call")
    return DelegationEvent(coro)


def end(value=None):
    """Event: finish this coroutine with result ``value`` (like ``return``)."""
    return ReturnEvent(value)


def join(coro):
    """Event: wait until spawned coroutine ``coro`` has finished."""
    _require_generator(coro, "join")
    return JoinEvent(coro)


def kill(coro):
    """Event: stop spawned coroutine ``coro``, running its ``finally`` blocks."""
    _require_generator(coro, "kill")
    return KillEvent(coro)


def later(func, *args):
    """Event: resume on the next pass with what ``func(*args)`` returns then."""
    return _LaterEvent(func, args)


def wait_readable(fileobj):
    """Event: resume with None once ``fileobj`` (or an fd) is readable."""
    event = _FdEvent()
    event._watch(fileobj, READ)
    return event


def wait_writable(fileobj):
    """Event: resume with None once ``fileobj`` (or an fd) is writable."""
    event = _FdEvent()
    event._watch(fileobj, WRITE)
    return event


def timeout(seconds, body=None):
    """Event: run ``body`` (an event or a coroutine) for at most ``seconds``.

    The value is ``body``'s. When time runs out, ``Cancelled`` is raised
    inside ``body`` at its current ``yield`` and at every later scheduling
    point (so ``except Exception`` cannot swallow it, and its ``finally``
    blocks run); it becomes ``bluelet.Timeout`` here, where the scope ends.
    The same as ``fail_after()``.

    Without ``body``, in an ``async def``: ``async with
    bluelet.timeout(seconds):`` puts the block's statements in the scope,
    and ``Timeout`` comes out of the ``async with``.
    """
    return _scope_event(seconds, body, _M_FAIL, "timeout")


def fail_after(seconds, body=None):
    """Event: the same as ``timeout(seconds, body)``: ``Timeout`` when time runs out."""
    return _scope_event(seconds, body, _M_FAIL, "fail_after")


def move_on_after(seconds, body=None):
    """Event: like ``timeout()``, but when time runs out the value is None.

    ``body`` is cancelled as in ``timeout()``; no exception comes out here.
    As ``async with bluelet.move_on_after(seconds) as scope:`` the block is
    left where it was cancelled, and ``scope.cancelled_caught`` says
    whether it was.
    """
    return _scope_event(seconds, body, _M_MOVE_ON, "move_on_after")


def shield(body=None):
    """Event: run ``body`` (an event or a coroutine) protected from cancellation.

    Neither a ``kill`` of this coroutine nor a deadline set outside reaches
    ``body``; deadlines set inside it still apply. A kill or an outer
    deadline that came meanwhile is raised at the next scheduling point
    after it. A ``finally`` block of a coroutine being killed may wait
    inside ``shield()`` (a goodbye message, a flush); the kill then waits
    for it. ``async with bluelet.shield():`` shields a block.
    """
    return _scope_event(math.inf, body, _M_SHIELD, "shield")


def _scope_event(seconds, body, mode, verb):
    if body is not None and not isinstance(body, Event) and type(body) not in _COROUTINE_TYPES:
        raise TypeError("%s() needs an event or a coroutine, not %r" % (verb, body))
    try:
        return _TimeoutEvent(_seconds(seconds), body, mode)
    except BaseException:
        if isinstance(body, Event):
            _used(body)  # debug mode: the caller gets this error, not a warning too
        raise


def current_deadline():
    """The deadline that applies at this point of the running coroutine.

    The earliest deadline of the scopes it is in (``timeout``,
    ``fail_after``, ``move_on_after``), up to the innermost ``shield``, on
    the clock of ``current_time()``; ``math.inf`` if there is none.
    """
    task = _running_loop()._current
    deadline = math.inf
    if task is not None and task.scopes is not None:
        for scope in reversed(task.scopes):
            if scope.mode == _M_SHIELD:
                break
            deadline = min(deadline, scope.deadline)
    return deadline


def current_time():
    """The running loop's clock, in seconds: ``time.monotonic()``, or the
    virtual clock under ``virtual_time``."""
    return _running_loop()._now()


def current():
    """The spawned coroutine (generator) that is running now, or None."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop._current is None:
        return None
    return loop._current.base


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------

class _Timed:
    """Something the timer heap can wake: a sleeping task or a timeout.

    A heap entry is live while its sequence number is the target's
    ``timer_seq``; cancelling sets that to 0 and leaves the entry behind.
    """

    __slots__ = ("timer_seq",)


class _Task(_Timed):
    """One spawned coroutine and the sub-coroutines it is delegating to."""

    __slots__ = ("base", "gen", "stack", "pos", "outer_pos", "pending", "front", "state",
                 "value", "exc", "result", "joiners", "wait", "wait_fds", "scopes", "expired",
                 "killed", "swallows", "context", "loop")

    def __init__(self, gen, pos):
        self.base = gen          # the spawned generator: the key for join/kill
        self.gen = gen           # the innermost generator: the one resumed
        self.stack = None        # delegating parents, outermost first
        self.pos = pos           # the innermost generator's place in pass order
        self.outer_pos = None    # the places of the parents in ``stack``
        self.pending = None      # an event yielded, to be handled on the next pass
        self.front = False       # woken first in its fd's line: if the I/O would block, back there
        self.state = _S_READY
        self.value = None        # what the next resume sends ...
        self.exc = None          # ... or throws
        self.result = None
        self.joiners = None
        self.wait = None         # the event, queue or task waited on
        self.wait_fds = None     # [(state, mask)] of a WaitableEvent's fds
        self.timer_seq = 0       # heap entry that may wake it; 0: none
        self.scopes = None       # active scopes (_Scope), outermost first
        self.expired = False     # whether a cancellation is due at its next scheduling point
        self.killed = False      # a kill was asked for: it lands once no shield holds it off
        self.swallows = 0        # cancellations it has caught and carried on from
        self.context = None      # the contextvars.Context its steps run in
        self.loop = None         # the Loop running it: one thread's

    def __repr__(self):
        return "<bluelet task %s>" % (getattr(self.base, "__qualname__", self.base),)


class _Scope(_Timed):
    """One active scope (``timeout()``, ``move_on_after()``, ``shield()``)
    over a part of a task's chain."""

    __slots__ = ("task", "depth", "seconds", "deadline", "mode", "expired", "held")

    def __init__(self, task, depth, seconds, deadline, mode, held):
        self.task = task
        self.depth = depth       # the chain depth that yielded the scope's event
        self.seconds = seconds
        self.deadline = deadline
        self.mode = mode
        self.timer_seq = 0
        self.expired = False
        self.held = held         # an async with block's: open until the block is left


class _Shuffler:
    """The order of a pass's ready tasks under ``schedule_seed``: a
    Fisher-Yates shuffle driven by SplitMix64, which both twins compute
    alike (Python's random is not used: the compiled twin computes in C)."""

    __slots__ = ("state",)

    def __init__(self, seed):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError("schedule_seed must be an int or None, not %r" % (seed,))
        self.state = int(seed) & _MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def shuffle(self, tasks):
        for i in range(len(tasks) - 1, 0, -1):
            j = self.next() % (i + 1)
            tasks[i], tasks[j] = tasks[j], tasks[i]


_MASK64 = (1 << 64) - 1


class _FdState:
    """What the loop knows of one descriptor: its waiters and poller interest."""

    __slots__ = ("fd", "fileobj", "interest", "ready", "readers", "writers", "writer")

    def __init__(self, fd, fileobj):
        self.fd = fd
        self.fileobj = fileobj
        self.interest = 0
        self.ready = 0           # reported ready, no waiter has claimed it yet
        self.readers = collections.deque()
        self.writers = collections.deque()
        self.writer = None       # the writer woken last: first to write at its turn


# ---------------------------------------------------------------------------
# Pollers: set_interest(state, mask), forget(state), poll(timeout), close()
# ---------------------------------------------------------------------------

# Ready descriptors served per poll; the rest are reported by the next one.
_MAX_EVENTS = 1024


class _EpollPoller:
    """Level-triggered epoll, used directly on Linux."""

    def __init__(self):
        self._epoll = select.epoll()

    def set_interest(self, state, mask):
        epoll = self._epoll
        if mask == 0:
            self.forget(state)
            return
        if state.interest == 0:
            try:
                epoll.register(state.fd, mask)
            except FileExistsError:
                # Registered through another object for the same fd.
                epoll.modify(state.fd, mask)
        else:
            try:
                epoll.modify(state.fd, mask)
            except FileNotFoundError:
                # The fd was closed and reused without notify_closing.
                epoll.register(state.fd, mask)
        state.interest = mask

    def forget(self, state):
        if state.interest:
            state.interest = 0
            try:
                self._epoll.unregister(state.fd)
            except OSError:
                pass

    def poll(self, timeout):
        return self._epoll.poll(timeout, _MAX_EVENTS)

    def fileno(self):
        return self._epoll.fileno()

    def close(self):
        self._epoll.close()


class _SelectorsPoller:
    """The platform's best ``selectors`` backend, where epoll is missing."""

    def __init__(self):
        self._selector = selectors.DefaultSelector()

    def set_interest(self, state, mask):
        if mask == 0:
            self.forget(state)
            return
        events = (selectors.EVENT_READ if mask & READ else 0) | \
                 (selectors.EVENT_WRITE if mask & WRITE else 0)
        if state.interest == 0:
            self._selector.register(state.fd, events)
        else:
            self._selector.modify(state.fd, events)
        state.interest = mask

    def forget(self, state):
        if state.interest:
            state.interest = 0
            try:
                self._selector.unregister(state.fd)
            except (KeyError, ValueError, OSError):
                pass

    def poll(self, timeout):
        if not self._selector.get_map():
            # Only sleepers: Windows' select() refuses three empty sets.
            if timeout > 0:
                time.sleep(timeout)
            return []
        ready = []
        for key, events in self._selector.select(None if timeout < 0 else timeout):
            ready.append((key.fd, (READ if events & selectors.EVENT_READ else 0) |
                          (WRITE if events & selectors.EVENT_WRITE else 0)))
        return ready

    def fileno(self):
        # kqueue and epoll selectors have one; select and poll do not.
        fileno = getattr(self._selector, "fileno", None)
        return -1 if fileno is None else fileno()

    def close(self):
        self._selector.close()


def _new_poller():
    return _EpollPoller() if hasattr(select, "epoll") else _SelectorsPoller()


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

_local = threading.local()


def _forget_loop_after_fork():
    # A child forked inside run() shares its parent's poller and wake-up
    # socket, so it cannot go on with that loop; it may start its own
    # (server(workers=N) does, from inside the supervisor's run()).
    _local.loop = None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_loop_after_fork)


class Loop:
    """One run of the scheduler: ``Loop().run(root)`` is ``run(root)``.

    With ``virtual_time=True`` sleeps take no real time: whenever no
    coroutine is ready, the clock jumps to the next deadline (I/O is still
    polled, without waiting). Sleep-heavy tests then run at once and in an
    order that cannot depend on the machine's speed.

    With ``slow_step=seconds``, a coroutine that runs longer than that
    between two ``yield``s is logged as a warning on the ``bluelet`` logger.

    With ``debug=True`` (the default under ``BLUELET_DEBUG=1`` or ``python
    -X dev``), an event made while it runs and collected without ever being
    yielded or awaited -- a forgotten ``yield`` -- is reported with a
    RuntimeWarning at the line that made it. Debug mode is the process's
    while such a loop runs.

    With ``schedule_seed=N`` (an int), the coroutines that are ready run in
    an order shuffled by a generator seeded with N, instead of the order
    they became ready in: a test run under several seeds meets
    interleavings it would not meet otherwise, and a seed replays its
    interleaving exactly, on either core.
    """

    __slots__ = ("_virtual_time", "_slow_step", "_debug", "_shuffler", "_clock", "_ready", "_batch", "_spawned",
                 "_unsorted", "_last_pos", "_next_pos", "_rest", "_passes", "_end_pass",
                 "_fire_pass", "_after_poll", "_tasks",
                 "_timers", "_timer_seq", "_stale_timers", "_fds", "_fd_waiters",
                 "_poller", "_root", "_current", "_failure", "_results", "_inbox",
                 "_external", "_waker_fd", "_waker", "_waker_lock", "_interrupts", "_deferred",
                 "_stopping", "_calls", "_hooks", "_wants", "_plain")

    def __init_subclass__(cls, **kwargs):
        # The compiled Loop is final; the pure one must not allow more.
        raise TypeError("bluelet.Loop cannot be subclassed")

    def __init__(self, virtual_time=False, slow_step=None, debug=None, schedule_seed=None):
        self._virtual_time = virtual_time
        self._slow_step = slow_step  # seconds; a longer step is logged
        self._debug = default_debug() if debug is None else bool(debug)
        self._shuffler = None if schedule_seed is None else _Shuffler(schedule_seed)
        self._clock = 0.0           # the time under virtual_time
        self._ready = []            # tasks to run on the next pass
        self._batch = []            # the pass being run (kept to reuse it)
        self._spawned = []          # tasks spawned by the step being run
        self._unsorted = False      # whether _ready is out of pass order
        self._last_pos = -1         # the place of the task appended last
        self._next_pos = 0          # the place the next new generator takes
        self._rest = _NO_TASKS      # iterator over what is left of the pass
        self._passes = 0            # passes run since I/O was last polled
        self._end_pass = False      # the run failed, or an error reached a caller
        self._fire_pass = False     # whether the next pass is the first after a poll
        self._after_poll = []       # tasks in _S_TRY: to run once the next poll has run
        self._tasks = {}            # base generator -> live _Task
        self._timers = []           # heap of (deadline, seq, task)
        self._timer_seq = 0
        self._stale_timers = 0
        self._fds = {}              # fd -> _FdState
        self._fd_waiters = 0        # tasks waiting in some _FdState queue
        self._poller = None
        self._root = None
        self._current = None        # the task being stepped
        self._failure = None
        self._results = weakref.WeakKeyDictionary()  # finished gen -> result
        self._inbox = collections.deque()  # Completions delivered by threads
        self._external = 0          # Completions not yet delivered
        self._waker_fd = -1         # read end of the socket pair threads write to
        self._waker = None          # (read end, write end), made as the run begins
        self._waker_lock = threading.RLock()  # no write to the waker once closed
        self._interrupts = collections.deque()  # from interrupt(), for the root
        self._deferred = None       # an interrupt due at the root's next scheduling point
        self._stopping = False      # an interrupt reached the root: end with it
        self._calls = collections.deque()  # from call_soon_threadsafe; None once the run ends
        self._hooks = None          # told of the loop's events (the hooks property)
        self._wants = 0             # which of them: _H_* bits
        self._plain = slow_step is None  # no hooks, no slow_step: steps run bare

    # -- entry point --------------------------------------------------------

    def run(self, root):
        """Run generator ``root`` and all it spawns; return root's result."""
        self._begin(root, "bluelet.run()")
        _local.loop = self
        debugging = _set_debug(self._debug)
        try:
            while self._round(True):
                pass
        finally:
            self._close(debugging)
        return self._outcome()

    def _begin(self, root, verb):
        _require_generator(root, "run")
        if self._root is not None:
            raise RuntimeError("a Loop runs only once")
        if getattr(_local, "loop", None) is not None:
            raise RuntimeError("%s called from inside a running loop" % verb)
        self._poller = _new_poller()
        # Made now, in the loop's thread: another thread may have to wake it
        # (interrupt, call_soon_threadsafe, a socket closed there).
        self._wakeup_fd()
        self._root = self._add_task(root)
        self._queue_spawned()

    def _close(self, debugging):
        # Still the running loop while shutting down: finally blocks of the
        # coroutines being closed may wake queues or close sockets.
        try:
            self._shutdown()
        finally:
            _local.loop = None
            if self._debug:
                _sweep_unyielded()
            _set_debug(debugging)

    def _outcome(self):
        if self._deferred is not None and self._failure is None:
            # The root ended before the scheduling point it was due at.
            self._failure = self._deferred
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        return self._root.result

    def _round(self, blocking):
        """One round: passes, a poll, expired sleepers. The poll waits for
        I/O or the next deadline only if ``blocking``. Returns whether the
        run goes on."""
        if not self._tasks:
            return False
        while self._interrupts:
            self._interrupt(self._interrupts.popleft())
        if self._failure is not None:
            # An interrupt after the root ended: the run ends with it,
            # whatever the others still wait for.
            return False
        # ---- phase 1: passes until nothing is ready, as 0.2.0 runs them
        # (docs/order.md); bounded, so a coroutine that never waits
        # cannot keep I/O and timers from being served forever.
        while self._ready and self._passes < _MAX_PASSES:
            self._passes += 1
            self._run_pass()
            if self._failure is not None:
                return False
            # A signal that came during the pass is for this round.
            while self._interrupts:
                self._interrupt(self._interrupts.popleft())
        if not self._tasks or self._stopping and self._root.state == _S_DONE:
            return False

        # ---- phase 2: poll I/O, blocking only if nothing is ready.
        if _debug:
            _sweep_unyielded()
        jump = 0.0
        if self._ready or self._after_poll:
            timeout = 0.0
        elif self._has_timers():
            timeout = min(max(self._next_deadline() - self._now(), 0.0), _MAX_TIMEOUT)
            if self._virtual_time:
                # Nothing can happen before the next deadline but I/O
                # that is ready now: poll without waiting, and go there
                # only if that woke nobody (real time would not pass).
                jump = timeout
                timeout = 0.0
        elif self._fd_waiters or self._external:
            timeout = -1.0
        else:
            self._failure = RuntimeError(
                "deadlock: %d coroutine(s) wait for each other and nothing can "
                "wake them: %r" % (len(self._tasks), list(self._tasks.values())))
            return False
        self._passes = 0
        # The next pass is 0.2.0's firing of what the poll reports, unless
        # tasks were still ready (a poll for fairness: 0.2.0 has none).
        fire = not self._ready
        try:
            # A guest's host does the waiting (step() says for how long).
            self._poll(timeout if blocking else 0.0)
        except KeyboardInterrupt as exc:
            self._interrupt(exc)
            return True
        # I/O that was likely to succeed runs only now, after the poll,
        # as 0.2.0 fires it: what it sends wakes a reader at the next
        # poll, not this one.
        self._queue_after_poll()
        self._fire_pass = fire
        if jump and not self._ready:
            self._clock += jump

        # ---- phase 3: expire sleepers, earliest deadline first.
        self._expire_timers(self._now())
        return True

    # -- guest mode: another event loop drives this one ---------------------

    def start(self, root):
        """Begin running ``root`` as a guest of another event loop.

        Instead of ``run()``, which waits in its own poll, a host calls
        ``step()`` whenever its last answer says to, or ``fileno()`` is
        readable, until it returns None; then ``finish()``. The steps run
        in the host's thread, one at a time.
        """
        self._begin(root, "Loop.start()")

    def step(self):
        """Guest mode: run what is ready and serve what is due, without waiting.

        Returns when to step again: 0.0 at once, else in that many seconds
        (the next deadline) or, for -1.0, no sooner than ``fileno()`` is
        readable (it may be before a deadline too). None: the run is over;
        call ``finish()``.
        """
        if self._root is None:
            raise RuntimeError("Loop.step() before Loop.start()")
        if getattr(_local, "loop", None) is not None:
            raise RuntimeError("Loop.step() called from inside a running loop")
        _local.loop = self
        debugging = _set_debug(self._debug)
        try:
            if not self._round(False):
                return None
            if self._ready or self._after_poll or self._interrupts:
                return 0.0
            if self._has_timers():
                return 0.0 if self._virtual_time else max(self._next_deadline() - self._now(), 0.0)
            if self._fd_waiters or self._external:
                return -1.0
            return 0.0  # nothing can wake the rest: the next step says so
        finally:
            _local.loop = None
            _set_debug(debugging)

    def fileno(self):
        """Guest mode: a descriptor that is readable when I/O or a wake-up
        from another thread is due (the poller's own); -1 where the poller
        has none (select), so a host must step on a timer."""
        if self._poller is None:
            raise RuntimeError("Loop.fileno() before Loop.start()")
        return self._poller.fileno()

    def finish(self):
        """Guest mode: close every coroutine still alive and the poller, then
        return the root's result or raise what ended the run."""
        if self._root is None:
            raise RuntimeError("Loop.finish() before Loop.start()")
        over = not self._tasks or self._failure is not None or \
            self._stopping and self._root.state == _S_DONE
        _local.loop = self
        self._close(_set_debug(self._debug))
        if not over:
            raise RuntimeError("Loop.finish() before the run was over: its coroutines "
                               "were closed")
        return self._outcome()

    def _run_pass(self):
        """Run each ready task once, in the order of their places."""
        batch = self._ready
        self._ready = self._batch
        self._last_pos = -1
        if self._unsorted:
            self._unsorted = False
            batch.sort(key=_place)
        if self._shuffler is not None:
            self._shuffler.shuffle(batch)
        fire = self._fire_pass
        self._fire_pass = False
        # An iterator, not an index: _alone() reads what is left from it,
        # which costs no store per task (the compiled twin counts).
        self._rest = rest = iter(batch)
        for task in rest:
            if task.state == _S_READY:
                # Each step runs in the task's own contextvars context.
                task.context.run(self._step if self._plain else self._observed_step, task)
                self._current = None
                if self._end_pass:
                    self._end_pass = False
                    if self._failure is not None:
                        break
                    self._cut_pass(list(rest), fire)
                    break
        self._rest = _NO_TASKS
        self._queue_spawned()
        batch.clear()
        self._batch = batch

    def _cut_pass(self, rest, fire):
        """An error reached a caller: 0.2.0 starts a new pass there. The
        tasks not yet run join the next pass in place; in the pass after a
        poll (0.2.0's firing of what select() reported) they wait for the
        next poll instead, their I/O not done."""
        self._queue_spawned()
        if not rest:
            return
        if fire:
            for task in rest:
                if task.state == _S_READY:
                    task.state = _S_TRY
                    self._after_poll.append(task)
            return
        rest.extend(self._ready)
        self._ready[:] = rest
        self._unsorted = True

    def _now(self):
        return self._clock if self._virtual_time else _monotonic()

    # -- resuming a task ----------------------------------------------------

    def _step(self, task):
        """Handle ``task``'s pending event or resume it, and follow its
        events until it waits, ends, or has an event for the next pass."""
        task.state = _S_RUNNING
        self._current = task
        gen = task.gen
        event = task.pending
        value = task.value
        exc = task.exc
        # Cleared only where set: a null() switch writes none of them.
        if event is not None:
            task.pending = None
        if value is not None or exc is not None:
            task.value = task.exc = None
        fresh = False
        while True:
            if event is None:
                if task.scopes is not None:
                    caught = self._leave_scopes(task, exc)
                    if caught is not None:
                        # A scope's own cancellation ends where the scope does.
                        value = None
                        exc = Timeout("timed out after %g s" % caught.seconds) \
                            if caught.mode == _M_FAIL else None
                try:
                    if exc is None:
                        event = gen.send(value)
                    else:
                        event = gen.throw(exc)
                except StopIteration as stop:
                    value, exc, ended = stop.value, None, True
                except BaseException as error:
                    value, exc, ended = None, error, True
                else:
                    ended = False
                if ended:
                    # The generator ended, returning or raising.
                    if not task.stack:
                        self._finish(task, value, exc)
                        return
                    # The caller takes the value or the error on the next
                    # pass; an error also ends this pass, as in 0.2.0.
                    gen = self._pop(task)
                    if self._alone():
                        continue
                    self._schedule(task, value, exc)
                    if exc is not None:
                        self._end_pass = True
                    return
                value = exc = None

                if event is _NULL and not task.expired:
                    self._schedule(task, None, None)
                    return
                fresh = True
            kind = _kind_of(type(event))
            if kind is None:
                kind = _kind_slow(event)
            if fresh:
                if _debug:
                    _used(event)
                if task.expired and kind in _SCHEDULING_POINTS:
                    self._raise_due(task)
                    return
                if kind in _NEXT_PASS and not self._alone():
                    # 0.2.0 handles these on the pass after the yield.
                    task.pending = event
                    self._schedule(task, None, None)
                    return
            # From here ``event`` is handled; what follows resumes ``gen``
            # (event None) or handles the next event.
            handled, event = event, None

            if kind == _K_VALUE:
                self._schedule(task, handled._value, None)
                return
            elif kind == _K_IO:
                if not fresh:
                    # Its turn after the poll: the I/O, then the resume.
                    value, exc = self._fire(task, handled)
                    if value is _WOULD_BLOCK:
                        return
                    if exc is not None and _ends_coroutine(handled, exc):
                        # 0.2.0's semantics, on a connection that asks for
                        # them (bluelet.compat): the coroutine that yielded
                        # ends on the next pass; its caller gets None.
                        task.pending = _END_NONE
                        self._schedule(task, None, None)
                        return
                elif handled._try_first or self._claim_ready(handled):
                    task.pending = handled
                    task.state = _S_TRY
                    self._after_poll.append(task)
                    return
                else:
                    exc = self._wait_fd(task, handled, False)
                    if exc is None:
                        return
            elif kind == _K_SLEEP:
                if self._virtual_time:
                    task.wait = self._clock + handled.duration
                else:
                    task.wait = handled.wakeup_time
                self._add_timer(task, task.wait)
                task.state = _S_SLEEP
                return
            elif kind == _K_CALL:
                child = handled if type(handled) in _COROUTINE_TYPES else handled.spawned
                exc = self._check_new(child, "call")
                if exc is None:
                    gen = self._push(task, child)
                    # The callee's first step is on the next pass. A call
                    # found alone at its yield is still alone: no code ran.
                    if not (fresh or self._alone()):
                        self._schedule(task, None, None)
                        return
            elif kind == _K_RETURN:
                value = handled.value
                try:
                    gen.close()
                except BaseException as error:
                    value, exc = None, error
                if not task.stack:
                    self._finish(task, value, exc)
                    return
                gen = self._pop(task)
                if not self._alone():
                    self._schedule(task, value, exc)
                    return
            elif kind == _K_SPAWN:
                exc = self._check_new(handled.spawned, "spawn")
                if exc is None:
                    self._add_task(handled.spawned)
            elif kind == _K_JOIN:
                target = self._task_of(handled.child)
                if target is None:
                    exc = _check_finished(handled.child, "join")
                    if exc is None:
                        value = self._results.get(handled.child)
                elif target is task:
                    exc = RuntimeError("a coroutine cannot join itself")
                else:
                    self._wait_for_end(task, target)
                    return
            elif kind == _K_KILL:
                target = self._task_of(handled.child)
                if target is None:
                    exc = _check_finished(handled.child, "kill")
                elif self._kill(target, False):
                    if target is task:
                        return
                    # The killer goes on on the next pass.
                    if not self._alone():
                        self._schedule(task, None, None)
                        return
                elif target is not task:
                    # A shield holds the kill off: the killer waits for the end.
                    self._wait_for_end(task, target)
                    return
                elif task.state == _S_READY:
                    return  # its finally block entered shield(): scheduled for it
            elif kind == _K_WAITABLE:
                if not fresh:
                    try:
                        value = handled.fire()
                    except Exception as error:
                        exc = error
                else:
                    exc = self._wait_waitables(task, handled)
                    if exc is None:
                        return
            elif kind == _K_EXCEPTION:
                self._schedule(task, None, handled._exc)
                return
            elif kind == _K_TIMEOUT:
                body = handled.body
                if body is None:
                    exc = TypeError(
                        "%s() without a body is a block: async with bluelet.%s(...): in an "
                        "async def, or pass the body" % ((_SCOPE_VERBS[handled.mode],) * 2))
                elif type(body) not in _COROUTINE_TYPES:
                    # An event as the body: handled as if yielded inside the
                    # scope, which ends when this generator resumes.
                    self._enter_scope(task, handled, False)
                    event = body
                    fresh = True
                    continue
                else:
                    exc = self._check_new(body, _SCOPE_VERBS[handled.mode])
                if exc is None:
                    self._enter_scope(task, handled, False)
                    gen = self._push(task, body)
                    # Like a call: the body's first step is on the next pass.
                    if not self._alone():
                        self._schedule(task, None, None)
                        return
            elif kind == _K_PARK:
                if handled._external:
                    self._expect_external()
                handled._waiters.append(task)
                task.wait = handled
                task.state = _S_PARK
                return
            elif kind == _K_EXTERNAL:
                if handled._loop is not self:
                    exc = RuntimeError("a Completion belongs to the loop that created it")
                elif handled._done:
                    self._schedule(task, handled._value, handled._exc)
                    return
                else:
                    handled._task = task
                    task.wait = handled
                    task.state = _S_EXTERNAL
                    return
            elif kind == _K_LATER:
                if fresh:
                    task.pending = handled
                    self._schedule(task, None, None)
                    return
                try:
                    value = handled.func(*handled.args)
                except Exception as error:
                    exc = error
            elif kind == _K_SCOPE:
                # Not a scheduling point either way: the coroutine goes on.
                if handled.leaving:
                    value, exc = self._leave_block(task, handled)
                elif handled.block._scope is not None:
                    exc = RuntimeError("this scope block is in use: a block is entered once")
                else:
                    if _debug:
                        _used(handled.block)
                    handled.block._scope = self._enter_scope(task, handled.block, True)
                    value = handled.block
            else:
                exc = _not_an_event(handled)

    def _fire(self, task, event):
        """Do the I/O of ``event``, whose fd was reported ready (or likely
        is): ``(value, exc)`` to resume ``task`` with, or ``_WOULD_BLOCK``
        once it waits again. A task that was not first in line goes behind
        those already waiting on the fd (a sendall is never cut into)."""
        front, task.front = task.front, False
        state = None if front else self._fds.get(event._fileno)
        if state is not None and state.fileobj is event._fileobj and _behind(state, event._mask):
            value = _WOULD_BLOCK
        else:
            try:
                value = event._attempt()
            except (BlockingIOError, InterruptedError):
                value = _WOULD_BLOCK
            except Exception as error:
                state = self._fds.get(event._fileno)
                if front and (state is None or state.fileobj is not event._fileobj):
                    # Closed (notify_closing) by another coroutine after the
                    # poll reported it: as if it had been closed while waiting.
                    error = SocketClosedError(
                        "fd %d was closed while this coroutine waited on it" % event._fileno)
                return None, error
        if value is _WOULD_BLOCK:
            # Not ready after all (or only partly done): wait, first in line
            # again if it was.
            exc = self._wait_fd(task, event, front)
            return (_WOULD_BLOCK, None) if exc is None else (None, exc)
        return value, None

    def _alone(self):
        """Whether nothing else can run before this task's next pass: then
        its next-pass work is done now, since no order can tell. Counted
        as a pass, so the fairness bound holds here too."""
        if (self._ready or self._spawned or self._passes >= _MAX_PASSES
                or _length_hint(self._rest)):
            return False
        self._passes += 1
        return True

    def _push(self, task, child):
        """Make ``child`` the task's innermost generator, at a new place."""
        if task.stack is None:
            task.stack = []
            task.outer_pos = []
        task.stack.append(task.gen)
        task.outer_pos.append(task.pos)
        task.pos = self._next_pos
        self._next_pos += 1
        task.gen = child
        return child

    def _pop(self, task):
        """Return to the caller of the task's innermost generator."""
        task.pos = task.outer_pos.pop()
        gen = task.gen = task.stack.pop()
        return gen

    def _observed_step(self, task):
        # A step the hooks are told of, or slow_step times.
        hooks, wants = self._hooks, self._wants
        if wants & _H_BEFORE_STEP:
            hooks.before_step(_task_info(task, self._now()))
        start = time.perf_counter()
        self._step(task)
        elapsed = time.perf_counter() - start
        if self._slow_step is not None and elapsed > self._slow_step:
            log.warning("coroutine %r ran %.3f s without yielding (slow_step=%g)",
                        task.base, elapsed, self._slow_step)
        if wants & _H_AFTER_STEP:
            hooks.after_step(_task_info(task, self._now()))

    def _schedule(self, task, value, exc):
        """Make a waiting task ready to resume with ``value`` or ``exc``."""
        task.value = value
        task.exc = exc
        if task.state != _S_READY:
            task.state = _S_READY
            # Noted when it breaks place order: the next pass is sorted then.
            if task.pos < self._last_pos:
                self._unsorted = True
            self._last_pos = task.pos
            self._ready.append(task)
            if self._wants & _H_SCHEDULED:
                self._hooks.task_scheduled(_task_info(task, self._now()))

    def _wait_for_end(self, task, target):
        """Park ``task`` until ``target`` has ended (a join, a held-off kill)."""
        if target.joiners is None:
            target.joiners = []
        target.joiners.append(task)
        task.wait = target
        task.state = _S_JOIN

    def _add_task(self, gen):
        task = _Task(gen, self._next_pos)
        self._next_pos += 1
        # A copy of the spawner's context (the caller's, for the root), as
        # asyncio.create_task makes: what one coroutine sets, no other sees.
        task.context = _copy_context()
        task.loop = self
        self._tasks[gen] = task
        self._spawned.append(task)
        if self._wants & _H_SPAWNED:
            self._hooks.task_spawned(_task_info(task, self._now()))
        return task

    def _queue_spawned(self):
        """Append the tasks spawned during a pass to the next one.

        Only at the end of the pass: they have the newest places, and the
        tasks of the pass (earlier places) are queued as they run, so
        queueing them at once would break place order on every spawn and
        cost a sort of the next pass."""
        spawned = self._spawned
        if spawned:
            if spawned[0].pos < self._last_pos:
                self._unsorted = True
            self._last_pos = spawned[-1].pos
            self._ready.extend(spawned)
            spawned.clear()

    def _task_of(self, gen):
        """The live task of spawned generator ``gen``, if any."""
        return self._tasks.get(gen) if type(gen) in _COROUTINE_TYPES else None

    def _check_new(self, gen, verb):
        """The error to raise when ``gen`` cannot start as a new coroutine."""
        error = _generator_error(gen, verb)
        if error is None and (gen in self._tasks or _driven(gen)):
            error = ValueError("%s(): %r is already running" % (verb, gen))
        return error

    # -- ending tasks -------------------------------------------------------

    def _finish(self, task, result, exc):
        """Record the end of ``task``, wake its joiners, route its error.

        Joiners get the result, or the exception raised at their ``yield``;
        an exception that no joiner takes ends the run (unless quiet).
        """
        if task.killed:
            # Killed: it ends with None, whether Cancelled came out or it
            # carried on to its end after a shield.
            result = None
            if isinstance(exc, Cancelled):
                exc = None
        task.state = _S_DONE
        task.front = False  # not a woken writer any more: others may write
        task.result = result
        if self._wants & _H_EXITED:
            self._hooks.task_exited(_task_info(task, self._now()))
        if task.scopes is not None:
            for scope in task.scopes:
                self._drop_timer(scope)
            task.scopes = None
        # No link back to the loop either: the record outlives the run as
        # its root, and the compiled twin's records are not collected.
        task.gen = task.stack = task.outer_pos = task.wait = task.pending = task.loop = None
        del self._tasks[task.base]
        if result is not None:
            self._results[task.base] = result
        if task.joiners:
            for joiner in task.joiners:
                joiner.wait = None
                self._schedule(joiner, result, exc)
            task.joiners = None
            return
        if exc is not None:
            # The root's failure is the program's: run() raises it, whatever it is.
            if isinstance(exc, _QUIET) and task is not self._root:
                log.debug("coroutine %r ended by %r", task.base, exc)
            elif self._failure is None:
                self._failure = exc
                self._end_pass = True
            else:
                log.error("another coroutine failed while bluelet was stopping",
                          exc_info=exc)

    def _kill(self, task, force):
        """Stop ``task``: leave what it waits on, raise Cancelled in its chain.

        Returns whether it has ended. Not if it is inside shield(), or a
        finally block enters one as Cancelled goes through: the kill then
        lands at its first scheduling point after the shield's body, going
        through the scheduler like a deadline's cancellation. ``force``
        (shutdown, a task that swallowed too many) ignores shields.
        """
        task.killed = True
        if not force and self._shielded(task):
            return False
        killer = self._current
        self._cancel_wait(task)
        self._current = task  # its finally blocks see themselves as current()
        if task is killer:
            ended = self._cancel_chain(task, not force)
        else:
            ended = task.context.run(self._cancel_chain, task, not force)
        self._current = killer
        return ended

    def _cancel_chain(self, task, hold):
        """Raise Cancelled in ``task``'s chain and finish it; with ``hold``,
        stop at a generator that yields shield() and schedule that instead.

        Cancelled goes in innermost first and propagates outwards like any
        exception (an error raised while cleaning up replaces it). A
        coroutine that carries on after it is closed, and the task fails
        with a RuntimeError saying so.
        """
        exc = Cancelled()
        swallowed = None
        while True:
            exc, held = _cancel_one(task.gen, exc, hold)
            if held is not None:
                self._drop_scopes(task, len(task.stack) if task.stack else 0)
                task.pending = held
                self._schedule(task, None, None)
                return False
            if exc is None:
                if swallowed is None:
                    swallowed = RuntimeError(
                        "%r carried on while being cancelled; it was closed" % (task.gen,))
                exc = Cancelled()
            if not task.stack:
                break
            self._pop(task)
        if swallowed is None and not isinstance(exc, Cancelled):
            swallowed = exc
        self._finish(task, None, swallowed)
        return True

    def _cancel_wait(self, task):
        """Take a waiting task out of whatever would wake it; others are left."""
        state = task.state
        if state == _S_SLEEP:
            task.timer_seq = 0
            self._stale_timers += 1
        elif state == _S_IO:
            self._unwait_fds(task)
            self._fd_waiters -= 1
        elif state == _S_JOIN:
            task.wait.joiners.remove(task)
        elif state == _S_PARK:
            task.wait._waiters.remove(task)
            if task.wait._external:
                self._external -= 1
        elif state == _S_EXTERNAL:
            task.wait._task = None
        elif state == _S_TRY:  # its entry in _after_poll is skipped from now on
            task.pending = None
        else:
            return
        task.wait = task.wait_fds = None
        task.state = _S_RUNNING

    def _interrupt(self, exc):
        """KeyboardInterrupt while waiting: raise it in the root."""
        root = self._root
        if root.state == _S_DONE:
            self._failure = exc
            return
        # The others stay alive: a root that catches it may wind them down
        # (a server finishing its requests). Once the root has ended, the
        # run ends too, closing the rest, rather than waiting for them.
        self._stopping = True
        if root.state == _S_READY and root.exc is None:
            # What it waited for has just completed (a connection accepted,
            # bytes read): thrown in now, the exception would lose that
            # result. It takes the result, and the exception at its next
            # scheduling point.
            self._deferred = exc
            root.expired = True
            return
        self._cancel_wait(root)
        self._schedule(root, None, exc)

    def _shutdown(self):
        """Close every coroutine still alive, then the poller."""
        with self._waker_lock:
            calls, self._calls = self._calls, None
        for task in list(self._tasks.values()):
            self._kill(task, True)
        self._ready.clear()
        self._after_poll.clear()
        self._timers.clear()
        for state in self._fds.values():
            self._poller.forget(state)
            _unshare_fd(state.fd, self)
        with self._waker_lock:
            if self._waker is not None:
                for end in self._waker:
                    end.close()
                self._waker = None
                self._waker_fd = -1
        self._fds.clear()
        self._poller.close()
        # A call accepted is made even now (spawn refuses): the thread that
        # posted it may be waiting to hear how it went.
        while calls:
            calls.popleft()()

    # -- descriptors --------------------------------------------------------

    def _claim_ready(self, event):
        """Whether ``event``'s fd was reported ready with nobody waiting: its
        operation will likely succeed at once. The report is used up."""
        state = self._fds.get(event._fileno)
        if state is None or state.fileobj is not event._fileobj or not state.ready & event._mask:
            return False
        state.ready &= ~event._mask
        return True

    def _fd_state(self, fileobj, fd):
        state = self._fds.get(fd)
        if state is None:
            state = self._fds[fd] = _FdState(fd, fileobj)
            _share_fd(fd, self)
        elif ((state.fileobj is not fileobj or type(fileobj) is int)
              and not state.readers and not state.writers):
            # A new object on a recycled fd: the kernel may have dropped the
            # old registration when the old object was closed. A bare int
            # cannot tell us it was recycled, so it is registered afresh.
            self._poller.forget(state)
            state.fileobj = fileobj
            state.ready = 0
        return state

    def _enqueue(self, task, state, mask, front=False):
        queue = state.readers if mask == READ else state.writers
        if front:
            queue.appendleft(task)
        else:
            queue.append(task)
        wanted = state.interest | mask
        if wanted != state.interest:
            self._poller.set_interest(state, wanted)

    def _wait_fd(self, task, event, front):
        """Queue ``task`` for ``event``'s fd (at the front of its line if
        ``front``); an error to raise if that fails."""
        task.wait = event
        task.state = _S_IO
        self._fd_waiters += 1
        try:
            state = self._fd_state(event._fileobj, event._fileno)
            self._enqueue(task, state, event._mask, front)
        except OSError as error:
            self._cancel_wait(task)
            if error.errno == errno.EPERM:
                # Regular files cannot be polled: they are always ready.
                return self._attempt_now(task, event)
            return error
        return None

    def _attempt_now(self, task, event):
        """Run an always-ready event's operation to its end, here and now."""
        try:
            value = event._attempt()
            while value is _WOULD_BLOCK:
                value = event._attempt()
        except Exception as error:
            return error
        self._schedule(task, value, None)
        return None

    def _wait_waitables(self, task, event):
        """Queue ``task`` on every fd of a user WaitableEvent."""
        try:
            rlist, wlist, xlist = event.waitables()
            pairs = [(obj, READ) for obj in rlist]
            pairs += [(obj, WRITE) for obj in wlist]
            pairs += [(obj, READ) for obj in xlist]
        except Exception as error:
            return error
        if not pairs:
            return ValueError("%r has no waitables, so it could never fire" % (event,))
        task.wait = event
        task.wait_fds = []
        task.state = _S_IO
        self._fd_waiters += 1
        try:
            for obj, mask in pairs:
                state = self._fd_state(obj, _fileno(obj))
                task.wait_fds.append((state, mask))
                self._enqueue(task, state, mask)
        except Exception as error:  # a bad or closed fd: raised at the yield
            self._cancel_wait(task)
            return error
        return None

    def _unwait_fds(self, task):
        """Take ``task`` out of every fd queue it is in."""
        if task.wait_fds is None:
            event = task.wait
            pairs = [(self._fds.get(event._fileno), event._mask)]
        else:
            pairs = task.wait_fds
        for state, mask in pairs:
            if state is not None:
                queue = state.readers if mask == READ else state.writers
                try:
                    queue.remove(task)
                except ValueError:
                    pass

    def _queue_after_poll(self):
        """Queue the tasks in _S_TRY for the pass after this poll."""
        tasks = self._after_poll
        if tasks:
            self._after_poll = []
            for task in tasks:
                if task.state == _S_TRY:  # not cancelled meanwhile
                    self._schedule(task, task.value, task.exc)

    def _poll(self, timeout):
        """Wait up to ``timeout`` seconds (-1: no limit) and serve ready fds."""
        if timeout == 0.0 and not self._fd_waiters and not self._external:
            # Busy coroutines and nobody on an fd: a syscall would find nothing.
            return
        if self._wants & _H_BEFORE_POLL:
            self._hooks.before_poll(timeout)
        ready = self._poller.poll(timeout)
        if self._wants & _H_AFTER_POLL:
            self._hooks.after_poll(len(ready))
        for fd, mask in ready:
            self._wake_fd(fd, mask)

    def _wake_fd(self, fd, mask):
        """The poller says ``fd`` is ready: serve one waiter per direction."""
        if fd == self._waker_fd:
            self._drain_inbox()
            return
        state = self._fds.get(fd)
        if state is None:
            return
        wanted = state.interest
        if mask & (READ | _ERRORS):
            wanted = self._report(state, READ, state.readers, wanted)
        if mask & (WRITE | _ERRORS):
            wanted = self._report(state, WRITE, state.writers, wanted)
        # Interest is dropped only now, after two reports nobody waited for:
        # a task that waits again soon finds its fd still registered.
        if wanted != state.interest and state is self._fds.get(fd):
            self._poller.set_interest(state, wanted)

    def _report(self, state, bit, queue, wanted):
        """One direction of a readiness report: serve the first waiter, or
        remember it; return the interest to keep."""
        if queue:
            state.ready &= ~bit
            task = queue.popleft()
            if bit == WRITE:
                state.writer = task
            self._io_ready(task)
        elif state.ready & bit:
            wanted &= ~bit
        else:
            # Remembered: the next waiter tries its operation at once, which
            # in request/response is the common case (the reply raced ahead).
            state.ready |= bit
        return wanted

    def _io_ready(self, task):
        """One of ``task``'s fds is ready: it runs on the next pass, doing
        its I/O (or ``fire()``) at its turn, first in line should that
        block."""
        event = task.wait
        if task.wait_fds is not None:
            self._unwait_fds(task)
        self._fd_waiters -= 1
        task.wait = task.wait_fds = None
        task.pending = event
        task.front = True
        self._schedule(task, None, None)

    def _close_fd(self, fd):
        """``fd`` is about to close: forget it, fail the tasks waiting on it."""
        state = self._fds.pop(fd, None)
        if state is None:
            return
        _unshare_fd(fd, self)
        self._poller.forget(state)
        waiters = list(state.readers) + list(state.writers)
        state.readers.clear()
        state.writers.clear()
        for task in waiters:
            if task.state == _S_IO:
                self._cancel_wait(task)
                self._schedule(task, None, SocketClosedError(
                    "fd %d was closed while this coroutine waited on it" % fd))

    # -- timers -------------------------------------------------------------

    def _add_timer(self, target, deadline):
        """Wake ``target`` (a sleeping _Task or a _Scope) at ``deadline``."""
        self._timer_seq += 1
        target.timer_seq = self._timer_seq
        heapq.heappush(self._timers, (deadline, self._timer_seq, target))

    def _drop_timer(self, target):
        if target.timer_seq:
            target.timer_seq = 0
            self._stale_timers += 1

    def _has_timers(self):
        """Whether a live sleeper exists (cancelled entries do not count)."""
        return len(self._timers) > self._stale_timers

    def _next_deadline(self):
        """The earliest live deadline; cancelled entries on top are dropped,
        and all of them are once they are the majority."""
        timers = self._timers
        while timers[0][2].timer_seq != timers[0][1]:
            heapq.heappop(timers)
            self._stale_timers -= 1
        if self._stale_timers > _STALE_TIMER_FLOOR and self._stale_timers * 2 > len(timers):
            timers[:] = [entry for entry in timers if entry[2].timer_seq == entry[1]]
            heapq.heapify(timers)
            self._stale_timers = 0
        return timers[0][0]

    def _expire_timers(self, now):
        """Wake every sleeper whose deadline is not after ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, seq, target = heapq.heappop(timers)
            if target.timer_seq == seq:
                target.timer_seq = 0
                if type(target) is _Task:
                    self._schedule(target, None, None)
                else:
                    self._expire_scope(target)
            else:
                self._stale_timers -= 1

    # -- scopes: deadlines, shields, cancellation -------------------------------

    def _enter_scope(self, task, event, held):
        """Open the scope of ``event`` (a _TimeoutEvent) at the chain's depth;
        ``held``: a block's, which stays open until the block is left."""
        scope = _Scope(task, len(task.stack) if task.stack else 0, event.seconds,
                       math.inf, event.mode, held)
        if task.scopes is None:
            task.scopes = []
        task.scopes.append(scope)
        if event.mode == _M_SHIELD:
            task.expired = self._is_due(task)  # what was due is held off now
        else:
            # Only a deadline reads the clock: entering a shield does not.
            scope.deadline = self._now() + event.seconds
            self._add_timer(scope, scope.deadline)
        return scope

    def _leave_scopes(self, task, exc):
        """Close the scopes whose body has ended: the chain is back at (or
        above) the depth that entered them. Returns the one whose own
        cancellation ``exc`` is, if any: it is caught there."""
        depth = len(task.stack) if task.stack else 0
        if not _closes_at(task.scopes[-1], depth):
            return None
        caught = None
        if isinstance(exc, Cancelled):
            canceller = self._canceller(task)
            if type(canceller) is _Scope and _closes_at(canceller, depth):
                caught = canceller
        self._drop_scopes(task, depth)
        task.expired = self._is_due(task)
        if not task.expired:
            task.swallows = 0
        return caught

    def _drop_scopes(self, task, depth):
        """Forget the scopes that end at ``depth`` (see _closes_at), and their timers."""
        scopes = task.scopes
        while scopes and _closes_at(scopes[-1], depth):
            self._drop_timer(scopes.pop())
        if not scopes:
            task.scopes = None

    def _leave_block(self, task, edge):
        """Close the scope of the block ``edge`` leaves; return ``(value,
        exc)`` for ``__aexit__``: its own cancellation going out is caught
        there (swallowed, or a Timeout instead)."""
        block = edge.block
        scope, block._scope = block._scope, None
        if scope is None or task.scopes is None or scope not in task.scopes:
            # Never entered, or dropped by a kill that went through the block.
            return False, None
        caught = isinstance(edge.exc, Cancelled) and self._canceller(task) is scope
        task.scopes.remove(scope)
        self._drop_timer(scope)
        if not task.scopes:
            task.scopes = None
        task.expired = self._is_due(task)
        if not task.expired:
            task.swallows = 0
        block.cancelled_caught = caught
        if caught and block.mode == _M_FAIL:
            return None, Timeout("timed out after %g s" % block.seconds)
        return caught, None

    def _expire_scope(self, scope):
        """A deadline passed: cancel its task now if it waits and no shield
        hides the scope; otherwise at its next scheduling point."""
        scope.expired = True
        task = scope.task
        task.expired = self._is_due(task)
        if task.expired and task.state >= _S_IO:
            self._cancel_wait(task)
            self._schedule(task, None, self._due_error(task))

    def _canceller(self, task):
        """What cancels ``task`` where its chain is now: the outermost expired
        scope no shield hides, or the task itself if it was killed and no
        shield holds the kill off; None if nothing does."""
        found = None
        if task.scopes is not None:
            for scope in reversed(task.scopes):
                if scope.expired:
                    found = scope
                elif scope.mode == _M_SHIELD:
                    return found
        return task if task.killed else found

    def _shielded(self, task):
        return task.scopes is not None and any(
            scope.mode == _M_SHIELD for scope in task.scopes)

    def _is_due(self, task):
        """Whether an exception waits for ``task``'s next scheduling point: a
        cancellation or, for the root, a deferred interrupt."""
        if task is self._root and self._deferred is not None:
            return True
        return self._canceller(task) is not None

    def _due_error(self, task):
        """The exception due at ``task``'s scheduling point: a deferred
        interrupt before a cancellation."""
        if task is self._root and self._deferred is not None:
            exc, self._deferred = self._deferred, None
            task.expired = self._is_due(task)
            return exc
        canceller = self._canceller(task)
        if canceller is task:
            return Cancelled()
        return Cancelled("the deadline of a %g s scope passed" % canceller.seconds)

    def _raise_due(self, task):
        """``task`` yielded a scheduling point with an exception due. It is
        raised there at its next turn, through the scheduler, so the others
        run meanwhile; a task that keeps swallowing it is closed instead
        (and reported, as a task that swallows a kill is)."""
        task.swallows += 1
        if task.swallows > _MAX_SWALLOWS:
            self._kill(task, True)
        else:
            self._schedule(task, None, self._due_error(task))

    # -- parked tasks and threads -------------------------------------------

    def _unpark(self, task, value, exc):
        if task.loop is not self:
            raise RuntimeError(
                "WaitQueue.wake(): its waiter runs in another thread's loop; coroutines "
                "of different threads hand values over with a Completion (set_result "
                "from any thread), not with bluelet's locks, queues or flags")
        if task.wait._external:
            self._external -= 1
        task.wait = None
        self._schedule(task, value, exc)

    def _expect_external(self):
        """A wake-up from outside is due: keep the loop alive, its waker open."""
        self._wakeup_fd()
        self._external += 1

    def _closed_elsewhere(self, fd, identity):
        """Another thread closes (or has closed) ``fd``, whose file was
        ``identity``: fail this loop's waiters on it, unless the number
        already names another file (then the close is not this loop's)."""
        try:
            info = os.fstat(fd)
        except OSError:
            pass  # closed and not reused: it was that file
        else:
            if (info.st_dev, info.st_ino) != identity:
                return
        self._close_fd(fd)

    def _wakeup_fd(self):
        """The fd of the socket whose write wakes this loop (made as its run
        begins)."""
        if self._waker is None:
            # A socket pair, not a pipe: Windows can poll only sockets, and
            # signal.set_wakeup_fd takes only a socket there.
            self._waker = socket.socketpair()
            for end in self._waker:
                end.setblocking(False)
            self._waker_fd = self._waker[0].fileno()
            self._poller.set_interest(_FdState(self._waker_fd, None), READ)
        return self._waker[1].fileno()

    def _tasks_info(self):
        now = self._now()
        return [_task_info(task, now) for task in self._tasks.values()]

    def interrupt(self, exc):
        """Stop the run the way Ctrl-C does; safe from signal handlers and threads.

        At its next pass the loop raises ``exc`` in the root's innermost
        coroutine, at its ``yield``; if what the root waited for has just
        completed (a connection accepted, bytes read), the root takes that
        result first and gets ``exc`` at its next scheduling point, so no
        result is lost (if the root has ended, ``run()`` raises ``exc``). The
        other coroutines go on until the root ends, so a root that catches
        it can wind them down; whatever is still alive then is closed, as
        at any end of ``run()``. Nothing is raised here, so the scheduler's
        own bookkeeping is never interrupted.
        """
        self._interrupts.append(exc)
        self._wake()

    # The loop calls the hooks object's methods named as bluelet.Instrument's
    # (task_spawned, task_scheduled, before_step, after_step, task_exited,
    # before_poll, after_poll), which must not raise; only those its
    # ``wanted`` names, if it has that attribute, so no TaskInfo is made for
    # the others. ``wanted`` is read when the hooks are set: set them again
    # when it changes. Loop thread only. (One line of docstring: the compiled
    # twin's property keeps its own, which 3.13 would not dedent as it does
    # the pure twin's.)
    @property
    def hooks(self):
        """None, or the object told of this loop's events (see bluelet.Instrument)."""
        return self._hooks

    @hooks.setter
    def hooks(self, hooks):
        self._hooks = hooks
        self._wants = _wanted(hooks)
        self._plain = not self._wants & (_H_BEFORE_STEP | _H_AFTER_STEP) and self._slow_step is None

    def call_soon_threadsafe(self, func):
        """From any thread: call ``func()`` in this loop's thread, soon.

        Calls run in the order they were made, when the loop next polls,
        with no coroutine running; ``func`` must not raise (what it raises
        ends the run). Raises RuntimeError once the run has ended, or if
        its run has not begun. A call accepted is always made, at the latest
        while the run ends, after its coroutines are closed.
        """
        with self._waker_lock:
            if self._calls is None:
                raise RunFinishedError("the bluelet run has ended")
            if self._waker is None:
                raise RuntimeError("the loop's run has not begun")
            self._calls.append(func)
        self._wake()

    def spawn(self, coro):
        """Start ``coro`` as a new coroutine of this run, from the loop's
        thread but outside any coroutine (from a ``call_soon_threadsafe``
        call, say). It runs at the next pass. Raises RuntimeError once the
        run is ending, and what ``yield spawn(coro)`` would for a bad
        ``coro``."""
        if self._calls is None or self._root is None:
            raise RunFinishedError("the bluelet run has ended")
        error = self._check_new(coro, "spawn")
        if error is not None:
            raise error
        self._add_task(coro)
        if self._current is None:
            # Between passes: nothing would queue it before the next poll.
            self._queue_spawned()

    def _post(self, completion):
        """Called from any thread: queue ``completion`` and wake the loop."""
        self._inbox.append(completion)
        self._wake()

    def _wake(self):
        # Reentrant: a signal handler may call this while the same thread is
        # inside it.
        with self._waker_lock:
            if self._waker is not None:
                try:
                    self._waker[1].send(b"\0")
                except BlockingIOError:
                    pass  # the buffer is full: a wake-up is pending anyway

    def _drain_inbox(self):
        try:
            while self._waker[0].recv(4096):
                pass
        except BlockingIOError:
            pass
        # A signal's byte may be what woke the poll. Its Python handler
        # (Loop.interrupt) runs at the next bytecode, which this twin always
        # reaches before it polls again; the compiled twin runs it here.
        while self._inbox:
            completion = self._inbox.popleft()
            self._external -= 1
            completion._done = True
            task = completion._task
            if task is not None:
                completion._task = None
                task.wait = None
                self._schedule(task, completion._value, completion._exc)
        calls = self._calls
        while calls:
            calls.popleft()()


_KINDS = {cls: cls._kind for cls in (
    ValueEvent, ReadEvent, WriteEvent, AcceptEvent, ReceiveEvent, SendEvent,
    _FdEvent, SleepEvent, DelegationEvent, ReturnEvent, SpawnEvent, JoinEvent,
    KillEvent, ExceptionEvent, _TimeoutEvent, WaitQueue, Completion, _LaterEvent, _ScopeEdge)}
_KINDS[_GeneratorType] = _K_CALL
_KINDS[_CoroutineType] = _K_CALL
_kind_of = _KINDS.get


def _kind_slow(event):
    """The kind of an object that is not one of the core's own classes."""
    if isinstance(event, Event):
        return event._kind
    return None


def _behind(state, mask):
    """Whether an operation in ``mask``'s direction must wait its turn: behind
    those already waiting, and, for a write, behind a woken writer that has
    not had its turn (it may be in the middle of a sendall)."""
    if mask == READ:
        return len(state.readers) != 0
    return len(state.writers) != 0 or (state.writer is not None and state.writer.front)


def _cancel_one(gen, exc, hold):
    """Throw ``exc`` (Cancelled, or an error from a callee's clean-up) into
    ``gen``; return ``(what came out, None)``, with None if ``gen``
    swallowed it, or, with ``hold``, ``(None, event)`` when ``gen`` yields a
    shield() event."""
    for _ in range(_MAX_SWALLOWS):
        try:
            event = gen.throw(exc)
        except StopIteration:
            return None, None
        except BaseException as raised:
            return raised, None
        if _debug:
            _used(event)  # yielded, if refused
        if hold and _is_shield_entry(event):
            return None, event
        # It yielded (a clean-up step in a finally block): outside a shield
        # that step cannot wait during a kill, so Cancelled is raised at it too.
        exc = Cancelled()
    try:
        gen.close()
    except BaseException:
        pass
    return None, None


def _is_shield_entry(event):
    """Whether ``event`` enters a shield: a shield() with a body, or the
    start of an ``async with shield():`` block."""
    if type(event) is _ScopeEdge:
        return not event.leaving and event.block.mode == _M_SHIELD
    return type(event) is _TimeoutEvent and event.mode == _M_SHIELD


def _closes_at(scope, depth):
    """Whether ``scope`` ends once the chain is at ``depth``: it was entered
    deeper, or at that depth for a body (which has ended, as the generator
    that yielded it runs again); a block's stays open until it is left."""
    return scope.depth > depth or (scope.depth == depth and not scope.held)


def _running_loop():
    loop = getattr(_local, "loop", None)
    if loop is None:
        raise RuntimeError("this needs a running bluelet loop (call it inside a coroutine)")
    return loop


def _task_info(task, now):
    """A TaskInfo for ``task``: its state in words."""
    state = task.state
    if state == _S_DONE:
        return TaskInfo(task.base, "done", "ended", [])
    chain = list(task.stack or ()) + [task.gen]
    if state == _S_READY:
        return TaskInfo(task.base, "ready", "ready to run", chain)
    if state == _S_RUNNING:
        return TaskInfo(task.base, "running", "running now", chain)
    if state == _S_TRY:
        pending = task.pending
        if pending is None:
            return TaskInfo(task.base, "ready", "ready to run after the next poll", chain)
        if isinstance(pending, _FdEvent):
            return TaskInfo(task.base, "io", "about to try I/O on fd %d" % pending._fileno, chain)
        return TaskInfo(task.base, "io", "about to fire %r" % (pending,), chain)
    if state == _S_IO:
        if task.wait_fds is not None:
            return TaskInfo(task.base, "io", "waiting for %r (fds %s)" % (
                task.wait, ", ".join(str(pair[0].fd) for pair in task.wait_fds)), chain)
        return TaskInfo(task.base, "io", "waiting for fd %d to be %s" % (
            task.wait._fileno, "readable" if task.wait._mask == READ else "writable"), chain)
    if state == _S_SLEEP:
        return TaskInfo(task.base, "sleeping", "sleeping until %.3f (%.3f s from now)" % (
            task.wait, task.wait - now), chain)
    if state == _S_JOIN:
        return TaskInfo(task.base, "joining", "joining %r" % (task.wait.base,), chain)
    if state == _S_PARK:
        return TaskInfo(task.base, "parked", "parked in %r" % (task.wait,), chain)
    return TaskInfo(task.base, "thread", "waiting for a result from another thread", chain)


def _wanted(hooks):
    """The _H_* bits of the hooks that ``hooks`` wants called."""
    if hooks is None:
        return 0
    wanted = getattr(hooks, "wanted", _HOOK_NAMES)
    return sum(1 << bit for bit, name in enumerate(_HOOK_NAMES) if name in wanted)


def _ends_coroutine(event, exc):
    """Whether ``exc``, raised by ``event``'s I/O, ends the coroutine instead
    (a connection with ``_ends_on_error``, as bluelet.compat makes: 0.2.0
    ended it with ``end(None)``, printing the traceback unless the peer had
    gone: EPIPE, ECONNRESET)."""
    conn = getattr(event, "conn", None)
    if not (isinstance(exc, OSError) and getattr(conn, "_ends_on_error", False)):
        return False
    if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
        log.error("%r failed; as in bluelet 0.2.0, the coroutine ends and its caller gets None",
                  event, exc_info=exc)
    return True


_place = operator.attrgetter("pos")
_copy_context = contextvars.copy_context
_SCOPE_VERBS = ("timeout", "move_on_after", "shield")
_length_hint = operator.length_hint
_NO_TASKS = iter(())


def _check_finished(gen, verb):
    """The error for join/kill of a generator the loop does not run, if any."""
    error = _generator_error(gen, verb)
    if error is None and _frame(gen) is not None:
        error = ValueError("%s(): %r was never spawned" % (verb, gen))
    return error


# ---------------------------------------------------------------------------
# Module-level entry points
# ---------------------------------------------------------------------------

def run(root_coro, *, virtual_time=False, slow_step=None, debug=None, schedule_seed=None):
    """Run coroutine ``root_coro`` and everything it spawns to completion.

    Returns the root's result. If a coroutine raises and nobody called it,
    the other coroutines are closed and the exception propagates from here.
    ``virtual_time``, ``slow_step``, ``debug`` and ``schedule_seed`` are as
    for ``Loop``.
    """
    return Loop(virtual_time, slow_step, debug, schedule_seed).run(root_coro)


# The running loops that have each descriptor registered, so that closing it
# in one thread reaches the waiters of another thread's loop: the kernel
# drops a closed descriptor from every epoll set, and their waiters would
# otherwise wait forever. Changed when a loop first registers a descriptor
# and when it forgets it, never per event.
_fd_loops = {}
_fd_loops_lock = threading.Lock()


def _share_fd(fd, loop):
    with _fd_loops_lock:
        _fd_loops.setdefault(fd, []).append(loop)


def _unshare_fd(fd, loop):
    with _fd_loops_lock:
        loops = _fd_loops.get(fd)
        if loops is not None:
            try:
                loops.remove(loop)
            except ValueError:
                pass
            if not loops:
                del _fd_loops[fd]


def notify_closing(fileobj):
    """Tell the loops ``fileobj`` (or fd) is about to be closed.

    Coroutines waiting on it get SocketClosedError at their ``yield``: in
    the running loop at once, in other threads' loops at their next turn.
    Call it before closing; from any thread.
    """
    fd = _fileno(fileobj)
    loop = getattr(_local, "loop", None)
    if loop is not None:
        loop._close_fd(fd)
    with _fd_loops_lock:
        others = [other for other in _fd_loops.get(fd, ()) if other is not loop]
    if not others:
        return
    try:
        info = os.fstat(fd)
    except OSError:
        return  # already closed: nothing to tell apart
    identity = (info.st_dev, info.st_ino)
    for other in others:
        try:
            other.call_soon_threadsafe(functools.partial(other._closed_elsewhere, fd, identity))
        except RuntimeError:
            pass  # its run has ended


def tasks():
    """A TaskInfo for every live coroutine of the running loop."""
    return _running_loop()._tasks_info()


def wakeup_fd():
    """The fd whose write wakes the running loop (for signal.set_wakeup_fd)."""
    return _running_loop()._wakeup_fd()


def running_loop():
    """The Loop running in this thread (RuntimeError outside one)."""
    return _running_loop()


def iscoroutine(obj):
    """Whether ``obj`` is what bluelet runs: a generator, or the coroutine
    of an ``async def``."""
    return type(obj) in _COROUTINE_TYPES


def _advance_clock(seconds):
    """Virtual time only: move the running loop's clock ``seconds`` forward;
    the timers due by then fire at its next poll."""
    loop = _running_loop()
    if not loop._virtual_time:
        raise RuntimeError("only a virtual clock can be moved (run with virtual_time=True)")
    loop._clock += _seconds(seconds)


def _set_debug(on):
    """Turn debug mode on or off, for the process; returns whether it was on."""
    global _debug
    previous, _debug = _debug, bool(on)
    if _debug and "__new__" not in vars(Event):
        Event.__new__ = staticmethod(_debug_new)
    return previous
