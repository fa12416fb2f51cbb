"""Echo servers under request/response load: bluelet against asyncio, uvloop and gevent.

Run from the repository root::

    python bench/echo.py                 # full run (about 6 minutes on 2 CPUs)
    python bench/echo.py --quick         # smoke run, well under a minute
    python bench/echo.py --json out.json

What is measured
----------------
Each server runs in its own subprocess on 127.0.0.1, port 0, and prints its
port (one JSON line on stdout); the load generator ``bench/loadgen.c`` -- a
small C epoll program, compiled on first use with the system ``cc -O2`` into
``bench/.build/`` -- opens C connections to it. Every connection sends S bytes,
waits until the same S bytes have come back (checked), and repeats
(ping-pong). Requests are counted for ``--seconds`` (default 1.2 s) after a
``--warmup`` (default 0.3 s); the figure is requests per second, the median of
``--rounds`` (default 3) rounds. One server process serves all cells of a
round; rounds are interleaved across the servers (the order rotates).

Servers (the same echo in each framework's idiomatic form):

* bluelet (cython), bluelet (python) -- this repository (``import bluelet``
  with the repository on ``sys.path``); the python core is forced with
  ``BLUELET_PURE_PYTHON=1``. ``bluelet.serve`` (the accept loop of
  ``bluelet.server``) on a ``Listener`` on port 0, so the port can be
  reported: ``data = yield conn.recv(65536)``, ``yield conn.sendall(data)``. The cython row is left out when the
  compiled core is not built.
* asyncio streams -- ``asyncio.start_server``, ``reader.read(65536)``,
  ``writer.write`` + ``await writer.drain()``.
* asyncio protocols -- ``Protocol.data_received`` -> ``transport.write``.
* uvloop streams, uvloop protocols -- the same code under ``uvloop.run``.
* gevent -- ``gevent.server.StreamServer``, ``sock.recv(65536)`` /
  ``sock.sendall``.
* C epoll (reference) -- ``loadgen --serve``, a minimal C echo server: the
  ceiling this machine and this load generator can reach (measured in the
  first round only).

A peer that cannot be imported (uvloop, gevent) is left out with a note.
Every server sets TCP_NODELAY (asyncio and uvloop do it themselves) and
listens with backlog SOMAXCONN.

Matrix: connections 1, 10, 100 x message size 64 B, 1 KiB, 16 KiB.

Idle scaling: bluelet (cython), bluelet (python), uvloop protocols and asyncio
protocols; 10 active connections with 1 KiB messages, first alone, then
while 10,000 idle connections are open (opened before the active ones,
each confirmed by one 1-byte round trip so the server has certainly accepted
it and sits in recv on it, then silent). Figure: with-idle / alone, both
measured back to back on the same server process, median over rounds. The
soft RLIMIT_NOFILE is raised to the hard limit in the load generator and in
every server.

Every server process first gets a throw-away 0.3 s run (10 x 1 KiB), so the
figures are steady state (see ``prime()``: asyncio is ~4x slower on its very
first connections, for a glibc reason).

Caveats: the server and the load generator share the machine's CPUs (2 here):
the single-threaded server gets at most one, the load generator another.
The table of CPU use shows which side was saturated (a server at ~100% is
the bottleneck) and the server's CPU time per request, a figure much less
sensitive to a busy machine than requests per second; the C reference row
shows how far the load generator itself can go. With 1 connection every
server waits for the other side most of the time: that column mostly
measures the machine's wake-up latency (in a VM, tens of µs), not the server.
The load generator also reports how many CPUs other processes kept busy
during each interval; an interval disturbed by more than ``--max-other``
(0.25 CPUs) is measured again, up to ``--retries`` times per cell, and the
least disturbed is kept. ``--tree DIR`` benchmarks the bluelet package in
DIR instead of this repository's (for A/B experiments on the core).

Goals: echo at 100 connections x 1 KiB, bluelet (cython) at least
uvloop streams, aiming for uvloop protocols; idle scaling >= 0.9 for
bluelet (cython).

``--json PATH`` writes every figure (per round too) as JSON; see ``main()``.
Internal: ``python bench/echo.py --serve KIND`` runs one server.
"""

import argparse
import atexit
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LOADGEN_SRC = os.path.join(HERE, "loadgen.c")
BUILD_DIR = os.path.join(HERE, ".build")
LOADGEN_BIN = os.path.join(BUILD_DIR, "loadgen")

