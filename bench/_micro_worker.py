"""Measurement kernels for ``bench/micro.py``: one implementation per process.

Run as a script by ``micro.py``::

    python -I bench/_micro_worker.py IMPL SPEC_JSON

IMPL is one of ``floor``, ``bluelet`` (this repository's package; the core
is chosen by the environment the parent sets, ``BLUELET_PURE_PYTHON=1`` for
the pure one), ``bluelet020`` (bluelet 0.2.0, run by the side venv's
interpreter), ``asyncio``, ``uvloop``, ``gevent`` or ``trio``. SPEC_JSON says
which benchmarks to run and how big (see ``micro.py``). The script prints one
JSON object on stdout. A peer that does not import ends the script with exit
status 3 and ``{"missing": "..."}``, so the parent can leave its row out.

The three benchmarks, the same shape for every implementation:

* switch: N coroutines spin on a zero-length yield (``null()``,
  ``asyncio.sleep(0)``, ``gevent.sleep(0)``, ``trio.lowlevel.checkpoint()``)
  until all have started; the window opens when a flag is set and closes when
  the last one has been resumed for the K-th time: ns = window / (N K). The
  floor is a bare round robin of ``generator.send`` over a deque. The bluelet
  kernels (floor, ours, 0.2.0) are those of ``bench/_switch_worker.py``.
* spawn: N coroutines that end at once are spawned, then joined one by one
  (asyncio: ``create_task`` then ``await`` each task; gevent: ``spawn`` then
  ``joinall``; trio: ``nursery.start_soon`` and the nursery's exit); the
  window runs from before the first spawn to after the last join:
  us = window / N; measured twice, with the cyclic GC as usual and with it
  paused (``gc.disable()``) during the window. bluelet 0.2.0 cannot join
  a coroutine that has already finished (its ``join`` then waits
  forever), so there each coroutine is spawned and joined in turn.
* timers: N coroutines each sleep five intervals drawn from a seeded
  ``random.Random`` (the same intervals in every process). CPU seconds are
  ``time.process_time()`` from before the first spawn until the last
  coroutine wakes for the last time; lateness is the time each sleep
  returned minus the time it was asked at plus its interval
  (``time.monotonic``), over all N * 5 sleeps. bluelet 0.2.0 spawns the
  sleepers through the fan-out of ``_switch_worker`` (one spawn per
  scheduler pass over all coroutines would cost it O(N**2)).
* timer scaling (this repository's bluelet only): P coroutines sleep far
  beyond the window (pending timers), then C coroutines each sleep S seeded
  intervals of 0-1 ms, so that most passes of the loop fire several timers
  and the figure is the timers' cost, not the poll's: us = CPU of the window
  / (C S), measured for each P asked; the ratio between the largest and the
  smallest P says how the cost of one timer grows with the timers pending.

Only the standard library is imported at module level; each peer is imported
when its IMPL is asked for.
"""

import gc
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# -I leaves the script's directory off sys.path; bench/ holds no package
# called bluelet, so putting it last cannot shadow the bluelet under test.
if HERE not in sys.path:
    sys.path.append(HERE)
import _switch_worker as kernels  # noqa: E402

perf_counter = time.perf_counter
monotonic = time.monotonic
process_time = time.process_time


class Missing(Exception):
    """The implementation asked for does not import here."""


# -- shared helpers -------------------------------------------------------------

def intervals(n, sleeps, max_s, seed):
    rng = random.Random(seed)
    return [[rng.uniform(0.0, max_s) for _ in range(sleeps)] for _ in range(n)]


def timer_summary(late, cpu, wall, n, sleeps):
    late = sorted(late)
    m = len(late)
    if m != n * sleeps:
        raise RuntimeError("timers: %d of %d sleeps recorded" % (m, n * sleeps))

    def q(p):  # nearest rank
        return late[min(m - 1, max(0, int(round(p * m + 0.5)) - 1))]

    return {"cpu_s": cpu, "wall_s": wall, "late_median_ms": q(0.5) * 1e3,
            "late_p99_ms": q(0.99) * 1e3, "late_max_ms": late[-1] * 1e3,
            "late_min_ms": late[0] * 1e3, "n": n, "sleeps": sleeps}


