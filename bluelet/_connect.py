"""connect() and connect_unix(): outgoing stream connections that never block the loop.

Three steps, each a wait the loop can serve others through:

1. Name resolution. A literal address is parsed on the spot
   (``AI_NUMERICHOST`` does no I/O); a host name goes to
   ``socket.getaddrinfo`` in a worker thread, because the system resolver
   blocks and cannot be made not to. Lookups have threads of their own (4),
   apart from ``to_thread``'s, so that long calls there never delay a
   connect.
2. The TCP handshake: non-blocking ``connect``s, raced as RFC 8305
   ("Happy Eyeballs") says. The addresses are tried in the resolver's
   order with the two families interleaved (IPv6, IPv4, IPv6, ...); each
   attempt gets ``happy_eyeballs_delay`` seconds (0.25) before the next
   one starts beside it, and a failure starts the next at once. The first
   handshake to complete wins; the sockets of the others are closed. An
   address that never answers (a broken IPv6 route, a firewall that drops
   packets) so costs a quarter of a second, not the kernel's minutes.
3. With ``ssl=``, the TLS handshake.

``timeout=`` bounds all three together. Every socket that does not become
the connection is closed, however the attempt ends.
"""

import errno
import numbers
import os
import socket
from typing import (TYPE_CHECKING, Any, Dict, Generator, Iterable, List, Optional, Sequence,
                    Tuple, Union)

from ._connection import Connection, close_socket, with_timeout
from ._group import first
from ._impl import DelegationEvent, Event, sleep, wait_writable
from ._listener import check_port
from ._threads import lookup_in_thread
from ._tls import check_client_context, check_session, secure

if TYPE_CHECKING:
    import ssl

__all__ = ["connect", "connect_unix", "resolve"]

_AddrInfo = Tuple[int, int, int, str, Any]

# Windows reports a handshake under way as WSAEWOULDBLOCK; on POSIX, EAGAIN
# from a TCP connect is a failure (no local port left), not progress.
_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, getattr(errno, "WSAEWOULDBLOCK", -1))
_TRY_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)

#: RFC 8305's recommended head start of one connection attempt over the next.
HAPPY_EYEBALLS_DELAY = 0.25


def connect(host: str, port: Union[int, str], timeout: Optional[float] = None, *,
            ssl: "Optional[ssl.SSLContext]" = None, server_hostname: Optional[str] = None,
            session: "Optional[ssl.SSLSession]" = None,
            happy_eyeballs_delay: Optional[float] = HAPPY_EYEBALLS_DELAY) -> "Event[Connection]":
    """Event: connect to ``(host, port)``; the value is a Connection.

    Nothing here blocks other coroutines: a host name is resolved in a
    worker thread, and its addresses are tried as RFC 8305 says (IPv6 and
    IPv4 interleaved; each attempt gets ``happy_eyeballs_delay`` seconds
    before the next starts beside it; the first to connect wins; ``None``:
    one at a time, each until it fails). Failures raise at the ``yield``:
    ``socket.gaierror`` for a name that does not resolve,
    ``ConnectionRefusedError`` and the like when no address accepts,
    ``bluelet.Timeout`` (a ``TimeoutError``) when ``timeout`` seconds pass
    first.

    With ``ssl`` (an ``ssl.SSLContext``) the value is a ``TLSConnection``
    whose handshake is done; ``server_hostname`` (default: ``host``) is
    the name its certificate is checked against, and ``session`` (an
    earlier connection's ``tls_session``) resumes that session, saving
    most of the handshake's work (``conn.sock.session_reused`` says
    whether the server agreed).

    ``port`` is an int (0-65535, else OverflowError as in ``socket``) or
    a service name such as ``"http"``; anything else raises at the call.
    """
    _check_address(host, port)
    if ssl is None and (server_hostname is not None or session is not None):
        raise ValueError("server_hostname and session are only meaningful with ssl")
    check_client_context(ssl)
    check_session(session)
    if happy_eyeballs_delay is not None and (
            isinstance(happy_eyeballs_delay, bool)
            or not isinstance(happy_eyeballs_delay, numbers.Real)
            or not happy_eyeballs_delay >= 0):
        raise ValueError("happy_eyeballs_delay must be a number of seconds >= 0 or None, "
                         "not %r" % (happy_eyeballs_delay,))
    if ssl is not None and server_hostname is None:
        server_hostname = host
    return with_timeout(DelegationEvent(_connect(host, port, ssl, server_hostname, session,
                                                 happy_eyeballs_delay)), timeout)


