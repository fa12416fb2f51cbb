"""What the package asks of a coroutine, in either style: a generator or the
coroutine of an ``async def``. Their attributes differ only in prefix
(``gi_frame``, ``cr_frame``)."""

import inspect
import sys
import sysconfig
import types
from typing import TYPE_CHECKING, Any, Callable, Generator, Optional, TypeVar

from ._records import Op

__all__ = ["FREE_THREADED", "awaitable", "code", "driven", "frame", "not_an_event",
           "not_started", "state"]

_R = TypeVar("_R")

#: Whether this interpreter was built without the GIL (3.13t, 3.14t): then
#: coroutines of loops in other threads truly run at the same time.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    _P = ParamSpec("_P")

    def awaitable(func: Callable[_P, Generator[Any, Any, _R]]) -> Callable[_P, Op[_R]]: ...
else:
    def awaitable(func):
        """Let the generators of generator function ``func`` be awaited from
        an ``async def`` as well as yielded. They stay plain generators: the
        flag this sets (``types.coroutine``) changes nothing for ``yield``."""
        return types.coroutine(func)


def frame(coro: Any) -> Optional[types.FrameType]:
    """The coroutine's frame; None once it has ended."""
    return coro.gi_frame if type(coro) is types.GeneratorType else coro.cr_frame


if sys.version_info >= (3, 11):  # gi_suspended and cr_suspended
    def driven(coro: Any) -> bool:
        """Whether the coroutine has started and not finished: somebody
        drives it. (For the cores' spawn and call checks: cheaper than state().)"""
        if type(coro) is types.GeneratorType:
            return bool(coro.gi_suspended or coro.gi_running)
        return bool(coro.cr_suspended or coro.cr_running)
else:  # Python < 3.11: a coroutine that has not started is at instruction -1
    def driven(coro: Any) -> bool:
        """Whether the coroutine has started and not finished: somebody
        drives it. (For the cores' spawn and call checks: cheaper than state().)"""
        running = coro.gi_running if type(coro) is types.GeneratorType else coro.cr_running
        started = frame(coro)
        return bool(running or (started is not None and started.f_lasti != -1))


def not_an_event(obj: Any) -> TypeError:
    """The TypeError for a coroutine that yielded (or awaited) ``obj``."""
    if hasattr(type(obj), "_asyncio_future_blocking"):
        return TypeError(
            "a bluelet coroutine awaited %r, an asyncio object: bluelet's loop cannot wait "
            "for asyncio futures or tasks (run asyncio code in its own thread, e.g. "
            "yield bluelet.to_thread(asyncio.run, main()))" % (obj,))
    return TypeError("bluelet coroutines must yield events or coroutines, not %r" % (obj,))


def code(coro: Any) -> Optional[types.CodeType]:
    """The coroutine's code object (None for a compiled generator without one)."""
    return getattr(coro, "gi_code", None) or getattr(coro, "cr_code", None)


def state(coro: Any) -> str:
    """inspect's state name for the coroutine, with the generator names for
    both styles: GEN_CREATED, GEN_RUNNING, GEN_SUSPENDED or GEN_CLOSED."""
    if type(coro) is types.GeneratorType:
        return inspect.getgeneratorstate(coro)
    return "GEN_" + inspect.getcoroutinestate(coro)[len("CORO_"):]


def not_started(coro: Any) -> bool:
    """Whether the coroutine has not run a line yet."""
    return state(coro) == inspect.GEN_CREATED
