"""What TLS session resumption saves: ``connect(ssl=..., session=...)``.

Run from anywhere (it imports the installed bluelet, or ``--tree DIR``)::

    python bench/tls_resume.py            # 5 rounds, a few seconds
    python bench/tls_resume.py --quick

Each round, in one process and one loop, a bluelet TLS server (a
certificate from a throw-away CA made by ``trustme``) and a bluelet client:
N connections with a full handshake, then N resuming the first one's
session (``tls_session``). Each connection sends a line and reads it back,
then closes. The figures are per connection, medians over rounds: wall
time and the process's CPU time, which is both ends' work since both run
here. Every resumed connection is checked to have been resumed
(``session_reused``).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.append(HERE)
from _common import add_run_args, default_rounds, markdown_rows, median, say  # noqa: E402

WORKER = r"""
import json, ssl, sys, time
import bluelet, trustme

N = int(sys.argv[1])
ca = trustme.CA()
server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
client_ctx = ssl.create_default_context()
ca.configure_trust(client_ctx)

def echo(conn):
    line = yield conn.readline()
    yield conn.sendall(line)

def exchange(port, session):
    conn = yield bluelet.connect("127.0.0.1", port, ssl=client_ctx,
                                 server_hostname="localhost", session=session)
    with conn:
        yield conn.sendall(b"ping\n")
        assert (yield conn.readline()) == b"ping\n"
        return conn.tls_session, conn.sock.session_reused, conn.sock.version()

def timed(port, session):
    wall, cpu = time.perf_counter(), time.process_time()
    reused = 0
    for _ in range(N):
        _, was_reused, version = yield exchange(port, session)
        reused += was_reused
    return (time.perf_counter() - wall) / N, (time.process_time() - cpu) / N, reused, version

def main():
    listener = bluelet.Listener("127.0.0.1", 0, ssl=server_ctx)
    server = bluelet.serve(listener, echo)
    yield bluelet.spawn(server)
    session, _, _ = yield exchange(listener.port, None)
    full = yield timed(listener.port, None)
    resumed = yield timed(listener.port, session)
    listener.close()
    yield bluelet.join(server)
    return {"full": full, "resumed": resumed, "impl": bluelet.IMPLEMENTATION,
            "openssl": ssl.OPENSSL_VERSION}

print(json.dumps(bluelet.run(main())))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(parser, "rounds (default 5; --quick 1)", "1 round of 100 connections")
    parser.add_argument("--connections", type=int, default=300,
                        help="connections of each kind per round (300)")
    parser.add_argument("--tree", help="import bluelet from this directory")
    args = parser.parse_args(argv)
    default_rounds(args, 5)
    if args.quick:
        args.connections = 100
    env = dict(os.environ)
    if args.tree:
        env["PYTHONPATH"] = os.path.abspath(args.tree)
    results = []
    for index in range(args.rounds):
        # -I and a neutral directory: the installed bluelet, not a source tree.
        command = [sys.executable, "-c", WORKER, str(args.connections)]
        if not args.tree:
            command.insert(1, "-I")
        done = subprocess.run(command, env=env, cwd=os.path.dirname(HERE) if args.tree else "/",
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise SystemExit("round %d failed:\n%s" % (index + 1, done.stderr))
        results.append(json.loads(done.stdout))
        say("round %d: %s" % (index + 1, results[-1]))
    for kind in ("full", "resumed"):
        reused = [r[kind][2] for r in results]
        wanted = args.connections if kind == "resumed" else 0
        if any(count != wanted for count in reused):
            raise SystemExit("%s handshakes: %r reused of %d each" % (kind, reused, args.connections))
    full_wall = median([r["full"][0] for r in results])
    full_cpu = median([r["full"][1] for r in results])
    resumed_wall = median([r["resumed"][0] for r in results])
    resumed_cpu = median([r["resumed"][1] for r in results])
    first = results[0]
    print("TLS connections, %s core, %s, %s; %d rounds of %d connections, medians\n"
          % (first["impl"], first["full"][3], first["openssl"], args.rounds, args.connections))
    print(markdown_rows([
        ["handshake", "wall ms per connection", "CPU ms per connection (both ends)"],
        ["---", "---:", "---:"],
        ["full", "%.3f" % (full_wall * 1e3), "%.3f" % (full_cpu * 1e3)],
        ["resumed (session=)", "%.3f" % (resumed_wall * 1e3), "%.3f" % (resumed_cpu * 1e3)],
        ["saved", "%.0f%%" % (100 * (1 - resumed_wall / full_wall)),
         "%.0f%%" % (100 * (1 - resumed_cpu / full_cpu))]]))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"rounds": results, "full_wall": full_wall, "full_cpu": full_cpu,
                       "resumed_wall": resumed_wall, "resumed_cpu": resumed_cpu}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
