"""Pre-forked workers on one port: ``server(..., workers=N)`` and the CLI's ``--workers``.

The processes
    A *supervisor* binds the address, forks N workers and then only
    watches them: it restarts one that dies, replaces them all on SIGHUP
    and stops them all on SIGINT or SIGTERM. Each worker runs ``run(service(listener),
    handle_signals=True)``, so a SIGTERM from the supervisor stops it
    gracefully (``serve()`` finishes what is in flight), and ends with
    ``os._exit``.

One port, N listeners
    On Linux the supervisor makes one listening socket per worker *slot*,
    with SO_REUSEPORT, and the kernel spreads new connections across their
    accept queues (no thundering herd, no shared queue). Each worker
    inherits its slot's socket; the supervisor keeps its own copies and
    never accepts. A worker that replaces another (after a crash, or at a
    reload) serves the same socket, so what waits in its queue is served,
    never reset: closing a SO_REUSEPORT listener would reset the
    connections queued on it. Elsewhere (SO_REUSEPORT does not spread
    connections on the BSDs or macOS) there is one listening socket and
    every worker inherits it.

Reload
    SIGHUP starts a new worker per slot; once each listens, the old ones
    get SIGTERM and stop as at a graceful stop: no new connections, and
    ``grace`` seconds for those in flight (then SIGKILL). The new workers
    are forked from the supervisor, so they run the code it loaded: to roll
    out new code, restart the program under socket activation (systemd
    holds the port meanwhile, ``--fd``).

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
    The supervisor's handlers for SIGINT, SIGTERM, SIGHUP and SIGCHLD only note
    the signal; ``signal.set_wakeup_fd`` wakes the supervisor's
    ``select()`` on a pipe, and it acts on what was noted between its own
    steps. Handlers, not a blocked mask taken by ``sigwait``: a mask holds
    for one thread, and the kernel hands a process's signal to any thread
    that has not blocked it (the pool of ``to_thread``, a library's
    thread), where a SIGTERM at its default would end the supervisor and a
    SIGCHLD would go unseen. Every wake-up reaps every worker that has
    ended, so SIGCHLDs that arrive together lose nothing. The four are
    blocked only across ``fork()``, so that a worker takes none before its
    own handlers are in place. Workers ignore SIGINT (and SIGHUP): the terminal's
    Ctrl-C reaches the whole process group, and the supervisor answers it
    with SIGTERM; a worker that counted both would take the second as
    "stop now". A stop signal during the stop is forwarded as a second
    SIGTERM: stop now. Workers hold the read end of a pipe whose write end
    only the supervisor has: end of file there means it died, and they
    stop.
"""

import logging
import math
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
_RELOAD = getattr(signal, "SIGHUP", None)
_WATCHED = _STOP | ({signal.SIGCHLD, signal.SIGHUP} if AVAILABLE else set())

_SHORTEST_LIFE = 1.0   # seconds: a worker dying sooner is restarted ...
_RESTART_PAUSE = 1.0   # ... after this pause, so a broken start cannot fork-loop
_KILL_MARGIN = 1.0     # seconds past the grace period before SIGKILL


def check_available(workers: int) -> None:
    """Raise at the call if ``workers`` processes cannot be forked here."""
    if not AVAILABLE:
        raise NotImplementedError("server(workers=%d) needs os.fork and POSIX signals; "
                                  "this platform has not got them" % workers)


class Endpoint:
    """The listening sockets the workers serve, made and held by the supervisor.

    On Linux, one SO_REUSEPORT listening socket per worker *slot*: the
    kernel spreads new connections across them. Elsewhere, or for a socket
    made elsewhere (``shared``), one socket every slot shares. A worker
    serves its slot's socket; the one that replaces it (after a crash, or
    at a reload) serves the same socket, which the supervisor kept open
    meanwhile, so the connections waiting in its queue are served, not
    reset. ``address`` is the bound address (with the real port when 0 was
    asked for).
    """

    def __init__(self, host: str, port: int, backlog: int = socket.SOMAXCONN,
                 ssl: "Optional[ssl.SSLContext]" = None) -> None:
        self._backlog = backlog
        self._ssl = ssl
        self._spread = _SPREAD
        self._family, address = bind_address(host, port)
        self._sockets = [stream_socket(self._family, address, backlog, _SPREAD)]
        self.address: Any = self._sockets[0].getsockname()

    @classmethod
    def shared(cls, listener: Listener) -> "Endpoint":
        """The workers share ``listener``'s socket (one made elsewhere, such
        as an inherited socket), each accepting on it."""
        self = cls.__new__(cls)
        self._backlog = socket.SOMAXCONN
        self._ssl = listener._ssl
        self._spread = False
        self._family = listener.sock.family
        self._sockets = [listener.sock]
        self.address = listener.sockname
        return self

    def prepare(self, slots: int) -> None:
        """In the supervisor, before the workers start: a socket per slot."""
        while self._spread and len(self._sockets) < slots:
            self._sockets.append(stream_socket(self._family, self.address, self._backlog, True))

    def listener(self, slot: int) -> Listener:
        """In a worker: the Listener of ``slot``'s socket (the other slots'
        copies in this process are closed; the supervisor keeps its own)."""
        mine = self._sockets[slot if self._spread else 0]
        for sock in self._sockets:
            if sock is not mine:
                sock.close()
        return Listener.from_socket(mine, ssl=self._ssl)

    def close(self) -> None:
        """Release the address (in the supervisor, once the workers are gone)."""
        for sock in self._sockets:
            sock.close()


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


