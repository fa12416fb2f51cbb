"""Synchronization between coroutines (Lock, Semaphore, Condition, Flag,
Queue, Channel) and waiting on groups (join_all, first).

Every test takes the ``core`` fixture, so it runs once per scheduler core, and
uses the public API as programs do (names looked up on ``bluelet`` at call
time). Ordering is observed with event lists; the interrupted-wait tests put
a waiter in each waiting state -- parked, and handed the lock or item but not
yet run -- and kill it or let its timeout run out there.
"""

import collections
import time

import pytest

import bluelet
from _helpers import spawn_and_join

pytestmark = pytest.mark.timeout(30)


class Boom(Exception):
    """An exception no library code raises by itself."""


def settle():
    """Let the coroutines spawned so far reach their first wait: sleep(0)
    resumes after the next poll, which comes only once no coroutine is
    ready (null() would not do: each spawn starts its coroutine a pass
    later, as in 0.2.0)."""
    yield bluelet.sleep(0)


def spawn_all(coros):
    """Spawn every one of ``coros``; returns them."""
    for coro in coros:
        yield bluelet.spawn(coro)
    return coros


def join_each(coros):
    for coro in coros:
        yield bluelet.join(coro)


def start(coro):
    """Spawn ``coro`` and let it reach its first wait; returns it."""
    yield bluelet.spawn(coro)
    yield from settle()
    return coro


def start_all(coros):
    """Spawn every one of ``coros`` and let them reach their first wait;
    returns them."""
    yield from spawn_all(coros)
    yield from settle()
    return coros


def round_trip(lock):
    """Take ``lock`` and give it back (at once when nobody holds it or waits
    in line for it); returns whether it is still locked afterwards."""
    yield lock.acquire()
    lock.release()
    return lock.locked()


def taker(take, got, tag):
    """Wait for one item from ``take()`` (a get or recv) and note ``(tag, item)``."""
    got.append((tag, (yield take())))


def handed_over(ch, item):
    """Send ``item`` on ``ch`` to a receiver spawned for it; returns what that
    receiver got, as a list."""
    got = []
    r = taker(ch.recv, got, "receiver")
    yield bluelet.spawn(r)
    yield ch.send(item)
    yield bluelet.join(r)
    return [value for _, value in got]


def hold_and_sleep(lock, seconds=60, on_release=()):
    """Acquire ``lock`` and sleep ``seconds``; release it (then call each of
    ``on_release``) however that ends."""
    yield lock.acquire()
    try:
        yield bluelet.sleep(seconds)
    finally:
        lock.release()
        for call in on_release:
            call()


def holder(lock, log, name, steps=3):
    """Acquire ``lock``, hold it over a few yields, release it; log both ends."""
    yield lock.acquire()
    try:
        log.append(("in", name))
        for _ in range(steps):
            yield bluelet.null()
        log.append(("out", name))
    finally:
        lock.release()


def impatient(event, seconds, log):
    """Wait for ``event`` at most ``seconds``; log "timed out" if that ran out."""
    try:
        return (yield bluelet.timeout(seconds, event))
    except bluelet.Timeout:
        log.append("timed out")


def timed_wait(cond, seconds, log, name):
    """Take ``cond``'s lock, wait on ``cond`` at most ``seconds``, release the
    lock; log ``(name, "notified")`` or ``(name, "timed out", cond.locked())``."""
    yield cond.acquire()
    try:
        yield bluelet.timeout(seconds, cond.wait())
        log.append((name, "notified"))
    except bluelet.Timeout:
        log.append((name, "timed out", cond.locked()))
    finally:
        cond.release()


def holds_later(cond, log, name, notify=None):
    """After 0.5 s take ``cond``'s lock and hold it 1 s, logging ``(name,
    "holds")`` and ``(name, "releases")``; with ``notify="first"`` notify one
    waiter at once on taking it, with ``"last"`` (logged as ``(name,
    "notifies")``) just before releasing it."""
    yield bluelet.sleep(0.5)
    yield cond.acquire()
    log.append((name, "holds"))
    if notify == "first":
        cond.notify()
    yield bluelet.sleep(1.0)
    if notify == "last":
        log.append((name, "notifies"))
        cond.notify()
    log.append((name, "releases"))
    cond.release()


def exclusive_entries(log):
    """Assert each "in" is followed by the same name's "out" before the next
    "in"; returns the names in the order they came in."""
    assert len(log) % 2 == 0
    for start in range(0, len(log), 2):
        assert log[start][0] == "in" and log[start + 1] == ("out", log[start][1])
    return [name for kind, name in log if kind == "in"]


# ---------------------------------------------------------------------------
# Lock
# ---------------------------------------------------------------------------


