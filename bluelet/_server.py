"""serve() and server(): the accept loop every bluelet server runs.

``serve(listener, handler)`` accepts connections on a ``Listener`` and
spawns one coroutine per connection, which runs ``handler(conn)`` and
closes ``conn`` when it ends. ``server(host, port, handler)`` makes the
listener first (0.2.0's call), or with ``workers=N`` supervises N
processes that each run ``serve`` (``_prefork.py``). The command line's
servers run the same loop.

Failures, and what each one costs
    - A handler raises. ``handler_errors="log"`` (the default): logged on
      the "bluelet.server" logger, what a peer can cause (``OSError``: a
      reset, a timeout; ``IncompleteRead``: a hang-up mid-message) at
      DEBUG, ``LimitExceeded`` (an over-long line, which 0.2.0 accepted: a
      program moving over must see it) at WARNING, anything else at ERROR
      with its traceback; only that connection ends. ``"raise"``:
      the exception ends ``run()`` as any unjoined failure does (0.2.0's
      behaviour). ``Cancelled`` is never caught.
    - ``accept`` finds the process out of descriptors (EMFILE, ENFILE) or
      the kernel out of buffers (ENOBUFS, ENOMEM). The connection stays in
      the kernel's queue, so the listener stays readable: accepting again
      at once would spin. The loop logs a warning (at most one every
      ``_WARN_EVERY`` seconds) and waits until one of its handlers ends,
      which frees a descriptor, or a timer fires: 10 ms, doubling up to 1 s
      while the shortage lasts (descriptors may also be freed elsewhere).
    - ``accept`` fails for the one connection being accepted
      (ECONNABORTED, EPROTO, ...; Linux's accept(2) says to treat these
      like EAGAIN): skipped.
    - TLS: each connection's handshake runs in its own coroutine, bounded
      by ``handshake_timeout``, never in the accept loop; a failed one is
      logged at DEBUG and that connection closed.

Stopping
    KeyboardInterrupt at the loop's ``yield`` (Ctrl-C or SIGTERM under
    ``run(handle_signals=True)``: the core raises it in the root's
    innermost coroutine, which is this loop when it is the root or the
    root delegates to it), or the listener closed by its owner: the
    listener is closed at once, the handlers still running get ``grace``
    seconds to finish, the rest are cancelled (``Cancelled`` at their
    ``yield``, so their ``finally`` blocks run), and ``serve`` returns. A
    second KeyboardInterrupt during the grace period cancels them at once.
    Under a plain ``bluelet.run()`` (0.2.0's ``run(server(...))``) a
    Ctrl-C would raise wherever Python is, often inside a handler; so
    while it runs in the main thread with SIGINT at Python's default,
    ``serve`` routes Ctrl-C to the loop as ``handle_signals`` does
    (``_signals.take_ctrl_c``) and gives SIGINT back when it ends.

    A ``kill`` of the loop cannot wait for anything: the core raises
    ``Cancelled`` in it and no ``yield`` may run. Its ``finally`` closes
    the listener and releases a *reaper*, a coroutine spawned at the start
    for this and parked until then, which cancels the handlers on its next
    turn. Handlers that had not started yet are closed there and then.
"""

import errno
import inspect
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Generator, Optional

from . import _prefork, _threaded
from ._connection import Connection
from ._errors import IncompleteRead, LimitExceeded, SocketClosedError, Timeout
from ._coroutines import awaitable, not_started
from ._impl import WaitQueue, iscoroutine, kill, spawn, timeout
from ._listener import Listener, check_backlog
from ._records import AnyCoro, Coro, Op
from ._signals import take_ctrl_c
from ._tls import TLSConnection, check_server_context

if TYPE_CHECKING:
    import ssl

__all__ = ["Handler", "serve", "server"]

#: A connection handler: called with each Connection, returns its coroutine.
Handler = Callable[[Connection], AnyCoro]

log = logging.getLogger("bluelet.server")

#: accept() errors that mean "out of a resource for now", not "broken".
_RESOURCE_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
#: accept() errors about the one connection being accepted, not the listener.
_PEER_ERRORS = frozenset(getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "ENOPROTOOPT", "ENETDOWN", "ENETUNREACH", "EHOSTDOWN",
    "EHOSTUNREACH", "ENONET", "EOPNOTSUPP", "EPERM") if hasattr(errno, name))

_FIRST_PAUSE = 0.01   # seconds: the first wait after an exhausted accept
_LAST_PAUSE = 1.0     # the longest wait: how late freed descriptors may be noticed
_WARN_EVERY = 10.0    # seconds between two warnings about exhaustion

