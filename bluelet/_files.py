"""``read`` and ``write`` on file-like objects: pipes via the poller, files via threads.

A regular file is always "ready" to a poller (and epoll refuses it
outright), yet reading it can block on the disk. So for regular files the
operation runs in the thread pool (``to_thread``); for everything else
(pipes, terminals, sockets) it is the core's ``ReadEvent``/``WriteEvent``,
which wait for readiness.
"""

import os
import stat
from typing import Any, Generator, Optional, Union

from ._impl import ReadEvent, WriteEvent
from ._records import Bytes, Coro
from ._threads import to_thread

__all__ = ["read", "write"]


def _is_regular_file(fileobj: Any) -> bool:
    # One fstat per call: cheap next to the poll or thread hand-off after it.
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _read_file(fileobj: Any, bufsize: Optional[int]) -> Any:
    return fileobj.read() if bufsize is None else fileobj.read(bufsize)


def _write_file(fileobj: Any, view: memoryview) -> None:
    while view:
        # Raw (unbuffered) files may write less than asked.
        view = view[fileobj.write(view):]


def read(fileobj: Any, bufsize: Optional[int] = None) -> Union[ReadEvent, Coro]:
    """Read up to ``bufsize`` from a file-like object (None: to EOF); ``yield`` it.

    The value is the data read; empty at end of file. Regular files are
    read in a worker thread (see ``to_thread``; the result is a coroutine);
    for pipes and the like it is a ``ReadEvent``, waited on by the loop.
    """
    if _is_regular_file(fileobj):
        return to_thread(_read_file, fileobj, bufsize)
    return ReadEvent(fileobj, bufsize)


def write(fileobj: Any, data: Bytes) -> Union[WriteEvent, Generator[Any, Any, None]]:
    """Write all of ``data`` (bytes-like) to a file-like object; ``yield`` it.

    Regular files are written in a worker thread (see ``to_thread``; the
    result is a coroutine); for pipes and the like it is a ``WriteEvent``,
    written as the pipe becomes writable.
    """
    if _is_regular_file(fileobj):
        # Checked here so a str fails at the call, as it does for pipes.
        view = memoryview(data).cast("B")
        return to_thread(_write_file, fileobj, view)
    return WriteEvent(fileobj, data)
