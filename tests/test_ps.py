"""python -m bluelet ps PID: another process's coroutines, asked for by signal.

The target processes are started here (``Running``, bounded by timeouts) and
killed at the end of each test.
"""

import subprocess
import sys
import textwrap

import pytest

from _helpers import WAIT, Running, core_env
from conftest import CORES

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="ps checks the target's signal mask in Linux's /proc")]

TARGET = textwrap.dedent("""
    import bluelet

    def napper():
        yield bluelet.sleep(60)

    def main():
        yield bluelet.spawn(napper())
        yield bluelet.null()
        print("ready", flush=True)
        yield bluelet.sleep(60)

    bluelet.dump_on()
    bluelet.run(main())
""")


def ps(pid, tmp_path, *more):
    return subprocess.run([sys.executable, "-m", "bluelet", "ps", str(pid), *more],
                          env=core_env("python"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=WAIT * 2)


@pytest.mark.parametrize("core", CORES)
def test_ps_shows_the_coroutines_of_another_process(core, tmp_path):
    target = Running([sys.executable, "-c", TARGET], core_env(core), tmp_path)
    try:
        target.expect("^ready$")
        for _ in range(2):  # asked twice: each answer is fresh, nothing is left behind
            done = ps(target.proc.pid, tmp_path)
            assert done.returncode == 0, done.stderr
            assert "bluelet: 2 live coroutines (%s core)" % core in done.stdout
            assert "Coroutine napper" in done.stdout and "sleeping until" in done.stdout
        # Taken by ps, not printed on the target's stderr.
        assert "live coroutines" not in target.errors.read_text()
        assert target.proc.poll() is None
    finally:
        target.close()


def test_ps_refuses_a_process_that_would_die_of_the_signal(tmp_path):
    target = Running([sys.executable, "-c", "import time; print('ready', flush=True); "
                      "time.sleep(60)"], core_env("python"), tmp_path)
    try:
        target.expect("^ready$")
        done = ps(target.proc.pid, tmp_path)
        assert done.returncode == 1
        assert "does not catch SIGUSR1" in done.stderr and "dump_on()" in done.stderr
        assert target.proc.poll() is None  # not signalled
    finally:
        target.close()


def test_ps_of_no_such_process(tmp_path):
    done = ps(2 ** 22 + 7, tmp_path)  # above Linux's largest pid
    assert done.returncode == 1 and "No such process" in done.stderr


def test_ps_needs_a_known_signal(tmp_path):
    done = ps(1, tmp_path, "--signal", "SIGNOPE")
    assert done.returncode == 2 and "no such signal" in done.stderr
