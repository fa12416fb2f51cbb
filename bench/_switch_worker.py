"""Measurement kernels for ``bench/switch.py`` (see there for what and why).

The functions take the bluelet module to measure as their first argument, so
one copy of the code measures every implementation: ``switch.py`` calls them
in-process for our cores, and runs this file as a script inside the side venv
for bluelet 0.2.0. Run as a script, it imports whatever ``bluelet`` its
interpreter finds, refuses one that is not installed in that interpreter's own
prefix (so it can never pick up the repository's package by accident), runs
the measurements described by the JSON spec given as its one argument, and
prints one JSON object on stdout.

Only the original 0.2.0 API is used (run, spawn, null, sleep), and only
syntax and library calls that every Python 3 the venv may have understands;
the file imports nothing from the repository.
"""

import gc
import json
import os
import sys
import time
from collections import deque

perf_counter = time.perf_counter

#: How long the sleepers of shape (b) sleep: longer than any run.
SLEEP_SECONDS = 3600


class _Done(Exception):
    """Raised by the busy coroutine of shape (b) once it has its figure.

    An unhandled exception makes ``run()`` close every remaining coroutine in
    one sweep and re-raise it, in bluelet 0.2.0 and in ours alike. That is the
    cheap way to stop N sleepers: killing them one ``yield kill()`` at a time
    costs 0.2.0 a pass over all coroutines per kill, O(N**2) in all.
    """


def _fan_out(bl, make, n):
    """Coroutine that spawns ``make()`` n times, then ends.

    It spawns a half-size copy of itself and keeps the other half, so the
    spawning takes O(log n) scheduler passes. 0.2.0 handles one spawn per
    coroutine per pass and every pass scans every coroutine: spawning 10,000
    from one loop would cost it O(n**2) before the measurement could start.
    """
    while n > 1:
        half = n // 2
        yield bl.spawn(_fan_out(bl, make, half))
        n -= half
    yield bl.spawn(make())


# -- the floor: a bare round robin of generator.send ------------------------

def _timed_round_robin(gens):
    """Seconds to run ``gens`` round robin (deque: popleft, send, append) to the end.

    Each generator is first advanced to its first yield, outside the timed
    window. That loop also warms this function's code up (CPython
    specializes it as it runs), so the window does not pay for that.
    """
    for g in gens:
        g.send(None)
    queue = deque(gens)
    popleft, append = queue.popleft, queue.append
    gc.collect()
    t0 = perf_counter()
    while queue:
        g = popleft()
        try:
            g.send(None)
        except StopIteration:
            continue
        append(g)
    t1 = perf_counter()
    return t1 - t0


def floor_a(n, k):
    """ns per switch of n generators each yielding k times, round robin."""
    def worker():
        for _ in range(k):
            yield

    return _timed_round_robin([worker() for _ in range(n)]) * 1e9 / (n * k)


def floor_b(n, k):
    """ns per switch of one generator yielding k times beside n parked ones.

    The parked generators exist (suspended, like sleepers) but are not in the
    run queue, as in a scheduler whose cost does not grow with them.
    """
    def parked():
        yield

    def worker():
        for _ in range(k):
            yield

    others = [parked() for _ in range(n)]
    for g in others:
        g.send(None)
    seconds = _timed_round_robin([worker()])
    del others
    return seconds * 1e9 / k


# -- bluelet ------------------------------------------------------------------

def shape_a(bl, n, k, awaited=False, instruments=None):
    """ns per switch of n coroutines each yielding null() k times.

    The coroutines are spawned first and spin on null() until a start flag is
    set; the window opens when the flag is set and closes when the last one
    has been resumed for the last time. In that window every coroutine is
    resumed exactly k times (its last spin yield, then k - 1 more), n * k in
    all. With ``awaited`` the coroutines are ``async def`` and ``await
    null()`` instead; with ``instruments``, the run has them installed.
    """
    null = bl.null
    state = {"ready": 0, "go": False, "done": 0, "t0": 0.0, "t1": 0.0}

    def finished(st):
        st["done"] += 1
        if st["done"] == n:
            st["t1"] = perf_counter()

    def yielder():
        st = state
        st["ready"] += 1
        while not st["go"]:
            yield null()
        for _ in range(k - 1):
            yield null()
        finished(st)

    async def awaiter():
        st = state
        st["ready"] += 1
        while not st["go"]:
            await null()
        for _ in range(k - 1):
            await null()
        finished(st)

    worker = awaiter if awaited else yielder

    def root():
        yield bl.spawn(_fan_out(bl, worker, n))
        while state["ready"] < n:
            yield null()
        state["go"] = True
        state["t0"] = perf_counter()

    gc.collect()
    if instruments is None:
        bl.run(root())
    else:
        bl.run(root(), instruments=instruments)
    if state["done"] != n or not state["t1"]:
        raise RuntimeError("shape (a): only %d of %d coroutines finished"
                           % (state["done"], n))
    return (state["t1"] - state["t0"]) * 1e9 / (n * k)