# key -> display name, in table order
SERVERS = [
    ("bluelet-cython", "bluelet (cython)"),
    ("bluelet-python", "bluelet (python)"),
    ("bluelet-guest", "bluelet (cython) in uvloop"),
    ("asyncio-streams", "asyncio streams"),
    ("asyncio-protocols", "asyncio protocols"),
    ("uvloop-streams", "uvloop streams"),
    ("uvloop-protocols", "uvloop protocols"),
    ("gevent", "gevent"),
    ("c-epoll", "C epoll (reference)"),
]
NAMES = dict(SERVERS)
IDLE_SERVERS = ["bluelet-cython", "bluelet-python", "uvloop-protocols", "asyncio-protocols"]
REFERENCE = "c-epoll"

FULL_CELLS = [(c, s) for c in (1, 10, 100) for s in (64, 1024, 16384)]
QUICK_CELLS = [(1, 64), (100, 1024), (10, 16384)]
GOAL_CELL = (100, 1024)

SERVER_MAX_SECONDS = 1800  # a server never outlives this, whatever happens to the bench


if HERE not in sys.path:  # run as a script it is there already; append shadows nothing
    sys.path.append(HERE)
from _common import (add_run_args, bluelet_under_test, cpu_model as _cpu_model,  # noqa: E402
                     default_rounds, json_header, markdown_rows, median, missing_core, say,
                     write_json)


# ============================================================================
# Servers (run in the subprocess: python bench/echo.py --serve KIND)
# ============================================================================

def _raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _announce(port, **info):
    info["port"] = port
    info["pid"] = os.getpid()
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()


def _watchdog():
    """Exit when the bench goes away (stdin EOF) or after SERVER_MAX_SECONDS."""
    import threading

    def watch():
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    timer = threading.Timer(SERVER_MAX_SECONDS, lambda: os._exit(3))
    timer.daemon = True
    timer.start()


def serve_bluelet(expect, guest=False):
    import bluelet

    if bluelet.IMPLEMENTATION != expect:
        raise SystemExit("bluelet core is %r, wanted %r" % (bluelet.IMPLEMENTATION, expect))

    def echoer(conn):
        while True:
            data = yield conn.recv(65536)
            if not data:
                break
            yield conn.sendall(data)

    def announce(listener):
        # One pass after serve() began: the descriptors the server keeps
        # (the loop's poller, and the wake-up socket serve() sets up for
        # Ctrl-C) exist by then, so a count taken after the announcement is
        # the server's at rest.
        yield bluelet.null()
        _announce(listener.port, impl=bluelet.IMPLEMENTATION, version=bluelet.__version__,
                  path=os.path.dirname(bluelet.__file__))

    def main():
        listener = bluelet.Listener("127.0.0.1", 0)
        yield bluelet.spawn(announce(listener))
        # No grace period: the bench stops servers that still hold idle
        # connections, and must not wait for them.
        yield bluelet.serve(listener, echoer, grace=0)

    if guest:
        # The same program as a guest of uvloop (bluelet.aio).
        bluelet.run(main(), host="uvloop")
    else:
        bluelet.run(main())


def serve_asyncio(streams, use_uvloop):
    import asyncio

    info = {"impl": "asyncio"}
    if use_uvloop:
        import uvloop
        info = {"impl": "uvloop", "version": uvloop.__version__}

    async def handle(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

        def connection_lost(self, exc):
            self.transport = None

    async def main():
        loop = asyncio.get_running_loop()
        if streams:
            srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=socket.SOMAXCONN)
        else:
            srv = await loop.create_server(Echo, "127.0.0.1", 0, backlog=socket.SOMAXCONN)
        _announce(srv.sockets[0].getsockname()[1], loop=type(loop).__module__ + "." + type(loop).__name__,
                  **info)
        async with srv:
            await srv.serve_forever()

    if use_uvloop:
        import uvloop
        if hasattr(uvloop, "run"):
            uvloop.run(main())
        else:
            uvloop.install()
            asyncio.run(main())
    else:
        asyncio.run(main())


def serve_gevent():
    import gevent
    from gevent.server import StreamServer

    def handle(sock, addr):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass

    srv = StreamServer(("127.0.0.1", 0), handle, backlog=socket.SOMAXCONN)
    srv.start()
    _announce(srv.server_port, impl="gevent", version=gevent.__version__)
    srv.serve_forever()


def serve(kind):
    _raise_nofile()
    _watchdog()
    if kind == "bluelet-cython":
        serve_bluelet("cython")
    elif kind == "bluelet-python":
        serve_bluelet("python")
    elif kind == "bluelet-guest":
        serve_bluelet("cython", guest=True)
    elif kind in ("asyncio-streams", "asyncio-protocols", "uvloop-streams", "uvloop-protocols"):
        serve_asyncio(kind.endswith("streams"), kind.startswith("uvloop"))
    elif kind == "gevent":
        serve_gevent()
    else:
        raise SystemExit("unknown server %r" % kind)


