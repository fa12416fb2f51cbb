"""server(): listen and run a handler coroutine per connection."""

from typing import Callable

from ._connection import Connection
from ._impl import spawn
from ._listener import Listener
from ._records import Coro

__all__ = ["server"]


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
