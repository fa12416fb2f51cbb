"""Connection: a connected stream socket whose methods return events.

Plain TCP and Unix connections use the core's own socket events
(``ReceiveEvent``, ``SendEvent``), the per-event hot path; ``_tls.py``
subclasses ``Connection`` and swaps the two hooks ``_receive`` and
``_transmit`` for TLS-aware ones, so every helper here (``readline``,
``readexactly``, ...) works over TLS unchanged.

The read buffer
    ``readline``, ``readuntil`` and ``readexactly`` read in chunks and keep
    what they read past what they return; the next read of any kind serves
    that first. A timeout, a kill or a limit leaves the buffered bytes in
    place (they are taken only once the reader runs), so the stream stays
    consistent and the connection usable.
"""

import operator
import os
import socket
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Generator, Optional, TypeVar

from ._errors import IncompleteRead, LimitExceeded, SocketClosedError
from ._impl import (
    DelegationEvent,
    Event,
    ReceiveEvent,
    SendEvent,
    end,
    later,
    notify_closing,
    timeout,
    wait_readable,
    wait_writable,
)
from ._nonblocking import retry
from ._records import Bytes
from ._threads import to_thread

if TYPE_CHECKING:
    import ssl

    from ._tls import TLSConnection

__all__ = ["Connection", "DEFAULT_LIMIT", "close_socket", "with_timeout"]

#: The longest line or record ``readline``/``readuntil`` accept by default.
DEFAULT_LIMIT = 64 * 1024

# How much readexactly/readuntil ask the kernel for at a time: big enough to
# take a whole burst in one call, bounded so a huge n does not allocate n.
_CHUNK = 64 * 1024
_MAX_CHUNK = 1024 * 1024

_T = TypeVar("_T")


def close_socket(sock: socket.socket) -> None:
    """Close ``sock``, telling the loop first: its waiters must be woken
    (with SocketClosedError) while the descriptor still belongs to us."""
    notify_closing(sock)
    sock.close()


def with_timeout(event: "Event[_T]", seconds: Optional[float]) -> "Event[_T]":
    """``event``, or ``event`` bounded by ``seconds`` (raising Timeout)."""
    return event if seconds is None else timeout(seconds, event)


