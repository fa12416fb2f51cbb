"""Load on one bluelet server: connections held, idle connections, connect/close churn.

Run from the repository root::

    python bench/load.py            # full run (1-2 minutes on 2 CPUs); writes
                                    # bench/results/LOAD.md and bench/results/load.json
    python bench/load.py --quick    # smoke run, under 30 s; writes files only with --md/--json

What is measured (issue 4)
--------------------------
Both cores, side by side in one run: bluelet (cython) and bluelet (python)
(``BLUELET_PURE_PYTHON=1`` in the server). The server is bench/echo.py's
bluelet echo server (``python bench/echo.py --serve KIND``: a ``Listener`` on
127.0.0.1, port 0, and one spawned coroutine per connection doing
``recv(65536)`` / ``sendall``), each in its own process; the clients are
bench/loadgen.c (C, epoll; built on first use, as echo.py does) in another
process. Both raise the soft RLIMIT_NOFILE to the hard limit. Every server
first gets echo.py's throw-away 0.3 s warm-up. "Settled" below means: the
server holds no more descriptors than before the first client came (polled
in /proc/PID/fd for at most ``--settle`` seconds), i.e. it has closed every
connection its clients closed. RSS is VmRSS from /proc/PID/status.

1. Held: ``loadgen --hold 2000`` opens 2,000 connections, each confirmed by a
   1-byte echo ("connect all": until all 2,000 are connected and served),
   keeps them all open, and then does a 64 B round trip on every one of them
   twice: all at once ("burst": each one's latency counted from its own send,
   so it includes queueing behind the others) and one at a time ("single":
   one request in flight while 2,000 connections are held). Server RSS and
   descriptors before, while all are held, and after they are closed.
   Median of ``--rounds`` (3) fresh servers.
2. Idle: echo.py's measurement (``loadgen``, 100 connections x 1 KiB
   ping-pong, requests/s over 1.2 s after 0.3 s warm-up, measured again when
   other processes disturbed it) alone and with 10,000 idle connections open
   (opened first, each confirmed by a 1-byte echo, then silent), back to back
   on one server process, the order alternating by round; median of
   ``--rounds`` (5) fresh servers; ratio = median of the rounds' with/alone.
   If the hard descriptor limit cannot hold 10,000 idle connections, the
   largest count that fits is used and the output says so.
3. Churn: 100,000 cycles of connect, one 16 B round trip, close (32 cycles
   in flight at a time), on one server per core; server RSS at the start and
   after every 10,000 cycles (each time once settled). The first 20% of the
   cycles are the warm-up (caches, free lists, allocator arenas fill up);
   the growth over the remaining 80% is shown next to it, and is "within
   noise" when it is at most ``NOISE_KIB`` (1 MiB: 13 bytes per cycle over
   80,000 cycles, where a leak of one small object per connection shows as
   several MiB). A fixed bound rather than "no more than the warm-up grew":
   the warm-up growth is tens of KiB here, the same order as the page-sized
   jitter of RSS, so that would fail on noise, and a large warm-up would
   excuse a leak. Descriptors at the end must equal those at the start.

Checks (a failed one, or a server that dies, makes the exit status 1): every
server alive to the end (after each phase it must still echo on a fresh
connection); every held connection served; descriptors back to the start
count after each phase; churn memory within noise. Every wait is bounded:
each load generator run by its own timeout (``CLIENT_TIMEOUT``), each settle
by ``--settle``, the servers by echo.py's watchdog.

``--tree DIR`` benchmarks the bluelet package in DIR instead of the installed
one, as in echo.py.
"""

import argparse
import atexit
import json
import os
import platform
import resource
import select
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

if HERE not in sys.path:  # run as a script it is there already; append shadows nothing
    sys.path.append(HERE)
import echo  # noqa: E402  (server, load generator and measurement machinery)
from _common import (add_run_args, cpu_model, default_rounds, json_header,  # noqa: E402
                     markdown_rows, median, say, write_json)

KINDS = ["bluelet-cython", "bluelet-python"]
HOLD_SIZE = 64
ACTIVE_CONNS, ACTIVE_SIZE = 100, 1024  # echo.py's goal cell
CYCLE_CONCURRENCY, CYCLE_SIZE = 32, 16
WARMUP_SHARE = 0.2  # of the churn cycles
NOISE_KIB = 1024
NOFILE_SPARE = 200  # descriptors a process needs besides the connections
CLIENT_TIMEOUT = 120  # seconds any one load generator run may take
PROBE_TIMEOUT = 10  # seconds the after-phase liveness probe may take


# ============================================================================
# The server seen from outside
# ============================================================================

