"""``python -m bluelet echo|http|bench|info``: two servers, the benchmark, and
what is installed.

``echo`` and ``http`` run their handler (from ``bluelet._demos``) under
``bluelet.serve()``. Ctrl-C or SIGTERM stops them gracefully: no new
connections, up to ``--grace`` seconds for the open ones, then the rest
are cancelled; a second Ctrl-C cancels them at once. ``--workers N`` runs
N processes on the port, supervised as ``bluelet.server(..., workers=N)``
does (``bluelet._prefork``): a worker that dies is restarted.
"""

import argparse
import logging
import os
import platform
import select as select_module
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import bluelet
from bluelet._demos import StaticFiles, echo
from bluelet._listener import display
from bluelet._prefork import AVAILABLE, Endpoint, supervise
from bluelet._records import Coro
from bluelet._server import Handler


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more, not %d" % value)
    return value


def _descriptor(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a descriptor is a number >= 0, not %s" % text)
    return value


def _signal_number(parser: argparse.ArgumentParser, name: str) -> int:
    try:
        return int(getattr(signal, name if name.startswith("SIG") else "SIG" + name))
    except AttributeError:
        parser.error("--signal %s: no such signal here" % name)


def _window(text: str) -> Tuple[float, float]:
    try:
        start, end = (float(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError("a window is START:END in milliseconds, not %s"
                                         % text) from None
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError("a window needs 0 <= START < END, not %s" % text)
    return start, end


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more, not %s" % text)
    return value


def _parser() -> argparse.ArgumentParser:
    version = "bluelet %s (%s core)" % (bluelet.__version__, bluelet.IMPLEMENTATION)
    parser = argparse.ArgumentParser(
        prog="python -m bluelet",
        description="bluelet's demo servers, its benchmark, and tools to look inside programs.")
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="Print bluelet's version, core, path, poller and Python.",
                        description="Print what runs: bluelet's version, core (and why "
                        "not the compiled one), path, poller and Python.")

    def server_command(name: str, port: int, what: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=what, description=what + " Ctrl-C stops it.")
        command.add_argument("--version", action="version", version=version)
        command.add_argument("--host", default="127.0.0.1", help="address to listen on "
                             "(default 127.0.0.1; '' for every IPv4 address)")
        command.add_argument("--port", type=int, default=port,
                             help="port to listen on (default %d; 0 picks a free one)" % port)
        command.add_argument("--fd", type=_descriptor, metavar="N",
                             help="serve the listening socket inherited as descriptor N "
                             "(socket activation: systemd passes 3) instead of binding "
                             "--host and --port")
        command.add_argument("--workers", type=_positive, default=1, metavar="N",
                             help="processes serving the port (default 1; more needs "
                             "POSIX fork)")
        command.add_argument("--grace", type=_seconds, default=10.0, metavar="SECONDS",
                             help="on Ctrl-C or SIGTERM, how long open connections may take "
                             "to finish before they are cut (default 10)")
        return command

    server_command("echo", 4915, "An echo server: sends back whatever each client sends.")
    http = server_command("http", 8000, "A static-file HTTP/1.1 server (GET and HEAD).")
    http.add_argument("--directory", "-d", default=os.curdir,
                      help="directory to serve (default: the current one)")
    http.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                      help="drop a client that sends no request, or takes none of its "
                      "response, for this long (default 15)")
    http.add_argument("--no-access-log", action="store_true",
                      help="do not log a line per response")

    bench = commands.add_parser(
        "bench", help="Run the repository's benchmark (bench/run.py).",
        description="Run bench/run.py from the source tree this bluelet was installed from.")
    bench.add_argument("--quick", action="store_true",
                       help="a smoke run of every benchmark (about a minute)")
    bench.add_argument("args", nargs="*", metavar="ARG",
                       help="more arguments for bench/run.py, after --")

    ps = commands.add_parser(
        "ps", help="Show the coroutines of another running bluelet process.",
        description="Show the coroutines of running bluelet process PID, as dump() would: "
        "it must have called bluelet.dump_on() (same user only).")
    ps.add_argument("pid", type=_positive, help="the process id")
    ps.add_argument("--signal", default="SIGUSR1",
                    help="the signal its dump_on() listens to (default SIGUSR1)")

    trace = commands.add_parser(
        "trace", help="Summarise (and draw) a trace written by run(trace=FILE).",
        description="Summarise a trace written by bluelet.run(..., trace=FILE); with --png, "
        "draw it as a timeline (needs matplotlib).")
    trace.add_argument("file", help="the trace (Chrome trace-event JSON)")
    trace.add_argument("--png", metavar="OUT", help="draw the timeline into this PNG")
    trace.add_argument("--window", type=_window, metavar="A:B",
                       help="draw only from A to B milliseconds after the first event")
    return parser


def _info() -> int:
    """``python -m bluelet info``: what an ``import bluelet`` here gives."""
    from bluelet import _impl

    poller = "epoll (C)" if bluelet.IMPLEMENTATION == "cython" and hasattr(select_module, "epoll") \
        else "selectors.%s" % type(selectors.DefaultSelector()).__name__
    rows = [("bluelet", bluelet.__version__),
            ("core", bluelet.IMPLEMENTATION),
            ("path", os.path.dirname(bluelet.__file__)),
            ("poller", poller),
            ("python", "%s %s (%s)" % (platform.python_implementation(), platform.python_version(),
                                      sys.executable))]
    if _impl.FALLBACK_REASON:
        rows.append(("why not compiled", _impl.FALLBACK_REASON))
    elif os.environ.get("BLUELET_PURE_PYTHON", "") not in ("", "0"):
        rows.append(("why not compiled", "BLUELET_PURE_PYTHON is set"))
    for name, value in rows:
        print("%-17s %s" % (name + ":", value))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "bench":
        return _bench(args.quick, args.args)
    if args.command == "ps":
        from bluelet._ps import main as ps_main
        return ps_main(args.pid, _signal_number(parser, args.signal))
    if args.command == "trace":
        from bluelet._trace import draw_main
        return draw_main(args.file, args.png, args.window)
    if args.workers > 1 and not AVAILABLE:
        parser.error("--workers needs os.fork, which this platform lacks (POSIX only)")
    handler: Handler
    if args.command == "echo":
        handler, what = echo, "echo"
    else:
        if not os.path.isdir(args.directory):
            parser.error("--directory %s: not a directory" % args.directory)
        handler = StaticFiles(args.directory, args.timeout, not args.no_access_log)
        what = "HTTP"
    try:
        if args.fd is not None:
            listener = bluelet.Listener.from_socket(socket.socket(fileno=args.fd))
            address = listener.sockname
            if args.workers > 1:
                endpoint = Endpoint.shared(listener)
        elif args.workers == 1:
            listener = bluelet.Listener(args.host, args.port)
            address = listener.sockname
        else:
            endpoint = Endpoint(args.host, args.port)
            address = endpoint.address
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        if args.fd is not None:
            parser.exit(1, "%s: cannot serve descriptor %d: %s\n" % (parser.prog, args.fd, reason))
        parser.exit(1, "%s: cannot listen on %s port %d: %s\n"
                    % (parser.prog, args.host or "*", args.port, reason))
    logging.basicConfig(level=logging.INFO, format="[%(process)d] %(message)s", stream=sys.stderr)
    where = display(address) if isinstance(address, tuple) else "unix:%s" % address
    if what == "HTTP":
        where = "http://%s/ from %s" % (where, os.path.abspath(args.directory))
    print("bluelet %s (%s core): serving %s on %s with %d worker%s" % (
        bluelet.__version__, bluelet.IMPLEMENTATION, what, where,
        args.workers, "" if args.workers == 1 else "s"), flush=True)

    def service(listening: bluelet.Listener) -> Coro:
        return bluelet.serve(listening, handler, grace=args.grace)

    if args.workers == 1:
        bluelet.run(service(listener), handle_signals=True)
    else:
        try:
            supervise(endpoint, args.workers, service, args.grace)
        finally:
            endpoint.close()
    print("stopped", flush=True)
    return 0


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------

def _bench_script() -> Optional[Path]:
    """bench/run.py of the source tree this package is in, if it is in one."""
    script = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    return script if script.is_file() else None


def _bench(quick: bool, args: List[str]) -> int:
    script = _bench_script()
    if script is None:
        print("python -m bluelet bench: the benchmark is not installed with the package "
              "(looked for %s).\nIt ships in bluelet's source: unpack the sdist (pip download "
              "--no-binary :all: --no-deps bluelet) or clone the repository, then run "
              "`python bench/run.py` there, or `pip install -e .` there and run this again."
              % (Path(__file__).resolve().parent.parent / "bench" / "run.py"), file=sys.stderr)
        return 2
    command = [sys.executable, str(script)] + (["--quick"] if quick else []) + args
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
