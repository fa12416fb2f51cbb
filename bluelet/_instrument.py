"""Watching the scheduler: ``Instrument`` hooks and the stall watchdog.

The core calls one object at its events, ``Loop.hooks``, and costs one
C-level check per step when there is none. Here that object is an
``_Instruments``, which hands each event to every instrument that overrides
its hook. An instrument whose hook raises is removed and the error logged,
as trio does: a broken observer must not break the program it observes.

``run(stall_warning=seconds)`` installs a ``_StallWatchdog``: an instrument
noting which step runs since when, and a thread that looks every quarter of
the limit and, when a step has run past it, logs the coroutine's current
stack (``sys._current_frames``) while it is still stuck.
"""

import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from . import _impl
from ._records import TaskInfo

__all__ = ["Accounting", "Instrument", "accounted", "add_instrument", "install",
           "remove_instrument", "watch_stalls"]

log = logging.getLogger("bluelet")

#: The hooks, in the order the core calls them around a step.
HOOKS = ("task_spawned", "task_scheduled", "before_step", "after_step", "task_exited",
         "before_poll", "after_poll")


class Instrument:
    """Base class for instruments: override the hooks you want.

    The task hooks get the coroutine's ``TaskInfo`` (``coroutine``,
    ``state``, ``detail``, ``chain``), as ``bluelet.tasks()`` gives it.
    Hooks run in the loop's thread between steps: keep them quick, never
    yield or block. One that raises removes its instrument (the error is
    logged on the ``bluelet`` logger). Install with ``bluelet.run(...,
    instruments=[...])`` or, while running, ``bluelet.add_instrument``.
    """

    def task_spawned(self, task: TaskInfo) -> None:
        """A coroutine was spawned (the root too)."""

    def task_scheduled(self, task: TaskInfo) -> None:
        """A waiting coroutine was woken: it runs at a coming pass."""

    def before_step(self, task: TaskInfo) -> None:
        """The coroutine is about to run until its next ``yield``."""

    def after_step(self, task: TaskInfo) -> None:
        """It has yielded, or ended: ``task.state`` and ``task.detail`` say
        what it waits for now ("done" once it has ended)."""

    def task_exited(self, task: TaskInfo) -> None:
        """It ended: returned, raised, or was killed."""

    def before_poll(self, timeout: float) -> None:
        """The loop is about to poll for I/O, waiting up to ``timeout``
        seconds (0: not at all; -1: until something happens)."""

    def after_poll(self, ready: int) -> None:
        """The poll returned with ``ready`` descriptors ready."""


class _Instruments:
    """A loop's ``hooks``: every event to every instrument overriding its hook."""

    def __init__(self) -> None:
        self.installed: List[Instrument] = []
        self._hooked: Dict[str, List[Tuple[Instrument, Callable[[Any], None]]]] = {
            name: [] for name in HOOKS}

    def add(self, instrument: Instrument) -> None:
        if not isinstance(instrument, Instrument):
            raise TypeError("an instrument is a bluelet.Instrument, not %r" % (instrument,))
        if instrument in self.installed:
            raise ValueError("%r is already installed" % (instrument,))
        self.installed.append(instrument)
        for name in HOOKS:
            # A hook left as the base class's no-op is not called at all.
            if getattr(type(instrument), name) is not getattr(Instrument, name):
                self._hooked[name].append((instrument, getattr(instrument, name)))

    @property
    def wanted(self) -> List[str]:
        """The hooks some instrument overrides: the loop calls only those."""
        return [name for name in HOOKS if self._hooked[name]]

    def remove(self, instrument: Instrument) -> None:
        self.installed.remove(instrument)
        for name in HOOKS:
            self._hooked[name] = [pair for pair in self._hooked[name] if pair[0] is not instrument]

    def _call(self, name: str, arg: Any) -> None:
        for instrument, hook in self._hooked[name]:
            try:
                hook(arg)
            except Exception:
                log.exception("instrument %r raised in %s; it is removed", instrument, name)
                if instrument in self.installed:
                    self.remove(instrument)
                    # The loop reads what is wanted when its hooks are set.
                    _impl.running_loop().hooks = self if self.installed else None


def _dispatcher(name: str) -> Callable[[_Instruments, Any], None]:
    def hook(self: _Instruments, arg: Any) -> None:
        self._call(name, arg)
    hook.__name__ = hook.__qualname__ = name
    return hook


for _hook in HOOKS:
    setattr(_Instruments, _hook, _dispatcher(_hook))
del _hook


def install(loop: "_impl.Loop", instruments: Iterable[Instrument]) -> None:
    """Add ``instruments`` to ``loop``'s hooks."""
    hooks = loop.hooks
    if hooks is None:
        hooks = _Instruments()
    for instrument in instruments:
        hooks.add(instrument)
    if hooks.installed:
        loop.hooks = hooks  # again after a change: the loop reads ``wanted`` now


def add_instrument(instrument: Instrument) -> None:
    """Install ``instrument`` in the running loop (from one of its coroutines)."""
    install(_impl.running_loop(), [instrument])


def remove_instrument(instrument: Instrument) -> None:
    """Remove ``instrument`` from the running loop; ValueError if it is not
    installed. With none left, steps run bare again."""
    loop = _impl.running_loop()
    hooks = loop.hooks
    if hooks is None or instrument not in hooks.installed:
        raise ValueError("%r is not installed in this loop" % (instrument,))
    hooks.remove(instrument)
    loop.hooks = hooks if hooks.installed else None


