"""Guest mode: a bluelet program run by another event loop (a GUI's, asyncio's).

The core's guest interface is four ``Loop`` methods: ``start(root)``;
``step()``, which runs what is ready without ever waiting and says when to
step again (at once, after some seconds, or when ``fileno()`` is readable);
``fileno()``, the poller's own descriptor, readable whenever I/O or a
wake-up from another thread is due; and ``finish()``. A host that can watch
a descriptor and set timers (asyncio: ``bluelet.aio``) drives it directly.

A host that can only run a callback soon, from any thread -- Tk's, Qt's and
most GUI loops' one primitive -- gets ``start_guest_run``: a waiting thread
blocks on the loop's descriptor (it only waits, it never reads: the step
that follows does), then hands a step to the host and waits for its answer.
Every coroutine still runs in the host's thread.
"""

import os
import select
import threading
from typing import Any, Callable, Generic, Optional, TypeVar

from . import _impl
from ._errors import Cancelled
from ._records import Runnable

_T = TypeVar("_T")

__all__ = ["Outcome", "start_guest_run"]


class Outcome(Generic[_T]):
    """How a guest run ended: its root's result, or the exception that ended it."""

    __slots__ = ("value", "error")

    def __init__(self, value: Optional[_T] = None, error: Optional[BaseException] = None) -> None:
        self.value = value
        self.error = error

    def unwrap(self) -> _T:
        """The result, or raise the exception."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]

    def __repr__(self) -> str:
        return "Outcome(error=%r)" % (self.error,) if self.error is not None \
            else "Outcome(value=%r)" % (self.value,)


def guest_loop(root: Runnable[Any], slow_step: Optional[float], debug: Optional[bool],
               schedule_seed: Optional[int]) -> Any:
    """A started core Loop for ``root``, checked to have a descriptor to watch."""
    loop = _impl.Loop(False, slow_step, debug, schedule_seed)
    loop.start(root)
    if loop.fileno() < 0:
        loop.finish()
        raise RuntimeError("guest mode needs a poller with a descriptor (epoll or kqueue); "
                           "this platform's select() has none")
    return loop


def finish(loop: Any, error: Optional[BaseException] = None) -> Outcome[Any]:
    """End ``loop``'s run; its Outcome (``error``, if a step failed, wins)."""
    try:
        value = loop.finish()
    except BaseException as exc:  # the run's own failure: the Outcome carries it
        return Outcome(error=error or exc)
    return Outcome(error=error) if error is not None else Outcome(value)


class GuestRun:
    """A guest run driven through ``run_sync_soon_threadsafe``.

    ``cancel()`` (from the host's thread) stops it as Ctrl-C stops
    ``run()``: ``exc`` (default ``bluelet.Cancelled``) is raised in the root
    at its ``yield``, the others are closed when it ends, every ``finally``
    block runs; ``done_callback`` is called as always.
    """

    def __init__(self, loop: Any, run_sync_soon_threadsafe: Callable[[Callable[[], None]], None],
                 done_callback: Callable[[Outcome[Any]], None]) -> None:
        self._loop = loop
        self._run_soon = run_sync_soon_threadsafe
        self._done = done_callback
        self._answer: Optional[float] = 0.0
        self._answered = threading.Event()
        # cancel() wakes the waiting thread through this: the interrupt
        # needs a step, and the loop's descriptor may stay quiet for long.
        self._nudge_r, self._nudge_w = os.pipe()
        self._nudge_lock = threading.Lock()  # no write once the pipe is closed
        self._waiter = threading.Thread(target=self._wait, name="bluelet-guest-waiter",
                                        daemon=True)
        self._waiter.start()

    def cancel(self, exc: Optional[BaseException] = None) -> None:
        """Stop the run (host thread); see the class docstring."""
        self._loop.interrupt(exc if exc is not None else Cancelled())
        with self._nudge_lock:
            if self._nudge_w >= 0:  # else the run is over: nothing to wake
                os.write(self._nudge_w, b"\0")

    def _wait(self) -> None:
        """Waiting thread: sleep until a step is due, have the host run it."""
        fd = self._loop.fileno()
        wait: Optional[float] = 0.0
        while wait is not None:
            if wait != 0.0:
                # Readable means due; a deadline passing means due. Reading
                # is left to the step, in the host's thread.
                ready = select.select([fd, self._nudge_r], [], [], None if wait < 0 else wait)[0]
                if self._nudge_r in ready:
                    os.read(self._nudge_r, 64)
            self._answered.clear()
            self._run_soon(self._step)
            self._answered.wait()
            wait = self._answer
        with self._nudge_lock:
            os.close(self._nudge_r)
            os.close(self._nudge_w)
            self._nudge_w = -1

    def _step(self) -> None:
        """Host thread: one step; at the end, finish and report."""
        error = None
        try:
            answer = self._loop.step()
        except BaseException as exc:  # a failure inside the core: end the run with it
            answer, error = None, exc
        if answer is None:
            self._done(finish(self._loop, error))
        self._answer = answer
        self._answered.set()


def start_guest_run(root: Runnable[Any], *,
                    run_sync_soon_threadsafe: Callable[[Callable[[], None]], None],
                    done_callback: Callable[[Outcome[Any]], None],
                    slow_step: Optional[float] = None, debug: Optional[bool] = None,
                    schedule_seed: Optional[int] = None) -> GuestRun:
    """Run ``root`` as a guest of another event loop, e.g. a GUI's; returns at once.

    ``run_sync_soon_threadsafe(fn)`` must make the host call ``fn()`` soon,
    in the host's thread, and may be called from any thread (Tk:
    ``widget.after(0, fn)`` from a threaded Tcl, or an event posted to the
    main loop). Every coroutine runs in the host's thread, inside those
    calls; a helper thread only waits for I/O and deadlines. When the run
    ends, ``done_callback(outcome)`` is called in the host's thread with an
    ``Outcome``: ``outcome.unwrap()`` gives the root's result or raises what
    ended the run. The host must keep running until then. Needs epoll or
    kqueue (Linux, macOS, BSD).
    """
    return GuestRun(guest_loop(root, slow_step, debug, schedule_seed),
                    run_sync_soon_threadsafe, done_callback)
