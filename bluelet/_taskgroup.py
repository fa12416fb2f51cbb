"""Task groups: structured concurrency on the core's spawn, kill and shield.

``task_group(body)`` runs ``body(group)`` and every coroutine spawned into
``group``, and returns once all of them have ended. Each of them is a
*member*: a task whose base is a small generator that calls the coroutine and
reports how it ended to the group's *owner* (the coroutine that yielded
``task_group``) through a core ``WaitQueue``. The owner kills the members
when one fails, when ``group.cancel()`` is asked for, and when the owner
itself is cancelled (killed, or out of time); that last time inside
``shield()``, so the members have ended before the cancellation goes on.

A kill ends a member that has not started without running any of it, so no
report comes from it: the owner forgets a member it has killed itself.
"""

import collections
import logging
import sys
import weakref
from typing import Any, Callable, Deque, Dict, Generator, List, Optional, Tuple, cast

from ._coroutines import awaitable
from ._errors import Cancelled
from ._impl import Event, WaitQueue, current, iscoroutine, kill, later, shield, spawn
from ._records import AnyCoro, Op

if sys.version_info >= (3, 11):
    from builtins import ExceptionGroup
else:  # pragma: no cover - the backport, before 3.11
    from exceptiongroup import ExceptionGroup

__all__ = ["TaskGroup", "task_group", "started"]

log = logging.getLogger("bluelet")


class _Start:
    """The handshake of one ``group.start()``: what ``started()`` hands back."""

    __slots__ = ("done", "value", "exc", "woken")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.exc: Optional[BaseException] = None
        self.woken = WaitQueue()

    def settle(self, value: Any, exc: Optional[BaseException]) -> None:
        self.done = True
        self.value = value
        self.exc = exc
        self.woken.wake()


#: Members started with ``group.start()`` that have not said ``started()``
#: yet, by member generator (weak: a member the loop dropped leaves nothing).
_starting: "weakref.WeakKeyDictionary[AnyCoro, _Start]" = weakref.WeakKeyDictionary()


def task_group(body: Callable[["TaskGroup"], AnyCoro]) -> Op[Any]:
    """Event: run ``body(group)`` and the coroutines spawned into ``group``.

    The value is ``body``'s result, once ``body`` and every coroutine in the
    group have ended. The first failure cancels (kills) ``body`` and the
    others; all failures are then raised together as an ``ExceptionGroup``
    (even a single one, as ``asyncio.TaskGroup`` does). If the coroutine
    that yielded this is killed or runs out of time, every coroutine of the
    group is killed (their ``finally`` blocks run) before the cancellation
    goes on. ``body`` and the members run in tasks of their own: the
    deadlines of the coroutine that runs the group do not apply inside
    them, but it kills them when they pass.
    """
    if not callable(body):
        raise TypeError("task_group() needs a function that takes the group and returns "
                        "a coroutine, not %r" % (body,))
    return TaskGroup()._run(body)


def started(value: Any = None) -> "Event[None]":
    """Event: tell the ``group.start()`` that started this coroutine it is ready.

    ``value`` is what that ``start()`` gives. In a coroutine that was not
    started with ``start()`` (or after the first call) it does nothing.
    """
    return later(_announce, value)


def _announce(value: Any) -> None:
    member = current()
    start = None if member is None else _starting.pop(member, None)
    if start is not None and not start.done:
        start.settle(value, None)


def _check(coro: Any, verb: str) -> None:
    if not iscoroutine(coro):
        raise TypeError("group.%s() needs a coroutine (a generator or an async def "
                        "coroutine), not %r" % (verb, coro))


