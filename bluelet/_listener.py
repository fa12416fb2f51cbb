"""Listener: a listening TCP or Unix stream socket; ``yield listener.accept()``.

Accepting is the core's ``AcceptEvent`` (tried at once, then on
readiness); the listener only says how to wrap each accepted socket: a
``Connection``, or a ``TLSConnection`` when it was made with ``ssl=``.
"""

import errno
import os
import socket
import stat
from typing import TYPE_CHECKING, Any, Optional, Tuple

from ._connection import Connection, close_socket, with_timeout
from ._errors import SocketClosedError
from ._impl import AcceptEvent, Event
from ._tls import check_server_context, wrap_server

if TYPE_CHECKING:
    import ssl

__all__ = ["Listener", "bind_address", "check_backlog", "check_port", "display", "stream_socket"]

# SO_REUSEADDR lets a restarted server bind its port while the last run's
# connections sit in TIME_WAIT. On Windows the same option means something
# else: another socket may then bind the very port this one listens on and
# take its connections. There it stays off, as in socket.create_server and
# asyncio; Windows does not refuse a bind for TIME_WAIT anyway.
_REUSE_ADDRESS = os.name == "posix"


def check_port(port: Any, verb: str) -> None:
    """TypeError or OverflowError (as ``socket`` raises) at the call for what
    is no port number: getaddrinfo would take 70000 as 70000 % 65536."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError("%s needs the port as an int, not %r" % (verb, port))
    if not 0 <= port <= 65535:
        raise OverflowError("%s port must be 0-65535, not %d" % (verb, port))


def check_backlog(backlog: Any) -> None:
    """TypeError at the call for a backlog that is no int: listen() would
    raise it only where it runs, in a pre-forked worker."""
    if isinstance(backlog, bool) or not isinstance(backlog, int):
        raise TypeError("the backlog must be an int, not %r" % (backlog,))


def display(address: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a socket address."""
    host, port = address[:2]
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def bind_address(host: str, port: int) -> Tuple[int, Any]:
    """Family and address to bind; '' means every IPv4 address, as in 0.2.0."""
    check_port(port, "binding")
    if not host:
        return socket.AF_INET, ("", port)
    family, _, _, _, address = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    return family, address


