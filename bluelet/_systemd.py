"""Sockets handed over by systemd (socket activation): ``systemd_listeners()``.

The protocol is ``sd_listen_fds(3)``: the service manager binds the sockets
of a ``.socket`` unit, starts the service with them open from descriptor 3
on, and says so in the environment: ``LISTEN_FDS`` (how many),
``LISTEN_PID`` (for which process: a variable inherited by a child is not
the child's) and, optionally, ``LISTEN_FDNAMES`` (colon-separated names,
from ``FileDescriptorName=``). Any supervisor may use the same protocol.
"""

import os
import socket
from typing import TYPE_CHECKING, List, Optional

from ._listener import Listener

if TYPE_CHECKING:
    import ssl

__all__ = ["LISTEN_FDS_START", "systemd_listeners"]

#: The first descriptor passed (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def systemd_listeners(*, ssl: "Optional[ssl.SSLContext]" = None,
                      unset_environment: bool = True) -> List[Listener]:
    """The listening sockets systemd (or another supervisor following
    ``sd_listen_fds``) passed to this process, as Listeners, in order.

    An empty list when none were passed, or when they were passed to
    another process (``LISTEN_PID`` is not ours: this process inherited
    the variables). Each Listener's ``name`` is its ``FileDescriptorName=``
    (``"unknown"`` when the manager gave none). The descriptors are made
    close-on-exec, and with ``unset_environment`` (the default) the
    variables are removed, so that programs this one starts do not take
    the sockets for theirs. A descriptor that is not a listening stream
    socket (a datagram or FIFO unit, say) raises ``ValueError`` naming it.
    ``ssl=`` is passed to every Listener.
    """
    try:
        pid = os.environ.get("LISTEN_PID")
        count = os.environ.get("LISTEN_FDS")
        names = os.environ.get("LISTEN_FDNAMES")
        if pid is None or count is None:
            return []
        if _number(pid, "LISTEN_PID") != os.getpid():
            return []
        n = _number(count, "LISTEN_FDS")
        labels = names.split(":") if names else []
        if labels and len(labels) != n:
            raise ValueError("LISTEN_FDNAMES names %d descriptors, LISTEN_FDS says %d"
                             % (len(labels), n))
    finally:
        if unset_environment:
            for variable in _VARIABLES:
                os.environ.pop(variable, None)
    listeners: List[Listener] = []
    try:
        for index in range(n):
            listeners.append(_listener(LISTEN_FDS_START + index,
                                       labels[index] if labels else "unknown", ssl))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _listener(fd: int, name: str, ssl: "Optional[ssl.SSLContext]") -> Listener:
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise ValueError("descriptor %d (%s) from LISTEN_FDS is not a socket: %s"
                         % (fd, name, error.strerror or error)) from None
    try:
        listener = Listener.from_socket(sock, ssl=ssl)
    except ValueError as error:
        sock.detach()  # left open, as it came: it is no listener of ours
        raise ValueError("descriptor %d (%s) from LISTEN_FDS: %s" % (fd, name, error)) from None
    listener.name = name
    return listener


def _number(text: str, variable: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError("%s=%r is not a count" % (variable, text))
    return value