def test_lock_uncontended(core):
    lock = bluelet.Lock()

    def root():
        assert not lock.locked()
        got = yield lock.acquire()
        assert got is True and lock.locked()
        lock.release()
        return lock.locked()

    assert bluelet.run(root()) is False


def test_lock_contention_is_exclusive_and_fifo(core):
    lock = bluelet.Lock()
    log = []
    bluelet.run(spawn_and_join([holder(lock, log, i) for i in range(200)]))
    assert exclusive_entries(log) == list(range(200))
    assert not lock.locked()


def test_lock_release_hands_over_no_barging(core):
    lock = bluelet.Lock()
    order = []

    def waiter():
        yield lock.acquire()
        order.append("waiter")
        lock.release()

    def root():
        yield lock.acquire()
        yield from start(waiter())
        lock.release()
        # The lock is the waiter's now, though it has not run yet.
        assert lock.locked()
        yield lock.acquire()
        order.append("root")
        lock.release()

    bluelet.run(root())
    assert order == ["waiter", "root"]


def test_lock_misuse_raises(core):
    lock = bluelet.Lock()

    def root():
        with pytest.raises(RuntimeError, match="unlocked"):
            lock.release()
        yield lock.acquire()
        with pytest.raises(RuntimeError, match="re-entrant"):
            yield lock.acquire()
        lock.release()
        return "ok"

    assert bluelet.run(root()) == "ok"


def test_lock_any_coroutine_may_release(core):
    lock = bluelet.Lock()

    def other():
        lock.release()
        yield bluelet.null()

    def root():
        yield lock.acquire()
        yield from spawn_and_join([other()])
        return lock.locked()

    assert bluelet.run(root()) is False


def test_lock_killed_holder_releases_in_finally(core):
    lock = bluelet.Lock()
    log = []

    def root():
        sleeper = yield from start(hold_and_sleep(lock))
        h = yield from start(holder(lock, log, "next"))
        yield bluelet.kill(sleeper)
        yield bluelet.join(h)

    bluelet.run(root())
    assert log == [("in", "next"), ("out", "next")]
    assert not lock.locked()


@pytest.mark.parametrize("when", ["parked", "handed"])
def test_lock_killed_waiter_passes_its_turn_on(core, when):
    lock = bluelet.Lock()
    log = []

    def root():
        yield lock.acquire()
        waiters = yield from start_all([holder(lock, log, i) for i in range(3)])
        if when == "handed":
            lock.release()        # handed to waiter 0, which has not run yet
        yield bluelet.kill(waiters[0])
        if when == "parked":
            lock.release()
        yield from join_each(waiters)

    bluelet.run(root())
    assert exclusive_entries(log) == [1, 2]
    assert not lock.locked()


@pytest.mark.parametrize("patience", [0.05, 1.0], ids=["before-release", "as-released"])
def test_lock_acquire_timeout_passes_the_turn_on(core, patience):
    # "as-released": the holder releases in the same pass as the waiter's
    # timeout runs out, before that waiter resumes: the lock must go to the
    # next waiter.
    lock = bluelet.Lock()
    log = []

    def root():
        owner = yield from start(hold_and_sleep(lock, 1.0))
        yield from spawn_and_join([impatient(lock.acquire(), patience, log),
                                   holder(lock, log, "patient")])
        yield bluelet.join(owner)

    bluelet.run(root(), virtual_time=True)
    assert log == ["timed out", ("in", "patient"), ("out", "patient")]
    assert not lock.locked()


def test_lock_contention_with_timeouts_keeps_order(core):
    lock = bluelet.Lock()
    log = []
    timed_out = []

    def contender(i):
        if i % 3:
            yield from holder(lock, log, i, steps=1)
            return
        try:
            yield bluelet.timeout(0.05 * (i % 7), lock.acquire())
        except bluelet.Timeout:
            timed_out.append(i)
            return
        try:
            log.append(("in", i))
            yield bluelet.sleep(0.01)
            log.append(("out", i))
        finally:
            lock.release()

    bluelet.run(spawn_and_join([contender(i) for i in range(300)]), virtual_time=True)
    entered = exclusive_entries(log)
    assert entered == sorted(entered)
    assert sorted(entered + timed_out) == list(range(300))
    assert timed_out and all(i % 3 == 0 for i in timed_out)
    assert not lock.locked()


def test_lock_expired_timeout_does_not_leak_waiters(core):
    lock = bluelet.Lock()
    timeouts = []

    def root():
        yield lock.acquire()
        yield from spawn_and_join([impatient(lock.acquire(), 0.01, timeouts) for _ in range(500)])
        lock.release()
        assert not (yield from round_trip(lock))    # at once: nobody is left in line
        return repr(lock)

    assert bluelet.run(root(), virtual_time=True) == "<bluelet.Lock unlocked, 0 waiting>"
    assert len(timeouts) == 500


