"""Waiting on several coroutines at once: join_all() and first().

Both run a ``_Group``: every coroutine is spawned (unless it already was) and
joined by a *watcher*, a small coroutine that reports its outcome to the
waiting parent through a core ``WaitQueue``. A failure thus reaches a joiner
(the watcher) instead of ending ``run()``, and the parent sees outcomes in
the order they happen.

When the group is decided -- all done, the first done, a failure, or the
parent itself killed or out of time -- the parent kills the coroutines still
running before its ``yield`` returns or raises, so their ``finally`` blocks
have run; inside ``shield()``, so that a parent being cancelled can do it.
"""

import collections
from typing import Any, Deque, Generator, Iterable, List, Optional, Tuple

from ._coroutines import awaitable, not_started
from ._impl import WaitQueue, iscoroutine, join, kill, shield, spawn
from ._records import AnyCoro, Coro, Op

__all__ = ["join_all", "first"]


def _coroutines(coros: Iterable[AnyCoro], verb: str) -> List[AnyCoro]:
    """``coros`` as a list, checked at the call: TypeError for a non-generator."""
    coros = list(coros)
    for coro in coros:
        if not iscoroutine(coro):
            raise TypeError("%s() needs coroutines (generators or async def coroutines), "
                            "not %r" % (verb, coro))
    return coros


def join_all(coros: Iterable[AnyCoro]) -> Op[List[Any]]:
    """Event: run ``coros`` concurrently; the value is the list of their results.

    Results are in the order of ``coros``. Coroutines not yet spawned are
    spawned; spawned ones are joined. If one fails, the others are killed
    and its exception is raised here. If the waiting coroutine is killed or
    timed out, they are killed too. A coroutine killed by someone else
    counts as returning None. Failures after the first are ignored.

    A coroutine spawned elsewhere is joined from the next turn on: if it
    fails before then, its exception ends ``run()`` as an unjoined failure
    does. Hand over coroutines not yet spawned to have every failure here.
    """
    return _Group(_coroutines(coros, "join_all"))._run(want_all=True)


def first(coros: Iterable[AnyCoro]) -> Op[Any]:
    """Event: race ``coros``; the first to finish decides, the rest are killed.

    The value is the winner's result, or its exception is raised here; the
    losers are killed (their ``finally`` blocks run) before this returns.
    Spawning and cancellation are as for ``join_all()``. ValueError at the
    call if ``coros`` is empty.
    """
    coros = _coroutines(coros, "first")
    if not coros:
        raise ValueError("first() needs at least one coroutine")
    return _Group(coros)._run(want_all=False)


class _Group:
    """The coroutines of one join_all() or first() call, and their outcomes."""

    def __init__(self, coros: List[AnyCoro]) -> None:
        self._coros = coros
        # (index, value, exc), in finishing order
        self._outcomes: Deque[Tuple[int, Any, Optional[Exception]]] = collections.deque()
        self._arrived = WaitQueue()            # the parent waits here for outcomes
        self._done = False                     # decided: outcomes are no longer wanted

    @awaitable
    def _run(self, want_all: bool) -> Coro:
        for index, coro in enumerate(self._coros):
            yield spawn(self._watch(index, coro))
        closing = False
        try:
            return (yield from self._collect(want_all))
        except GeneratorExit:
            closing = True  # closed, not cancelled: nothing can wait now
            raise
        finally:
            self._done = True
            if not closing:
                yield shield(self._cancel())

    def _collect(self, want_all: bool) -> Coro:
        """Wait for the outcomes needed: every result, or the first one."""
        results: List[Any] = [None] * len(self._coros)
        left = len(self._coros)
        while left:
            while self._outcomes:
                index, value, exc = self._outcomes.popleft()
                if exc is not None:
                    raise exc
                if not want_all:
                    return value
                results[index] = value
                left -= 1
            if left:
                yield self._arrived.wait()
        return results

    def _cancel(self) -> Generator[Any, Any, None]:
        for coro in self._coros:
            try:
                yield kill(coro)
            except ValueError:
                pass  # never spawned: its watcher saw the group decided first

    def _watch(self, index: int, coro: AnyCoro) -> Generator[Any, Any, None]:
        """Spawn ``coro`` if nobody has, join it, report its outcome."""
        if self._done:
            return
        if not_started(coro):
            try:
                yield spawn(coro)
            except ValueError:
                pass  # spawned already, by its owner, and not started yet
        try:
            value = yield join(coro)
        except Exception as exc:
            self._report(index, None, exc)
        else:
            self._report(index, value, None)

    def _report(self, index: int, value: Any, exc: Optional[Exception]) -> None:
        if not self._done:
            self._outcomes.append((index, value, exc))
            self._arrived.wake()
