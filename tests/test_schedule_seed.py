"""``run(schedule_seed=N)``: ready coroutines in an order shuffled by seed N,
the same on both cores, so that a seed replays its interleaving exactly.
(The differential test also runs its random programs under drawn seeds.)"""

import pytest

import bluelet
from bluelet import _impl
from conftest import CORES


def workers(log, names="abcd", steps=3):
    def worker(name):
        for i in range(steps):
            log.append(name + str(i))
            yield bluelet.null()

    def main():
        for name in names:
            yield bluelet.spawn(worker(name))

    return main()


def trace(seed):
    log = []
    bluelet.run(workers(log), schedule_seed=seed)
    return " ".join(log)


def test_without_a_seed_coroutines_run_in_the_order_they_became_ready(core):
    assert trace(None) == "a0 a1 b0 a2 b1 c0 b2 c1 d0 c2 d1 d2"


def test_a_seed_shuffles_and_replays(core):
    orders = {seed: trace(seed) for seed in range(20)}
    assert len(set(orders.values())) > 5          # different seeds, different interleavings
    assert all(trace(seed) == order for seed, order in orders.items())  # replayed
    for order in orders.values():                 # each coroutine's own steps stay in order
        steps = order.split()
        for name in "abcd":
            mine = [s for s in steps if s[0] == name]
            assert mine == sorted(mine)


@pytest.mark.skipif(len(CORES) < 2, reason="needs both cores")
def test_a_seed_gives_the_same_interleaving_on_both_cores():
    seeds = [0, 1, 7, 2 ** 63, 2 ** 64 - 1, -5, 10 ** 30]
    traces = {}
    for name in ("python", "cython"):
        previous = _impl.use(name)
        try:
            traces[name] = [trace(seed) for seed in seeds]
        finally:
            _impl.use(previous)
    assert traces["python"] == traces["cython"]


@pytest.mark.parametrize("bad", [1.5, "7", True, [1]])
def test_a_seed_that_is_no_int_is_a_type_error(core, bad):
    with pytest.raises(TypeError, match="schedule_seed"):
        bluelet.run(workers([]), schedule_seed=bad)