class _Account:
    """What an Accounting knows of one coroutine."""

    __slots__ = ("cpu_time", "steps", "waited", "waiting", "since", "cpu_start")

    def __init__(self) -> None:
        self.cpu_time = 0.0
        self.steps = 0
        self.waited: Dict[str, float] = {}
        self.waiting: Optional[str] = None  # the state it waits in, since ``since``
        self.since = 0.0
        self.cpu_start = 0.0


class Accounting(Instrument):
    """Per-coroutine accounting, opt-in: the CPU time of its steps (this
    thread's CPU clock around each), how many steps, and how long it waited,
    by what for (its ``TaskInfo.state``: "io", "sleeping", "parked"...).

    While one is installed, ``bluelet.tasks()`` fills in ``cpu_time``,
    ``steps`` and ``waited``, and ``dump()`` shows them. A coroutine's
    figures go when it ends.
    """

    def __init__(self) -> None:
        self._accounts: Dict[int, _Account] = {}

    def before_step(self, task: TaskInfo) -> None:
        account = self._accounts.get(id(task.coroutine))
        if account is None:
            account = self._accounts[id(task.coroutine)] = _Account()
        elif account.waiting is not None:
            waited = time.perf_counter() - account.since
            account.waited[account.waiting] = account.waited.get(account.waiting, 0.0) + waited
        account.cpu_start = time.thread_time()

    def after_step(self, task: TaskInfo) -> None:
        account = self._accounts.get(id(task.coroutine))
        if account is None:  # it ended in this step
            return
        account.cpu_time += time.thread_time() - account.cpu_start
        account.steps += 1
        account.waiting = task.state
        account.since = time.perf_counter()

    def task_exited(self, task: TaskInfo) -> None:
        self._accounts.pop(id(task.coroutine), None)

    def annotate(self, info: TaskInfo) -> TaskInfo:
        """``info`` with this coroutine's figures filled in."""
        account = self._accounts.get(id(info.coroutine))
        if account is None:
            return info._replace(cpu_time=0.0, steps=0, waited={})
        waited = dict(account.waited)
        if account.waiting is not None:  # the wait it is in now counts too
            waited[account.waiting] = (waited.get(account.waiting, 0.0)
                                       + time.perf_counter() - account.since)
        return info._replace(cpu_time=account.cpu_time, steps=account.steps, waited=waited)


def accounted(infos: List[TaskInfo]) -> List[TaskInfo]:
    """``infos`` (the core's ``tasks()``) with the figures of the running
    loop's Accounting, if one is installed."""
    hooks = _impl.running_loop().hooks
    for instrument in getattr(hooks, "installed", ()):
        if isinstance(instrument, Accounting):
            return [instrument.annotate(info) for info in infos]
    return infos


def _name(task: TaskInfo) -> str:
    return getattr(task.coroutine, "__qualname__", None) or repr(task.coroutine)


class _StallWatchdog(Instrument):
    """``stall_warning``: says which coroutine is stuck, and where, while it is."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._loop_thread = threading.get_ident()
        # (serial, start, task) of the step running; replaced whole, so the
        # watching thread never sees half of it.
        self._running: Optional[Tuple[int, float, TaskInfo]] = None
        self._serial = 0
        self._reported = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bluelet-stall-watchdog",
                                        daemon=True)

    def before_step(self, task: TaskInfo) -> None:
        self._serial += 1
        self._running = (self._serial, time.monotonic(), task)

    def after_step(self, task: TaskInfo) -> None:
        running, self._running = self._running, None
        if running is not None and running[0] == self._reported:
            log.warning("coroutine %s yielded after %.3f s: the stall reported above is over",
                        _name(running[2]), time.monotonic() - running[1])

    def _watch(self) -> None:
        while not self._stop.wait(self._seconds / 4):
            running = self._running
            if running is None or running[0] == self._reported:
                continue
            serial, start, task = running
            stuck = time.monotonic() - start
            if stuck < self._seconds:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if self._running is not running:
                continue  # it yielded meanwhile
            self._reported = serial
            log.warning("coroutine %s has run %.3f s without yielding (stall_warning=%g); "
                        "it is now at:\n%s", _name(task), stuck, self._seconds,
                        _coroutine_stack(frame))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# Where the scheduler runs coroutines from: the pure core, and what calls
# Loop.run (the compiled core has no Python frames of its own).
_SCHEDULER_FILES = frozenset(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    for name in ("_loop_py.py", "_signals.py", "_guest.py", "aio.py"))


def _coroutine_stack(frame: Any) -> str:
    """The stack of the loop's thread from the running coroutine down,
    without the scheduler's frames above it (they say nothing of the stall)."""
    if frame is None:
        return "(no stack: the loop's thread has ended)"
    frames = []
    while frame is not None and os.path.abspath(frame.f_code.co_filename) not in _SCHEDULER_FILES:
        frames.append(frame)
        frame = frame.f_back
    summary = traceback.StackSummary.extract((f, f.f_lineno) for f in reversed(frames))
    return "".join(summary.format())


def watch_stalls(loop: "_impl.Loop", seconds: float) -> Callable[[], None]:
    """Install a stall watchdog on ``loop``; the function that stops it."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds > 0:
        raise ValueError("stall_warning must be a number of seconds > 0, not %r" % (seconds,))
    watchdog = _StallWatchdog(seconds)
    install(loop, [watchdog])
    watchdog.start()
    return watchdog.stop
