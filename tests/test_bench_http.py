"""bench/http_files.py, briefly, on the pure core: its servers answer its load
generator, and the figures it reports add up.

The full benchmark takes a minute and compares peers that the test
environment may lack, so this runs one short round of bluelet's own server,
from the bluelet these tests import, in a fresh interpreter with a bounded
wait.
"""

import json
import os
import subprocess
import sys

import pytest

import bluelet

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
HTTP = os.path.join(BENCH, "http_files.py")
TREE = os.path.dirname(os.path.dirname(os.path.abspath(bluelet.__file__)))

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="the load generator uses epoll (Linux)")]


def test_one_round_serves_both_files_and_reports_consistent_figures(tmp_path):
    out = tmp_path / "http.json"
    done = subprocess.run([sys.executable, HTTP, "--quick", "--servers", "bluelet-python",
                           "--seconds", "0.3", "--warmup", "0.1", "--tree", TREE,
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    (run,) = doc["rounds"]
    for name, size in (("1k", 1024), ("1m", 1024 * 1024)):
        got = run["bluelet-python"][name]
        assert got["errors"] == 0, got["error"]
        assert got["requests"] > 0
        # Every counted response was read whole: bytes and requests agree to
        # within the responses in flight when counting started and stopped.
        in_flight = got["conns"] * size
        assert abs(got["body_bytes"] - got["requests"] * size) <= in_flight
    assert "| bluelet (python) |" in done.stdout
    # The goals name peers that did not run here: not measured, not failed.
    assert all(goal["met"] is None for goal in doc["goals"])
