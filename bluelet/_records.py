"""Plain data types shared by both cores, defined once so each has one identity.

Also the type aliases the package's annotations (and ``_loop.pyi``) share.
"""

from types import TracebackType
from typing import (TYPE_CHECKING, Any, Awaitable, Coroutine, Dict, Generator, Generic, List,
                    NamedTuple, Optional, Protocol, Tuple, Type, TypeVar, Union)

__all__ = ["AnyCoro", "Bytes", "Coro", "ExcInfo", "Gen", "Op", "Runnable", "TaskInfo"]

_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)

#: A bluelet coroutine: a generator that yields events and receives their values.
Coro = Generator[Any, Any, Any]

#: A generator coroutine whose result is R, for annotating your own:
#: ``def fetch(url) -> bluelet.Gen[bytes]``.
Gen = Generator[Any, Any, _R]

#: What bluelet runs (``run``, ``spawn``, ``call``...): a generator coroutine
#: or the coroutine of an ``async def``, with result R.
Runnable = Union[Generator[Any, Any, _R], Coroutine[Any, Any, _R]]

#: Any coroutine bluelet runs, whatever its result.
AnyCoro = Runnable[Any]

if TYPE_CHECKING:
    class Op(Generator[Any, Any, _R_co], Awaitable[_R_co], Protocol[_R_co]):
        ...
else:
    class Op(Generic[_R_co]):
        """An operation of bluelet's own with result R (``lock.acquire()``,
        ``queue.get()``, ``conn.readline()``...): a generator that can also be
        awaited. Yield it (or ``yield from`` it, which a type checker
        follows) in a generator coroutine, or ``await`` it in an ``async
        def``."""

#: Data to write or send. Any buffer works at run time (it goes through
#: ``memoryview``); these are the types a checker can name on Python 3.9.
Bytes = Union[bytes, bytearray, memoryview]

#: A ``sys.exc_info()`` triple of a caught exception.
ExcInfo = Tuple[Type[BaseException], BaseException, Optional[TracebackType]]


class TaskInfo(NamedTuple):
    """What ``bluelet.tasks()`` says of one live coroutine.

    ``coroutine`` is the spawned generator; ``state`` one of "ready",
    "running", "io", "sleeping", "joining", "parked", "thread" (or "done",
    to an instrument told of its end); ``detail`` a readable sentence;
    ``chain`` the generators it is delegating through, outermost first (the
    last one is where it waits). While a ``bluelet.Accounting`` is
    installed, ``bluelet.tasks()`` also gives ``cpu_time`` (seconds of
    CPU its steps took), ``steps`` and ``waited`` (seconds spent waiting,
    by state); else they are None.
    """

    coroutine: Coro
    state: str
    detail: str
    chain: List[Coro]
    cpu_time: Optional[float] = None
    steps: Optional[int] = None
    waited: Optional[Dict[str, float]] = None