class TimerState(object):
    def __init__(self, n, sleeps, max_s, seed):
        self.n = n
        self.sleeps = sleeps
        self.iv = intervals(n, sleeps, max_s, seed)
        self.late = []
        self.done = 0
        self.cpu0 = self.t0 = self.cpu1 = self.t1 = None

    def start(self):
        self.t0 = perf_counter()
        self.cpu0 = process_time()

    def finished_one(self):
        self.done += 1
        if self.done == self.n:
            self.cpu1 = process_time()
            self.t1 = perf_counter()

    def result(self):
        if self.done != self.n or self.cpu1 is None:
            raise RuntimeError("timers: %d of %d coroutines finished" % (self.done, self.n))
        return timer_summary(self.late, self.cpu1 - self.cpu0, self.t1 - self.t0,
                             self.n, self.sleeps)


class SwitchState(object):
    def __init__(self, n):
        self.n = n
        self.ready = 0
        self.go = False
        self.done = 0
        self.t0 = self.t1 = None

    def open_window(self):
        """All workers are spinning: let them go, and start the clock."""
        self.go = True
        self.t0 = perf_counter()

    def finished_one(self):
        self.done += 1
        if self.done == self.n:
            self.t1 = perf_counter()

    def result(self, k):
        if self.done != self.n or self.t1 is None:
            raise RuntimeError("switch: %d of %d coroutines finished" % (self.done, self.n))
        return (self.t1 - self.t0) * 1e9 / (self.n * k)


def async_sleeper(st, sleep):
    """The timers coroutine function for an async peer (asyncio, uvloop, trio).

    ``sleeper(i)`` sleeps ``st``'s intervals for coroutine i with ``await
    sleep(d)``, recording how late each sleep returned.
    """
    async def sleeper(i):
        late = st.late
        for d in st.iv[i]:
            t = monotonic()
            await sleep(d)
            late.append(monotonic() - t - d)
        st.finished_one()
    return sleeper


# -- bluelet (ours and 0.2.0) ------------------------------------------------

class BlueletKernels(object):
    def __init__(self, bl, old=False):
        self.bl = bl
        self.old = old

    def switch(self, n, k):
        return kernels.shape_a(self.bl, n, k)

    def spawn(self, n):
        bl = self.bl
        spawn, join = bl.spawn, bl.join
        box = {}

        def child():
            return
            yield

        def root_all():
            t0 = perf_counter()
            coros = []
            append = coros.append
            for _ in range(n):
                c = child()
                yield spawn(c)
                append(c)
            for c in coros:
                yield join(c)
            box["t"] = perf_counter() - t0

        def root_in_turn():  # 0.2.0: join of a finished coroutine never returns
            t0 = perf_counter()
            for _ in range(n):
                c = child()
                yield spawn(c)
                yield join(c)
            box["t"] = perf_counter() - t0

        gc.collect()
        bl.run(root_in_turn() if self.old else root_all())
        return box["t"] * 1e6 / n

    def timers(self, n, sleeps, max_s, seed):
        bl = self.bl
        st = TimerState(n, sleeps, max_s, seed)
        sleep = bl.sleep

        def sleeper(i):
            late = st.late
            for d in st.iv[i]:
                t = monotonic()
                yield sleep(d)
                late.append(monotonic() - t - d)
            st.finished_one()

        def root():
            st.start()
            if self.old:
                ids = iter(range(n))
                yield bl.spawn(kernels._fan_out(bl, lambda: sleeper(next(ids)), n))
            else:
                coros = [sleeper(i) for i in range(n)]
                for c in coros:
                    yield bl.spawn(c)
                for c in coros:
                    yield bl.join(c)

        gc.collect()
        bl.run(root())
        return st.result()

    def timer_scale(self, pending, churners, sleeps, seed):
        bl = self.bl
        iv = intervals(churners, sleeps, 1e-3, seed)
        far = random.Random(seed + 1)
        box = {}

        def idle(d):
            yield bl.sleep(d)

        def churn(i):
            for d in iv[i]:
                yield bl.sleep(d)

        def root():
            idlers = [idle(3600.0 + far.random()) for _ in range(pending)]
            for c in idlers:
                yield bl.spawn(c)
            coros = [churn(i) for i in range(churners)]
            cpu0 = process_time()
            for c in coros:
                yield bl.spawn(c)
            for c in coros:
                yield bl.join(c)
            box["us"] = (process_time() - cpu0) * 1e6 / (churners * sleeps)
            for c in idlers:
                yield bl.kill(c)

        gc.collect()
        bl.run(root())
        return box["us"]


