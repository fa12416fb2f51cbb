"""HTTP static files: bluelet's server against aiohttp on uvloop and gevent's WSGI server.

Run from the repository root::

    python bench/http_files.py            # 5 rounds, about a minute
    python bench/http_files.py --quick    # smoke run, about 15 s

What is measured
----------------
Each server serves one directory holding a 1 KiB and a 1 MiB file, in its
own process, on 127.0.0.1 (port 0):

* ``bluelet (cython)`` and ``bluelet (python)``: the handler of
  ``python -m bluelet http`` (``sendfile`` for the body, no access log);
* ``aiohttp (uvloop)``: ``app.router.add_static`` under ``uvloop.run``, no
  access log -- what an asyncio user would deploy (the goal's peer);
* ``aiohttp (uvloop), bytes in memory``: not a file server but a handler
  answering with the file's bytes, read at start-up: aiohttp's request
  handling without its static route's thread round trips, for context;
* ``gevent (WSGI)``: ``gevent.pywsgi.WSGIServer`` with a WSGI application
  that returns the file through ``wsgiref.util.FileWrapper`` (64 KiB reads),
  with TCP_NODELAY set on each connection (pywsgi sends head and body
  separately; with Nagle's algorithm on, each response would wait for the
  client's delayed ACK).

The client is bench/loadgen.c's HTTP mode (``--http PATH``): keep-alive
connections, each sending ``GET`` and reading the whole response (status and
length checked) before the next; a response that says ``Connection: close``
is followed by a new connection. 1 KiB with 50 connections, 1 MiB with 4.
Each round starts every server afresh (in an order rotated by round), primes
it for 0.3 s, then measures each file for ``--seconds`` after ``--warmup``;
the tables give the medians over ``--rounds``, with the server's CPU time
per request (1 KiB) and per MiB (1 MiB) from /proc.

Goals (issue 12): 1 KiB, bluelet (cython) >= 1.5x aiohttp (uvloop) in
requests per second; 1 MiB, bluelet (cython) >= gevent (WSGI) in MiB/s at no
more server CPU per MiB.

``--json PATH`` writes every figure. ``--tree DIR`` serves with the bluelet
package in DIR instead of the installed one. Internal:
``python bench/http_files.py --serve KIND DIR`` runs one server.
"""

import argparse
import atexit
import os
import signal
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.append(HERE)
from _common import (add_run_args, bluelet_under_test, default_rounds, describe_bluelet,  # noqa: E402
                     json_header, markdown_rows, median, missing_core, say, write_json)
import echo  # noqa: E402

SERVERS = [
    ("bluelet-cython", "bluelet (cython)"),
    ("bluelet-python", "bluelet (python)"),
    ("aiohttp-uvloop", "aiohttp (uvloop)"),
    ("aiohttp-memory", "aiohttp (uvloop), bytes in memory"),
    ("gevent-wsgi", "gevent (WSGI)"),
]
NAMES = dict(SERVERS)
# file name, size, connections
FILES = [("1k", 1024, 50), ("1m", 1024 * 1024, 4)]
RPS_GOAL = 1.5  # bluelet (cython) / aiohttp (uvloop), 1 KiB


# ============================================================================
# Servers (run in the subprocess: python bench/http_files.py --serve KIND DIR)
# ============================================================================

def serve_bluelet(expect, root):
    import bluelet
    from bluelet._demos import StaticFiles

    if bluelet.IMPLEMENTATION != expect:
        raise SystemExit("bluelet core is %r, wanted %r" % (bluelet.IMPLEMENTATION, expect))

    def main():
        listener = bluelet.Listener("127.0.0.1", 0)
        echo._announce(listener.port, impl=bluelet.IMPLEMENTATION, version=bluelet.__version__)
        yield bluelet.serve(listener, StaticFiles(root, access_log=False), grace=0)

    bluelet.run(main())


