"""Throughput of ``bluelet.Queue``: 10,000 coroutines, producers and consumers.

Run from the repository root (no arguments needed)::

    python bench/queues.py               # 3 rounds per core, a few seconds
    python bench/queues.py --rounds 5 --items 50

What is measured: P producers and P consumers (P = 5,000 by default, so
10,000 coroutines) share one Queue. The consumers are spawned first, so every
one of them is waiting when the producers start; each producer puts K items
(``--items``, default 20) and each consumer gets K, so P * K items pass
through the queue. The figure is items per second over the whole ``run()``
(spawning included), checked: every item must arrive exactly once. Two
shapes: a bounded queue (maxsize 100: both sides wait, every item is a hand
over or a wake-up) and an unbounded one (maxsize 0: only the consumers wait).

Each round runs in a fresh subprocess (``python bench/queues.py --worker
CORE``) with ``BLUELET_PURE_PYTHON=1`` for the pure core and
``BLUELET_REQUIRE_EXTENSIONS=1`` for the compiled one, so a missing build
fails instead of measuring pure Python twice. The rounds of the two cores
are interleaved; each figure is the median of R rounds (``--rounds``,
default 3). The table is Markdown, on stdout.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CORES = ("cython", "python")
SHAPES = ((100, "maxsize 100"), (0, "unbounded"))


def parse_args(argv):
    p = argparse.ArgumentParser(description="Queue throughput, 10,000 coroutines, both cores.")
    p.add_argument("--rounds", type=int, default=3, help="rounds per figure (median; default 3)")
    p.add_argument("--producers", type=int, default=5000,
                   help="producers, and as many consumers (default 5000)")
    p.add_argument("--items", type=int, default=20, help="items per producer (default 20)")
    p.add_argument("--worker", choices=CORES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.producers < 1 or args.items < 1:
        p.error("--rounds, --producers and --items must be >= 1")
    return args


# -- one round, in the worker process ----------------------------------------

def one_round(maxsize, producers, items):
    """Run the workload once; return (items passed, seconds)."""
    import bluelet

    q = bluelet.Queue(maxsize)
    sums = []

    def producer(p):
        for i in range(items):
            yield q.put(p * items + i)

    def consumer():
        total = 0
        for _ in range(items):
            total += yield q.get()
        sums.append(total)

    def root():
        consumers = [consumer() for _ in range(producers)]
        for coro in consumers:
            yield bluelet.spawn(coro)
        for p in range(producers):
            yield bluelet.spawn(producer(p))
        for coro in consumers:
            yield bluelet.join(coro)

    start = time.perf_counter()
    bluelet.run(root())
    elapsed = time.perf_counter() - start
    count = producers * items
    if len(sums) != producers or sum(sums) != count * (count - 1) // 2:
        raise AssertionError("items were lost or duplicated")
    return count, elapsed


def worker(args):
    import bluelet

    if bluelet.IMPLEMENTATION != args.worker:
        raise SystemExit("asked for the %s core, got %s" % (args.worker, bluelet.IMPLEMENTATION))
    out = {}
    for maxsize, _ in SHAPES:
        count, seconds = one_round(maxsize, args.producers, args.items)
        out[str(maxsize)] = count / seconds
    print(json.dumps(out))


# -- the driver ---------------------------------------------------------------

def run_worker(core, args):
    env = dict(os.environ)
    env.pop("BLUELET_PURE_PYTHON", None)
    env.pop("BLUELET_REQUIRE_EXTENSIONS", None)
    env["BLUELET_PURE_PYTHON" if core == "python" else "BLUELET_REQUIRE_EXTENSIONS"] = "1"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, os.path.abspath(__file__), "--worker", core,
               "--producers", str(args.producers), "--items", str(args.items)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit("the %s worker failed:\n%s" % (core, done.stderr))
    return json.loads(done.stdout)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    rounds = {core: [] for core in CORES}
    for _ in range(args.rounds):
        for core in CORES:
            rounds[core].append(run_worker(core, args))
    print("## Queue throughput: %s producers + %s consumers, %s items each; "
          "median of %d rounds" % (format(args.producers, ","), format(args.producers, ","),
                                   format(args.items, ","), args.rounds))
    print()
    print("Python %s on %s %s." % (
        platform.python_version(), platform.system(), platform.machine()))
    print()
    print("| core | " + " | ".join("%s (items/s)" % label for _, label in SHAPES) + " |")
    print("|---|" + "---:|" * len(SHAPES))
    for core in CORES:
        cells = [statistics.median(r[str(maxsize)] for r in rounds[core]) for maxsize, _ in SHAPES]
        print("| %s | %s |" % (core, " | ".join(format(round(c), ",") for c in cells)))


if __name__ == "__main__":
    main()
