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

import socket
from typing import TYPE_CHECKING, Any, Generator, Optional

from ._connection import Connection, with_timeout
from ._impl import DelegationEvent, Event, wait_readable, wait_writable
from ._nonblocking import retry
from ._records import Bytes

if TYPE_CHECKING:
    import ssl

__all__ = ["TLSConnection", "wrap_client", "wrap_server"]


class TLSConnection(Connection):
    """A Connection over TLS; same events, plus ``handshake()``.

    ``sock`` is the ``ssl.SSLSocket``: ``conn.sock.getpeercert()``,
    ``version()``, ``cipher()`` and ``selected_alpn_protocol()`` describe
    the session once the handshake is done. TLS cannot half-close, so
    ``shutdown_write()`` raises NotImplementedError.
    """

    sock: "ssl.SSLSocket"

    def __init__(self, sock: "ssl.SSLSocket", addr: Any) -> None:
        super().__init__(sock, addr)
        self._handshaken = False

    def handshake(self, timeout: Optional[float] = None) -> Event:
        """Event: complete the TLS handshake (at once if already done).

        Certificate and protocol errors (``ssl.SSLError``) raise at the
        ``yield``.
        """
        self._check_open("handshake()")
        return with_timeout(DelegationEvent(self._handshake()), timeout)

    def _handshake(self) -> Generator[Any, Any, None]:
        if not self._handshaken:
            yield from retry(self.sock, wait_readable, self.sock.do_handshake)
            self._handshaken = True

    def _receive(self, size: int) -> Event:
        return DelegationEvent(self._tls_receive(size))

    def _tls_receive(self, size: int) -> Generator[Any, Any, bytes]:
        yield from self._handshake()
        return (yield from retry(self.sock, wait_readable, self.sock.recv, size))

    def _transmit(self, data: Bytes, whole: bool) -> Event:
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


def wrap_server(context: "ssl.SSLContext", sock: socket.socket, addr: Any) -> TLSConnection:
    """The server side of TLS over accepted ``sock``; the handshake is left to do."""
    sock.setblocking(False)
    return TLSConnection(context.wrap_socket(
        sock, server_side=True, do_handshake_on_connect=False), addr)


def wrap_client(context: "ssl.SSLContext", sock: socket.socket, addr: Any,
                server_hostname: Optional[str]) -> TLSConnection:
    """The client side of TLS over connected ``sock``; the handshake is left to do."""
    sock.setblocking(False)
    return TLSConnection(context.wrap_socket(
        sock, server_hostname=server_hostname, do_handshake_on_connect=False), addr)
