"""Debug mode: an event collected without having been yielded or awaited (a
forgotten ``yield``) is reported with a RuntimeWarning at the line that made
it. On with ``run(debug=True)``, ``BLUELET_DEBUG=1`` or ``python -X dev``;
off, nothing is reported. Each test runs on both cores.
"""

import gc
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

import bluelet
from _helpers import HOST, core_env, open_pair


def reports(root, **options):
    """Run ``root``; return the messages and line numbers of the reports."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = bluelet.run(root, **options)
        gc.collect()
    found = [(str(w.message), w.lineno) for w in caught
             if "was never yielded" in str(w.message)]
    return result, found


def line_of(func, text):
    """The line number of the first line of ``func``'s source holding ``text``."""
    import inspect
    lines, first = inspect.getsourcelines(func)
    return next(first + i for i, line in enumerate(lines) if text in line)


def test_forgotten_yields_are_reported_where_the_event_was_made(core):
    def child():
        yield bluelet.null()

    def main():
        bluelet.sleep(0.01)                     # forgotten: sleep
        bluelet.spawn(child())                  # forgotten: spawn
        yield bluelet.null()
        return "done"

    result, found = reports(main(), debug=True)
    assert result == "done"
    assert [(message.split(" made")[0], line) for message, line in found] == [
        ("bluelet: SleepEvent", line_of(main, "forgotten: sleep")),
        ("bluelet: SpawnEvent", line_of(main, "forgotten: spawn")),
    ]
    assert all("in main()" in message and "forgotten yield" in message
               for message, _ in found)


def test_a_forgotten_sendall_is_reported_at_the_caller_not_in_bluelet(core, no_fd_leak):
    def main():
        with bluelet.Listener(HOST, 0) as listener:
            conn, peer = yield bluelet.call(open_pair(listener))
            try:
                conn.sendall(b"lost")           # forgotten: sendall
                yield conn.sendall(b"kept")
                return (yield peer.recv(10))
            finally:
                conn.close()
                peer.close()

    result, found = reports(main(), debug=True)
    assert result == b"kept"
    assert found == [("bluelet: SendEvent made in main() was never yielded or awaited "
                      "(a forgotten yield?)", line_of(main, "forgotten: sendall"))]


def test_a_forgotten_await_of_an_event_is_reported(core):
    async def main():
        bluelet.sleep(1)                        # forgotten: await
        await bluelet.sleep(0)

    _, found = reports(main(), debug=True)
    assert [line for _, line in found] == [line_of(main, "forgotten: await")]


def test_events_that_were_used_are_not_reported(core):
    lock = bluelet.Lock()

    def killed():
        try:
            yield bluelet.sleep(60)
        finally:
            yield bluelet.sleep(0)              # refused during the kill: still yielded

    async def native():
        async with bluelet.move_on_after(0.001):
            await bluelet.sleep(60)
        async with lock:
            await bluelet.null()

    def main():
        yield bluelet.sleep(0)
        yield bluelet.timeout(1, bluelet.sleep(0))
        value = yield from bluelet.ValueEvent(3)
        yield native()
        k = killed()
        yield bluelet.spawn(k)
        yield bluelet.null()
        yield bluelet.kill(k)
        bluelet.WaitQueue()                     # a queue nobody waits on is no mistake
        return value

    result, found = reports(main(), debug=True, virtual_time=True)
    assert (result, found) == (3, [])


def test_an_event_whose_constructor_failed_is_not_reported(core):
    def main():
        for make in (lambda: bluelet.sleep("soon"), lambda: bluelet.wait_readable(-5),
                     lambda: bluelet.timeout("x", bluelet.sleep(1))):
            with pytest.raises((TypeError, ValueError)):
                make()
        yield bluelet.null()

    _, found = reports(main(), debug=True)
    assert found == []


def test_off_by_default_nothing_is_reported(core, monkeypatch):
    monkeypatch.delenv("BLUELET_DEBUG", raising=False)

    def main():
        bluelet.sleep(0.01)
        yield bluelet.null()

    if sys.flags.dev_mode:
        pytest.skip("python -X dev turns debug mode on")
    _, found = reports(main())
    assert found == []


@pytest.mark.parametrize("how", ["BLUELET_DEBUG=1", "-X dev"])
def test_the_environment_and_dev_mode_turn_it_on(core, how, tmp_path):
    program = tmp_path / "forgot.py"
    program.write_text(textwrap.dedent("""
        import bluelet

        def main():
            bluelet.sleep(0.01)
            yield bluelet.null()

        bluelet.run(main())
    """))
    env = core_env(core)
    env.pop("BLUELET_DEBUG", None)
    argv = [sys.executable, str(program)]
    if how == "-X dev":
        argv[1:1] = ["-X", "dev"]
    else:
        env["BLUELET_DEBUG"] = "1"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(str(program)))
    assert done.returncode == 0, done.stderr
    assert "forgot.py:5: RuntimeWarning: bluelet: SleepEvent made in main() was never " \
           "yielded" in done.stderr
