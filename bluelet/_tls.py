"""TLS over a Connection: the handshake and every read and write are non-blocking.

A ``TLSConnection`` is a ``Connection`` whose two hooks, ``_receive`` and
``_transmit``, go through ``ssl.SSLSocket`` calls retried by
``_nonblocking.retry`` instead of the core's plain-socket events. The
core's events would be wrong here: OpenSSL keeps decrypted bytes the kernel
does not know about (so "readable" cannot be trusted), and a read may need
the socket to be writable (and the other way round) during a handshake.

The handshake happens on the first read or write, or explicitly with
``yield conn.handshake(timeout=...)``; ``connect(ssl=...)`` and ``server()``
do it before handing the connection over, so certificate errors surface
there.
"""

import errno
import socket
from typing import TYPE_CHECKING, Any, Generator, Optional

from ._connection import Connection, close_socket, with_timeout
from ._errors import SocketClosedError, Timeout
from ._impl import DelegationEvent, Event, WaitQueue, wait_readable, wait_writable
from ._nonblocking import retry
from ._records import Bytes

if TYPE_CHECKING:
    import ssl

__all__ = ["TLSConnection", "check_client_context", "check_server_context", "check_session",
           "secure", "wrap_client", "wrap_server"]

# The most one TLS read asks OpenSSL for: a record carries at most 16 KiB,
# and a read returns at most one record (asking for readexactly's 1 MiB made
# reading 64 MiB over loopback take 0.20 s instead of 0.16 s).
_MAX_READ = 64 * 1024


class TLSConnection(Connection):
    """A Connection over TLS; same events, plus ``handshake()``.

    ``sock`` is the ``ssl.SSLSocket``: ``conn.sock.getpeercert()``,
    ``version()``, ``cipher()``, ``selected_alpn_protocol()`` and
    ``session_reused`` describe the session once the handshake is done. TLS cannot half-close, so
    ``shutdown_write()`` raises NotImplementedError.
    """

    sock: "ssl.SSLSocket"

    def __init__(self, sock: "ssl.SSLSocket", addr: Any) -> None:
        super().__init__(sock, addr)
        self._handshaken = False
        # While one coroutine drives the handshake, the others that need it
        # park here (None: nobody is driving it).
        self._handshake_waiters: Optional[WaitQueue] = None

    def handshake(self, timeout: Optional[float] = None) -> "Event[None]":
        """Event: complete the TLS handshake (at once if already done).

        Certificate and protocol errors (``ssl.SSLError``) raise at the
        ``yield``.
        """
        self._check_open("handshake()")
        return with_timeout(DelegationEvent(self._handshake()), timeout)

    def _handshake(self) -> Generator[Any, Any, None]:
        while not self._handshaken:
            waiters = self._handshake_waiters
            if waiters is None:
                yield from self._drive_handshake()
            else:
                # Not on the socket as well: one readiness report wakes one
                # waiter, and the other could sleep through the handshake's
                # end (a reader and a writer, both first, would hang).
                yield waiters.wait()

    def _drive_handshake(self) -> Generator[Any, Any, None]:
        self._handshake_waiters = waiters = WaitQueue()
        failure: Optional[Exception] = None
        try:
            yield from retry(self.sock, wait_readable, self.sock.do_handshake)
            self._handshaken = True
        except Timeout:
            raise  # this driver's own deadline, not the others': one takes over
        except (OSError, SocketClosedError) as error:
            failure = error  # the handshake failed for everyone
            raise
        finally:
            # Cancelled or timed out: woken without an error, one of them
            # drives the handshake on.
            self._handshake_waiters = None
            waiters.wake_all(exc=failure)

    @property
    def tls_session(self) -> "Optional[ssl.SSLSession]":
        """The TLS session, for ``connect(..., session=...)`` to resume
        later (client side; None before the handshake). Under TLS 1.3 the
        server sends it after the handshake: take it after a first read."""
        return self.sock.session

    def start_tls(self, *args: Any, **kwargs: Any) -> "Event[TLSConnection]":
        """Refused: the connection is already TLS (ValueError)."""
        raise ValueError("start_tls() on a connection that is already TLS")

    def _receive(self, size: int) -> "Event[bytes]":
        # One read returns at most one record, but allocates all it asks for.
        return DelegationEvent(self._tls_read(self.sock.recv, min(size, _MAX_READ), b""))

    def _receive_into(self, view: memoryview) -> Generator[Any, Any, int]:
        count: int = yield from self._tls_read(self.sock.recv_into, view, 0)
        return count

    def _tls_read(self, read: Any, arg: Any, at_end: Any) -> Generator[Any, Any, Any]:
        yield from self._handshake()
        try:
            return (yield from retry(self.sock, wait_readable, read, arg))
        except BrokenPipeError:
            # OpenSSL 3.6 may write while reading (a TLS 1.3 session ticket
            # or key update); once the peer has closed, that write fails with
            # EPIPE. For a reader the stream has ended, as on a plain socket.
            return at_end

    def _transmit(self, data: Bytes, whole: bool) -> "Event[Any]":
        # The view is made here so bad data raises at the call, not the yield.
        return DelegationEvent(self._tls_transmit(memoryview(data).cast("B"), whole))

    def _tls_transmit(self, view: memoryview, whole: bool) -> Generator[Any, Any, Optional[int]]:
        yield from self._handshake()
        sock = self.sock
        sent = yield from retry(sock, wait_writable, sock.send, view)
        if not whole:
            return sent
        while sent < len(view):
            sent += yield from retry(sock, wait_writable, sock.send, view[sent:])
        return None

    def shutdown_write(self) -> None:
        """Not possible over TLS: raises NotImplementedError."""
        raise NotImplementedError("a TLS connection cannot half-close; close() it instead")

    def close(self) -> None:
        """Close now; after a handshake, first send TLS's close_notify if the
        socket has room (best effort: the peer's reply is not awaited)."""
        if not self._closed and self._handshaken:
            try:
                self.sock.unwrap()
            except (OSError, ValueError):
                pass  # close_notify went out if it could; the peer may be gone
        super().close()