# ---------------------------------------------------------------------------
# Semaphore
# ---------------------------------------------------------------------------


def test_semaphore_bounds_concurrency_fifo(core):
    sem = bluelet.Semaphore(3)
    inside = []
    peak = []
    entered = []

    def worker(i):
        yield sem.acquire()
        try:
            entered.append(i)
            inside.append(i)
            peak.append(len(inside))
            # Long enough to overlap: spawned coroutines start a pass apart.
            for _ in range(5):
                yield bluelet.null()
            inside.remove(i)
        finally:
            sem.release()

    def root():
        yield from spawn_and_join([worker(i) for i in range(100)])
        return sem.locked()

    assert bluelet.run(root()) is False
    assert max(peak) == 3
    assert entered == list(range(100))


def test_semaphore_counts(core):
    def root():
        sem = bluelet.Semaphore(0)
        assert sem.locked()
        sem.release()
        assert not sem.locked()
        assert (yield sem.acquire()) is True
        return sem.locked()

    assert bluelet.run(root()) is True
    with pytest.raises(ValueError):
        bluelet.Semaphore(-1)


def test_semaphore_waiter_killed_after_handover_passes_permit_on(core):
    sem = bluelet.Semaphore(0)
    got = []

    def waiter(i):
        yield sem.acquire()
        got.append(i)

    def root():
        waiters = yield from start_all([waiter(i) for i in range(3)])
        sem.release()              # handed to waiter 0
        yield bluelet.kill(waiters[0])
        yield from settle()
        sem.release()
        yield from join_each(waiters)
        return sem.locked()

    assert bluelet.run(root()) is True
    assert got == [1, 2]


def test_semaphore_acquire_timeout_and_kill(core):
    sem = bluelet.Semaphore(0)
    log = []

    def killed():
        try:
            yield sem.acquire()
        finally:
            log.append("killed")

    def patient():
        yield sem.acquire()
        log.append("patient")

    def root():
        coros = yield from start_all([impatient(sem.acquire(), 0.05, log), killed(), patient()])
        yield bluelet.kill(coros[1])
        yield bluelet.join(coros[0])
        sem.release()
        yield bluelet.join(coros[2])
        return sem.locked()

    assert bluelet.run(root(), virtual_time=True) is True
    assert log == ["killed", "timed out", "patient"]


# ---------------------------------------------------------------------------
# Condition
# ---------------------------------------------------------------------------


def test_condition_notify_wakes_oldest_holding_lock(core):
    cond = bluelet.Condition()
    log = []

    def waiter(i):
        yield cond.acquire()
        try:
            yield cond.wait()
            assert cond.locked()
            log.append(("in", i))
            yield bluelet.null()
            log.append(("out", i))
        finally:
            cond.release()

    def root():
        waiters = yield from start_all([waiter(i) for i in range(5)])
        yield cond.acquire()
        assert cond.notify() == 1
        cond.release()
        yield bluelet.join(waiters[0])
        yield cond.acquire()
        assert cond.notify(2) == 2
        cond.release()
        yield from join_each(waiters[1:3])
        yield cond.acquire()
        assert cond.notify_all() == 2
        cond.release()
        yield from join_each(waiters)
        return cond.locked()

    assert bluelet.run(root()) is False
    assert exclusive_entries(log) == [0, 1, 2, 3, 4]


def test_condition_wait_for_producer_consumer(core):
    lock = bluelet.Lock()
    cond = bluelet.Condition(lock)
    items = []
    got = []

    def consumer():
        for _ in range(20):
            yield cond.acquire()
            try:
                result = yield cond.wait_for(lambda: len(items))
                assert result
                got.append(items.pop(0))
            finally:
                cond.release()

    def producer():
        for i in range(20):
            yield lock.acquire()
            try:
                items.append(i)
                cond.notify()
            finally:
                lock.release()
            yield bluelet.null()

    def root():
        yield from spawn_and_join([consumer(), producer()])

    bluelet.run(root())
    assert got == list(range(20))


def test_condition_needs_the_lock(core):
    cond = bluelet.Condition()

    def other_holds():
        yield cond.acquire()
        yield bluelet.sleep(60)

    def root():
        with pytest.raises(RuntimeError):
            cond.notify()
        with pytest.raises(RuntimeError):
            yield cond.wait()
        o = yield from start(other_holds())
        with pytest.raises(RuntimeError):
            yield cond.wait()       # held, but by another coroutine
        yield bluelet.kill(o)
        return "ok"

    assert bluelet.run(root()) == "ok"


def test_condition_wait_timeout_with_lock_free_holds_it_again(core):
    cond = bluelet.Condition()

    def root():
        yield cond.acquire()
        try:
            yield bluelet.timeout(0.05, cond.wait())
        except bluelet.Timeout:
            assert cond.locked()
        finally:
            cond.release()
        return cond.locked()

    assert bluelet.run(root(), virtual_time=True) is False


