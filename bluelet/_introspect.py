"""A readable dump of every live coroutine, like a thread dump.

``dump()`` renders what the core's ``tasks()`` reports: each coroutine's
name, its state in words, and the chain of generators it is delegating
through, each with the file, line and source where it is suspended
(outermost first, as in a Python traceback). ``dump_on()`` prints that dump
whenever a signal (SIGUSR1 by default) arrives, so a program that seems
stuck can be asked where its coroutines wait without stopping it.
"""

import linecache
import os
import signal
import sys
import threading
import types
from types import FrameType
from typing import Any, Callable, Iterable, List, Optional, TextIO

from . import _coroutines, _impl, _ps
from ._instrument import accounted
from ._records import TaskInfo

__all__ = ["dump", "dump_on", "format_tasks", "tasks"]


def _code_location(gen: Any) -> str:
    """'File "...", line N, in name' for ``gen``, without a state."""
    code: Any = _coroutines.code(gen)
    name = getattr(gen, "__qualname__", None) or getattr(code, "co_name", None) or repr(gen)
    filename = getattr(code, "co_filename", "?")
    if type(gen) not in (types.GeneratorType, types.CoroutineType):
        # A compiled generator (the Cython core's own helpers) has a code
        # object for its name but its frame reports no line.
        return 'File "%s", in %s [compiled]' % (filename, name)
    state = _coroutines.state(gen)
    frame = _coroutines.frame(gen)
    if frame is None:  # GEN_CLOSED: a finished coroutine has no frame
        return 'File "%s", line %d, in %s [finished]' % (filename, code.co_firstlineno, name)
    if state == "GEN_CREATED":
        return 'File "%s", line %d, in %s [not started]' % (filename, code.co_firstlineno, name)
    line = frame.f_lineno
    where = 'File "%s", line %d, in %s' % (filename, line, name)
    if state == "GEN_RUNNING":
        where += " [running]"
    source = linecache.getline(filename, line).strip()
    return where + ("\n    " + source if source else "")


def _coroutine_name(coro: Any) -> str:
    name = getattr(coro, "__qualname__", None) or repr(coro)
    # Several coroutines often run the same function: the id tells them apart.
    return "%s (0x%x)" % (name, id(coro))


def format_tasks(infos: Iterable[TaskInfo]) -> str:
    """Render TaskInfo records as the text ``dump()`` returns."""
    infos = list(infos)
    lines = ["bluelet: %d live coroutine%s (%s core), innermost call last" % (
        len(infos), "" if len(infos) == 1 else "s", _impl.IMPLEMENTATION)]
    for info in infos:
        lines.append("")
        lines.append("Coroutine %s: %s" % (_coroutine_name(info.coroutine), info.detail))
        if info.steps is not None:
            waits = ", ".join("%s %.3f s" % item for item in sorted((info.waited or {}).items()))
            lines.append("  %d steps, %.3f ms of CPU%s" % (
                info.steps, (info.cpu_time or 0.0) * 1e3, "; waited " + waits if waits else ""))
        for gen in info.chain:
            lines.append("  " + _code_location(gen))
    return "\n".join(lines) + "\n"


def tasks() -> List[TaskInfo]:
    """A TaskInfo for every live coroutine of the running loop (with the
    accounting figures when a ``bluelet.Accounting`` is installed)."""
    return accounted(_impl.tasks())


def dump(file: Optional[TextIO] = None) -> str:
    """Return a readable dump of every live coroutine of the running loop.

    For each coroutine: its name, what it is doing ("sleeping until ...",
    "waiting for fd 5 to be readable", ...) and where each generator of its
    delegation chain is suspended (file, line, function and source line).
    Also written to ``file`` when given. Call it from inside a coroutine;
    outside a running loop it raises RuntimeError, like ``tasks()``.
    """
    text = format_tasks(tasks())
    if file is not None:
        file.write(text)
        file.flush()
    return text


def _print_dump(signum: int, frame: Optional[FrameType]) -> None:
    """Signal handler: the dump on stderr; never raises into the program."""
    # The handler interrupts whatever the main thread was doing, possibly the
    # loop itself half-way through a state change: a failed dump is reported
    # instead of letting an exception escape into arbitrary code.
    try:
        text = dump()
    except RuntimeError:
        text = "bluelet: no loop is running in the main thread\n"
    except Exception as error:
        text = "bluelet: the coroutine dump failed: %r\n" % (error,)
    if _answer_ps(text):
        return
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, RuntimeError, ValueError):
        pass  # stderr closed, or the signal interrupted a write to it


def _answer_ps(text: str) -> bool:
    """If ``python -m bluelet ps`` asked for this dump, leave it where that
    reads it (see ``_ps``); whether it was asked."""
    try:
        request = _ps.request_path(os.getpid())
        if not os.path.exists(request):
            return False
        reply = _ps.reply_path(os.getpid())
        partial = "%s.%d.tmp" % (reply, threading.get_ident())
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(partial, reply)
        os.unlink(request)
    except OSError:
        return False  # no private directory, or it went: stderr, as usual
    return True


def dump_on(signum: Optional[int] = None) -> Callable[[], None]:
    """Print ``dump()`` to stderr whenever signal ``signum`` arrives;
    ``python -m bluelet ps PID`` takes it instead when it asks.

    ``signum`` defaults to SIGUSR1 (``kill -USR1 <pid>``). Like any Python
    signal handler it must be installed from the main thread (ValueError
    otherwise) and it sees the loop running in the main thread. Returns a
    function that puts the previous handler back (the default action if the
    previous one was not installed from Python); calling it again does
    nothing.
    """
    if signum is None:
        signum = signal.SIGUSR1
    previous = signal.signal(signum, _print_dump)
    installed = True

    def restore() -> None:
        nonlocal installed
        if installed:
            installed = False
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)

    return restore
