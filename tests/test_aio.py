"""bluelet inside asyncio (guest mode, bluelet.aio) and inside other loops
(start_guest_run), on both cores, under asyncio's own loop and uvloop."""

import asyncio
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

if sys.platform == "win32":
    pytest.skip("guest mode needs epoll or kqueue; Windows' select() has no descriptor",
                allow_module_level=True)

import aiohttp  # noqa: E402
import uvloop  # noqa: E402

import bluelet  # noqa: E402
from bluelet import _impl  # noqa: E402

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(60)]

# uvloop's first loop opens a pipe that lives as long as the process; opened
# here, it is not taken for a test's leak.
uvloop.run(asyncio.sleep(0))

HOSTS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(HOSTS))
def host(request, core):
    """Runs an asyncio coroutine to its end on a fresh loop of that kind."""
    return HOSTS[request.param]


def test_guest_run_returns_the_result_while_asyncio_tasks_run_beside_it(host):
    seen = []

    def child(n):
        yield bluelet.sleep(0.01 * n)
        seen.append("bluelet %d" % n)
        return n * n

    def main():
        return (yield bluelet.join_all([child(n) for n in range(4)]))

    async def ticker():
        for n in range(3):
            await asyncio.sleep(0.012)
            seen.append("asyncio %d" % n)

    async def both():
        tick = asyncio.ensure_future(ticker())
        result = await bluelet.aio.run(main())
        await tick
        return result

    assert host(both()) == [0, 1, 4, 9]
    # Interleaved by time, not one side after the other.
    assert seen.index("asyncio 0") < seen.index("bluelet 3")
    assert seen.index("bluelet 1") < seen.index("asyncio 2")


def test_async_def_programs_and_the_compiled_scheduler_run_as_guests(host):
    async def main():
        await bluelet.sleep(0.001)
        return bluelet.IMPLEMENTATION

    assert host(bluelet.aio.run(main())) == _impl.IMPLEMENTATION


def test_a_failure_in_the_program_is_raised_by_aio_run(host):
    closed = []

    def sleeper():
        try:
            yield bluelet.sleep(10)
        finally:
            closed.append("sleeper")

    def main():
        yield bluelet.spawn(sleeper())
        yield bluelet.sleep(0.01)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        host(bluelet.aio.run(main()))
    assert closed == ["sleeper"]


def test_cancelling_the_awaiting_task_cancels_the_program_with_finally_blocks_run(host):
    log = []

    def worker():
        try:
            yield bluelet.sleep(10)
        finally:
            log.append("worker closed")

    def main():
        yield bluelet.spawn(worker())
        try:
            yield bluelet.sleep(10)
        except bluelet.Cancelled:
            log.append("root got Cancelled")
            raise
        finally:
            log.append("root finally")

    async def outer():
        task = asyncio.ensure_future(bluelet.aio.run(main()))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert host(outer()) is True
    assert log == ["root got Cancelled", "root finally", "worker closed"]


def test_aio_wait_gives_results_and_raises_exceptions_of_asyncio_code(host):
    async def double(x):
        await asyncio.sleep(0.001)
        return 2 * x

    async def fail():
        await asyncio.sleep(0)
        raise ValueError("from asyncio")

    def main():
        a = yield bluelet.aio.wait(double(21))
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.005, future.set_result, "future")
        b = yield bluelet.aio.wait(future)
        task = asyncio.ensure_future(double(5))
        c = yield bluelet.aio.wait(task)
        try:
            yield bluelet.aio.wait(fail())
        except ValueError as exc:
            d = str(exc)
        return a, b, c, d

    async def async_main():
        return await bluelet.aio.wait(double(4))

    assert host(bluelet.aio.run(main())) == (42, "future", 10, "from asyncio")
    assert host(bluelet.aio.run(async_main())) == 8


