"""``python -m bluelet ps PID``: the coroutines of another running bluelet process.

The process must have called ``bluelet.dump_on()`` (SIGUSR1 by default),
whose handler normally prints ``dump()`` to stderr. ``ps`` asks it for the
dump through a private directory instead:

1. it makes (or checks) ``<tmp>/bluelet-<uid>``: owned by this user, mode
   0700, not a symbolic link;
2. it writes ``<pid>.request`` there and sends the signal;
3. the handler, seeing the request, writes the dump to ``<pid>.dump`` (a
   temporary name renamed into place, mode 0600) instead of stderr, and
   removes the request;
4. ``ps`` prints the dump and removes it.

Security model: only the same user. Signalling takes the same user (or
root), and the directory's owner and mode keep every other user from
reading a dump or planting a request. Before signalling, ``ps`` checks on
Linux that the process catches the signal (``SigCgt`` in
``/proc/PID/status``), since the default action of SIGUSR1 is to end it.
"""

import os
import signal
import stat
import sys
import tempfile
import time
from typing import Optional

__all__ = ["ask", "reply_path", "request_path"]


def _directory(create: bool) -> str:
    path = os.path.join(tempfile.gettempdir(), "bluelet-%d" % os.getuid())
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError("%s is not a private directory of this user (owner uid %d, "
                              "mode %o): refusing to use it" % (path, info.st_uid,
                                                                 stat.S_IMODE(info.st_mode)))
    return path


def request_path(pid: int) -> str:
    """Where ``ps`` asks process ``pid`` for its dump (the directory must exist)."""
    return os.path.join(_directory(False), "%d.request" % pid)


def reply_path(pid: int) -> str:
    """Where process ``pid`` leaves its dump for ``ps``."""
    return os.path.join(_directory(False), "%d.dump" % pid)


def _catches(pid: int, signum: int) -> Optional[bool]:
    """Whether ``pid`` catches ``signum`` (Linux's /proc), None if unknown."""
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except OSError:
        pass
    return None


def ask(pid: int, signum: int = signal.SIGUSR1, timeout: float = 5.0) -> str:
    """The dump of process ``pid``, asked for with ``signum``. Raises
    ProcessLookupError, PermissionError or TimeoutError with a reason."""
    os.kill(pid, 0)  # ProcessLookupError, or PermissionError for another user's
    if _catches(pid, signum) is False:
        raise RuntimeError("process %d does not catch %s: it would be killed; start it with "
                           "bluelet.dump_on()" % (pid, signal.Signals(signum).name))
    directory = _directory(True)
    request = os.path.join(directory, "%d.request" % pid)
    reply = os.path.join(directory, "%d.dump" % pid)
    for stale in (request, reply):
        try:
            os.unlink(stale)
        except FileNotFoundError:
            pass
    fd = os.open(request, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        # A file to wait for, not a socket: a short poll suits a command
        # run by hand, and keeps the handler's side to one write.
        while not os.path.exists(reply):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    "process %d gave no dump within %g s: is it a bluelet program that "
                    "called dump_on() for this signal, with its loop in the main thread?"
                    % (pid, timeout))
            time.sleep(0.02)
        with open(reply) as answer:
            return answer.read()
    finally:
        for path in (request, reply):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def main(pid: int, signum: int) -> int:
    """``python -m bluelet ps PID``."""
    try:
        text = ask(pid, signum)
    except (OSError, RuntimeError) as error:
        print("python -m bluelet ps: %s" % error, file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
