"""Micro-benchmarks: switch, spawn and timers, bluelet against its peers.

Run from the repository root::

    python bench/micro.py                 # full run, about 1.5 min on 2 cores
    python bench/micro.py --quick         # smoke run, a few seconds
    python bench/micro.py --rounds 9 --json out.json

Implementations, each in its own subprocess (``bench/_micro_worker.py``,
``python -I``, cwd a temporary directory), so that nothing one of them does
to the interpreter (gevent, uvloop, the chosen bluelet core) leaks into the
others:

* floor -- a bare round robin of ``generator.send`` over a deque (switch only);
* bluelet (cython), bluelet (python) -- the installed bluelet's cores (--tree: a source tree instead); the pure one
  with ``BLUELET_PURE_PYTHON=1``, the compiled one with
  ``BLUELET_REQUIRE_EXTENSIONS=1`` (its row is left out if it is not built);
* bluelet 0.2.0 -- the PyPI release in the side venv
  ``bench/.venv-bluelet020``, set up on first use by ``bench/switch.py``'s
  machinery (needs PyPI once);
* asyncio, asyncio+uvloop, gevent, trio -- each left out, with a note, when it
  does not import (``pip install -r bench/requirements.txt``).

Benchmarks (the kernels and what each window covers are described in
``_micro_worker.py``):

* switch: 1,000 coroutines x 1,000 zero-length yields each (``null()``,
  ``asyncio.sleep(0)``, ``gevent.sleep(0)``, ``trio.lowlevel.checkpoint()``);
  ns per switch.
* spawn: spawn and join 100,000 coroutines that end at once; us per
  coroutine, with the cyclic GC as usual and (second column) paused.
* timers: 10,000 coroutines each sleeping five seeded random intervals of
  0-50 ms; CPU seconds (``time.process_time``) and lateness (wake time minus
  deadline: median and p99, ms).
* timer scaling (bluelet's two cores): 1,000 coroutines each sleeping 20
  seeded intervals of 0-1 ms beside 10, then 100,000, coroutines asleep for
  an hour; CPU us per timer, and the ratio of the two.

Every figure is the median of ``--rounds`` rounds (default 5, 1 with
``--quick``); a round runs every implementation once, in a rotating order.
``--quick`` also shrinks the sizes (100 yields, 10,000 spawns, 1,000 sleepers).
The goals these figures decide are printed as checks.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_micro_worker.py")

sys.path.insert(0, HERE)
import switch as switchbench  # noqa: E402  (the bluelet 0.2.0 side-venv machinery)
from _common import (add_run_args, cpu_model, default_rounds, markdown_rows,  # noqa: E402
                     median, say, write_json)

#: (key, label), in table order.
IMPLS = [
    ("floor", "floor (generator.send)"),
    ("cython", "bluelet (cython)"),
    ("python", "bluelet (python)"),
    ("old", "bluelet 0.2.0"),
    ("asyncio", "asyncio"),
    ("uvloop", "asyncio+uvloop"),
    ("gevent", "gevent"),
    ("trio", "trio"),
]
LABELS = dict(IMPLS)
#: worker IMPL argument for each key
WORKER_IMPL = {"floor": "floor", "cython": "bluelet", "python": "bluelet", "old": "bluelet020",
               "asyncio": "asyncio", "uvloop": "uvloop", "gevent": "gevent", "trio": "trio"}
MISSING_STATUS = 3


# -- machine ------------------------------------------------------------------

def machine_info():
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": "%s (%s)" % (platform.python_version(), platform.python_implementation()),
        "os": "%s %s %s" % (platform.system(), platform.release(), platform.machine()),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# -- configuration ----------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="switch / spawn / timers micro-benchmarks: bluelet's two cores, "
                    "bluelet 0.2.0, asyncio, uvloop, gevent, trio and the bare floor.")
    add_run_args(p, rounds_help="rounds; each figure is the median (default 5, 1 with --quick)",
                 quick_help="smoke run: 1 round, small sizes")
    p.add_argument("--only", metavar="KEYS",
                   help="comma-separated subset of: " + ", ".join(k for k, _ in IMPLS))
    p.add_argument("--no-old", action="store_true", help="leave bluelet 0.2.0 out")
    p.add_argument("--tree", help="directory holding the bluelet package to measure, for A/B "
                                  "experiments (default: the installed bluelet)")
    p.add_argument("--venv", default=switchbench.DEFAULT_VENV,
                   help="side venv for bluelet 0.2.0 (default bench/.venv-bluelet020)")
    p.add_argument("--switch-n", type=int, default=1000, help="switch: coroutines (1000)")
    p.add_argument("--switch-k", type=int, default=None,
                   help="switch: yields per coroutine (1000; 100 with --quick)")
    p.add_argument("--old-switch-k", type=int, default=None,
                   help="switch: yields per coroutine for bluelet 0.2.0 (default: the same)")
    p.add_argument("--spawn-n", type=int, default=None,
                   help="spawn: coroutines (100000; 10000 with --quick)")
    p.add_argument("--timers-n", type=int, default=None,
                   help="timers: coroutines (10000; 1000 with --quick)")
    p.add_argument("--seed", type=int, default=20240601, help="timers: random seed")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds one worker process may take (default 300)")
    args = p.parse_args(argv)
    default_rounds(args, 5)
    if args.switch_k is None:
        args.switch_k = 100 if args.quick else 1000
    if args.old_switch_k is None:
        args.old_switch_k = args.switch_k
    if args.spawn_n is None:
        args.spawn_n = 10000 if args.quick else 100000
    if args.timers_n is None:
        args.timers_n = 1000 if args.quick else 10000
    keys = [k for k, _ in IMPLS]
    if args.only:
        wanted = [k.strip() for k in args.only.split(",") if k.strip()]
        bad = [k for k in wanted if k not in keys]
        if bad:
            p.error("unknown implementation(s) %s; choose from %s" % (bad, ", ".join(keys)))
        args.keys = [k for k in keys if k in wanted]
    else:
        args.keys = keys
    if args.no_old and "old" in args.keys:
        args.keys.remove("old")
    if args.rounds < 1 or args.switch_n < 1 or args.switch_k < 2 or args.old_switch_k < 2 \
            or args.spawn_n < 1 or args.timers_n < 1:
        p.error("rounds and sizes must be >= 1, yields >= 2")
    return args


def spec_for(args, key):
    spec = {"warm_up": True, "tree": args.tree and os.path.abspath(args.tree),
            "switch": {"n": args.switch_n, "k": args.old_switch_k if key == "old" else args.switch_k}}
    if key == "floor":
        return spec
    spec["spawn"] = {"n": args.spawn_n}
    spec["timers"] = {"n": args.timers_n, "sleeps": 5, "max_ms": 50.0, "seed": args.seed}
    if key in ("cython", "python"):
        spec["core"] = key
        spec["timer_scale"] = dict(TIMER_SCALE, pending=timer_scale_pending(args))
    return spec


#: The timer-scaling shape: churners x sleeps timers fire beside each count of
#: pending ones (timer_scale_pending).
TIMER_SCALE = {"churners": 1000, "sleeps": 20, "seed": 7}


def timer_scale_pending(args):
    return [10, 10000 if args.quick else 100000]


# -- running the workers ----------------------------------------------------------

class Missing(Exception):
    pass


def worker_env(key):
    env = switchbench.clean_env()
    if key == "python":
        env["BLUELET_PURE_PYTHON"] = "1"
    elif key == "cython":
        env["BLUELET_REQUIRE_EXTENSIONS"] = "1"
    return env


def run_worker(py, key, spec, timeout):
    """Run one worker; return its JSON. Raises Missing or RuntimeError."""
    cmd = [py, "-I", WORKER, WORKER_IMPL[key], json.dumps(spec)]
    with tempfile.TemporaryDirectory(prefix="bluelet-micro-") as cwd:
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=worker_env(key), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, universal_newlines=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError("worker took longer than %g s (--timeout)" % timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    doc = None
    if lines:
        try:
            doc = json.loads(lines[-1])
        except ValueError:
            doc = None
    if proc.returncode == MISSING_STATUS and doc and "missing" in doc:
        raise Missing(doc["missing"])
    if proc.returncode != 0 or doc is None:
        err = proc.stderr.strip().splitlines()
        raise RuntimeError("worker exited with %d: %s" % (
            proc.returncode, err[-1] if err else "(no output)"))
    return doc


# -- formatting ---------------------------------------------------------------------

def fmt(v, unit, digits=None):
    if v is None:
        return "n/a"
    if digits is None:
        a = abs(v)
        digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 else 3
    return "{:,.{d}f} {u}".format(v, d=digits, u=unit).strip()


def fmt_ratio(r):
    if r is None:
        return "n/a"
    return "%.2f×" % r if r < 100 else "{:,.0f}×".format(r)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_range(values):
    """'min–max' of a figure's rounds."""
    return "%s–%s" % (fmt(min(values), ""), fmt(max(values), ""))