def serve_aiohttp(root, from_memory):
    import asyncio

    import aiohttp
    import uvloop
    from aiohttp import web

    async def main():
        app = web.Application()
        if from_memory:
            bodies = {}
            for name in os.listdir(root):
                with open(os.path.join(root, name), "rb") as f:
                    bodies["/" + name] = f.read()

            async def handler(request):
                return web.Response(body=bodies[request.path])

            app.router.add_get("/{name}", handler)
        else:
            app.router.add_static("/", root)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=socket.SOMAXCONN)
        await site.start()
        echo._announce(runner.addresses[0][1], impl="aiohttp", version=aiohttp.__version__,
                       uvloop=uvloop.__version__)
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_gevent(root):
    import gevent
    from gevent.pywsgi import WSGIServer
    from wsgiref.util import FileWrapper

    def app(environ, start_response):
        try:
            f = open(os.path.join(root, environ["PATH_INFO"].lstrip("/")), "rb")
        except OSError:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        size = os.fstat(f.fileno()).st_size
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return FileWrapper(f, 65536)

    class Server(WSGIServer):
        def handle(self, sock, address):
            # Else the body waits behind the head for the client's delayed
            # ACK (tens of ms per response): pywsgi writes them separately.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    srv = Server(("127.0.0.1", 0), app, log=None, backlog=socket.SOMAXCONN)
    srv.start()
    echo._announce(srv.server_port, impl="gevent", version=gevent.__version__)
    srv.serve_forever()


def serve(kind, root):
    echo._raise_nofile()
    echo._watchdog()
    if kind in ("bluelet-cython", "bluelet-python"):
        serve_bluelet(kind.split("-")[1], root)
    elif kind in ("aiohttp-uvloop", "aiohttp-memory"):
        serve_aiohttp(root, kind == "aiohttp-memory")
    elif kind == "gevent-wsgi":
        serve_gevent(root)
    else:
        raise SystemExit("unknown server %r" % kind)


# ============================================================================
# Bench side
# ============================================================================

def probe(kind):
    """None if the server can run here, else the reason it cannot."""
    if kind in ("bluelet-cython", "bluelet-python"):
        info = bluelet_under_test(echo.TREE[0], pure=kind == "bluelet-python")
        return missing_core(info) if kind == "bluelet-cython" else info.get("error")
    module = "gevent.pywsgi" if kind == "gevent-wsgi" else "aiohttp, uvloop"
    try:
        for name in module.split(", "):
            __import__(name)
    except ImportError as error:
        return str(error)
    return None


def run_http(loadgen, server, path, conns, seconds, warmup):
    """One loadgen --http run; its JSON, with rps None after an error."""
    timeout = warmup + seconds + 30
    cmd = [loadgen, "--port", str(server.port), "--http", path, "--conns", str(conns),
           "--seconds", str(seconds), "--warmup", str(warmup), "--server-pid", str(server.pid),
           "--timeout", str(timeout)]
    return echo.loadgen_json(cmd, timeout)


def one_round(loadgen, kinds, root, args, r):
    """Every server once, started afresh; {kind: {file: loadgen JSON}}."""
    out = {}
    for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
        server = echo.Server(kind, loadgen, script=__file__, serve_args=(root,))
        try:
            run_http(loadgen, server, "/1k", 10, 0.3, 0.0)  # prime: caches, allocator, lookups
            out[kind] = {}
            for name, _size, conns in FILES:
                got = run_http(loadgen, server, "/" + name, conns, args.seconds, args.warmup)
                if got.get("rps") is None:
                    say("  %s %s: %s %s" % (NAMES[kind], name, got.get("error"), server.stderr_tail()))
                out[kind][name] = got
        finally:
            server.stop()
        say("  round %d %-18s 1k %8s req/s   1m %8s MiB/s" % (
            r + 1, NAMES[kind], fmt(out[kind]["1k"].get("rps"), "%.0f"),
            fmt(out[kind]["1m"].get("mib_per_s"), "%.0f")))
    return out


def fmt(value, form):
    return "n/a" if value is None else form % value


def summarize(rounds, kinds):
    """Medians per server and file: rps, MiB/s, server CPU per request and per MiB."""
    table = {}
    for kind in kinds:
        table[kind] = {}
        for name, size, _conns in FILES:
            runs = [r[kind][name] for r in rounds if r.get(kind, {}).get(name, {}).get("rps")]
            per_req = [x["server_cpu"] / x["rps"] * 1e6 for x in runs if x.get("server_cpu", -1) >= 0]
            table[kind][name] = {
                "rps": median([x["rps"] for x in runs]),
                "mib_per_s": median([x["mib_per_s"] for x in runs]),
                "server_cpu": median([x["server_cpu"] for x in runs]),
                "cpu_us_per_request": median(per_req),
                "cpu_ms_per_mib": median([u * 1048576 / size / 1000 for u in per_req]),
            }
    return table


