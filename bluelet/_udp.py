"""UDP for coroutines: ``bluelet.udp(host, port)`` and its UDPEndpoint.

A datagram socket has no stream and no connection, so the core's TCP events
do not fit it; each operation is one ``sendto``/``recvfrom`` call retried
by ``_nonblocking.retry`` whenever the socket says "not yet".

Host names given to ``sendto`` are resolved in a worker thread
(``to_thread``): Python's ``socket.sendto`` would otherwise look the name
up itself, blocking every coroutine for as long as DNS takes. Address
literals, the common case, go straight to the OS.
"""

import operator
import socket
from typing import Any, Generator, Optional, Tuple

from ._connect import resolve
from ._connection import close_socket, with_timeout
from ._errors import SocketClosedError
from ._impl import DelegationEvent, Event, wait_readable, wait_writable
from ._listener import bind_address, display
from ._nonblocking import retry
from ._records import Bytes

__all__ = ["UDPEndpoint", "udp"]

#: A socket address: ``(host, port)`` for IPv4, ``(host, port[, flowinfo[, scope_id]])``
#: for IPv6.
Address = Tuple[Any, ...]

# Names Python turns into addresses itself, without a lookup.
_SPECIAL_HOSTS = ("", "<broadcast>")


def _is_literal(host: str) -> bool:
    """Whether the OS can use ``host`` without a name lookup (which blocks)."""
    if host in _SPECIAL_HOSTS:
        return True
    # inet_pton first: it is about 25 times cheaper than getaddrinfo, and a
    # sendto costs only a few microseconds.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            pass
    # What inet_pton refuses yet is no name: "fe80::1%eth0", "127.1".
    try:
        socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0,
                           socket.AI_NUMERICHOST)
    except (OSError, ValueError):
        return False
    return True


def _check_address(address: Address) -> None:
    """TypeError or ValueError at the call for what is no IP socket address."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError("sendto() address must be a tuple (host, port, ...), not %r" % (address,))
    host, port = address[0], address[1]
    if not isinstance(host, str):
        raise TypeError("sendto() host must be a str, not %r" % (host,))
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError("sendto() port must be an int, not %r" % (port,))
    if not 0 <= port <= 65535:
        raise ValueError("sendto() port must be 0-65535, not %d" % port)


class UDPEndpoint:
    """A bound UDP socket; its methods return events to ``yield``.

    Made by :func:`udp`. Non-blocking from creation. ``port`` is the bound
    port (the real one when 0 was asked for), ``sockname`` the bound
    address, ``sock`` the socket itself (for options such as
    ``SO_BROADCAST``). Closing is idempotent; ``with`` closes it.

    Datagram boundaries are kept: one ``sendto`` is one ``recvfrom`` at the
    other end, and ``b""`` is an empty datagram, not an end of stream.
    """

    def __init__(self, host: str, port: int) -> None:
        family, address = bind_address(host, port)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(address)
            sock.setblocking(False)
            sockname = sock.getsockname()
        except BaseException:
            sock.close()
            raise
        self._closed = False
        self.sock = sock
        self.sockname: Address = sockname
        self.port: int = sockname[1]

    def __repr__(self) -> str:
        state = "closed" if self._closed else "fd=%d" % self.sock.fileno()
        return "<UDPEndpoint %s %s>" % (display(self.sockname), state)

    def __enter__(self) -> "UDPEndpoint":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket now (not an event); waiters get SocketClosedError."""
        if not self._closed:
            self._closed = True
            close_socket(self.sock)

    def _check_open(self, verb: str) -> None:
        if self._closed:
            raise SocketClosedError("%s() on a closed UDPEndpoint" % verb)

    def recvfrom(self, bufsize: int = 65536, *, timeout: Optional[float] = None
                 ) -> "Event[Tuple[bytes, Address]]":
        """Event: the next datagram; the value is ``(data, address)``.

        ``address`` is the sender's, ready to pass to ``sendto``. A datagram
        longer than ``bufsize`` is truncated as the OS does: on Linux and
        macOS the first ``bufsize`` bytes come back and the rest is lost.
        With ``timeout`` (seconds) the ``yield`` raises ``bluelet.Timeout``
        if no datagram came in time; the endpoint stays usable.
        """
        self._check_open("recvfrom")
        bufsize = operator.index(bufsize)
        if bufsize < 1:
            raise ValueError("recvfrom() bufsize must be >= 1, not %d" % bufsize)
        return with_timeout(DelegationEvent(self._recvfrom(bufsize)), timeout)

    def _recvfrom(self, bufsize: int) -> Generator[Any, Any, Tuple[bytes, Address]]:
        # Closed after the call but before the yield: say so, not EBADF.
        self._check_open("recvfrom")
        return (yield from retry(self.sock, wait_readable, self.sock.recvfrom, bufsize))

    def sendto(self, data: Bytes, address: Address, *, timeout: Optional[float] = None
               ) -> "Event[int]":
        """Event: send ``data`` as one datagram to ``address``; the value is
        the number of bytes sent.

        ``address`` is ``(host, port)`` (IPv6 also takes flowinfo and
        scope_id). A host name is resolved in a worker thread, so the
        lookup does not stall other coroutines; the first address of this
        endpoint's family is used. What the OS refuses (an address of the
        other family, a datagram too long) is raised at the ``yield``.
        With ``timeout`` (seconds) the ``yield`` raises ``bluelet.Timeout``
        if the lookup and the send took longer.
        """
        self._check_open("sendto")
        try:
            memoryview(data).release()
        except TypeError:
            raise TypeError("sendto() data must be bytes-like, not %s"
                            % type(data).__name__) from None
        _check_address(address)
        return with_timeout(DelegationEvent(self._sendto(data, address)), timeout)

    def _sendto(self, data: Bytes, address: Address) -> Generator[Any, Any, int]:
        self._check_open("sendto")
        if not _is_literal(address[0]):
            address = yield from self._resolve(address)
        return (yield from retry(self.sock, wait_writable, self.sock.sendto, data, address))

    def _resolve(self, address: Address) -> Generator[Any, Any, Address]:
        """``address`` with its host name replaced by an address, looked up
        in a worker thread."""
        infos = yield from resolve(address[0], address[1], self.sock.family, socket.SOCK_DGRAM)
        sockaddr: Address = infos[0][4]
        if len(address) == 2:
            return sockaddr
        return (sockaddr[0],) + address[1:]  # keep the caller's flowinfo, scope_id


def udp(host: str, port: int) -> UDPEndpoint:
    """A UDP endpoint bound to ``(host, port)`` (not an event).

    ``port`` 0 picks a free port (``endpoint.port`` tells which). ``host``
    is an IPv4 or IPv6 address, ``""`` (every IPv4 address) or a name,
    resolved here like ``Listener`` does. Bind errors raise here.
    """
    return UDPEndpoint(host, port)