class Connection:
    """A connected socket; its methods return events to ``yield``.

    Every waiting method takes ``timeout=`` (seconds): when it runs out,
    ``bluelet.Timeout`` is raised at the ``yield``. After a timed-out read
    the connection is intact (what arrived stays buffered); after a
    timed-out ``send``/``sendall``/``sendfile`` an unknown part of the data
    has gone out, so the stream is only good for closing.

    Usable as a context manager, which closes it.
    """

    #: Whether a failed socket operation ends the coroutine that yielded it
    #: (its caller gets None) instead of raising there: bluelet 0.2.0's
    #: semantics, which ``bluelet.compat``'s connections keep.
    _ends_on_error = False

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            # Request/response protocols must not wait for Nagle's timer.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.addr = addr
        self._buf = bytearray()
        self._closed = False

    def __repr__(self) -> str:
        if self._closed:
            return "<%s closed>" % type(self).__name__
        return "<%s fd=%d peer=%r>" % (type(self).__name__, self.sock.fileno(), self.addr)

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection now (not an event); closing twice is harmless.

        Coroutines waiting on it get ``SocketClosedError`` at their ``yield``.
        """
        if not self._closed:
            self._closed = True
            close_socket(self.sock)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._closed

    def fileno(self) -> int:
        """The socket's descriptor."""
        self._check_open("fileno")
        return self.sock.fileno()

    @property
    def peername(self) -> Any:
        """The address of the other end, as ``socket.getpeername()`` gives it."""
        self._check_open("peername")
        return self.sock.getpeername()

    @property
    def sockname(self) -> Any:
        """This end's address, as ``socket.getsockname()`` gives it."""
        self._check_open("sockname")
        return self.sock.getsockname()

    def _check_open(self, verb: str) -> None:
        if self._closed:
            raise SocketClosedError("%s on a closed %s" % (verb, type(self).__name__))

    # -- the two hooks TLS replaces ----------------------------------------

    def _receive(self, size: int) -> "Event[bytes]":
        """Event: up to ``size`` bytes from the socket (not the buffer)."""
        return ReceiveEvent(self, size)

    def _transmit(self, data: Bytes, whole: bool) -> "Event[Any]":
        """Event: send some of ``data`` (value: the count), or all of it."""
        return SendEvent(self, data, whole)

    def _receive_into(self, view: memoryview) -> Generator[Any, Any, int]:
        """Coroutine: receive into ``view`` from the socket; the count."""
        # Read only when this coroutine runs, so a cancel loses nothing.
        return (yield from retry(self.sock, wait_readable, self.sock.recv_into, view))

    # -- reading -------------------------------------------------------------

    def _more(self, size: int) -> "Event[bytes]":
        """``_receive`` for a helper's next step. Between steps another
        coroutine may have closed the connection: say so, as a waiter
        would be told, rather than fail on the dead descriptor."""
        self._check_open("read")
        return self._receive(size)

    def recv(self, size: int, timeout: Optional[float] = None) -> "Event[bytes]":
        """Event: up to ``size`` bytes; b'' at end of stream."""
        # The per-request path: checks inlined, no helper calls when all is well.
        if self._closed:
            self._check_open("recv()")
        if type(size) is not int or size < 0:
            size = _count(size, "recv() size")
        if self._buf:
            # Resumed on the next pass, as 0.2.0's ValueEvent of buffered
            # bytes was; taken only then, so a Timeout or kill landing at the
            # reader's yield leaves them buffered.
            event = later(self._take, size)
        else:
            event = self._receive(size)
        return event if timeout is None else with_timeout(event, timeout)

    def recv_into(self, buffer: Any, nbytes: int = 0, *,
                  timeout: Optional[float] = None) -> "Event[int]":
        """Event: receive up to ``nbytes`` bytes (0: as many as ``buffer``
        holds) into ``buffer``, a writable bytes-like object such as a
        ``bytearray`` or a ``memoryview`` of one; the value is how many
        came, 0 at end of stream. Nothing is allocated per read.

        Bytes that ``readline`` and the like read ahead come first. A
        buffer that is not writable, or has no room, raises at the call.
        """
        if self._closed:
            self._check_open("recv_into()")
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise TypeError("recv_into() needs a writable buffer, not %r" % (type(buffer),))
        nbytes = _count(nbytes, "recv_into() nbytes") or len(view)
        if nbytes > len(view):
            raise ValueError("recv_into() nbytes %d is more than the buffer's %d bytes"
                             % (nbytes, len(view)))
        if nbytes == 0:
            # A 0-byte receive returns 0, which would pass for end of stream.
            raise ValueError("recv_into() needs a buffer with room for a byte")
        return with_timeout(DelegationEvent(self._recv_into(view[:nbytes])), timeout)

    def _recv_into(self, view: memoryview) -> Generator[Any, Any, int]:
        buf = self._buf
        if buf:
            count = min(len(buf), len(view))
            view[:count] = buf[:count]
            del buf[:count]
            return count
        self._check_open("recv_into()")
        return (yield from self._receive_into(view))

    def _take(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes."""
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readline(self, terminator: bytes = b"\n", bufsize: int = 1024, *,
                 limit: int = DEFAULT_LIMIT, timeout: Optional[float] = None) -> "Event[bytes]":
        """Event: one line, terminator included; at EOF, whatever is left.

        A line longer than ``limit`` bytes raises ``bluelet.LimitExceeded``
        (the bytes stay buffered), so a peer that never sends the
        terminator cannot make this buffer without bound. ``bufsize`` is
        how much to ask the socket for at a time.
        """
        self._check_open("readline()")
        _check_separator(terminator, limit, "readline")
        if _count(bufsize, "readline() bufsize") == 0:
            # A 0-byte receive returns b'', which would pass for end of stream.
            raise ValueError("readline() bufsize must be >= 1")
        return with_timeout(DelegationEvent(self._read_until(terminator, limit, bufsize, True)),
                            timeout)

    def readuntil(self, separator: bytes = b"\n", *, limit: int = DEFAULT_LIMIT,
                  timeout: Optional[float] = None) -> "Event[bytes]":
        """Event: the bytes up to and including ``separator``.

        Raises ``bluelet.IncompleteRead`` if the stream ends first (its
        ``partial`` holds what came) and ``bluelet.LimitExceeded`` if
        ``limit`` bytes pass without the separator.
        """
        self._check_open("readuntil()")
        _check_separator(separator, limit, "readuntil")
        return with_timeout(DelegationEvent(self._read_until(separator, limit, _CHUNK, False)),
                            timeout)

    def _read_until(self, separator: bytes, limit: int, bufsize: int,
                    eof_ends_line: bool) -> Generator[Any, bytes, bytes]:
        buf = self._buf
        start = 0
        # A record ends with ``yield end(...)`` as 0.2.0's readline did: one
        # pass more than a return, and programs written for it see passes.
        while True:
            stop = buf.find(separator, start)
            if stop >= 0:
                stop += len(separator)
                if stop > limit:
                    raise LimitExceeded("a %d-byte record is over the limit of %d bytes"
                                        % (stop, limit))
                line = bytes(buf[:stop])
                del buf[:stop]
                return (yield end(line))
            if len(buf) >= limit:
                raise LimitExceeded("no %r in the first %d bytes (the limit)" % (separator, limit))
            # Resume the search where a separator could still begin.
            start = max(len(buf) - len(separator) + 1, 0)
            data = yield self._more(bufsize)
            if not data:
                rest = bytes(buf)
                buf.clear()
                if eof_ends_line:
                    return (yield end(rest))
                raise IncompleteRead(rest, None)
            buf += data

    def readexactly(self, n: int, *, timeout: Optional[float] = None) -> "Event[bytes]":
        """Event: exactly ``n`` bytes.

        Raises ``bluelet.IncompleteRead`` if the stream ends first; its
        ``partial`` holds the bytes that came.
        """
        self._check_open("readexactly()")
        n = _count(n, "readexactly() n")
        return with_timeout(DelegationEvent(self._readexactly(n)), timeout)

    def _readexactly(self, n: int) -> Generator[Any, Any, bytes]:
        buf = self._buf
        while len(buf) < n:
            data = yield self._more(min(max(n - len(buf), _CHUNK), _MAX_CHUNK))
            if not data:
                partial = bytes(buf)
                buf.clear()
                raise IncompleteRead(partial, n)
            buf += data
        out = bytes(buf[:n])
        del buf[:n]
        return out

    # -- writing -------------------------------------------------------------

    def send(self, data: Bytes, timeout: Optional[float] = None) -> "Event[int]":
        """Event: send some of ``data``; the value is the number of bytes sent."""
        if self._closed:
            self._check_open("send()")
        event = self._transmit(data, False)
        return event if timeout is None else with_timeout(event, timeout)

    def sendall(self, data: Bytes, timeout: Optional[float] = None) -> "Event[None]":
        """Event: send all of ``data``, waiting for room as needed.

        Nothing is copied or queued: while the peer does not read, the
        coroutine waits, so a slow reader costs no memory beyond ``data``.
        """
        if self._closed:
            self._check_open("sendall()")
        event = self._transmit(data, True)
        return event if timeout is None else with_timeout(event, timeout)

    def sendfile(self, file: BinaryIO, offset: int = 0, count: Optional[int] = None, *,
                 timeout: Optional[float] = None) -> "Event[int]":
        """Event: send ``count`` bytes of regular file ``file`` from ``offset``
        (to its end if ``count`` is None); the value is the number sent.

        Uses ``os.sendfile`` where the platform has it (the kernel copies
        the data); otherwise reads in a worker thread and sends. The file's
        position is not used or moved.
        """
        self._check_open("sendfile()")
        fd = file.fileno()
        if offset < 0 or (count is not None and count < 0):
            raise ValueError("sendfile() needs offset and count >= 0")
        return with_timeout(DelegationEvent(self._sendfile(fd, offset, count)), timeout)

    def _sendfile(self, fd: int, offset: int, count: Optional[int]) -> Generator[Any, Any, int]:
        sent = 0
        while count is None or sent < count:
            size = _MAX_CHUNK if count is None else min(count - sent, _MAX_CHUNK)
            done = yield from self._send_file_chunk(fd, offset + sent, size)
            if not done:
                break  # end of file
            sent += done
        return sent

    def _send_file_chunk(self, fd: int, offset: int, size: int) -> Generator[Any, Any, int]:
        """Send up to ``size`` bytes of ``fd`` at ``offset``; 0 at end of file.

        Another coroutine may close the connection while this one is between
        two steps (or reading in a thread): each step checks first, so that
        is a SocketClosedError, not an error about a dead descriptor.
        """
        self._check_open("sendfile()")
        if hasattr(os, "sendfile") and type(self.sock) is socket.socket:
            return (yield from retry(self.sock, wait_writable, os.sendfile,
                                     self.sock.fileno(), fd, offset, size))
        data = yield to_thread(_read_at, fd, size, offset)
        if data:
            self._check_open("sendfile()")
            yield self._transmit(data, True)
        return len(data)

    def start_tls(self, context: "ssl.SSLContext", *, server_side: bool = False,
                  server_hostname: Optional[str] = None,
                  session: "Optional[ssl.SSLSession]" = None,
                  timeout: Optional[float] = None) -> "Event[TLSConnection]":
        """Event: upgrade to TLS in mid-stream (STARTTLS: SMTP, IMAP,
        PostgreSQL...); the value is a ``TLSConnection`` over the same
        socket, its handshake done.

        ``context`` is a client context, with ``server_hostname`` to check
        the certificate against and optionally a ``session`` to resume, or
        a server context with ``server_side=True``. This Connection is used
        up: its methods raise ``SocketClosedError``, as they do for
        coroutines still waiting on it. Plaintext read ahead past the
        upgrade request (by ``readline``, say) is refused with ValueError:
        it arrived before the handshake, and taking it as if it came over
        TLS is the STARTTLS injection attack (CVE-2011-0411). If the
        handshake fails or times out, the socket is closed.
        """
        from ._tls import check_client_context, check_server_context, check_session, secure

        self._check_open("start_tls()")
        if server_side:
            check_server_context(context)
            if server_hostname is not None or session is not None:
                raise ValueError("server_hostname and session are for the client side")
        else:
            check_client_context(context)
            check_session(session)
        if context is None:
            raise TypeError("start_tls() needs an ssl.SSLContext, not None")
        return with_timeout(DelegationEvent(self._start_tls(secure, context, server_side,
                                                            server_hostname, session)), timeout)

    def _start_tls(self, secure: "Callable[..., Generator[Any, Any, TLSConnection]]",
                   *args: Any) -> Generator[Any, Any, "TLSConnection"]:
        self._check_open("start_tls()")
        if self._buf:
            raise ValueError("start_tls(): %d bytes of plaintext came after the upgrade request "
                             "and before the handshake; they cannot be trusted as TLS data"
                             % len(self._buf))
        sock, self._closed = self.sock, True
        notify_closing(sock)  # whoever still waits on the plaintext side
        return (yield from secure(sock, self.addr, *args))

    def shutdown_write(self) -> None:
        """Half-close: tell the peer no more data comes (it reads EOF);
        reading goes on. Not an event."""
        self._check_open("shutdown_write()")
        self.sock.shutdown(socket.SHUT_WR)


def _count(value: Any, what: str) -> int:
    """``value`` as an int >= 0, or TypeError/ValueError naming ``what``."""
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError("%s must be an int, not %r" % (what, value)) from None
    if count < 0:
        raise ValueError("%s must be >= 0, not %d" % (what, count))
    return count


def _read_at(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes of ``fd`` at ``offset``, leaving its position alone."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    # Windows has no pread: seek there and back (in sendfile's worker thread).
    position = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)
    finally:
        os.lseek(fd, position, os.SEEK_SET)


def _check_separator(separator: bytes, limit: int, verb: str) -> None:
    if not isinstance(separator, (bytes, bytearray)):
        raise TypeError("%s() needs the separator as bytes, not %r" % (verb, separator))
    _count(limit, "%s() limit" % verb)
    if not separator:
        raise ValueError("%s() needs a non-empty separator" % verb)
    if limit < len(separator):
        raise ValueError("%s() limit %d is shorter than the separator" % (verb, limit))

