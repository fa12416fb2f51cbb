"""``async def`` coroutines on bluelet's scheduler, beside generator ones.

Every event is awaitable, bluelet's own operations (locks, queues, task
groups, threads) are awaitable, native coroutines run wherever generators
do, and the two styles call each other. Each test runs on both cores.
"""

import asyncio
import gc
import warnings

import pytest

import bluelet
from _helpers import HOST, open_pair


async def double_later(x):
    await bluelet.sleep(0.001)
    return 2 * x


def plus_one_later(x):
    yield bluelet.sleep(0.001)
    return x + 1


def test_run_takes_an_async_def_and_returns_its_result(core):
    async def main():
        return await double_later(21)

    assert bluelet.run(main()) == 42


def test_awaited_events_give_the_values_yield_gives(core):
    seen = []

    async def main():
        seen.append(await bluelet.null())
        seen.append(await bluelet.sleep(0))
        seen.append(await bluelet.ValueEvent(5))
        seen.append(await bluelet.call(plus_one_later(1)))
        seen.append(await bluelet.timeout(5, bluelet.call(plus_one_later(2))))

    bluelet.run(main())
    assert seen == [None, None, 5, 2, 3]


def test_the_styles_call_each_other(core):
    async def native_calls_generator():
        return await bluelet.call(plus_one_later(10))

    def generator_calls_native():
        a = yield double_later(5)                 # a native coroutine yielded: a call
        b = yield bluelet.call(double_later(6))
        c = yield native_calls_generator()
        return a, b, c

    assert bluelet.run(generator_calls_native()) == (10, 12, 11)


def test_yield_from_an_event_gives_its_value_in_a_generator(core):
    def main():
        a = yield from bluelet.ValueEvent("value")
        b = yield from bluelet.call(plus_one_later(1))
        c = yield from bluelet.null()
        return a, b, c

    assert bluelet.run(main()) == ("value", 2, None)


def test_spawn_join_and_kill_take_native_coroutines(core):
    log = []

    async def worker():
        try:
            await bluelet.sleep(60)
        finally:
            log.append("worker finally")

    async def main():
        child = double_later(4)
        await bluelet.spawn(child)
        value = await bluelet.join(child)
        w = worker()
        await bluelet.spawn(w)
        await bluelet.null()
        await bluelet.kill(w)
        return value

    assert bluelet.run(main()) == 8
    assert log == ["worker finally"]


def test_a_kill_raises_cancelled_at_the_await(core):
    log = []

    async def victim():
        try:
            await bluelet.sleep(60)
        except bluelet.Cancelled:
            log.append("cancelled")
            raise

    async def main():
        v = victim()
        await bluelet.spawn(v)
        await bluelet.sleep(0.001)
        await bluelet.kill(v)

    bluelet.run(main())
    assert log == ["cancelled"]


def test_scopes_take_native_bodies(core):
    async def slow():
        await bluelet.sleep(60)
        return "slow"

    async def main():
        with pytest.raises(bluelet.Timeout):
            await bluelet.timeout(0.01, slow())
        moved = await bluelet.move_on_after(0.01, slow())
        shielded = await bluelet.shield(double_later(1))
        return moved, shielded

    assert bluelet.run(main()) == (None, 2)


def test_an_outer_deadline_cancels_native_callees(core):
    log = []

    async def inner():
        try:
            await bluelet.sleep(60)
        finally:
            log.append("inner finally")

    async def main():
        with pytest.raises(bluelet.Timeout):
            await bluelet.fail_after(0.01, inner())
        return "after"

    assert bluelet.run(main(), virtual_time=True) == "after"
    assert log == ["inner finally"]


def test_task_group_runs_native_members(core):
    async def body(group):
        await group.spawn(double_later(1))
        started = await group.start(starter())
        return started

    async def starter():
        await bluelet.started("ready")
        await bluelet.sleep(0.001)

    async def main():
        return await bluelet.task_group(body)

    assert bluelet.run(main()) == "ready"


def test_join_all_and_first_take_native_coroutines(core):
    async def main():
        both = await bluelet.join_all([double_later(1), plus_one_later(1)])
        one = await bluelet.first([double_later(5), bluelet_sleeper()])
        return both, one

    async def bluelet_sleeper():
        await bluelet.sleep(60)

    assert bluelet.run(main()) == ([2, 2], 10)