class _Worker:
    """A worker process, as the supervisor keeps track of it."""

    __slots__ = ("slot", "started", "retire_by")

    def __init__(self, slot: int) -> None:
        self.slot = slot                 # which of the endpoint's sockets it serves
        self.started = time.monotonic()
        self.retire_by: Optional[float] = None  # replaced at a reload: SIGKILL after


class _Supervisor:
    """The supervisor's state: its workers, their lifeline, the signals noted."""

    def __init__(self, endpoint: Endpoint, service: Callable[[Listener], Coro],
                 grace: Optional[float]) -> None:
        self._endpoint = endpoint
        self._service = service
        self._grace = grace
        self._children: Dict[int, _Worker] = {}
        self._noted: List[int] = []             # signals since the last look
        self._reload_due = False
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
            self._endpoint.prepare(workers)
            for slot in range(workers):
                if self._start(slot) is None:
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
        """Whether a stop signal came since the last look; notes a reload
        request; forgets the rest (SIGCHLD only wakes: every wake-up reaps)."""
        stop = not _STOP.isdisjoint(self._noted)
        if _RELOAD in self._noted:
            self._reload_due = True
        self._noted.clear()
        return stop

    # -- workers --------------------------------------------------------------

    def _start(self, slot: int) -> Optional[int]:
        """Fork a worker for ``slot``; return once it listens (its pid) or
        has died trying (None)."""
        ready, ready_w = os.pipe()
        try:
            pid = _fork(lambda: self._work(slot, ready, ready_w))
        except BaseException:
            os.close(ready)
            raise
        finally:
            os.close(ready_w)
        self._children[pid] = _Worker(slot)
        try:
            # A byte once it listens: until then its port may refuse
            # connections. End of file: it died first (SIGCHLD follows).
            listening = os.read(ready, 1)
        finally:
            os.close(ready)
        if not listening:
            return None
        log.info("worker %d started", pid)
        return pid

    def _work(self, slot: int, ready: int, ready_w: int) -> None:
        """A worker's life, in the child (the watched signals still blocked)."""
        signal.set_wakeup_fd(-1)
        for signum, handler in self._saved.items():
            signal.signal(signum, _handler_or_default(handler))
        for fd in (ready, self._keeper, self._wake_r, self._wake_w):
            os.close(fd)
        listener = self._endpoint.listener(slot)
        os.write(ready_w, b"!")
        os.close(ready_w)
        run(_worker_root(self._service(listener), self._lifeline), handle_signals=True)

    def _reap(self) -> List[Tuple[int, _Worker, int]]:
        """``(pid, worker, wait status)`` of each worker that has ended."""
        ended = []
        for pid in list(self._children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                ended.append((pid, self._children.pop(pid), status))
        return ended

    def _signal_all(self, signum: int, replaced: bool = True) -> None:
        for pid, worker in self._children.items():
            if replaced or worker.retire_by is None:
                os.kill(pid, signum)  # not reaped yet, so the pid is still ours

    def _reload(self) -> None:
        """SIGHUP: a new worker for each slot, then the old ones stop as at
        a graceful stop (no new connections; ``grace`` for those in flight).
        Each new worker serves its slot's socket before the old one lets go
        of it, so no connection is refused or reset meanwhile."""
        old = [pid for pid, worker in self._children.items() if worker.retire_by is None]
        log.info("reloading: starting %d new worker(s)", len(old))
        new: List[int] = []
        for pid in old:
            started = self._start(self._children[pid].slot)
            if started is None:
                log.error("a new worker failed to start: the reload is abandoned and "
                          "the old workers go on")
                old = new  # the new ones that did start stop instead
                break
            new.append(started)
        retire_by = math.inf if self._grace is None else \
            time.monotonic() + self._grace + _KILL_MARGIN
        for pid in old:
            self._children[pid].retire_by = retire_by
            os.kill(pid, signal.SIGTERM)

    def _kill_overdue(self) -> Optional[float]:
        """SIGKILL the replaced workers that are still there past their
        time; seconds until the next one is due (None: none is)."""
        now = time.monotonic()
        due = None
        for pid, worker in self._children.items():
            if worker.retire_by is None or worker.retire_by == math.inf:
                continue
            if worker.retire_by <= now:
                log.warning("replaced worker %d still running %g s after SIGTERM: killing it",
                            pid, (self._grace or 0) + _KILL_MARGIN)
                os.kill(pid, signal.SIGKILL)
                worker.retire_by = math.inf  # reaped when its SIGCHLD comes
            elif due is None or worker.retire_by - now < due:
                due = worker.retire_by - now
        return due

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
            if self._reload_due:
                self._reload_due = False
                self._reload()
            # Reaped before every wait: a worker may have ended while this
            # was pausing or starting another, its SIGCHLD already taken.
            ended = self._reap()
            if not ended:
                self._wait(self._kill_overdue())
            for pid, worker, status in ended:
                code = os.waitstatus_to_exitcode(status)
                if worker.retire_by is not None:
                    log.info("replaced worker %d stopped (status %d)", pid, code)
                    continue
                log.warning("worker %d exited with status %d; restarting", pid, code)
                if time.monotonic() - worker.started < _SHORTEST_LIFE and \
                        self._stopped_within(_RESTART_PAUSE):
                    return
                self._start(worker.slot)

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
        # The supervisor's copies first: once the workers close theirs, new
        # connections are refused rather than queued for nobody.
        self._endpoint.close()
        # Those replaced at a reload have had theirs: another would be "stop now".
        self._signal_all(signal.SIGTERM, replaced=False)
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
    # The supervisor answers Ctrl-C (sent to the whole process group) and
    # SIGHUP (a terminal's hang-up too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
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
