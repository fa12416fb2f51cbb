"""Make docs/timeline.png: a trace of bluelet's echo server under real load.

    python tools/trace_picture.py [--out docs/timeline.png]

Builds bench/loadgen.c (the benchmark's C load generator), runs an echo
server (``bluelet.serve``) with ``run(trace=...)`` in this process's child,
points 6 loadgen connections of 1 KiB at it for a short while, and draws
the trace with ``python -m bluelet trace --png``. Needs a C compiler and
matplotlib; runs in a scratch directory, so it imports the installed
bluelet (or PYTHONPATH's).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SERVER = r"""
import json, sys
import bluelet

def echo(conn):
    while True:
        data = yield conn.recv(65536)
        if not data:
            return
        yield conn.sendall(data)

def main():
    listener = bluelet.Listener("127.0.0.1", 0)
    print(json.dumps({"port": listener.port}), flush=True)
    yield bluelet.move_on_after(float(sys.argv[2]), bluelet.serve(listener, echo, grace=0))
    listener.close()

bluelet.run(main(), trace=sys.argv[1])
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "timeline.png"))
    parser.add_argument("--seconds", type=float, default=0.35, help="how long the server runs")
    parser.add_argument("--window", default="100:101.5",
                        help="the milliseconds drawn, START:END (default 100:101.5, under load)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        loadgen = os.path.join(work, "loadgen")
        subprocess.run(["cc", "-O2", "-o", loadgen, os.path.join(ROOT, "bench", "loadgen.c")],
                       check=True)
        trace = os.path.join(work, "trace.json")
        server = subprocess.Popen([sys.executable, "-c", SERVER, trace, str(args.seconds)],
                                  stdout=subprocess.PIPE, text=True, cwd=work)
        port = json.loads(server.stdout.readline())["port"]
        subprocess.run([loadgen, "--port", str(port), "--conns", "6", "--size", "1024",
                        "--seconds", "0.004", "--warmup", "0.2", "--timeout", "30"],
                       check=True, stdout=subprocess.DEVNULL)
        if server.wait(60) != 0:
            raise SystemExit("the traced server failed")
        subprocess.run([sys.executable, "-m", "bluelet", "trace", trace, "--png", args.out,
                        "--window", args.window], check=True, cwd=work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
