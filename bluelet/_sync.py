"""Synchronization between coroutines: Lock, Semaphore, Condition, Flag,
Queue and Channel.

Every operation that may wait is an event to ``yield`` (a small generator
that finishes at once when it need not wait); the others are plain calls::

    yield lock.acquire()
    try:
        ...                      # the lock is held here, across yields
    finally:
        lock.release()

Waiting
    Waiting coroutines line up FIFO in a ``_Line``, each parked on its own
    core ``WaitQueue``, so nothing polls. What a waiter waits for is *handed*
    to it when it is woken: a released lock belongs to the oldest waiter from
    that moment, a put item is the oldest getter's. A coroutine arriving
    later cannot take it first, so service is in arrival order.

Interrupted waits (kill, timeout)
    A waiter can be killed (``Cancelled``) or timed out (``Timeout``) while
    parked, and it can be killed after something was handed to it but before
    it ran. Each waiter's ``_Slot`` says which: the waiting generator's
    handler either leaves the line or gives back what it was handed (the
    lock or permit goes to the next waiter; an item to the next getter or
    back to the head of the queue). So no wake-up is lost and no waiter is
    left behind. A timed-out waiter leaves its WaitQueue at once but runs its
    handler only when it resumes; a WaitQueue with nobody in it tells the
    waker to pass it over.

Why one WaitQueue per waiter
    With one shared queue the waker cannot tell which coroutine it woke, so
    a waiter killed after its wake-up could not know whether it was handed
    the lock. A private queue per waiter makes that state its own.
"""

import collections
from typing import Any, Callable, Deque, Dict, Generator, Generic, Optional, Tuple, TypeVar, cast

from ._errors import ChannelClosed, QueueEmpty, QueueFull
from ._coroutines import awaitable, frame
from ._impl import WaitQueue, current, running_loop
from ._records import Coro, Op

_T = TypeVar("_T")

__all__ = ["Lock", "Semaphore", "Condition", "Flag", "Queue", "Channel"]

# Slot states.
_WAITING = 0    # in its line; parked (or a timed-out waiter that has not run yet)
_GRANTED = 1    # handed what it waited for; out of the line
_GONE = 2       # gave up, or was passed over or failed; it takes nothing more

# Lines keep the slots of waiters that gave up until they reach the front;
# past this many (and half the line) they are swept out, so waiters that keep
# timing out cannot grow a line without bound.
_SWEEP_FLOOR = 64


def _in_a_loop() -> bool:
    """Whether a loop runs in this thread: in a coroutine, or in a call made
    between two steps (``from_thread.run_sync``). Only then can waiters be
    woken: a generator closed by the garbage collector after its loop ended
    has no loop to wake anyone in, and its waiters are gone with that loop."""
    try:
        running_loop()
    except RuntimeError:
        return False
    return True


def _wake(park: WaitQueue, value: Any = None, exc: Optional[BaseException] = None) -> None:
    """Wake whoever is parked in ``park`` (if a loop runs: ``_in_a_loop``)."""
    if _in_a_loop():
        park.wake(value, exc)


def _alive(coro: Any) -> bool:
    """Whether spawned coroutine ``coro`` has not ended (killed or returned)."""
    return frame(coro) is not None


class _Slot:
    """One waiter's place in a line, and what became of it."""

    __slots__ = ("park", "line", "task", "value", "state", "holds_place", "key")

    def __init__(self, line: "_Line", task: Any, value: Any) -> None:
        self.park = WaitQueue()   # its own queue: at most this one coroutine
        self.line = line          # the line it stands in now
        self.task = task          # the spawned coroutine waiting (Lock owners)
        self.value = value        # an item to put, or what it was handed
        self.state = _WAITING
        # A place in a Lock's line that stays when its coroutine stops
        # waiting: a Condition waiter must hold the lock again (see Lock).
        self.holds_place = False
        self.key: Any = None      # Lock: who may give the kept place up

    def grant(self, value: Any) -> None:
        """Hand ``value`` to this waiter and wake it with it."""
        self.state = _GRANTED
        self.value = value
        _wake(self.park, value)


