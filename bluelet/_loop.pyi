"""Types of the scheduler core, shared by both twins (_loop.pyx, _loop_py.py).

Type checkers read this for ``bluelet._loop`` and, through ``bluelet._impl``,
for whichever twin runs; tests/test_stub.py checks it against both.
"""

import logging
from typing import Any, Callable, Iterable, List, Optional, Protocol, Tuple, Union, final

from typing_extensions import disjoint_base

from ._records import Bytes, Coro, ExcInfo, TaskInfo

__all__ = [
    "Event", "WaitableEvent", "ValueEvent", "ExceptionEvent", "SpawnEvent",
    "JoinEvent", "KillEvent", "DelegationEvent", "ReturnEvent", "SleepEvent",
    "ReadEvent", "WriteEvent", "AcceptEvent", "ReceiveEvent", "SendEvent",
    "Loop", "run", "null", "sleep", "spawn", "call", "end", "join", "kill",
    "later", "wait_readable", "wait_writable", "notify_closing",
    "timeout", "WaitQueue", "Completion", "current", "tasks", "wakeup_fd",
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
@disjoint_base
class Event: ...

class WaitableEvent(Event):
    def waitables(
        self,
    ) -> Tuple[Iterable[_FileLike], Iterable[_FileLike], Iterable[_FileLike]]: ...
    def fire(self) -> Any: ...

@disjoint_base
class ValueEvent(Event):
    def __init__(self, value: Any) -> None: ...
    @property
    def value(self) -> Any: ...

@disjoint_base
class ExceptionEvent(Event):
    exc_info: Union[ExcInfo, BaseException]
    def __init__(self, exc_info: Union[ExcInfo, BaseException]) -> None: ...

@disjoint_base
class SpawnEvent(Event):
    spawned: Coro
    def __init__(self, coro: Coro) -> None: ...

@disjoint_base
class JoinEvent(Event):
    child: Coro
    def __init__(self, child: Coro) -> None: ...

@disjoint_base
class KillEvent(Event):
    child: Coro
    def __init__(self, child: Coro) -> None: ...

@disjoint_base
class DelegationEvent(Event):
    spawned: Coro
    def __init__(self, coro: Coro) -> None: ...

@disjoint_base
class ReturnEvent(Event):
    value: Any
    def __init__(self, value: Any) -> None: ...

@disjoint_base
class WaitQueue(Event):
    def __init__(self, external: bool = False) -> None: ...
    def __len__(self) -> int: ...
    def wait(self) -> WaitQueue: ...
    def wake(self, value: Any = None, exc: Optional[BaseException] = None) -> bool: ...
    def wake_all(self, value: Any = None, exc: Optional[BaseException] = None) -> int: ...

@disjoint_base
class Completion(Event):
    def __init__(self) -> None: ...
    def set_result(self, value: Any) -> None: ...
    def set_exception(self, exc: BaseException) -> None: ...

@disjoint_base
class SleepEvent(WaitableEvent):
    wakeup_time: float
    duration: float
    def __init__(self, duration: float) -> None: ...
    def time_left(self) -> float: ...

# The descriptor events wrap file and socket objects duck-typed by the
# feature modules (``fd.read``, ``listener.sock``, ``conn.sock``): Any.

@disjoint_base
class ReadEvent(WaitableEvent):
    fd: Any
    bufsize: Optional[int]
    def __init__(self, fd: Any, bufsize: Optional[int]) -> None: ...

@disjoint_base
class WriteEvent(WaitableEvent):
    fd: Any
    data: Bytes
    def __init__(self, fd: Any, data: Bytes) -> None: ...

@disjoint_base
class AcceptEvent(WaitableEvent):
    listener: Any
    def __init__(self, listener: Any) -> None: ...

@disjoint_base
class ReceiveEvent(WaitableEvent):
    conn: Any
    bufsize: int
    def __init__(self, conn: Any, bufsize: int) -> None: ...

@disjoint_base
class SendEvent(WaitableEvent):
    conn: Any
    data: Bytes
    sendall: bool
    def __init__(self, conn: Any, data: Bytes, sendall: bool = False) -> None: ...

@final
class Loop:
    def __init__(self, virtual_time: bool = False, slow_step: Optional[float] = None) -> None: ...
    def run(self, root: Coro) -> Any: ...
    def interrupt(self, exc: BaseException) -> None: ...

def null() -> ValueEvent: ...
def sleep(seconds: float) -> SleepEvent: ...
def spawn(coro: Coro) -> SpawnEvent: ...
def call(coro: Coro) -> DelegationEvent: ...
def end(value: Any = None) -> ReturnEvent: ...
def join(coro: Coro) -> JoinEvent: ...
def kill(coro: Coro) -> KillEvent: ...
def later(func: Callable[..., Any], *args: Any) -> Event: ...
def wait_readable(fileobj: _FileLike) -> WaitableEvent: ...
def wait_writable(fileobj: _FileLike) -> WaitableEvent: ...
def timeout(seconds: float, body: Union[Event, Coro]) -> Event: ...
def current() -> Optional[Coro]: ...
def run(
    root_coro: Coro, *, virtual_time: bool = False, slow_step: Optional[float] = None
) -> Any: ...
def notify_closing(fileobj: _FileLike) -> None: ...
def tasks() -> List[TaskInfo]: ...
def wakeup_fd() -> int: ...