def table(head, rows, align=None):
    align = align or ["---"] + ["---:"] * (len(head) - 1)
    return markdown_rows([head, align] + rows)


def measured(section):
    """(label, result) for each implementation in ``section``, in table order."""
    for key, label in IMPLS:
        if key in section:
            yield label, section[key]


def render_markdown(doc, heading="##", machine=True, with_goals=True):
    """Markdown for a micro.py JSON document (also used by bench/run.py)."""
    p = doc["params"]
    res = doc["results"]
    lines = []
    h = heading
    lines.append("%s Micro-benchmarks (median of %d round%s%s)" % (
        h, doc["rounds"], "" if doc["rounds"] == 1 else "s", ", --quick" if doc["quick"] else ""))
    lines.append("")
    if machine:
        m = doc["machine"]
        lines.append("%s, %s cores, Python %s, %s." % (m["cpu"], m["cores"], m["python"], m["date"]))
        lines.append("")

    # switch
    sw = res.get("switch", {})
    floor = sw.get("floor", {}).get("median_ns")
    cy = sw.get("cython", {}).get("median_ns")
    lines.append("%s# switch: {:,} coroutines × {:,} yields, ns per switch".format(
        p["switch"]["n"], p["switch"]["k"]) % h)
    lines.append("")
    rows = []
    for label, r in measured(sw):
        rows.append([label + ("" if r["k"] == p["switch"]["k"] else " ({:,} yields)".format(r["k"])),
                     fmt(r["median_ns"], "ns"), fmt_range(r["rounds_ns"]),
                     fmt_ratio(ratio(r["median_ns"], floor)),
                     fmt_ratio(ratio(r["median_ns"], cy))])
    lines.append(table(["implementation", "ns/switch", "range (rounds)", "× floor",
                        "× bluelet (cython)"], rows))
    lines.append("")

    # spawn
    sp = res.get("spawn", {})
    cy = sp.get("cython", {}).get("median_us")
    cyn = sp.get("cython", {}).get("median_us_nogc")
    lines.append("%s# spawn: spawn and join {:,} coroutines that end at once, µs per coroutine"
                 .format(p["spawn"]["n"]) % h)
    lines.append("")
    rows = []
    for label, r in measured(sp):
        rows.append([label, fmt(r["median_us"], "µs"), fmt_range(r["rounds_us"]),
                     fmt_ratio(ratio(r["median_us"], cy)),
                     fmt(r["median_us_nogc"], "µs"), fmt_ratio(ratio(r["median_us_nogc"], cyn))])
    lines.append(table(["implementation", "µs/coroutine", "range (rounds)", "× bluelet (cython)",
                        "GC paused", "× bluelet (cython), GC paused"], rows))
    lines.append("")

    # timers
    tm = res.get("timers", {})
    cy = tm.get("cython", {}).get("cpu_s")
    t = p["timers"]
    lines.append("%s# timers: {:,} coroutines × {} sleeps of 0–{:g} ms (seeded), CPU and lateness"
                 .format(t["n"], t["sleeps"], t["max_ms"]) % h)
    lines.append("")
    rows = []
    for label, r in measured(tm):
        rows.append([label, fmt(r["cpu_s"], "s", 3), fmt_ratio(ratio(r["cpu_s"], cy)),
                     fmt(r["wall_s"], "s", 3), fmt(r["late_median_ms"], "ms", 2),
                     fmt(r["late_p99_ms"], "ms", 2)])
    lines.append(table(["implementation", "CPU", "× bluelet (cython)", "wall",
                        "lateness median", "lateness p99"], rows))
    lines.append("")

    ts = res.get("timer_scale", {})
    if ts:
        pend = p["timer_scale"]["pending"]
        lines.append("%s# timer scaling: {:,} coroutines × {} sleeps of 0–1 ms beside pending "
                     "timers, CPU per timer".format(p["timer_scale"]["churners"],
                                                    p["timer_scale"]["sleeps"]) % h)
        lines.append("")
        rows = []
        for label, r in measured(ts):
            us = r["median_us"]
            rows.append([label] + [fmt(us[str(n)], "µs", 3) for n in pend]
                        + [fmt_ratio(ratio(us[str(pend[-1])], us[str(pend[0])]))])
        lines.append(table(["implementation"] + ["{:,} pending".format(n) for n in pend]
                           + ["growth"], rows))
        lines.append("")

    if with_goals:
        lines.append("%s# Goals" % h)
        lines.append("")
        rows = []
        for g in doc["goals"]:
            status = "n/a" if g["met"] is None else ("**met**" if g["met"] else "**not met**")
            rows.append([g["goal"], g["measured"], status])
        lines.append(table(["goal", "measured", "status"], rows, ["---", "---", "---"]))
        lines.append("")
    if doc.get("notes"):
        lines.append("Notes:")
        lines.append("")
        for n in doc["notes"]:
            lines.append("- " + n)
        lines.append("")
    return "\n".join(lines)


