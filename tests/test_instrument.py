"""Instruments and the stall watchdog, once per core.

A recording instrument writes down every hook call as (hook, coroutine's
name, state); the same program must give the same record on both cores.
The watchdog test checks the warning is logged while the coroutine is still
stuck, by when it was logged, not by how long anything took.
"""

import logging
import re
import threading
import time

import pytest

import bluelet
from bluelet import _impl
from conftest import CORES

pytestmark = pytest.mark.timeout(30)


def name(task):
    return task.coroutine.__qualname__.rsplit(".", 1)[-1]


class Recorder(bluelet.Instrument):
    def __init__(self):
        self.calls = []

    def task_spawned(self, task):
        self.calls.append(("spawned", name(task), task.state))

    def task_scheduled(self, task):
        self.calls.append(("scheduled", name(task), task.state))

    def before_step(self, task):
        self.calls.append(("before", name(task), task.state))

    def after_step(self, task):
        self.calls.append(("after", name(task), task.state))

    def task_exited(self, task):
        self.calls.append(("exited", name(task), task.state))

    def before_poll(self, timeout):
        self.calls.append(("before_poll", timeout >= 0))

    def after_poll(self, ready):
        self.calls.append(("after_poll", ready))


def program():
    def child():
        yield bluelet.sleep(0.01)
        return 1

    def root():
        kid = child()
        yield bluelet.spawn(kid)
        yield bluelet.join(kid)
        return "done"

    return root()


def recorded(core_name):
    previous = _impl.use(core_name)
    try:
        recorder = Recorder()
        assert bluelet.run(program(), instruments=[recorder]) == "done"
        return recorder.calls
    finally:
        _impl.use(previous)


def test_every_hook_is_called_in_order(core):
    calls = recorded(core)
    steps = [call for call in calls if call[0] not in ("before_poll", "after_poll")]
    assert steps == [
        ("spawned", "root", "ready"),
        ("before", "root", "ready"),
        ("spawned", "child", "ready"),       # root goes on in the same step
        ("after", "root", "joining"),
        ("before", "child", "ready"),
        ("after", "child", "sleeping"),
        ("scheduled", "child", "ready"),     # its sleep is over
        ("before", "child", "ready"),
        ("exited", "child", "done"),
        ("scheduled", "root", "ready"),      # the join is over
        ("after", "child", "done"),
        ("before", "root", "ready"),
        ("exited", "root", "done"),
        ("after", "root", "done"),
    ]
    # The sleep was waited for in a poll with a timeout.
    assert ("before_poll", True) in calls and ("after_poll", 0) in calls


def test_both_cores_tell_the_same_story():
    assert recorded(CORES[0]) == recorded(CORES[-1])


def test_a_raising_instrument_is_removed_and_the_others_go_on(core, caplog):
    class Broken(bluelet.Instrument):
        def before_step(self, task):
            raise RuntimeError("broken instrument")

    recorder, broken = Recorder(), Broken()
    with caplog.at_level(logging.ERROR, logger="bluelet"):
        assert bluelet.run(program(), instruments=[broken, recorder]) == "done"
    assert [r.getMessage() for r in caplog.records].count(
        "instrument %r raised in before_step; it is removed" % (broken,)) == 1
    assert ("exited", "root", "done") in recorder.calls


def test_added_and_removed_while_running(core):
    recorder = Recorder()

    def root():
        loop = _impl.running_loop()
        assert loop.hooks is None
        bluelet.add_instrument(recorder)
        with pytest.raises(ValueError, match="already installed"):
            bluelet.add_instrument(recorder)
        yield bluelet.null()
        bluelet.remove_instrument(recorder)
        assert loop.hooks is None  # the bare fast path again
        with pytest.raises(ValueError, match="not installed"):
            bluelet.remove_instrument(recorder)
        yield bluelet.null()
        return "ok"

    assert bluelet.run(root()) == "ok"
    # Only what happened while it was installed: the null() woke root, which
    # ran again (the step during which it was removed tells it no more).
    assert recorder.calls == [("scheduled", "root", "ready"), ("before", "root", "ready")]