class _Line:
    """Waiters in arrival order; the front one is served first."""

    __slots__ = ("_slots", "_gone")

    def __init__(self) -> None:
        self._slots: Deque[_Slot] = collections.deque()
        self._gone = 0            # slots in _slots that have left

    def __len__(self) -> int:
        return len(self._slots) - self._gone

    def add(self, task: Any = None, value: Any = None) -> _Slot:
        """A new slot at the back of the line."""
        slot = _Slot(self, task, value)
        self._slots.append(slot)
        return slot

    def push(self, slot: _Slot) -> None:
        """Move ``slot``, taken from another line, to the back of this one."""
        slot.line = self
        self._slots.append(slot)

    def next(self) -> Optional[_Slot]:
        """Take the front slot that can still be served, or None."""
        slots = self._slots
        while slots:
            slot = slots.popleft()
            if slot.state != _WAITING:
                self._gone -= 1
            elif len(slot.park) or slot.holds_place:
                return slot
            else:
                # Timed out: its handler has not run yet and finds it gone.
                slot.state = _GONE
        return None

    def leave(self, slot: _Slot) -> None:
        """``slot``'s waiter gives up its place."""
        slot.state = _GONE
        self._gone += 1
        if self._gone > _SWEEP_FLOOR and self._gone * 2 > len(self._slots):
            self._slots = collections.deque(s for s in self._slots if s.state == _WAITING)
            self._gone = 0

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Raise a new ``error()`` in every waiter and empty the line."""
        while True:
            slot = self.next()
            if slot is None:
                return
            slot.state = _GONE
            _wake(slot.park, None, error())

    @awaitable
    def wait(self, give_back: Callable[[Any], None], task: Any = None, value: Any = None) -> Coro:
        """Wait at the back of the line; the value is what the waiter is handed.

        If the wait is interrupted after the hand-over, ``give_back(handed)``
        passes it on; before it, the waiter just leaves.
        """
        slot = self.add(task, value)
        try:
            return (yield slot.park)
        except BaseException:
            if slot.state == _GRANTED:
                give_back(slot.value)
            elif slot.state == _WAITING:
                slot.line.leave(slot)
            raise


def _keep(_handed: Any) -> None:
    """Nothing to give back: a put item was already delivered."""


# ---------------------------------------------------------------------------
# Lock and Semaphore
# ---------------------------------------------------------------------------

class _Held:
    """``async with x:`` for the classes with ``acquire()`` and ``release()``
    (in an ``async def``; a generator acquires with ``yield`` and releases
    in ``finally``)."""

    def acquire(self) -> Op[bool]:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class Lock(_Held):
    """Mutual exclusion across ``yield`` points; FIFO, not re-entrant.

    ``yield lock.acquire()`` waits until the lock is free; ``lock.release()``
    (a plain call, usually in ``finally``) hands it to the coroutine that has
    waited longest. Any coroutine may release it, as with asyncio.
    """

    def __init__(self) -> None:
        self._owner: Any = None   # the spawned coroutine holding it
        self._line = _Line()
        # Coroutines whose Condition.wait() was interrupted while another
        # held the lock keep a place in the line instead of the lock (see
        # ``_reclaim``); their next release() gives that place up.
        self._kept: Dict[Any, _Slot] = {}

    def __repr__(self) -> str:
        return "<bluelet.Lock %s, %d waiting>" % (
            "locked" if self._owner is not None else "unlocked", len(self._line))

    def locked(self) -> bool:
        """Whether some coroutine holds the lock."""
        return self._owner is not None

    @awaitable
    def acquire(self) -> Generator[Any, Any, bool]:
        """Event: wait until the lock is this coroutine's; the value is True.

        RuntimeError if this coroutine holds it already.
        """
        me = current()
        if self._owner is None:
            self._owner = me
            return True
        if self._owner is me or self._kept_place(me) is not None:
            raise RuntimeError("this coroutine already holds %r (a Lock is not re-entrant)" % self)
        yield from self._line.wait(self._give_back, task=me)
        return True

    def release(self) -> None:
        """Free the lock, handing it to the longest waiter if there is one.

        After a ``Condition.wait()`` of this coroutine was interrupted while
        another held the lock, it gives up the place kept in line instead.
        RuntimeError if the lock is not held.
        """
        place = self._kept_place(current())
        if place is not None:
            del self._kept[place.key]
            self._line.leave(place)
            return
        if self._owner is None:
            raise RuntimeError("release() of an unlocked Lock")
        self._hand_on()

    def _give_back(self, _handed: Any) -> None:
        # Handed the lock, then interrupted before running: pass it on.
        self._hand_on()

    def _hand_on(self) -> None:
        """The owner is done: the front waiter owns the lock now, or nobody."""
        while True:
            slot = self._line.next()
            if slot is None:
                self._owner = None
                return
            if slot.key is not None:
                if self._kept.get(slot.key) is slot:
                    del self._kept[slot.key]
                if not _alive(slot.task):
                    continue  # a kept place whose coroutine ended without release()
            self._owner = slot.task
            slot.grant(True)
            return

    def _kept_place(self, key: Any) -> Optional[_Slot]:
        """The place ``key`` keeps in line, unless its coroutine has ended."""
        place = self._kept.get(key)
        if place is not None and not _alive(place.task):
            del self._kept[key]
            self._line.leave(place)
            return None
        return place

    def _keep_place(self, slot: _Slot) -> None:
        """``slot``'s coroutine stops waiting but still has to hold the lock
        again: its place stays, and its next release() gives it up.

        Keyed by the coroutine running now, which is the one whose clean-up
        code will call release(): the waiter itself after a timeout, or the
        coroutine that killed it, whose step runs the victim's clean-up.
        """
        slot.key = current()
        self._kept[slot.key] = slot

    @awaitable
    def _await_turn(self, place: _Slot) -> Coro:
        """Wait in a kept place until the lock is handed to it."""
        del self._kept[place.key]
        place.key = None
        try:
            yield place.park
        except BaseException:
            if place.state == _WAITING:
                self._keep_place(place)
            raise

    def _reclaim(self, slot: _Slot) -> None:
        """``slot`` waited on a Condition of this lock and was interrupted.

        The lock must be this coroutine's again, as after any wait(): it
        takes it if it is free, or else keeps (or gets) a place in line for
        it. It cannot wait for it: a killed coroutine cannot yield, and
        every yield inside an expired timeout raises again.
        """
        if slot.state == _GRANTED:
            return                      # the lock was handed to it already
        if slot.line is self._line:
            self._keep_place(slot)      # notified: keep its place
            return
        if slot.state == _WAITING:
            slot.line.leave(slot)       # still in the Condition's line
        if self._owner is None:
            self._owner = slot.task
            return
        place = self._line.add(slot.task)
        place.holds_place = True
        self._keep_place(place)


class Semaphore(_Held):
    """``value`` permits; ``acquire()`` takes one, waiting FIFO when none is
    left; ``release()`` returns one (handing it to the longest waiter)."""

    def __init__(self, value: int = 1) -> None:
        if value < 0:
            raise ValueError("a Semaphore starts with 0 or more permits, not %r" % (value,))
        self._value = value
        self._line = _Line()

    def __repr__(self) -> str:
        return "<bluelet.Semaphore value=%d, %d waiting>" % (self._value, len(self._line))

    def locked(self) -> bool:
        """Whether no permit is free (an acquire() would wait)."""
        return self._value == 0

    @awaitable
    def acquire(self) -> Generator[Any, Any, bool]:
        """Event: take a permit, waiting for one if needed; the value is True."""
        if self._value > 0:
            self._value -= 1
            return True
        yield from self._line.wait(self._give_back)
        return True

    def release(self) -> None:
        """Return a permit: to the longest waiter, or to the pool."""
        slot = self._line.next()
        if slot is None:
            self._value += 1
        else:
            slot.grant(True)

    def _give_back(self, _handed: Any) -> None:
        self.release()


# ---------------------------------------------------------------------------
# Condition and Flag
# ---------------------------------------------------------------------------

class Condition(_Held):
    """Wait, holding ``lock`` (a new Lock by default), until notified.

    ``yield cond.wait()`` releases the lock, waits for ``notify()`` and
    returns holding the lock again. Notified waiters queue for the lock in
    the order they were notified. If the wait is killed or timed out, the
    coroutine holds the lock again when the exception reaches its
    ``finally`` -- or, when another coroutine holds it at that moment, keeps
    its place in line for it, and its ``release()`` gives the place up; so
    the usual ``finally: cond.release()`` is right in every case.
    """

    def __init__(self, lock: Optional[Lock] = None) -> None:
        self._lock = Lock() if lock is None else lock
        self._line = _Line()

    def __repr__(self) -> str:
        return "<bluelet.Condition %r, %d waiting>" % (self._lock, len(self._line))

    def acquire(self) -> Op[bool]:
        """Event: acquire the underlying lock."""
        return self._lock.acquire()

    def release(self) -> None:
        """Release the underlying lock."""
        self._lock.release()

    def locked(self) -> bool:
        """Whether the underlying lock is held."""
        return self._lock.locked()

    @awaitable
    def wait(self) -> Generator[Any, Any, bool]:
        """Event: release the lock, wait to be notified, re-take the lock.

        The value is True. Check the awaited state in a loop (or use
        ``wait_for``): after an interrupted wait() whose lock was still
        taken, the next wait() returns as soon as the lock is back.
        RuntimeError if this coroutine does not hold the lock.
        """
        lock = self._lock
        me = current()
        if lock._owner is not me:
            place = lock._kept_place(me)
            if place is None:
                raise RuntimeError("Condition.wait() needs the lock held by this coroutine")
            # An earlier wait() was interrupted and is still in line for the
            # lock. Finish it: return (a spurious wake-up) once the lock is
            # back, so a notify() sent meanwhile is not missed by a caller
            # that checks its predicate in a loop.
            yield from lock._await_turn(place)
            return True
        slot = self._line.add(me)
        lock._hand_on()
        try:
            yield slot.park
        except BaseException:
            lock._reclaim(slot)
            raise
        return True

    @awaitable
    def wait_for(self, predicate: Callable[[], Any]) -> Coro:
        """Event: ``wait()`` until ``predicate()`` is true; the value is its result."""
        result = predicate()
        while not result:
            yield from self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> int:
        """Wake up to ``n`` waiters, oldest first; returns how many.

        They re-take the lock one by one after the notifier releases it.
        RuntimeError if the lock is not held.
        """
        lock = self._lock
        if lock._owner is None:
            raise RuntimeError("Condition.notify() needs the lock held")
        count = 0
        while count < n:
            slot = self._line.next()
            if slot is None:
                break
            # Queued for the lock in its notified order; from here on its
            # place is kept even if it is interrupted (see Lock._reclaim).
            slot.holds_place = True
            lock._line.push(slot)
            count += 1
        return count

    def notify_all(self) -> int:
        """Wake every waiter; returns how many."""
        return self.notify(len(self._line))


class Flag:
    """An event flag: ``wait()`` returns once ``set()`` has been called.

    Named Flag because ``bluelet.Event`` is the base class of events.
    """

    def __init__(self) -> None:
        self._set = False
        # Waiters need no hand-over (set() wakes all): one shared queue.
        self._waiters = WaitQueue()

    def __repr__(self) -> str:
        return "<bluelet.Flag %s, %d waiting>" % (
            "set" if self._set else "clear", len(self._waiters))

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._set

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        self._set = True
        if _in_a_loop():
            self._waiters.wake_all(True)

    def clear(self) -> None:
        """Unset the flag; later wait()s wait again."""
        self._set = False

    @awaitable
    def wait(self) -> Generator[Any, Any, bool]:
        """Event: wait until the flag is set (at once if it is); the value is True."""
        if not self._set:
            yield self._waiters.wait()
        return True


# ---------------------------------------------------------------------------
# Queue and Channel
# ---------------------------------------------------------------------------

class _Exchange(Generic[_T]):
    """Items passed from putters to getters, FIFO, through a buffer.

    ``capacity`` is the buffer's size: None for no limit, 0 for none at all
    (every put waits for a get). A getter waiting is handed the next item
    directly; a putter waiting for room has its item taken into the buffer
    when room is made.

    Invariants: getters wait only while the buffer is empty; putters only
    while it is full. The buffer can hold more than ``capacity`` items for a
    while: an item handed to a getter that was killed before it ran goes
    back to the head of the buffer even if it has since filled up.
    """

    def __init__(self, capacity: Optional[int]) -> None:
        self._capacity = capacity
        self._items: Deque[Any] = collections.deque()
        self._getters = _Line()
        self._putters = _Line()
        self._closed = False

    def _room(self) -> bool:
        return self._capacity is None or len(self._items) < self._capacity

    def _offer(self, item: Any) -> bool:
        """Deliver ``item`` if that needs no wait; whether it was."""
        slot = self._getters.next()
        if slot is not None:
            slot.grant(item)
            return True
        if self._room():
            self._items.append(item)
            return True
        return False

    def _take(self) -> Tuple[bool, Any]:
        """``(True, item)`` if an item is there without waiting, else ``(False, None)``."""
        if self._items:
            item = self._items.popleft()
            if self._room():
                slot = self._putters.next()
                if slot is not None:
                    self._items.append(slot.value)
                    slot.grant(None)
            return True, item
        slot = self._putters.next()
        if slot is not None:
            item = slot.value
            slot.grant(None)
            return True, item
        return False, None

    @awaitable
    def _put(self, item: _T) -> Generator[Any, Any, None]:
        if self._closed:
            raise ChannelClosed("send() on a closed Channel")
        if not self._offer(item):
            yield from self._putters.wait(_keep, value=item)

    @awaitable
    def _get(self) -> Generator[Any, Any, _T]:
        found, item = self._take()
        if found:
            return cast(_T, item)
        if self._closed:
            raise ChannelClosed("recv() on a closed Channel")
        return cast(_T, (yield from self._getters.wait(self._give_back)))

    def _give_back(self, item: Any) -> None:
        # Handed ``item``, then interrupted before running: next getter, or
        # the head of the buffer (it was the oldest item).
        slot = self._getters.next()
        if slot is None:
            self._items.appendleft(item)
        else:
            slot.grant(item)


class Queue(_Exchange[_T]):
    """A FIFO queue between coroutines; ``maxsize`` <= 0 means no limit.

    ``yield q.put(item)`` waits while the queue is full, ``item = yield
    q.get()`` while it is empty; waiters are served in arrival order, and an
    item goes straight to the getter that has waited longest. ``put()`` and
    ``get()`` that need not wait do not give way to other coroutines.
    """

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize if maxsize > 0 else None)
        self.maxsize = maxsize

    def __repr__(self) -> str:
        return "<bluelet.Queue %d/%s items, %d getters, %d putters waiting>" % (
            len(self._items), self.maxsize if self.maxsize > 0 else "inf",
            len(self._getters), len(self._putters))

    def put(self, item: _T) -> Op[None]:
        """Event: add ``item``, waiting for room if the queue is full."""
        return self._put(item)

    def get(self) -> Op[_T]:
        """Event: the oldest item, waiting for one if the queue is empty."""
        return self._get()

    def put_nowait(self, item: _T) -> None:
        """Add ``item`` now; QueueFull if there is no room."""
        if not self._offer(item):
            raise QueueFull("the Queue is full (maxsize %d)" % self.maxsize)

    def get_nowait(self) -> _T:
        """Take the oldest item now; QueueEmpty if there is none."""
        found, item = self._take()
        if not found:
            raise QueueEmpty("the Queue is empty")
        return cast(_T, item)

    def qsize(self) -> int:
        """How many items are in the queue."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return not self._items

    def full(self) -> bool:
        """Whether a put() would wait."""
        return not self._room()