def goals(results):
    sw, sp = results.get("switch", {}), results.get("spawn", {})
    get = lambda d, k, f: d.get(k, {}).get(f)  # noqa: E731
    out = []

    r = ratio(get(sw, "cython", "median_ns"), get(sw, "floor", "median_ns"))
    out.append({"goal": "compiled switch ≤ 1.5× the floor", "ratio": r, "target": 1.5,
                "measured": "%s%s (%s vs %s)" % (
                    fmt_ratio(r), "" if r is None else " the floor",
                    fmt(get(sw, "cython", "median_ns"), "ns"),
                    fmt(get(sw, "floor", "median_ns"), "ns")),
                "met": None if r is None else r <= 1.5})
    r = ratio(get(sw, "python", "median_ns"), get(sw, "cython", "median_ns"))
    out.append({"goal": "compiled ≥ 2.5× faster than pure on switch", "ratio": r, "target": 2.5,
                "measured": "%s (%s vs %s)" % (
                    fmt_ratio(r), fmt(get(sw, "python", "median_ns"), "ns"),
                    fmt(get(sw, "cython", "median_ns"), "ns")),
                "met": None if r is None else r >= 2.5})
    r = ratio(get(sp, "python", "median_us"), get(sp, "cython", "median_us"))
    rn = ratio(get(sp, "python", "median_us_nogc"), get(sp, "cython", "median_us_nogc"))
    out.append({"goal": "compiled ≥ 2× faster than pure on spawn", "ratio": r, "target": 2.0,
                "ratio_gc_paused": rn,
                "measured": "%s (%s vs %s); GC paused: %s" % (
                    fmt_ratio(r), fmt(get(sp, "python", "median_us"), "µs"),
                    fmt(get(sp, "cython", "median_us"), "µs"), fmt_ratio(rn)),
                "met": None if r is None else r >= 2.0})
    ts = results.get("timer_scale", {})
    for key in ("cython", "python"):
        us = ts.get(key, {}).get("median_us")
        if not us:
            continue
        lo, hi = min(us, key=int), max(us, key=int)
        r = ratio(us[hi], us[lo])
        out.append({"goal": "%s: CPU per timer with {:,} pending ≤ 2× that with {:,}"
                    .format(int(hi), int(lo)) % ("compiled" if key == "cython" else "pure"),
                    "ratio": r, "target": 2.0,
                    "measured": "%s (%s vs %s)" % (fmt_ratio(r), fmt(us[hi], "µs", 3),
                                                   fmt(us[lo], "µs", 3)),
                    "met": None if r is None else r <= 2.0})
    return out