def connect_unix(path: str, timeout: Optional[float] = None) -> "Event[Connection]":
    """Event: connect to the Unix stream socket at ``path``; the value is a Connection."""
    path = os.fspath(path)  # a TypeError at the call, not at the yield
    if not path:
        raise ValueError("connect_unix() needs a path")
    return with_timeout(DelegationEvent(_connect_unix(path)), timeout)


def _check_address(host: Any, port: Any) -> None:
    """Raise at the call for what ``getaddrinfo`` would reject at the
    yield, or worse, accept: it takes port 65537 as port 1."""
    if not isinstance(host, str):
        raise TypeError("connect() needs the host as a str, not %r" % (host,))
    if not isinstance(port, str):  # a service name: getaddrinfo says whether it knows it
        check_port(port, "connect()")


def _connect(host: str, port: Union[int, str], context: "Optional[ssl.SSLContext]",
             server_hostname: Optional[str], session: "Optional[ssl.SSLSession]",
             delay: Optional[float]) -> Generator[Any, Any, Connection]:
    addresses = yield from resolve(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    errors: List[OSError] = []
    sock = yield from _first_to_connect(interleave(addresses), delay, errors)
    if sock is None:
        raise _failure(host, port, errors)
    if context is None:
        return Connection(sock, (host, port))
    return (yield from secure(sock, (host, port), context, False, server_hostname, session))


def interleave(addresses: Iterable[_AddrInfo]) -> List[_AddrInfo]:
    """``addresses`` in RFC 8305's order: the resolver's, but alternating
    between address families, starting with the resolver's first choice."""
    by_family: Dict[int, List[_AddrInfo]] = {}
    for info in addresses:
        by_family.setdefault(info[0], []).append(info)
    queues = list(by_family.values())  # dicts keep the order families first came in
    ordered = []
    while queues:
        for queue in queues:
            ordered.append(queue.pop(0))
        queues = [queue for queue in queues if queue]
    return ordered


def _first_to_connect(addresses: List[_AddrInfo], delay: Optional[float],
                      errors: List[OSError]) -> Generator[Any, Any, Optional[socket.socket]]:
    """The socket of the first address whose TCP handshake completes, or
    None with each address's failure in ``errors``.

    This coroutine owns every socket still connecting, so that its
    ``finally`` can close the losers without a ``yield``: also when it is
    killed or the caller's timeout runs out.
    """
    pending = list(addresses)
    connecting: Dict[socket.socket, Any] = {}   # socket -> its address
    start_next = True
    try:
        while True:
            if start_next and pending:
                sock = _start(pending.pop(0), connecting, errors)
                if sock is not None:
                    return sock  # connected at once
            if not connecting:
                if not pending:
                    return None
                start_next = True  # the last one failed at once: the next, now
                continue
            waits = [_settled(sock) for sock in connecting]
            if pending and delay is not None:
                waits.append(_pause(delay))
            start_next = not (yield waits[0] if len(waits) == 1 else first(waits))
            for sock, address in list(connecting.items()):
                code = _outcome(sock)
                if code is None:
                    continue  # still connecting
                del connecting[sock]
                if code == 0:
                    return sock
                close_socket(sock)
                errors.append(_connect_error(code, address))
                start_next = True
    finally:
        for sock in connecting:
            close_socket(sock)


def _start(info: _AddrInfo, connecting: Dict[socket.socket, Any],
           errors: List[OSError]) -> Optional[socket.socket]:
    """Begin connecting to ``info``'s address: the socket if that connected
    at once; else None, the socket in ``connecting`` or its error in ``errors``."""
    family, type_, proto, _, address = info
    try:
        sock = socket.socket(family, type_, proto)
    except OSError as error:
        # This host cannot make such a socket (say, IPv6 is off): the next
        # address may well do.
        errors.append(error)
        return None
    try:
        sock.setblocking(False)
        code = sock.connect_ex(address)
    except BaseException:
        close_socket(sock)
        raise
    if code == 0:
        return sock
    if code in _IN_PROGRESS:
        connecting[sock] = address
    else:
        close_socket(sock)
        errors.append(_connect_error(code, address))
    return None


def _settled(sock: socket.socket) -> Generator[Any, Any, bool]:
    """Coroutine: True once ``sock``'s handshake has ended, either way."""
    yield wait_writable(sock)
    return True


def _pause(seconds: float) -> Generator[Any, Any, bool]:
    """Coroutine: False after ``seconds``: time to start the next attempt."""
    yield sleep(seconds)
    return False


def _connect_error(code: int, address: Any) -> OSError:
    """The error of a connect to ``address`` that failed with ``code``;
    OSError picks the subclass (ConnectionRefusedError, ...)."""
    return OSError(code, "connect to %r: %s" % (address, os.strerror(code)))


def _outcome(sock: socket.socket) -> Optional[int]:
    """0 if ``sock`` has connected, its errno if connecting failed, None if
    its handshake is still under way."""
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        return code
    try:
        sock.getpeername()
    except OSError:
        return None  # not connected yet (ENOTCONN)
    return 0


def resolve(host: str, port: Union[int, str], family: int,
            type_: int) -> Generator[Any, Any, Sequence[_AddrInfo]]:
    """Coroutine: ``getaddrinfo``'s answer for ``host``, looked up in one of
    the lookup threads if it is a name (a literal address is parsed here: no
    I/O)."""
    try:
        return socket.getaddrinfo(host, port, family, type_, 0, socket.AI_NUMERICHOST)
    except socket.gaierror as error:
        if error.errno != socket.EAI_NONAME:
            raise
    addresses: Sequence[_AddrInfo] = yield lookup_in_thread(socket.getaddrinfo, host, port,
                                                            family, type_)
    return addresses


def _unix_handshake(sock: socket.socket, path: str) -> Generator[Any, Any, None]:
    """A non-blocking ``connect`` of Unix ``sock`` to ``path``; OSError if refused."""
    sock.setblocking(False)
    code = sock.connect_ex(path)
    pause = 0.001
    while code in _TRY_AGAIN:
        # The listener's backlog is full: Linux says "try again" -- nothing
        # is in progress, so there is no readiness to wait for. Back off.
        yield sleep(pause)
        pause = min(pause * 2, 0.1)
        code = sock.connect_ex(path)
    if code in _IN_PROGRESS:
        yield wait_writable(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise _connect_error(code, path)


def _failure(host: str, port: Union[int, str], errors: List[OSError]) -> OSError:
    """The error to raise when no address would connect."""
    if not errors:
        return OSError("getaddrinfo returned no address for %r" % (host,))
    if all(type(error) is type(errors[0]) for error in errors):
        # One kind of failure (say, refused on ::1 and on 127.0.0.1): raise
        # that kind, so ``except ConnectionRefusedError`` works.
        return errors[0]
    return OSError("cannot connect to %s port %s: %s" % (
        host, port, "; ".join(str(error) for error in errors)))


def _connect_unix(path: str) -> Generator[Any, Any, Connection]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        yield from _unix_handshake(sock, path)
    except BaseException:
        close_socket(sock)
        raise
    return Connection(sock, path)
