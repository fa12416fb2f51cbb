"""bench/load.py without the load: its command line, and its verdict on memory.

The benchmark itself takes minutes (``--quick`` still half a minute), so
these tests run only what needs no server, each in a fresh interpreter with a
bounded wait: bench/ is not a package, and its scripts import each other by
plain module name.
"""

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
LOAD = os.path.join(BENCH, "load.py")

pytestmark = pytest.mark.timeout(60)

# Prints memory_growth() of each RSS series (a list of [cycles, KiB] pairs) as JSON.
VERDICTS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import load
print(json.dumps([load.memory_growth([{"cycles": c, "rss_kib": k} for c, k in series])
                  for series in json.loads(sys.argv[2])]))
"""


def python(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=30)


def test_help_describes_every_option():
    done = python(LOAD, "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--hold", "--idle", "--cycles", "--every", "--quick", "--tree", "--md", "--json"):
        assert option in done.stdout


def test_an_unknown_core_is_refused_before_anything_runs():
    done = python(LOAD, "--cores", "cython,pypy")
    assert done.returncode == 2
    assert "unknown core(s) pypy" in done.stderr


def test_memory_verdict_separates_warm_up_noise_and_leaks():
    warm_then_flat = [[c * 10000, 27000 + (40 if c else 0) + (4 if c % 2 else 0)]
                      for c in range(11)]
    leak = [[c * 10000, 27000 + 200 * c] for c in range(11)]  # 20 bytes per cycle
    too_short = [[0, 27000], [10000, 27100]]  # no checkpoint after the warm-up
    done = python("-c", VERDICTS, BENCH, json.dumps([warm_then_flat, leak, too_short]))
    assert done.returncode == 0, done.stderr
    flat, leaking, short = json.loads(done.stdout)

    assert flat["warmup_cycles"] == 20000
    assert flat["warmup_growth_kib"] == 40
    assert flat["steady_growth_kib"] == 0
    assert flat["within_noise"] is True

    assert leaking["steady_growth_kib"] == 1600
    assert leaking["steady_bytes_per_cycle"] == 1024 * 1600 / 80000
    assert leaking["within_noise"] is False

    assert short["within_noise"] is None
