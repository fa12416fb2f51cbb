"""Child processes: ``run_process`` and ``open_process``.

A child's pipes are socket pairs, not pipes: the parent's ends are then
ordinary ``Connection``s (``recv``, ``readline``, ``sendall``, timeouts...)
on the core's socket events, and the child sees a stream it reads and
writes as it would a pipe.

Waiting for the child's exit
    On Linux a pidfd (``os.pidfd_open``) becomes readable when the child
    exits, so ``yield proc.wait()`` waits on it like any socket: no thread,
    no polling, no SIGCHLD handler to fight over with other libraries.
    Where there is no pidfd, a thread waits (``to_thread``).

Cancellation
    When ``run_process`` is cancelled (a kill, a deadline, its own
    ``timeout``), the child is sent SIGTERM, given ``grace`` seconds to
    exit, then SIGKILL, and reaped: no zombie and no descriptor is left.
    ``open_process`` leaves the child to its caller, as ``Popen`` does.
"""

import os
import socket
import subprocess
from typing import IO, Any, Generator, List, Optional, Sequence, Tuple, Union

from ._connection import Connection, with_timeout
from ._group import join_all
from ._impl import (
    DelegationEvent,
    Event,
    later,
    move_on_after,
    notify_closing,
    shield,
    wait_readable,
)
from ._threads import to_thread

__all__ = ["Process", "open_process", "run_process"]

#: What the standard streams of a child may be given: what ``Popen`` takes,
#: or a Connection to hand over (one process's output as another's input).
Redirect = Union[None, int, IO[Any], Connection]

#: Seconds a cancelled child gets between SIGTERM and SIGKILL.
DEFAULT_GRACE = 5.0

_PIDFD = hasattr(os, "pidfd_open")


class Process:
    """A running child process (``open_process``).

    ``stdin``, ``stdout`` and ``stderr`` are Connections for the streams
    opened with ``subprocess.PIPE``, else None. ``returncode`` is None
    until ``yield proc.wait()`` has seen the child exit (negative: the
    signal that ended it). Usable as a context manager, which closes the
    streams and, if the child still runs, kills and reaps it.
    """

    def __init__(self, popen: "subprocess.Popen[bytes]", streams: List[Optional[Connection]]):
        self._popen = popen
        self.stdin, self.stdout, self.stderr = streams
        self._pidfd = -1
        if _PIDFD:
            try:
                self._pidfd = os.pidfd_open(popen.pid)
            except OSError:  # a kernel older than 5.3: a thread waits instead
                pass

    def __repr__(self) -> str:
        return "<bluelet.Process pid=%d returncode=%r>" % (self.pid, self.returncode)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._popen.pid

    @property
    def args(self) -> Any:
        """The arguments the child was started with."""
        return self._popen.args

    @property
    def returncode(self) -> Optional[int]:
        """The exit status once the child has been reaped, else None."""
        return self._popen.returncode

    def wait(self, timeout: Optional[float] = None) -> "Event[int]":
        """Event: wait for the child to exit; the value is its return code.

        ``timeout`` raises ``bluelet.Timeout`` at the ``yield``; the child
        goes on running.
        """
        return with_timeout(DelegationEvent(self._wait()), timeout)

    def _wait(self) -> Generator[Any, Any, int]:
        while self._popen.poll() is None:
            if self._pidfd >= 0:
                yield wait_readable(self._pidfd)
            else:
                yield to_thread(self._popen.wait)
        self._close_pidfd()
        return self._popen.returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child; nothing once it has been reaped."""
        self._popen.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM the child (nothing once it has been reaped)."""
        self._popen.terminate()

    def kill(self) -> None:
        """SIGKILL the child (nothing once it has been reaped)."""
        self._popen.kill()

    def close(self) -> None:
        """Close the streams; a child still running is killed and reaped
        (a short blocking wait: SIGKILL cannot be refused)."""
        for conn in (self.stdin, self.stdout, self.stderr):
            if conn is not None:
                conn.close()
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def open_process(args: Union[str, Sequence[Any]], *, stdin: Redirect = None,
                 stdout: Redirect = None, stderr: Redirect = None,
                 **popen_kwargs: Any) -> "Event[Process]":
    """Event: start ``args`` as a child process; the value is a ``Process``.

    ``stdin``, ``stdout`` and ``stderr`` take what ``subprocess.Popen``
    takes; ``subprocess.PIPE`` makes the stream a Connection of the
    Process (``yield proc.stdout.readline()``, ``yield
    proc.stdin.sendall(data)``; ``proc.stdin.close()`` gives the child end
    of input). A Connection is handed over to the child (and closed
    here): ``stdin=first.stdout`` makes a pipeline, as a shell's ``|``. Other keyword arguments go to ``Popen`` (``cwd``, ``env``,
    ...), except those about text and buffering: the streams are bytes.
    A child that cannot start raises at the ``yield`` (``FileNotFoundError``
    and the like), with nothing left open.
    """
    _check_kwargs(popen_kwargs)
    # Started when the coroutine resumes: a kill before then starts nothing.
    return later(_start, args, stdin, stdout, stderr, popen_kwargs)


def _check_kwargs(popen_kwargs: Any) -> None:
    for name in ("text", "universal_newlines", "encoding", "errors", "bufsize"):
        if name in popen_kwargs:
            raise TypeError("open_process()/run_process() streams are bytes: %s= is not taken"
                            % name)


