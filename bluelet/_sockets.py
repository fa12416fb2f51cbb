"""TCP sockets for coroutines: Listener, Connection, connect() and server().

Everything here only builds core events (``ReceiveEvent``, ``SendEvent``,
``AcceptEvent``, ``wait_writable``); the core does the waiting. Sockets are
non-blocking from the moment bluelet owns them.
"""

import errno
import socket
from typing import Any, Callable, Generator, Tuple, Union

from ._errors import SocketClosedError
from ._impl import (
    AcceptEvent,
    DelegationEvent,
    ReceiveEvent,
    SendEvent,
    ValueEvent,
    notify_closing,
    spawn,
    wait_writable,
)
from ._records import Bytes, Coro

__all__ = ["Listener", "Connection", "connect", "server"]

_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY)


def _close_socket(sock: socket.socket) -> None:
    # Tell the loop first: waiters must be woken while the fd is still ours.
    notify_closing(sock)
    sock.close()


def _bind_address(host: str, port: int) -> Tuple[int, Any]:
    """Family and address to bind; '' means every IPv4 address, as in 0.2.0."""
    if not host:
        return socket.AF_INET, ("", port)
    family, _, _, _, address = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    return family, address


class Listener:
    """A listening TCP socket (not an event); ``yield listener.accept()``.

    ``port`` 0 binds an ephemeral port; ``self.port`` is the real one.
    IPv6 addresses work. The backlog defaults to ``socket.SOMAXCONN`` so
    bursts of connections are queued, not refused.
    """

    def __init__(self, host: str, port: int, backlog: int = socket.SOMAXCONN) -> None:
        family, address = _bind_address(host, port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._closed = False
        self.host = host
        self.port: int = sock.getsockname()[1]
        self.sock = sock

    def accept(self) -> AcceptEvent:
        """Event: wait for a connection; the value is a Connection."""
        if self._closed:
            raise SocketClosedError("accept() on a closed Listener")
        return AcceptEvent(self)

    def _accepted(self, sock: socket.socket, addr: Any) -> "Connection":
        return Connection(sock, addr)

    def close(self) -> None:
        """Close the listening socket now (not an event)."""
        if not self._closed:
            self._closed = True
            _close_socket(self.sock)


class Connection:
    """A connected socket; its methods return events to ``yield``.

    Data read past a ``readline`` terminator is kept and served first by the
    next ``recv`` or ``readline``.
    """

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            # Request/response protocols must not wait for Nagle's timer.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.addr = addr
        self._buf = bytearray()
        self._closed = False

    def close(self) -> None:
        """Close the connection now (not an event)."""
        if not self._closed:
            self._closed = True
            _close_socket(self.sock)

    def _check_open(self, verb: str) -> None:
        if self._closed:
            raise SocketClosedError("%s() on a closed Connection" % verb)

    def recv(self, size: int) -> Union[ValueEvent, ReceiveEvent]:
        """Event: up to ``size`` bytes; b'' at end of stream."""
        self._check_open("recv")
        if size < 0:
            raise ValueError("recv() size must be >= 0, not %d" % size)
        buf = self._buf
        if buf:
            out = bytes(buf[:size])
            del buf[:size]
            return ValueEvent(out)
        return ReceiveEvent(self, size)

    def send(self, data: Bytes) -> SendEvent:
        """Event: send some of ``data``; the value is the number of bytes sent."""
        self._check_open("send")
        return SendEvent(self, data)

    def sendall(self, data: Bytes) -> SendEvent:
        """Event: send all of ``data``, waiting for room as needed."""
        self._check_open("sendall")
        return SendEvent(self, data, True)

    def readline(self, terminator: bytes = b"\n", bufsize: int = 1024) -> DelegationEvent:
        """Event: one line, terminator included; at EOF, whatever is left."""
        self._check_open("readline")
        if not terminator:
            raise ValueError("readline() terminator must not be empty")
        return DelegationEvent(self._readline(terminator, bufsize))

    def _readline(self, terminator: bytes, bufsize: int) -> Generator[Any, Any, bytes]:
        buf = self._buf
        start = 0
        while True:
            end = buf.find(terminator, start)
            if end >= 0:
                end += len(terminator)
                line = bytes(buf[:end])
                del buf[:end]
                return line
            # Resume the search where a terminator could still begin.
            start = max(len(buf) - len(terminator) + 1, 0)
            data = yield ReceiveEvent(self, bufsize)
            if not data:
                line = bytes(buf)
                buf.clear()
                return line
            buf += data


def _connect(host: str, port: int) -> Generator[Any, Any, Connection]:
    """Try each address of ``host`` in turn; the first that accepts wins."""
    error: Exception = OSError("getaddrinfo returned no address for %r" % (host,))
    for family, type_, proto, _, address in socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM):
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in _IN_PROGRESS:
                yield wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                # OSError picks the subclass: ConnectionRefusedError, ...
                raise OSError(code, "connect to %r: %s" % (address, errno.errorcode.get(code, code)))
        except Exception as exc:
            _close_socket(sock)
            error = exc
            continue
        except BaseException:
            _close_socket(sock)
            raise
        return Connection(sock, (host, port))
    raise error


def connect(host: str, port: int) -> DelegationEvent:
    """Event: connect to ``(host, port)``; the value is a Connection.

    The TCP handshake does not block other coroutines; a refused or failed
    connection raises at the ``yield``.
    """
    return DelegationEvent(_connect(host, port))


def _serve_one(handler: Callable[[Connection], Coro], conn: Connection) -> Coro:
    try:
        yield handler(conn)
    finally:
        conn.close()


def server(host: str, port: int, handler: Callable[[Connection], Coro]) -> Coro:
    """Coroutine: listen on ``(host, port)`` and spawn ``handler(conn)`` per client.

    Each connection is closed when its handler ends. KeyboardInterrupt stops
    the server quietly; the listener is closed in every case.
    """
    listener = Listener(host, port)
    try:
        while True:
            try:
                conn = yield listener.accept()
            except ConnectionAbortedError:
                # The client gave up before we accepted: not our failure.
                continue
            yield spawn(_serve_one(handler, conn))
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