def load_bluelet(spec, old):
    if old:
        bluelet, where, ver = kernels.import_installed_bluelet()
        return BlueletKernels(bluelet, old=True), {"version": ver, "file": where}
    if spec.get("tree"):
        sys.path.insert(0, spec["tree"])
    import bluelet
    where = os.path.realpath(bluelet.__file__)
    if spec.get("tree") and not where.startswith(os.path.realpath(spec["tree"]) + os.sep):
        raise RuntimeError("imported bluelet from %s, not from %s" % (where, spec["tree"]))
    want = spec.get("core")
    if want and bluelet.IMPLEMENTATION != want:
        raise Missing("bluelet core %r asked for, %r loaded" % (want, bluelet.IMPLEMENTATION))
    return BlueletKernels(bluelet), {"version": bluelet.__version__, "file": where,
                                     "core": bluelet.IMPLEMENTATION}


# -- asyncio / uvloop -----------------------------------------------------------

class AsyncioKernels(object):
    def __init__(self, runner):
        import asyncio
        self.asyncio = asyncio
        self.runner = runner

    def switch(self, n, k):
        asyncio = self.asyncio
        st = SwitchState(n)
        sleep = asyncio.sleep

        async def worker():
            st.ready += 1
            while not st.go:
                await sleep(0)
            for _ in range(k - 1):
                await sleep(0)
            st.finished_one()

        async def main():
            tasks = [asyncio.ensure_future(worker()) for _ in range(n)]
            while st.ready < n:
                await sleep(0)
            st.open_window()
            for t in tasks:
                await t

        gc.collect()
        self.runner(main())
        return st.result(k)

    def spawn(self, n):
        asyncio = self.asyncio
        box = {}

        async def child():
            return

        async def main():
            create_task = asyncio.get_running_loop().create_task
            t0 = perf_counter()
            tasks = [create_task(child()) for _ in range(n)]
            for t in tasks:
                await t
            box["t"] = perf_counter() - t0

        gc.collect()
        self.runner(main())
        return box["t"] * 1e6 / n

    def timers(self, n, sleeps, max_s, seed):
        asyncio = self.asyncio
        st = TimerState(n, sleeps, max_s, seed)
        sleeper = async_sleeper(st, asyncio.sleep)

        async def main():
            create_task = asyncio.get_running_loop().create_task
            st.start()
            tasks = [create_task(sleeper(i)) for i in range(n)]
            for t in tasks:
                await t

        gc.collect()
        self.runner(main())
        return st.result()


def load_asyncio(spec):
    import asyncio
    return AsyncioKernels(asyncio.run), {"version": sys.version.split()[0]}


def load_uvloop(spec):
    try:
        import uvloop
    except ImportError as exc:
        raise Missing(str(exc))
    import asyncio
    if hasattr(uvloop, "run"):
        runner = uvloop.run
    else:  # older uvloop
        def runner(coro):
            loop = uvloop.new_event_loop()
            try:
                return loop.run_until_complete(coro)
            finally:
                loop.close()
    k = AsyncioKernels(runner)

    async def probe():
        return type(asyncio.get_running_loop()).__module__
    mod = runner(probe())
    if not mod.startswith("uvloop"):
        raise RuntimeError("uvloop runner gave a %s loop" % mod)
    return k, {"version": uvloop.__version__}


# -- gevent -------------------------------------------------------------------

class GeventKernels(object):
    def __init__(self, gevent):
        self.gevent = gevent

    def switch(self, n, k):
        gevent = self.gevent
        st = SwitchState(n)
        sleep = gevent.sleep

        def worker():
            st.ready += 1
            while not st.go:
                sleep(0)
            for _ in range(k - 1):
                sleep(0)
            st.finished_one()

        gc.collect()
        lets = [gevent.spawn(worker) for _ in range(n)]
        while st.ready < n:
            sleep(0)
        st.open_window()
        gevent.joinall(lets, raise_error=True)
        return st.result(k)

    def spawn(self, n):
        gevent = self.gevent
        spawn = gevent.spawn

        def child():
            return

        gc.collect()
        t0 = perf_counter()
        lets = [spawn(child) for _ in range(n)]
        gevent.joinall(lets, raise_error=True)
        t = perf_counter() - t0
        return t * 1e6 / n

    def timers(self, n, sleeps, max_s, seed):
        gevent = self.gevent
        st = TimerState(n, sleeps, max_s, seed)
        sleep = gevent.sleep

        def sleeper(i):
            late = st.late
            for d in st.iv[i]:
                t = monotonic()
                sleep(d)
                late.append(monotonic() - t - d)
            st.finished_one()

        gc.collect()
        st.start()
        lets = [gevent.spawn(sleeper, i) for i in range(n)]
        gevent.joinall(lets, raise_error=True)
        return st.result()


