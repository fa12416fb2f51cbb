"""Unix signals for coroutines: ``yield signal(signum)``, and ``run()``'s handle_signals.

Waiting for a signal
    The first ``yield signal(signum)`` installs a Python handler for that
    signal which wakes a core ``WaitQueue(external=True)``; while any
    coroutine waits, ``signal.set_wakeup_fd`` points at the loop's wake-up
    socket. The handler runs when the signal interrupts the loop's poll, and
    the byte Python's C-level handler writes into that socket makes the poll
    return instead of resuming its wait.

    The handler stays installed for the rest of the ``bluelet.run()`` call
    (only until the last waiter leaves, under a loop started some other
    way), so a signal arriving between two waits is not lost: if the
    handler it replaced was a Python function (SIGINT's KeyboardInterrupt)
    that function is called, otherwise the signal is remembered and the
    next wait returns at once. Several such arrivals count as one, as
    POSIX signals do. Previous handlers and the previous wakeup fd are put
    back afterwards.

Stopping on SIGINT and SIGTERM (``run(root, handle_signals=True)``)
    The handler raises nothing: it hands KeyboardInterrupt (SIGTERM's
    carries the text "SIGTERM") to ``Loop.interrupt``, and the byte written
    to the wake-up socket ends the poll. At its next pass the loop raises
    KeyboardInterrupt in the root coroutine at its ``yield`` -- whether the
    signal came while the loop waited or while a coroutine ran, on either
    core. The other coroutines carry on meanwhile, so the root can wind
    them down (``server()`` lets its handlers finish); when the root ends,
    those still alive are cancelled (``bluelet.Cancelled`` at their
    ``yield``, so their ``finally`` blocks run). If the root caught it and
    returned, ``run()`` returns that value; otherwise ``run()``
    raises KeyboardInterrupt for SIGINT and ``SystemExit(128 + SIGTERM)``
    for SIGTERM: the process then exits quietly with status 143, the
    shell's convention for "terminated", which service managers expect.
    Without ``handle_signals``, Ctrl-C raises KeyboardInterrupt wherever
    Python happens to be, as in 0.2.0 -- except while ``serve()`` (what
    ``server()`` runs) runs under ``bluelet.run()`` in the main thread with
    SIGINT at Python's default: it takes SIGINT over as above
    (``take_ctrl_c``), so that 0.2.0's ``run(server(...))`` stops
    gracefully wherever the Ctrl-C lands, not only while the loop waits.

Signals reach Python only in the main thread, so both need the loop there.
"""

import os
import signal as _signal
import threading
from types import FrameType
from typing import Any, Callable, Dict, Generator, Iterable, Optional, TypeVar, Union, cast

from . import _impl
from ._coroutines import awaitable
from ._impl import WaitQueue, wakeup_fd
from ._instrument import Instrument, install, watch_stalls
from ._trace import start_trace
from ._records import Op, Runnable

_T = TypeVar("_T")

__all__ = ["run", "signal", "take_ctrl_c"]

#: What signal.signal() takes and returns: a function, SIG_DFL/SIG_IGN, or
#: None (a handler not installed from Python).
_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, _signal.Handlers, None]

#: The signals ``handle_signals`` turns into a stop.
_STOP_SIGNALS = (_signal.SIGINT, _signal.SIGTERM)


class _Watch:
    """One signal that coroutines wait for: its handler and its waiters."""

    __slots__ = ("signum", "waiters", "previous", "pending")

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.waiters = WaitQueue(external=True)
        self.previous = _signal.getsignal(signum)
        self.pending = False      # arrived while nobody waited

    def handle(self, signum: int, frame: Optional[FrameType]) -> None:
        """The Python signal handler (main thread, between two bytecodes)."""
        if self.waiters.wake_all(signum):
            return
        if callable(self.previous):
            self.previous(signum, frame)
        else:
            self.pending = True

    def restore(self) -> None:
        # None: the handler was not set from Python; the default is closest.
        previous = _signal.SIG_DFL if self.previous is None else self.previous
        _signal.signal(self.signum, previous)


# Module state: signals are delivered to the main thread only, and only the
# main thread touches it.
_watches: Dict[int, _Watch] = {}
_wakeup_users = 0                       # signal waits and handle_signals runs
_saved_wakeup_fd = -1                   # the wakeup fd before the first of them
# bluelet.run() calls active in the main thread: a count, not a flag, since a
# nested call fails (one loop per thread) and must not end the outer one's.
_run_depth = 0
# The loop of the bluelet.run() call active in the main thread: what a
# SIGINT taken over by take_ctrl_c() stops.
_main_loop: Optional[_impl.Loop] = None