def stream_socket(family: int, address: Any, backlog: Optional[int],
                  reuse_port: bool) -> socket.socket:
    """A non-blocking stream socket bound to ``address``, listening unless
    ``backlog`` is None; or the error, with the socket closed."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if _REUSE_ADDRESS and family != getattr(socket, "AF_UNIX", None):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Several processes, one port: the kernel spreads connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if backlog is not None:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """A listening socket (not an event); ``yield listener.accept()``.

    ``Listener(host, port)`` listens on TCP: port 0 binds an ephemeral
    port and ``self.port`` is the real one; IPv6 addresses work; the
    backlog defaults to ``socket.SOMAXCONN`` so bursts of connections are
    queued, not refused. A host name is resolved here, by the blocking
    system resolver: inside a running program, prefer an address literal.
    ``Listener.unix(path)`` listens on a Unix socket, and
    ``Listener.from_socket(sock)`` takes over one made elsewhere (inherited
    from systemd or a supervisor: see ``bluelet.systemd_listeners()``).

    ``ssl=`` (an ``ssl.SSLContext`` with the server's certificate) makes
    every accepted connection a ``TLSConnection``; its handshake runs on
    its first read or write, or at ``yield conn.handshake()``, never inside
    ``accept``. ``reuse_port=True`` sets ``SO_REUSEPORT`` so that several
    processes can each listen on the same port.

    Usable as a context manager, which closes it.
    """

    def __init__(self, host: str, port: int, backlog: int = socket.SOMAXCONN, *,
                 ssl: "Optional[ssl.SSLContext]" = None, reuse_port: bool = False) -> None:
        check_server_context(ssl)
        if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("reuse_port=True needs SO_REUSEPORT, which this platform lacks")
        family, address = bind_address(host, port)
        self._adopt(stream_socket(family, address, backlog, reuse_port), ssl)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.path: Optional[str] = None

    @classmethod
    def unix(cls, path: str, backlog: int = socket.SOMAXCONN, *,
             ssl: "Optional[ssl.SSLContext]" = None) -> "Listener":
        """A listener on the Unix socket at ``path`` (``port`` is 0).

        A socket file left at ``path`` by an earlier process is replaced;
        one a server still listens on is not (``OSError`` EADDRINUSE), and
        any other file there is an error. The file is removed again by
        ``close()`` in the process that made it. A path starting with a
        NUL byte is in Linux's abstract namespace and has no file.
        """
        if not path:
            raise ValueError("Listener.unix() needs a path")
        check_server_context(ssl)
        if path[0] != "\0":
            _remove_stale_socket(path)
        self = cls.__new__(cls)
        self._adopt(stream_socket(socket.AF_UNIX, path, backlog, False), ssl)
        self.host = ""
        self.port = 0
        self.path = path
        return self

    @classmethod
    def from_socket(cls, sock: socket.socket, *,
                    ssl: "Optional[ssl.SSLContext]" = None) -> "Listener":
        """A listener on ``sock``, a listening stream socket made elsewhere:
        inherited from systemd (``bluelet.systemd_listeners()``) or a
        supervisor, or made with ``socket.create_server``.

        The Listener takes the socket over (it is made non-blocking, and
        ``close()`` closes it) but never removes a Unix socket's file, which
        belongs to whoever bound it. ``host``/``port`` or ``path`` are read
        from the socket. A socket that is closed, not a stream socket, or
        not listening is refused here with ``ValueError``.
        """
        if not isinstance(sock, socket.socket):
            raise TypeError("Listener.from_socket() needs a socket.socket, not %r" % (sock,))
        check_server_context(ssl)
        if sock.fileno() < 0:
            raise ValueError("Listener.from_socket(): the socket is closed")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("Listener.from_socket(): %r is not a stream socket" % (sock,))
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError("Listener.from_socket(): %r is not listening (call listen() first)"
                             % (sock,))
        sock.setblocking(False)
        self = cls.__new__(cls)
        self._adopt(sock, ssl, owns_file=False)
        address = sock.getsockname()
        if sock.family == getattr(socket, "AF_UNIX", None):
            self.host, self.port = "", 0
            if isinstance(address, bytes):  # Linux's abstract namespace
                address = address.decode("utf-8", "surrogateescape")
            self.path = address or None
        else:
            self.host, self.port, self.path = address[0], address[1], None
        return self

    def _adopt(self, sock: socket.socket, ssl: "Optional[ssl.SSLContext]",
               owns_file: bool = True) -> None:
        self.sock = sock
        self._ssl = ssl
        self._closed = False
        #: The name systemd gave the socket (``systemd_listeners()``), else None.
        self.name: Optional[str] = None
        # Only the creating process removes a Unix socket's file: forked
        # workers share the listener and must not unlink it under the others.
        self._owner = os.getpid() if owns_file else None

    def __repr__(self) -> str:
        if self._closed:
            return "<Listener closed>"
        return "<Listener %r%s>" % (self.sockname, " TLS" if self._ssl is not None else "")

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def sockname(self) -> Any:
        """The address listened on, as ``socket.getsockname()`` gives it."""
        if self._closed:
            raise SocketClosedError("sockname of a closed Listener")
        return self.sock.getsockname()

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self.sock.fileno()

    def accept(self, timeout: Optional[float] = None) -> "Event[Connection]":
        """Event: wait for a connection; the value is a Connection.

        ``timeout`` (seconds) raises ``bluelet.Timeout`` at the ``yield``
        if none comes; the listener stays usable.
        """
        if self._closed:
            raise SocketClosedError("accept() on a closed Listener")
        return with_timeout(AcceptEvent(self), timeout)

    def _accepted(self, sock: socket.socket, addr: Any) -> Connection:
        if self._ssl is None:
            return Connection(sock, addr)
        while True:
            try:
                return wrap_server(self._ssl, sock, addr)
            except ConnectionAbortedError:
                # That client left before we took it; it must not fail the
                # accept. Take the next one: BlockingIOError if there is
                # none tells the core to wait on.
                sock, addr = self.sock.accept()

    def close(self) -> None:
        """Close the listening socket now (not an event); twice is harmless."""
        if self._closed:
            return
        self._closed = True
        close_socket(self.sock)
        if self.path and self.path[0] != "\0" and os.getpid() == self._owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file that an earlier process left at ``path``.

    Raises if the file is no socket, or if a server still listens on it:
    unlinking its file would leave that server unreachable. Telling the two
    apart takes a connection attempt, which a live server sees as a client
    that hangs up at once.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError("Listener.unix(): %s exists and is not a socket" % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        code = probe.connect_ex(path)
    finally:
        probe.close()
    if code in (0, errno.EAGAIN, errno.EWOULDBLOCK):  # accepted, or queued behind others
        raise OSError(errno.EADDRINUSE, "Listener.unix(): a server is listening on %s" % path)
    if code == errno.ECONNREFUSED:
        os.unlink(path)
    elif code != errno.ENOENT:  # gone meanwhile: nothing to unlink
        raise OSError(code, "Listener.unix(): cannot tell whether %s is in use: %s"
                      % (path, os.strerror(code)))