def test_a_kill_or_a_deadline_on_the_bluelet_side_cancels_the_asyncio_side(host):
    log = []

    async def slow(name):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append(name + " cancelled")
            raise

    def waiter():
        yield bluelet.aio.wait(slow("killed"))

    def main():
        child = waiter()
        yield bluelet.spawn(child)
        yield bluelet.sleep(0.01)
        yield bluelet.kill(child)
        with pytest.raises(bluelet.Timeout):
            yield bluelet.timeout(0.01, bluelet.aio.wait(slow("timed out")))
        # Let asyncio run the cancelled coroutines' handlers.
        yield bluelet.aio.wait(asyncio.sleep(0.01))
        return log

    assert host(bluelet.aio.run(main())) == ["killed cancelled", "timed out cancelled"]


def test_an_asyncio_side_cancel_arrives_as_cancelled(host):
    def main():
        task = asyncio.ensure_future(asyncio.sleep(10))
        asyncio.get_running_loop().call_later(0.01, task.cancel)
        try:
            yield bluelet.aio.wait(task)
        except bluelet.Cancelled as exc:
            return str(exc)

    assert host(bluelet.aio.run(main())) == "the asyncio side was cancelled"


def test_aio_wait_refuses_what_it_cannot_run(core):
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match=r"host='asyncio'"):
            bluelet.run(_wait_outside(coro))
    finally:
        coro.close()
    with pytest.raises(TypeError, match="needs an asyncio coroutine, Future or Task, not 3"):
        bluelet.aio.wait(3)


def _wait_outside(coro):
    yield bluelet.aio.wait(coro)


def test_run_with_host_runs_a_plain_program_that_uses_asyncio(core):
    async def add(a, b):
        await asyncio.sleep(0.001)
        return a + b

    def main():
        x = yield bluelet.aio.wait(add(1, 2))
        yield bluelet.sleep(0.001)
        return x

    assert bluelet.run(main(), host="asyncio") == 3
    assert bluelet.run(main(), host="uvloop") == 3
    with pytest.raises(ValueError, match="host must be one of 'asyncio', 'uvloop', not 'tk'"):
        bluelet.run(main(), host="tk")
    with pytest.raises(ValueError, match="not for host='asyncio'"):
        bluelet.run(main(), host="asyncio", virtual_time=True)


def test_threads_wake_a_guest_through_its_descriptor(host):
    def main():
        return (yield bluelet.to_thread(lambda: (time.sleep(0.02), "from a thread")[1]))

    assert host(bluelet.aio.run(main())) == "from a thread"


