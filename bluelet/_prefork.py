"""Pre-forked workers on one port: ``server(..., workers=N)`` and the CLI's ``--workers``.

The processes
    A *supervisor* binds the address, forks N workers and then only
    watches them: it restarts one that dies and stops them all on SIGINT
    or SIGTERM. Each worker runs ``run(service(listener),
    handle_signals=True)``, so a SIGTERM from the supervisor stops it
    gracefully (``serve()`` finishes what is in flight), and ends with
    ``os._exit``.

One port, N listeners
    On Linux each worker listens on a socket of its own with SO_REUSEPORT,
    and the kernel spreads new connections across their accept queues (no
    thundering herd, no shared queue). The supervisor keeps one more
    socket, bound with SO_REUSEPORT but never listening: it holds the
    port while workers come and go, and tells which port ``port=0``
    picked. Linux gives connections to listening sockets only, so that
    one never receives any. Elsewhere (SO_REUSEPORT does not spread
    connections on the BSDs or macOS) the supervisor makes one listening
    socket and every worker inherits it.

Escaping the supervisor's loop
    ``server(..., workers=N)`` runs as the root of ``bluelet.run()``, so
    the supervisor is inside a scheduler step when it forks. The core
    forgets its running loop in a forked child (the child shares the
    parent's poller, so it could not go on with that loop anyway), which
    lets the child start a loop of its own, nested in the copied frames.
    It runs the worker there and never returns into them: it ends with
    ``os._exit``. Forking from the main thread keeps signal delivery
    normal in the child (CPython 3.13 misroutes it in a child forked from
    another thread: the handlers then run only when something interrupts
    the poll).

Signals
    The supervisor's handlers for SIGINT, SIGTERM and SIGCHLD only note
    the signal; ``signal.set_wakeup_fd`` wakes the supervisor's
    ``select()`` on a pipe, and it acts on what was noted between its own
    steps. Handlers, not a blocked mask taken by ``sigwait``: a mask holds
    for one thread, and the kernel hands a process's signal to any thread
    that has not blocked it (the pool of ``to_thread``, a library's
    thread), where a SIGTERM at its default would end the supervisor and a
    SIGCHLD would go unseen. Every wake-up reaps every worker that has
    ended, so SIGCHLDs that arrive together lose nothing. The three are
    blocked only across ``fork()``, so that a worker takes none before its
    own handlers are in place. Workers ignore SIGINT: the terminal's
    Ctrl-C reaches the whole process group, and the supervisor answers it
    with SIGTERM; a worker that counted both would take the second as
    "stop now". A stop signal during the stop is forwarded as a second
    SIGTERM: stop now. Workers hold the read end of a pipe whose write end
    only the supervisor has: end of file there means it died, and they
    stop.
"""

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NoReturn, Optional, Tuple

from ._impl import spawn, tasks, wait_readable
from ._listener import Listener, bind_address, display, stream_socket
from ._records import Coro
from ._signals import run

if TYPE_CHECKING:
    import ssl

__all__ = ["AVAILABLE", "Endpoint", "check_available", "supervise", "supervisor"]

log = logging.getLogger("bluelet.server")

#: Whether this platform can pre-fork (POSIX: fork, signal masks, SIGCHLD).
AVAILABLE = hasattr(os, "fork") and hasattr(signal, "pthread_sigmask") and \
    hasattr(signal, "SIGCHLD")

# Linux spreads connections among SO_REUSEPORT listeners; BSD and macOS
# give them all to one, so there a single inherited socket is shared.
_SPREAD = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")

_STOP = frozenset((signal.SIGINT, signal.SIGTERM))
_WATCHED = _STOP | ({signal.SIGCHLD} if AVAILABLE else set())

_SHORTEST_LIFE = 1.0   # seconds: a worker dying sooner is restarted ...
_RESTART_PAUSE = 1.0   # ... after this pause, so a broken start cannot fork-loop
_KILL_MARGIN = 1.0     # seconds past the grace period before SIGKILL


def check_available(workers: int) -> None:
    """Raise at the call if ``workers`` processes cannot be forked here."""
    if not AVAILABLE:
        raise NotImplementedError("server(workers=%d) needs os.fork and POSIX signals; "
                                  "this platform has not got them" % workers)