def load_gevent(spec):
    try:
        import gevent
    except ImportError as exc:
        raise Missing(str(exc))
    return GeventKernels(gevent), {"version": gevent.__version__}


# -- trio ---------------------------------------------------------------------

class TrioKernels(object):
    def __init__(self, trio):
        self.trio = trio

    def switch(self, n, k):
        trio = self.trio
        st = SwitchState(n)
        checkpoint = trio.lowlevel.checkpoint

        async def worker():
            st.ready += 1
            while not st.go:
                await checkpoint()
            for _ in range(k - 1):
                await checkpoint()
            st.finished_one()

        async def main():
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(worker)
                while st.ready < n:
                    await checkpoint()
                st.open_window()

        gc.collect()
        trio.run(main)
        return st.result(k)

    def spawn(self, n):
        trio = self.trio
        box = {}

        async def child():
            return

        async def main():
            t0 = perf_counter()
            async with trio.open_nursery() as nursery:
                start_soon = nursery.start_soon
                for _ in range(n):
                    start_soon(child)
            box["t"] = perf_counter() - t0

        gc.collect()
        trio.run(main)
        return box["t"] * 1e6 / n

    def timers(self, n, sleeps, max_s, seed):
        trio = self.trio
        st = TimerState(n, sleeps, max_s, seed)
        sleeper = async_sleeper(st, trio.sleep)

        async def main():
            st.start()
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(sleeper, i)

        gc.collect()
        trio.run(main)
        return st.result()


def load_trio(spec):
    try:
        import trio
    except ImportError as exc:
        raise Missing(str(exc))
    return TrioKernels(trio), {"version": trio.__version__}


# -- main -----------------------------------------------------------------------

def run_spec(k, spec, floor=False):
    out = {}
    sw = spec.get("switch")
    sp = spec.get("spawn")
    tm = spec.get("timers")
    if floor:
        if spec.get("warm_up") and sw:
            kernels.floor_a(100, 20)
        if sw:
            gc.collect()
            out["switch_ns"] = kernels.floor_a(sw["n"], sw["k"])
        return out
    if spec.get("warm_up"):
        # Small runs first: a fresh process is slower on its first calls
        # (CPython specializes code as it runs it).
        for _ in range(3):
            if sw:
                k.switch(100, 20)
            if sp:
                k.spawn(2000)
        if tm:
            k.timers(200, 2, 0.005, 12345)
    if sw:
        out["switch_ns"] = k.switch(sw["n"], sw["k"])
    if sp:
        out["spawn_us"] = k.spawn(sp["n"])
        # The same with the cyclic GC paused during the window: with 100,000
        # live coroutines its full collections are a large, implementation-
        # independent part of the figure above.
        gc.disable()
        try:
            out["spawn_us_nogc"] = k.spawn(sp["n"])
        finally:
            gc.enable()
    if tm:
        out["timers"] = k.timers(tm["n"], tm["sleeps"], tm["max_ms"] / 1e3, tm["seed"])
    ts = spec.get("timer_scale")
    if ts:
        out["timer_scale_us"] = {str(p): k.timer_scale(p, ts["churners"], ts["sleeps"], ts["seed"])
                                 for p in ts["pending"]}
    return out


LOADERS = {
    "bluelet": lambda spec: load_bluelet(spec, old=False),
    "bluelet020": lambda spec: load_bluelet(spec, old=True),
    "asyncio": load_asyncio,
    "uvloop": load_uvloop,
    "gevent": load_gevent,
    "trio": load_trio,
}


def main(argv):
    impl, spec = argv[1], json.loads(argv[2])
    try:
        if impl == "floor":
            info = {}
            result = run_spec(None, spec, floor=True)
        else:
            if impl not in LOADERS:
                raise SystemExit("unknown implementation %r" % impl)
            k, info = LOADERS[impl](spec)
            result = run_spec(k, spec)
    except Missing as exc:
        sys.stdout.write(json.dumps({"missing": str(exc)}) + "\n")
        return 3
    result["impl"] = impl
    result["info"] = info
    kernels.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