def test_bluelet_server_and_asyncio_client_share_one_loop(host):
    def echo(conn):
        while True:
            data = yield conn.recv(1024)
            if not data:
                return
            yield conn.sendall(data.upper())

    def server(listener):
        yield bluelet.serve(listener, echo)

    async def client(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = []
        for word in (b"one", b"two", b"three"):
            writer.write(word)
            await writer.drain()
            replies.append(await reader.readexactly(len(word)))
        writer.close()
        await writer.wait_closed()
        return replies

    async def main():
        listener = bluelet.Listener("127.0.0.1", 0)
        served = asyncio.ensure_future(bluelet.aio.run(server(listener)))
        try:
            return await client(listener.port)
        finally:
            served.cancel()
            with pytest.raises(asyncio.CancelledError):
                await served
            listener.close()

    assert host(main()) == [b"ONE", b"TWO", b"THREE"]


def test_aiohttp_fetches_from_bluelet_and_bluelet_fetches_through_aiohttp(host, tmp_path):
    from bluelet._demos import StaticFiles

    (tmp_path / "hello.txt").write_bytes(b"hello from bluelet\n")

    def server(listener):
        yield bluelet.serve(listener, StaticFiles(str(tmp_path), access_log=False))

    async def fetch(url):
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                return response.status, await response.read()

    def bluelet_client(url):
        # A bluelet coroutine using an asyncio library.
        return (yield bluelet.aio.wait(fetch(url)))

    async def main():
        listener = bluelet.Listener("127.0.0.1", 0)
        url = "http://127.0.0.1:%d/hello.txt" % listener.port
        served = asyncio.ensure_future(bluelet.aio.run(server(listener)))
        try:
            from_asyncio = await fetch(url)
            from_bluelet = await bluelet.aio.run(bluelet_client(url))
            return from_asyncio, from_bluelet
        finally:
            served.cancel()
            with pytest.raises(asyncio.CancelledError):
                await served
            listener.close()

    expected = (200, b"hello from bluelet\n")
    assert host(main()) == (expected, expected)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on 127.0.0.1 for this module's tests.

    Skipped where none is installed, unless BLUELET_REQUIRE_REDIS=1 (CI,
    which installs Debian's package) makes that a failure.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("BLUELET_REQUIRE_REDIS", "") not in ("", "0"):
            pytest.fail("BLUELET_REQUIRE_REDIS is set but redis-server is not installed")
        pytest.skip("redis-server is not installed (Debian: apt install redis-server)")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server did not start on port %d" % port)
                time.sleep(0.05)
        yield "redis://127.0.0.1:%d/0" % port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_asyncio_client_from_bluelet_coroutines(host, redis_url):
    import redis.asyncio as aioredis

    def worker(client, n):
        yield bluelet.aio.wait(client.set("key:%d" % n, n * 10))
        return int((yield bluelet.aio.wait(client.get("key:%d" % n))))

    def main():
        client = aioredis.from_url(redis_url)
        try:
            values = yield bluelet.join_all([worker(client, n) for n in range(5)])
            total = yield bluelet.aio.wait(client.incrby("total", sum(values)))
            yield bluelet.aio.wait(client.delete("total", *("key:%d" % n for n in range(5))))
            return values, total
        finally:
            yield bluelet.aio.wait(client.aclose())

    assert host(bluelet.aio.run(main())) == ([0, 10, 20, 30, 40], 100)


class _QueueHost:
    """A minimal host event loop: runs callbacks posted from any thread."""

    def __init__(self):
        self.calls = queue.SimpleQueue()
        self.outcome = None
        self.thread = threading.get_ident()
        self.off_thread = 0

    def run_soon(self, fn):
        self.calls.put(fn)

    def done(self, outcome):
        self.off_thread += threading.get_ident() != self.thread
        self.outcome = outcome

    def run_until_done(self, seconds=10):
        deadline = time.monotonic() + seconds
        while self.outcome is None:
            self.calls.get(timeout=max(deadline - time.monotonic(), 0.001))()
        return self.outcome


def test_start_guest_run_runs_a_program_from_a_plain_callback_queue(core):
    host = _QueueHost()
    threads = set()

    def child(n):
        yield bluelet.sleep(0.005 * n)
        threads.add(threading.get_ident())
        return n

    def main():
        got = yield bluelet.join_all([child(n) for n in range(3)])
        got.append((yield bluelet.to_thread(lambda: "thread")))
        return got

    bluelet.start_guest_run(main(), run_sync_soon_threadsafe=host.run_soon,
                            done_callback=host.done)
    outcome = host.run_until_done()
    assert outcome.unwrap() == [0, 1, 2, "thread"]
    assert threads == {host.thread} and host.off_thread == 0


def test_a_cancelled_guest_run_reports_cancelled_after_its_finally_blocks(core):
    host = _QueueHost()
    log = []

    def main():
        try:
            yield bluelet.sleep(10)
        finally:
            log.append("finally")

    run = bluelet.start_guest_run(main(), run_sync_soon_threadsafe=host.run_soon,
                                  done_callback=host.done)
    host.run_soon(lambda: run.cancel())
    outcome = host.run_until_done()
    assert isinstance(outcome.error, bluelet.Cancelled) and log == ["finally"]
    with pytest.raises(bluelet.Cancelled):
        outcome.unwrap()


def test_the_core_guest_interface_refuses_misuse(core):
    loop = _impl.Loop()
    with pytest.raises(RuntimeError, match=r"step\(\) before Loop.start\(\)"):
        loop.step()
    closed = []

    def main():
        try:
            yield bluelet.sleep(10)
        finally:
            closed.append(True)

    loop.start(main())
    assert loop.fileno() >= 0
    assert loop.step() > 1  # sleeping: nothing to do for about ten seconds
    with pytest.raises(RuntimeError, match="a Loop runs only once"):
        loop.start(main())
    with pytest.raises(RuntimeError, match="before the run was over"):
        loop.finish()
    assert closed == [True]
