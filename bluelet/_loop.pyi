"""Types of the scheduler core, shared by both twins (_loop.pyx, _loop_py.py).

Type checkers read this for ``bluelet._loop`` and, through ``bluelet._impl``,
for whichever twin runs; tests/test_stub.py checks it against both.
"""

import logging
from types import TracebackType
from typing import (Any, Callable, Generator, Generic, Iterable, List, NoReturn, Optional,
                    Protocol, Tuple, Type, TypeVar, Union, final, overload)

from typing_extensions import disjoint_base

from ._records import Bytes, ExcInfo, Runnable, TaskInfo

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)

__all__ = [
    "Event", "WaitableEvent", "ValueEvent", "ExceptionEvent", "SpawnEvent",
    "JoinEvent", "KillEvent", "DelegationEvent", "ReturnEvent", "SleepEvent",
    "ReadEvent", "WriteEvent", "AcceptEvent", "ReceiveEvent", "SendEvent",
    "Loop", "run", "null", "sleep", "spawn", "call", "end", "join", "kill",
    "later", "wait_readable", "wait_writable", "notify_closing",
    "timeout", "fail_after", "move_on_after", "shield", "current_deadline",
    "current_time", "WaitQueue", "Completion", "current", "tasks", "wakeup_fd",
    "iscoroutine",
]

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

# A descriptor, or an object with fileno().
_FileLike = Union[int, _HasFileno]

log: logging.Logger

READ: int
WRITE: int

# @disjoint_base: the class has its own instance layout (C fields in the
# compiled twin, __slots__ in the pure one), so it cannot be mixed with
# another such class. The pure Event, with empty __slots__, could be mixed
# with a foreign base (int, Exception); the compiled one, as stated here,
# cannot, and programs must run on both.
# Event[T]: yielding (or awaiting) it gives a T. Awaiting, and ``yield
# from`` in a generator, are what a type checker can follow; a plain
# ``yield`` is Any to it.
@disjoint_base
class Event(Generic[_T_co]):
    def __await__(self) -> Generator[Any, Any, _T_co]: ...
    def __iter__(self) -> Generator[Any, Any, _T_co]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any) -> NoReturn: ...

class WaitableEvent(Event[_T_co]):
    def waitables(
        self,
    ) -> Tuple[Iterable[_FileLike], Iterable[_FileLike], Iterable[_FileLike]]: ...
    def fire(self) -> Any: ...

@disjoint_base
class ValueEvent(Event[_T_co]):
    def __init__(self, value: _T_co) -> None: ...
    @property
    def value(self) -> _T_co: ...

@disjoint_base
class ExceptionEvent(Event[NoReturn]):
    exc_info: Union[ExcInfo, BaseException]
    def __init__(self, exc_info: Union[ExcInfo, BaseException]) -> None: ...

@disjoint_base
class SpawnEvent(Event[None]):
    spawned: Runnable[Any]
    def __init__(self, coro: Runnable[Any]) -> None: ...

@disjoint_base
class JoinEvent(Event[Any]):
    child: Runnable[Any]
    def __init__(self, child: Runnable[Any]) -> None: ...

@disjoint_base
class KillEvent(Event[None]):
    child: Runnable[Any]
    def __init__(self, child: Runnable[Any]) -> None: ...

@disjoint_base
class DelegationEvent(Event[_T_co]):
    spawned: Runnable[_T_co]
    def __init__(self, coro: Runnable[_T_co]) -> None: ...

@disjoint_base
class ReturnEvent(Event[NoReturn]):
    value: Any
    def __init__(self, value: Any) -> None: ...

@disjoint_base
class WaitQueue(Event[Any]):
    def __init__(self, external: bool = False) -> None: ...
    def __len__(self) -> int: ...
    def wait(self) -> WaitQueue: ...
    def wake(self, value: Any = None, exc: Optional[BaseException] = None) -> bool: ...
    def wake_all(self, value: Any = None, exc: Optional[BaseException] = None) -> int: ...

@disjoint_base
class Completion(Event[Any]):
    def __init__(self) -> None: ...
    def set_result(self, value: Any) -> None: ...
    def set_exception(self, exc: BaseException) -> None: ...

