"""bluelet: concurrent socket programs written as plain generator coroutines.

A coroutine asks the scheduler for something by yielding an *event*; the value
of the ``yield`` is the event's result::

    import bluelet

    def echoer(conn):
        while True:
            data = yield conn.recv(1024)
            if not data:
                break
            yield conn.sendall(data)

    bluelet.run(bluelet.server("127.0.0.1", 4915, echoer))

A drop-in successor of bluelet 0.2.0. The scheduler core is compiled with
Cython when available (``IMPLEMENTATION == "cython"``) and pure Python
otherwise (``"python"``, or forced with ``BLUELET_PURE_PYTHON=1``).
"""

from ._errors import SocketClosedError, ThreadException
from ._impl import (
    IMPLEMENTATION,
    AcceptEvent,
    DelegationEvent,
    Event,
    ExceptionEvent,
    JoinEvent,
    KillEvent,
    ReadEvent,
    ReceiveEvent,
    ReturnEvent,
    SendEvent,
    SleepEvent,
    SpawnEvent,
    ValueEvent,
    WaitableEvent,
    WriteEvent,
    call,
    end,
    join,
    kill,
    notify_closing,
    null,
    read,
    run,
    sleep,
    spawn,
    wait_readable,
    wait_writable,
    write,
)
from ._sockets import Connection, Listener, connect, server

__version__ = "0.3.0.dev0"

__all__ = [
    "IMPLEMENTATION",
    "AcceptEvent",
    "Connection",
    "DelegationEvent",
    "Event",
    "ExceptionEvent",
    "JoinEvent",
    "KillEvent",
    "Listener",
    "ReadEvent",
    "ReceiveEvent",
    "ReturnEvent",
    "SendEvent",
    "SleepEvent",
    "SocketClosedError",
    "SpawnEvent",
    "ThreadException",
    "ValueEvent",
    "WaitableEvent",
    "WriteEvent",
    "call",
    "connect",
    "end",
    "join",
    "kill",
    "notify_closing",
    "null",
    "read",
    "run",
    "server",
    "sleep",
    "spawn",
    "wait_readable",
    "wait_writable",
    "write",
]
