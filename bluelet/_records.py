"""Plain data types shared by both cores, defined once so each has one identity."""

import collections

__all__ = ["TaskInfo"]


class TaskInfo(collections.namedtuple("TaskInfo", "coroutine state detail chain")):
    """What ``bluelet.tasks()`` says of one live coroutine.

    ``coroutine`` is the spawned generator; ``state`` one of "ready",
    "running", "io", "sleeping", "joining", "parked", "thread"; ``detail`` a
    readable sentence; ``chain`` the generators it is delegating through,
    outermost first (the last one is where it waits).
    """

    __slots__ = ()
