"""Cost of one ``yield bluelet.null()`` switch, ours against bluelet 0.2.0.

Run from the repository root (no arguments needed)::

    python bench/switch.py              # full run: seconds (plus the venv, first time)
    python bench/switch.py --quick      # smoke run, a few seconds
    python bench/switch.py --json out.json

What is measured: the time per switch in ns -- one coroutine yielding
``null()`` and being resumed -- in two shapes:

(a) 1,000 coroutines all busy, each yielding ``null()`` K times (K = 200:
    200,000 switches). The window opens once all are spawned and closes when
    the last has been resumed for the last time; figure = window / (1,000 K).
(b) one busy coroutine yielding ``null()`` K times while N = 10, 1,000 and
    10,000 other coroutines ``sleep(3600)`` for the whole run. The window runs
    from the busy coroutine's first yield to its return from the last one
    (spawning the sleepers is outside it); figure = window / K. A scheduler
    whose cost per event does not grow with the program shows the same figure
    for every N; bluelet 0.2.0 scans every coroutine on every pass.

(a) is also measured for this repository's cores with ``async def``
coroutines that ``await null()``, in a second table: the cost of the
``await`` style against the ``yield`` style, side by side in the same
rounds (goal: at most 1.5x on the compiled core).

Rows:

* floor -- a bare round robin over generators (``deque``: popleft, ``send``,
  append), no scheduler at all; in (b) the N others are suspended generators
  kept off the run queue.
* bluelet (python), bluelet (cython) -- this repository's cores, both timed
  in this process, switched with ``bluelet._impl.use()``; the cython row is
  left out when the compiled core is not built.
* bluelet 0.2.0 -- the PyPI release, installed on first use into the side
  venv ``bench/.venv-bluelet020`` (needs network access to PyPI; when that
  fails the row is left out with a message). The same kernels
  (``bench/_switch_worker.py``) run there as a subprocess in isolated mode
  (``-I``, cwd a temporary directory), so it imports 0.2.0, never ours.

Each figure is the median of R rounds (``--rounds``, default 5); the rounds
of the different implementations are interleaved. In (b), 0.2.0 gets a
smaller K for large N (K = min(20,000, 10**6 / N)) so that a round takes
well under a second; ours keep K = 20,000. Every (b) loop also stops early
once it has run ``--max-seconds`` (default 3 s), so a slow core cannot make
the run take forever. The last columns: (b) at the largest N over (b) at the
smallest N (1.00x means no growth), and each row's (a) over 0.2.0's (a)
(below 1 is faster than 0.2.0).

The sleepers are stopped by an exception from the busy coroutine, which
makes ``run()`` close all remaining coroutines in one sweep (the same in
0.2.0 and ours); killing 10,000 coroutines one ``kill()`` at a time would
cost 0.2.0 minutes.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_switch_worker.py")
DEFAULT_VENV = os.path.join(HERE, ".venv-bluelet020")
OLD_REQUIREMENT = "bluelet==0.2.0"

sys.path.insert(0, HERE)
import _switch_worker as kernels  # noqa: E402
from _common import (add_run_args, default_rounds, json_header, markdown_rows,  # noqa: E402
                     median, say, write_json)

FLOOR = "floor"
OLD = "bluelet 0.2.0"


# -- configuration ------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Cost of one `yield bluelet.null()` switch (ns): floor, "
                    "our cores and bluelet 0.2.0, in two shapes.")
    add_run_args(p, rounds_help="rounds per figure; the median is shown (default 5, 1 with --quick)",
                 quick_help="smoke run: 1 round, K divided by 10",
                 json_help="also write the results as JSON to PATH")
    p.add_argument("--busy", type=int, default=1000,
                   help="(a): number of busy coroutines (default 1000)")
    p.add_argument("--k-a", type=int, default=200,
                   help="(a): null() yields per coroutine (default 200)")
    p.add_argument("--sizes", default="10,1000,10000",
                   help="(b): comma-separated numbers of sleepers (default 10,1000,10000)")
    p.add_argument("--k-b", type=int, default=20000,
                   help="(b): null() yields of the busy coroutine (default 20000; "
                        "0.2.0 gets min(K, 10**6 / N))")
    p.add_argument("--max-seconds", type=float, default=3.0,
                   help="(b): stop a loop early after this long (default 3)")
    p.add_argument("--venv", default=DEFAULT_VENV,
                   help="side venv for bluelet 0.2.0 (default bench/.venv-bluelet020)")
    p.add_argument("--no-old", action="store_true", help="leave bluelet 0.2.0 out")
    p.add_argument("--tree", action="store_true",
                   help="measure this repository's source tree (built in place) "
                        "instead of the installed bluelet")
    args = p.parse_args(argv)
    default_rounds(args, 5)
    if args.quick:
        args.k_a = max(2, args.k_a // 10)
        args.k_b = max(10, args.k_b // 10)
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if args.rounds < 1 or args.busy < 1 or args.k_a < 2 or args.k_b < 1 or not args.sizes \
            or min(args.sizes) < 1:
        p.error("rounds, --busy, --k-b and every size must be >= 1, --k-a >= 2")
    return args


def old_k(args, n):
    """0.2.0's K in (b): its cost per switch grows with N."""
    return max(10, min(args.k_b, int(10 ** (5 if args.quick else 6) // n)))


# -- our cores, in process ----------------------------------------------------

def import_ours(tree):
    """Return (bluelet module, [core names]) or (None, reason)."""
    if tree:
        sys.path.insert(0, REPO)
    try:
        import bluelet
        import bluelet._impl as impl
    except Exception as exc:  # not written yet, broken, or 0.2.0 on the path
        return None, "cannot import this repository's bluelet: %s: %s" % (
            type(exc).__name__, exc)
    cores = []
    for name in ("python", "cython"):
        try:
            impl.load(name)
        except ImportError:
            continue
        cores.append(name)
    return bluelet, cores


def measure_ours(bluelet, core, spec):
    impl = bluelet._impl
    old = impl.use(core)
    try:
        if bluelet.IMPLEMENTATION != core:
            raise RuntimeError("use(%r) left IMPLEMENTATION = %r" % (core, bluelet.IMPLEMENTATION))
        return kernels.measure(bluelet, spec)
    finally:
        impl.use(old)


# -- bluelet 0.2.0, in its side venv -----------------------------------------

def venv_python(venv):
    if os.name == "nt":
        return os.path.join(venv, "Scripts", "python.exe")
    return os.path.join(venv, "bin", "python")


def clean_env():
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                "BLUELET_PURE_PYTHON", "BLUELET_REQUIRE_EXTENSIONS"):
        env.pop(var, None)
    return env


def run_old_worker(py, spec, timeout=900):
    """Run the kernels under the venv's interpreter; return its JSON."""
    with tempfile.TemporaryDirectory(prefix="bluelet-bench-") as cwd:
        proc = subprocess.run(
            [py, "-I", WORKER, json.dumps(spec)], cwd=cwd, env=clean_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("worker exited with %d: %s" % (proc.returncode, proc.stderr.strip()[-2000:]))
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError("worker printed nothing; stderr: %s" % proc.stderr.strip()[-2000:])
    return json.loads(lines[-1])


def old_ready(py):
    """True if the venv's interpreter imports bluelet 0.2.0 from the venv."""
    if not os.path.exists(py):
        return False
    try:
        out = run_old_worker(py, {"b": []}, timeout=120)
    except Exception:
        return False
    return out.get("bluelet_version") == "0.2.0"


def _python_runs(py):
    try:
        return subprocess.run([py, "-I", "-c", "pass"], timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_old_venv(venv):
    """Create the side venv with bluelet 0.2.0 if needed; return its python.

    Raises RuntimeError with a one-line reason (details go to stderr).
    """
    py = venv_python(venv)
    if old_ready(py):
        return py
    say("setting up %s with %s (first use; needs PyPI) ..." % (venv, OLD_REQUIREMENT))
    steps = []
    if not _python_runs(py):
        # Missing, or a broken venv (e.g. its base interpreter moved): (re)create.
        steps.append([sys.executable, "-m", "venv", "--clear", venv])
    steps.append([py, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                  "--no-input", OLD_REQUIREMENT])
    for cmd in steps:
        what = "python -m venv" if cmd[0] == sys.executable else "pip install " + OLD_REQUIREMENT
        try:
            proc = subprocess.run(cmd, timeout=600, env=clean_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, universal_newlines=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError("%s: %s" % (what, exc))
        if proc.returncode != 0:
            out = proc.stdout.strip()
            if out:
                say(out[-3000:])
            last = out.splitlines()[-1] if out else "exit status %d" % proc.returncode
            raise RuntimeError("%s failed: %s" % (what, last))
    if not old_ready(py):
        raise RuntimeError("the venv's python does not import bluelet 0.2.0 after installing it")
    return py


# -- output -----------------------------------------------------------------

def fmt_ns(ns):
    if ns is None:
        return "n/a"
    if ns < 1e3:
        return "%.0f ns" % ns
    if ns < 1e6:
        return "%.3g µs" % (ns / 1e3)
    return "%.3g ms" % (ns / 1e6)


def fmt_ratio(r):
    if r is None:
        return "n/a"
    if r < 10:
        return "%.2f×" % r
    return "{:,.0f}×".format(r)


def build_table(args, results):
    lo, hi = args.sizes[0], args.sizes[-1]
    head = ["implementation", "(a) {:,} busy".format(args.busy)]
    head += ["(b) N={:,}".format(n) for n in args.sizes]
    if hi != lo:
        head.append("(b) N={:,} / N={:,}".format(hi, lo))
    head.append("(a) vs 0.2.0")
    rows = [head, ["---"] + ["---:"] * (len(head) - 1)]
    old_a = results.get(OLD, {}).get("a", {}).get("median_ns")
    for name, res in results.items():
        b = res["b"]
        row = [name, fmt_ns(res["a"]["median_ns"])]
        row += [fmt_ns(b[str(n)]["median_ns"]) for n in args.sizes]
        if hi != lo:
            row.append(fmt_ratio(b[str(hi)]["median_ns"] / b[str(lo)]["median_ns"]))
        row.append(fmt_ratio(res["a"]["median_ns"] / old_a) if old_a else "n/a")
        rows.append(row)
    return markdown_rows(rows)


def build_style_table(styles):
    rows = [["core", "`yield null()`", "`await null()`", "await / yield", "goal (compiled)"],
            ["---", "---:", "---:", "---:", "---"]]
    for core, st in styles.items():
        r = st["await_ns"] / st["yield_ns"]
        goal = ("**met** (≤ 1.5×)" if r <= 1.5 else "**not met** (≤ 1.5×)") \
            if core == "cython" else ""
        rows.append(["bluelet (%s)" % core, fmt_ns(st["yield_ns"]), fmt_ns(st["await_ns"]),
                     fmt_ratio(r), goal])
    return markdown_rows(rows)


def build_hooks_table(hooks):
    rows = [["core", "no instrument", "an instrument with no hook", "ratio",
             "a `before_step` hook", "ratio", "`Accounting`", "ratio"],
            ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]]
    for core, h in hooks.items():
        row = ["bluelet (%s)" % core, fmt_ns(h["none_ns"])]
        for kind in ("idle_ns", "counter_ns", "accounting_ns"):
            row += [fmt_ns(h[kind]), fmt_ratio(h[kind] / h["none_ns"])]
        rows.append(row)
    return markdown_rows(rows)


# -- main -------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    old_spec = {"a": {"n": args.busy, "k": args.k_a},
                "b": [{"n": n, "k": old_k(args, n)} for n in args.sizes],
                "max_seconds": args.max_seconds, "warm_up": True}
    ours_spec = dict(old_spec, a_await=old_spec["a"], a_instruments=old_spec["a"],
                     b=[{"n": n, "k": args.k_b} for n in args.sizes])

    notes = []
    bluelet, cores = import_ours(args.tree)
    if bluelet is None:
        notes.append(cores)
        say(cores)
        cores = []
    else:
        say("our bluelet: %s (cores: %s)" % (os.path.dirname(bluelet.__file__), ", ".join(cores)))
        if "cython" not in cores:
            notes.append("bluelet (cython) left out: the compiled core is not built")

    old_py = None
    if args.no_old:
        notes.append("bluelet 0.2.0 left out (--no-old)")
    else:
        try:
            old_py = ensure_old_venv(args.venv)
        except Exception as exc:
            msg = ("bluelet 0.2.0 left out: could not set up the side venv %s with %s "
                   "(network access to PyPI is needed on first use): %s"
                   % (args.venv, OLD_REQUIREMENT, str(exc).strip()))
            say(msg)
            notes.append(msg.splitlines()[0])

    impls = [FLOOR] + ["bluelet (%s)" % c for c in cores] + ([OLD] if old_py else [])
    raw = {name: {"a": [], "b": {str(n): [] for n in args.sizes}} for name in impls}
    awaited = {core: [] for core in cores}
    instrumented = {core: {"idle": [], "counter": [], "accounting": []} for core in cores}
    old_info = {}

    def record(name, res):
        raw[name]["a"].append(res["a"])
        for n in args.sizes:
            raw[name]["b"][str(n)].append(res["b"][str(n)])

    for r in range(args.rounds):
        say("round %d/%d ..." % (r + 1, args.rounds))
        record(FLOOR, {"a": kernels.floor_a(args.busy, args.k_a),
                       "b": {str(n): kernels.floor_b(n, args.k_b) for n in args.sizes}})
        for core in cores:
            res = measure_ours(bluelet, core, dict(ours_spec, warm_up=(r == 0)))
            record("bluelet (%s)" % core, res)
            awaited[core].append(res["a_await"])
            instrumented[core]["idle"].append(res["a_idle_instrument"])
            instrumented[core]["counter"].append(res["a_step_counter"])
            instrumented[core]["accounting"].append(res["a_accounting"])
        if OLD in raw:
            try:
                res = run_old_worker(old_py, old_spec)
            except Exception as exc:
                msg = "bluelet 0.2.0 left out: its worker failed: %s" % exc
                say(msg)
                notes.append(msg.splitlines()[0])
                del raw[OLD]
            else:
                old_info = {k: res[k] for k in ("bluelet_file", "bluelet_version", "python")}
                record(OLD, res)

    results = {}
    for name, d in raw.items():
        k_b = {str(n): (old_k(args, n) if name == OLD else args.k_b) for n in args.sizes}
        results[name] = {
            "a": {"n": args.busy, "k": args.k_a, "median_ns": median(d["a"]), "rounds_ns": d["a"]},
            "b": {str(n): {"n": n, "k": k_b[str(n)], "median_ns": median(d["b"][str(n)]),
                           "rounds_ns": d["b"][str(n)]} for n in args.sizes},
        }

    elapsed = time.perf_counter() - started
    k_old = " / ".join("{:,}".format(old_k(args, n)) for n in args.sizes)
    print("## `yield null()` switch cost: median of %d round%s, time per switch"
          % (args.rounds, "" if args.rounds == 1 else "s"))
    print()
    print("Python %s (%s) on %s %s, %d CPUs%s." % (
        platform.python_version(), platform.python_implementation(), platform.system(),
        platform.machine(), os.cpu_count() or 0, "; --quick" if args.quick else ""))
    print("(a) {:,} coroutines all busy, K={:,} yields each ({:,} switches). "
          "(b) one busy coroutine, N others asleep; K={:,}{}."
          .format(args.busy, args.k_a, args.busy * args.k_a, args.k_b,
                  " (floor, ours), %s (0.2.0)" % k_old if OLD in results else ""))
    print()
    print(build_table(args, results))
    print()
    styles = {core: {"yield_ns": results["bluelet (%s)" % core]["a"]["median_ns"],
                     "await_ns": median(awaited[core]), "rounds_await_ns": awaited[core]}
              for core in cores}
    if styles:
        print("(a) again with `async def` coroutines that `await null()`, same rounds:")
        print()
        print(build_style_table(styles))
        print()
    hooks = {core: {"none_ns": results["bluelet (%s)" % core]["a"]["median_ns"],
                    "idle_ns": median(instrumented[core]["idle"]),
                    "counter_ns": median(instrumented[core]["counter"]),
                    "accounting_ns": median(instrumented[core]["accounting"])}
             for core in cores}
    if hooks:
        print("(a) again with instruments installed (`run(instruments=[...])`), same rounds: "
              "none; one that overrides no hook; one whose `before_step` counts steps; "
              "`bluelet.Accounting()`:")
        print()
        print(build_hooks_table(hooks))
        print()
    for note in notes:
        print("- " + note)
    print("- took %.0f s" % elapsed)

    if args.json:
        doc = json_header("bench/switch.py", "ns per switch (median of rounds)", argv)
        doc.update({
            "cpus": os.cpu_count(),
            "rounds": args.rounds,
            "quick": args.quick,
            "ours": None if bluelet is None else {"path": os.path.dirname(bluelet.__file__),
                                                  "version": getattr(bluelet, "__version__", None),
                                                  "cores": cores},
            "old": old_info or None,
            "notes": notes,
            "results": results,
            "await_style": styles,
            "instruments": hooks,
            "seconds": elapsed,
        })
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
