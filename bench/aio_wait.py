"""The round trip of one ``bluelet.aio.wait``: a bluelet coroutine hands an
asyncio coroutine to the host loop and resumes with its result.

Run from the repository root::

    python bench/aio_wait.py            # 5 rounds, a few seconds
    python bench/aio_wait.py --quick

Each round runs, in a fresh process per core and host (asyncio's loop,
uvloop), N times ``yield bluelet.aio.wait(answer())`` with ``async def
answer(): return 1`` from a bluelet program under ``await
bluelet.aio.run()``, and, for reference, N times ``await
asyncio.ensure_future(answer())`` from an asyncio coroutine on the same
loop: the same hop through a Task, without crossing into bluelet. The
figures are microseconds per round trip (wall clock, medians over rounds).
``--tree DIR`` imports bluelet from DIR.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.append(HERE)
from _common import markdown_rows, median, say  # noqa: E402

WORKER = r"""
import asyncio, json, sys, time
import bluelet

N = int(sys.argv[2])

async def answer():
    return 1

def bluelet_side():
    t0 = time.perf_counter()
    for _ in range(N):
        yield bluelet.aio.wait(answer())
    return time.perf_counter() - t0

async def asyncio_side():
    t0 = time.perf_counter()
    for _ in range(N):
        await asyncio.ensure_future(answer())
    return time.perf_counter() - t0

async def main():
    return {"core": bluelet.IMPLEMENTATION,
            "aio_wait_us": await bluelet.aio.run(bluelet_side()) / N * 1e6,
            "task_us": await asyncio_side() / N * 1e6}

if sys.argv[1] == "uvloop":
    import uvloop
    print(json.dumps(uvloop.run(main())))
else:
    print(json.dumps(asyncio.run(main())))
"""


def measure(core, host, n, tree):
    env = dict(os.environ)
    env.pop("BLUELET_PURE_PYTHON", None)
    if core == "python":
        env["BLUELET_PURE_PYTHON"] = "1"
    else:
        env["BLUELET_REQUIRE_EXTENSIONS"] = "1"
    if tree:
        env["PYTHONPATH"] = tree
    done = subprocess.run([sys.executable, "-c", WORKER, host, str(n)], env=env, cwd="/",
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError("%s/%s: %s" % (core, host, done.stderr.strip().splitlines()[-1:]))
    return json.loads(done.stdout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="1 round of 2,000")
    p.add_argument("--tree", help="directory to import bluelet from")
    args = p.parse_args(argv)
    rounds, n = (1, 2000) if args.quick else (args.rounds, 20000)
    rows = []
    for core in ("cython", "python"):
        for host in ("asyncio", "uvloop"):
            runs = []
            for r in range(rounds):
                runs.append(measure(core, host, n, args.tree))
                say("  %s on %s, round %d: %.2f µs" % (core, host, r + 1, runs[-1]["aio_wait_us"]))
            rows.append([core, host, "%.2f" % median([x["aio_wait_us"] for x in runs]),
                         "%.2f" % median([x["task_us"] for x in runs])])
    print("## One `aio.wait` round trip (%d rounds of %d, medians)\n" % (rounds, n))
    print("| bluelet core | host loop | `yield aio.wait(answer())` µs | "
          "`await ensure_future(answer())` µs |")
    print("| --- | --- | ---: | ---: |")
    print(markdown_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
