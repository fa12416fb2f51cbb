# cython: language_level=3, binding=True, boundscheck=False, wraparound=False, cdivision=True
# cython: freethreading_compatible=True
"""The scheduler core, compiled twin of ``_loop_py.py``.

What the core owns, how a coroutine runs and the invariants are described
in ``_loop_py.py``'s header; this file implements the same design with the
same names, in the same order, with the same comments. Docstrings live on
the pure twin and are copied onto these functions at import.

What differs, and why
    - Events are ``cdef class``es carrying their kind in a C field, so the
      dispatch in ``_step`` is a switch on an int, with ``null()`` a
      pointer compare against a shared singleton.
    - Generators are resumed with ``PyIter_Send`` (a C call that returns the
      generator's result without raising StopIteration).
    - Sleepers live in a binary heap of C structs; the clock is read with
      ``clock_gettime(CLOCK_MONOTONIC)``, the clock of ``time.monotonic``.
    - On Linux the poller calls epoll directly, with the GIL released while
      it waits; elsewhere it is the same ``selectors`` poller as the twin.
    - Task records are left out of the cyclic garbage collector (see _Task).
    - A step enters its task's contextvars context with PyContext_Enter/Exit
      (the twin calls Context.run), which costs no Python call per step.
    - On plain sockets, ReceiveEvent and SendEvent call recv()/send() from C
      instead of the socket's methods (same results, same exceptions).

Twin rule
    ``_loop_py.py`` has the same names, in the same order, with the same
    comments. Change both in one commit.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.contextvars cimport PyContext_CopyCurrent, PyContext_Enter, PyContext_Exit
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF, Py_XDECREF
from libc.stdlib cimport malloc, realloc, free
from libc.math cimport isnan, ceil, INFINITY
from libc.errno cimport errno, EINTR

import collections
import errno as errno_module
import functools
import logging
import numbers
import operator
import selectors
import socket
import threading
import os
import time
import weakref

from ._coroutines import FREE_THREADED as _free_threaded
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

cdef extern from *:
    """
    #if defined(__linux__)
    #include <sys/epoll.h>
    #include <unistd.h>
    #define BLUELET_HAVE_EPOLL 1
    #define bluelet_epoll_close close
    #else
    #include <errno.h>
    #include <stdint.h>
    #define BLUELET_HAVE_EPOLL 0
    typedef union epoll_data { int fd; } epoll_data_t;
    struct epoll_event { uint32_t events; epoll_data_t data; };
    #define EPOLL_CLOEXEC 0
    #define EPOLL_CTL_ADD 1
    #define EPOLL_CTL_DEL 2
    #define EPOLL_CTL_MOD 3
    static int epoll_create1(int flags) { errno = ENOSYS; return -1; }
    static int epoll_ctl(int e, int op, int fd, struct epoll_event *ev) { errno = ENOSYS; return -1; }
    static int epoll_wait(int e, struct epoll_event *evs, int n, int t) { errno = ENOSYS; return -1; }
    /* Never reached (there is no epoll fd to close); keeps POSIX close()
       out of builds where the C library may lack it (MSVC has _close). */
    static int bluelet_epoll_close(int e) { errno = ENOSYS; return -1; }
    #endif

    #include <time.h>
    /* CLOCK_MONOTONIC is what time.monotonic() reads on Linux and the BSDs;
       -1.0 tells the caller to ask Python instead (Windows, macOS). */
    static double bluelet_monotonic(void) {
    #if defined(__linux__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__)
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0)
            return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    #endif
        return -1.0;
    }

    /* Socket I/O straight from C for plain sockets, saving the method call
       and argument parsing of sock.recv/sock.send; errors are the same
       OSError subclasses Python raises (from errno). Not on Windows. */
    #if defined(_WIN32)
    #define BLUELET_HAVE_SOCKIO 0
    static PyObject *bluelet_sock_recv(int fd, Py_ssize_t n, PyObject *would_block) {
        PyErr_SetString(PyExc_NotImplementedError, "direct socket I/O");
        return NULL;
    }
    static Py_ssize_t bluelet_sock_send(int fd, const char *data, Py_ssize_t n) {
        PyErr_SetString(PyExc_NotImplementedError, "direct socket I/O");
        return -1;
    }
    #else
    #include <sys/socket.h>
    #define BLUELET_HAVE_SOCKIO 1
    /* recv() up to n bytes: new bytes, would_block (a new reference), or
       NULL with OSError set. */
    static PyObject *bluelet_sock_recv(int fd, Py_ssize_t n, PyObject *would_block) {
        Py_ssize_t got;
        PyObject *buf = PyBytes_FromStringAndSize(NULL, n);
        if (buf == NULL)
            return NULL;
        do {
            got = recv(fd, PyBytes_AS_STRING(buf), (size_t)n, 0);
        } while (got < 0 && errno == EINTR);
        if (got < 0) {
            Py_DECREF(buf);
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                Py_INCREF(would_block);
                return would_block;
            }
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (got != n && _PyBytes_Resize(&buf, got) < 0)
            return NULL;
        return buf;
    }
    /* send() data[0:n]: the count sent, -2 if it would block, or -1 with
       OSError set. */
    static Py_ssize_t bluelet_sock_send(int fd, const char *data, Py_ssize_t n) {
        Py_ssize_t sent;
        do {
            sent = send(fd, data, (size_t)n, 0);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return -2;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        return sent;
    }
    #endif

    /* PyIter_Send: 1 and a yielded value, 0 and a returned value, or -1 with
       an exception set. Python 3.9 lacks it; its private equivalent serves. */
    static int bluelet_send(PyObject *gen, PyObject *arg, PyObject **result) {
    #if PY_VERSION_HEX >= 0x030A0000
        PySendResult r = PyIter_Send(gen, arg, result);
        return r == PYGEN_NEXT ? 1 : (r == PYGEN_RETURN ? 0 : -1);
    #else
        /* Every coroutine the core resumes is a plain generator or a native
           coroutine (spawn, call and timeout check), which share the layout
           _PyGen_Send takes. */
        *result = _PyGen_Send((PyGenObject *)gen, arg);
        if (*result != NULL)
            return 1;
        if (_PyGen_FetchStopIterationValue(result) == 0)
            return 0;
        *result = NULL;
        return -1;
    #endif
    }

    /* What the core runs: a generator, or a native (async def) coroutine. */
    static int bluelet_is_coroutine(PyObject *obj) {
        return PyGen_CheckExact(obj) || PyCoro_CheckExact(obj);
    }
    """
    int BLUELET_HAVE_EPOLL
    ctypedef union epoll_data_t:
        int fd
    struct epoll_event:
        unsigned int events
        epoll_data_t data
    int EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout) nogil
    double bluelet_monotonic()
    int BLUELET_HAVE_SOCKIO
    object bluelet_sock_recv(int fd, Py_ssize_t n, object would_block)
    Py_ssize_t bluelet_sock_send(int fd, const char *data, Py_ssize_t n) except -1
    int bluelet_send(object gen, object arg, PyObject **result) except -1
    bint bluelet_is_coroutine(object obj)
    int bluelet_epoll_close(int epfd)

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

# Event kinds: the core dispatches on these instead of isinstance chains.
cdef enum:
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
cdef inline bint _is_scheduling_point(int kind) noexcept:
    return (kind == _K_VALUE or kind == _K_IO or kind == _K_SLEEP or kind == _K_JOIN
            or kind == _K_WAITABLE or kind == _K_PARK or kind == _K_EXTERNAL
            or kind == _K_LATER)


cdef inline int _event_kind(event) except? -2:
    # The kind of what a coroutine yielded; -1 for what is no event.
    if isinstance(event, Event):
        return (<Event>event)._kind
    if bluelet_is_coroutine(event):
        return _K_CALL
    return -1


# Kinds 0.2.0 handles on the pass after the one that yielded them (a
# timeout() is a call with a deadline, so it goes with them).
cdef inline bint _is_next_pass(int kind) noexcept:
    return (kind == _K_CALL or kind == _K_RETURN or kind == _K_SPAWN or kind == _K_KILL
            or kind == _K_TIMEOUT)


# Task states; from _S_IO up, the task waits for something.
cdef enum:
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
cdef enum:
    _READ = 0x001
    _WRITE = 0x004
    _ERRORS = 0x018   # EPOLLERR | EPOLLHUP: wake both directions, the I/O reports it

# A sendall or write that made progress but must wait for more room.
cdef object _WOULD_BLOCK = object()

# Errors that end only the coroutine they escape from (not the root), as in 0.2.0.
cdef tuple _QUIET = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

# The largest value a descriptor can have (a C int).
cdef long long _MAX_FD = 0x7fffffff

# Heap entries of cancelled sleepers are left in place; rebuild when they are
# the majority, so a program that keeps cancelling timers stays bounded.
cdef Py_ssize_t _STALE_TIMER_FLOOR = 64

# Poll at least this often (seconds): pollers overflow on sleep(inf).
cdef double _MAX_TIMEOUT = 86400.0

# Passes run before I/O is polled (without waiting) even though tasks are
# still ready. 0.2.0 has no bound, so a coroutine yielding null() in a loop
# starved every socket and timer; real 0.2.0 programs settle within a few
# passes, so this bound changes no order they rely on.
cdef Py_ssize_t _MAX_PASSES = 256

# What a scope does when its deadline passes: fail_after() raises Timeout
# where it returns, move_on_after() gives None there; shield() has no
# deadline and hides every cancellation from outside it.
cdef enum:
    _M_FAIL = 0
    _M_MOVE_ON = 1
    _M_SHIELD = 2

# The hooks a Loop's ``hooks`` object may have, and the bits of _wants that
# say which it is called at (Instrument's methods, in this order).
cdef tuple _HOOK_NAMES = ("task_spawned", "task_scheduled", "before_step", "after_step",
                          "task_exited", "before_poll", "after_poll")
cdef enum:
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
cdef int _MAX_SWALLOWS = 100

# Debug mode (bluelet._debug): events made while it is on are held in
# _unyielded (id -> (event, where it was made)) until they are yielded; the
# loop reports those that nothing else holds any more. Off, an event costs
# one test of _debug when made.
cdef bint _debug = False
cdef dict _unyielded = {}

# Whether this interpreter was built without the GIL (3.13t, 3.14t).
cdef bint _FREE_THREADED = _free_threaded

# A Completion is claimed for delivery under this lock: two threads
# delivering at once must not both get through (one raises instead).
cdef object _delivery_lock = threading.Lock()

_python_monotonic = time.monotonic


cdef inline double _monotonic() except? -1.0:
    cdef double now = bluelet_monotonic()
    if now < 0:
        now = _python_monotonic()
    return now


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------

cdef class Event:
    """Twin of ``bluelet._loop_py.Event``."""

    cdef int _kind
    cdef bint _armed         # await or yield from began: the next __next__ hands it over

    def __cinit__(self):
        self._kind = _K_NONE
        if _debug:
            _track(self)

    def __init__(self):
        # Like the pure twin's object.__init__: arguments are an error.
        pass

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
        if self._armed:
            self._armed = False
            return self
        raise StopIteration

    def send(self, value):
        raise StopIteration(value)

    @classmethod
    def __class_getitem__(cls, item):
        return cls


cdef int _track(Event event) except -1:
    site = creation_site()
    if site is not None:
        with _table_lock:
            _unyielded[id(event)] = (event, site)
    return 0


cdef int _used(Event event) except -1:
    # Debug mode: yielded (or entered, for a scope block): nothing to report;
    # nor for the event a scope runs, which the scope's yield hands over.
    if _unyielded:
        with _table_lock:
            _unyielded.pop(id(event), None)
            if type(event) is _TimeoutEvent and isinstance((<_TimeoutEvent>event).body, Event):
                _unyielded.pop(id((<_TimeoutEvent>event).body), None)
    return 0


def _sweep_unyielded():
    """Debug mode: report the events nothing but _unyielded holds any more."""
    for event, site in dropped(_unyielded):
        # A wait queue or a Completion lives longer than one yield, and
        # may never be waited on: only one-shot events are reported.
        if not isinstance(event, (WaitQueue, Completion)):
            never_yielded(type(event).__name__, site)


cdef class WaitableEvent(Event):
    """Twin of ``bluelet._loop_py.WaitableEvent``."""

    def __cinit__(self):
        self._kind = _K_WAITABLE

    def waitables(self):
        return (), (), ()

    def fire(self):
        return None


cdef class ValueEvent(Event):
    """Twin of ``bluelet._loop_py.ValueEvent``."""

    cdef object _value

    def __cinit__(self):
        self._kind = _K_VALUE

    def __init__(self, value):
        self._value = value

    @property
    def value(self):
        """The value the ``yield`` evaluates to (read-only: null() is shared)."""
        return self._value


cdef class ExceptionEvent(Event):
    """Twin of ``bluelet._loop_py.ExceptionEvent``."""

    cdef public object exc_info
    cdef object _exc

    def __cinit__(self):
        self._kind = _K_EXCEPTION

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


cdef class SpawnEvent(Event):
    """Twin of ``bluelet._loop_py.SpawnEvent``."""

    cdef public object spawned

    def __cinit__(self):
        self._kind = _K_SPAWN

    def __init__(self, coro):
        self.spawned = coro


cdef class JoinEvent(Event):
    """Twin of ``bluelet._loop_py.JoinEvent``."""

    cdef public object child

    def __cinit__(self):
        self._kind = _K_JOIN

    def __init__(self, child):
        self.child = child


cdef class KillEvent(Event):
    """Twin of ``bluelet._loop_py.KillEvent``."""

    cdef public object child

    def __cinit__(self):
        self._kind = _K_KILL

    def __init__(self, child):
        self.child = child


cdef class DelegationEvent(Event):
    """Twin of ``bluelet._loop_py.DelegationEvent``."""

    cdef public object spawned

    def __cinit__(self):
        self._kind = _K_CALL

    def __init__(self, coro):
        self.spawned = coro


cdef class ReturnEvent(Event):
    """Twin of ``bluelet._loop_py.ReturnEvent``."""

    cdef public object value

    def __cinit__(self):
        self._kind = _K_RETURN

    def __init__(self, value):
        self.value = value


cdef class _LaterEvent(Event):
    """Twin of ``bluelet._loop_py._LaterEvent``."""

    cdef public object func
    cdef public tuple args

    def __cinit__(self):
        self._kind = _K_LATER

    def __init__(self, func, tuple args):
        self.func = func
        self.args = args


cdef class _TimeoutEvent(Event):
    """Twin of ``bluelet._loop_py._TimeoutEvent``."""

    cdef public double seconds
    cdef public object body
    cdef public int mode
    cdef object _scope           # the active _Scope of a block
    cdef public bint cancelled_caught

    def __cinit__(self):
        self._kind = _K_TIMEOUT

    def __init__(self, seconds, body, mode):
        self.seconds = seconds
        self.body = body
        self.mode = mode

    def __aenter__(self):
        return _ScopeEdge(self, False, None)

    def __aexit__(self, exc_type, exc, traceback):
        return _ScopeEdge(self, True, exc)


@cython.final
cdef class _ScopeEdge(Event):
    """Twin of ``bluelet._loop_py._ScopeEdge``."""

    cdef _TimeoutEvent block
    cdef bint leaving
    cdef object exc

    def __cinit__(self):
        self._kind = _K_SCOPE

    def __init__(self, _TimeoutEvent block, bint leaving, exc):
        self.block = block
        self.leaving = leaving
        self.exc = exc


cdef class WaitQueue(Event):
    """Twin of ``bluelet._loop_py.WaitQueue``."""

    cdef object _waiters
    cdef bint _external

    def __cinit__(self):
        self._kind = _K_PARK
        self._waiters = collections.deque()

    def __init__(self, external=False):
        self._external = external

    def __len__(self):
        return len(self._waiters)

    def wait(self):
        return self

    def wake(self, value=None, exc=None):
        if not self._waiters:
            return False
        # Taken from the line only once unparked: a waiter of another
        # thread's loop (refused there) keeps its place.
        (<Loop>_running_loop())._unpark(self._waiters[0], value, exc)
        self._waiters.popleft()
        return True

    def wake_all(self, value=None, exc=None):
        count = len(self._waiters)
        while self._waiters:
            self.wake(value, exc)
        return count


cdef class Completion(Event):
    """Twin of ``bluelet._loop_py.Completion``."""

    cdef Loop _loop
    cdef _Task _task
    cdef bint _done          # delivered and seen by the loop thread
    cdef bint _delivered     # delivered by some thread
    cdef object _value
    cdef object _exc

    def __cinit__(self):
        self._kind = _K_EXTERNAL

    def __init__(self):
        self._loop = _running_loop()
        self._loop._expect_external()

    def set_result(self, value):
        self._deliver(value, None)

    def set_exception(self, exc):
        self._deliver(None, exc)

    cdef int _deliver(self, value, exc) except -1:
        with _delivery_lock:
            if self._delivered:
                raise RuntimeError("Completion delivered twice")
            self._delivered = True
        self._value = value
        self._exc = exc
        self._loop._post(self)
        return 0


cdef class SleepEvent(WaitableEvent):
    """Twin of ``bluelet._loop_py.SleepEvent``."""

    cdef public double wakeup_time
    cdef public double duration

    def __cinit__(self):
        self._kind = _K_SLEEP

    def __init__(self, duration):
        self.duration = _seconds(duration) if not _debug else _seconds_of(self, duration)
        self.wakeup_time = _monotonic() + self.duration

    def time_left(self):
        return max(self.wakeup_time - _monotonic(), 0.0)


cdef class _FdEvent(WaitableEvent):
    """Twin of ``bluelet._loop_py._FdEvent``."""

    cdef object _fileobj
    cdef int _fileno
    cdef int _mask
    cdef bint _try_first

    def __cinit__(self):
        self._kind = _K_IO

    cdef int _watch(self, fileobj, int mask) except -1:
        self._fileobj = fileobj
        self._fileno = _fileno(fileobj) if not _debug else _fileno_of(self, fileobj)
        self._mask = mask
        return 0

    cdef object _attempt(self):
        return None


cdef class ReadEvent(_FdEvent):
    """Twin of ``bluelet._loop_py.ReadEvent``."""

    cdef public object fd
    cdef public object bufsize
    cdef list _chunks

    def __init__(self, fd, bufsize):
        self.fd = fd
        self.bufsize = bufsize
        self._chunks = []
        self._watch(fd, _READ)

    cdef object _attempt(self):
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


cdef class WriteEvent(_FdEvent):
    """Twin of ``bluelet._loop_py.WriteEvent``."""

    cdef public object fd
    cdef public object data
    cdef object _view
    cdef Py_ssize_t _sent

    def __init__(self, fd, data):
        self.fd = fd
        self.data = data
        try:
            self._view = _byte_view(data)
        except BaseException:
            _used(self)  # debug mode: the caller gets this error, not a warning too
            raise
        self._sent = 0
        self._watch(fd, _WRITE)

    cdef object _attempt(self):
        view = self._view
        while self._sent < len(view):
            written = self.fd.write(view[self._sent:])
            if written is None:
                return _WOULD_BLOCK
            self._sent += written
        return None


cdef class AcceptEvent(_FdEvent):
    """Twin of ``bluelet._loop_py.AcceptEvent``."""

    cdef public object listener

    def __init__(self, listener):
        self.listener = listener
        self._try_first = True
        self._watch(listener.sock, _READ)

    cdef object _attempt(self):
        sock, addr = self.listener.sock.accept()
        return self.listener._accepted(sock, addr)


cdef class ReceiveEvent(_FdEvent):
    """Twin of ``bluelet._loop_py.ReceiveEvent``."""

    cdef public object conn
    cdef public object bufsize
    cdef bint _direct        # a plain socket: recv() from C

    def __init__(self, conn, bufsize):
        sock = conn.sock
        self.conn = conn
        self.bufsize = bufsize
        self._watch(sock, _READ)
        self._direct = _plain_socket(sock)

    cdef object _attempt(self):
        bufsize = self.bufsize
        sock = self.conn.sock
        if self._direct and type(bufsize) is int and bufsize >= 0 and _same_fd(sock, self._fileno):
            return bluelet_sock_recv(self._fileno, bufsize, _WOULD_BLOCK)
        return sock.recv(bufsize)


cdef class SendEvent(_FdEvent):
    """Twin of ``bluelet._loop_py.SendEvent``."""

    cdef public object conn
    cdef public object data
    cdef public bint sendall
    cdef object _view
    cdef Py_ssize_t _sent
    cdef bint _direct        # a plain socket and contiguous data: send() from C

    def __init__(self, conn, data, sendall=False):
        sock = conn.sock
        self.conn = conn
        self.data = data
        self.sendall = sendall
        self._sent = 0
        # Socket buffers usually have room: trying first saves a poll.
        self._try_first = True
        self._watch(sock, _WRITE)
        if type(data) is bytes and _plain_socket(sock):
            # The common case: sent from C straight out of the bytes object,
            # with no memoryview made.
            self._view = data
            self._direct = True
        else:
            try:
                self._view = _byte_view(data)
            except BaseException:
                _used(self)  # debug mode: the caller gets this error, not a warning too
                raise
            self._direct = _plain_socket(sock) and self._view.c_contiguous

    cdef object _attempt(self):
        sock = self.conn.sock
        if self._direct and _same_fd(sock, self._fileno):
            return self._attempt_direct()
        if not self.sendall:
            return sock.send(self._view)
        view = self._view
        while self._sent < len(view):
            self._sent += sock.send(view[self._sent:])
        return None

    cdef object _attempt_direct(self):
        cdef Py_buffer buf
        cdef Py_ssize_t sent
        PyObject_GetBuffer(self._view, &buf, PyBUF_SIMPLE)
        try:
            if not self.sendall:
                sent = bluelet_sock_send(self._fileno, <char *>buf.buf, buf.len)
                return _WOULD_BLOCK if sent == -2 else sent
            while self._sent < buf.len:
                sent = bluelet_sock_send(self._fileno, <char *>buf.buf + self._sent,
                                         buf.len - self._sent)
                if sent == -2:
                    return _WOULD_BLOCK
                self._sent += sent
            return None
        finally:
            PyBuffer_Release(&buf)


cdef inline bint _same_fd(sock, int fileno) except -1:
    # The fd the event was made for is still its socket's. An event yielded
    # after its connection closed would otherwise read or write whatever
    # socket reuses the number; through the socket's own methods it gets
    # EBADF, as in the pure twin.
    return sock.fileno() == fileno


cdef object _SocketType = socket.socket


cdef inline bint _plain_socket(sock) noexcept:
    # Exactly socket.socket: an SSL socket or a user subclass keeps its own
    # recv/send.
    return BLUELET_HAVE_SOCKIO and type(sock) is _SocketType


cdef double _seconds(duration) except? -1.0:
    cdef double seconds
    if not isinstance(duration, (int, float)) and not isinstance(duration, numbers.Real):
        raise TypeError("a duration must be a number of seconds, not %r" % (duration,))
    seconds = float(duration)
    if isnan(seconds):
        raise ValueError("a duration cannot be NaN")
    return max(seconds, 0.0)


cdef int _fileno(fileobj) except -1:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if not 0 <= fd <= _MAX_FD:
        raise ValueError("%r is not an open file descriptor (fileno %r)" % (fileobj, fd))
    return fd


# Debug mode: an event whose constructor fails is not reported as dropped
# (its caller gets the error). These two wrap the checks of the hot
# constructors, so that off they run no try block.
cdef int _fileno_of(Event event, fileobj) except -1:
    try:
        return _fileno(fileobj)
    except BaseException:
        _used(event)
        raise


cdef double _seconds_of(Event event, duration) except? -1.0:
    try:
        return _seconds(duration)
    except BaseException:
        _used(event)
        raise


cdef object _byte_view(data):
    # Validates at the call (str raises TypeError here, not at the yield)
    # and counts bytes, not items, for multi-byte buffers.
    view = memoryview(data)
    return view if view.itemsize == 1 and view.ndim == 1 else view.cast("B")


# ---------------------------------------------------------------------------
# Event constructors (the public verbs)
# ---------------------------------------------------------------------------

cdef ValueEvent _NULL = ValueEvent(None)

# What a connection with 0.2.0's error semantics turns a failed I/O into.
cdef ReturnEvent _END_NONE = ReturnEvent(None)


cdef object _generator_error(obj, verb):
    if bluelet_is_coroutine(obj):
        return None
    return TypeError("%s() needs a coroutine (a generator or an async def coroutine), not %r"
                     % (verb, obj))


cdef int _require_generator(obj, verb) except -1:
    error = _generator_error(obj, verb)
    if error is not None:
        raise error
    return 0


def null():
    return _NULL


def sleep(seconds):
    return SleepEvent(seconds)


def spawn(coro):
    _require_generator(coro, "spawn")
    return SpawnEvent(coro)


def call(coro):
    _require_generator(coro, "call")
    return DelegationEvent(coro)


def end(value=None):
    return ReturnEvent(value)


def join(coro):
    _require_generator(coro, "join")
    return JoinEvent(coro)


def kill(coro):
    _require_generator(coro, "kill")
    return KillEvent(coro)


def later(func, *args):
    return _LaterEvent(func, args)


def wait_readable(fileobj):
    cdef _FdEvent event = _FdEvent()
    event._watch(fileobj, _READ)
    return event


def wait_writable(fileobj):
    cdef _FdEvent event = _FdEvent()
    event._watch(fileobj, _WRITE)
    return event


def timeout(seconds, body=None):
    return _scope_event(seconds, body, _M_FAIL, "timeout")


def fail_after(seconds, body=None):
    return _scope_event(seconds, body, _M_FAIL, "fail_after")


def move_on_after(seconds, body=None):
    return _scope_event(seconds, body, _M_MOVE_ON, "move_on_after")


def shield(body=None):
    return _scope_event(INFINITY, body, _M_SHIELD, "shield")


cdef _TimeoutEvent _scope_event(seconds, body, int mode, str verb):
    if body is not None and not isinstance(body, Event) and not bluelet_is_coroutine(body):
        raise TypeError("%s() needs an event or a coroutine, not %r" % (verb, body))
    try:
        return _TimeoutEvent(_seconds(seconds), body, mode)
    except BaseException:
        if isinstance(body, Event):
            _used(<Event>body)  # debug mode: the caller gets this error, not a warning too
        raise


def current_deadline():
    cdef _Task task = (<Loop>_running_loop())._current
    cdef _Scope scope
    cdef double deadline = INFINITY
    if task is not None and task.scopes is not None:
        for scope in reversed(task.scopes):
            if scope.mode == _M_SHIELD:
                break
            deadline = min(deadline, scope.deadline)
    return deadline


def current_time():
    return (<Loop>_running_loop())._now()


def current():
    loop = getattr(_local, "loop", None)
    if loop is None or (<Loop>loop)._current is None:
        return None
    return (<Loop>loop)._current.base


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------

cdef class _Timed:
    """Twin of ``bluelet._loop_py._Timed``."""

    cdef unsigned long long timer_seq   # heap entry that may wake it; 0: none


# Not tracked by the cyclic GC: with 100,000 live coroutines the collector
# spent more time walking task records than the scheduler spent running them.
# Safe because no user code can reach a _Task (current() and tasks() hand out
# generators and TaskInfo), so no cycle runs through one except the core's
# own (wait queue, timeout scope, Completion), which _cancel_wait and _finish
# break; every task finishes, at the latest when run() shuts down.
@cython.final
@cython.no_gc
cdef class _Task(_Timed):
    """Twin of ``bluelet._loop_py._Task``."""

    cdef object base         # the spawned generator: the key for join/kill
    cdef object gen          # the innermost generator: the one resumed
    cdef list stack          # delegating parents, outermost first
    cdef readonly Py_ssize_t pos  # the innermost generator's place in pass order
    cdef Py_ssize_t *outer_pos  # the places of the parents in ``stack`` (C array:
    cdef Py_ssize_t outer_room  # a call then boxes no int)
    cdef object pending      # an event yielded, to be handled on the next pass
    cdef bint front          # woken first in its fd's line: if the I/O would block, back there
    cdef int state
    cdef object value        # what the next resume sends ...
    cdef object exc          # ... or throws
    cdef object result
    cdef list joiners
    cdef object wait         # the event, queue or task waited on
    cdef list wait_fds       # [(state, mask)] of a WaitableEvent's fds
    cdef list scopes         # active scopes (_Scope), outermost first
    cdef bint expired        # whether a cancellation is due at its next scheduling point
    cdef bint killed         # a kill was asked for: it lands once no shield holds it off
    cdef int swallows        # cancellations it has caught and carried on from
    cdef object context      # the contextvars.Context its steps run in
    cdef object loop         # the Loop running it: one thread's

    def __cinit__(self, gen):
        self.base = gen
        self.gen = gen
        self.state = _S_READY

    def __dealloc__(self):
        free(self.outer_pos)

    def __repr__(self):
        return "<bluelet task %s>" % (getattr(self.base, "__qualname__", self.base),)


@cython.final
cdef class _Scope(_Timed):
    """Twin of ``bluelet._loop_py._Scope``."""

    cdef _Task task
    cdef Py_ssize_t depth    # the chain depth that yielded the scope's event
    cdef double seconds
    cdef double deadline
    cdef int mode
    cdef bint expired
    cdef bint held           # an async with block's: open until the block is left

    def __cinit__(self, _Task task, Py_ssize_t depth, double seconds, double deadline, int mode,
                  bint held):
        self.task = task
        self.depth = depth
        self.seconds = seconds
        self.deadline = deadline
        self.mode = mode
        self.held = held


@cython.final
cdef class _Shuffler:
    """Twin of ``bluelet._loop_py._Shuffler``."""

    cdef unsigned long long state

    def __cinit__(self, seed):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError("schedule_seed must be an int or None, not %r" % (seed,))
        self.state = <unsigned long long>(int(seed) & _MASK64)

    cdef inline unsigned long long next(self) noexcept:
        cdef unsigned long long z
        self.state += 0x9E3779B97F4A7C15ULL
        z = self.state
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
        return z ^ (z >> 31)

    cdef int shuffle(self, list tasks) except -1:
        cdef Py_ssize_t i, j
        for i in range(len(tasks) - 1, 0, -1):
            j = <Py_ssize_t>(self.next() % <unsigned long long>(i + 1))
            tasks[i], tasks[j] = tasks[j], tasks[i]
        return 0


_MASK64 = (1 << 64) - 1


@cython.final
cdef class _FdState:
    """Twin of ``bluelet._loop_py._FdState``."""

    cdef int fd
    cdef object fileobj
    cdef int interest
    cdef int ready           # reported ready, no waiter has claimed it yet
    cdef object readers
    cdef object writers
    cdef _Task writer        # the writer woken last: first to write at its turn

    def __cinit__(self, int fd, fileobj):
        self.fd = fd
        self.fileobj = fileobj
        self.interest = 0
        self.ready = 0
        self.readers = collections.deque()
        self.writers = collections.deque()


# ---------------------------------------------------------------------------
# Pollers: set_interest(state, mask), forget(state), poll(timeout), close()
# ---------------------------------------------------------------------------

cdef enum:
    _MAX_EVENTS = 1024


cdef object _os_error():
    # The same exception Python's own calls raise: subclass and message by errno.
    return OSError(errno, os.strerror(errno))


@cython.final
cdef class _EpollPoller:
    """Twin of ``bluelet._loop_py._EpollPoller``, calling epoll from C."""

    cdef int _epfd
    cdef epoll_event _events[_MAX_EVENTS]

    def __cinit__(self):
        self._epfd = epoll_create1(EPOLL_CLOEXEC)
        if self._epfd < 0:
            raise _os_error()

    def __dealloc__(self):
        if self._epfd >= 0:
            bluelet_epoll_close(self._epfd)

    cdef int _ctl(self, int op, int fd, int mask) except -1:
        cdef epoll_event event
        event.events = mask
        event.data.fd = fd
        if epoll_ctl(self._epfd, op, fd, &event) < 0:
            raise _os_error()
        return 0

    cpdef int set_interest(self, _FdState state, int mask) except -1:
        if mask == 0:
            self.forget(state)
            return 0
        if state.interest == 0:
            try:
                self._ctl(EPOLL_CTL_ADD, state.fd, mask)
            except FileExistsError:
                # Registered through another object for the same fd.
                self._ctl(EPOLL_CTL_MOD, state.fd, mask)
        else:
            try:
                self._ctl(EPOLL_CTL_MOD, state.fd, mask)
            except FileNotFoundError:
                # The fd was closed and reused without notify_closing.
                self._ctl(EPOLL_CTL_ADD, state.fd, mask)
        state.interest = mask
        return 0

    cpdef int forget(self, _FdState state) except -1:
        cdef epoll_event event
        if state.interest:
            state.interest = 0
            epoll_ctl(self._epfd, EPOLL_CTL_DEL, state.fd, &event)
        return 0

    cdef int poll(self, double timeout) except -1:
        """Wait; the ready events are left in ``_events``; return their count."""
        cdef int n
        cdef int ms = -1 if timeout < 0 else <int>ceil(timeout * 1000.0)
        if ms != 0:
            # A signal that came while the loop ran C code still has its
            # Python handler pending (no bytecode has run since): run it
            # before sleeping, not after some later wake-up.
            PyErr_CheckSignals()
        with nogil:
            n = epoll_wait(self._epfd, self._events, _MAX_EVENTS, ms)
        if n < 0:
            if errno != EINTR:
                raise _os_error()
            # A signal: run its Python handler (KeyboardInterrupt comes out
            # here); the loop recomputes its timeout and polls again.
            PyErr_CheckSignals()
            return 0
        return n

    def fileno(self):
        return self._epfd

    cpdef int close(self) except -1:
        if self._epfd >= 0:
            bluelet_epoll_close(self._epfd)
            self._epfd = -1
        return 0


cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1


class _SelectorsPoller:
    """Twin of ``bluelet._loop_py._SelectorsPoller``."""

    def __init__(self):
        self._selector = selectors.DefaultSelector()

    def set_interest(self, _FdState state, int mask):
        if mask == 0:
            self.forget(state)
            return
        events = (selectors.EVENT_READ if mask & _READ else 0) | \
                 (selectors.EVENT_WRITE if mask & _WRITE else 0)
        if state.interest == 0:
            self._selector.register(state.fd, events)
        else:
            self._selector.modify(state.fd, events)
        state.interest = mask

    def forget(self, _FdState state):
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
            ready.append((key.fd, (_READ if events & selectors.EVENT_READ else 0) |
                          (_WRITE if events & selectors.EVENT_WRITE else 0)))
        return ready

    def fileno(self):
        # kqueue and epoll selectors have one; select and poll do not.
        fileno = getattr(self._selector, "fileno", None)
        return -1 if fileno is None else fileno()

    def close(self):
        self._selector.close()


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

# One sleeper in the C heap: ordered by deadline, then by sequence number,
# which is also how a cancelled entry is recognised (the task moved on).
cdef struct _Timer:
    double deadline
    unsigned long long seq
    PyObject *target         # a _Timed: sleeping _Task or _Scope


cdef inline bint _timer_before(_Timer *a, _Timer *b) noexcept:
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.seq < b.seq)


cdef inline bint _timer_live(_Timer *timer) noexcept:
    return (<_Timed>timer.target).timer_seq == timer.seq


@cython.final
cdef class Loop:
    """Twin of ``bluelet._loop_py.Loop``."""

    cdef list _ready            # tasks to run on the next pass
    cdef list _batch            # the pass being run (kept to reuse it)
    cdef list _spawned          # tasks spawned by the step being run
    cdef bint _unsorted         # whether _ready is out of pass order
    cdef Py_ssize_t _last_pos   # the place of the task appended last
    cdef Py_ssize_t _next_pos   # the place the next new generator takes
    cdef Py_ssize_t _rest       # tasks after the current one in its pass
    cdef Py_ssize_t _passes     # passes run since I/O was last polled
    cdef bint _end_pass         # the run failed, or an error reached a caller
    cdef bint _fire_pass        # whether the next pass is the first after a poll
    cdef list _after_poll       # tasks in _S_TRY: to run once the next poll has run
    cdef dict _tasks            # base generator -> live _Task
    cdef _Timer *_timers        # heap of (deadline, seq, task)
    cdef Py_ssize_t _timer_count
    cdef Py_ssize_t _timer_capacity
    cdef unsigned long long _timer_seq
    cdef Py_ssize_t _stale_timers
    cdef dict _fds              # fd -> _FdState
    cdef Py_ssize_t _fd_waiters  # tasks waiting in some _FdState queue
    cdef object _poller
    cdef _EpollPoller _epoll    # the poller again, typed, when it is epoll
    cdef _Task _root
    cdef _Task _current         # the task being stepped
    cdef object _failure
    cdef object _results        # finished gen -> result (weak keys)
    cdef object _inbox          # Completions delivered by threads
    cdef Py_ssize_t _external   # Completions not yet delivered
    cdef int _waker_fd          # read end of the socket pair threads write to
    cdef tuple _waker           # (read end, write end), made as the run begins
    cdef object _waker_lock     # so no thread writes to the waker once closed
    cdef object _interrupts     # exceptions from interrupt(), for the root
    cdef object _deferred       # an interrupt due at the root's next scheduling point
    cdef bint _stopping         # an interrupt reached the root: end with it
    cdef object _calls          # from call_soon_threadsafe; None once the run ends
    cdef object _hooks          # told of the loop's events (the hooks property)
    cdef int _wants             # which of them: _H_* bits
    cdef bint _plain            # no hooks, no slow_step: steps run bare
    cdef bint _virtual_time
    cdef double _clock          # the time under virtual_time
    cdef object _slow_step      # seconds; a longer step is logged
    cdef bint _debug
    cdef _Shuffler _shuffler    # the order of ready tasks under schedule_seed

    def __cinit__(self, virtual_time=False, slow_step=None, debug=None, schedule_seed=None):
        self._virtual_time = virtual_time
        self._slow_step = slow_step
        self._plain = slow_step is None
        self._debug = default_debug() if debug is None else bool(debug)
        self._shuffler = None if schedule_seed is None else _Shuffler(schedule_seed)
        self._clock = 0.0
        self._ready = []
        self._batch = []
        self._spawned = []
        self._last_pos = -1
        self._after_poll = []
        self._tasks = {}
        self._timers = NULL
        self._timer_count = 0
        self._timer_capacity = 0
        self._timer_seq = 0
        self._stale_timers = 0
        self._fds = {}
        self._fd_waiters = 0
        self._results = weakref.WeakKeyDictionary()
        self._inbox = collections.deque()
        self._external = 0
        self._waker_fd = -1
        self._waker_lock = threading.RLock()
        self._interrupts = collections.deque()
        self._calls = collections.deque()

    def __dealloc__(self):
        self._clear_timers()
        free(self._timers)

    # -- entry point --------------------------------------------------------

    def run(self, root):
        self._begin(root, "bluelet.run()")
        _local.loop = self
        debugging = _set_debug(self._debug)
        try:
            while self._round(True):
                pass
        finally:
            self._close(debugging)
        return self._outcome()

    cdef int _begin(self, root, str verb) except -1:
        _require_generator(root, "run")
        if self._root is not None:
            raise RuntimeError("a Loop runs only once")
        if getattr(_local, "loop", None) is not None:
            raise RuntimeError("%s called from inside a running loop" % verb)
        self._poller = _new_poller()
        if isinstance(self._poller, _EpollPoller):
            self._epoll = self._poller
        # Made now, in the loop's thread: another thread may have to wake it
        # (interrupt, call_soon_threadsafe, a socket closed there).
        self._wakeup_fd()
        self._root = self._add_task(root)
        self._queue_spawned()
        return 0

    cdef int _close(self, bint debugging) except -1:
        # Still the running loop while shutting down: finally blocks of the
        # coroutines being closed may wake queues or close sockets.
        try:
            self._shutdown()
        finally:
            _local.loop = None
            if self._debug:
                _sweep_unyielded()
            _set_debug(debugging)
        return 0

    cdef object _outcome(self):
        if self._deferred is not None and self._failure is None:
            # The root ended before the scheduling point it was due at.
            self._failure = self._deferred
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        return self._root.result

    cdef bint _round(self, bint blocking) except -1:
        cdef double timeout, jump
        cdef bint fire
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
        self._begin(root, "Loop.start()")

    def step(self):
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
        if self._poller is None:
            raise RuntimeError("Loop.fileno() before Loop.start()")
        return self._poller.fileno()

    def finish(self):
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

    cdef int _run_pass(self) except -1:
        cdef list batch = self._ready
        cdef list rest
        cdef _Task task
        cdef object context
        cdef Py_ssize_t i, count
        cdef bint fire = self._fire_pass
        self._fire_pass = False
        self._ready = self._batch
        self._last_pos = -1
        if self._unsorted:
            self._unsorted = False
            batch.sort(key=_place)
        if self._shuffler is not None:
            self._shuffler.shuffle(batch)
        count = len(batch)
        for i in range(count):
            task = <_Task>batch[i]
            if task.state == _S_READY:
                self._rest = count - i - 1
                # Each step runs in the task's own contextvars context.
                context = task.context
                PyContext_Enter(context)
                try:
                    if self._plain:
                        self._step(task)
                    else:
                        self._observed_step(task)
                finally:
                    PyContext_Exit(context)
                self._current = None
                if self._end_pass:
                    self._end_pass = False
                    if self._failure is not None:
                        break
                    self._cut_pass(batch[i + 1:], fire)
                    break
        self._rest = 0
        self._queue_spawned()
        del batch[:]
        self._batch = batch
        return 0

    cdef int _cut_pass(self, list rest, bint fire) except -1:
        cdef _Task task
        self._queue_spawned()
        if not rest:
            return 0
        if fire:
            for task in rest:
                if task.state == _S_READY:
                    task.state = _S_TRY
                    self._after_poll.append(task)
            return 0
        rest.extend(self._ready)
        self._ready[:] = rest
        self._unsorted = True
        return 0

    cdef inline double _now(self) except? -1.0:
        return self._clock if self._virtual_time else _monotonic()

    # -- resuming a task ----------------------------------------------------

    cdef int _step(self, _Task task) except -1:
        cdef object gen, value, exc, event, handled, child, body
        cdef _Scope caught
        cdef _Task target
        cdef PyObject *sent = NULL
        cdef int status, kind
        cdef bint fresh
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
                        status = bluelet_send(gen, value, &sent)
                        event = <object>sent
                        Py_XDECREF(sent)
                    else:
                        status = 1
                        event = gen.throw(exc)
                except StopIteration as stop:
                    status = 0
                    event = stop.value
                except BaseException as error:
                    status = -1
                    event = error
                if status != 1:
                    # The generator ended, returning (0) or raising (-1).
                    if status == 0:
                        value, exc = event, None
                    else:
                        value, exc = None, event
                    event = None
                    if not task.stack:
                        self._finish(task, value, exc)
                        return 0
                    # The caller takes the value or the error on the next
                    # pass; an error also ends this pass, as in 0.2.0.
                    gen = self._pop(task)
                    if self._alone():
                        continue
                    self._schedule(task, value, exc)
                    if exc is not None:
                        self._end_pass = True
                    return 0
                value = exc = None

                if event is _NULL and not task.expired:
                    self._schedule(task, None, None)
                    return 0
                fresh = True
            kind = _event_kind(event)
            if fresh:
                if _debug and isinstance(event, Event):
                    _used(<Event>event)
                if task.expired and _is_scheduling_point(kind):
                    self._raise_due(task)
                    return 0
                if _is_next_pass(kind) and not self._alone():
                    # 0.2.0 handles these on the pass after the yield.
                    task.pending = event
                    self._schedule(task, None, None)
                    return 0
            # From here ``event`` is handled; what follows resumes ``gen``
            # (event None) or handles the next event.
            handled, event = event, None

            if kind == _K_VALUE:
                self._schedule(task, (<ValueEvent>handled)._value, None)
                return 0
            elif kind == _K_IO:
                if not fresh:
                    # Its turn after the poll: the I/O, then the resume.
                    value, exc = self._fire(task, <_FdEvent>handled)
                    if value is _WOULD_BLOCK:
                        return 0
                    if exc is not None and _ends_coroutine(handled, exc):
                        # 0.2.0's semantics, on a connection that asks for
                        # them (bluelet.compat): the coroutine that yielded
                        # ends on the next pass; its caller gets None.
                        task.pending = _END_NONE
                        self._schedule(task, None, None)
                        return 0
                elif (<_FdEvent>handled)._try_first or self._claim_ready(<_FdEvent>handled):
                    task.pending = handled
                    task.state = _S_TRY
                    self._after_poll.append(task)
                    return 0
                else:
                    exc = self._wait_fd(task, <_FdEvent>handled, False)
                    if exc is None:
                        return 0
            elif kind == _K_SLEEP:
                if self._virtual_time:
                    task.wait = self._clock + (<SleepEvent>handled).duration
                else:
                    task.wait = (<SleepEvent>handled).wakeup_time
                self._add_timer(task, task.wait)
                task.state = _S_SLEEP
                return 0
            elif kind == _K_CALL:
                child = handled if bluelet_is_coroutine(handled) else (<DelegationEvent>handled).spawned
                exc = self._check_new(child, "call")
                if exc is None:
                    gen = self._push(task, child)
                    # The callee's first step is on the next pass. A call
                    # found alone at its yield is still alone: no code ran.
                    if not (fresh or self._alone()):
                        self._schedule(task, None, None)
                        return 0
            elif kind == _K_RETURN:
                value = (<ReturnEvent>handled).value
                try:
                    gen.close()
                except BaseException as error:
                    value, exc = None, error
                if not task.stack:
                    self._finish(task, value, exc)
                    return 0
                gen = self._pop(task)
                if not self._alone():
                    self._schedule(task, value, exc)
                    return 0
            elif kind == _K_SPAWN:
                exc = self._check_new((<SpawnEvent>handled).spawned, "spawn")
                if exc is None:
                    self._add_task((<SpawnEvent>handled).spawned)
            elif kind == _K_JOIN:
                target = self._task_of((<JoinEvent>handled).child)
                if target is None:
                    exc = _check_finished((<JoinEvent>handled).child, "join")
                    if exc is None:
                        value = self._results.get((<JoinEvent>handled).child)
                elif target is task:
                    exc = RuntimeError("a coroutine cannot join itself")
                else:
                    self._wait_for_end(task, target)
                    return 0
            elif kind == _K_KILL:
                target = self._task_of((<KillEvent>handled).child)
                if target is None:
                    exc = _check_finished((<KillEvent>handled).child, "kill")
                elif self._kill(target, False):
                    if target is task:
                        return 0
                    # The killer goes on on the next pass.
                    if not self._alone():
                        self._schedule(task, None, None)
                        return 0
                elif target is not task:
                    # A shield holds the kill off: the killer waits for the end.
                    self._wait_for_end(task, target)
                    return 0
                elif task.state == _S_READY:
                    return 0  # its finally block entered shield(): scheduled for it
            elif kind == _K_WAITABLE:
                if not fresh:
                    try:
                        value = handled.fire()
                    except Exception as error:
                        exc = error
                else:
                    exc = self._wait_waitables(task, handled)
                    if exc is None:
                        return 0
            elif kind == _K_EXCEPTION:
                self._schedule(task, None, (<ExceptionEvent>handled)._exc)
                return 0
            elif kind == _K_TIMEOUT:
                body = (<_TimeoutEvent>handled).body
                if body is None:
                    exc = TypeError(
                        "%s() without a body is a block: async with bluelet.%s(...): in an "
                        "async def, or pass the body"
                        % ((_SCOPE_VERBS[(<_TimeoutEvent>handled).mode],) * 2))
                elif not bluelet_is_coroutine(body):
                    # An event as the body: handled as if yielded inside the
                    # scope, which ends when this generator resumes.
                    self._enter_scope(task, <_TimeoutEvent>handled, False)
                    event = body
                    fresh = True
                    continue
                else:
                    exc = self._check_new(body, _SCOPE_VERBS[(<_TimeoutEvent>handled).mode])
                if exc is None:
                    self._enter_scope(task, <_TimeoutEvent>handled, False)
                    gen = self._push(task, body)
                    # Like a call: the body's first step is on the next pass.
                    if not self._alone():
                        self._schedule(task, None, None)
                        return 0
            elif kind == _K_PARK:
                if (<WaitQueue>handled)._external:
                    self._expect_external()
                (<WaitQueue>handled)._waiters.append(task)
                task.wait = handled
                task.state = _S_PARK
                return 0
            elif kind == _K_EXTERNAL:
                if (<Completion>handled)._loop is not self:
                    exc = RuntimeError("a Completion belongs to the loop that created it")
                elif (<Completion>handled)._done:
                    self._schedule(task, (<Completion>handled)._value, (<Completion>handled)._exc)
                    return 0
                else:
                    (<Completion>handled)._task = task
                    task.wait = handled
                    task.state = _S_EXTERNAL
                    return 0
            elif kind == _K_LATER:
                if fresh:
                    task.pending = handled
                    self._schedule(task, None, None)
                    return 0
                try:
                    value = (<_LaterEvent>handled).func(*(<_LaterEvent>handled).args)
                except Exception as error:
                    exc = error
            elif kind == _K_SCOPE:
                # Not a scheduling point either way: the coroutine goes on.
                if (<_ScopeEdge>handled).leaving:
                    value, exc = self._leave_block(task, <_ScopeEdge>handled)
                elif (<_ScopeEdge>handled).block._scope is not None:
                    exc = RuntimeError("this scope block is in use: a block is entered once")
                else:
                    if _debug:
                        _used((<_ScopeEdge>handled).block)
                    (<_ScopeEdge>handled).block._scope = self._enter_scope(
                        task, (<_ScopeEdge>handled).block, True)
                    value = (<_ScopeEdge>handled).block
            else:
                exc = _not_an_event(handled)

    cdef tuple _fire(self, _Task task, _FdEvent event):
        cdef bint front = task.front
        cdef _FdState state
        task.front = False
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

    cdef inline bint _alone(self) noexcept:
        # Whether nothing else can run before this task's next pass: then
        # its next-pass work is done now, since no order can tell. Counted
        # as a pass, so the fairness bound holds here too.
        if self._rest or self._ready or self._spawned or self._passes >= _MAX_PASSES:
            return False
        self._passes += 1
        return True

    cdef inline object _push(self, _Task task, child):
        # Make ``child`` the task's innermost generator, at a new place.
        cdef Py_ssize_t depth
        cdef Py_ssize_t *grown
        if task.stack is None:
            task.stack = []
        depth = len(task.stack)
        if depth == task.outer_room:
            grown = <Py_ssize_t *>realloc(task.outer_pos, (2 * depth + 4) * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            task.outer_pos = grown
            task.outer_room = 2 * depth + 4
        task.stack.append(task.gen)
        task.outer_pos[depth] = task.pos
        task.pos = self._next_pos
        self._next_pos += 1
        task.gen = child
        return child

    cdef inline object _pop(self, _Task task):
        # Return to the caller of the task's innermost generator.
        gen = task.gen = task.stack.pop()
        task.pos = task.outer_pos[len(task.stack)]
        return gen

    cdef int _observed_step(self, _Task task) except -1:
        # A step the hooks are told of, or slow_step times.
        cdef int wants = self._wants
        hooks = self._hooks
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
        return 0

    cdef inline int _schedule(self, _Task task, value, exc) except -1:
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
        return 0

    cdef int _wait_for_end(self, _Task task, _Task target) except -1:
        if target.joiners is None:
            target.joiners = []
        target.joiners.append(task)
        task.wait = target
        task.state = _S_JOIN
        return 0

    cdef _Task _add_task(self, gen):
        cdef _Task task = _Task(gen)
        task.pos = self._next_pos  # set here, not passed: no int is boxed
        self._next_pos += 1
        # A copy of the spawner's context (the caller's, for the root), as
        # asyncio.create_task makes: what one coroutine sets, no other sees.
        task.context = PyContext_CopyCurrent()
        task.loop = self
        self._tasks[gen] = task
        self._spawned.append(task)
        if self._wants & _H_SPAWNED:
            self._hooks.task_spawned(_task_info(task, self._now()))
        return task

    cdef int _queue_spawned(self) except -1:
        cdef list spawned = self._spawned
        if spawned:
            if (<_Task>spawned[0]).pos < self._last_pos:
                self._unsorted = True
            self._last_pos = (<_Task>spawned[len(spawned) - 1]).pos
            self._ready.extend(spawned)
            del spawned[:]
        return 0

    cdef _Task _task_of(self, gen):
        return self._tasks.get(gen) if bluelet_is_coroutine(gen) else None

    cdef object _check_new(self, gen, verb):
        error = _generator_error(gen, verb)
        if error is None and (gen in self._tasks or _driven(gen)):
            error = ValueError("%s(): %r is already running" % (verb, gen))
        return error

    # -- ending tasks -------------------------------------------------------

    cdef int _finish(self, _Task task, result, exc) except -1:
        cdef _Task joiner
        cdef _Scope scope
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
        # its root, and records are not collected (no_gc).
        task.gen = task.stack = task.wait = task.pending = task.loop = None
        del self._tasks[task.base]
        if result is not None:
            self._results[task.base] = result
        if task.joiners:
            for joiner in task.joiners:
                joiner.wait = None
                self._schedule(joiner, result, exc)
            task.joiners = None
            return 0
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
        return 0

    cdef bint _kill(self, _Task task, bint force) except -1:
        cdef _Task killer
        cdef bint ended
        task.killed = True
        if not force and self._shielded(task):
            return False
        killer = self._current
        self._cancel_wait(task)
        self._current = task  # its finally blocks see themselves as current()
        if task is killer:
            ended = self._cancel_chain(task, not force)
        else:
            PyContext_Enter(task.context)
            try:
                ended = self._cancel_chain(task, not force)
            finally:
                PyContext_Exit(task.context)
        self._current = killer
        return ended

    cdef bint _cancel_chain(self, _Task task, bint hold) except -1:
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

    cdef int _cancel_wait(self, _Task task) except -1:
        cdef int state = task.state
        if state == _S_SLEEP:
            task.timer_seq = 0
            self._stale_timers += 1
        elif state == _S_IO:
            self._unwait_fds(task)
            self._fd_waiters -= 1
        elif state == _S_JOIN:
            (<_Task>task.wait).joiners.remove(task)
        elif state == _S_PARK:
            (<WaitQueue>task.wait)._waiters.remove(task)
            if (<WaitQueue>task.wait)._external:
                self._external -= 1
        elif state == _S_EXTERNAL:
            (<Completion>task.wait)._task = None
        elif state == _S_TRY:  # its entry in _after_poll is skipped from now on
            task.pending = None
        else:
            return 0
        task.wait = task.wait_fds = None
        task.state = _S_RUNNING
        return 0

    cdef int _interrupt(self, exc) except -1:
        cdef _Task root = self._root
        if root.state == _S_DONE:
            self._failure = exc
            return 0
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
            return 0
        self._cancel_wait(root)
        self._schedule(root, None, exc)
        return 0

    cdef int _shutdown(self) except -1:
        cdef _Task task
        cdef _FdState state
        with self._waker_lock:
            calls, self._calls = self._calls, None
        for task in list(self._tasks.values()):
            self._kill(task, True)
        del self._ready[:]
        del self._after_poll[:]
        self._clear_timers()
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
        return 0

    # -- descriptors --------------------------------------------------------

    cdef bint _claim_ready(self, _FdEvent event) except -1:
        cdef _FdState state = self._fds.get(event._fileno)
        if state is None or state.fileobj is not event._fileobj or not state.ready & event._mask:
            return False
        state.ready &= ~event._mask
        return True

    cdef _FdState _fd_state(self, fileobj, int fd):
        cdef _FdState state = self._fds.get(fd)
        if state is None:
            state = _FdState(fd, fileobj)
            self._fds[fd] = state
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

    cdef int _enqueue(self, _Task task, _FdState state, int mask, bint front=False) except -1:
        cdef int wanted
        queue = state.readers if mask == _READ else state.writers
        if front:
            queue.appendleft(task)
        else:
            queue.append(task)
        wanted = state.interest | mask
        if wanted != state.interest:
            if self._epoll is not None:
                self._epoll.set_interest(state, wanted)
            else:
                self._poller.set_interest(state, wanted)
        return 0

    cdef object _wait_fd(self, _Task task, _FdEvent event, bint front):
        cdef _FdState state
        task.wait = event
        task.state = _S_IO
        self._fd_waiters += 1
        try:
            state = self._fd_state(event._fileobj, event._fileno)
            self._enqueue(task, state, event._mask, front)
        except OSError as error:
            self._cancel_wait(task)
            if error.errno == errno_module.EPERM:
                # Regular files cannot be polled: they are always ready.
                return self._attempt_now(task, event)
            return error
        return None

    cdef object _attempt_now(self, _Task task, _FdEvent event):
        try:
            value = event._attempt()
            while value is _WOULD_BLOCK:
                value = event._attempt()
        except Exception as error:
            return error
        self._schedule(task, value, None)
        return None

    cdef object _wait_waitables(self, _Task task, event):
        cdef _FdState state
        try:
            rlist, wlist, xlist = event.waitables()
            pairs = [(obj, _READ) for obj in rlist]
            pairs += [(obj, _WRITE) for obj in wlist]
            pairs += [(obj, _READ) for obj in xlist]
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

    cdef int _unwait_fds(self, _Task task) except -1:
        cdef _FdState state
        if task.wait_fds is None:
            event = <_FdEvent>task.wait
            pairs = [(self._fds.get(event._fileno), event._mask)]
        else:
            pairs = task.wait_fds
        for state, mask in pairs:
            if state is not None:
                queue = state.readers if mask == _READ else state.writers
                try:
                    queue.remove(task)
                except ValueError:
                    pass
        return 0

    cdef int _queue_after_poll(self) except -1:
        cdef list tasks = self._after_poll
        cdef _Task task
        if tasks:
            self._after_poll = []
            for task in tasks:
                if task.state == _S_TRY:  # not cancelled meanwhile
                    self._schedule(task, task.value, task.exc)
        return 0

    cdef int _poll(self, double timeout) except -1:
        cdef int i, n
        cdef _EpollPoller epoll = self._epoll
        if timeout == 0.0 and not self._fd_waiters and not self._external:
            # Busy coroutines and nobody on an fd: a syscall would find nothing.
            return 0
        if self._wants & _H_BEFORE_POLL:
            self._hooks.before_poll(timeout)
        if epoll is not None:
            # Straight from the C array: no tuple per ready fd.
            n = epoll.poll(timeout)
            if self._wants & _H_AFTER_POLL:
                self._hooks.after_poll(n)
            for i in range(n):
                self._wake_fd(epoll._events[i].data.fd, epoll._events[i].events)
            return 0
        ready = self._poller.poll(timeout)
        if self._wants & _H_AFTER_POLL:
            self._hooks.after_poll(len(ready))
        for fd, mask in ready:
            self._wake_fd(fd, mask)
        return 0

    cdef int _wake_fd(self, int fd, int mask) except -1:
        cdef _FdState state
        cdef int wanted
        if fd == self._waker_fd:
            self._drain_inbox()
            return 0
        state = self._fds.get(fd)
        if state is None:
            return 0
        wanted = state.interest
        if mask & (_READ | _ERRORS):
            wanted = self._report(state, _READ, state.readers, wanted)
        if mask & (_WRITE | _ERRORS):
            wanted = self._report(state, _WRITE, state.writers, wanted)
        # Interest is dropped only now, after two reports nobody waited for:
        # a task that waits again soon finds its fd still registered.
        if wanted != state.interest and state is self._fds.get(fd):
            if self._epoll is not None:
                self._epoll.set_interest(state, wanted)
            else:
                self._poller.set_interest(state, wanted)
        return 0

    cdef int _report(self, _FdState state, int bit, queue, int wanted) except -1:
        cdef _Task task
        if queue:
            state.ready &= ~bit
            task = <_Task>queue.popleft()
            if bit == _WRITE:
                state.writer = task
            self._io_ready(task)
        elif state.ready & bit:
            wanted &= ~bit
        else:
            # Remembered: the next waiter tries its operation at once, which
            # in request/response is the common case (the reply raced ahead).
            state.ready |= bit
        return wanted

    cdef int _io_ready(self, _Task task) except -1:
        event = task.wait
        if task.wait_fds is not None:
            self._unwait_fds(task)
        self._fd_waiters -= 1
        task.wait = task.wait_fds = None
        task.pending = event
        task.front = True
        self._schedule(task, None, None)
        return 0

    cdef int _close_fd(self, int fd) except -1:
        cdef _FdState state = self._fds.pop(fd, None)
        cdef _Task task
        if state is None:
            return 0
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
        return 0

    # -- timers -------------------------------------------------------------

    cdef int _add_timer(self, _Timed target, double deadline) except -1:
        cdef Py_ssize_t i, parent
        cdef _Timer entry
        cdef _Timer *grown
        if self._timer_count == self._timer_capacity:
            self._timer_capacity = max(64, self._timer_capacity * 2)
            grown = <_Timer *>realloc(self._timers, self._timer_capacity * sizeof(_Timer))
            if grown == NULL:
                raise MemoryError()
            self._timers = grown
        self._timer_seq += 1
        target.timer_seq = self._timer_seq
        entry.deadline = deadline
        entry.seq = self._timer_seq
        entry.target = <PyObject *>target
        Py_INCREF(target)
        # Sift up.
        i = self._timer_count
        self._timer_count += 1
        while i > 0:
            parent = (i - 1) >> 1
            if not _timer_before(&entry, &self._timers[parent]):
                break
            self._timers[i] = self._timers[parent]
            i = parent
        self._timers[i] = entry
        return 0

    cdef inline int _drop_timer(self, _Timed target) except -1:
        if target.timer_seq:
            target.timer_seq = 0
            self._stale_timers += 1
        return 0

    cdef bint _has_timers(self):
        return self._timer_count > self._stale_timers

    cdef double _next_deadline(self) except? -1.0:
        cdef Py_ssize_t i, kept
        while not _timer_live(&self._timers[0]):
            Py_DECREF(<object>self._pop_timer())
            self._stale_timers -= 1
        if self._stale_timers > _STALE_TIMER_FLOOR and self._stale_timers * 2 > self._timer_count:
            kept = 0
            for i in range(self._timer_count):
                if _timer_live(&self._timers[i]):
                    self._timers[kept] = self._timers[i]
                    kept += 1
                else:
                    Py_DECREF(<object>self._timers[i].target)
            self._timer_count = kept
            self._heapify()
            self._stale_timers = 0
        return self._timers[0].deadline

    cdef int _expire_timers(self, double now) except -1:
        cdef _Timed target
        cdef unsigned long long seq
        while self._timer_count and self._timers[0].deadline <= now:
            seq = self._timers[0].seq
            target = <_Timed>self._pop_timer()
            Py_DECREF(target)   # the heap's reference, now owned by ``target``
            if target.timer_seq == seq:
                target.timer_seq = 0
                if type(target) is _Task:
                    self._schedule(<_Task>target, None, None)
                else:
                    self._expire_scope(<_Scope>target)
            else:
                self._stale_timers -= 1
        return 0

    cdef PyObject *_pop_timer(self) noexcept:
        """Remove the top entry; its target reference passes to the caller."""
        cdef PyObject *task = self._timers[0].target
        self._timer_count -= 1
        if self._timer_count:
            self._timers[0] = self._timers[self._timer_count]
            self._sift_down(0)
        return task

    cdef void _sift_down(self, Py_ssize_t i) noexcept:
        cdef Py_ssize_t child
        cdef _Timer entry = self._timers[i]
        cdef Py_ssize_t n = self._timer_count
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and _timer_before(&self._timers[child + 1], &self._timers[child]):
                child += 1
            if not _timer_before(&self._timers[child], &entry):
                break
            self._timers[i] = self._timers[child]
            i = child
        self._timers[i] = entry

    cdef void _heapify(self) noexcept:
        cdef Py_ssize_t i = self._timer_count // 2
        while i > 0:
            i -= 1
            self._sift_down(i)

    cdef void _clear_timers(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self._timer_count):
            Py_XDECREF(self._timers[i].target)
        self._timer_count = 0
        self._stale_timers = 0

    # -- scopes: deadlines, shields, cancellation -------------------------------

    cdef _Scope _enter_scope(self, _Task task, _TimeoutEvent event, bint held):
        cdef _Scope scope = _Scope(task, len(task.stack) if task.stack else 0, event.seconds,
                                   INFINITY, event.mode, held)
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

    cdef _Scope _leave_scopes(self, _Task task, exc):
        cdef Py_ssize_t depth = len(task.stack) if task.stack else 0
        cdef _Scope caught = None
        if not _closes_at(<_Scope>task.scopes[len(task.scopes) - 1], depth):
            return None
        if isinstance(exc, Cancelled):
            canceller = self._canceller(task)
            if type(canceller) is _Scope and _closes_at(<_Scope>canceller, depth):
                caught = <_Scope>canceller
        self._drop_scopes(task, depth)
        task.expired = self._is_due(task)
        if not task.expired:
            task.swallows = 0
        return caught

    cdef int _drop_scopes(self, _Task task, Py_ssize_t depth) except -1:
        cdef list scopes = task.scopes
        while scopes and _closes_at(<_Scope>scopes[len(scopes) - 1], depth):
            self._drop_timer(scopes.pop())
        if not scopes:
            task.scopes = None
        return 0

    cdef tuple _leave_block(self, _Task task, _ScopeEdge edge):
        cdef _TimeoutEvent block = edge.block
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

    cdef int _expire_scope(self, _Scope scope) except -1:
        cdef _Task task = scope.task
        scope.expired = True
        task.expired = self._is_due(task)
        if task.expired and task.state >= _S_IO:
            self._cancel_wait(task)
            self._schedule(task, None, self._due_error(task))
        return 0

    cdef object _canceller(self, _Task task):
        cdef _Scope scope
        cdef object found = None
        if task.scopes is not None:
            for scope in reversed(task.scopes):
                if scope.expired:
                    found = scope
                elif scope.mode == _M_SHIELD:
                    return found
        return task if task.killed else found

    cdef bint _shielded(self, _Task task):
        cdef _Scope scope
        if task.scopes is not None:
            for scope in task.scopes:
                if scope.mode == _M_SHIELD:
                    return True
        return False

    cdef bint _is_due(self, _Task task):
        if task is self._root and self._deferred is not None:
            return True
        return self._canceller(task) is not None

    cdef object _due_error(self, _Task task):
        cdef object exc
        if task is self._root and self._deferred is not None:
            exc, self._deferred = self._deferred, None
            task.expired = self._is_due(task)
            return exc
        canceller = self._canceller(task)
        if canceller is task:
            return Cancelled()
        return Cancelled("the deadline of a %g s scope passed" % (<_Scope>canceller).seconds)

    cdef int _raise_due(self, _Task task) except -1:
        task.swallows += 1
        if task.swallows > _MAX_SWALLOWS:
            self._kill(task, True)
        else:
            self._schedule(task, None, self._due_error(task))
        return 0

    # -- parked tasks and threads -------------------------------------------

    cdef int _unpark(self, _Task task, value, exc) except -1:
        if task.loop is not self:
            raise RuntimeError(
                "WaitQueue.wake(): its waiter runs in another thread's loop; coroutines "
                "of different threads hand values over with a Completion (set_result "
                "from any thread), not with bluelet's locks, queues or flags")
        if (<WaitQueue>task.wait)._external:
            self._external -= 1
        task.wait = None
        self._schedule(task, value, exc)
        return 0

    cdef int _expect_external(self) except -1:
        self._wakeup_fd()
        self._external += 1
        return 0

    def _closed_elsewhere(self, int fd, identity):
        try:
            info = os.fstat(fd)
        except OSError:
            pass  # closed and not reused: it was that file
        else:
            if (info.st_dev, info.st_ino) != identity:
                return
        self._close_fd(fd)

    cdef int _wakeup_fd(self) except -1:
        if self._waker is None:
            # A socket pair, not a pipe: Windows can poll only sockets, and
            # signal.set_wakeup_fd takes only a socket there.
            self._waker = socket.socketpair()
            for end in self._waker:
                end.setblocking(False)
            self._waker_fd = self._waker[0].fileno()
            self._poller.set_interest(_FdState(self._waker_fd, None), _READ)
        return self._waker[1].fileno()

    def _tasks_info(self):
        cdef _Task task
        now = self._now()
        return [_task_info(task, now) for task in self._tasks.values()]

    def interrupt(self, exc):
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
        with self._waker_lock:
            if self._calls is None:
                raise RunFinishedError("the bluelet run has ended")
            if self._waker is None:
                raise RuntimeError("the loop's run has not begun")
            self._calls.append(func)
        self._wake()

    def spawn(self, coro):
        if self._calls is None or self._root is None:
            raise RunFinishedError("the bluelet run has ended")
        error = self._check_new(coro, "spawn")
        if error is not None:
            raise error
        self._add_task(coro)
        if self._current is None:
            # Between passes: nothing would queue it before the next poll.
            self._queue_spawned()

    cdef int _post(self, Completion completion) except -1:
        self._inbox.append(completion)
        self._wake()
        return 0

    cdef int _wake(self) except -1:
        # Reentrant: a signal handler may call this while the same thread is
        # inside it.
        with self._waker_lock:
            if self._waker is not None:
                try:
                    self._waker[1].send(b"\0")
                except BlockingIOError:
                    pass  # the buffer is full: a wake-up is pending anyway
        return 0

    cdef int _drain_inbox(self) except -1:
        cdef Completion completion
        cdef _Task task
        try:
            while self._waker[0].recv(4096):
                pass
        except BlockingIOError:
            pass
        # A signal's byte may be what woke the poll. Its Python handler
        # (Loop.interrupt) runs at the next bytecode, which this twin may
        # not reach before it blocks in the next poll (a hang until some
        # other wake-up): run it now.
        PyErr_CheckSignals()
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
        return 0


cdef inline bint _behind(_FdState state, int mask):
    # Whether an operation in ``mask``'s direction must wait its turn: behind
    # those already waiting, and, for a write, behind a woken writer that
    # has not had its turn (it may be in the middle of a sendall).
    if mask == _READ:
        return len(state.readers) != 0
    return len(state.writers) != 0 or (state.writer is not None and state.writer.front)


cdef tuple _cancel_one(gen, exc, bint hold):
    for _ in range(_MAX_SWALLOWS):
        try:
            event = gen.throw(exc)
        except StopIteration:
            return None, None
        except BaseException as raised:
            return raised, None
        if _debug and isinstance(event, Event):
            _used(<Event>event)  # yielded, if refused
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


cdef inline bint _is_shield_entry(event):
    # Whether ``event`` enters a shield: a shield() with a body, or the
    # start of an ``async with shield():`` block.
    if type(event) is _ScopeEdge:
        return not (<_ScopeEdge>event).leaving and (<_ScopeEdge>event).block.mode == _M_SHIELD
    return type(event) is _TimeoutEvent and (<_TimeoutEvent>event).mode == _M_SHIELD


cdef inline bint _closes_at(_Scope scope, Py_ssize_t depth) noexcept:
    # Whether ``scope`` ends once the chain is at ``depth``: it was entered
    # deeper, or at that depth for a body (which has ended, as the generator
    # that yielded it runs again); a block's stays open until it is left.
    return scope.depth > depth or (scope.depth == depth and not scope.held)


cdef object _running_loop():
    loop = getattr(_local, "loop", None)
    if loop is None:
        raise RuntimeError("this needs a running bluelet loop (call it inside a coroutine)")
    return loop


cdef object _task_info(_Task task, double now):
    cdef int state = task.state
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
            return TaskInfo(task.base, "io", "about to try I/O on fd %d" % (
                (<_FdEvent>pending)._fileno,), chain)
        return TaskInfo(task.base, "io", "about to fire %r" % (pending,), chain)
    if state == _S_IO:
        if task.wait_fds is not None:
            return TaskInfo(task.base, "io", "waiting for %r (fds %s)" % (
                task.wait, ", ".join(str((<_FdState>pair[0]).fd) for pair in task.wait_fds)), chain)
        return TaskInfo(task.base, "io", "waiting for fd %d to be %s" % (
            (<_FdEvent>task.wait)._fileno,
            "readable" if (<_FdEvent>task.wait)._mask == _READ else "writable"), chain)
    if state == _S_SLEEP:
        return TaskInfo(task.base, "sleeping", "sleeping until %.3f (%.3f s from now)" % (
            task.wait, task.wait - now), chain)
    if state == _S_JOIN:
        return TaskInfo(task.base, "joining", "joining %r" % ((<_Task>task.wait).base,), chain)
    if state == _S_PARK:
        return TaskInfo(task.base, "parked", "parked in %r" % (task.wait,), chain)
    return TaskInfo(task.base, "thread", "waiting for a result from another thread", chain)


cdef int _wanted(hooks) except -1:
    if hooks is None:
        return 0
    wanted = getattr(hooks, "wanted", _HOOK_NAMES)
    return sum(1 << bit for bit, name in enumerate(_HOOK_NAMES) if name in wanted)


cdef bint _ends_coroutine(event, exc) except -1:
    conn = getattr(event, "conn", None)
    if not (isinstance(exc, OSError) and getattr(conn, "_ends_on_error", False)):
        return False
    if exc.errno not in (errno_module.EPIPE, errno_module.ECONNRESET):
        log.error("%r failed; as in bluelet 0.2.0, the coroutine ends and its caller gets None",
                  event, exc_info=exc)
    return True


_place = operator.attrgetter("pos")
_SCOPE_VERBS = ("timeout", "move_on_after", "shield")


cdef object _check_finished(gen, verb):
    error = _generator_error(gen, verb)
    if error is None and _frame(gen) is not None:
        error = ValueError("%s(): %r was never spawned" % (verb, gen))
    return error


def _new_poller():
    return _EpollPoller() if BLUELET_HAVE_EPOLL else _SelectorsPoller()


# ---------------------------------------------------------------------------
# Module-level entry points
# ---------------------------------------------------------------------------

def run(root_coro, *, virtual_time=False, slow_step=None, debug=None, schedule_seed=None):
    return Loop(virtual_time, slow_step, debug, schedule_seed).run(root_coro)


# The running loops that have each descriptor registered, so that closing it
# in one thread reaches the waiters of another thread's loop: the kernel
# drops a closed descriptor from every epoll set, and their waiters would
# otherwise wait forever. Changed when a loop first registers a descriptor
# and when it forgets it, never per event.
cdef dict _fd_loops = {}
cdef object _fd_loops_lock = threading.Lock()


cdef int _share_fd(int fd, Loop loop) except -1:
    with _fd_loops_lock:
        _fd_loops.setdefault(fd, []).append(loop)
    return 0


cdef int _unshare_fd(int fd, Loop loop) except -1:
    cdef list loops
    with _fd_loops_lock:
        loops = _fd_loops.get(fd)
        if loops is not None:
            try:
                loops.remove(loop)
            except ValueError:
                pass
            if not loops:
                del _fd_loops[fd]
    return 0


def notify_closing(fileobj):
    cdef int fd = _fileno(fileobj)
    loop = getattr(_local, "loop", None)
    if loop is not None:
        (<Loop>loop)._close_fd(fd)
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
    return (<Loop>_running_loop())._tasks_info()


def wakeup_fd():
    return (<Loop>_running_loop())._wakeup_fd()


def running_loop():
    return _running_loop()


def iscoroutine(obj):
    return bluelet_is_coroutine(obj)


def _advance_clock(seconds):
    cdef Loop loop = <Loop>_running_loop()
    if not loop._virtual_time:
        raise RuntimeError("only a virtual clock can be moved (run with virtual_time=True)")
    loop._clock += _seconds(seconds)


def _set_debug(bint on):
    global _debug
    previous = _debug
    _debug = on
    return previous


def _copy_docstrings():
    """Give the public functions and methods the pure twin's docstrings."""
    from . import _loop_py
    for name in ("null", "sleep", "spawn", "call", "end", "join", "kill", "later",
                 "wait_readable", "wait_writable", "run", "notify_closing",
                 "timeout", "fail_after", "move_on_after", "shield", "current_deadline",
                 "current_time", "current", "tasks", "wakeup_fd", "running_loop",
                 "iscoroutine"):
        globals()[name].__doc__ = getattr(_loop_py, name).__doc__
    for cls, method in ((Loop, "run"), (Loop, "start"), (Loop, "step"), (Loop, "fileno"),
                        (Loop, "finish"), (Loop, "interrupt"), (Loop, "call_soon_threadsafe"),
                        (Loop, "spawn"), (Event, "send"),
                        (WaitableEvent, "waitables"),
                        (WaitableEvent, "fire"), (SleepEvent, "time_left"),
                        (WaitQueue, "wait"), (WaitQueue, "wake"), (WaitQueue, "wake_all"),
                        (Completion, "set_result"), (Completion, "set_exception")):
        getattr(cls, method).__doc__ = getattr(getattr(_loop_py, cls.__name__), method).__doc__


_copy_docstrings()
del _copy_docstrings