def test_condition_wait_timeout_while_another_holds_the_lock(core):
    cond = bluelet.Condition()
    log = []

    def impatient():
        # Its release in the end gives up its place in line for the lock.
        yield from timed_wait(cond, 1.0, log, "impatient")
        log.append("impatient done")

    def root():
        # "other" holds the lock when the wait times out.
        yield from spawn_and_join([impatient(), holds_later(cond, log, "other")])
        return (yield from round_trip(cond))    # at once: nobody holds or waits for it

    assert bluelet.run(root(), virtual_time=True) is False
    assert log == [("other", "holds"), ("impatient", "timed out", True), "impatient done",
                   ("other", "releases")]


def test_condition_wait_again_after_timeout_waits_for_its_turn(core):
    cond = bluelet.Condition()
    log = []

    def retrier():
        yield cond.acquire()
        try:
            while ("other", "notifies") not in log:
                try:
                    yield bluelet.timeout(1.0, cond.wait())
                except bluelet.Timeout:
                    log.append("retry")
            log.append(("got", cond.locked()))
        finally:
            cond.release()

    def root():
        # "other" holds the lock across the retrier's timeout.
        yield from spawn_and_join([retrier(), holds_later(cond, log, "other", notify="last")])
        return cond.locked()

    assert bluelet.run(root(), virtual_time=True) is False
    assert log == [("other", "holds"), "retry", ("other", "notifies"), ("other", "releases"),
                   ("got", True)]


def test_condition_notify_passes_over_a_timed_out_waiter(core):
    # The first waiter's timeout runs out in the same pass as the notifier
    # wakes, before that waiter resumes: notify(1) must reach the second.
    cond = bluelet.Condition()
    log = []

    def notifier():
        yield bluelet.sleep(1.0)
        yield cond.acquire()
        assert cond.notify() == 1
        cond.release()

    def root():
        n = yield from start(notifier())
        yield from spawn_and_join([timed_wait(cond, 1.0, log, "first"),
                                   timed_wait(cond, 60, log, "second")])
        yield bluelet.join(n)
        return cond.locked()

    assert bluelet.run(root(), virtual_time=True) is False
    assert sorted(log) == [("first", "timed out", True), ("second", "notified")]


def test_condition_waiter_killed_in_each_state(core):
    # States: waiting for notify (lock free / lock held by the killer),
    # notified and queued for the lock, handed the lock but not run yet.
    for state in ("parked-free", "parked-held", "notified", "handed"):
        cond = bluelet.Condition()
        log = []

        def victim():
            yield cond.acquire()
            try:
                yield cond.wait()
                log.append("victim woke")
            finally:
                cond.release()
                log.append("victim released")

        def root():
            v = victim()
            after = holder(cond, log, "after")
            yield bluelet.spawn(v)
            yield from settle()
            if state == "parked-free":
                yield bluelet.kill(v)
                yield bluelet.spawn(after)
            elif state == "parked-held":
                yield cond.acquire()
                yield bluelet.kill(v)
                assert cond.locked()            # still the killer's
                yield bluelet.spawn(after)
                yield from settle()
                cond.release()
            elif state == "notified":
                yield cond.acquire()
                cond.notify()
                yield bluelet.kill(v)
                yield bluelet.spawn(after)
                yield from settle()
                cond.release()
            else:
                yield cond.acquire()
                cond.notify()
                yield bluelet.spawn(after)
                yield from settle()             # queued behind the victim
                cond.release()                  # handed to the victim, not run yet
                yield bluelet.kill(v)
            yield bluelet.join(after)
            yield cond.acquire()
            cond.release()
            return cond.locked()

        assert bluelet.run(root()) is False, state
        assert log == ["victim released", ("in", "after"), ("out", "after")], state


def test_condition_killed_waiter_without_finally_does_not_block_the_lock(core):
    cond = bluelet.Condition()
    log = []

    def careless():
        yield cond.acquire()
        yield cond.wait()

    def root():
        c = yield from start(careless())
        yield cond.acquire()
        yield bluelet.kill(c)       # in line for the lock, and never releases
        after = yield from start(holder(cond, log, "after"))
        cond.release()
        yield bluelet.join(after)
        return cond.locked()

    assert bluelet.run(root()) is False
    assert log == [("in", "after"), ("out", "after")]


# ---------------------------------------------------------------------------
# Flag
# ---------------------------------------------------------------------------