def _forget_after_fork() -> None:
    """In a forked child: the parent's runs and waits are not this process's.

    A worker forked while its parent is inside ``run(handle_signals=True)``
    (``server(workers=N)``) must set up its own wake-up socket, not believe
    the parent's copied bookkeeping that one is set.
    """
    global _wakeup_users, _saved_wakeup_fd, _run_depth, _main_loop
    _watches.clear()
    _wakeup_users = 0
    _saved_wakeup_fd = -1
    _run_depth = 0
    _main_loop = None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_after_fork)


def _require_main_thread(what: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("%s needs the loop to run in the main thread: "
                           "Python delivers signals only there" % (what,))


def signal(signum: int) -> Op[int]:
    """Wait until signal ``signum`` arrives; ``yield`` it (the value is ``signum``).

    Several coroutines may wait for the same signal: one arrival wakes them
    all. Works with ``bluelet.timeout()`` and ``kill``. The loop must run
    in the main thread (RuntimeError at the ``yield`` otherwise); ValueError
    here for a number that is not a signal.
    """
    return _wait(_signal.Signals(signum))


@awaitable
def _wait(signum: int) -> Generator[Any, Any, int]:
    _require_main_thread("bluelet.signal()")
    watch = _watches.get(signum)
    if watch is None:
        watch = _Watch(signum)
        _signal.signal(signum, watch.handle)
        _watches[signum] = watch
    if watch.pending:
        watch.pending = False
        return signum
    _use_wakeup_fd()
    try:
        return cast(int, (yield watch.waiters.wait()))
    finally:
        _release_wakeup_fd()
        if not _run_depth and not watch.waiters and _watches.get(signum) is watch:
            _unwatch(watch)


def _use_wakeup_fd() -> None:
    """Point signal.set_wakeup_fd at the running loop's wake-up socket.

    The byte Python's C-level handler writes there ends the loop's poll,
    which otherwise resumes its wait after running the Python handler.
    """
    global _wakeup_users, _saved_wakeup_fd
    if _wakeup_users == 0:
        _saved_wakeup_fd = _signal.set_wakeup_fd(wakeup_fd(), warn_on_full_buffer=False)
    _wakeup_users += 1


def _release_wakeup_fd() -> None:
    global _wakeup_users
    _wakeup_users -= 1
    if _wakeup_users == 0:
        # Now, while the loop runs: its wake-up socket closes when run() ends.
        _signal.set_wakeup_fd(_saved_wakeup_fd)


def _unwatch(watch: _Watch) -> None:
    del _watches[watch.signum]
    watch.restore()


def _stopper(loop: _impl.Loop) -> Callable[[int, Optional[FrameType]], None]:
    """handle_signals' handler: ask ``loop`` to stop, as Ctrl-C would."""
    def stop(signum: int, frame: Optional[FrameType]) -> None:
        if signum == _signal.SIGINT:
            loop.interrupt(KeyboardInterrupt())
        else:
            loop.interrupt(KeyboardInterrupt(_signal.Signals(signum).name))
    return stop


def take_ctrl_c() -> Callable[[], None]:
    """Make Ctrl-C stop the main thread's loop as ``handle_signals`` does,
    unless something else already handles SIGINT; return the undo.

    Called by a coroutine of that loop (``serve()``). Taken only where Ctrl-C
    would otherwise raise KeyboardInterrupt wherever Python happens to be:
    the main thread's ``bluelet.run()``, SIGINT at Python's default handler.
    Elsewhere nothing is taken and the undo does nothing.
    """
    loop = _main_loop
    if (loop is None or threading.current_thread() is not threading.main_thread()
            or _signal.getsignal(_signal.SIGINT) is not _signal.default_int_handler):
        return _nothing_to_undo
    stop = _stopper(loop)
    _signal.signal(_signal.SIGINT, stop)
    _use_wakeup_fd()

    def give_back() -> None:
        _release_wakeup_fd()
        if _signal.getsignal(_signal.SIGINT) is stop:  # not replaced since
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    return give_back


def _nothing_to_undo() -> None:
    """take_ctrl_c()'s undo where it took nothing."""


def _woken_by_signals(root_coro: Runnable[_T]) -> Generator[Any, Any, _T]:
    """The root under handle_signals: keeps the wakeup fd on this loop's wake-up socket."""
    _use_wakeup_fd()
    try:
        return cast(_T, (yield root_coro))
    finally:
        _release_wakeup_fd()


def run(root_coro: Runnable[_T], *, handle_signals: bool = False, virtual_time: bool = False,
        slow_step: Optional[float] = None, debug: Optional[bool] = None,
        schedule_seed: Optional[int] = None, host: Optional[str] = None,
        instruments: Iterable[Instrument] = (), stall_warning: Optional[float] = None,
        trace: Optional[str] = None) -> _T:
    """Run ``root_coro`` (a generator coroutine, or an ``async def``'s
    coroutine) and everything it spawns; return its result.

    If a coroutine raises and nobody called or joined it, the others are
    closed and the exception propagates from here. ``virtual_time=True``
    makes sleeps take no real time (the clock jumps to the next deadline
    whenever nothing is ready); ``slow_step=seconds`` logs a warning on the
    "bluelet" logger when a coroutine runs that long without yielding.
    ``debug=True`` (the default under ``BLUELET_DEBUG=1`` or ``python -X
    dev``) reports every event collected without having been yielded or
    awaited -- a forgotten ``yield`` -- with a RuntimeWarning at the line
    that made it. ``schedule_seed=N`` runs ready coroutines in an order
    shuffled by seed N (see ``Loop``): the same seed, the same interleaving.

    ``handle_signals=True`` (main thread only) turns SIGINT and SIGTERM into
    a clean stop: KeyboardInterrupt (with the text "SIGTERM" for SIGTERM)
    is raised in the root at its ``yield``; the others carry on until the
    root ends, and are then cancelled, so every ``finally`` block runs;
    then this returns the
    root's result if it caught the interrupt, or raises KeyboardInterrupt
    (SIGINT) or ``SystemExit(143)`` (SIGTERM), the exit status service
    managers expect. The signal may arrive while the loop waits or while a
    coroutine runs: the handler only asks the loop to stop, and the loop
    does so between two steps. The previous handlers are restored when
    this returns. With no options this is 0.2.0's ``run``.

    ``instruments`` (``bluelet.Instrument``s) are told of the scheduler's
    events from the start. ``stall_warning=seconds`` starts a watchdog
    thread that logs, on the "bluelet" logger, a coroutine that has run
    that long without yielding, with its current stack, while it is still
    stuck (and again once it yields). ``trace="trace.json"`` writes a
    timeline of the run when it ends, in Chrome's trace-event format (open
    it in Perfetto, or draw it with ``python -m bluelet trace FILE --png
    OUT``): a track per coroutine, its steps and waits, spawn and wake-up
    arrows, the I/O polls.

    ``host="asyncio"`` (or ``"uvloop"``) runs the program as a guest of a
    new asyncio (or uvloop) loop, so that it can use asyncio libraries
    through ``bluelet.aio.wait``; Ctrl-C is then asyncio's to handle (it
    cancels the program), and the clock is real.
    """
    global _run_depth, _main_loop
    if host is not None:
        from .aio import HOSTS, run_hosted
        if host not in HOSTS:
            raise ValueError("host must be one of %s, not %r" % (", ".join(map(repr, HOSTS)), host))
        if handle_signals or virtual_time or instruments or stall_warning is not None or \
                trace is not None:
            raise ValueError("handle_signals, virtual_time, instruments, stall_warning and "
                             "trace are for bluelet's own loop, not for host=%r" % host)
        return run_hosted(root_coro, host, slow_step, debug, schedule_seed)
    loop = _impl.Loop(virtual_time, slow_step, debug, schedule_seed)
    tracer = None if trace is None else start_trace(trace)
    install(loop, list(instruments) + ([tracer] if tracer is not None else []))
    in_main = threading.current_thread() is threading.main_thread()
    if handle_signals:
        _require_main_thread("run(handle_signals=True)")
    # Last: nothing below raises before the finally that stops its thread.
    stop_watching = None if stall_warning is None else watch_stalls(loop, stall_warning)
    stops: Dict[_signal.Signals, _Handler] = {}
    if in_main:
        _run_depth += 1
        if _run_depth == 1:
            _main_loop = loop
    try:
        if handle_signals:
            stop = _stopper(loop)
            for signum in _STOP_SIGNALS:
                stops[signum] = _signal.signal(signum, stop)
            root_coro = _woken_by_signals(root_coro)
        return loop.run(root_coro)
    except KeyboardInterrupt as interrupt:
        if interrupt.args == (_signal.SIGTERM.name,) and _signal.SIGTERM in stops:
            raise SystemExit(128 + _signal.SIGTERM) from interrupt
        raise
    finally:
        if stop_watching is not None:
            stop_watching()
        if tracer is not None:
            tracer.write()
        if in_main:
            _run_depth -= 1
            if not _run_depth:
                _main_loop = None
                for watch in list(_watches.values()):
                    _unwatch(watch)
        for signum, previous in stops.items():
            _signal.signal(signum, previous)
