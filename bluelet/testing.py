"""Run coroutine tests under ``bluelet.run`` with a real-time deadline.

::

    import bluelet
    from bluelet.testing import coroutine_test

    @coroutine_test(timeout=2.0, virtual_time=True)
    def test_retry_backs_off():
        yield bluelet.sleep(3600)      # no real time passes
        assert (yield fetch()) == b"ok"

The decorated function is an ordinary test function for pytest (or any
runner): it takes the same arguments (pytest fixtures included), builds the
generator and runs it with ``run_test``. Pytest is not needed at run time.

How the deadline works
    The deadline is wall-clock time in both modes. A core ``timeout()`` would
    not do: under ``virtual_time`` its deadline is virtual, and the clock
    jumps to it the moment nothing is ready, so a test waiting for a socket
    or a thread would be failed at once. Instead a ``threading.Timer``
    delivers a ``Completion`` that a watchdog coroutine waits for; the
    Completion wakes the loop through its wake-up socket, so it is seen whether the
    loop is blocked in I/O or racing through virtual sleeps. The watchdog
    then raises ``DeadlineExceeded``, which ends ``run()``: every coroutine
    is closed (its ``finally`` blocks run) and the message carries a dump of
    where each coroutine was waiting.

Limits
    - A coroutine that blocks the loop without yielding (``time.sleep``, a
      busy loop) cannot be interrupted by the watchdog; pytest-timeout
      covers that case.
    - While the watchdog waits, the loop expects a wake-up from its timer
      thread, so coroutines that wait for each other forever are reported by
      the deadline (with the dump) rather than at once as a deadlock.
    - The test runs as a spawned coroutine next to two of the harness's own
      (``_supervise``, which joins it, and ``_watchdog``); ``tasks()`` lists
      them too.
"""

import functools
import inspect
import threading
from typing import Any, Callable, Generator, Optional, TypeVar, overload

from . import _impl
from ._coroutines import awaitable
from ._impl import (Completion, current, current_time, iscoroutine, join, kill, run, sleep,
                    spawn, tasks)
from ._introspect import format_tasks
from ._records import AnyCoro, Coro, Runnable

_T = TypeVar("_T")

__all__ = ["DeadlineExceeded", "VirtualClock", "coroutine_test", "run_test",
           "wait_all_tasks_blocked"]


class DeadlineExceeded(AssertionError):
    """A coroutine test did not finish within its real-time deadline.

    An AssertionError, so test runners report a failed test. The message
    names the test and includes a dump of every coroutine still alive.
    """