def test_flag_wakes_every_waiter_in_order(core):
    flag = bluelet.Flag()
    woke = []

    def waiter(i):
        assert (yield flag.wait()) is True
        woke.append(i)

    def root():
        waiters = yield from start_all([waiter(i) for i in range(50)])
        assert woke == [] and not flag.is_set()
        flag.set()
        yield from join_each(waiters)
        assert (yield flag.wait()) is True      # set: at once
        flag.clear()
        late = yield from start(waiter("late"))
        assert woke[-1] != "late"
        flag.set()
        yield bluelet.join(late)

    bluelet.run(root())
    assert woke == list(range(50)) + ["late"]


# ---------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------


def test_queue_basics(core):
    q = bluelet.Queue(2)

    def root():
        assert q.empty() and not q.full() and q.qsize() == 0
        yield q.put("a")
        q.put_nowait("b")
        assert q.full() and q.qsize() == 2
        with pytest.raises(bluelet.QueueFull):
            q.put_nowait("c")
        assert (yield q.get()) == "a"
        assert q.get_nowait() == "b"
        with pytest.raises(bluelet.QueueEmpty):
            q.get_nowait()
        return q.empty()

    assert bluelet.run(root()) is True
    unbounded = bluelet.Queue()
    for i in range(1000):
        unbounded.put_nowait(i)
    assert not unbounded.full() and unbounded.maxsize == 0


def test_queue_getters_served_in_arrival_order(core):
    q = bluelet.Queue()
    got = []

    def root():
        getters = yield from start_all([taker(q.get, got, i) for i in range(10)])
        for item in "abcdefghij":
            yield q.put(item)
        # Each item went straight to a waiting getter.
        assert q.empty()
        yield from join_each(getters)

    bluelet.run(root())
    assert got == list(enumerate("abcdefghij"))


def test_queue_putters_wait_when_full_in_arrival_order(core):
    q = bluelet.Queue(1)
    put_done = []

    def putter(i):
        yield q.put(i)
        put_done.append(i)

    def root():
        putters = yield from start_all([putter(i) for i in range(6)])
        assert put_done == [0] and q.full()
        got = []
        for _ in range(6):
            got.append((yield q.get()))
        yield from join_each(putters)
        return got

    assert bluelet.run(root()) == list(range(6))
    assert put_done == list(range(6))


def test_queue_many_producers_consumers_keep_fifo(core):
    q = bluelet.Queue(8)
    seen = collections.defaultdict(list)   # consumer -> [(producer, seq)]

    def producer(p):
        for seq in range(50):
            yield q.put((p, seq))
            if seq % 7 == 0:
                yield bluelet.null()

    def consumer(c, n):
        for _ in range(n):
            seen[c].append((yield q.get()))

    def root():
        yield from spawn_and_join([consumer(c, 100) for c in range(20)]
                                  + [producer(p) for p in range(40)])
        return q.qsize()

    assert bluelet.run(root()) == 0
    everything = [item for items in seen.values() for item in items]
    assert sorted(everything) == [(p, s) for p in range(40) for s in range(50)]
    for items in seen.values():
        for p in range(40):
            mine = [s for (pp, s) in items if pp == p]
            assert mine == sorted(mine)


def test_queue_10000_producers_and_consumers(core):
    q = bluelet.Queue(100)
    total = []

    def producer(p):
        for i in range(5):
            yield q.put(p * 5 + i)

    def consumer():
        s = 0
        for _ in range(5):
            s += yield q.get()
        total.append(s)

    def root():
        yield from spawn_and_join([consumer() for _ in range(5000)]
                                  + [producer(p) for p in range(5000)])
        return q.qsize()

    assert bluelet.run(root()) == 0
    assert len(total) == 5000
    assert sum(total) == sum(range(25000))


def test_queue_getter_killed_after_handover_passes_item_on(core):
    q = bluelet.Queue()
    got = []

    def root():
        getters = yield from start_all([taker(q.get, got, i) for i in range(2)])
        q.put_nowait("x")           # handed to getter 0, not run yet
        yield bluelet.kill(getters[0])
        yield bluelet.join(getters[1])
        # With nobody waiting, a handed item goes back to the head.
        late = yield from start(taker(q.get, got, "late"))
        q.put_nowait("y")
        yield bluelet.kill(late)
        q.put_nowait("z")
        return [q.get_nowait(), q.get_nowait()]

    assert bluelet.run(root()) == ["y", "z"]
    assert got == [(1, "x")]


