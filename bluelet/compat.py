"""bluelet 0.2.0's semantics where the new default differs: ``import bluelet.compat as bluelet``.

A program written for bluelet 0.2.0 (or for a vendored copy of it) runs on
the new cores unchanged with ``import bluelet``, except where it relies on
one of two things 0.2.0 did that the new default deliberately does not:

- **A socket error during I/O ends the coroutine.** In 0.2.0, when a
  ``recv``/``send``/``sendall`` (or the receive inside ``readline``) failed,
  the coroutine that yielded it ended at once and its caller received
  ``None`` from its own ``yield``; the traceback was printed unless the
  peer had simply gone (EPIPE, ECONNRESET). Programs check for that
  ``None`` to drop a peer. By default the error is raised at the ``yield``
  instead, where ``except``/``finally`` can handle it.
- **``readline`` has no length limit.** By default it refuses a line over
  64 KiB (``LimitExceeded``), so a peer that never sends a newline cannot
  grow the buffer without bound.

This module is the whole public API of ``bluelet`` with ``Connection``,
``Listener``, ``connect`` and ``server`` replaced by ones that keep those
two behaviours. Everything else, the scheduler order included, is the same
objects as in ``bluelet``.
"""

import sys
from typing import Any, Generator, Optional, Union

import bluelet
from bluelet import *  # noqa: F401,F403 -- the rest of the API, unchanged

from ._connection import Connection as _Connection
from ._impl import DelegationEvent, Event
from ._listener import Listener as _Listener
from ._records import Coro

__all__ = list(bluelet.__all__)


class Connection(_Connection):  # type: ignore[no-redef]  # replaces the star import's
    """A ``bluelet.Connection`` with 0.2.0's semantics (see the module).

    A failed socket operation ends the coroutine that yielded it, its
    caller getting None; ``readline`` reads a line of any length.
    """

    _ends_on_error = True

    def readline(self, terminator: bytes = b"\n", bufsize: int = 1024, *,
                 limit: int = sys.maxsize, timeout: Optional[float] = None) -> "Event[bytes]":
        """Event: one line, terminator included (no length limit by default)."""
        return super().readline(terminator, bufsize, limit=limit, timeout=timeout)


class Listener(_Listener):  # type: ignore[no-redef]
    """A ``bluelet.Listener`` whose accepted connections are this module's."""

    def _accepted(self, sock: Any, addr: Any) -> _Connection:
        conn = super()._accepted(sock, addr)
        if type(conn) is _Connection:
            return Connection(conn.sock, conn.addr)
        return conn  # TLS: not in 0.2.0, so the new semantics


def connect(host: str, port: Union[int, str],  # type: ignore[no-redef]
            timeout: Optional[float] = None, **options: Any) -> "Event[_Connection]":
    """Event: ``bluelet.connect``, giving a connection of this module."""
    return DelegationEvent(_connect(host, port, timeout, options))


def _connect(host: str, port: Union[int, str], timeout: Optional[float],
             options: Any) -> Generator[Any, Any, _Connection]:
    conn: _Connection = yield bluelet.connect(host, port, timeout, **options)
    if type(conn) is _Connection:
        return Connection(conn.sock, conn.addr)
    return conn


def server(host: str, port: int, handler: Any) -> Coro:  # type: ignore[no-redef]
    """Coroutine: 0.2.0's ``server``: serve ``handler(conn)`` on ``(host, port)``.

    ``Listener`` is looked up in this module when the coroutine starts and
    called as ``Listener(host, port)``, as 0.2.0 did (programs patch it);
    the connections are this module's. Otherwise ``bluelet.serve``.
    """
    listener = Listener(host, port)
    try:
        return (yield from bluelet.serve(listener, handler))
    finally:
        listener.close()