def test_sockets_and_an_async_handler(core, no_fd_leak):
    async def echo(conn):
        try:
            while True:
                line = await conn.readline()
                if not line:
                    break
                await conn.sendall(line.upper())
        finally:
            conn.close()

    async def main():
        with bluelet.Listener(HOST, 0) as listener:
            server = bluelet.serve(listener, echo)
            await bluelet.spawn(server)
            conn = await bluelet.connect(HOST, listener.port)
            try:
                await conn.sendall(b"hello\nworld\n")
                got = await conn.readexactly(12)
            finally:
                conn.close()
            await bluelet.kill(server)
        return got

    assert bluelet.run(main()) == b"HELLO\nWORLD\n"


def test_recv_and_send_on_a_connection_pair(core, no_fd_leak):
    async def main():
        with bluelet.Listener(HOST, 0) as listener:
            conn, peer = await bluelet.call(open_pair(listener))
            try:
                sent = await conn.send(b"abc")
                data = await peer.recv(10)
                await conn.sendall(b"d")
                more = await peer.readuntil(b"d")
            finally:
                conn.close()
                peer.close()
        return sent, data, more

    assert bluelet.run(main()) == (3, b"abc", b"d")


def test_locks_are_async_context_managers(core):
    lock = bluelet.Lock()
    sem = bluelet.Semaphore(1)
    cond = bluelet.Condition()
    order = []

    async def user(name):
        async with lock:
            order.append(name + " in")
            await bluelet.sleep(0.001)
            order.append(name + " out")
        async with sem:
            order.append(name + " has a permit")
        async with cond:
            cond.notify_all()

    async def main():
        a, b = user("a"), user("b")
        await bluelet.spawn(a)
        await bluelet.spawn(b)
        await bluelet.join(a)
        await bluelet.join(b)

    bluelet.run(main())
    locked = [step for step in order if step.endswith(("in", "out"))]
    assert locked == ["a in", "a out", "b in", "b out"]
    assert sorted(set(order) - set(locked)) == ["a has a permit", "b has a permit"]
    assert not lock.locked()


def test_a_lock_is_released_when_the_block_raises(core):
    lock = bluelet.Lock()

    async def main():
        with pytest.raises(ValueError):
            async with lock:
                raise ValueError("boom")
        return lock.locked()

    assert bluelet.run(main()) is False


def test_queues_channels_flags_and_threads_are_awaitable(core):
    queue = bluelet.Queue[bytes](1)
    channel = bluelet.Channel[int]()
    flag = bluelet.Flag()

    async def producer():
        await queue.put(b"one")
        await queue.put(b"two")
        await channel.send(3)
        flag.set()

    async def main():
        p = producer()
        await bluelet.spawn(p)
        got = [await queue.get(), await queue.get(), await channel.recv()]
        await flag.wait()
        got.append(await bluelet.to_thread(sum, [1, 2, 3]))
        return got

    assert bluelet.run(main()) == [b"one", b"two", 3, 6]


def test_awaiting_an_asyncio_future_names_the_mistake(core):
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()

        async def main():
            await future

        with pytest.raises(TypeError, match="asyncio"):
            bluelet.run(main())
    finally:
        loop.close()


def test_a_forgotten_await_warns_as_cpython_does(core):
    async def main():
        double_later(1)  # no await: the coroutine never runs
        await bluelet.null()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bluelet.run(main())
        gc.collect()
    assert any("was never awaited" in str(w.message) for w in caught)


def test_dump_shows_where_a_native_coroutine_waits(core):
    async def waiter():
        await bluelet.sleep(60)

    async def main():
        w = waiter()
        await bluelet.spawn(w)
        await bluelet.sleep(0.001)
        text = bluelet.dump(file=None)
        await bluelet.kill(w)
        return text

    text = bluelet.run(main())
    assert "waiter" in text
    assert "await bluelet.sleep(60)" in text


def test_a_native_coroutine_cannot_be_spawned_twice(core):
    async def main():
        child = double_later(1)
        await bluelet.spawn(child)
        with pytest.raises(ValueError):
            await bluelet.spawn(child)
        return await bluelet.join(child)

    assert bluelet.run(main()) == 2


# -- scopes as async context managers ------------------------------------------

def test_move_on_after_block_leaves_where_it_was_cancelled(core):
    log = []

    async def main():
        async with bluelet.move_on_after(0.01) as scope:
            try:
                await bluelet.sleep(60)
                log.append("not reached")
            except Exception:
                log.append("except Exception caught Cancelled")
            finally:
                log.append("finally")
        log.append(("after", scope.cancelled_caught))
        async with bluelet.move_on_after(60) as quick:
            await bluelet.null()
        log.append(("quick", quick.cancelled_caught))

    bluelet.run(main(), virtual_time=True)
    assert log == ["finally", ("after", True), ("quick", False)]