@disjoint_base
class SleepEvent(WaitableEvent[None]):
    wakeup_time: float
    duration: float
    def __init__(self, duration: float) -> None: ...
    def time_left(self) -> float: ...

# The descriptor events wrap file and socket objects duck-typed by the
# feature modules (``fd.read``, ``listener.sock``, ``conn.sock``): Any.

@disjoint_base
class ReadEvent(WaitableEvent[bytes]):
    fd: Any
    bufsize: Optional[int]
    def __init__(self, fd: Any, bufsize: Optional[int]) -> None: ...

@disjoint_base
class WriteEvent(WaitableEvent[None]):
    fd: Any
    data: Bytes
    def __init__(self, fd: Any, data: Bytes) -> None: ...

@disjoint_base
class AcceptEvent(WaitableEvent[Any]):
    listener: Any
    def __init__(self, listener: Any) -> None: ...

@disjoint_base
class ReceiveEvent(WaitableEvent[bytes]):
    conn: Any
    bufsize: int
    def __init__(self, conn: Any, bufsize: int) -> None: ...

@disjoint_base
class SendEvent(WaitableEvent[Optional[int]]):
    conn: Any
    data: Bytes
    sendall: bool
    def __init__(self, conn: Any, data: Bytes, sendall: bool = False) -> None: ...

@final
class Loop:
    def __init__(self, virtual_time: bool = False, slow_step: Optional[float] = None,
                 debug: Optional[bool] = None, schedule_seed: Optional[int] = None) -> None: ...
    def run(self, root: Runnable[_T]) -> _T: ...
    def interrupt(self, exc: BaseException) -> None: ...

def null() -> ValueEvent[None]: ...
def sleep(seconds: float) -> SleepEvent: ...
def spawn(coro: Runnable[Any]) -> SpawnEvent: ...
def call(coro: Runnable[_T]) -> DelegationEvent[_T]: ...
def end(value: Any = None) -> ReturnEvent: ...
def join(coro: Runnable[Any]) -> JoinEvent: ...
def kill(coro: Runnable[Any]) -> KillEvent: ...
def later(func: Callable[..., _T], *args: Any) -> Event[_T]: ...
def wait_readable(fileobj: _FileLike) -> WaitableEvent[None]: ...
def wait_writable(fileobj: _FileLike) -> WaitableEvent[None]: ...

# What timeout(), fail_after(), move_on_after() and shield() give without a
# body: a block for ``async with``. Only move_on_after's swallows what ends
# it (its own cancellation), so only its __aexit__ may return True.
class _Block:
    cancelled_caught: bool
    async def __aenter__(self) -> _Block: ...
    async def __aexit__(self, exc_type: Optional[Type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None: ...

class _MoveOnBlock:
    cancelled_caught: bool
    async def __aenter__(self) -> _MoveOnBlock: ...
    async def __aexit__(self, exc_type: Optional[Type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> bool: ...

# The overload without a body comes last: tests/test_stub.py compares the
# last definition's parameters with the core's (body=None).
@overload
def timeout(seconds: float, body: Union[Event[_T], Runnable[_T]]) -> Event[_T]: ...
@overload
def timeout(seconds: float, body: None = None) -> _Block: ...
@overload
def fail_after(seconds: float, body: Union[Event[_T], Runnable[_T]]) -> Event[_T]: ...
@overload
def fail_after(seconds: float, body: None = None) -> _Block: ...
@overload
def move_on_after(seconds: float, body: Union[Event[_T], Runnable[_T]]) -> Event[Optional[_T]]: ...
@overload
def move_on_after(seconds: float, body: None = None) -> _MoveOnBlock: ...
@overload
def shield(body: Union[Event[_T], Runnable[_T]]) -> Event[_T]: ...
@overload
def shield(body: None = None) -> _Block: ...
def current_deadline() -> float: ...
def current_time() -> float: ...
def current() -> Optional[Runnable[Any]]: ...
def run(
    root_coro: Runnable[_T], *, virtual_time: bool = False, slow_step: Optional[float] = None,
    debug: Optional[bool] = None, schedule_seed: Optional[int] = None
) -> _T: ...
def notify_closing(fileobj: _FileLike) -> None: ...
def tasks() -> List[TaskInfo]: ...
def wakeup_fd() -> int: ...
def iscoroutine(obj: object) -> bool: ...
