"""Blocking calls run in a bounded thread pool while the loop goes on.

``value = yield to_thread(func, *args)`` hands the call to a
``concurrent.futures.ThreadPoolExecutor`` and parks the coroutine on a core
``Completion``; the worker delivers the outcome, which wakes the loop
through its wake-up socket, so nothing polls.

Cancellation
    A thread cannot be stopped. When the waiting coroutine is killed or its
    ``timeout()`` runs out, a call that has not started yet is withdrawn
    from the pool; one that is running goes on to its end in its thread and
    its result (or exception) is dropped. Until then it holds one of the
    pool's threads.

Interpreter exit
    The pool's threads are not daemons: like ``concurrent.futures`` (and
    ``asyncio.to_thread``) the interpreter waits at exit for calls that are
    still running, so a blocking call should carry its own timeout. Calls
    that have not started are withdrawn at exit instead of being run (a
    loop still running in a daemon thread then stays waiting for them).
"""

import concurrent.futures
# Imported now, before _withdraw_pending is registered below: its own exit
# hook (which joins the pool's threads, after running every queued call) must
# be registered first, so that it runs after ours. Python 3.14 no longer
# imports it as a side effect of evaluating the annotations here.
import concurrent.futures.thread  # noqa: F401
import os
import threading
from typing import Any, Callable, Dict, Generator, Optional, Tuple, TypeVar

from ._coroutines import awaitable
from ._impl import Completion
from ._records import Coro
from .from_thread import _in_thread_of, current_token

__all__ = ["lookup_in_thread", "set_thread_limit", "to_thread"]

_T = TypeVar("_T")


def _default_limit() -> int:
    # The default of ThreadPoolExecutor: I/O-bound calls, up to 32 at once.
    return min(32, (os.cpu_count() or 1) + 4)


#: Name lookups at once: enough for a burst of connects, few enough that a
#: resolver that hangs cannot pile up threads.
_LOOKUP_THREADS = 4


class _Pool:
    """A ThreadPoolExecutor made on first use, with a limit any thread may change."""

    def __init__(self, prefix: str, default_limit: Callable[[], int]) -> None:
        self._prefix = prefix
        self._default_limit = default_limit
        self._lock = threading.Lock()  # guards _pool and _limit
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._limit: Optional[int] = None  # None: the default size

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._limit or self._default_limit(),
                    thread_name_prefix=self._prefix)
            return self._pool

    def set_limit(self, limit: Optional[int]) -> int:
        """The next calls run on at most ``limit`` threads; the previous limit."""
        with self._lock:
            previous = self._limit if self._limit is not None else self._default_limit()
            old, self._pool, self._limit = self._pool, None, limit
        if old is not None:
            old.shutdown(wait=False)
        return previous

    def withdraw_pending(self) -> None:
        """At interpreter exit: drop the calls no thread has started."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def forget(self) -> None:
        # After fork: the child has none of the parent's threads.
        self._lock = threading.Lock()
        self._pool = None


#: ``to_thread``'s calls; name lookups have their own threads, so that a
#: pool busy with long calls never holds up a ``connect``.
_calls = _Pool("bluelet", _default_limit)
_lookups = _Pool("bluelet-lookup", lambda: _LOOKUP_THREADS)
_POOLS = (_calls, _lookups)


def set_thread_limit(max_threads: Optional[int] = None) -> int:
    """Let at most ``max_threads`` ``to_thread`` calls run at once.

    ``None`` restores the default, ``min(32, os.cpu_count() + 4)``. Calls
    beyond the limit wait in line, in order. Returns the previous limit.
    Calls already handed to the pool finish on the old threads. Name
    lookups (``connect``, ``udp``) have threads of their own, which this
    does not change.
    """
    if max_threads is not None and (not isinstance(max_threads, int) or max_threads < 1):
        raise ValueError("max_threads must be a positive int or None, not %r" % (max_threads,))
    return _calls.set_limit(max_threads)


def _withdraw_pending() -> None:
    for pool in _POOLS:
        pool.withdraw_pending()


def _forget_pools_after_fork() -> None:
    for pool in _POOLS:
        pool.forget()


# Private but made for this (concurrent.futures registers its own join
# here): these hooks run before the pool's threads are joined, whereas an
# atexit hook would run after, once every queued call had been run. Being
# private, it is not in typeshed.
threading._register_atexit(_withdraw_pending)  # type: ignore[attr-defined]
if hasattr(os, "register_at_fork"):  # POSIX; Windows cannot fork
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def settle(completion: Completion, future: Any) -> None:
    """Deliver a done, not cancelled, future's outcome to ``completion``
    (a ``concurrent.futures`` or an asyncio future: they agree on this)."""
    error = future.exception()
    if error is not None:
        completion.set_exception(error)
    else:
        completion.set_result(future.result())


class _Handoff:
    """The Completion of one call, delivered exactly once.

    Whoever claims it first delivers it: the worker thread with the call's
    outcome, or the loop thread when the coroutine stops waiting. A call
    abandoned that way never touches the loop again, which may have closed
    its wake-up socket by the time the call returns.
    """

    __slots__ = ("completion", "_claim")

    def __init__(self) -> None:
        self.completion = Completion()
        self._claim = threading.Lock()  # acquired once, never released

    def from_future(self, future: "concurrent.futures.Future[Any]") -> None:
        """The call ended (a done-callback: worker thread, or the canceller)."""
        # Withdrawn before it started: either nobody waits any more (abandon
        # settles it) or the interpreter is exiting (the waiter goes with it).
        if future.cancelled() or not self._claim.acquire(blocking=False):
            return
        settle(self.completion, future)

    def abandon(self) -> None:
        """Loop thread, waiter gone: settle the Completion so the loop stops
        expecting it (nobody reads the value)."""
        if self._claim.acquire(blocking=False):
            self.completion.set_result(None)


def to_thread(func: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Generator[Any, Any, _T]:
    """Run ``func(*args, **kwargs)`` in a worker thread; ``yield`` it for the result.

    The coroutine resumes with the return value, or the exception ``func``
    raised is raised at the ``yield``. Other coroutines run meanwhile. At
    most ``set_thread_limit()`` calls run at once; more wait in line.

    Returns a coroutine (a generator): yield it, put it under
    ``bluelet.timeout()``, or spawn it and ``join`` it later. The call is
    handed to the pool when the coroutine starts. ``func`` may call back
    into the loop with ``bluelet.from_thread`` (no token needed). If the coroutine is
    killed or times out, a call not yet started never runs, and a running
    one finishes in its thread with its result dropped (threads cannot be
    stopped).
    """
    if not callable(func):
        raise TypeError("to_thread() needs a callable, not %r" % (func,))
    return _call_in_thread(_calls, func, args, kwargs)


def lookup_in_thread(func: Callable[..., _T], *args: Any) -> Generator[Any, Any, _T]:
    """``to_thread`` for name lookups, on the lookup threads."""
    return _call_in_thread(_lookups, func, args, {})


@awaitable
def _call_in_thread(pool: _Pool, func: Callable[..., Any], args: Tuple[Any, ...],
                    kwargs: Dict[str, Any]) -> Coro:
    handoff = _Handoff()
    token = current_token()  # so that func may call back with from_thread
    try:
        future = pool.executor().submit(_in_thread_of, token, func, args, kwargs)
    except BaseException:
        handoff.abandon()  # e.g. the interpreter is exiting
        raise
    future.add_done_callback(handoff.from_future)
    try:
        return (yield handoff.completion)
    finally:
        # Killed or timed out: a call still in line is withdrawn, a running
        # one is not waited for.
        future.cancel()
        handoff.abandon()