# ============================================================================
# Bench side
# ============================================================================

_children = []


def _kill_children():
    for p in _children:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _on_signal(signum, frame):
    _kill_children()
    raise SystemExit(128 + signum)


def build_loadgen():
    """Compile loadgen.c into bench/.build/ when missing or stale; return the path."""
    if (os.path.exists(LOADGEN_BIN)
            and os.path.getmtime(LOADGEN_BIN) >= os.path.getmtime(LOADGEN_SRC)):
        return LOADGEN_BIN
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler (cc) found to build bench/loadgen.c")
    os.makedirs(BUILD_DIR, exist_ok=True)
    tmp = "%s.%d.tmp" % (LOADGEN_BIN, os.getpid())
    cmd = [cc, "-O2", "-o", tmp, LOADGEN_SRC]
    say("building load generator: %s" % " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("building loadgen failed:\n%s" % res.stderr)
    os.replace(tmp, LOADGEN_BIN)  # atomic: a concurrent run never sees half a binary
    return LOADGEN_BIN


TREE = [None]  # where the servers import bluelet from (--tree); None: installed


def server_env(kind):
    env = dict(os.environ)
    env.pop("BLUELET_PURE_PYTHON", None)
    if kind == "bluelet-python":
        env["BLUELET_PURE_PYTHON"] = "1"
    if TREE[0]:
        env["PYTHONPATH"] = TREE[0] + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def probe(kind):
    """None if the server can run here, else the reason it cannot."""
    if kind == REFERENCE:
        return None
    if kind in ("bluelet-cython", "bluelet-python", "bluelet-guest"):
        info = bluelet_under_test(TREE[0], pure=kind == "bluelet-python")
        why = info.get("error") if kind == "bluelet-python" else missing_core(info)
        if why or kind != "bluelet-guest":
            return why
    mods = {"bluelet-guest": "import uvloop",
            "asyncio-streams": "import asyncio",
            "asyncio-protocols": "import asyncio",
            "uvloop-streams": "import uvloop",
            "uvloop-protocols": "import uvloop",
            "gevent": "import gevent.server"}
    with tempfile.TemporaryDirectory(prefix="bluelet-probe-") as cwd:
        res = subprocess.run([sys.executable, "-I", "-c", mods[kind]], cwd=cwd,
                             env=server_env(kind), capture_output=True, text=True, timeout=60)
    if res.returncode == 0:
        return None
    return (res.stderr.strip().splitlines() or ["exit %d" % res.returncode])[-1]


class Server:
    """One server in its own process, started with ``script --serve KIND
    [serve_args]`` (this file's, unless another benchmark's is given); it
    announces its port on stdout."""

    def __init__(self, kind, loadgen, script=__file__, serve_args=()):
        self.kind = kind
        if kind == REFERENCE:
            cmd = [loadgen, "--serve", "--max-seconds", str(SERVER_MAX_SECONDS)]
        else:
            cmd = [sys.executable, os.path.abspath(script), "--serve", kind, *serve_args]
        self.errfile = open(os.path.join(BUILD_DIR, "server-%s.stderr" % kind), "w+")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=server_env(kind), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errfile)
        _children.append(self.proc)
        line = self._read_line(30)
        if not line:
            self.stop()
            raise RuntimeError("server %s did not announce a port: %s" % (kind, self.stderr_tail()))
        line = line.strip()
        self.info = json.loads(line) if line.startswith("{") else {"port": int(line)}
        self.port = int(self.info["port"])
        self.pid = self.proc.pid

    def _read_line(self, timeout):
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
        return buf.decode()

    def alive(self):
        return self.proc.poll() is None

    def stderr_tail(self, n=5):
        try:
            self.errfile.flush()
            self.errfile.seek(0)
            lines = self.errfile.read().strip().splitlines()
        except (OSError, ValueError):
            return ""
        return " | ".join(lines[-n:])

    def stop(self):
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for f in (p.stdin, p.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.errfile.close()


def run_loadgen(loadgen, server, conns, size, seconds, warmup, idle=0):
    timeout = warmup + seconds + (90 if idle else 30)
    cmd = [loadgen, "--port", str(server.port), "--conns", str(conns), "--size", str(size),
           "--seconds", str(seconds), "--warmup", str(warmup), "--server-pid", str(server.pid),
           "--timeout", str(timeout)]
    if idle:
        cmd += ["--idle", str(idle)]
    return loadgen_json(cmd, timeout)


def loadgen_json(cmd, timeout):
    """Run a loadgen command; its JSON, with rps None after an error."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 15)
    except subprocess.TimeoutExpired:
        return {"errors": 1, "error": "load generator timed out", "rps": None}
    lines = [l for l in res.stdout.strip().splitlines() if l.startswith("{")]
    if not lines:
        return {"errors": 1, "error": "load generator exit %d: %s" % (res.returncode, res.stderr.strip()),
                "rps": None}
    out = json.loads(lines[-1])
    if out.get("error") or out.get("errors"):
        out.setdefault("errors", 1)
        out["rps"] = None
    return out


def prime(loadgen, server):
    """A throw-away 0.3 s run (10 x 1 KiB) right after a server starts, so that
    every figure is steady state. Without it, asyncio's first connections are
    ~4x slower: its transports recv() into 256 KiB buffers, which glibc serves
    with mmap + mremap + munmap per request until its dynamic mmap threshold
    rises (after the first connections close)."""
    run_loadgen(loadgen, server, 10, 1024, 0.3, 0.0)


def measure(loadgen, server, conns, size, args, idle=0, budget=None):
    """run_loadgen, repeated (up to --retries times, within the shared budget)
    while other processes kept more than --max-other CPUs busy; the run with
    the least foreign load is kept, with the number of tries."""
    best = None
    tries = 0
    while True:
        out = run_loadgen(loadgen, server, conns, size, args.seconds, args.warmup, idle=idle)
        tries += 1
        other = out.get("other_cpu")
        if best is None or (out.get("rps") is not None and (
                best.get("rps") is None or (other is not None and other < best.get("other_cpu", 9)))):
            best = out
        if (out.get("rps") is None or other is None or other <= args.max_other
                or tries > args.retries or not server.alive()
                or (budget is not None and budget[0] <= 0)):
            break
        if budget is not None:
            budget[0] -= 1
        say("    (other processes kept %.2f CPUs busy; measuring again)" % other)
    best["tries"] = tries
    return best


def cell_key(conns, size):
    return "%dx%d" % (conns, size)


def fmt_size(size):
    return "%d KiB" % (size // 1024) if size >= 1024 and size % 1024 == 0 else "%d B" % size


def fmt_rps(v):
    if v is None:
        return "n/a"
    if v >= 1e5:
        return "%.0fk" % (v / 1e3)
    if v >= 1e3:
        return "%.1fk" % (v / 1e3)
    return "%.0f" % v


def fmt_ratio(r):
    return "n/a" if r is None else "%.2f×" % r


def fmt_pct(v):
    return "n/a" if v is None or v < 0 else "%.0f%%" % (100 * v)


def cpu_model():
    return _cpu_model(fallback="unknown CPU")


def children_of_self():
    """PIDs of our live child processes (Linux), for the stray-process check."""
    pids = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                pids.update(int(x) for x in f.read().split())
    except OSError:
        return None
    return sorted(pids)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", metavar="KIND", help=argparse.SUPPRESS)
    add_run_args(p, rounds_help="rounds per figure (default 3; --quick 1)",
                 quick_help="smoke run: 3 cells, 1 round, short intervals (well under a minute)")
    p.add_argument("--seconds", type=float, help="measured interval per cell (default 1.2; --quick 0.5)")
    p.add_argument("--warmup", type=float, help="warm-up before each interval (default 0.3; --quick 0.2)")
    p.add_argument("--idle", type=int, default=10000, help="idle connections for idle scaling (10000)")
    p.add_argument("--servers", help="comma-separated subset of: " + ", ".join(k for k, _ in SERVERS))
    p.add_argument("--no-idle", action="store_true", help="skip the idle-scaling test")
    p.add_argument("--tree",
                   help="directory holding the bluelet package the servers import, for A/B "
                        "experiments (default: the installed bluelet)")
    p.add_argument("--no-reference", action="store_true", help="skip the C epoll reference row")
    p.add_argument("--max-other", type=float, default=0.25,
                   help="measure a cell again when other processes kept more than this many CPUs "
                        "busy meanwhile (default 0.25)")
    p.add_argument("--retries", type=int, default=2, help="at most this many re-measurements per cell (2)")
    p.add_argument("--retry-budget", type=int, help="re-measurements in the whole run (default 40; --quick 5)")
    args = p.parse_args(argv)
    default_rounds(args, 3)
    if args.seconds is None:
        args.seconds = 0.5 if args.quick else 1.2
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.3
    if args.retry_budget is None:
        args.retry_budget = 5 if args.quick else 40
    args.cells = QUICK_CELLS if args.quick else FULL_CELLS
    if args.servers:
        wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
        bad = [s for s in wanted if s not in NAMES]
        if bad:
            p.error("unknown server(s): %s" % ", ".join(bad))
        args.kinds = [k for k, _ in SERVERS if k in wanted]
    else:
        args.kinds = [k for k, _ in SERVERS if not (k == REFERENCE and args.no_reference)]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0

    started = time.perf_counter()
    TREE[0] = os.path.abspath(args.tree) if args.tree else None
    atexit.register(_kill_children)
    signal.signal(signal.SIGTERM, _on_signal)
    import resource
    nofile = _raise_nofile()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    notes = []

    loadgen = build_loadgen()

    # Which servers can run here?
    kinds = []
    info = {}
    for kind in args.kinds:
        why = probe(kind)
        if why:
            msg = "%s left out: %s" % (NAMES[kind], why)
            say(msg)
            notes.append(msg)
        else:
            kinds.append(kind)
    idle_kinds = [] if args.no_idle else [k for k in IDLE_SERVERS if k in kinds]
    idle_count = args.idle
    if idle_kinds and hard < idle_count + 200:
        msg = ("idle scaling with %d idle connections needs RLIMIT_NOFILE >= %d (hard limit %d); "
               "using %d" % (idle_count, idle_count + 200, hard, max(hard - 200, 0)))
        notes.append(msg)
        say(msg)
        idle_count = max(hard - 200, 0)
        if idle_count == 0:
            idle_kinds = []

    cells = args.cells
    raw = {k: {cell_key(c, s): [] for c, s in cells} for k in kinds}
    idle_raw = {k: [] for k in idle_kinds}
    failures = []
    retry_budget = [args.retry_budget]

    def fail(msg):
        say("  ! " + msg)
        failures.append(msg)

    def start_server(kind, what=""):
        """A Server for kind, or None (the failure recorded) if it does not start."""
        try:
            return Server(kind, loadgen)
        except Exception as exc:
            fail("%s%s: %s" % (NAMES[kind], what, exc))
            return None

    for r in range(args.rounds):
        say("round %d/%d" % (r + 1, args.rounds))
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)] if kinds else []
        for kind in order:
            if kind == REFERENCE and r > 0:
                continue
            srv = start_server(kind)
            if srv is None:
                continue
            info[kind] = {k: v for k, v in srv.info.items() if k not in ("port", "pid")}
            try:
                prime(loadgen, srv)
                for conns, size in cells:
                    if not srv.alive():
                        fail("%s died: %s" % (NAMES[kind], srv.stderr_tail()))
                        break
                    out = measure(loadgen, srv, conns, size, args, budget=retry_budget)
                    out["round"] = r
                    raw[kind][cell_key(conns, size)].append(out)
                    if out["rps"] is None:
                        fail("%s %d conns x %s, round %d: %s%s" % (
                            NAMES[kind], conns, fmt_size(size), r + 1, out.get("error"),
                            "" if srv.alive() else " (server died: %s)" % srv.stderr_tail()))
                    say("  %-20s %3d x %-6s %8s req/s  cpu: server %s, loadgen %s, other %s"
                        % (NAMES[kind], conns, fmt_size(size), fmt_rps(out["rps"]),
                           fmt_pct(out.get("server_cpu")), fmt_pct(out.get("loadgen_cpu")),
                           fmt_pct(out.get("other_cpu"))))
            finally:
                srv.stop()

        for kind in (order if idle_kinds else []):
            if kind not in idle_kinds:
                continue
            srv = start_server(kind, " (idle)")
            if srv is None:
                continue
            try:
                prime(loadgen, srv)
                alone = measure(loadgen, srv, 10, 1024, args, budget=retry_budget)
                with_idle = (measure(loadgen, srv, 10, 1024, args, idle=idle_count,
                                     budget=retry_budget)
                             if srv.alive() else {"rps": None, "error": "server died"})
            finally:
                srv.stop()
            ratio = (with_idle["rps"] / alone["rps"]
                     if alone.get("rps") and with_idle.get("rps") else None)
            idle_raw[kind].append({"round": r, "alone": alone, "with_idle": with_idle, "ratio": ratio})
            for label, out in (("alone", alone), ("with idle", with_idle)):
                if out.get("rps") is None:
                    fail("%s idle scaling (%s), round %d: %s" % (NAMES[kind], label, r + 1,
                                                                   out.get("error")))
            say("  %-20s idle: alone %s, with %d idle %s (opened in %.1f s) -> %s"
                % (NAMES[kind], fmt_rps(alone.get("rps")), idle_count, fmt_rps(with_idle.get("rps")),
                   with_idle.get("idle_open_seconds") or 0, fmt_ratio(ratio)))

    # ---- aggregate ----------------------------------------------------------
    results = {}
    for kind in kinds:
        res = {}
        for conns, size in cells:
            runs = raw[kind][cell_key(conns, size)]
            rps = [o.get("rps") for o in runs]
            ok = [o for o in runs if o.get("rps") is not None]
            res[cell_key(conns, size)] = {
                "conns": conns, "size": size,
                "median_rps": median(rps),
                "rounds_rps": rps,
                "latency_us_p50": median([o["latency_us"]["p50"] for o in ok]),
                "latency_us_p99": median([o["latency_us"]["p99"] for o in ok]),
                "server_cpu": median([o.get("server_cpu") for o in ok if o.get("server_cpu", -1) >= 0]),
                "loadgen_cpu": median([o.get("loadgen_cpu") for o in ok]),
                "other_cpu": median([o.get("other_cpu") for o in ok if o.get("other_cpu", -1) >= 0]),
                "server_cpu_us_per_request": median([
                    1e6 * o["server_cpu"] / o["rps"] for o in ok if o.get("server_cpu", -1) > 0]),
                "errors": sum(1 for o in runs if o.get("rps") is None),
            }
        results[NAMES[kind]] = res

    idle_results = {}
    for kind in idle_kinds:
        rounds = idle_raw[kind]
        idle_results[NAMES[kind]] = {
            "alone_rps": median([x["alone"].get("rps") for x in rounds]),
            "with_idle_rps": median([x["with_idle"].get("rps") for x in rounds]),
            "ratio": median([x["ratio"] for x in rounds]),
            "rounds_ratio": [x["ratio"] for x in rounds],
            "rounds_alone_rps": [x["alone"].get("rps") for x in rounds],
            "rounds_with_idle_rps": [x["with_idle"].get("rps") for x in rounds],
            "idle_open_seconds": median([x["with_idle"].get("idle_open_seconds") for x in rounds]),
            "server_cpu_alone": median([x["alone"].get("server_cpu") for x in rounds]),
            "server_cpu_with_idle": median([x["with_idle"].get("server_cpu") for x in rounds]),
            "server_cpu_us_per_request_alone": median([
                1e6 * x["alone"]["server_cpu"] / x["alone"]["rps"] for x in rounds
                if x["alone"].get("rps") and x["alone"].get("server_cpu", -1) > 0]),
            "server_cpu_us_per_request_with_idle": median([
                1e6 * x["with_idle"]["server_cpu"] / x["with_idle"]["rps"] for x in rounds
                if x["with_idle"].get("rps") and x["with_idle"].get("server_cpu", -1) > 0]),
        }

    # ---- goals --------------------------------------------------------------
    goals = []
    gk = cell_key(*GOAL_CELL)

    def cell_rps(kind):
        return results.get(NAMES[kind], {}).get(gk, {}).get("median_rps")

    def cell_cost(kind):
        return results.get(NAMES[kind], {}).get(gk, {}).get("server_cpu_us_per_request")

    def cell_disturbed(kind):
        # Whether a kept interval of the goal cell had other processes
        # busier than --max-other: a ratio built on it is marked.
        return any((o.get("other_cpu") or 0) > args.max_other
                   for o in raw.get(kind, {}).get(gk, []))

    ours = cell_rps("bluelet-cython")
    for peer, target, what in (("uvloop-streams", 1.0, "goal"), ("uvloop-protocols", 1.0, "aim")):
        theirs = cell_rps(peer)
        ratio = ours / theirs if ours and theirs else None
        cost_ours, cost_theirs = cell_cost("bluelet-cython"), cell_cost(peer)
        goals.append({
            "goal": "echo 100 conns x 1 KiB: bluelet (cython) / %s req/s >= %.1f (%s)"
                    % (NAMES[peer], target, what),
            "value": ratio, "target": target, "met": None if ratio is None else ratio >= target,
            "disturbed": cell_disturbed("bluelet-cython") or cell_disturbed(peer),
            # the same comparison by server CPU time per request (theirs / ours: > 1 means
            # bluelet needs less CPU per request); less sensitive to a busy machine
            "cpu_per_request_ratio": (cost_theirs / cost_ours if cost_ours and cost_theirs else None)})
    guest = cell_rps("bluelet-guest")
    ratio = guest / ours if guest and ours else None
    goals.append({"goal": "echo 100 conns x 1 KiB: %s / bluelet (cython) req/s >= 0.8"
                          % NAMES["bluelet-guest"],
                  "value": ratio, "target": 0.8, "met": None if ratio is None else ratio >= 0.8,
                  "disturbed": cell_disturbed("bluelet-cython") or cell_disturbed("bluelet-guest")})
    idle_ratio = idle_results.get(NAMES["bluelet-cython"], {}).get("ratio")
    goals.append({"goal": "idle scaling, bluelet (cython): with %d idle / alone >= 0.9" % idle_count,
                  "value": idle_ratio, "target": 0.9,
                  "met": None if idle_ratio is None else idle_ratio >= 0.9})

    others = [o.get("other_cpu") for k in kinds for v in raw[k].values() for o in v
              if o.get("other_cpu") is not None and o.get("other_cpu") >= 0]
    others += [x[w].get("other_cpu") for k in idle_kinds for x in idle_raw[k]
               for w in ("alone", "with_idle") if x[w].get("other_cpu") is not None]
    retried = sum(o.get("tries", 1) - 1 for k in kinds for v in raw[k].values() for o in v)
    retried += sum(x[w].get("tries", 1) - 1 for k in idle_kinds for x in idle_raw[k]
                   for w in ("alone", "with_idle"))
    if others:
        busy = sum(1 for o in others if o > args.max_other)
        notes.append("other processes on the machine during the measured intervals: median %.2f CPUs, "
                     "max %.2f; %d of %d kept intervals above %.2f CPUs%s; %d re-measurement%s"
                     % (statistics.median(others), max(others), busy, len(others), args.max_other,
                        " (figures there are disturbed)" if busy else "", retried,
                        "" if retried == 1 else "s"))

    for kind in kinds:
        if kind.startswith("bluelet-") and info.get(kind):
            notes.append("%s ran bluelet %s from %s (IMPLEMENTATION %r)" % (
                NAMES[kind], info[kind].get("version"), info[kind].get("path"),
                info[kind].get("impl")))

    # ---- stray processes ------------------------------------------------------
    _kill_children()
    stray = [p.pid for p in _children if p.poll() is None]
    left = children_of_self()
    if stray:
        notes.append("stray server processes still running: %s" % stray)
    if left:
        notes.append("child processes still alive at the end: %s" % left)
    if not stray and not left:
        notes.append("all %d server processes ended; no child process left" % len(_children))

    elapsed = time.perf_counter() - started

    # ---- print --------------------------------------------------------------
    shown = [k for k in kinds]
    print("## Echo: request/response requests per second (median of %d round%s)"
          % (args.rounds, "" if args.rounds == 1 else "s"))
    print()
    print("Python %s on %s %s, %s, %d CPUs, Linux %s%s. Server and load generator (bench/loadgen.c, "
          "C/epoll) run on the same machine and share its %d CPUs. 127.0.0.1; %.1f s measured "
          "after %.1f s warm-up per cell; messages echoed verbatim (checked)."
          % (platform.python_version(), platform.system(), platform.machine(), cpu_model(),
             os.cpu_count() or 0, platform.release(), "; --quick" if args.quick else "",
             os.cpu_count() or 0, args.seconds, args.warmup))
    print()
    head = ["server"] + ["%d × %s" % (c, fmt_size(s)) for c, s in cells]
    rows = [head, ["---"] + ["---:"] * len(cells)]
    for kind in shown:
        res = results[NAMES[kind]]
        rows.append([NAMES[kind]] + [fmt_rps(res[cell_key(c, s)]["median_rps"]) for c, s in cells])
    print(markdown_rows(rows))
    print()
    paths = sorted({i.get("path") for i in info.values() if i and i.get("path")})
    if paths:
        print("bluelet imported from: %s" % ", ".join(paths))
        print()
    if REFERENCE in kinds:
        print("C epoll (reference): a minimal C epoll echo server (loadgen --serve), the ceiling "
              "of this machine and load generator%s."
              % ("; first round only" if args.rounds > 1 else ""))
    if any(c == 1 for c, _ in cells):
        print("1-connection cells are bound by the round-trip wake-up latency of the machine "
              "(both sides mostly sleep), not by the servers.")
    print("Each server process first gets a throw-away 0.3 s run so the figures are steady state.")
    print()

    # relative to bluelet (cython)
    if "bluelet-cython" in kinds:
        print("### Relative to bluelet (cython) (> 1: the row is faster)")
        print()
        rows = [head, ["---"] + ["---:"] * len(cells)]
        base = results[NAMES["bluelet-cython"]]
        for kind in shown:
            if kind == "bluelet-cython":
                continue
            res = results[NAMES[kind]]
            row = [NAMES[kind]]
            for c, s in cells:
                a, b = res[cell_key(c, s)]["median_rps"], base[cell_key(c, s)]["median_rps"]
                row.append(fmt_ratio(a / b) if a and b else "n/a")
            rows.append(row)
        print(markdown_rows(rows))
        print()

    if any(gk in results[NAMES[k]] for k in kinds):
        print("### %d connections × %s: latency and CPU use (who is saturated)"
              % (GOAL_CELL[0], fmt_size(GOAL_CELL[1])))
        print()
        rows = [["server", "req/s", "p50 latency", "p99 latency", "server CPU", "server CPU / req",
                 "loadgen CPU", "other CPU"],
                ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]]
        for kind in shown:
            x = results[NAMES[kind]].get(gk)
            if not x:
                continue
            rows.append([NAMES[kind], fmt_rps(x["median_rps"]),
                         "n/a" if x["latency_us_p50"] is None else "%.0f µs" % x["latency_us_p50"],
                         "n/a" if x["latency_us_p99"] is None else "%.0f µs" % x["latency_us_p99"],
                         fmt_pct(x["server_cpu"]),
                         "n/a" if x["server_cpu_us_per_request"] is None
                         else "%.1f µs" % x["server_cpu_us_per_request"],
                         fmt_pct(x["loadgen_cpu"]), fmt_pct(x["other_cpu"])])
        print(markdown_rows(rows))
        print()
        print("CPU use = CPU seconds / wall seconds of the measured interval (100% = one CPU); "
              "other = what the rest of the machine kept busy meanwhile (other processes, "
              "interrupts). A server at ~100% is the bottleneck.")
        print()

    if idle_kinds:
        print("### Idle scaling: 10 active connections × 1 KiB, alone vs with {:,} idle connections"
              .format(idle_count))
        print()
        rows = [["server", "alone", "with {:,} idle".format(idle_count), "ratio",
                 "server CPU alone / idle", "CPU / req alone / idle", "idle open time"],
                ["---", "---:", "---:", "---:", "---:", "---:", "---:"]]
        for kind in idle_kinds:
            x = idle_results[NAMES[kind]]
            rows.append([NAMES[kind], fmt_rps(x["alone_rps"]), fmt_rps(x["with_idle_rps"]),
                         fmt_ratio(x["ratio"]),
                         "%s / %s" % (fmt_pct(x["server_cpu_alone"]), fmt_pct(x["server_cpu_with_idle"])),
                         "%s / %s" % tuple("n/a" if v is None else "%.1f µs" % v for v in (
                             x["server_cpu_us_per_request_alone"], x["server_cpu_us_per_request_with_idle"])),
                         "n/a" if x["idle_open_seconds"] is None else "%.1f s" % x["idle_open_seconds"]])
        print(markdown_rows(rows))
        print()
        print("ratio: median over rounds of (with idle / alone), both measured back to back on one "
              "server process. RLIMIT_NOFILE soft limit raised to %d (hard) in bench, load generator "
              "and servers." % nofile)
        print()

    print("### Goals")
    print()
    for g in goals:
        status = "n/a" if g["met"] is None else ("met" if g["met"] else "MISSED")
        extra = ""
        if g.get("cpu_per_request_ratio") is not None:
            extra = " (by server CPU per request: %s)" % fmt_ratio(g["cpu_per_request_ratio"])
        print("- %s: %s -- %s%s" % (g["goal"], fmt_ratio(g["value"]), status, extra))
    print()
    for note in notes:
        print("- " + note)
    for msg in failures:
        print("- FAILED: " + msg)
    print("- took %.0f s" % elapsed)

    if args.json:
        doc = json_header("bench/echo.py", "requests per second (median of rounds)", argv)
        doc.update({
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "shared_cpus_note": "server and load generator share the machine's %d CPUs"
                                % (os.cpu_count() or 0),
            "rounds": args.rounds,
            "reference_rounds": 1 if REFERENCE in kinds else 0,
            "quick": args.quick,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "cells": [{"conns": c, "size": s, "key": cell_key(c, s)} for c, s in cells],
            "servers": {NAMES[k]: {"key": k, "info": info.get(k)} for k in kinds},
            "results": results,
            "idle": {"idle_connections": idle_count, "active_connections": 10, "size": 1024,
                     "results": idle_results},
            "goals": goals,
            "notes": notes,
            "failures": failures,
            "raw": {"echo": {NAMES[k]: raw[k] for k in kinds},
                    "idle": {NAMES[k]: idle_raw[k] for k in idle_kinds}},
            "elapsed_seconds": elapsed,
        })
        write_json(args.json, doc)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