def test_queue_get_and_put_interrupted(core):
    log = []

    def getter(q, seconds):
        try:
            log.append(("got", (yield bluelet.timeout(seconds, q.get()))))
        except bluelet.Timeout:
            log.append("get timed out")

    def putter(q, item, seconds):
        try:
            yield bluelet.timeout(seconds, q.put(item))
            log.append(("put", item))
        except bluelet.Timeout:
            log.append(("put timed out", item))

    def root():
        q = bluelet.Queue(1)
        coros = yield from spawn_all([getter(q, 0.05), getter(q, 10)])
        yield bluelet.join(coros[0])
        yield q.put("a")            # to the getter still waiting
        yield bluelet.join(coros[1])
        yield q.put("b")
        coros = yield from start_all([putter(q, "c", 0.05), putter(q, "d", 10)])
        killed = yield from start(putter(q, "e", 10))
        yield bluelet.kill(killed)
        yield bluelet.join(coros[0])
        got = [(yield q.get()), (yield q.get())]
        yield bluelet.join(coros[1])
        return got, q.qsize()

    assert bluelet.run(root(), virtual_time=True) == (["b", "d"], 0)
    assert log == ["get timed out", ("got", "a"), ("put timed out", "c"), ("put", "d")]


# ---------------------------------------------------------------------------
# Channel
# ---------------------------------------------------------------------------


def test_channel_send_waits_for_a_receiver(core):
    ch = bluelet.Channel()
    log = []

    def sender():
        log.append("send")
        yield ch.send(1)
        log.append("sent")

    def root():
        s = yield from start(sender())
        assert log == ["send"]
        log.append("recv")
        log.append((yield ch.recv()))
        yield bluelet.join(s)

    bluelet.run(root())
    assert log == ["send", "recv", 1, "sent"]


def test_channel_fifo_both_ways(core):
    ch = bluelet.Channel()
    got = []

    def sender(i):
        yield ch.send(i)

    def root():
        senders = yield from start_all([sender(i) for i in range(10)])
        receivers = yield from start_all([taker(ch.recv, got, i) for i in range(20)])
        for i in range(10, 20):
            yield ch.send(i)
        yield from join_each(senders + receivers)

    bluelet.run(root())
    assert got == [(i, i) for i in range(20)]


def test_channel_close(core):
    log = []

    def receiver(ch):
        try:
            yield ch.recv()
        except bluelet.ChannelClosed:
            log.append("receiver")

    def sender(ch):
        try:
            yield ch.send(1)
        except bluelet.ChannelClosed:
            log.append("sender")

    def root():
        a = bluelet.Channel()
        b = bluelet.Channel()
        coros = yield from start_all([receiver(a), receiver(a), sender(b)])
        assert not a.closed
        a.close()
        b.close()
        a.close()                   # twice: nothing more
        yield from join_each(coros)
        assert a.closed
        with pytest.raises(bluelet.ChannelClosed):
            yield a.send(2)
        with pytest.raises(bluelet.ChannelClosed):
            yield a.recv()

    bluelet.run(root())
    assert log == ["receiver", "receiver", "sender"]


def test_channel_receiver_killed_after_handover(core):
    ch = bluelet.Channel()
    got = []

    def sender():
        yield bluelet.sleep(0)      # wakes on the root's pass, after it
        yield ch.send("x")          # handed to receiver 0 two passes later

    def root():
        r = yield from start(taker(ch.recv, got, 0))
        yield bluelet.spawn(sender())
        yield bluelet.sleep(0)
        yield bluelet.null()
        yield bluelet.null()
        # Yielded on the handover's pass; handled on the next one at the
        # root's place: before receiver 0 (a later place) runs to take "x".
        yield bluelet.kill(r)
        ch.close()
        # Not lost: delivered to the next recv(), even after close().
        got.append(("late", (yield ch.recv())))
        with pytest.raises(bluelet.ChannelClosed):
            yield ch.recv()

    bluelet.run(root())
    assert got == [("late", "x")]


def test_channel_interrupted_send_and_recv(core):
    ch = bluelet.Channel()

    def root():
        with pytest.raises(bluelet.Timeout):
            yield bluelet.timeout(0.05, ch.send("lost"))
        with pytest.raises(bluelet.Timeout):
            yield bluelet.timeout(0.05, ch.recv())
        return (yield from handed_over(ch, "kept"))

    assert bluelet.run(root(), virtual_time=True) == ["kept"]


# ---------------------------------------------------------------------------
# join_all and first
# ---------------------------------------------------------------------------


def _worker(seconds, value, log=None, fail=False):
    try:
        yield bluelet.sleep(seconds)
        if fail:
            raise Boom(value)
        return value
    finally:
        if log is not None:
            log.append(("finally", value))


def test_join_all_results_in_order(core):
    def root():
        started = _worker(0.2, "started")
        yield bluelet.spawn(started)
        done = _worker(0, "done")
        yield bluelet.spawn(done)
        yield bluelet.join(done)
        queued = _worker(0.1, "queued")
        yield bluelet.spawn(queued)     # spawned, not started yet
        results = yield bluelet.join_all(
            [_worker(0.3, "a"), started, queued, _worker(0.1, "b"), done])
        empty = yield bluelet.join_all([])
        return results, empty

    assert bluelet.run(root(), virtual_time=True) == (
        ["a", "started", "queued", "b", "done"], [])


