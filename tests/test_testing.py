"""bluelet.testing: coroutine tests with a real-time deadline and a virtual clock."""

import os
import subprocess
import sys
import time

import pytest

import bluelet
from _helpers import core_env
from bluelet import _impl
from bluelet.testing import DeadlineExceeded, coroutine_test, run_test


# ---------------------------------------------------------------------------
# The decorator, used the way test suites use it
# ---------------------------------------------------------------------------

@coroutine_test()
def test_decorated_coroutine_test_runs_with_its_fixtures(core, tmp_path):
    # Both fixtures arrive: pytest sees the generator function's signature.
    assert _impl.IMPLEMENTATION == core
    assert tmp_path.is_dir()
    value = yield bluelet.ValueEvent(42)
    assert value == 42


@coroutine_test
def test_decorator_without_arguments(core):
    yield bluelet.sleep(0.01)


@coroutine_test(virtual_time=True, timeout=5.0)
def test_virtual_time_wakes_sleepers_in_deadline_order(core):
    trace = []

    def ticker(name, step, count):
        for _ in range(count):
            yield bluelet.sleep(step)
            trace.append(name)

    a, b = ticker("a", 1.0, 3), ticker("b", 1.4, 2)
    yield bluelet.spawn(a)
    yield bluelet.spawn(b)
    yield bluelet.join(a)
    yield bluelet.join(b)
    # Virtual deadlines 1.0, 1.4, 2.0, 2.8, 3.0.
    assert trace == ["a", "b", "a", "b", "a"]


# ---------------------------------------------------------------------------
# Passing and failing
# ---------------------------------------------------------------------------

def test_run_test_returns_the_result(core):
    def body():
        yield bluelet.null()
        return "done"

    assert run_test(body()) == "done"


def test_decorated_function_returns_the_result(core):
    @coroutine_test(timeout=2.0)
    def body(x, y=0):
        yield bluelet.null()
        return x + y

    assert body(1, y=2) == 3


def test_a_failing_assertion_fails_the_test(core):
    @coroutine_test()
    def failing():
        yield bluelet.null()
        assert 1 + 1 == 3, "arithmetic is broken"

    with pytest.raises(AssertionError, match="arithmetic is broken"):
        failing()


def test_an_exception_reaches_the_caller_unchanged(core):
    error = KeyError("missing")

    def body():
        yield bluelet.sleep(0.01)
        raise error

    with pytest.raises(KeyError) as info:
        run_test(body())
    assert info.value is error


def test_a_failing_spawned_coroutine_fails_the_test(core):
    def child():
        yield bluelet.null()
        raise ValueError("child failed")

    def body():
        yield bluelet.spawn(child())
        yield bluelet.sleep(5)

    with pytest.raises(ValueError, match="child failed"):
        run_test(body(), timeout=2.0)


def test_coroutines_left_running_are_waited_for(core):
    # As with run(): the program ends when every coroutine has.
    finished = []

    def straggler():
        yield bluelet.sleep(0.05)
        finished.append("straggler")

    def body():
        yield bluelet.spawn(straggler())
        return "body"

    assert run_test(body(), timeout=2.0) == "body"
    assert finished == ["straggler"]


def test_a_straggler_that_fails_fails_the_test(core):
    def straggler():
        yield bluelet.sleep(0.01)
        raise ValueError("late failure")

    def body():
        yield bluelet.spawn(straggler())

    with pytest.raises(ValueError, match="late failure"):
        run_test(body(), timeout=2.0)


# ---------------------------------------------------------------------------
# The deadline
# ---------------------------------------------------------------------------

def _stuck_forever(log):
    try:
        yield _impl.WaitQueue().wait()  # testing: stuck here
    finally:
        log.append("test finally")


def test_deadline_fails_the_test_and_closes_every_coroutine(core):
    log = []

    def helper():
        try:
            yield bluelet.sleep(60)
        finally:
            log.append("helper finally")

    def body():
        yield bluelet.spawn(helper())
        yield _stuck_forever(log)

    start = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        run_test(body(), timeout=0.2)
    assert time.monotonic() - start >= 0.2
    assert sorted(log) == ["helper finally", "test finally"]
    message = str(info.value)
    assert message.startswith("%s did not finish within 0.2 s of real time" % body.__qualname__)
    # The message shows where each coroutine was, but not the harness's own.
    with open(__file__) as source:
        line = next(number for number, text in enumerate(source, 1)
                    if text.rstrip().endswith("# testing: stuck here"))
    assert 'File "%s", line %d, in _stuck_forever' % (__file__, line) in message
    assert "%s (0x" % helper.__qualname__ in message
    assert "sleeping until" in message
    assert "_supervise" not in message
    assert "_watchdog" not in message


def test_deadline_is_an_assertion_error(core):
    @coroutine_test(timeout=0.1)
    def hangs():
        yield _impl.WaitQueue().wait()

    with pytest.raises(AssertionError, match="hangs did not finish within 0.1 s"):
        hangs()


def test_deadline_is_real_time_even_under_virtual_time(core):
    # The virtual clock races through the sleeps; the deadline still comes
    # after 0.2 s of real time.
    ticks = []

    def forever():
        while True:
            yield bluelet.sleep(3600)
            ticks.append(1)

    with pytest.raises(DeadlineExceeded):
        run_test(forever(), timeout=0.2, virtual_time=True)
    assert len(ticks) > 10


def test_deadline_is_real_time_while_waiting_for_io_under_virtual_time(core):
    # A core timeout would be virtual here and fire at once.
    r, w = os.pipe()
    try:
        def reader():
            yield bluelet.wait_readable(r)

        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            run_test(reader(), timeout=0.2, virtual_time=True)
        assert time.monotonic() - start >= 0.2
    finally:
        os.close(r)
        os.close(w)


def test_no_deadline_with_timeout_none(core):
    def body():
        yield bluelet.sleep(0.01)
        return "no deadline"

    assert run_test(body(), timeout=None) == "no deadline"


# ---------------------------------------------------------------------------
# Virtual time
# ---------------------------------------------------------------------------

def test_sleep_heavy_test_takes_no_real_time_under_virtual_time(core):
    @coroutine_test(virtual_time=True)
    def sleepy():
        for _ in range(1000):
            yield bluelet.sleep(60)  # 1000 minutes of virtual sleep

    start = time.monotonic()
    sleepy()
    assert time.monotonic() - start < 1.0


# ---------------------------------------------------------------------------
# Misuse, and no pytest at run time
# ---------------------------------------------------------------------------

def test_decorator_rejects_a_plain_function(core):
    with pytest.raises(TypeError, match="generator function"):
        @coroutine_test
        def not_a_coroutine():
            return None


def test_run_test_rejects_a_non_generator(core):
    with pytest.raises(TypeError, match="needs a coroutine"):
        run_test(lambda: None)


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_run_test_rejects_a_non_positive_timeout(core, timeout):
    def body():
        yield bluelet.null()

    with pytest.raises(ValueError, match="timeout"):
        run_test(body(), timeout=timeout)


def test_bluelet_testing_does_not_need_pytest(core, tmp_path):
    env = core_env(core)
    script = (
        "import sys; sys.modules['pytest'] = None\n"
        "import bluelet\n"
        "from bluelet.testing import run_test\n"
        "def body():\n"
        "    yield bluelet.sleep(10)\n"
        "    return bluelet.IMPLEMENTATION\n"
        "print(run_test(body(), virtual_time=True))\n")
    # cwd: `python -c` puts it first on sys.path; it must not shadow the
    # bluelet under test (in CI, the installed one) with a source tree.
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == core
