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

import importlib
from typing import Any

from ._errors import (
    Cancelled,
    ChannelClosed,
    IncompleteRead,
    LimitExceeded,
    QueueEmpty,
    QueueFull,
    RunFinishedError,
    SocketClosedError,
    ThreadException,
    Timeout,
)
from ._impl import (
    IMPLEMENTATION,
    AcceptEvent,
    Completion,
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
    WaitQueue,
    WriteEvent,
    call,
    current,
    current_deadline,
    current_time,
    end,
    fail_after,
    iscoroutine,
    join,
    kill,
    move_on_after,
    notify_closing,
    null,
    shield,
    sleep,
    spawn,
    timeout,
    wait_readable,
    wait_writable,
)
from ._files import read, write
from ._group import first, join_all
from ._guest import Outcome, start_guest_run
from ._instrument import Accounting, Instrument, add_instrument, remove_instrument
from ._introspect import dump, dump_on, tasks
from ._records import Gen, Op, TaskInfo
from ._signals import run, signal
from ._taskgroup import TaskGroup, started, task_group
from ._connect import connect, connect_unix
from ._connection import Connection
from ._listener import Listener
from ._process import Process, open_process, run_process
from ._server import serve, server
from ._systemd import systemd_listeners
from ._sync import Channel, Condition, Flag, Lock, Queue, Semaphore
from ._threads import set_thread_limit, to_thread
from ._tls import TLSConnection
from ._udp import UDPEndpoint, udp
from . import from_thread
from .from_thread import Token, current_token

__version__ = "0.3.0.dev0"


def __getattr__(name: str) -> Any:
    # bluelet.aio imports asyncio, which a program that never uses it
    # should not pay for at start-up: it is loaded on first use.
    if name == "aio":
        return importlib.import_module(".aio", __name__)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


__all__ = [
    "IMPLEMENTATION",
    "Accounting",
    "AcceptEvent",
    "Cancelled",
    "Channel",
    "ChannelClosed",
    "Completion",
    "Condition",
    "Connection",
    "DelegationEvent",
    "Event",
    "ExceptionEvent",
    "Flag",
    "Gen",
    "IncompleteRead",
    "Instrument",
    "JoinEvent",
    "KillEvent",
    "LimitExceeded",
    "Listener",
    "Op",
    "Process",
    "Lock",
    "Outcome",
    "Queue",
    "QueueEmpty",
    "QueueFull",
    "ReadEvent",
    "ReceiveEvent",
    "ReturnEvent",
    "RunFinishedError",
    "SendEvent",
    "Semaphore",
    "SleepEvent",
    "SocketClosedError",
    "SpawnEvent",
    "TLSConnection",
    "TaskGroup",
    "TaskInfo",
    "Token",
    "ThreadException",
    "Timeout",
    "UDPEndpoint",
    "ValueEvent",
    "WaitQueue",
    "WaitableEvent",
    "WriteEvent",
    "add_instrument",
    "call",
    "connect",
    "connect_unix",
    "current",
    "current_deadline",
    "current_time",
    "current_token",
    "dump",
    "dump_on",
    "end",
    "fail_after",
    "first",
    "from_thread",
    "iscoroutine",
    "join",
    "join_all",
    "kill",
    "move_on_after",
    "notify_closing",
    "null",
    "open_process",
    "read",
    "remove_instrument",
    "run",
    "run_process",
    "serve",
    "server",
    "set_thread_limit",
    "shield",
    "signal",
    "sleep",
    "systemd_listeners",
    "spawn",
    "start_guest_run",
    "started",
    "task_group",
    "tasks",
    "timeout",
    "to_thread",
    "udp",
    "wait_readable",
    "wait_writable",
    "write",
]
