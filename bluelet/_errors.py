"""Exceptions shared by both cores, defined once so each has one identity.

Both twins import these, so ``except bluelet.SocketClosedError`` catches the
error whichever core raised it.
"""

from typing import Any, NoReturn, Optional

from ._records import ExcInfo

__all__ = [
    "Cancelled", "ChannelClosed", "IncompleteRead", "LimitExceeded", "QueueEmpty",
    "QueueFull", "RunFinishedError", "SocketClosedError", "ThreadException", "Timeout",
]


class SocketClosedError(Exception):
    """An operation was attempted on a closed Connection or Listener.

    Also raised at the ``yield`` of a coroutine that was waiting on a socket
    when another coroutine closed it.
    """


class ThreadException(Exception):
    """Kept from bluelet 0.2.0, where it wrapped a coroutine's exception.

    The scheduler no longer raises it (exceptions reach ``run()``'s caller
    unwrapped) but programs may still import or catch it.
    """

    def __init__(self, coro: Any, exc_info: ExcInfo) -> None:
        super().__init__(coro, exc_info)
        self.coro = coro
        self.exc_info = exc_info

    def reraise(self) -> NoReturn:
        """Raise the wrapped exception with its original traceback."""
        raise self.exc_info[1].with_traceback(self.exc_info[2])


class Cancelled(BaseException):
    """Raised in a coroutine at its ``yield`` when it is killed.

    A BaseException, so ``except Exception`` does not catch it: ``finally``
    blocks and ``except Cancelled`` run, then it must propagate. A coroutine
    that catches it and carries on is closed and the scheduler reports it.
    """


class Timeout(TimeoutError):
    """A ``bluelet.timeout()``, or an operation's ``timeout=``, ran out."""


class LimitExceeded(Exception):
    """A line or a delimited record grew past its ``limit`` before its end came.

    Raised by ``Connection.readline`` and ``readuntil`` so that a peer that
    never sends the separator cannot make the reader buffer without bound.
    The bytes read so far stay buffered in the connection.
    """


class IncompleteRead(EOFError):
    """The stream ended before ``readexactly`` or ``readuntil`` had its data.

    ``partial`` holds the bytes that did arrive (they are no longer in the
    connection's buffer); ``expected`` is the count asked for, or None when
    a separator was awaited.
    """

    def __init__(self, partial: bytes, expected: Optional[int]) -> None:
        wanted = "%d bytes" % expected if expected is not None else "the separator"
        super().__init__("the stream ended after %d bytes, before %s" % (len(partial), wanted))
        self.partial = partial
        self.expected = expected


class RunFinishedError(RuntimeError):
    """The bluelet run a thread called into (``bluelet.from_thread``) has
    ended, or ended before the call did."""


class QueueFull(Exception):
    """``Queue.put_nowait()`` found the queue full."""


class QueueEmpty(Exception):
    """``Queue.get_nowait()`` found the queue empty."""


class ChannelClosed(Exception):
    """The Channel was closed.

    Raised at the ``yield`` of a ``send()`` or ``recv()`` made after
    ``close()``, and in every coroutine that was waiting in one when it was
    closed.
    """