def check_server_context(context: Any) -> None:
    """Raise, at the call, if ``context`` cannot serve TLS (None is no TLS)."""
    _check_context(context, "server", "PROTOCOL_TLS_CLIENT", "ssl.Purpose.CLIENT_AUTH")


def check_client_context(context: Any) -> None:
    """Raise, at the call, if ``context`` cannot connect over TLS (None is no TLS)."""
    _check_context(context, "client", "PROTOCOL_TLS_SERVER", "ssl.Purpose.SERVER_AUTH")


def _check_context(context: Any, side: str, wrong_protocol: str, purpose: str) -> None:
    if context is None:
        return
    # Imported here, not at the top: Python can be built without OpenSSL,
    # and then only TLS, not the rest of bluelet, is unavailable.
    import ssl
    if not isinstance(context, ssl.SSLContext):
        raise TypeError("ssl= needs an ssl.SSLContext, not %r" % (context,))
    if context.protocol == getattr(ssl, wrong_protocol):
        # Else every handshake would fail on it, not this call.
        other = "client" if side == "server" else "server"
        raise ValueError("ssl= needs a %s context, not a %s one (%s); make it with "
                         "ssl.create_default_context(%s)" % (side, other, wrong_protocol, purpose))


def wrap_server(context: "ssl.SSLContext", sock: socket.socket, addr: Any) -> TLSConnection:
    """The server side of TLS over accepted ``sock``; the handshake is left to do.

    Raises ConnectionAbortedError, with ``sock`` closed, if the client has
    already gone (reset before it was accepted).
    """
    sock.setblocking(False)
    try:
        # ssl refuses to wrap a socket whose peer has gone, and in one case
        # (a reset) leaves the descriptor to the garbage collector. Looking
        # first covers all but a reset that lands in between.
        sock.getpeername()
        tls_sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError as error:
        if sock.fileno() >= 0:  # else the failed SSLSocket took it
            close_socket(sock)
        if isinstance(error, ConnectionError) or error.errno == errno.ENOTCONN:
            raise ConnectionAbortedError(
                errno.ECONNABORTED, "the client left before it was accepted") from error
        raise
    return TLSConnection(tls_sock, addr)


def wrap_client(context: "ssl.SSLContext", sock: socket.socket, addr: Any,
                server_hostname: Optional[str],
                session: "Optional[ssl.SSLSession]" = None) -> TLSConnection:
    """The client side of TLS over connected ``sock``; the handshake is left to do."""
    sock.setblocking(False)
    return TLSConnection(context.wrap_socket(
        sock, server_hostname=server_hostname, do_handshake_on_connect=False,
        session=session), addr)


def check_session(session: Any) -> None:
    """Raise, at the call, if ``session`` is no ``ssl.SSLSession`` (None is none)."""
    if session is None:
        return
    import ssl
    if not isinstance(session, ssl.SSLSession):
        raise TypeError("session= needs an ssl.SSLSession (a TLSConnection's tls_session), "
                        "not %r" % (session,))


def secure(sock: socket.socket, addr: Any, context: "ssl.SSLContext", server_side: bool,
           server_hostname: Optional[str] = None,
           session: "Optional[ssl.SSLSession]" = None) -> Generator[Any, Any, TLSConnection]:
    """Coroutine: TLS over connected ``sock``, the handshake done; on any
    failure (a cancel included) the socket is closed."""
    try:
        if server_side:
            conn = wrap_server(context, sock, addr)
        else:
            conn = wrap_client(context, sock, addr, server_hostname, session)
    except BaseException:
        if sock.fileno() >= 0:  # else the failed SSLSocket took it and closed it
            close_socket(sock)
        raise
    try:
        yield conn.handshake()
    except BaseException:
        conn.close()
        raise
    return conn
