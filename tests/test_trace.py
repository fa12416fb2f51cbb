"""run(trace=...): the timeline file, and drawing it; once per core.

The trace is read back as Perfetto would read it (Chrome's trace-event
JSON) and checked against what the program did: its coroutines, their
steps and waits, the spawn and wake-up arrows, the polls.
"""

import json
import subprocess
import sys

import pytest

import bluelet
from _helpers import core_env

pytestmark = pytest.mark.timeout(60)


def program():
    def worker(queue, n):
        yield bluelet.sleep(0.01 * n)
        yield queue.put(n)

    def root():
        queue = bluelet.Queue()
        kids = [worker(queue, n) for n in range(3)]
        for kid in kids:
            yield bluelet.spawn(kid)
        got = []
        for _ in kids:
            got.append((yield queue.get()))
        for kid in kids:
            yield bluelet.join(kid)
        return sorted(got)

    return root()


def traced(tmp_path):
    path = tmp_path / "trace.json"
    assert bluelet.run(program(), trace=str(path)) == [0, 1, 2]
    return path, json.loads(path.read_text())


def test_the_trace_tells_what_ran(core, tmp_path):
    _, trace = traced(tmp_path)
    events = trace["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names[0] == "bluelet loop"
    assert sorted(n.split(".")[-1] for t, n in names.items() if t) == [
        "root #1", "worker #2", "worker #3", "worker #4"]
    steps = [e for e in events if e.get("cat") == "step"]
    assert {e["tid"] for e in steps} == {1, 2, 3, 4}
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in steps)
    # Each worker slept, then ended: a wait slice named by its sleep.
    waits = [e for e in events if e.get("cat") == "wait"]
    assert {e["tid"] for e in waits if e["name"].startswith("sleeping until")} == {2, 3, 4}
    # Arrows: root spawned each worker; the workers' puts woke root.
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    arrows = {(starts[i]["tid"], ends[i]["tid"], starts[i]["name"]) for i in starts if i in ends}
    assert {(1, 2, "spawn"), (1, 3, "spawn"), (1, 4, "spawn")} <= arrows
    assert any(src in (2, 3, 4) and dst == 1 and name == "wake" for src, dst, name in arrows)
    polls = [e for e in events if e.get("cat") == "poll"]
    assert polls and all(e["tid"] == 0 and e["name"].startswith("poll: ") for e in polls)
    assert trace["otherData"] == {"producer": "bluelet", "truncated": False}


def test_a_bad_trace_path_fails_at_the_call(core, tmp_path):
    with pytest.raises(OSError):
        bluelet.run(program(), trace=str(tmp_path / "no-such-dir" / "t.json"))
    with pytest.raises(TypeError, match="file path"):
        bluelet.run(program(), trace=3)


def test_the_command_line_summarises_and_draws(tmp_path):
    pytest.importorskip("matplotlib", reason="drawing needs matplotlib, in the tests' extra "
                        "(not where the extra is not installed, as in CI's 3.13t and ASan runs)")
    path, _ = traced(tmp_path)
    png = tmp_path / "timeline.png"
    done = subprocess.run([sys.executable, "-m", "bluelet", "trace", str(path), "--png", str(png)],
                          env=core_env("python"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "4 coroutines" in done.stdout and "drew" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
