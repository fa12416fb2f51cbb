"""One loop per thread: several loops running at once in one process, each
in its own thread, handing data across with Completion -- on both cores, and
with the GIL off on a free-threaded interpreter."""

import queue
import sys
import sysconfig
import threading

import pytest

import bluelet

pytestmark = pytest.mark.timeout(60)

THREADS = 8
ITEMS = 300


def test_eight_loops_hand_items_around_a_ring_through_completions(core):
    # Thread i's loop receives items for it from thread i-1: the sender
    # takes a Completion that thread i's loop made (from a thread-safe
    # queue) and delivers an item into it. Every item must arrive once.
    slots = [queue.Queue() for _ in range(THREADS)]
    received = [[] for _ in range(THREADS)]
    failures = []

    def receiver(i):
        for _ in range(ITEMS):
            completion = bluelet.Completion()
            slots[i].put(completion)
            received[i].append((yield completion))

    def sender(i):
        target = slots[(i + 1) % THREADS]
        for n in range(ITEMS):
            completion = yield bluelet.to_thread(target.get, True, 30)
            completion.set_result((i, n))
            if n % 16 == 0:
                yield bluelet.null()

    def main(i):
        yield bluelet.join_all([receiver(i), sender(i)])

    def thread(i):
        try:
            bluelet.run(main(i))
        except BaseException as error:  # reported by the test, in its thread
            failures.append((i, error))

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    for i, items in enumerate(received):
        assert items == [((i - 1) % THREADS, n) for n in range(ITEMS)]


def test_a_queue_shared_by_two_threads_loops_is_refused_where_it_is_woken(core):
    flag = bluelet.Flag()
    waiting = threading.Event()
    outcome = []

    def waiter():
        waiting.set()
        outcome.append((yield flag.wait()))

    def own_loop():
        yield bluelet.spawn(waiter())
        # Woken by its own loop at last (after the other thread's refusal),
        # it has kept its place.
        yield bluelet.to_thread(refused.wait, 30)
        flag.set()

    refused = threading.Event()

    def other_loop():
        yield bluelet.to_thread(waiting.wait, 30)
        with pytest.raises(RuntimeError, match="another thread's loop.*Completion"):
            flag.set()
        refused.set()

    thread = threading.Thread(target=lambda: bluelet.run(own_loop()))
    thread.start()
    try:
        bluelet.run(other_loop())
    finally:
        refused.set()
        thread.join(30)
    assert outcome == [True]


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="a GIL build: the GIL is on whatever bluelet declares")
def test_importing_bluelet_leaves_the_gil_off():
    # The compiled core declares itself safe without the GIL; an undeclared
    # extension would turn it back on at import.
    assert not sys._is_gil_enabled()