def _start(args: Any, stdin: Redirect, stdout: Redirect, stderr: Redirect,
           popen_kwargs: Any) -> Process:
    mine: List[Optional[socket.socket]] = []
    theirs: List[Optional[socket.socket]] = []
    redirects: List[Any] = []
    handed = [r for r in (stdin, stdout, stderr) if isinstance(r, Connection)]
    try:
        for redirect in (stdin, stdout, stderr):
            if isinstance(redirect, Connection):
                # The descriptor's flags are shared with the child's copy:
                # a child gets the blocking stream it expects.
                redirect.sock.setblocking(True)
                mine.append(None)
                theirs.append(None)
                redirects.append(redirect.fileno())
            elif redirect == subprocess.PIPE:
                parent_end, child_end = socket.socketpair()
                mine.append(parent_end)
                theirs.append(child_end)
                redirects.append(child_end.fileno())
            else:
                mine.append(None)
                theirs.append(None)
                redirects.append(redirect)
        popen = subprocess.Popen(args, stdin=redirects[0], stdout=redirects[1],
                                 stderr=redirects[2], **popen_kwargs)
    except BaseException:
        for sock in mine + theirs:
            if sock is not None:
                sock.close()
        for conn in handed:
            conn.sock.setblocking(False)  # still the caller's
        raise
    for sock in theirs:
        if sock is not None:
            sock.close()  # the child has its copy
    for conn in handed:
        conn.close()
    return Process(popen, [None if sock is None else Connection(sock, "child %d" % popen.pid)
                           for sock in mine])


def run_process(args: Union[str, Sequence[Any]], *, input: Optional[bytes] = None,
                capture_output: bool = False, stdin: Redirect = None, stdout: Redirect = None,
                stderr: Redirect = None, check: bool = False,
                timeout: Optional[float] = None, grace: float = DEFAULT_GRACE,
                **popen_kwargs: Any) -> "Event[subprocess.CompletedProcess[bytes]]":
    """Event: run ``args`` to its end; the value is a
    ``subprocess.CompletedProcess``, as ``subprocess.run`` gives.

    ``input`` (bytes) is fed to the child's stdin, which is closed after
    it (without ``input``, stdin is inherited unless ``stdin=`` says
    otherwise); ``capture_output=True`` (or ``stdout``/``stderr=PIPE``)
    collects the output into ``stdout``/``stderr``. With ``check=True`` a
    non-zero exit raises ``subprocess.CalledProcessError``. ``timeout``
    raises ``bluelet.Timeout`` at the ``yield`` (not ``TimeoutExpired``).

    If the waiting coroutine is cancelled (``timeout``, a deadline around
    it, a kill), the child is sent SIGTERM, then SIGKILL if it has not
    exited ``grace`` seconds later, and reaped before the cancellation goes
    on.
    """
    _check_kwargs(popen_kwargs)
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("stdout and stderr cannot be given with capture_output=True")
        stdout = stderr = subprocess.PIPE
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input cannot both be given")
        input = memoryview(input).tobytes()  # a TypeError at the call for str
        stdin = subprocess.PIPE
    if not grace >= 0:
        raise ValueError("grace must be a number of seconds >= 0, not %r" % (grace,))
    return with_timeout(DelegationEvent(_run(args, input, stdin, stdout, stderr, check, grace,
                                             popen_kwargs)), timeout)


def _run(args: Any, input: Optional[bytes], stdin: Redirect, stdout: Redirect, stderr: Redirect,
         check: bool, grace: float,
         popen_kwargs: Any) -> Generator[Any, Any, "subprocess.CompletedProcess[bytes]"]:
    proc = _start(args, stdin, stdout, stderr, popen_kwargs)
    with proc:
        try:
            out, err = yield from _communicate(proc, input)
            code = yield proc.wait()
        except GeneratorExit:
            raise  # the loop is closing: proc's close() kills and reaps at once
        except BaseException:
            yield from _stop(proc, grace)
            raise
    if check and code:
        raise subprocess.CalledProcessError(code, args, out, err)
    return subprocess.CompletedProcess(args, code, out, err)


def _communicate(proc: Process, input: Optional[bytes]
                 ) -> Generator[Any, Any, Tuple[Optional[bytes], Optional[bytes]]]:
    parts: List[Any] = [_read_all(proc.stdout), _read_all(proc.stderr)]
    if proc.stdin is not None:
        parts.append(_feed(proc.stdin, input or b""))
    out, err = (yield join_all(parts))[:2]
    return out, err


def _read_all(conn: Optional[Connection]) -> Generator[Any, Any, Optional[bytes]]:
    if conn is None:
        return None
    chunks: List[bytes] = []
    while True:
        data = yield conn.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _feed(conn: Connection, data: bytes) -> Generator[Any, Any, None]:
    try:
        if data:
            yield conn.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child exited without reading it all, as subprocess.run allows
    finally:
        conn.close()  # end of input


def _stop(proc: Process, grace: float) -> Generator[Any, Any, None]:
    """SIGTERM, ``grace`` seconds, SIGKILL; reaped in the end. Shielded, so
    the cancellation that brought us here waits for it."""
    if proc.returncode is None:
        proc.terminate()
        yield shield(move_on_after(grace, proc.wait()))
    if proc.returncode is None:
        proc.kill()
        yield shield(proc.wait())
