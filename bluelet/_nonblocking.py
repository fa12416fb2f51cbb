"""One non-blocking socket call, retried whenever the socket says "not yet".

The core's own socket events (``ReceiveEvent``, ``SendEvent``,
``AcceptEvent``) cover the hot paths of plain TCP. Everything else -- TLS,
datagrams, ``sendfile`` -- is a call that may raise "would block" and must
be retried once the socket is ready: ``yield from retry(...)`` does that
on top of the core's ``wait_readable``/``wait_writable``.

Why try first: a TLS socket may hold decrypted bytes the kernel knows
nothing about, so waiting for readability before reading could wait
forever; and for the rest, the call usually succeeds at once.
"""

from typing import Any, Callable, Generator, TypeVar

from ._impl import wait_readable, wait_writable

try:
    import ssl
except ImportError:  # Python built without OpenSSL: no TLS, nothing to catch
    _WANT_READ: Any = ()
    _WANT_WRITE: Any = ()
else:
    _WANT_READ = ssl.SSLWantReadError
    _WANT_WRITE = ssl.SSLWantWriteError

__all__ = ["retry"]

_T = TypeVar("_T")


def retry(sock: Any, wait: Callable[[Any], Any], op: Callable[..., _T],
          *args: Any) -> Generator[Any, Any, _T]:
    """Coroutine: ``op(*args)``'s result, waiting on ``sock`` while it would block.

    ``wait`` is ``wait_readable`` or ``wait_writable``: what "would block"
    means for this call. TLS says which it needs itself (a read may need
    to write during a renegotiation, and the other way round).
    """
    while True:
        try:
            return op(*args)
        except _WANT_READ:
            yield wait_readable(sock)
        except _WANT_WRITE:
            yield wait_writable(sock)
        except (BlockingIOError, InterruptedError):
            yield wait(sock)
