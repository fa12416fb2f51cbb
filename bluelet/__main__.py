"""``python -m bluelet echo|http|bench``: two servers and the benchmark.

``echo`` and ``http`` serve until Ctrl-C or SIGTERM (a clean stop: open
connections are cancelled, the listener closed). ``--workers N`` forks N
processes after the listening socket is made, so they share it and the
kernel spreads connections among them; the parent restarts a worker that
dies and stops them all on SIGINT or SIGTERM. The handlers live in
``bluelet._demos``.
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple

import bluelet
from bluelet._demos import Handler, StaticFiles, echo, serve

_Coroutine = Generator[Any, Any, Any]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more, not %d" % value)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bluelet", description="bluelet's demo servers and its benchmark.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_command(name: str, port: int, what: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=what, description=what + " Ctrl-C stops it.")
        command.add_argument("--host", default="127.0.0.1", help="address to listen on "
                             "(default 127.0.0.1; '' for every IPv4 address)")
        command.add_argument("--port", type=int, default=port,
                             help="port to listen on (default %d; 0 picks a free one)" % port)
        command.add_argument("--workers", type=_positive, default=1, metavar="N",
                             help="processes sharing the listening socket "
                             "(default 1; more needs POSIX fork)")
        return command

    server_command("echo", 4915, "An echo server: sends back whatever each client sends.")
    http = server_command("http", 8000, "A static-file HTTP/1.1 server (GET and HEAD).")
    http.add_argument("--directory", "-d", default=os.curdir,
                      help="directory to serve (default: the current one)")
    http.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                      help="drop a client that sends no request, or takes none of its "
                      "response, for this long (default 15)")

    bench = commands.add_parser(
        "bench", help="Run the repository's benchmark (bench/run.py).",
        description="Run bench/run.py from the source tree this bluelet was installed from.")
    bench.add_argument("--quick", action="store_true",
                       help="a smoke run of every benchmark (about 30 s)")
    bench.add_argument("args", nargs="*", metavar="ARG",
                       help="more arguments for bench/run.py, after --")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args.quick, args.args)
    if args.workers > 1 and not hasattr(os, "fork"):
        parser.error("--workers needs os.fork, which this platform lacks (POSIX only)")
    handler: Handler
    if args.command == "echo":
        handler, what = echo, "echo"
    else:
        if not os.path.isdir(args.directory):
            parser.error("--directory %s: not a directory" % args.directory)
        handler = StaticFiles(args.directory, args.timeout)
        what = "HTTP"
    try:
        listener = bluelet.Listener(args.host, args.port)
    except OSError as error:
        parser.exit(1, "%s: cannot listen on %s port %d: %s\n"
                    % (parser.prog, args.host or "*", args.port, error.strerror or error))
    logging.basicConfig(level=logging.INFO, format="[%(process)d] %(message)s", stream=sys.stderr)
    host, port = listener.sock.getsockname()[:2]
    address = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    if what == "HTTP":
        address = "http://%s/ from %s" % (address, os.path.abspath(args.directory))
    print("bluelet %s (%s core): serving %s on %s with %d worker%s" % (
        bluelet.__version__, bluelet.IMPLEMENTATION, what, address,
        args.workers, "" if args.workers == 1 else "s"), flush=True)
    if args.workers == 1:
        bluelet.run(serve(listener, handler), handle_signals=True)
    else:
        _prefork(args.workers, lambda lifeline: _worker(listener, handler, lifeline))
        listener.close()
    print("stopped", flush=True)
    return 0


# ---------------------------------------------------------------------------
# --workers: pre-forked processes
# ---------------------------------------------------------------------------

def _worker(listener: bluelet.Listener, handler: Handler, lifeline: int) -> None:
    """A worker process's life: serve until SIGINT, SIGTERM or the parent's death."""
    def orphaned() -> _Coroutine:
        # The parent holds the pipe's write end: EOF means it is gone, and a
        # worker must not go on serving unsupervised.
        yield bluelet.wait_readable(lifeline)

    def root() -> _Coroutine:
        try:
            yield bluelet.first([serve(listener, handler), orphaned()])
        except KeyboardInterrupt:
            pass

    bluelet.run(root(), handle_signals=True)


def _prefork(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(lifeline)`` in ``count`` child processes until SIGINT or SIGTERM.

    A child that ends is replaced. On a stop signal every child gets
    SIGTERM, and SIGKILL if it has not ended 10 s later.
    """
    watched = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
    # Blocked, these signals wait in the kernel until sigwait() takes them one
    # at a time: no handler ever runs in the middle of a fork or of the
    # bookkeeping. A handler for SIGCHLD (never run) keeps it from being
    # discarded, as a default-ignored signal may be on some systems.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    previous_chld = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    lifeline, keeper = os.pipe()
    children: Dict[int, float] = {}

    def start() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(keeper)
                signal.signal(signal.SIGCHLD, previous_chld)
                signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
                work(lifeline)
                status = 0
            except SystemExit as stop:
                status = stop.code if isinstance(stop.code, int) else 1
            except BaseException:
                logging.getLogger("bluelet.server").exception("worker failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)  # never return into the parent's code
        children[pid] = time.monotonic()
        print("worker %d started" % pid, flush=True)

    try:
        for _ in range(count):
            start()
        while True:
            signum = signal.sigwait(watched)
            # Ctrl-C reaches the whole process group: a stop that came with
            # the workers' deaths goes first, and nothing is restarted.
            if signum != signal.SIGCHLD or signal.sigpending() & watched - {signal.SIGCHLD}:
                break
            for pid, started, status in _reap(children):
                print("worker %d exited with status %d; restarting" % (
                    pid, os.waitstatus_to_exitcode(status)), flush=True)
                if time.monotonic() - started < 1:
                    time.sleep(1)  # a worker that dies at start-up must not fork-loop
                start()
    finally:
        _stop(children)
        os.close(keeper)
        os.close(lifeline)
        signal.signal(signal.SIGCHLD, previous_chld)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _reap(children: Dict[int, float]) -> List[Tuple[int, float, int]]:
    """``(pid, start time, wait status)`` of each child that has ended."""
    ended = []
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in children:
            ended.append((pid, children.pop(pid), status))
    return ended


def _stop(children: Dict[int, float], grace: float = 10.0) -> None:
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while children and time.monotonic() < deadline:
        _reap(children)
        # Polled: a wait with a deadline would need sigtimedwait(), which
        # macOS lacks, and this runs once, at exit.
        time.sleep(0.02)
    for pid in list(children):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        del children[pid]


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