def test_join_all_failure_cancels_the_rest(core):
    log = []

    def root():
        try:
            yield bluelet.join_all([
                _worker(1, "slow", log), _worker(0.1, "bad", log, fail=True),
                _worker(2, "slower", log)])
        except Boom as exc:
            log.append(("caught", exc.args[0]))
        yield bluelet.sleep(5)      # nothing else happens: they are gone
        return "survived"

    assert bluelet.run(root(), virtual_time=True) == "survived"
    assert log[0] == ("finally", "bad")
    assert sorted(log[1:3]) == [("finally", "slow"), ("finally", "slower")]
    assert log[3:] == [("caught", "bad")]


def test_first_returns_winner_and_cancels_losers_first(core):
    log = []

    def root():
        value = yield bluelet.first([_worker(1, "slow", log), _worker(0.1, "fast", log)])
        log.append(("won", value))
        return value

    assert bluelet.run(root(), virtual_time=True) == "fast"
    assert log == [("finally", "fast"), ("finally", "slow"), ("won", "fast")]


def test_first_failure_is_raised(core):
    log = []

    def root():
        with pytest.raises(Boom):
            yield bluelet.first([_worker(1, "slow", log), _worker(0.1, "bad", log, fail=True)])
        return log

    assert bluelet.run(root(), virtual_time=True) == [("finally", "bad"), ("finally", "slow")]


def test_group_timeout_cancels_everything(core):
    log = []

    def root():
        with pytest.raises(bluelet.Timeout):
            yield bluelet.timeout(0.5, bluelet.first([_worker(1, "a", log), _worker(2, "b", log)]))
        log.append("timed out")
        with pytest.raises(bluelet.Timeout):
            yield bluelet.timeout(
                0.5, bluelet.join_all([_worker(0.1, "c", log), _worker(2, "d", log)]))
        log.append("timed out")

    bluelet.run(root(), virtual_time=True)
    assert log == [("finally", "a"), ("finally", "b"), "timed out",
                   ("finally", "c"), ("finally", "d"), "timed out"]


def test_group_parent_killed_cancels_children(core):
    log = []

    def parent():
        try:
            yield bluelet.join_all([_worker(10, "a", log), _worker(20, "b", log)])
        finally:
            log.append("parent finally")

    def root():
        p = parent()
        yield bluelet.spawn(p)
        yield bluelet.sleep(1)
        yield bluelet.kill(p)
        yield bluelet.sleep(1)
        return "ok"

    assert bluelet.run(root(), virtual_time=True) == "ok"
    # The children end (inside the group's shield) before the kill goes on.
    assert log == [("finally", "a"), ("finally", "b"), "parent finally"]


def test_group_arguments_checked_at_the_call(core):
    with pytest.raises(ValueError):
        bluelet.first([])
    with pytest.raises(TypeError):
        bluelet.join_all([lambda: None])
    with pytest.raises(TypeError):
        bluelet.first([42])


# ---------------------------------------------------------------------------
# Interrupted waits, table-driven: every primitive, killed or timed out
# while parked, leaves nothing behind
# ---------------------------------------------------------------------------


def _parked_cases():
    """name -> setup(); setup() -> (prepare, wait, check), all callables.

    ``prepare()`` (a generator) runs in the root first, ``wait()`` makes the
    event the waiter parks on, and ``check()`` (a generator) runs once the
    waiter was interrupted: it returns True when the primitive behaves as if
    that waiter had never been there.
    """

    def nothing():
        yield bluelet.null()

    def lock():
        lock = bluelet.Lock()

        def check():
            lock.release()
            yield lock.acquire()         # at once: nobody in line
            lock.release()
            return not lock.locked()
        return lock.acquire, lock.acquire, check

    def semaphore():
        sem = bluelet.Semaphore(0)

        def check():
            yield bluelet.null()
            sem.release()                # kept: nobody in line
            return not sem.locked()
        return nothing, sem.acquire, check

    def flag():
        flag = bluelet.Flag()

        def check():
            yield bluelet.null()
            return repr(flag) == "<bluelet.Flag clear, 0 waiting>"
        return nothing, flag.wait, check

    def queue_get():
        q = bluelet.Queue()

        def check():
            yield bluelet.null()
            q.put_nowait("x")            # kept: nobody in line
            return q.qsize() == 1
        return nothing, q.get, check

    def queue_put():
        q = bluelet.Queue(1)

        def check():
            yield bluelet.null()
            return q.get_nowait() == "first" and q.empty()
        return lambda: q.put("first"), lambda: q.put("lost"), check

    def channel_recv():
        ch = bluelet.Channel()

        def check():
            return (yield from handed_over(ch, "x")) == ["x"]
        return nothing, ch.recv, check

    def channel_send():
        ch = bluelet.Channel()

        def check():
            try:
                yield bluelet.timeout(0.5, ch.recv())
            except bluelet.Timeout:
                return True
            return False
        return nothing, lambda: ch.send("lost"), check

    def join_all():
        flag = bluelet.Flag()

        def never():
            yield flag.wait()

        def check():
            yield bluelet.sleep(0.1)     # the guard's turn to cancel them
            return repr(flag) == "<bluelet.Flag clear, 0 waiting>"
        return nothing, lambda: bluelet.join_all([never(), never()]), check

    return {"lock": lock, "semaphore": semaphore, "flag": flag, "queue.get": queue_get,
            "queue.put": queue_put, "channel.recv": channel_recv,
            "channel.send": channel_send, "join_all": join_all}


