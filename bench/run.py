"""Run every benchmark and write bench/results/RESULTS.md and chart.png.

The one command, from the repository root::

    python bench/run.py              # everything (micro about 1.5 min, echo several)
    python bench/run.py --quick      # smoke run of everything, about a minute
    python bench/run.py --rounds 7   # passed through to each benchmark

Runs, one after the other (never at the same time, so that they do not
disturb each other):

* ``bench/micro.py`` -- switch, spawn, timers (see there);
* ``bench/echo.py``  -- echo throughput and idle scaling (see there);
* ``bench/http_files.py`` -- static files over HTTP (see there).

If echo or HTTP fails without producing figures, the results say so and the
rest is still written.

Each writes its figures as JSON (``micro.json``, ``echo.json``,
``http.json``); this script
then writes ``RESULTS.md`` (the machine, the bluelet measured, the goal
checks, every table) and ``chart.png`` (matplotlib, Agg backend), and prints
the Markdown. They go to ``bench/results/local/`` (not tracked), or to the
committed ``bench/results/`` with ``--update-results``.

Which bluelet is measured is asked of a ``python -I`` outside the tree: the
installed package, never a checkout's source tree. Without its compiled core
the run stops and says why (``--allow-missing-core`` goes on without the
compiled rows). ``BLUELET_PURE_PYTHON=1 python bench/run.py`` measures the
pure-Python build only. ``--quick`` and ``--rounds`` are passed through to both
benchmarks (without ``--rounds`` each uses its own default). Needs the peers
and tools of ``bench/requirements.txt``; without matplotlib the chart is
left out with a note.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MICRO = os.path.join(HERE, "micro.py")
ECHO = os.path.join(HERE, "echo.py")
HTTP = os.path.join(HERE, "http_files.py")
COMMITTED_OUT = os.path.join(HERE, "results")
LOCAL_OUT = os.path.join(COMMITTED_OUT, "local")

sys.path.insert(0, HERE)
import micro  # noqa: E402
import echo  # noqa: E402
import http_files  # noqa: E402
from _common import bluelet_under_test, describe_bluelet, missing_core, say  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description="Run bench/micro.py, bench/echo.py and "
                                            "bench/http_files.py; write "
                                            "bench/results/RESULTS.md and chart.png.")
    p.add_argument("--quick", action="store_true", help="smoke run of every benchmark")
    p.add_argument("--rounds", type=int, help="rounds per figure, passed to every benchmark")
    p.add_argument("--out", help="results directory (default bench/results/local, not tracked)")
    p.add_argument("--update-results", action="store_true",
                   help="write to the committed bench/results/ instead")
    p.add_argument("--allow-missing-core", action="store_true",
                   help="go on without the compiled core's rows if it is not installed")
    p.add_argument("--skip-micro", action="store_true", help="do not run bench/micro.py")
    p.add_argument("--skip-echo", action="store_true", help="do not run bench/echo.py")
    p.add_argument("--skip-http", action="store_true", help="do not run bench/http_files.py")
    p.add_argument("--reuse", action="store_true",
                   help="do not run anything; rebuild RESULTS.md and chart.png from the JSON "
                        "(and echo.md, http.md) already in --out")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = COMMITTED_OUT if args.update_results else LOCAL_OUT
    return args


def pure_only():
    """Whether BLUELET_PURE_PYTHON=1 asks for the pure build alone."""
    return os.environ.get("BLUELET_PURE_PYTHON", "") not in ("", "0")


def run_bench(script, json_path, args, timeout):
    """Run one benchmark script; return (doc or None, stdout, problem or None)."""
    if os.path.exists(json_path):
        os.remove(json_path)
    cmd = [sys.executable, script, "--json", json_path]
    if args.without_compiled:
        # Every row but the compiled core's.
        if script == MICRO:
            cmd += ["--only", ",".join(k for k, _ in micro.IMPLS if k != "cython")]
        else:
            servers = (echo if script == ECHO else http_files).SERVERS
            cmd += ["--servers", ",".join(k for k, _ in servers if k != "bluelet-cython")]
    if args.quick:
        cmd.append("--quick")
    if args.rounds is not None:
        cmd += ["--rounds", str(args.rounds)]
    say("$ " + " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd))
    t0 = time.perf_counter()
    try:
        # stderr (progress) goes straight to the terminal; stdout is the
        # script's Markdown, kept.
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, universal_newlines=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return None, exc.stdout or "", "timed out after %d s" % timeout
    except OSError as exc:
        return None, "", str(exc)
    say("  (%s: exit status %d after %.0f s)" % (os.path.basename(script), proc.returncode,
                                                 time.perf_counter() - t0))
    doc = None
    if os.path.exists(json_path):
        try:
            with open(json_path) as f:
                doc = json.load(f)
        except ValueError as exc:
            return None, proc.stdout, "its JSON does not parse: %s" % exc
    problem = None
    if proc.returncode != 0:
        problem = "exited with status %d" % proc.returncode
    if doc is None:
        problem = (problem + ", " if problem else "") + "wrote no JSON"
    return doc, proc.stdout, problem


# -- RESULTS.md -------------------------------------------------------------------------------

def fmt_ratio(r):
    return "n/a" if r is None else "%.2f×" % r


def goals_table(micro_doc, echo_doc, http_doc):
    rows = []
    for doc, where in ((micro_doc, "micro"), (http_doc, "http")):
        for g in (doc or {}).get("goals", []):
            rows.append((g["goal"], g["measured"], g["met"], False, where))
    if echo_doc:
        for g in echo_doc.get("goals", []):
            rows.append((g.get("goal", "?"), fmt_ratio(g.get("value")), g.get("met"),
                         g.get("disturbed", False), "echo"))
    if not rows:
        return "No goal could be checked (no benchmark produced figures).\n"
    out = ["| goal | measured | status | benchmark |", "| --- | --- | --- | --- |"]
    for goal, measured, met, disturbed, where in rows:
        status = "n/a" if met is None else ("**met**" if met else "**not met**")
        if disturbed and met is not None:
            status += " (disturbed: other processes were busy)"
        out.append("| %s | %s | %s | %s |" % (goal, measured, status, where))
    return "\n".join(out) + "\n"


def machine_section(machine, args, end_load=True):
    la = machine.get("loadavg")
    rows = [
        ("bluelet", describe_bluelet(args.bluelet) if getattr(args, "bluelet", None) else "n/a"),
        ("CPU", machine["cpu"]),
        ("cores", str(machine["cores"])),
        ("Python", machine["python"]),
        ("OS", machine["os"]),
        ("date", machine["date"]),
        ("load average (1, 5, 15 min) at start", "n/a" if not la else "%.2f %.2f %.2f" % tuple(la)),
        ("load average at end", "n/a" if not (end_load and hasattr(os, "getloadavg"))
         else "%.2f %.2f %.2f" % os.getloadavg()),
        ("command", "`%spython bench/run.py%s%s`" % (
            "BLUELET_PURE_PYTHON=1 " if pure_only() else "", " --quick" if args.quick else "",
            " --rounds %d" % args.rounds if args.rounds is not None else "")),
    ]
    out = ["| machine | |", "| --- | --- |"]
    out += ["| %s | %s |" % r for r in rows]
    return "\n".join(out) + "\n"


def build_markdown(args, machine, micro_doc, micro_problem, echo_doc, echo_md, echo_problem,
                   http_doc, http_md, http_problem, chart_note):
    parts = ["# bluelet benchmarks", ""]
    parts.append("Written by `python bench/run.py` (bench/micro.py, bench/echo.py, "
                 "bench/http_files.py); figures "
                 "are medians over rounds, all measured on this machine in one run.")
    parts.append("")
    parts.append(machine_section(machine, args, end_load=not args.reuse))
    parts.append("## Goals")
    parts.append("")
    parts.append(goals_table(micro_doc, echo_doc, http_doc))
    if micro_doc:
        parts.append(micro.render_markdown(micro_doc, heading="##", machine=False,
                                           with_goals=False))
        if micro_problem:
            parts.append("bench/micro.py: %s.\n" % micro_problem)
    else:
        parts.append("## Micro-benchmarks\n")
        parts.append("Not measured: %s.\n" % (micro_problem or "skipped"))
    if echo_md and echo_md.strip():
        parts.append(echo_md.strip() + "\n")
        if echo_problem:
            parts.append("bench/echo.py %s.\n" % echo_problem)
    else:
        parts.append("## Echo and idle scaling\n")
        parts.append("Echo is missing: %s.\n" % (echo_problem or "skipped"))
    if http_md and http_md.strip():
        parts.append(http_md.strip() + "\n")
        if http_problem:
            parts.append("bench/http_files.py %s.\n" % http_problem)
    else:
        parts.append("## HTTP static files\n")
        parts.append("HTTP is missing: %s.\n" % (http_problem or "skipped"))
    if chart_note:
        parts.append(chart_note + "\n")
    return "\n".join(parts)


# -- chart.png --------------------------------------------------------------------------------

FIXED_COLORS = {
    "bluelet (cython)": "#1f4e99", "bluelet (python)": "#6f9fe0", "bluelet 0.2.0": "#a8b8cc",
    "floor (generator.send)": "#444444", "C epoll (reference)": "#444444",
    "asyncio": "#e07b39", "asyncio streams": "#e07b39", "asyncio protocols": "#f2b486",
    "asyncio+uvloop": "#c9a227", "uvloop streams": "#c9a227", "uvloop protocols": "#e8d27a",
    "gevent": "#4f9d69", "trio": "#9b5fb0",
}
SPARE_COLORS = ["#b05f9e", "#7f7f7f", "#17becf", "#bcbd22"]


def color_for(label, spare):
    """One colour per implementation, the same in every panel."""
    if label in FIXED_COLORS:
        return FIXED_COLORS[label]
    if label not in spare:
        spare[label] = SPARE_COLORS[len(spare) % len(SPARE_COLORS)]
    return spare[label]


def _hbar(ax, labels, values, peers, title, unit, log=False, ref=None, ref_label=None,
          texts=None):
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=[color_for(l, peers) for l in labels], height=0.7)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(unit, fontsize=9)
    hi = max(values) if values else 1
    longest = max(len(t) for t in texts) if texts else 8
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 2, hi * (3 + 0.6 * longest))
    else:
        ax.set_xlim(0, hi * (1.08 + 0.025 * longest))
    for yi, v, t in zip(y, values, texts):
        ax.text(v * 1.06 if log else v + hi * 0.01, yi, t, va="center", fontsize=8)
    if ref is not None:
        ax.axvline(ref, color="#444444", linestyle="--", linewidth=1, label=ref_label)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    ax.grid(axis="x", alpha=0.3)


def draw_chart(path, machine, micro_doc, echo_doc):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = {}
    fig = plt.figure(figsize=(20, 11.5))
    gs = fig.add_gridspec(2, 3, hspace=0.42, wspace=0.42)
    fig.suptitle("bluelet benchmarks — %s, %s cores, Python %s, %s%s" % (
        machine["cpu"], machine["cores"], machine["python"].split()[0], machine["date"],
        " (--quick)" if (micro_doc or {}).get("quick") or (echo_doc or {}).get("quick") else ""),
        fontsize=13)

    def empty(ax, title, why):
        ax.set_title(title, fontsize=11)
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=10,
                color="#888888", wrap=True)
        ax.set_xticks([])
        ax.set_yticks([])

    ax_sw, ax_sp, ax_tm = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[0, 2])
    if micro_doc:
        res = micro_doc["results"]
        labels_of = {k: micro.LABELS[k] for k in micro.LABELS}
        p = micro_doc["params"]

        sw = res.get("switch", {})
        keys = [k for k, _ in micro.IMPLS if k in sw]
        floor = sw.get("floor", {}).get("median_ns")
        _hbar(ax_sw, [labels_of[k] for k in keys], [sw[k]["median_ns"] for k in keys], peers,
              "switch: {:,} coroutines × {:,} yields".format(p["switch"]["n"], p["switch"]["k"]),
              "ns per switch (log scale, lower is better)", log=True,
              texts=["%.0f ns" % sw[k]["median_ns"] for k in keys],
              ref=None if floor is None else floor * 1.5,
              ref_label=None if floor is None else "goal: 1.5× floor")

        sp = res.get("spawn", {})
        keys = [k for k, _ in micro.IMPLS if k in sp]
        if keys:
            _hbar(ax_sp, [labels_of[k] for k in keys], [sp[k]["median_us"] for k in keys], peers,
                  "spawn + join {:,} coroutines".format(p["spawn"]["n"]),
                  "µs per coroutine (lower is better)",
                  texts=["%.2f µs" % sp[k]["median_us"] for k in keys])
        else:
            empty(ax_sp, "spawn", "not measured")

        tm = res.get("timers", {})
        keys = [k for k, _ in micro.IMPLS if k in tm]
        if keys:
            _hbar(ax_tm, [labels_of[k] for k in keys], [tm[k]["cpu_s"] for k in keys], peers,
                  "timers: {:,} coroutines × {} sleeps 0–{:g} ms".format(
                      p["timers"]["n"], p["timers"]["sleeps"], p["timers"]["max_ms"]),
                  "CPU seconds (log scale, lower is better); "
                  "text: CPU, then lateness median / p99", log=True,
                  texts=["%.3f s · late %.1f / %.1f ms" % (
                      tm[k]["cpu_s"], tm[k]["late_median_ms"], tm[k]["late_p99_ms"])
                      for k in keys])
        else:
            empty(ax_tm, "timers", "not measured")
    else:
        for ax, t in ((ax_sw, "switch"), (ax_sp, "spawn"), (ax_tm, "timers")):
            empty(ax, t, "micro benchmarks not measured")

    ax_echo = fig.add_subplot(gs[1, 0:2])
    ax_idle = fig.add_subplot(gs[1, 2])
    if echo_doc and echo_doc.get("results"):
        cells = echo_doc.get("cells") or []
        servers = list(echo_doc["results"].keys())
        ncell, nsrv = len(cells), len(servers)
        width = 0.8 / max(nsrv, 1)
        for i, name in enumerate(servers):
            vals = []
            for c in cells:
                v = echo_doc["results"][name].get(c["key"], {}).get("median_rps")
                vals.append(v if v else 0)
            xs = [j + (i - (nsrv - 1) / 2) * width for j in range(ncell)]
            ax_echo.bar(xs, [v / 1e3 for v in vals], width=width * 0.95, label=name,
                        color=color_for(name, peers),
                        hatch="//" if "reference" in name else None,
                        edgecolor="white" if "reference" not in name else "#bbbbbb")
        ax_echo.set_xticks(range(ncell))

        def size_label(s):
            return "%d KiB" % (s // 1024) if s >= 1024 and s % 1024 == 0 else "%d B" % s
        ax_echo.set_xticklabels(["%d conn%s\n%s" % (c["conns"], "" if c["conns"] == 1 else "s",
                                                     size_label(c["size"])) for c in cells],
                                fontsize=9)
        ax_echo.set_ylabel("thousand requests / s (higher is better)", fontsize=9)
        ax_echo.set_title("echo ping-pong over 127.0.0.1: requests per second, by connections "
                          "× message size", fontsize=11)
        top = max([v.get("median_rps") or 0 for r in echo_doc["results"].values()
                   for v in r.values()] or [1])
        ax_echo.set_ylim(0, top / 1e3 * 1.3)
        ax_echo.legend(fontsize=8, ncol=4, loc="upper left")
        ax_echo.grid(axis="y", alpha=0.3)
    else:
        empty(ax_echo, "echo", "echo not measured (bench/echo.py missing or failed)")

    idle = ((echo_doc or {}).get("idle") or {}).get("results") or {}
    if idle:
        names = [n for n in idle if idle[n].get("ratio") is not None]
        if names:
            n_idle = (echo_doc.get("idle") or {}).get("idle_connections")
            _hbar(ax_idle, names, [idle[n]["ratio"] for n in names], peers,
                  "idle scaling: 10 active, with {:,} idle / alone".format(n_idle or 0),
                  "throughput ratio (1.0 = unaffected)",
                  texts=["%.2f" % idle[n]["ratio"] for n in names], ref=0.9,
                  ref_label="goal: 0.9 (bluelet cython)")
        else:
            empty(ax_idle, "idle scaling", "no ratio measured")
    else:
        empty(ax_idle, "idle scaling", "not measured")

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------

def network_bench(script, name, skip, args):
    """(doc, Markdown, problem) of echo or HTTP: run now, or read back with --reuse.

    Its Markdown is kept as NAME.md beside NAME.json, for --reuse.
    """
    json_path = os.path.join(args.out, name + ".json")
    md_path = os.path.join(args.out, name + ".md")
    here = os.path.relpath(script, REPO)
    if args.reuse:
        if not os.path.exists(json_path):
            return None, "", "no %s" % json_path
        with open(json_path) as f:
            doc = json.load(f)
        md = ""
        if os.path.exists(md_path):
            with open(md_path) as f:
                md = f.read()
        return doc, md, None
    if skip:
        return None, "", "skipped (--skip-%s)" % name
    doc, md, problem = run_bench(script, json_path, args, timeout=3600)
    if problem:
        say("%s: %s" % (here, problem))
    if doc is None:
        if os.path.exists(md_path):
            os.remove(md_path)
        return None, "", "%s %s" % (here, problem)
    with open(md_path, "w") as f:
        f.write(md)
    return doc, md, problem


def main(argv=None):
    args = parse_args(argv)
    args.without_compiled = pure_only()
    args.bluelet = None
    if not args.reuse:
        args.bluelet = bluelet_under_test()
        say("measuring " + describe_bluelet(args.bluelet))
        problem = None if pure_only() else missing_core(args.bluelet)
        if problem and not args.allow_missing_core:
            say("stopping: " + problem + " (--allow-missing-core goes on without it)")
            return 2
        args.without_compiled = args.without_compiled or problem is not None
    os.makedirs(args.out, exist_ok=True)
    machine = micro.machine_info()
    micro_json = os.path.join(args.out, "micro.json")

    micro_doc = None
    micro_problem = None
    if args.reuse:
        if os.path.exists(micro_json):
            with open(micro_json) as f:
                micro_doc = json.load(f)
            machine = micro_doc.get("machine", machine)
        else:
            micro_problem = "no %s" % micro_json
    elif args.skip_micro:
        micro_problem = "skipped (--skip-micro)"
    else:
        micro_doc, _, micro_problem = run_bench(MICRO, micro_json, args, timeout=1800)
        if micro_problem:
            say("bench/micro.py: %s" % micro_problem)
    echo_doc, echo_md, echo_problem = network_bench(ECHO, "echo", args.skip_echo, args)
    http_doc, http_md, http_problem = network_bench(HTTP, "http", args.skip_http, args)

    chart_path = os.path.join(args.out, "chart.png")
    chart_note = None
    try:
        draw_chart(chart_path, machine, micro_doc, echo_doc)
    except ImportError as exc:
        chart_note = "chart.png not written: %s (pip install -r bench/requirements.txt)" % exc
        say(chart_note)
    else:
        chart_note = "![benchmark chart](chart.png)"

    md = build_markdown(args, machine, micro_doc, micro_problem, echo_doc, echo_md, echo_problem,
                        http_doc, http_md, http_problem, chart_note)
    md_path = os.path.join(args.out, "RESULTS.md")
    with open(md_path, "w") as f:
        f.write(md.rstrip() + "\n")
    print(md)
    say("wrote %s" % md_path + ("" if chart_note.startswith("chart.png not written")
                                   else " and %s" % chart_path))
    return 0 if micro_doc else 1


if __name__ == "__main__":
    sys.exit(main())