def shape_b(bl, n, k, max_seconds=None):
    """ns per switch of one coroutine yielding null() k times while n sleep.

    The window runs from the busy coroutine's first yield to its return from
    the last one, after all n sleepers are asleep. With max_seconds, the loop
    stops early (checked every few yields) once that much time has passed,
    and the figure is taken over the yields done.
    """
    null = bl.null
    sleep = bl.sleep
    state = {"ready": 0}

    def sleeper():
        state["ready"] += 1
        yield sleep(SLEEP_SECONDS)

    chunk = max(1, min(256, k // 10))

    def root():
        yield bl.spawn(_fan_out(bl, sleeper, n))
        while state["ready"] < n:
            yield null()
        done = 0
        t0 = perf_counter()
        while done < k:
            c = min(chunk, k - done)
            for _ in range(c):
                yield null()
            done += c
            if max_seconds is not None and perf_counter() - t0 > max_seconds:
                break
        t1 = perf_counter()
        raise _Done((t1 - t0) * 1e9 / done, done)

    gc.collect()
    try:
        bl.run(root())
    except _Done as exc:
        return exc.args[0]
    raise RuntimeError("shape (b): run() returned before the busy coroutine finished")


def _step_counter(bl):
    """An instrument with one hook, before_step, that counts: what one hook costs."""
    class StepCounter(bl.Instrument):
        steps = 0

        def before_step(self, task):
            self.steps += 1

    return StepCounter()


def warm_up(bl, runs=5):
    """Small runs of each shape, so the first timed round is not the first.

    Several run() calls, not one long one: the first few run() calls of a
    process can be slower than the rest (CPython specializes code as it
    sees it run), and the timed rounds should all see the steady state.
    """
    for _ in range(runs):
        shape_a(bl, 50, 20)
        shape_b(bl, 10, 200)


def measure(bl, spec):
    """Run the bluelet measurements of ``spec``; return {"a": ns, "b": {N: ns}}.

    spec: {"a": {"n": int, "k": int}, "b": [{"n": int, "k": int}, ...],
    "max_seconds": float or null, "warm_up": bool}.
    """
    if spec.get("warm_up"):
        warm_up(bl)
    out = {"b": {}}
    if spec.get("a"):
        out["a"] = shape_a(bl, spec["a"]["n"], spec["a"]["k"])
    if spec.get("a_await"):
        out["a_await"] = shape_a(bl, spec["a_await"]["n"], spec["a_await"]["k"], awaited=True)
    if spec.get("a_instruments"):
        n, k = spec["a_instruments"]["n"], spec["a_instruments"]["k"]
        out["a_idle_instrument"] = shape_a(bl, n, k, instruments=[bl.Instrument()])
        out["a_step_counter"] = shape_a(bl, n, k, instruments=[_step_counter(bl)])
        out["a_accounting"] = shape_a(bl, n, k, instruments=[bl.Accounting()])
    for b in spec.get("b", ()):
        out["b"][str(b["n"])] = shape_b(bl, b["n"], b["k"], spec.get("max_seconds"))
    return out


# -- running as a worker script (also used by _micro_worker.py) ---------------

def import_installed_bluelet():
    """Import ``bluelet``; return (module, its realpath, its dist version or None).

    Raises RuntimeError if it is not installed under this interpreter's own
    prefix (so a worker never picks up the repository's package by accident).
    """
    import bluelet
    where = os.path.realpath(bluelet.__file__)
    prefix = os.path.realpath(sys.prefix)
    if not where.startswith(prefix + os.sep):
        raise RuntimeError("refusing bluelet from %s: not installed under %s" % (where, prefix))
    try:
        from importlib.metadata import version
        dist_version = version("bluelet")
    except Exception:  # importlib.metadata is 3.8+; the figure is only a label
        dist_version = None
    return bluelet, where, dist_version


def emit(result):
    """Add the interpreter's version to ``result`` and print it as one JSON line."""
    result["python"] = sys.version.split()[0]
    sys.stdout.write(json.dumps(result) + "\n")


def _main(argv):
    spec = json.loads(argv[1])
    try:
        bluelet, where, dist_version = import_installed_bluelet()
    except RuntimeError as exc:
        sys.stderr.write("%s\n" % exc)
        return 2
    result = measure(bluelet, spec)
    result["bluelet_file"] = where
    result["bluelet_version"] = dist_version
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