@pytest.mark.parametrize("how", ["kill", "timeout"])
@pytest.mark.parametrize("name", sorted(_parked_cases()))
def test_interrupted_wait_leaves_nothing_behind(core, name, how):
    setup = _parked_cases()[name]
    log = []

    def root():
        prepare, wait, check = setup()
        yield prepare()

        def waiter():
            try:
                if how == "timeout":
                    yield bluelet.timeout(0.5, wait())
                else:
                    yield wait()
                log.append("woke")
            except bluelet.Timeout:
                log.append("timed out")
            finally:
                log.append("finally")

        w = yield from start(waiter())
        if how == "kill":
            yield bluelet.kill(w)
        yield bluelet.join(w)
        return (yield from check())

    assert bluelet.run(root(), virtual_time=True) is True
    assert log == (["timed out", "finally"] if how == "timeout" else ["finally"])


def test_handed_over_as_the_timeout_runs_out_keeps_it(core):
    # Handed the lock / an item, then its timeout runs out before it
    # resumes: the hand-over stands and the timeout does not fire.
    lock = bluelet.Lock()
    q = bluelet.Queue()
    log = []

    def lock_waiter():
        log.append(("lock", (yield bluelet.timeout(0.05, lock.acquire()))))
        yield bluelet.null()            # no Timeout at the next yield either
        lock.release()

    def queue_waiter():
        log.append(("queue", (yield bluelet.timeout(0.05, q.get()))))
        yield bluelet.null()

    def root():
        yield lock.acquire()
        coros = yield from start_all([lock_waiter(), queue_waiter()])
        time.sleep(0.1)                 # past their deadlines, without yielding
        lock.release()
        q.put_nowait("item")
        yield from join_each(coros)
        return lock.locked()

    assert bluelet.run(root()) is False
    assert log == [("lock", True), ("queue", "item")]


def test_condition_timeout_while_notified_and_queued_for_the_lock(core):
    # The notifier holds the lock past the waiter's deadline, after notifying
    # it: the waiter was queued for the lock when its timeout ran out.
    cond = bluelet.Condition()
    log = []

    def root():
        yield from spawn_and_join([timed_wait(cond, 1.0, log, "waiter"),
                                   holds_later(cond, log, "notifier", notify="first")])
        return (yield from round_trip(cond))

    assert bluelet.run(root(), virtual_time=True) is False
    assert log == [("notifier", "holds"), ("waiter", "timed out", True),
                   ("notifier", "releases")]


def test_killed_putter_after_handover_item_stays_delivered(core):
    q = bluelet.Queue(1)
    ch = bluelet.Channel()

    def putter():
        yield q.put("second")

    def sender():
        yield ch.send("sent")

    def root():
        q.put_nowait("first")
        coros = yield from start_all([putter(), sender()])
        assert q.get_nowait() == "first"    # "second" moves in, its putter is done
        got = yield ch.recv()               # taken from the waiting sender
        for coro in coros:
            yield bluelet.kill(coro)        # before they ran again
        return got, q.get_nowait(), q.empty()

    assert bluelet.run(root()) == ("sent", "second", True)


def test_closing_at_the_end_of_run_hands_nothing_on(core, caplog):
    # run() ends with an error while a holder and waiters are still there:
    # their clean-up (release, set) runs with no loop left, quietly.
    lock = bluelet.Lock()
    flag = bluelet.Flag()
    q = bluelet.Queue()
    log = []

    def root():
        sleeper = hold_and_sleep(lock, on_release=(
            flag.set, lambda: q.put_nowait("late"), lambda: log.append("released")))
        yield from start_all([sleeper, holder(lock, log, "waiter"), flag.wait(), q.get()])
        raise Boom()

    with caplog.at_level("DEBUG", logger="bluelet"):
        with pytest.raises(Boom):
            bluelet.run(root())
    assert log == ["released"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