def goals(table):
    """[(goal, measured, met or None)] for the issue's two HTTP goals."""
    def get(kind, name, key):
        return table.get(kind, {}).get(name, {}).get(key)

    rows = []
    b, a = get("bluelet-cython", "1k", "rps"), get("aiohttp-uvloop", "1k", "rps")
    ratio = b / a if b and a else None
    rows.append(("1 KiB: bluelet (cython) >= %.1fx aiohttp (uvloop) req/s" % RPS_GOAL,
                 fmt(ratio, "%.2fx"), None if ratio is None else ratio >= RPS_GOAL))
    b, g = get("bluelet-cython", "1m", "mib_per_s"), get("gevent-wsgi", "1m", "mib_per_s")
    ratio = b / g if b and g else None
    rows.append(("1 MiB: bluelet (cython) >= gevent (WSGI) MiB/s", fmt(ratio, "%.2fx"),
                 None if ratio is None else ratio >= 1))
    b, g = get("bluelet-cython", "1m", "cpu_ms_per_mib"), get("gevent-wsgi", "1m", "cpu_ms_per_mib")
    ratio = b / g if b and g else None
    rows.append(("1 MiB: bluelet (cython) server CPU per MiB <= gevent (WSGI)", fmt(ratio, "%.2fx"),
                 None if ratio is None else ratio <= 1))
    return rows


def render(table, kinds, goal_rows, args, notes):
    lines = ["## HTTP static files (%d round%s, medians)" % (args.rounds, "" if args.rounds == 1 else "s"),
             "",
             "1 KiB with 50 keep-alive connections, 1 MiB with 4; server CPU from /proc.",
             "",
             "| server | 1 KiB req/s | CPU µs/request | 1 MiB req/s | MiB/s | CPU ms/MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for kind in kinds:
        k, m = table[kind]["1k"], table[kind]["1m"]
        lines.append(markdown_rows([[NAMES[kind], fmt(k["rps"], "%.0f"),
                                     fmt(k["cpu_us_per_request"], "%.1f"), fmt(m["rps"], "%.0f"),
                                     fmt(m["mib_per_s"], "%.0f"), fmt(m["cpu_ms_per_mib"], "%.3f")]]))
    lines += ["", "| goal | measured | met |", "| --- | ---: | --- |"]
    for goal, measured, met in goal_rows:
        lines.append(markdown_rows([[goal, measured, "n/a" if met is None else ("yes" if met else "no")]]))
    if notes:
        lines += [""] + ["- " + n for n in notes]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    add_run_args(p, rounds_help="rounds (default 5; --quick 1)",
                 quick_help="smoke run: 1 round, short intervals")
    p.add_argument("--seconds", type=float, help="measured interval per file (default 1.5; --quick 0.5)")
    p.add_argument("--warmup", type=float, help="warm-up before each interval (default 0.3; --quick 0.2)")
    p.add_argument("--servers", help="comma-separated subset of: " + ", ".join(k for k, _ in SERVERS))
    p.add_argument("--tree", help="directory holding the bluelet package to serve with")
    args = p.parse_args(argv)
    default_rounds(args, 5)
    if args.seconds is None:
        args.seconds = 0.5 if args.quick else 1.5
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.3
    wanted = [s.strip() for s in args.servers.split(",")] if args.servers else list(NAMES)
    bad = [s for s in wanted if s not in NAMES]
    if bad:
        p.error("unknown server(s): %s" % ", ".join(bad))
    args.kinds = [k for k, _ in SERVERS if k in wanted]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    echo.TREE[0] = os.path.abspath(args.tree) if args.tree else None
    atexit.register(echo._kill_children)
    signal.signal(signal.SIGTERM, echo._on_signal)
    loadgen = echo.build_loadgen()
    say(describe_bluelet(bluelet_under_test(echo.TREE[0])))
    kinds, notes = [], []
    for kind in args.kinds:
        why = probe(kind)
        if why:
            notes.append("%s left out: %s" % (NAMES[kind], why))
            say(notes[-1])
        else:
            kinds.append(kind)
    if not kinds:
        say("no server can run here")
        return 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bluelet-http-bench-") as root:
        for name, size, _conns in FILES:
            with open(os.path.join(root, name), "wb") as f:
                f.write(os.urandom(size))
        rounds = [one_round(loadgen, kinds, root, args, r) for r in range(args.rounds)]
    table = summarize(rounds, kinds)
    goal_rows = goals(table)
    print(render(table, kinds, goal_rows, args, notes))
    if args.json:
        doc = json_header("http", "requests per second", argv)
        doc.update({"seconds": args.seconds, "warmup": args.warmup, "rounds": rounds,
                    "medians": table, "notes": notes,
                    "goals": [{"goal": g, "measured": m, "met": ok} for g, m, ok in goal_rows]})
        write_json(args.json, doc)
    say("http bench took %.0f s" % (time.perf_counter() - started))
    failed = any(x.get("errors") for r in rounds for per in r.values() for x in per.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
