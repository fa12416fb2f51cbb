"""Plain data types shared by both cores, defined once so each has one identity.

Also the type aliases the package's annotations (and ``_loop.pyi``) share.
"""

from types import TracebackType
from typing import Any, Generator, List, NamedTuple, Optional, Tuple, Type, Union

__all__ = ["Bytes", "Coro", "ExcInfo", "TaskInfo"]

#: A bluelet coroutine: a generator that yields events and receives their values.
Coro = Generator[Any, Any, Any]

#: Data to write or send. Any buffer works at run time (it goes through
#: ``memoryview``); these are the types a checker can name on Python 3.9.
Bytes = Union[bytes, bytearray, memoryview]

#: A ``sys.exc_info()`` triple of a caught exception.
ExcInfo = Tuple[Type[BaseException], BaseException, Optional[TracebackType]]


class TaskInfo(NamedTuple):
    """What ``bluelet.tasks()`` says of one live coroutine.

    ``coroutine`` is the spawned generator; ``state`` one of "ready",
    "running", "io", "sleeping", "joining", "parked", "thread"; ``detail`` a
    readable sentence; ``chain`` the generators it is delegating through,
    outermost first (the last one is where it waits).
    """

    coroutine: Coro
    state: str
    detail: str
    chain: List[Coro]