class Channel(_Exchange[_T]):
    """A rendezvous: each item passes from one sender to one receiver.

    ``yield ch.send(x)`` waits until a receiver takes ``x``; ``x = yield
    ch.recv()`` waits for a sender. Senders and receivers are each served
    in arrival order. ``close()`` raises ChannelClosed in everyone waiting
    and in every later send() and recv().
    """

    def __init__(self) -> None:
        super().__init__(0)

    def __repr__(self) -> str:
        return "<bluelet.Channel%s, %d receivers, %d senders waiting>" % (
            " closed" if self._closed else "", len(self._getters), len(self._putters))

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    def send(self, item: _T) -> Op[None]:
        """Event: hand ``item`` to a receiver, waiting for one if needed."""
        return self._put(item)

    def recv(self) -> Op[_T]:
        """Event: the next item sent, waiting for a sender if needed."""
        return self._get()

    def close(self) -> None:
        """Close the channel: waiting senders and receivers get ChannelClosed.

        An item handed to a receiver that was killed before it ran is still
        delivered to a later recv(). Closing twice does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._putters.fail_all(lambda: ChannelClosed(
            "the Channel was closed before a receiver took the item"))
        self._getters.fail_all(lambda: ChannelClosed(
            "the Channel was closed while this coroutine waited to receive"))