def test_fail_after_block_raises_timeout_out_of_the_block(core):
    async def main():
        with pytest.raises(bluelet.Timeout) as caught:
            async with bluelet.fail_after(0.5):
                async with bluelet.timeout(60):
                    await bluelet.sleep(60)
        return caught.value.__context__

    context = bluelet.run(main(), virtual_time=True)
    assert isinstance(context, bluelet.Cancelled)


def test_nested_blocks_the_outermost_expired_one_catches(core):
    async def main():
        async with bluelet.move_on_after(0.01) as outer:
            async with bluelet.move_on_after(60) as inner:
                await bluelet.sleep(60)
            pytest.fail("the inner block swallowed the outer's cancellation")
        async with bluelet.move_on_after(60) as outer2:
            async with bluelet.move_on_after(0.01) as inner2:
                await bluelet.sleep(60)
            await bluelet.null()
        return (outer.cancelled_caught, inner.cancelled_caught,
                outer2.cancelled_caught, inner2.cancelled_caught)

    assert bluelet.run(main(), virtual_time=True) == (True, False, False, True)


def test_a_block_holds_a_deadline_for_its_statements_only(core):
    async def main():
        assert bluelet.current_deadline() == float("inf")
        async with bluelet.move_on_after(10):
            inside = bluelet.current_deadline() - bluelet.current_time()
            await bluelet.timeout(60, bluelet.null())   # a body scope inside a block
            still = bluelet.current_deadline() - bluelet.current_time()
        return inside, still, bluelet.current_deadline()

    inside, still, after = bluelet.run(main(), virtual_time=True)
    assert 9 < still <= inside <= 10
    assert after == float("inf")


def test_shield_block_defers_an_outer_deadline_to_after_it(core):
    log = []

    async def main():
        async with bluelet.move_on_after(0.01) as outer:
            async with bluelet.shield():
                await bluelet.sleep(0.05)
                log.append("shielded sleep done")
            log.append("after the shield, before a scheduling point")
            await bluelet.null()
            log.append("not reached")
        log.append(("caught", outer.cancelled_caught))

    bluelet.run(main(), virtual_time=True)
    assert log == ["shielded sleep done", "after the shield, before a scheduling point",
                   ("caught", True)]


def test_a_kill_waits_for_a_shield_block(core):
    log = []

    async def victim():
        async with bluelet.shield():
            await bluelet.sleep(0.05)
            log.append("shielded work done")
        await bluelet.null()
        log.append("not reached")

    async def main():
        v = victim()
        await bluelet.spawn(v)
        await bluelet.sleep(0.01)
        await bluelet.kill(v)
        log.append("kill returned")

    bluelet.run(main(), virtual_time=True)
    assert log == ["shielded work done", "kill returned"]


def test_a_finally_may_wait_in_a_shield_block_during_a_kill(core):
    log = []

    async def victim():
        try:
            await bluelet.sleep(60)
        finally:
            async with bluelet.shield():
                await bluelet.sleep(0.01)
                log.append("goodbye sent")

    async def main():
        v = victim()
        await bluelet.spawn(v)
        await bluelet.null()
        await bluelet.kill(v)
        log.append("kill returned")

    bluelet.run(main(), virtual_time=True)
    assert log == ["goodbye sent", "kill returned"]


def test_a_block_is_no_event_to_yield_and_enters_once(core):
    def generator_style():
        yield bluelet.move_on_after(1)

    with pytest.raises(TypeError, match="async with"):
        bluelet.run(generator_style())

    async def twice():
        block = bluelet.move_on_after(1)
        async with block:
            async with block:
                pass

    with pytest.raises(RuntimeError, match="entered once"):
        bluelet.run(twice())


def test_entering_a_block_is_not_a_scheduling_point(core):
    log = []

    async def main():
        async with bluelet.move_on_after(0.01):
            await bluelet.sleep(0.02)  # cancelled here: the deadline passes
        async with bluelet.fail_after(0.01):
            # Entering and leaving a scope does not wait: nothing is raised
            # at either, even with no time left.
            async with bluelet.move_on_after(0):
                log.append("inside an expired scope")
        log.append("after")

    bluelet.run(main(), virtual_time=True)
    assert log == ["inside an expired scope", "after"]