# -- main -------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    notes = []
    py = {k: sys.executable for k in args.keys}

    if "old" in args.keys:
        try:
            py["old"] = switchbench.ensure_old_venv(args.venv)
        except Exception as exc:
            msg = ("bluelet 0.2.0 left out: could not set up the side venv %s with %s "
                   "(PyPI is needed on first use): %s"
                   % (args.venv, switchbench.OLD_REQUIREMENT, str(exc).strip().splitlines()[0]))
            say(msg)
            notes.append(msg)
            args.keys.remove("old")
    if args.no_old:
        notes.append("bluelet 0.2.0 left out (--no-old)")

    raw = {k: [] for k in args.keys}
    info = {}
    active = list(args.keys)
    for r in range(args.rounds):
        say("round %d/%d ..." % (r + 1, args.rounds))
        order = active[r % len(active):] + active[:r % len(active)] if active else []
        for key in order:
            if key not in active:
                continue
            t0 = time.perf_counter()
            try:
                res = run_worker(py[key], key, spec_for(args, key), args.timeout)
            except Missing as exc:
                msg = "%s left out: %s" % (LABELS[key], exc)
                if key in ("uvloop", "gevent", "trio"):
                    msg += " (pip install -r bench/requirements.txt)"
                say(msg)
                notes.append(msg)
                active.remove(key)
                del raw[key]
                continue
            except Exception as exc:
                msg = "%s left out: its worker failed: %s" % (LABELS[key], exc)
                say(msg)
                notes.append(msg)
                active.remove(key)
                del raw[key]
                continue
            say("  %-24s %5.1f s" % (LABELS[key], time.perf_counter() - t0))
            raw[key].append(res)
            info[key] = dict(res.get("info") or {}, python=res.get("python"))

    results = {"switch": {}, "spawn": {}, "timers": {}, "timer_scale": {}}
    for key, runs in raw.items():
        if not runs:
            continue
        ns = [x["switch_ns"] for x in runs]
        k = args.old_switch_k if key == "old" else args.switch_k
        results["switch"][key] = {"median_ns": median(ns), "rounds_ns": ns,
                                  "n": args.switch_n, "k": k}
        if key == "floor":
            continue
        us = [x["spawn_us"] for x in runs]
        usn = [x["spawn_us_nogc"] for x in runs]
        results["spawn"][key] = {"median_us": median(us), "rounds_us": us,
                                 "median_us_nogc": median(usn), "rounds_us_nogc": usn,
                                 "n": args.spawn_n,
                                 "shape": "spawn and join each in turn" if key == "old"
                                 else "spawn all, then join each"}
        tms = [x["timers"] for x in runs]
        results["timers"][key] = dict(
            {f: median([t[f] for t in tms]) for f in
             ("cpu_s", "wall_s", "late_median_ms", "late_p99_ms", "late_max_ms")},
            n=args.timers_n, rounds=tms)
        if runs[0].get("timer_scale_us"):
            tss = [x["timer_scale_us"] for x in runs]
            results["timer_scale"][key] = {
                "median_us": {p: median([t[p] for t in tss]) for p in tss[0]}, "rounds_us": tss}

    if "old" in raw:
        sizes = ("the same sizes as the others" if args.old_switch_k == args.switch_k
                 else "{:,} yields per coroutine on switch (others {:,})".format(
                     args.old_switch_k, args.switch_k))
        notes.append("bluelet 0.2.0 ran %s; on spawn it joins each coroutine right after "
                     "spawning it (its join() of a coroutine that has already finished never "
                     "returns); on timers its sleepers are spawned by a fan-out (it handles one "
                     "spawn per pass over all coroutines)." % sizes)
    notes.append("Each implementation runs in its own `python -I` subprocess per round, after a "
                 "small warm-up; spawn's first column has the cyclic GC as usual, the "
                 "'GC paused' column the same run with gc.disable() during the window.")

    doc = {
        "benchmark": "bench/micro.py",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": machine_info(),
        "rounds": args.rounds,
        "quick": args.quick,
        "params": {"switch": {"n": args.switch_n, "k": args.switch_k,
                              "k_old": args.old_switch_k},
                   "spawn": {"n": args.spawn_n},
                   "timers": {"n": args.timers_n, "sleeps": 5, "max_ms": 50.0,
                              "seed": args.seed},
                   "timer_scale": dict(TIMER_SCALE, pending=timer_scale_pending(args))},
        "implementations": {k: {"label": LABELS[k], "info": info.get(k)} for k in raw},
        "units": {"switch": "ns per switch", "spawn": "µs per coroutine",
                  "timers": "CPU s, wall s, lateness ms",
                  "timer_scale": "CPU µs per timer, by pending timers"},
        "results": results,
        "goals": goals(results),
        "notes": notes,
    }
    doc["seconds"] = time.perf_counter() - started
    doc["notes"].append("took %.0f s" % doc["seconds"])
    print(render_markdown(doc))
    if args.json:
        write_json(args.json, doc, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