class TaskGroup:
    """The group a ``task_group()`` body is given; spawn into it with its methods."""

    def __init__(self) -> None:
        self._members: Dict[AnyCoro, None] = {}  # live members, in the order they were spawned
        self._outcomes: Deque[Tuple[AnyCoro, Any, Optional[Exception]]] = collections.deque()
        self._arrived = WaitQueue()           # the owner waits here for outcomes
        self._failures: List[Exception] = []
        self._cancelling = False
        self._killing: Optional[AnyCoro] = None  # the member the owner is killing
        self._open = True                     # members may still be added
        self._body: Optional[AnyCoro] = None     # the member that runs body
        self._result: Any = None

    @property
    def cancelled(self) -> bool:
        """Whether the group is being (or was) cancelled: by a failure, ``cancel()``
        or its owner's cancellation."""
        return self._cancelling

    def spawn(self, coro: AnyCoro) -> Op[None]:
        """Event: start ``coro`` in the group; the caller goes on.

        In a group being cancelled, ``coro`` is closed without running.
        RuntimeError once the group has ended.
        """
        _check(coro, "spawn")
        return self._spawn(coro)

    def start(self, coro: AnyCoro) -> Op[Any]:
        """Event: start ``coro`` in the group and wait until it is ready.

        ``coro`` says so with ``yield bluelet.started(value)``; the value here
        is ``value``. An exception ``coro`` raises before that is raised here
        (and is not a failure of the group); RuntimeError if it ends, or is
        cancelled, without saying so.
        """
        _check(coro, "start")
        return self._start(coro)

    def cancel(self) -> "Event[None]":
        """Event: cancel the group: ``body`` and every member are killed, and
        ``task_group()`` gives None (unless something failed)."""
        return later(self._request_cancel)

    # -- the owner ----------------------------------------------------------

    @awaitable
    def _run(self, body: Callable[["TaskGroup"], AnyCoro]) -> Generator[Any, Any, Any]:
        coro = body(self)
        if not iscoroutine(coro):
            raise TypeError("task_group(): body(group) must return a coroutine (a generator "
                            "or an async def coroutine), not %r" % (coro,))
        try:
            self._body = yield from self._add(coro, None)
            while self._members or self._outcomes:
                self._take_outcomes()
                if self._members:
                    if self._failures or self._cancelling:
                        yield from self._kill_members()
                    else:
                        yield self._arrived.wait()
        except GeneratorExit:
            raise  # closed, not cancelled: nothing can wait now
        except BaseException:
            # Killed or out of time: no member outlives the group, even now.
            yield shield(self._kill_members())
            self._take_outcomes()
            for failure in self._failures:
                log.error("a coroutine of a cancelled task group failed", exc_info=failure)
            raise
        finally:
            self._open = False
        if self._failures:
            raise ExceptionGroup("%d coroutine(s) of a task group failed"
                                 % len(self._failures), self._failures)
        return self._result

    def _take_outcomes(self) -> None:
        while self._outcomes:
            member, value, exc = self._outcomes.popleft()
            if exc is not None:
                self._failures.append(exc)
            elif member is self._body:
                self._result = value

    def _kill_members(self) -> Generator[Any, Any, None]:
        self._cancelling = True
        while self._members:
            member = self._killing = next(iter(self._members))
            yield kill(member)
            self._killing = None
            # Killed before it started, it reported nothing: forget it here.
            self._members.pop(member, None)
            start = _starting.pop(member, None)
            if start is not None and not start.done:
                start.settle(None, RuntimeError("%r was cancelled before it called "
                                                "bluelet.started()" % (member,)))

    def _request_cancel(self) -> None:
        if self._open and not self._cancelling:
            self._cancelling = True
            self._arrived.wake()

    # -- members ------------------------------------------------------------

    def _add(self, coro: AnyCoro, start: Optional[_Start]
             ) -> Generator[Any, Any, Optional[AnyCoro]]:
        """Spawn a member running ``coro``; the member, or None if not spawned."""
        if not self._open:
            coro.close()
            raise RuntimeError("this task group has ended: nothing can be spawned into it")
        if self._cancelling:
            coro.close()
            return None
        member = self._member(coro)
        if start is not None:
            _starting[member] = start
        self._members[member] = None
        try:
            yield spawn(member)
        except BaseException:
            del self._members[member]
            raise
        return member

    @awaitable
    def _spawn(self, coro: AnyCoro) -> Generator[Any, Any, None]:
        yield from self._add(coro, None)

    @awaitable
    def _start(self, coro: AnyCoro) -> Generator[Any, Any, Any]:
        start = _Start()
        if (yield from self._add(coro, start)) is None:
            raise RuntimeError("the task group is cancelled: %r was not started" % (coro,))
        if not start.done:
            yield start.woken.wait()
        if start.exc is not None:
            raise start.exc
        return start.value

    def _member(self, coro: AnyCoro) -> Generator[Any, Any, None]:
        value: Any = None
        exc: Optional[Exception] = None
        try:
            value = yield coro
        except Exception as error:
            exc = error
            if current() is self._killing:
                # Its clean-up failed: a failure of the group, and still a
                # kill (carrying on would be swallowing the Cancelled).
                raise Cancelled() from error
        finally:
            self._report(cast(AnyCoro, current()), value, exc)

    def _report(self, member: AnyCoro, value: Any, exc: Optional[Exception]) -> None:
        start = _starting.pop(member, None)
        if start is not None and not start.done:
            # It never said it was ready: start() raises instead of the group.
            start.settle(None, exc if exc is not None else RuntimeError(
                "%r ended without calling bluelet.started()" % (member,)))
            exc = None
        if self._members.pop(member, self) is not self:
            self._outcomes.append((member, value, exc))
            self._arrived.wake()