_HANDLER_ERRORS = ("log", "raise")

#: What a peer can make a handler raise: routine for a server, logged at DEBUG.
_PEER_CONDUCT = (OSError, IncompleteRead)


def serve(listener: Listener, handler: Handler, *, handler_errors: str = "log",
          grace: Optional[float] = 10.0, handshake_timeout: Optional[float] = 60.0) -> Coro:
    """Coroutine: accept connections on ``listener``; run ``handler(conn)`` for each.

    Each handler runs in a coroutine of its own, and its connection is
    closed when it ends. ``handler_errors`` says what an exception
    escaping a handler does: ``"log"`` (the default) logs it on the
    "bluelet.server" logger (what a peer can cause -- ``OSError``,
    ``IncompleteRead`` -- at DEBUG, ``LimitExceeded`` at WARNING, anything
    else at ERROR with its traceback) and ends only that connection; ``"raise"``
    lets it end ``run()``. When the process runs out of descriptors,
    accepting pauses (a warning is logged) until a handler ends or a
    timer of up to 1 s fires. A listener made with ``ssl=`` has each
    connection's TLS handshake done before its handler starts, within
    ``handshake_timeout`` seconds (``None``: no limit); a failed handshake
    is logged at DEBUG and the connection closed.

    Stopping: a KeyboardInterrupt at this coroutine's ``yield`` (Ctrl-C, or
    SIGTERM under ``run(..., handle_signals=True)``, when this is the root
    or the root delegates to it), or ``listener.close()`` by its owner,
    stops accepting at once (new connections are refused), lets the
    running handlers finish for up to ``grace`` seconds (``None``: as long
    as they take), cancels the rest and returns None. A second
    KeyboardInterrupt during that time cancels them at once. If this
    coroutine is killed instead, the listener is closed before the kill
    returns and the running handlers are cancelled on the loop's next turn
    (a kill cannot wait for them); a kill before its first turn ran
    nothing, and leaves the listener to its owner. Ctrl-C stops it so
    wherever it lands, not only while the loop waits: in the main thread
    under ``bluelet.run()``, with SIGINT at Python's default handler,
    ``serve`` routes SIGINT to the loop while it runs.
    """
    if not isinstance(listener, Listener):
        raise TypeError("serve() needs a bluelet.Listener, not %r" % (listener,))
    _check_options(handler, handler_errors, grace, handshake_timeout)
    return _Server(listener, handler, handler_errors == "raise", grace, handshake_timeout).run()