def rss_kib(pid):
    """VmRSS of process pid in KiB, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fd_count(pid):
    """How many descriptors process pid has open, or None."""
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def cpu_seconds(pid):
    """User + system CPU time process pid has used, in seconds, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name before ")" may hold spaces
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(srv, target, seconds):
    """Wait, at most ``seconds``, until the server has ``target`` descriptors
    or fewer; return its count then (None if it is gone)."""
    deadline = time.monotonic() + seconds
    while True:
        n = fd_count(srv.pid)
        if n is None or n <= target or time.monotonic() >= deadline:
            return n
        time.sleep(0.02)


def start_server(kind, loadgen, settle_seconds):
    """(echo.Server, its descriptor count before any client): started, warmed
    up, settled (a leak in the warm-up shows in every phase's final count).
    Raises RuntimeError when it does not start."""
    srv = echo.Server(kind, loadgen)
    try:
        fds = fd_count(srv.pid)
        echo.prime(loadgen, srv)
        settle(srv, fds, settle_seconds)
    except BaseException:
        srv.stop()
        raise
    return srv, fds


def server_state(srv, loadgen):
    """What the server said of itself (core, version, path); whether it still
    serves (one fresh connection echoes); the end of its stderr if not."""
    probe = churn_batch(loadgen, srv, 1, timeout=PROBE_TIMEOUT)
    alive = not probe.get("error") and srv.alive()
    if not alive:
        try:  # a failing server may still be on its way out: let it finish its last words
            srv.proc.wait(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    return {"server": {k: v for k, v in srv.info.items() if k not in ("port", "pid")},
            "server_alive": alive,
            "server_stderr": None if alive else "%s; %s" % (
                probe.get("error") or "process ended", srv.stderr_tail() or "no stderr")}


# ============================================================================
# Clients (bench/loadgen.c)
# ============================================================================

def parse_client(stdout, returncode, stderr):
    """The JSON object a loadgen run printed last; "error" is set on failure."""
    lines = [l for l in (stdout or "").splitlines() if l.startswith("{")]
    if not lines:
        return {"error": "load generator exit %s: %s" % (returncode, (stderr or "").strip()[-300:])}
    out = json.loads(lines[-1])
    if not out.get("error") and returncode:
        out["error"] = "load generator exit %d" % returncode
    return out


def read_line(pipe, seconds):
    """One line from pipe within ``seconds``; None at EOF or past the time."""
    fd = pipe.fileno()
    buf = b""
    deadline = time.monotonic() + seconds
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
    return buf.decode()


def hold_connections(loadgen, srv, count):
    """``loadgen --hold count``: its JSON, plus the server's RSS and
    descriptors sampled while every connection is still open."""
    cmd = [loadgen, "--port", str(srv.port), "--hold", str(count), "--size", str(HOLD_SIZE),
           "--timeout", str(CLIENT_TIMEOUT), "--hold-seconds", str(CLIENT_TIMEOUT)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    echo._children.append(proc)  # killed with the servers if the bench is interrupted
    try:
        line = read_line(proc.stdout, CLIENT_TIMEOUT + 10)
        held = {"rss_held_kib": rss_kib(srv.pid), "fds_held": fd_count(srv.pid)}
    finally:
        proc.stdin.close()  # EOF: the client closes every connection and exits
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stdout.close()
    proc.stderr.close()
    return parse_client(line, proc.returncode, stderr), held


def churn_batch(loadgen, srv, cycles, timeout=CLIENT_TIMEOUT):
    """``loadgen --cycles``: its JSON."""
    cmd = [loadgen, "--port", str(srv.port), "--cycles", str(cycles),
           "--conns", str(CYCLE_CONCURRENCY), "--size", str(CYCLE_SIZE),
           "--timeout", str(timeout)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 15)
    except subprocess.TimeoutExpired:
        return {"error": "load generator did not end within %d s" % (timeout + 15)}
    return parse_client(res.stdout, res.returncode, res.stderr)


# ============================================================================
# The three measurements (one server process each)
# ============================================================================

def hold_round(kind, loadgen, args):
    srv, fds = start_server(kind, loadgen, args.settle)
    try:
        rec = {"fds_before": fds, "rss_before_kib": rss_kib(srv.pid)}
        rec["client"], held = hold_connections(loadgen, srv, args.hold)
        rec.update(held)
        rec["fds_after"] = settle(srv, fds, args.settle)
        rec["rss_after_kib"] = rss_kib(srv.pid)
        rec.update(server_state(srv, loadgen))
    finally:
        srv.stop()
    return rec


def idle_round(kind, loadgen, args, r, budget):
    srv, fds = start_server(kind, loadgen, args.settle)
    try:
        rec = {"round": r, "fds_before": fds}
        for idle in ((0, args.idle) if r % 2 == 0 else (args.idle, 0)):
            settle(srv, fds, args.settle)  # the last run's connections are all closed
            rec["with_idle" if idle else "alone"] = echo.measure(
                loadgen, srv, ACTIVE_CONNS, ACTIVE_SIZE, args, idle=idle, budget=budget)
        rec["fds_after"] = settle(srv, fds, args.settle)
        rec.update(server_state(srv, loadgen))
    finally:
        srv.stop()
    alone, with_idle = rec["alone"].get("rps"), rec["with_idle"].get("rps")
    rec["ratio"] = with_idle / alone if alone and with_idle else None
    return rec


def churn(kind, loadgen, args):
    srv, fds = start_server(kind, loadgen, args.settle)
    try:
        rec = {"fds_before": fds, "points": [{"cycles": 0, "rss_kib": rss_kib(srv.pid), "fds": fds}],
               "batches": [], "error": None}
        done = 0
        while done < args.cycles:
            cpu = cpu_seconds(srv.pid)
            out = churn_batch(loadgen, srv, min(args.every, args.cycles - done))
            rec["batches"].append(out)
            done += out.get("cycles", 0)
            if out.get("error"):
                rec["error"] = out["error"]
                break
            n = settle(srv, fds, args.settle)
            used = cpu_seconds(srv.pid)
            if None not in (cpu, used) and out.get("cycles"):
                out["server_cpu_us_per_cycle"] = 1e6 * (used - cpu) / out["cycles"]
            rec["points"].append({"cycles": done, "rss_kib": rss_kib(srv.pid), "fds": n})
        rec["fds_after"] = rec["points"][-1]["fds"]
        rec.update(server_state(srv, loadgen))
    finally:
        srv.stop()
    rec.update(memory_growth(rec["points"]))
    ok = [b for b in rec["batches"] if not b.get("error")]
    rec["cycles_per_second"] = median([b.get("rate") for b in ok])
    rec["server_cpu_us_per_cycle"] = median([b.get("server_cpu_us_per_cycle") for b in ok])
    return rec


def memory_growth(points):
    """Warm-up growth (start to the first checkpoint past WARMUP_SHARE of the
    cycles), steady growth (from there to the end), and the verdict."""
    last = points[-1]
    warm = next((p for p in points if p["cycles"] >= WARMUP_SHARE * last["cycles"] and p["cycles"]),
                None)
    if warm is None or warm is last or None in (points[0]["rss_kib"], warm["rss_kib"], last["rss_kib"]):
        return {"warmup_cycles": None, "warmup_growth_kib": None, "steady_growth_kib": None,
                "steady_bytes_per_cycle": None, "within_noise": None}
    steady = last["rss_kib"] - warm["rss_kib"]
    return {"warmup_cycles": warm["cycles"],
            "warmup_growth_kib": warm["rss_kib"] - points[0]["rss_kib"],
            "steady_growth_kib": steady,
            "steady_bytes_per_cycle": 1024.0 * steady / (last["cycles"] - warm["cycles"]),
            "within_noise": steady <= NOISE_KIB}


# ============================================================================
# Aggregation and checks
# ============================================================================

def summarize_hold(rounds):
    ok = [r for r in rounds if not r.get("error") and not r["client"].get("error")
          and r["server_alive"]]

    def med(f):
        return median([f(r) for r in ok])

    return {
        "rounds": len(rounds), "rounds_ok": len(ok),
        "burst_served_min": min((r["client"].get("burst_served", 0) for r in rounds
                                 if "client" in r), default=0),
        "single_served_min": min((r["client"].get("single_served", 0) for r in rounds
                                  if "client" in r), default=0),
        "connect_seconds": med(lambda r: r["client"]["connect_seconds"]),
        "burst_seconds": med(lambda r: r["client"]["burst_seconds"]),
        "burst_latency_us_p50": med(lambda r: r["client"]["burst_latency_us"]["p50"]),
        "burst_latency_us_p99": med(lambda r: r["client"]["burst_latency_us"]["p99"]),
        "single_latency_us_p50": med(lambda r: r["client"]["single_latency_us"]["p50"]),
        "single_latency_us_p99": med(lambda r: r["client"]["single_latency_us"]["p99"]),
        "rss_before_kib": med(lambda r: r["rss_before_kib"]),
        "rss_held_kib": med(lambda r: r["rss_held_kib"]),
        "rss_after_kib": med(lambda r: r["rss_after_kib"]),
        "held_kib_per_connection": med(lambda r: (r["rss_held_kib"] - r["rss_before_kib"])
                                       / r["client"]["conns"]),
        "fds_before": med(lambda r: r["fds_before"]),
        "fds_held": med(lambda r: r["fds_held"]),
        "fds_after": med(lambda r: r["fds_after"]),
    }


def summarize_idle(rounds):
    ok = [r for r in rounds if not r.get("error")]

    def cost(out):
        return (1e6 * out["server_cpu"] / out["rps"]
                if out.get("rps") and (out.get("server_cpu") or -1) > 0 else None)

    return {
        "rounds": len(rounds),
        "alone_rps": median([r["alone"].get("rps") for r in ok]),
        "with_idle_rps": median([r["with_idle"].get("rps") for r in ok]),
        "ratio": median([r["ratio"] for r in ok]),
        "rounds_ratio": [r.get("ratio") for r in rounds],
        "server_cpu_us_per_request_alone": median([cost(r["alone"]) for r in ok]),
        "server_cpu_us_per_request_with_idle": median([cost(r["with_idle"]) for r in ok]),
        # the same comparison by the server's CPU time per request (alone / with idle: 1.0 is
        # no slowdown), much less sensitive to other processes than requests per second
        "cpu_ratio": median([cost(r["alone"]) / cost(r["with_idle"]) for r in ok
                             if cost(r["alone"]) and cost(r["with_idle"])]),
        "idle_open_seconds": median([r["with_idle"].get("idle_open_seconds") for r in ok]),
        # what the rest of the machine kept busy meanwhile, in CPUs (see echo.measure)
        "other_cpu": median([r[k].get("other_cpu") for r in ok for k in ("alone", "with_idle")
                             if (r[k].get("other_cpu") or -1) >= 0]),
        "remeasured": sum(r[k].get("tries", 1) - 1 for r in ok for k in ("alone", "with_idle")),
    }


def phase_checks(name, label, records, want_served=None):
    """(check dicts, failure strings) for one core's records of one phase."""
    checks, failures = [], []
    errors = [r["error"] for r in records if r.get("error")]
    errors += [r["client"]["error"] for r in records if r.get("client", {}).get("error")]
    errors += [r[k]["error"] for r in records for k in ("alone", "with_idle")
               if isinstance(r.get(k), dict) and r[k].get("error")]
    dead = [r["server_stderr"] or "(no stderr)" for r in records if r.get("server_alive") is False]
    failures += ["%s, %s: %s" % (label, name, e) for e in errors]
    failures += ["%s, %s: the server stopped serving: %s" % (label, name, e) for e in dead]
    known = any("server_alive" in r for r in records)  # else no server ever started
    checks.append({"check": "%s: server alive to the end" % name, "core": label,
                   "met": not dead if known else None})
    if want_served is not None:
        served = min([r.get("client", {}).get("burst_served", 0) for r in records]
                     + [r.get("client", {}).get("single_served", 0) for r in records],
                     default=0)
        checks.append({"check": "%s: all {:,} connections served (burst and single)".format(
            want_served) % name, "core": label, "met": served == want_served and not errors,
            "value": served})
    served = [r for r in records if r.get("server_alive")]  # a dead server's count means nothing
    leaks = [(r.get("fds_before"), r.get("fds_after")) for r in served
             if r.get("fds_after") != r.get("fds_before")]
    checks.append({"check": "%s: server descriptors back to the start count" % name, "core": label,
                   "met": not leaks if served else None, "value": leaks or None})
    return checks, failures


# ============================================================================
# Output
# ============================================================================

def fmt_mib(kib):
    return "n/a" if kib is None else "%.1f MiB" % (kib / 1024.0)


def fmt_kib_signed(kib):
    return "n/a" if kib is None else "%+.0f KiB" % kib


def fmt_us(us):
    if us is None:
        return "n/a"
    if us < 10:
        return "%.1f µs" % us
    return "%.0f µs" % us if us < 1000 else "%.1f ms" % (us / 1000.0)


def fmt_seconds(s):
    return "n/a" if s is None else ("%.0f ms" % (1000 * s) if s < 1 else "%.2f s" % s)


def fmt_req(rps):
    return "n/a" if rps is None else echo.fmt_rps(rps) + " req/s"


def fmt_count(n):
    return "n/a" if n is None else "{:,}".format(int(n))


def render_markdown(doc, heading="##"):
    """Markdown for a load.py JSON document (stdout and LOAD.md)."""
    h = heading
    p = doc["params"]
    names = [echo.NAMES[k] for k in doc["kinds"]]
    out = ["%s Load: held, idle and churning connections on one bluelet echo server%s"
           % (h, " (--quick)" if doc["quick"] else ""), ""]
    out.append("Python %s on %s, %d CPUs, Linux %s; `%s`. Server: bench/echo.py's bluelet echo "
               "server (bluelet.serve on a Listener, one coroutine per connection) in its own process; "
               "clients: bench/loadgen.c (C, epoll) in another; 127.0.0.1. RLIMIT_NOFILE raised "
               "to %s (hard) in both. Every server gets a 0.3 s warm-up first."
               % (doc["python"], doc["cpu"], doc["cpus"] or 0, doc["kernel"], doc["command"],
                  fmt_count(doc["nofile"])))
    out.append("")
    if doc.get("bluelet_paths"):
        out += ["bluelet imported from: %s" % ", ".join(doc["bluelet_paths"]), ""]

    hold = doc["hold"]
    if hold:
        n = p["hold"]
        out += ["%s# {:,} connections held at once (median of %d round%s, a fresh server each)"
                .format(n) % (h, p["hold_rounds"], "" if p["hold_rounds"] == 1 else "s"), ""]
        rows = [["core", "served (burst / single)", "connect all", "burst: all served in",
                 "burst p50 / p99", "single p50 / p99"], ["---"] + ["---:"] * 5]
        for name in names:
            x = hold.get(name)
            if x:
                rows.append([name, "%s / %s of %s" % (fmt_count(x["burst_served_min"]),
                                                       fmt_count(x["single_served_min"]),
                                                       fmt_count(n)),
                             fmt_seconds(x["connect_seconds"]), fmt_seconds(x["burst_seconds"]),
                             "%s / %s" % (fmt_us(x["burst_latency_us_p50"]),
                                          fmt_us(x["burst_latency_us_p99"])),
                             "%s / %s" % (fmt_us(x["single_latency_us_p50"]),
                                          fmt_us(x["single_latency_us_p99"]))])
        out += [markdown_rows(rows), ""]
        rows = [["core", "server RSS before", "with {:,} held".format(n), "per held connection",
                 "after they close", "descriptors before / held / after"],
                ["---"] + ["---:"] * 5]
        for name in names:
            x = hold.get(name)
            if x:
                per = x["held_kib_per_connection"]
                rows.append([name, fmt_mib(x["rss_before_kib"]), fmt_mib(x["rss_held_kib"]),
                             "n/a" if per is None else "%.1f KiB" % per,
                             fmt_mib(x["rss_after_kib"]),
                             " / ".join(fmt_count(x[k]) for k in ("fds_before", "fds_held",
                                                                  "fds_after"))])
        out += [markdown_rows(rows), ""]
        out += ["served: the fewest over the rounds. connect all: until every connection is "
                "connected and has echoed 1 byte. burst: every connection sends 64 B at once, "
                "latency from each one's own send (queueing included); single: one 64 B request "
                "in flight at a time, the others held open.", ""]

    idle = doc["idle"]
    if idle:
        n = p["idle"]
        out += ["%s# Throughput with {:,} idle connections: {} active connections × 1 KiB "
                "(median of %d round%s)".format(n, ACTIVE_CONNS)
                % (h, p["idle_rounds"], "" if p["idle_rounds"] == 1 else "s"), ""]
        rows = [["core", "alone", "with {:,} idle".format(n), "ratio",
                 "server CPU / request alone / idle", "ratio by CPU / request", "idle open time",
                 "other CPUs"], ["---"] + ["---:"] * 7]
        for name in names:
            x = idle.get(name)
            if x:
                rows.append([name, fmt_req(x["alone_rps"]), fmt_req(x["with_idle_rps"]),
                             echo.fmt_ratio(x["ratio"]),
                             "%s / %s" % (fmt_us(x["server_cpu_us_per_request_alone"]),
                                          fmt_us(x["server_cpu_us_per_request_with_idle"])),
                             echo.fmt_ratio(x["cpu_ratio"]), fmt_seconds(x["idle_open_seconds"]),
                             "n/a" if x["other_cpu"] is None else "%.2f" % x["other_cpu"]])
        out += [markdown_rows(rows), ""]
        out += ["ratio: median over rounds of (with idle / alone), both measured back to back on "
                "one server process. ratio by CPU / request: median over rounds of (server CPU "
                "time per request alone / with idle), 1.00× = no slowdown; much less sensitive to "
                "other processes on the machine than requests per second. other CPUs: what the rest of the machine kept busy during "
                "the measured intervals (median); an interval with more than %.2f was measured "
                "again (%d in all), the least disturbed kept.%s"
                % (p["max_other"], sum(x["remeasured"] for x in idle.values()),
                   "" if not p.get("idle_note") else " " + p["idle_note"]), ""]

    churned = doc["churn"]
    if churned:
        out += ["%s# Memory over {:,} connect/close cycles (one 16 B round trip each, {} in flight)"
                .format(p["cycles"], CYCLE_CONCURRENCY) % h, ""]
        shown = [name for name in names if name in churned]
        marks = sorted({pt["cycles"] for name in shown for pt in churned[name]["points"]})
        rows = [["cycles"] + ["%s RSS" % name for name in shown], ["---:"] * (1 + len(shown))]
        for c in marks:
            row = [fmt_count(c)]
            for name in shown:
                pts = churned[name]["points"]
                pt = next((q for q in pts if q["cycles"] == c), None)
                row.append("" if pt is None or pt["rss_kib"] is None else "{:,} KiB ({})".format(
                    pt["rss_kib"], fmt_kib_signed(pt["rss_kib"] - pts[0]["rss_kib"])))
            rows.append(row)
        out += [markdown_rows(rows), ""]
        rows = [["core", "warm-up growth", "growth after warm-up", "per cycle", "within noise",
                 "descriptors start / end", "server CPU / cycle", "cycles/s"],
                ["---"] + ["---:"] * 7]
        for name in shown:
            x = churned[name]
            per = x["steady_bytes_per_cycle"]
            rows.append([
                name,
                "%s (0 to %s)" % (fmt_kib_signed(x["warmup_growth_kib"]), fmt_count(x["warmup_cycles"])),
                "%s (%s to %s)" % (fmt_kib_signed(x["steady_growth_kib"]),
                                   fmt_count(x["warmup_cycles"]),
                                   fmt_count(x["points"][-1]["cycles"])),
                "n/a" if per is None else "%.1f B" % per,
                {None: "n/a", True: "yes", False: "**no**"}[x["within_noise"]],
                "%s / %s" % (fmt_count(x["fds_before"]), fmt_count(x["fds_after"])),
                fmt_us(x["server_cpu_us_per_cycle"]), echo.fmt_rps(x["cycles_per_second"])])
        out += [markdown_rows(rows), ""]
        out += ["RSS is read once the server has closed every connection of the batch. within "
                "noise: growth after the warm-up (the first {:.0%} of the cycles) at most "
                "{:,} KiB. server CPU / cycle: the server's CPU time over a batch (until it has "
                "closed every connection) per cycle, median over batches: the figure to compare the "
                "cores by. cycles/s also depends on the client's connect(), whose port search "
                "slows down as the loopback fills with TIME_WAIT sockets.".format(WARMUP_SHARE,
                                                                                NOISE_KIB),
                ""]

    out += ["%s# Checks" % h, ""]
    verdicts = {}  # check -> core name -> verdict, in the order checks were made
    for c in doc["checks"]:
        verdicts.setdefault(c["check"], {})[c["core"]] = (
            {None: "n/a", True: "met", False: "**FAILED**"}[c["met"]]
            + ("" if c["met"] is not False or c.get("value") is None else " (%s)" % (c["value"],)))
    rows = [["check"] + names, ["---"] * (1 + len(names))]
    rows += [[check] + [by_core.get(name, "") for name in names]
             for check, by_core in verdicts.items()]
    out += [markdown_rows(rows), ""]
    for note in doc["notes"]:
        out.append("- " + note)
    for msg in doc["failures"]:
        out.append("- FAILED: " + msg)
    out.append("- took %.0f s" % doc["elapsed_seconds"])
    return "\n".join(out) + "\n"


# ============================================================================
# Main
# ============================================================================

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    add_run_args(p, rounds_help="rounds of the held and idle measurements (default 3 and 5; "
                                "--quick 1)",
                 quick_help="smoke run, under 30 s: 2,000 idle, 10,000 cycles, 1 round, short "
                            "intervals; writes no file unless --md/--json say where",
                 json_help="write every figure as JSON to PATH (default bench/results/load.json; "
                           "none with --quick)")
    p.add_argument("--md", metavar="PATH",
                   help="write the Markdown to PATH (default bench/results/LOAD.md; none with "
                        "--quick)")
    p.add_argument("--cores", default="cython,python",
                   help="comma-separated subset of: cython, python (default both)")
    p.add_argument("--hold", type=int, default=2000, help="connections held at once (2000)")
    p.add_argument("--idle", type=int, help="idle connections (default 10000; --quick 2000)")
    p.add_argument("--cycles", type=int, help="connect/close cycles (default 100000; --quick 10000)")
    p.add_argument("--every", type=int, help="RSS checkpoint every N cycles (default cycles/10)")
    p.add_argument("--seconds", type=float, help="idle: measured interval (default 1.2; --quick 0.5)")
    p.add_argument("--warmup", type=float, help="idle: warm-up before it (default 0.3; --quick 0.2)")
    p.add_argument("--max-other", type=float, default=0.25,
                   help="idle: measure again when other processes kept more than this many CPUs "
                        "busy (0.25)")
    p.add_argument("--retries", type=int, default=2, help="idle: re-measurements per figure (2)")
    p.add_argument("--settle", type=float, default=30.0,
                   help="seconds a server may take to close its clients' connections (30)")
    p.add_argument("--tree", help="directory holding the bluelet package the servers import "
                                  "(default: the installed bluelet)")
    args = p.parse_args(argv)
    default_rounds(args, None)  # None: each measurement's own default
    args.hold_rounds = args.rounds or 3
    args.idle_rounds = args.rounds or 5
    if args.idle is None:
        args.idle = 2000 if args.quick else 10000
    if args.cycles is None:
        args.cycles = 10000 if args.quick else 100000
    if args.every is None:
        args.every = max(args.cycles // 10, 1)
    if args.seconds is None:
        args.seconds = 0.5 if args.quick else 1.2
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.3
    if not args.quick:
        args.json = args.json or os.path.join(RESULTS, "load.json")
        args.md = args.md or os.path.join(RESULTS, "LOAD.md")
    wanted = [c.strip() for c in args.cores.split(",") if c.strip()]
    bad = [c for c in wanted if c not in ("cython", "python")]
    if bad or not wanted:
        p.error("--cores: unknown core(s) %s" % ", ".join(bad) if bad else "--cores: none given")
    args.kinds = [k for k in KINDS if k.split("-")[1] in wanted]
    if min(args.hold, args.idle, args.cycles, args.every, args.hold_rounds, args.idle_rounds) < 1:
        p.error("--hold, --idle, --cycles, --every and --rounds must be at least 1")
    return args


def fit_descriptors(args, hard, notes):
    """Shrink --hold and --idle to what the hard RLIMIT_NOFILE allows, saying so."""
    for attr, extra in (("hold", 0), ("idle", ACTIVE_CONNS)):
        want = getattr(args, attr)
        room = hard - extra - NOFILE_SPARE
        if want > room:
            notes.append("%s: {:,} connections need RLIMIT_NOFILE >= {:,}; the hard limit is {:,}, "
                         "so {:,} are used".format(want, want + extra + NOFILE_SPARE, hard, room)
                         % attr)
            setattr(args, attr, max(room, 1))


def tcp_settings():
    """The kernel settings that decide whether 100,000 connect/close cycles fit."""
    out = {}
    for name in ("ip_local_port_range", "tcp_tw_reuse"):
        try:
            with open("/proc/sys/net/ipv4/" + name) as f:
                out[name] = " ".join(f.read().split())
        except OSError:
            out[name] = None
    return out


def run_all(args, loadgen, kinds, budget):
    """Every measurement: raw records by phase and core name."""
    raw = {"hold": {echo.NAMES[k]: [] for k in kinds}, "idle": {echo.NAMES[k]: [] for k in kinds},
           "churn": {}}

    def attempt(what, kind, fn, *a):
        try:
            return fn(kind, loadgen, args, *a)
        except Exception as exc:  # a server that does not start: phase_checks reports it
            say("  ! %s, %s: %s" % (echo.NAMES[kind], what, exc))
            return {"error": str(exc)}

    def rotated(r):
        return kinds[r % len(kinds):] + kinds[:r % len(kinds)]

    for r in range(args.hold_rounds):
        for kind in rotated(r):
            rec = attempt("held", kind, hold_round)
            raw["hold"][echo.NAMES[kind]].append(rec)
            c = rec.get("client", {})
            say("  %-17s held %d: served %s/%s, connect %s, single p50 %s, RSS %s -> %s%s"
                % (echo.NAMES[kind], args.hold, c.get("burst_served"), c.get("single_served"),
                   fmt_seconds(c.get("connect_seconds")),
                   fmt_us(c.get("single_latency_us", {}).get("p50")),
                   fmt_mib(rec.get("rss_before_kib")), fmt_mib(rec.get("rss_held_kib")),
                   "  ERROR " + (rec.get("error") or c.get("error"))
                   if rec.get("error") or c.get("error") else ""))
    for r in range(args.idle_rounds):
        for kind in rotated(r):
            rec = attempt("idle", kind, idle_round, r, budget)
            raw["idle"][echo.NAMES[kind]].append(rec)
            say("  %-17s idle round %d: alone %s, with %d idle %s -> %s"
                % (echo.NAMES[kind], r + 1, echo.fmt_rps(rec.get("alone", {}).get("rps")),
                   args.idle, echo.fmt_rps(rec.get("with_idle", {}).get("rps")),
                   echo.fmt_ratio(rec.get("ratio"))))
    for kind in kinds:
        rec = attempt("churn", kind, churn)
        raw["churn"][echo.NAMES[kind]] = rec
        say("  %-17s churn: RSS %s%s" % (
            echo.NAMES[kind], " ".join(fmt_mib(p["rss_kib"]) for p in rec.get("points", [])),
            "  ERROR " + rec["error"] if rec.get("error") else ""))
    return raw


def evaluate(kinds, raw, args):
    """(held, idle, churn summaries by core name, checks, failures)."""
    checks, failures = [], []
    hold, idle, churned = {}, {}, {}
    for kind in kinds:
        name = echo.NAMES[kind]
        rec = raw["churn"].get(name, {})
        for phase, records, want in (("held", raw["hold"][name], args.hold),
                                     ("idle", raw["idle"][name], None), ("churn", [rec], None)):
            c, f = phase_checks(phase, name, records, want)
            checks += c
            failures += f
        hold[name] = summarize_hold(raw["hold"][name])
        idle[name] = summarize_idle(raw["idle"][name])
        if "points" in rec:
            churned[name] = rec
            checks.append({"check": "churn: server RSS growth after the warm-up within noise "
                                    "(<= %d KiB)" % NOISE_KIB, "core": name,
                           # a churn cut short by an error or a dead server decides nothing
                           "met": (rec["within_noise"] if rec["server_alive"] and not rec["error"]
                                   else None),
                           "value": rec["steady_growth_kib"]})
    return hold, idle, churned, checks, failures


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()
    echo.TREE[0] = os.path.abspath(args.tree) if args.tree else None
    atexit.register(echo._kill_children)
    signal.signal(signal.SIGTERM, echo._on_signal)
    nofile = echo._raise_nofile()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    notes = []
    fit_descriptors(args, hard, notes)
    args.idle_note = next((n for n in notes if n.startswith("idle:")), None)

    loadgen = echo.build_loadgen()
    kinds, failures = [], []
    for kind in args.kinds:
        why = echo.probe(kind)
        if why:
            failures.append("%s cannot run: %s" % (echo.NAMES[kind], why))
            say(failures[-1])
        else:
            kinds.append(kind)

    raw = run_all(args, loadgen, kinds, [5 if args.quick else 40])

    hold, idle, churned, checks, phase_failures = evaluate(kinds, raw, args)
    failures += phase_failures

    notes.append("load average (1, 5, 15 min) when the bench started: %.2f %.2f %.2f (other work "
                 "on the machine disturbs these figures; the bench itself keeps 2 CPUs busy)"
                 % load_before)
    tcp = tcp_settings()
    notes.append("ephemeral ports %s, tcp_tw_reuse %s (the churn's client-side TIME_WAIT "
                 "sockets are reused on loopback when it is 1 or 2)"
                 % (tcp["ip_local_port_range"], tcp["tcp_tw_reuse"]))
    echo._kill_children()
    stray = [p.pid for p in echo._children if p.poll() is None]
    notes.append("stray processes still running: %s" % stray if stray
                 else "all %d server and client processes ended" % len(echo._children))

    command = " ".join(["python bench/load.py"] + list(sys.argv[1:] if argv is None else argv))
    paths = {r["server"].get("path") for phase in ("hold", "idle") for recs in raw[phase].values()
             for r in recs if r.get("server")}
    paths |= {r["server"].get("path") for r in raw["churn"].values() if r.get("server")}
    doc = json_header("bench/load.py", "see the keys: seconds, µs, KiB, requests/s", argv)
    doc.update({
        "command": command,
        "cpu": cpu_model(fallback="unknown CPU"),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "nofile": nofile,
        "tcp": tcp,
        "quick": args.quick,
        "kinds": kinds,
        "bluelet_paths": sorted(p for p in paths if p),
        "params": {"hold": args.hold, "hold_size": HOLD_SIZE, "hold_rounds": args.hold_rounds,
                   "idle": args.idle, "idle_note": args.idle_note, "idle_rounds": args.idle_rounds,
                   "active_conns": ACTIVE_CONNS, "active_size": ACTIVE_SIZE,
                   "seconds": args.seconds, "warmup": args.warmup, "max_other": args.max_other,
                   "cycles": args.cycles, "every": args.every, "cycle_size": CYCLE_SIZE,
                   "cycle_concurrency": CYCLE_CONCURRENCY, "warmup_share": WARMUP_SHARE,
                   "noise_kib": NOISE_KIB},
        "hold": hold, "idle": idle, "churn": churned,
        "checks": checks, "notes": notes, "failures": failures,
        "raw": {"hold": raw["hold"], "idle": raw["idle"]},
        "elapsed_seconds": time.perf_counter() - started,
    })
    md = render_markdown(doc)
    print(md)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, "w") as f:
            f.write(md)
        say("wrote %s" % args.md)
    if args.json:
        write_json(args.json, doc, ensure_ascii=False)
    return 1 if failures or any(c["met"] is False for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
