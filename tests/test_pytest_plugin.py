"""The pytest plugin (bluelet/pytest_plugin.py), run as a user runs it: a
test file written to a temporary directory and pytest run on it in a
subprocess, with the plugin loaded (``-p``, as the installed entry point
loads it) on the core under test."""

import re
import subprocess
import sys
import textwrap

import pytest

from _helpers import core_env

pytestmark = pytest.mark.timeout(120)

HEADER = """
import bluelet
import pytest
from bluelet.testing import wait_all_tasks_blocked
"""


def run_pytest(core, tmp_path, source, *args, ini=None):
    """pytest's exit status and output for test file ``source``."""
    (tmp_path / "test_user.py").write_text(HEADER + textwrap.dedent(source))
    if ini is not None:
        (tmp_path / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:bluelet",
            "-p", "bluelet.pytest_plugin", "-q", "-rA", str(tmp_path / "test_user.py"), *args]
    done = subprocess.run(argv, env=core_env(core), cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=100)
    return done.returncode, done.stdout + done.stderr


def outcomes(output):
    """{test name: PASSED | FAILED | ...} from -rA's short summary."""
    return dict((name, state) for state, name in
                re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED) \S+::(\w+(?:\[[^\]]*\])?)",
                           output, re.M))


def test_marked_generator_and_async_tests_run_under_bluelet(core, tmp_path):
    status, out = run_pytest(core, tmp_path, """
        @pytest.mark.bluelet
        def test_generator():
            yield bluelet.sleep(0.001)
            assert (yield bluelet.call(child())) == 2

        @pytest.mark.bluelet(virtual_time=True)
        async def test_native():
            await bluelet.sleep(3600)

        @pytest.mark.bluelet
        async def test_fails():
            await bluelet.null()
            assert 1 == 2

        def child():
            yield bluelet.null()
            return 2
    """)
    assert outcomes(out) == {"test_generator": "PASSED", "test_native": "PASSED",
                             "test_fails": "FAILED"}, out
    assert "assert 1 == 2" in out
    assert status == 1


def test_async_fixtures_run_inside_the_tests_run(core, tmp_path):
    status, out = run_pytest(core, tmp_path, """
        log = []

        async def shout(conn):
            try:
                line = await conn.readline()
                await conn.sendall(line.upper())
            finally:
                conn.close()

        @pytest.fixture
        async def server():
            listener = bluelet.Listener("127.0.0.1", 0)
            srv = bluelet.serve(listener, shout)
            await bluelet.spawn(srv)          # lives through the test
            log.append("server up")
            yield listener.port
            await bluelet.kill(srv)
            listener.close()
            log.append("server down")

        @pytest.fixture
        async def greeting(server):
            return b"hi %d\\n" % (server % 10)

        @pytest.mark.bluelet
        async def test_talks_to_the_fixture_server(server, greeting):
            conn = await bluelet.connect("127.0.0.1", server)
            try:
                await conn.sendall(greeting)
                assert await conn.readline() == greeting.upper()
            finally:
                conn.close()
            assert log == ["server up"]

        def test_cleaned_up():
            assert log == ["server up", "server down"]
    """)
    assert status == 0, out
    assert outcomes(out) == {"test_talks_to_the_fixture_server": "PASSED",
                             "test_cleaned_up": "PASSED"}


def test_an_async_fixture_must_be_function_scoped(core, tmp_path):
    status, out = run_pytest(core, tmp_path, """
        @pytest.fixture(scope="module")
        async def shared():
            return 1

        @pytest.mark.bluelet
        async def test_it(shared):
            pass
    """)
    assert status != 0
    assert "must be function-scoped" in out


def test_auto_mode_runs_every_coroutine_test(core, tmp_path):
    status, out = run_pytest(core, tmp_path, """
        def test_generator():
            yield bluelet.null()

        async def test_native():
            await bluelet.null()
    """, ini="bluelet_mode = auto\n")
    assert status == 0, out
    assert outcomes(out) == {"test_generator": "PASSED", "test_native": "PASSED"}


def test_the_clock_fixture_and_wait_all_tasks_blocked(core, tmp_path):
    status, out = run_pytest(core, tmp_path, """
        @pytest.mark.bluelet(timeout=5)
        async def test_clock(bluelet_clock):
            start = bluelet_clock.now()
            await bluelet.sleep(86400)                    # autojump: no real time
            assert bluelet_clock.now() - start >= 86400
            woke = []

            async def sleeper():
                await bluelet.sleep(10)
                woke.append(bluelet_clock.now())

            await bluelet.spawn(sleeper())
            await wait_all_tasks_blocked()                # the sleeper is asleep
            assert woke == []
            bluelet_clock.jump(10)
            await wait_all_tasks_blocked()
            assert len(woke) == 1
    """)
    assert status == 0, out


def test_seeds_find_an_order_dependence_and_a_seed_replays_it(core, tmp_path):
    source = """
        @pytest.mark.bluelet(virtual_time=True)
        def test_order():
            log = []

            def worker(name):
                yield bluelet.sleep(0.001)   # both ready after the same poll
                log.append(name)

            for name in "ab":
                yield bluelet.spawn(worker(name))
            yield bluelet.sleep(0.01)
            assert log == ["a", "b"]
    """
    status, out = run_pytest(core, tmp_path, source)
    assert status == 0, out                     # the order they became ready in
    status, out = run_pytest(core, tmp_path, source, "--bluelet-seeds=20")
    assert status == 1, out
    seed = int(re.search(r"failed under schedule_seed=(\d+) \(replay it: --bluelet-seed=\1\)",
                         out).group(1))
    status, out = run_pytest(core, tmp_path, source, "--bluelet-seed=%d" % seed)
    assert status == 1 and "schedule_seed=%d" % seed in out, out


def test_both_cores(core, tmp_path):
    status, out = run_pytest(core, tmp_path, """
        import os

        @pytest.mark.bluelet
        def test_core():
            yield bluelet.null()
            with open(os.path.join(os.path.dirname(__file__), "cores.txt"), "a") as f:
                f.write(bluelet.IMPLEMENTATION + "\\n")
    """, "--bluelet-core=both")
    assert status == 0, out
    assert sorted((tmp_path / "cores.txt").read_text().split()) == ["cython", "python"]
