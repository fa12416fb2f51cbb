"""Calls into a running bluelet loop from other threads.

In the loop, ``token = bluelet.current_token()`` names it; in any other
thread, ``from_thread.run(coro, token=token)`` has the loop run ``coro`` as
a new coroutine and blocks that thread until it ends, giving its result or
raising its exception, and ``from_thread.run_sync(func, *args,
token=token)`` does the same for a plain function, called in the loop's
thread between two steps. In a thread started by ``bluelet.to_thread`` the
token may be left out: it is the loop that started the call.

The call crosses over through the loop's wake-up socket, so an idle loop
wakes at once and nothing polls. A call the loop has accepted is always
made, at the latest while its run ends (then ``run`` raises
``RunFinishedError``, as does any call made after the run has ended), so a
waiting thread is never left hanging.

The loop's run ends when its coroutines have ended (or with a deadlock
error when they all wait for something no thread of the loop can bring):
a coroutine that waits for a thread's call should wait for that thread
too, for example with ``yield bluelet.to_thread(thread.join)``.
"""

import threading
from typing import Any, Callable, Generator, Optional, TypeVar

from . import _impl
from ._errors import Cancelled, RunFinishedError
from ._records import Runnable

__all__ = ["Token", "current_token", "run", "run_sync"]

_T = TypeVar("_T")

# The token of the loop whose to_thread call this thread is running.
_local = threading.local()


class Token:
    """A running loop, as other threads name it (``current_token()``)."""

    __slots__ = ("_loop",)

    def __init__(self, loop: "_impl.Loop") -> None:
        self._loop = loop

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other._loop is self._loop

    def __hash__(self) -> int:
        return id(self._loop)

    def __repr__(self) -> str:
        return "<bluelet.Token of loop at %#x>" % id(self._loop)


def current_token() -> Token:
    """The token of the loop running in this thread (RuntimeError outside one)."""
    return Token(_impl.running_loop())


def _loop_for(token: Optional[Token], verb: str) -> "_impl.Loop":
    if token is None:
        token = getattr(_local, "token", None)
        if token is None:
            raise RuntimeError(
                "from_thread.%s() needs token= outside a to_thread() call: get one with "
                "bluelet.current_token() in the loop" % verb)
    elif not isinstance(token, Token):
        raise TypeError("from_thread.%s(): token must come from bluelet.current_token(), not %r"
                        % (verb, token))
    try:
        running = _impl.running_loop()
    except RuntimeError:
        running = None
    if running is token._loop:
        raise RuntimeError("from_thread.%s() in the loop's own thread would wait for itself "
                           "forever: yield the coroutine, or call the function" % verb)
    return token._loop


class _Call:
    """One call's outcome, handed from the loop's thread to the waiting one."""

    __slots__ = ("_done", "_value", "_error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: Optional[BaseException] = None

    def settle(self, value: Any, error: Optional[BaseException]) -> None:
        self._value = value
        self._error = error
        self._done.set()

    def outcome(self) -> Any:
        self._done.wait()
        error, self._error = self._error, None  # no cycle through the traceback
        if error is not None:
            raise error
        return self._value


def run(coro: Runnable[_T], *, token: Optional[Token] = None) -> _T:
    """Run ``coro`` (a generator or ``async def`` coroutine) in the loop as a
    new coroutine; block this thread until it ends; its result, or raise
    its exception.

    Raises ``RunFinishedError`` if the run has ended, or ends before
    ``coro`` does (its coroutines are then closed).
    """
    if not _impl.iscoroutine(coro):
        raise TypeError("from_thread.run() needs a coroutine (a generator or the result of "
                        "an async def), not %r" % (coro,))
    loop = _loop_for(token, "run")
    call = _Call()

    def start() -> None:
        try:
            loop.spawn(_runner(coro, call))
        except BaseException as exc:  # refused: the run is ending, or a bad coro
            call.settle(None, exc)

    try:
        loop.call_soon_threadsafe(start)
    except BaseException:
        coro.close()
        raise
    return call.outcome()  # type: ignore[no-any-return]


def _runner(coro: Runnable[Any], call: _Call) -> Generator[Any, Any, None]:
    try:
        value = yield coro
    except (Cancelled, GeneratorExit) as exc:
        # Nobody else holds this coroutine to kill it: the run is ending.
        error = RunFinishedError("the bluelet run ended before the coroutine did")
        error.__cause__ = exc
        call.settle(None, error)
        raise
    except BaseException as exc:
        # The caller's to handle, in its thread; not the run's.
        call.settle(None, exc)
    else:
        call.settle(value, None)


def run_sync(func: Callable[..., _T], *args: Any, token: Optional[Token] = None) -> _T:
    """Call ``func(*args)`` in the loop's thread, between two steps; block
    this thread until it returns; its result, or raise its exception.

    ``func`` runs with no coroutine running: it may wake queues and set
    flags, not yield. Raises ``RunFinishedError`` if the run has ended.
    """
    if not callable(func):
        raise TypeError("from_thread.run_sync() needs a callable, not %r" % (func,))
    loop = _loop_for(token, "run_sync")
    call = _Call()

    def invoke() -> None:
        try:
            value: Any = func(*args)
            if _impl.iscoroutine(value):
                value.close()
                raise TypeError("from_thread.run_sync(): %r returned a coroutine; "
                                "from_thread.run() runs coroutines" % (func,))
        except BaseException as exc:
            call.settle(None, exc)
        else:
            call.settle(value, None)

    loop.call_soon_threadsafe(invoke)
    return call.outcome()  # type: ignore[no-any-return]


def _in_thread_of(token: Token, func: Callable[..., _T], args: Any, kwargs: Any) -> _T:
    """Call ``func`` in a to_thread worker, with ``token`` as its default."""
    _local.token = token
    try:
        return func(*args, **kwargs)
    finally:
        _local.token = None