def server(host: str, port: int, handler: Handler, *, handler_errors: str = "log",
           grace: Optional[float] = 10.0, handshake_timeout: Optional[float] = 60.0,
           workers: int = 1, threads: int = 1, ssl: "Optional[ssl.SSLContext]" = None,
           backlog: int = socket.SOMAXCONN) -> Coro:
    """Coroutine: listen on ``(host, port)`` and serve ``handler`` as ``serve()`` does.

    ``bluelet.run(bluelet.server(host, port, handler))`` is 0.2.0's server:
    one ``handler(conn)`` coroutine per client, its connection closed when
    it ends; Ctrl-C stops it (gracefully now: see ``serve()``) and
    ``run()`` returns None. The listening socket is made when the
    coroutine starts, with ``backlog`` and, given an ``ssl.SSLContext``,
    TLS. ``handler_errors``, ``grace`` and ``handshake_timeout`` are
    ``serve()``'s.

    ``workers=N`` (N > 1, POSIX only) serves from N pre-forked processes
    on one port, each running ``serve`` under
    ``run(..., handle_signals=True)``. This coroutine must then be the
    program's root, alone in its loop (``bluelet.run(server(...,
    workers=4))``): the process becomes a supervisor and its loop runs
    nothing else until the end. It restarts a worker that dies (at most
    one restart a second for a worker that dies at start-up); on SIGINT or
    SIGTERM it sends SIGTERM to every worker, which stops as above, and
    SIGKILL to any still running ``grace`` + 1 s later; then this returns
    None. Workers stop by themselves if the supervisor dies. A worker
    runs a loop of its own and never returns into the supervisor's; it
    ends with ``os._exit``. The address served and the workers' comings and goings
    are logged at INFO and WARNING on the "bluelet.server" logger.

    ``threads=N`` (N > 1; a free-threaded Python with the GIL off, on
    Linux) serves from N loops in N threads of this process instead, each
    accepting on its own SO_REUSEPORT listener, so the loops run on N CPUs
    at once; this coroutine's loop only waits for them. Ctrl-C (a
    KeyboardInterrupt at its ``yield``) stops them all as it stops
    ``serve()``. With the GIL it raises ``RuntimeError`` pointing to
    ``workers=N``.
    """
    _check_options(handler, handler_errors, grace, handshake_timeout)
    for name, count in (("workers", workers), ("threads", threads)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("server() %s must be an int >= 1, not %r" % (name, count))
    if workers > 1 and threads > 1:
        raise ValueError("server() takes workers=N or threads=N, not both")
    # Here, not where the listener is made: with workers, that is in each
    # worker, which would die of it and be restarted again and again.
    check_server_context(ssl)
    check_backlog(backlog)
    raise_errors = handler_errors == "raise"

    def service(listener: Listener) -> Coro:
        return _Server(listener, handler, raise_errors, grace, handshake_timeout).run()

    if threads > 1:
        _threaded.check_available(threads)
        return _threaded.threaded(host, port, backlog, ssl, threads, service, grace)
    if workers == 1:
        return _listen_and_serve(host, port, backlog, ssl, handler, raise_errors, grace,
                                 handshake_timeout)
    _prefork.check_available(workers)
    return _prefork.supervisor(host, port, backlog, ssl, workers, service, grace)


def _check_options(handler: Any, handler_errors: Any, grace: Any, handshake_timeout: Any) -> None:
    """Raise at the call for options serve() would trip over later."""
    if not callable(handler):
        raise TypeError("the handler must be callable (conn -> coroutine), not %r" % (handler,))
    if inspect.isasyncgenfunction(handler):
        raise TypeError("the handler %r is an async generator; a handler is a generator "
                        "function (def with yield) or an async def" % (handler,))
    if handler_errors not in _HANDLER_ERRORS:
        raise ValueError("handler_errors must be 'log' or 'raise', not %r" % (handler_errors,))
    for name, value in (("grace", grace), ("handshake_timeout", handshake_timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value >= 0):
            raise ValueError("%s must be a number of seconds >= 0 or None, not %r"
                             % (name, value))


@awaitable
def _listen_and_serve(host: str, port: int, backlog: int, ssl: "Optional[ssl.SSLContext]",
                      handler: Handler, raise_errors: bool, grace: Optional[float],
                      handshake_timeout: Optional[float]) -> Coro:
    if ssl is None and backlog == socket.SOMAXCONN:
        # 0.2.0's server() looks ``Listener`` up in the package when it
        # starts and calls it as Listener(host, port); programs patch it to
        # learn the port bound for port 0 (beets' BPD tests do), so the
        # package attribute is taken here, not this module's binding.
        import bluelet
        listener = bluelet.Listener(host, port)
    else:
        listener = Listener(host, port, backlog, ssl=ssl)
    return (yield from _Server(listener, handler, raise_errors, grace, handshake_timeout).run())


class _Shortage:
    """The backoff while accept() finds no descriptor (or no memory) to give."""

    def __init__(self) -> None:
        self.pause = 0.0                     # 0: no shortage now
        self.warned_at: Optional[float] = None
        self.unreported = 0                  # failed accepts not warned about

    def next_pause(self, error: OSError, listener: Listener) -> float:
        """Seconds to wait before accepting again; warns now and then."""
        now = time.monotonic()
        if self.warned_at is None or now - self.warned_at >= _WARN_EVERY:
            log.warning("accept on %r: %s; new connections wait until one ends%s",
                        listener, error, " (%d more since the last warning)"
                        % self.unreported if self.unreported else "")
            self.warned_at = now
            self.unreported = 0
        else:
            self.unreported += 1
        self.pause = min(max(self.pause * 2, _FIRST_PAUSE), _LAST_PAUSE)
        return self.pause

    def over(self) -> None:
        if self.pause:
            log.info("accepting again")
            self.pause = 0.0


class _Server:
    """One serve() call: its accept loop, its live handlers, its stop."""

    def __init__(self, listener: Listener, handler: Handler, raise_errors: bool,
                 grace: Optional[float], handshake_timeout: Optional[float]) -> None:
        self._listener = listener
        self._handler = handler
        self._raise_errors = raise_errors
        self._grace = grace
        self._handshake_timeout = handshake_timeout
        self._live: Dict[Connection, AnyCoro] = {}   # each open connection's coroutine
        self._ended = WaitQueue()                 # the loop waits here for a handler to end
        self._reaper_wait = WaitQueue()           # the reaper waits here for the end
        self._over = False                        # the loop has ended, however it did

    # -- the loop ------------------------------------------------------------

    @awaitable
    def run(self) -> Coro:
        give_back_ctrl_c = take_ctrl_c()
        yield spawn(self._reaper())
        try:
            try:
                yield from self._accept()
            except KeyboardInterrupt:
                pass
            self._listener.close()  # refuse new connections during the grace period
            yield from self._drain()
        finally:
            self._listener.close()
            self._over = True
            for conn, coro in self._live.items():
                if not_started(coro):
                    # A kill of it would end it without running a line, so
                    # nothing would close its connection: close it now.
                    conn.close()
            self._reaper_wait.wake()
            give_back_ctrl_c()

    def _accept(self) -> Coro:
        """Accept and spawn until KeyboardInterrupt or the listener is closed."""
        shortage = _Shortage()
        while True:
            try:
                conn = yield self._listener.accept()
            except SocketClosedError:
                return  # closed by its owner: a stop, as for Ctrl-C
            except OSError as error:
                if error.errno in _RESOURCE_ERRORS:
                    try:
                        yield timeout(shortage.next_pause(error, self._listener),
                                      self._ended.wait())
                    except Timeout:
                        pass
                elif not isinstance(error, ConnectionAbortedError) and \
                        error.errno not in _PEER_ERRORS:
                    raise
                continue
            shortage.over()
            coro = self._connection(conn)
            self._live[conn] = coro
            yield spawn(coro)

    # -- one connection -------------------------------------------------------

    def _connection(self, conn: Connection) -> Coro:
        try:
            if conn.closed:
                return  # the server stopped before this coroutine's first turn
            if isinstance(conn, TLSConnection) and not (yield from self._handshake(conn)):
                return
            if self._raise_errors:
                yield self._handle(conn)
            else:
                yield from self._logged(conn)
        finally:
            del self._live[conn]
            conn.close()
            self._ended.wake()

    def _handshake(self, conn: TLSConnection) -> Generator[Any, Any, bool]:
        try:
            yield conn.handshake(timeout=self._handshake_timeout)
        except OSError as error:  # ssl.SSLError, Timeout, a reset
            log.debug("TLS handshake with %s failed: %r", conn.addr, error)
            return False
        return True

    def _handle(self, conn: Connection) -> AnyCoro:
        """``handler(conn)``, checked: a plain function's None would
        otherwise fail at the yield with a message that names no handler."""
        coro = self._handler(conn)
        if not iscoroutine(coro):
            raise TypeError("the handler %s returned %r, not a coroutine: it must be a "
                            "generator function (a def with yield) or an async def "
                            "taking the connection"
                            % (getattr(self._handler, "__qualname__", self._handler), coro))
        return coro

    def _logged(self, conn: Connection) -> Coro:
        try:
            yield self._handle(conn)
        except _PEER_CONDUCT as error:
            log.debug("connection from %s ended by %r", conn.addr, error)
        except LimitExceeded as error:
            log.warning("connection from %s ended: %s (readline()/readuntil() take "
                        "limit= for longer records)", conn.addr, error)
        except Exception:
            log.error("handler %s failed on the connection from %s",
                      getattr(self._handler, "__qualname__", self._handler), conn.addr,
                      exc_info=True)

    # -- stopping -------------------------------------------------------------

    def _drain(self) -> Generator[Any, Any, None]:
        """Give the live handlers ``grace`` seconds, then cancel the rest."""
        if self._live:
            log.info("stopping: waiting up to %s for %d connection(s) to finish",
                     "%g s" % self._grace if self._grace is not None else "no limit",
                     len(self._live))
            try:
                if self._grace is None:
                    yield from self._all_ended()
                else:
                    yield timeout(self._grace, self._all_ended())
            except (Timeout, KeyboardInterrupt):
                pass
            if self._live:
                log.warning("stopping: cancelling %d connection(s) still open", len(self._live))
        yield from self._cancel_live()

    def _all_ended(self) -> Generator[Any, Any, None]:
        while self._live:
            yield self._ended.wait()

    def _cancel_live(self) -> Generator[Any, Any, None]:
        for conn, coro in list(self._live.items()):
            yield kill(coro)
            # One killed before its first turn ran no finally block (its
            # connection was closed when the loop ended).
            self._live.pop(conn, None)

    def _reaper(self) -> Generator[Any, Any, None]:
        """Cancel the live handlers once the loop has ended, if it could not."""
        if not self._over:
            yield self._reaper_wait.wait()
        yield from self._cancel_live()