class _Alarm:
    """A Completion that a timer thread delivers after ``seconds``.

    ``disarm`` guarantees the timer thread will not touch the loop once it
    returns: the loop's wake-up socket closes when ``run()`` ends, and its fd
    number may be reused by then.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._completion: Optional[Completion] = None
        self._timer: Optional[threading.Timer] = None

    def arm(self) -> Completion:
        """Start the timer; return the Completion it delivers (loop thread)."""
        self._completion = Completion()
        self._timer = threading.Timer(self.seconds, self._ring)
        self._timer.daemon = True
        self._timer.start()
        return self._completion

    def _ring(self) -> None:
        with self._lock:
            if self._completion is not None:
                self._completion.set_result(None)
                self._completion = None

    def disarm(self) -> None:
        """Stop the timer; after this the loop is never woken by it."""
        with self._lock:
            self._completion = None
        if self._timer is not None:
            self._timer.cancel()


def _watchdog(alarm: Completion, seconds: float, name: str,
              supervisor: Optional[AnyCoro]) -> Coro:
    """Wait for the alarm, then end the run with DeadlineExceeded."""
    yield alarm
    harness = (current(), supervisor)
    report = format_tasks(info for info in tasks() if info.coroutine not in harness)
    raise DeadlineExceeded(
        "%s did not finish within %g s of real time; every coroutine was closed "
        "(their finally blocks ran). Where they were at the deadline:\n\n%s"
        % (name, seconds, report))


def _supervise(body: Runnable[_T], alarm: Optional[_Alarm]) -> Generator[Any, Any, _T]:
    """Run ``body`` and what it spawns, racing them against the alarm."""
    me = current()
    watchdog = None
    try:
        if alarm is not None:
            watchdog = _watchdog(alarm.arm(), alarm.seconds, _name(body), me)
            yield spawn(watchdog)
        yield spawn(body)
        result: _T = yield join(body)
        # run() would also wait for coroutines the test left running: they are
        # part of the test and get the same deadline. A failure among them is
        # raised here, so it fails the test.
        while True:
            others = [info.coroutine for info in tasks()
                      if info.coroutine is not me and info.coroutine is not watchdog]
            if not others:
                break
            for coro in others:
                yield join(coro)
        if watchdog is not None:
            yield kill(watchdog)
    finally:
        if alarm is not None:
            alarm.disarm()
    return result


def _name(gen: Any) -> str:
    return getattr(gen, "__qualname__", None) or repr(gen)


def run_test(gen: Runnable[_T], timeout: Optional[float] = 5.0,
             virtual_time: bool = False, schedule_seed: Optional[int] = None) -> _T:
    """Run coroutine ``gen`` (a generator or an ``async def``'s coroutine: a
    coroutine test) to completion; return its result.

    Like ``bluelet.run(gen)`` (it also waits for the coroutines ``gen``
    spawns), plus: if the whole program has not finished after ``timeout``
    seconds of real time, every coroutine is closed and DeadlineExceeded is
    raised; ``timeout=None`` sets no deadline. With ``virtual_time=True``
    sleeps take no real time (the clock jumps to the next deadline whenever
    no coroutine is ready). ``schedule_seed`` is as for ``bluelet.run``.
    An exception that ends ``gen`` is raised here.
    """
    __tracebackhide__ = True  # pytest: show the test's frames, not ours
    if not iscoroutine(gen):
        raise TypeError("run_test() needs a coroutine (a generator or an async def "
                        "coroutine), not %r" % (gen,))
    if timeout is not None and not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds or None, not %r"
                         % (timeout,))
    alarm = None if timeout is None else _Alarm(timeout)
    try:
        return run(_supervise(gen, alarm), virtual_time=virtual_time,
                   schedule_seed=schedule_seed)
    except DeadlineExceeded as error:
        # Raised from the watchdog inside the loop's machinery, which says
        # nothing useful; the message carries where the coroutines were.
        raise error.with_traceback(None) from None
    finally:
        # Normally done by _supervise; again here in case run() failed early.
        if alarm is not None:
            alarm.disarm()


# What coroutine_test decorates, and what it returns: a test function
# taking the same arguments, which runs the generator and returns its result.
_GeneratorFunction = Callable[..., AnyCoro]
_TestFunction = Callable[..., Any]


@overload
def coroutine_test(func: _GeneratorFunction, *, timeout: Optional[float] = ...,
                   virtual_time: bool = ...) -> _TestFunction: ...


@overload
def coroutine_test(*, timeout: Optional[float] = ..., virtual_time: bool = ...
                   ) -> Callable[[_GeneratorFunction], _TestFunction]: ...


def coroutine_test(func: Optional[_GeneratorFunction] = None, *,
                   timeout: Optional[float] = 5.0,
                   virtual_time: bool = False) -> _TestFunction:
    """Decorator: turn a generator-function (or ``async def``) test into a
    plain test function.

    ``@coroutine_test`` or ``@coroutine_test(timeout=..., virtual_time=...)``.
    Calling the result calls ``func`` with the same arguments and runs the
    generator with ``run_test``. The signature is kept (``functools.wraps``),
    so pytest still passes the fixtures ``func`` asks for.
    """
    def decorate(func: _GeneratorFunction) -> _TestFunction:
        if not (inspect.isgeneratorfunction(func) or inspect.iscoroutinefunction(func)):
            raise TypeError("coroutine_test needs a generator function (one that "
                            "yields) or an async def, not %r" % (func,))

        @functools.wraps(func)
        def test(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True  # pytest: show the test's frames, not ours
            return run_test(func(*args, **kwargs), timeout=timeout,
                            virtual_time=virtual_time)

        return test

    if func is not None:
        return decorate(func)
    return decorate


#: How many passes wait_all_tasks_blocked() lets go by before it gives up:
#: a bound, not a policy (coroutines that keep each other ready never settle).
_SETTLE_PASSES = 100000


@awaitable
def wait_all_tasks_blocked() -> Generator[Any, Any, None]:
    """Event: wait until every other coroutine waits for something outside
    the program (I/O, a sleep, a thread) or for another coroutine: nothing
    is left to run but this one. For tests: "the server has handled
    everything it was sent"; RuntimeError if the others never settle.
    """
    me = current()
    for _ in range(_SETTLE_PASSES):
        # A sleep, not null(): due timers and ready I/O are served at the
        # poll, which comes only when nothing is ready.
        yield sleep(0)
        if not any(info.state in ("ready", "running") and info.coroutine is not me
                   for info in tasks()):
            return
    raise RuntimeError("wait_all_tasks_blocked(): the other coroutines kept running "
                       "for %d passes" % _SETTLE_PASSES)


class VirtualClock:
    """The clock of a test run with ``virtual_time=True`` (the pytest
    plugin's ``bluelet_clock`` fixture): sleeps take no real time, as the
    clock jumps to the next deadline whenever nothing is ready (autojump),
    and ``jump(seconds)`` moves it forward by hand.
    """

    def now(self) -> float:
        """The virtual time now (``bluelet.current_time()``)."""
        return current_time()

    def jump(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward; what is due by then runs at
        the next scheduling point. Only inside a run with virtual time."""
        _impl.core._advance_clock(seconds)

