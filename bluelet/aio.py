"""bluelet and asyncio in one thread: a bluelet program inside asyncio's loop,
asyncio's libraries from bluelet coroutines.

``await bluelet.aio.run(main())`` runs a bluelet program as a guest of the
running asyncio loop (asyncio's own or uvloop): the loop watches bluelet's
poller descriptor (``add_reader``) and its next deadline (``call_later``),
and each time one is due, one ``Loop.step()`` runs what is ready -- bluelet's
own scheduler, compiled core included, only never waiting itself. No thread
is involved.

Inside such a program, ``result = yield bluelet.aio.wait(awaitable)`` (or
``await``) runs an asyncio coroutine, Future or Task on the host loop and
gives its result. ``bluelet.run(main(), host="asyncio")`` (or ``"uvloop"``)
is the whole arrangement for a program that only wants ``aio.wait``.
"""

import asyncio
import inspect
from typing import Any, Awaitable, Generator, Optional, TypeVar, cast

from ._coroutines import awaitable
from ._errors import Cancelled
from ._guest import Outcome, finish, guest_loop
from ._impl import Completion
from ._records import Op, Runnable
from ._threads import settle

_T = TypeVar("_T")

__all__ = ["run", "wait"]

#: The hosts ``bluelet.run(..., host=...)`` knows.
HOSTS = ("asyncio", "uvloop")


class _AsyncioHost:
    """Steps one guest Loop from asyncio callbacks."""

    __slots__ = ("_host", "_loop", "_fd", "_soon", "_timer", "_when", "outcome", "done")

    def __init__(self, host: asyncio.AbstractEventLoop, loop: Any) -> None:
        self._host = host
        self._loop = loop
        self._fd = loop.fileno()
        self._soon: Optional[asyncio.Handle] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._when = -1.0
        self.outcome: Optional[Outcome[Any]] = None
        self.done = host.create_future()
        host.add_reader(self._fd, self._step)
        self._step_soon()

    def _step_soon(self) -> None:
        if self._soon is None:
            self._soon = self._host.call_soon(self._step)

    def _step(self) -> None:
        self._soon = None
        if self.outcome is not None:
            return
        try:
            answer = self._loop.step()
        except BaseException as exc:  # a failure inside the core: end the run with it
            self._end(exc)
            return
        if answer is None:
            self._end(None)
        elif answer == 0.0:
            self._step_soon()
        elif answer > 0.0:
            when = self._host.time() + answer
            # Most steps leave the next deadline where it was: keep its handle.
            if self._timer is None or abs(when - self._when) > 0.0005:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self._host.call_at(when, self._on_timer)
                self._when = when

    def _on_timer(self) -> None:
        self._timer = None
        self._step()

    def _end(self, error: Optional[BaseException]) -> None:
        self._host.remove_reader(self._fd)
        if self._timer is not None:
            self._timer.cancel()
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        # The outcome is kept here, not in the future: asyncio gives
        # KeyboardInterrupt and SystemExit set on a future special treatment.
        self.outcome = finish(self._loop, error)
        self.done.set_result(None)

    def cancel(self) -> None:
        """Raise Cancelled in the root, as Ctrl-C would raise KeyboardInterrupt."""
        if self.outcome is None:
            self._loop.interrupt(Cancelled("the asyncio task running this bluelet program "
                                           "was cancelled"))
            self._step_soon()


async def run(root: Runnable[_T], *, slow_step: Optional[float] = None,
              debug: Optional[bool] = None, schedule_seed: Optional[int] = None) -> _T:
    """Run bluelet program ``root`` inside the running asyncio loop; return its result.

    Works under asyncio's own loop and uvloop; other coroutines of both
    kinds run meanwhile, in the same thread. A failure in the program is
    raised here. Cancelling the awaiting task raises ``bluelet.Cancelled``
    in ``root`` at its ``yield``; once it ends, the coroutines still alive
    are closed (every ``finally`` block runs), and then ``CancelledError``
    is raised here. ``slow_step``, ``debug`` and ``schedule_seed`` are as
    for ``bluelet.run``. Needs epoll or kqueue (Linux, macOS, BSD).
    """
    host = _AsyncioHost(asyncio.get_running_loop(),
                        guest_loop(root, slow_step, debug, schedule_seed))
    try:
        await asyncio.shield(host.done)
    except asyncio.CancelledError:
        host.cancel()
        while not host.done.done():
            # Cancelled again meanwhile: the program's finally blocks still
            # run to their end before this returns.
            try:
                await asyncio.shield(host.done)
            except asyncio.CancelledError:
                pass
        raise
    assert host.outcome is not None
    return cast(_T, host.outcome.unwrap())


def run_hosted(root: Runnable[_T], host: str, slow_step: Optional[float],
               debug: Optional[bool], schedule_seed: Optional[int]) -> _T:
    """``bluelet.run(root, host=...)``: a fresh asyncio (or uvloop) loop running ``run``."""
    program = run(root, slow_step=slow_step, debug=debug, schedule_seed=schedule_seed)
    if host == "uvloop":
        import uvloop
        return uvloop.run(program)
    return asyncio.run(program)


def _host_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("bluelet.aio.wait() needs bluelet running inside asyncio: "
                           "bluelet.run(main(), host='asyncio') or "
                           "await bluelet.aio.run(main())") from None


def wait(aw: Awaitable[_T]) -> Op[_T]:
    """Run asyncio awaitable ``aw`` on the host loop; ``yield`` (or ``await``) it
    for its result.

    ``aw`` is an asyncio coroutine, Future or Task (or any other awaitable
    asyncio accepts); its exception is raised at the ``yield``. If the
    waiting coroutine is killed or its deadline passes, the asyncio side is
    cancelled; if the asyncio side is cancelled, ``bluelet.Cancelled`` is
    raised at the ``yield``. Only under a guest run (``aio.run`` or
    ``bluelet.run(..., host="asyncio")``).
    """
    if not inspect.isawaitable(aw):
        raise TypeError("bluelet.aio.wait() needs an asyncio coroutine, Future or Task, "
                        "not %r" % (aw,))
    return _wait(aw)


class _Bridge:
    """The Completion an asyncio future settles, exactly once."""

    __slots__ = ("completion", "settled")

    def __init__(self) -> None:
        self.completion = Completion()
        self.settled = False

    def from_future(self, future: "asyncio.Future[Any]") -> None:
        if self.settled:
            return
        self.settled = True
        if future.cancelled():
            self.completion.set_exception(Cancelled("the asyncio side was cancelled"))
        else:
            settle(self.completion, future)

    def abandon(self) -> None:
        """Nobody waits any more: settle it so the loop stops expecting it."""
        if not self.settled:
            self.settled = True
            self.completion.set_result(None)


@awaitable
def _wait(aw: Awaitable[Any]) -> Generator[Any, Any, Any]:
    future = asyncio.ensure_future(aw, loop=_host_loop())
    bridge = _Bridge()
    future.add_done_callback(bridge.from_future)
    try:
        return (yield bridge.completion)
    finally:
        # Killed or timed out: the asyncio side is cancelled too.
        future.remove_done_callback(bridge.from_future)
        future.cancel()
        bridge.abandon()