def test_misuse_is_refused_at_the_call(core):
    with pytest.raises(TypeError, match="Instrument"):
        bluelet.run(program(), instruments=[object()])
    with pytest.raises(ValueError, match="stall_warning"):
        bluelet.run(program(), stall_warning=0)
    with pytest.raises(ValueError, match="own loop"):
        bluelet.run(program(), host="asyncio", instruments=[Recorder()])
    with pytest.raises(RuntimeError, match="running bluelet loop"):
        bluelet.add_instrument(Recorder())


def stuck_for(seconds):
    """A blocking call inside a coroutine (the mistake the watchdog is for)."""
    time.sleep(seconds)


def test_the_stall_watchdog_speaks_while_the_coroutine_is_stuck(core, caplog):
    returned = []

    def stalls():
        yield bluelet.null()
        stuck_for(1.0)
        returned.append(time.time())
        yield bluelet.null()

    def root():
        yield stalls()

    threads_before = threading.active_count()
    with caplog.at_level(logging.WARNING, logger="bluelet"):
        bluelet.run(root(), stall_warning=0.1)
    warnings = [r for r in caplog.records if "without yielding" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    message = warnings[0].getMessage()
    assert re.search(r"coroutine \S*root has run", message)  # the spawned coroutine
    # Its stack, from the coroutine down to the call that blocks, without
    # the scheduler's frames (root delegates to stalls: the scheduler runs
    # stalls itself, so root is not on the stack).
    stack = message.split("it is now at:\n", 1)[1]
    assert "in stalls" in stack and "in stuck_for" in stack
    assert "time.sleep(seconds)" in stack and "_step" not in stack
    assert warnings[0].created < returned[0]  # said while it was stuck
    over = [r for r in caplog.records if "stall reported above is over" in r.getMessage()]
    assert len(over) == 1 and over[0].created >= returned[0]
    assert threading.active_count() == threads_before  # the watchdog thread is gone


def test_no_warning_for_steps_that_yield_in_time(core, caplog):
    def busy():
        for _ in range(50):
            yield bluelet.sleep(0.002)

    with caplog.at_level(logging.WARNING, logger="bluelet"):
        bluelet.run(busy(), stall_warning=0.5)
    assert not [r for r in caplog.records if "without yielding" in r.getMessage()]


def spin(seconds):
    """Burn CPU in this thread for ``seconds`` of its CPU clock."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_accounting_in_tasks_and_dump(core):
    queue = bluelet.Queue()

    def worker():
        spin(0.03)                       # a step that computes
        yield bluelet.sleep(0.05)        # then a wait of each kind
        yield queue.get()

    def root():
        kid = worker()
        yield bluelet.spawn(kid)
        for _ in range(5000):  # until it waits on the queue, however slow the machine
            (info,) = [t for t in bluelet.tasks() if t.coroutine is kid]
            if info.state == "parked":
                break
            yield bluelet.sleep(0.002)
        text = bluelet.dump()
        yield queue.put(1)
        yield bluelet.join(kid)
        return info, text

    info, text = bluelet.run(root(), instruments=[bluelet.Accounting()])
    assert info.state == "parked" and info.steps == 2
    assert 0.03 <= info.cpu_time < 1.0
    # Its wait is timed from after its step: a little less than the 50 ms
    # the loop's own clock slept.
    assert info.waited["sleeping"] >= 0.045 and info.waited["parked"] > 0
    assert re.search(r"Coroutine \S*worker .*\n  2 steps, \d+\.\d{3} ms of CPU; "
                     r"waited parked \d+\.\d{3} s, sleeping \d+\.\d{3} s", text), text


def test_no_accounting_unless_installed(core):
    def root():
        yield bluelet.null()
        return bluelet.tasks()

    (info,) = bluelet.run(root())
    assert (info.cpu_time, info.steps, info.waited) == (None, None, None)