class Endpoint:
    """The address the workers serve, bound by the supervisor.

    ``address`` is the bound address (with the real port when 0 was
    asked for); ``listener()``, in a worker, gives that worker's Listener.
    """

    def __init__(self, host: str, port: int, backlog: int = socket.SOMAXCONN,
                 ssl: "Optional[ssl.SSLContext]" = None) -> None:
        self._backlog = backlog
        self._ssl = ssl
        self._reserved: Optional[socket.socket] = None
        self._shared: Optional[Listener] = None
        if _SPREAD:
            self._reserved = reserve(host, port)
            self.address: Any = self._reserved.getsockname()
        else:
            self._shared = Listener(host, port, backlog, ssl=ssl)
            self.address = self._shared.sockname

    @classmethod
    def shared(cls, listener: Listener) -> "Endpoint":
        """The workers share ``listener`` (one made elsewhere, such as an
        inherited socket), each accepting on it."""
        self = cls.__new__(cls)
        self._backlog = socket.SOMAXCONN
        self._ssl = None
        self._reserved = None
        self._shared = listener
        self.address = listener.sockname
        return self

    def listener(self) -> Listener:
        """In a worker: the Listener to serve (its own, or the shared one)."""
        if self._shared is not None:
            return self._shared
        assert self._reserved is not None
        self._reserved.close()  # this process's copy; the supervisor keeps the port
        return Listener(self.address[0], self.address[1], self._backlog, ssl=self._ssl,
                        reuse_port=True)

    def close(self) -> None:
        """Release the address (in the supervisor, once the workers are gone)."""
        if self._reserved is not None:
            self._reserved.close()
        if self._shared is not None:
            self._shared.close()


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` with SO_REUSEPORT, not listening."""
    family, address = bind_address(host, port)
    return stream_socket(family, address, None, True)


def supervisor(host: str, port: int, backlog: int, ssl: "Optional[ssl.SSLContext]",
               workers: int, service: Callable[[Listener], Coro],
               grace: Optional[float]) -> Coro:
    """Coroutine, the root of ``run()``: bind, then ``supervise`` until stopped.

    It never gives way: supervising blocks its loop, which must have
    nothing else to run.
    """
    yield from ()  # makes this a generator (all run() and yield take); it never yields
    if len(tasks()) != 1:
        raise RuntimeError("server(workers=%d) must be the program's root, alone in its "
                           "loop: bluelet.run(bluelet.server(..., workers=%d)); its process "
                           "only supervises the workers" % (workers, workers))
    endpoint = Endpoint(host, port, backlog, ssl)
    try:
        log.info("serving on %s with %d workers", display(endpoint.address), workers)
        supervise(endpoint, workers, service, grace)
    finally:
        endpoint.close()


def supervise(endpoint: Endpoint, workers: int, service: Callable[[Listener], Coro],
              grace: Optional[float]) -> None:
    """Run ``workers`` worker processes on ``endpoint`` until SIGINT or SIGTERM.

    Each runs ``run(service(listener), handle_signals=True)``. Main thread
    only. Returns once every worker has ended; ``grace`` (None: no limit)
    plus a second is how long a worker may take to stop before SIGKILL.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("worker processes are supervised from the main thread only")
    _Supervisor(endpoint, service, grace).run(workers)


class _Supervisor:
    """The supervisor's state: its workers, their lifeline, the signals noted."""

    def __init__(self, endpoint: Endpoint, service: Callable[[Listener], Coro],
                 grace: Optional[float]) -> None:
        self._endpoint = endpoint
        self._service = service
        self._grace = grace
        self._children: Dict[int, float] = {}   # pid -> when it started
        self._noted: List[int] = []             # signals since the last look
        self._saved: Dict[int, Any] = {}        # signum -> the handler to restore
        self._saved_wakeup = -1
        self._wake_r = self._wake_w = -1        # the wake-up pipe
        self._lifeline = self._keeper = -1

    def run(self, workers: int) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # as set_wakeup_fd requires
        self._lifeline, self._keeper = os.pipe()
        try:
            self._catch_signals()
            for _ in range(workers):
                if not self._start():
                    # Not restarted: what failed it will fail the next one.
                    raise RuntimeError("a worker failed to start (its error is logged above)")
            self._watch()
        finally:
            try:
                self._stop()
            finally:
                self._release_signals()
                for fd in (self._keeper, self._lifeline, self._wake_r, self._wake_w):
                    os.close(fd)

    # -- signals --------------------------------------------------------------

    def _catch_signals(self) -> None:
        for signum in _WATCHED:
            self._saved[signum] = signal.signal(signum, self._note)
        self._saved_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _note(self, signum: int, frame: Any) -> None:
        """The handler: runs in the main thread, between two of its steps."""
        self._noted.append(signum)

    def _release_signals(self) -> None:
        signal.set_wakeup_fd(self._saved_wakeup)
        for signum, handler in self._saved.items():
            signal.signal(signum, _handler_or_default(handler))

    def _wait(self, seconds: Optional[float]) -> None:
        """Until a signal comes (its handler has run by the return) or
        ``seconds`` pass (None: no limit)."""
        if not self._noted:
            select.select([self._wake_r], [], [], seconds)
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass  # drained

    def _take_stop(self) -> bool:
        """Whether a stop signal came since the last look; forgets what came
        (SIGCHLD only wakes: every wake-up reaps)."""
        stop = not _STOP.isdisjoint(self._noted)
        self._noted.clear()
        return stop

    # -- workers --------------------------------------------------------------

    def _start(self) -> bool:
        """Fork a worker; return once it listens (True) or has died trying."""
        ready, ready_w = os.pipe()
        try:
            pid = _fork(lambda: self._work(ready, ready_w))
        except BaseException:
            os.close(ready)
            raise
        finally:
            os.close(ready_w)
        self._children[pid] = time.monotonic()
        try:
            # A byte once it listens: until then its port may refuse
            # connections. End of file: it died first (SIGCHLD follows).
            listening = os.read(ready, 1)
        finally:
            os.close(ready)
        if listening:
            log.info("worker %d started", pid)
        return bool(listening)

    def _work(self, ready: int, ready_w: int) -> None:
        """A worker's life, in the child (the watched signals still blocked)."""
        signal.set_wakeup_fd(-1)
        for signum, handler in self._saved.items():
            signal.signal(signum, _handler_or_default(handler))
        for fd in (ready, self._keeper, self._wake_r, self._wake_w):
            os.close(fd)
        listener = self._endpoint.listener()
        os.write(ready_w, b"!")
        os.close(ready_w)
        run(_worker_root(self._service(listener), self._lifeline), handle_signals=True)

    def _reap(self) -> List[Tuple[int, float, int]]:
        """``(pid, start time, wait status)`` of each worker that has ended."""
        ended = []
        for pid in list(self._children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                ended.append((pid, self._children.pop(pid), status))
        return ended

    def _signal_all(self, signum: int) -> None:
        for pid in self._children:
            os.kill(pid, signum)  # not reaped yet, so the pid is still ours

    # -- the supervisor's life -------------------------------------------------

    def _watch(self) -> None:
        """Restart workers that end, until a stop signal."""
        while True:
            # A stop that came with SIGCHLD (workers signalled with us) goes
            # first, and nothing is restarted; stop signals that came
            # together are one request, not a "stop now".
            if self._take_stop():
                log.info("stopping %d worker(s)", len(self._children))
                return
            # Reaped before every wait: a worker may have ended while this
            # was pausing or starting another, its SIGCHLD already taken.
            ended = self._reap()
            if not ended:
                self._wait(None)
            for pid, started, status in ended:
                log.warning("worker %d exited with status %d; restarting",
                            pid, os.waitstatus_to_exitcode(status))
                if time.monotonic() - started < _SHORTEST_LIFE and \
                        self._stopped_within(_RESTART_PAUSE):
                    return
                self._start()

    def _stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if a stop signal comes: whether one came."""
        deadline = time.monotonic() + seconds
        while not self._take_stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._wait(left)
        log.info("stopping %d worker(s)", len(self._children))
        return True

    def _stop(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still there after the grace."""
        self._signal_all(signal.SIGTERM)
        deadline = None if self._grace is None else \
            time.monotonic() + self._grace + _KILL_MARGIN
        while True:
            for pid, _, status in self._reap():
                log.info("worker %d stopped (status %d)", pid, os.waitstatus_to_exitcode(status))
            left = None if deadline is None else deadline - time.monotonic()
            if not self._children or left is not None and left <= 0:
                break
            self._wait(left)  # woken by each SIGCHLD
            if self._take_stop():
                log.info("stop signal again: the workers stop now")
                self._signal_all(signal.SIGTERM)
        for pid in list(self._children):
            log.warning("worker %d still running %g s after SIGTERM: killing it",
                        pid, (self._grace or 0) + _KILL_MARGIN)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            del self._children[pid]


def _worker_root(service: Coro, lifeline: int) -> Coro:
    """A worker's root coroutine: ``service``, stopped by SIGTERM or an orphaning."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor answers Ctrl-C
    # Unblocked only now that run() has its handlers in place: a SIGTERM
    # that came since the fork is delivered here, and stops the service.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WATCHED)
    yield spawn(_orphaned(lifeline))
    return (yield service)


def _orphaned(lifeline: int) -> Coro:
    """End of file on the lifeline: the supervisor is gone; stop as it would ask."""
    yield wait_readable(lifeline)
    log.warning("worker %d: the supervisor is gone; stopping", os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def _fork(work: Callable[[], None]) -> int:
    """Fork; the child runs ``work()``, with the watched signals blocked
    until it unblocks them, and exits. Returns the child's pid."""
    _flush_std()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    try:
        pid = os.fork()
        if pid == 0:
            _exit_after(work)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # the supervisor's own
    return pid


def _exit_after(work: Callable[[], None]) -> NoReturn:
    """Run ``work()`` in a child process, then end the process: never returns."""
    status = 1
    try:
        work()
        status = 0
    except SystemExit as stop:
        status = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        log.exception("worker %d failed", os.getpid())
    finally:
        _flush_std()
        os._exit(status)


def _flush_std() -> None:
    """Flush stdout and stderr, which are None where the process has no fd 1 or 2."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def _handler_or_default(handler: Any) -> Any:
    # None: the handler was not installed from Python; the default is closest.
    return signal.SIG_DFL if handler is None else handler
