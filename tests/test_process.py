"""Child processes: run_process and open_process, once per core.

The children are this Python (``sys.executable -c``), so nothing depends on
what the machine has installed. A child that must outlive a cancel writes
its pid to a file; the test then checks, through /proc, that it is gone and
reaped (not a zombie). Every test runs under ``no_fd_leak`` and a deadline.
"""

import os
import subprocess
import sys
import threading
import time

import pytest

import bluelet
from bluelet.testing import run_test

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(60),
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="checks reaping through Linux's /proc")]

DEADLINE = 30.0
PY = sys.executable


def state(pid):
    """'gone', 'zombie' or 'alive', from /proc."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return "gone"
    return "zombie" if fields[0] == "Z" else "alive"


def pid_from(path, timeout=DEADLINE):
    """The pid a child wrote to ``path`` (waiting for it, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.01)
    raise AssertionError("the child never wrote its pid")


def sleeper(pidfile, ignore_term=False):
    """A child that writes its pid, then sleeps a minute."""
    code = "import os, signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += ("open(%r, 'w').write('%%d\\n' %% os.getpid())\ntime.sleep(60)\n" % str(pidfile))
    return [PY, "-c", code]


def wait_for_file(path):
    """Coroutine: wait (bounded) until ``path`` ends with a newline."""
    for _ in range(3000):
        if path.exists() and path.read_text().endswith("\n"):
            return
        yield bluelet.sleep(0.01)
    raise AssertionError("the child never wrote its pid")


def test_run_process_captures_output_and_status(core):
    def root():
        done = yield bluelet.run_process(
            [PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
            capture_output=True)
        return done

    done = run_test(root(), timeout=DEADLINE)
    assert isinstance(done, subprocess.CompletedProcess)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")


def test_run_process_feeds_input_while_reading_output(core):
    """Megabytes both ways at once: neither side's buffer may fill and stall."""
    data = os.urandom(3 << 20)
    code = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])"

    def root():
        return (yield bluelet.run_process([PY, "-c", code], input=data, capture_output=True))

    assert run_test(root(), timeout=DEADLINE).stdout == data[::-1]


def test_check_raises_called_process_error(core):
    def root():
        with pytest.raises(subprocess.CalledProcessError) as caught:
            yield bluelet.run_process([PY, "-c", "import sys; sys.exit('bad')"],
                                      capture_output=True, check=True)
        return caught.value

    error = run_test(root(), timeout=DEADLINE)
    assert error.returncode == 1 and error.stderr == b"bad\n"


def test_other_coroutines_run_while_a_child_runs(core):
    ticks = []

    def ticker():
        for _ in range(5):
            ticks.append(1)
            yield bluelet.sleep(0.01)

    def root():
        yield bluelet.spawn(ticker())
        yield bluelet.run_process([PY, "-c", "import time; time.sleep(0.3)"])
        return len(ticks)

    assert run_test(root(), timeout=DEADLINE) == 5


def test_a_timeout_terminates_and_reaps_the_child(core, tmp_path):
    pidfile = tmp_path / "pid"

    def root():
        started = time.monotonic()
        with pytest.raises(bluelet.Timeout):
            yield bluelet.run_process(sleeper(pidfile), timeout=1.0)
        return time.monotonic() - started

    took = run_test(root(), timeout=DEADLINE)
    assert state(pid_from(pidfile)) == "gone"
    assert took < 5.0  # SIGTERM ended it; no wait for the grace period


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(core, tmp_path):
    pidfile = tmp_path / "pid"

    def run_it():
        yield bluelet.run_process(sleeper(pidfile, ignore_term=True), grace=0.3)

    def root():
        child = run_it()
        yield bluelet.spawn(child)
        yield wait_for_file(pidfile)
        started = time.monotonic()
        yield bluelet.kill(child)  # waits for the shielded clean-up
        return time.monotonic() - started

    took = run_test(root(), timeout=DEADLINE)
    assert state(pid_from(pidfile)) == "gone"
    assert took >= 0.3


def test_a_child_is_reaped_when_the_loop_closes_its_coroutine(core, tmp_path):
    """The run ends (Ctrl-C) while a run_process waits: the child is killed
    and reaped as the coroutine is closed."""
    pidfile = tmp_path / "pid"

    def run_it():
        yield bluelet.run_process(sleeper(pidfile))

    def root():
        yield bluelet.spawn(run_it())
        yield wait_for_file(pidfile)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bluelet.run(root())
    assert state(pid_from(pidfile)) == "gone"


def test_open_process_streams_are_connections(core):
    code = ("import sys\n"
            "for line in sys.stdin:\n"
            "    sys.stdout.write(line.upper()); sys.stdout.flush()\n"
            "sys.exit(7)\n")

    def root():
        proc = yield bluelet.open_process([PY, "-c", code], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE)
        with proc:
            assert proc.returncode is None and proc.stderr is None
            replies = []
            for word in (b"one\n", b"two\n"):
                yield proc.stdin.sendall(word)
                replies.append((yield proc.stdout.readline(timeout=DEADLINE)))
            proc.stdin.close()  # end of input: the child's loop ends
            status = yield proc.wait(timeout=DEADLINE)
            rest = yield proc.stdout.recv(10)
            return replies, status, proc.returncode, rest

    assert run_test(root(), timeout=DEADLINE) == ([b"ONE\n", b"TWO\n"], 7, 7, b"")


def test_wait_needs_no_thread(core, tmp_path):
    """With the only to_thread thread busy, waiting for a child still works."""
    release = threading.Event()

    def root():
        previous = bluelet.set_thread_limit(1)
        try:
            busy = bluelet.to_thread(release.wait, DEADLINE)
            yield bluelet.spawn(busy)
            done = yield bluelet.run_process([PY, "-c", "pass"], timeout=DEADLINE / 2)
            release.set()
            yield bluelet.join(busy)
            return done.returncode
        finally:
            release.set()
            bluelet.set_thread_limit(previous)

    assert run_test(root(), timeout=DEADLINE) == 0


def test_a_wait_timeout_leaves_the_child_running(core, tmp_path):
    pidfile = tmp_path / "pid"

    def root():
        proc = yield bluelet.open_process(sleeper(pidfile))
        with proc:
            with pytest.raises(bluelet.Timeout):
                yield proc.wait(timeout=0.05)
            yield wait_for_file(pidfile)
            assert state(proc.pid) == "alive"
            proc.terminate()
            return (yield proc.wait(timeout=DEADLINE))

    assert run_test(root(), timeout=DEADLINE) == -15
    assert state(pid_from(pidfile)) == "gone"


def test_a_child_that_cannot_start_raises_at_the_yield(core, tmp_path):
    def root():
        with pytest.raises(FileNotFoundError):
            yield bluelet.run_process([str(tmp_path / "no-such-program")], capture_output=True,
                                      input=b"x")
        return "ok"

    assert run_test(root(), timeout=DEADLINE) == "ok"


def test_misuse_raises_at_the_call(core):
    with pytest.raises(TypeError, match="bytes"):
        bluelet.run_process([PY], text=True)
    with pytest.raises(TypeError):
        bluelet.run_process([PY], input="text")
    with pytest.raises(ValueError, match="capture_output"):
        bluelet.run_process([PY], capture_output=True, stdout=subprocess.PIPE)
    with pytest.raises(ValueError, match="stdin and input"):
        bluelet.run_process([PY], input=b"", stdin=subprocess.DEVNULL)
    with pytest.raises(ValueError, match="grace"):
        bluelet.run_process([PY], grace=-1)
    with pytest.raises(TypeError, match="bytes"):
        bluelet.open_process([PY], encoding="utf-8")
