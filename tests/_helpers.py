"""Scaffolding shared by the test modules: pipes, coroutines that note how
they end, watchdogs, SIGINT delivery, loopback echo clients and servers,
descriptor counting.

Names are looked up on the ``bluelet`` module at call time, never imported
with ``from``, because the ``core`` fixture swaps them.
"""

import contextlib
import os
import queue
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import bluelet

HOST = "127.0.0.1"


# ---------------------------------------------------------------------------
# Pipes and descriptors
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def pipe_files():
    """An os.pipe() as unbuffered binary file objects ``(reader, writer)``,
    both closed at the end of the ``with`` block (closing one early is fine)."""
    r, w = os.pipe()
    rf, wf = os.fdopen(r, "rb", buffering=0), os.fdopen(w, "wb", buffering=0)
    try:
        yield rf, wf
    finally:
        rf.close()
        wf.close()


@contextlib.contextmanager
def raw_pipes(count):
    """``count`` os.pipe() pairs of int descriptors ``[(r, w), ...]``, all
    closed at the end of the ``with`` block."""
    pipes = []
    try:
        for _ in range(count):
            pipes.append(os.pipe())
        yield pipes
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def fd_count():
    """How many descriptors this process has open (needs /proc/self/fd)."""
    return len(os.listdir("/proc/self/fd"))


def _ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


#: Skips a test only where ::1 really cannot be bound.
needs_ipv6 = pytest.mark.skipif(
    not _ipv6_loopback(), reason="this machine has no IPv6 loopback (cannot bind ::1)"
)


# ---------------------------------------------------------------------------
# Coroutines
# ---------------------------------------------------------------------------

def sleeper(seconds, log, note="sleeper finally"):
    """Coroutine: sleep ``seconds``; append ``note`` to ``log`` however it
    ends (woken, killed, or closed when the run fails)."""
    try:
        yield bluelet.sleep(seconds)
    finally:
        log.append(note)


def spawn_and_join(coros):
    """Coroutine: spawn every one of ``coros``, then join them in order."""
    for coro in coros:
        yield bluelet.spawn(coro)
    for coro in coros:
        yield bluelet.join(coro)


def wait_for(predicate, tries=1000, pause=0.002):
    """Coroutine: yield until ``predicate()`` holds; bounded; returns it."""
    for _ in range(tries):
        if predicate():
            return True
        yield bluelet.sleep(pause)
    return predicate()


def watchdog(seconds, victims, log):
    """Coroutine: after ``seconds``, note "watchdog fired" in ``log`` and kill
    ``victims``, so a test whose waiter is never woken fails quickly instead of
    hanging. Kill the watchdog once the victims are done."""
    yield bluelet.sleep(seconds)
    log.append("watchdog fired")
    for victim in victims:
        yield bluelet.kill(victim)


def fail_after(seconds, what):
    """Coroutine: a watchdog that fails the whole run if it is not killed
    within ``seconds``: a lost wake-up becomes a prompt failure, not a hang."""
    yield bluelet.sleep(seconds)
    raise AssertionError("watchdog: %s still waiting after %s s" % (what, seconds))


# ---------------------------------------------------------------------------
# SIGINT
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def sigint_soon(delay=0.2, before=None):
    """Send this process one SIGINT while the ``with`` block runs.

    A thread first calls ``before()`` if given (blocking work such as a plain
    socket client; its return value or exception is stored under "value" or
    "error" in the dict the block gets), then sleeps ``delay`` s and sends
    SIGINT. Inside the block SIGINT raises KeyboardInterrupt, as Python's
    default handler does; on leaving, the thread is waited for while a late
    signal is still ignored, so it can never abort the test session.
    """
    outcome = {}
    armed = [True]

    def handler(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    def deliver():
        try:
            if before is not None:
                outcome["value"] = before()
        except Exception as exc:  # reported by the test's assertion on outcome
            outcome["error"] = exc
        finally:
            time.sleep(delay)  # by now the scheduler is idle, waiting
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, handler)
    thread = threading.Thread(target=deliver, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        armed[0] = False
        thread.join(20)  # its SIGINT must land while our handler is installed
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------
# Loopback sockets
# ---------------------------------------------------------------------------

def echoer(conn):
    """The original's example handler, verbatim."""
    while True:
        data = yield conn.recv(1024)
        if not data:
            break
        yield conn.sendall(data)


def free_port(host=HOST):
    """A port nobody listens on right now (from a port-0 Listener, closed)."""
    listener = bluelet.Listener(host, 0)
    port = listener.port
    listener.close()
    return port


def assert_refused(host, port):
    """Nobody listens on host:port any more (the listener was closed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            sock.connect((host, port))


def reset_on_close(sock):
    """Set SO_LINGER (1, 0): closing ``sock`` then makes the kernel send RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def abort(sock):
    """Close a plain socket abruptly: the peer gets RST, not FIN."""
    reset_on_close(sock)
    sock.close()


def start_server(port, handler, host=HOST):
    """Coroutine: spawn ``bluelet.server(host, port, handler)`` and let it
    reach accept; returns the server coroutine (kill it to stop it)."""
    srv = bluelet.server(host, port, handler)
    yield bluelet.spawn(srv)
    yield bluelet.null()  # the server binds and waits in accept
    return srv


def open_pair(listener):
    """Coroutine: connect to ``listener`` and accept that connection;
    returns ``(client side, server side)``, two bluelet Connections."""
    conn = yield bluelet.connect(listener.host, listener.port)
    peer = yield listener.accept()
    return conn, peer


def recv_all(conn, limit=1 << 26):
    """Coroutine: read ``conn`` to EOF; bounded by ``limit`` reads."""
    chunks = []
    for _ in range(limit):
        data = yield conn.recv(65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def recv_exactly(conn, size):
    """Coroutine: read until ``size`` bytes or EOF (bounded by ``size`` reads)."""
    chunks = []
    got = 0
    for _ in range(size):
        if got >= size:
            break
        data = yield conn.recv(size - got)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def echo_round_trip(port, message, host=HOST, pieces=1, pause=0.0):
    """Coroutine, a client of an echo server: connect, send ``message`` (in
    ``pieces`` parts, sleeping ``pause`` after each), read back as many bytes,
    close; returns what came back."""
    conn = yield bluelet.connect(host, port)
    assert isinstance(conn, bluelet.Connection)
    try:
        step = len(message) // pieces + 1
        for start in range(0, len(message), step):
            yield conn.sendall(message[start:start + step])
            if pause:
                yield bluelet.sleep(pause)
        return (yield recv_exactly(conn, len(message)))
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Subprocesses: a command running bluelet, read with time bounds
# ---------------------------------------------------------------------------

WAIT = 10.0  # seconds: a bound for anything that should happen promptly


def core_env(core):
    """The environment that runs bluelet, the one under test, on ``core``."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(bluelet.__file__)))
    env.pop("BLUELET_PURE_PYTHON", None)
    if core == "python":
        env["BLUELET_PURE_PYTHON"] = "1"
    return env


def echo_through(sock, data):
    """Send ``data`` on a blocking socket; what an echo server sends back."""
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        assert chunk, "the echo server closed early"
        got += chunk
    return got


class Running:
    """A command running in its own session; its output read with time bounds.

    stdout is read line by line by a thread (``expect``); stderr goes to a
    file, shown when an expectation fails. ``close()`` kills the whole
    session (the command and its workers) if it is still there.
    """

    def __init__(self, args, env, tmp_path, pass_fds=()):
        self.errors = tmp_path / ("stderr-%d.txt" % random.randrange(1 << 30))
        with open(self.errors, "w") as stderr:
            # cwd: sys.path[0] for -m; it must not be a source tree that
            # shadows the bluelet under test (in CI, the installed one).
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=env,
                                         cwd=tmp_path, text=True, start_new_session=True,
                                         pass_fds=pass_fds)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern, timeout=WAIT):
        """The match of the next line of output matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError("no line matching %r in %r; stderr:\n%s"
                                     % (pattern, self.seen, self.errors.read_text()))
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def rest(self):
        """The lines of output not read yet, once the command has ended."""
        lines = []
        while True:
            line = self.lines.get(timeout=WAIT)
            if line is None:
                return lines
            lines.append(line)

    def wait(self, timeout=WAIT):
        """The exit status, once the command has ended."""
        return self.proc.wait(timeout)

    def close(self):
        if self.proc.poll() is None or alive_group(self.proc.pid):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(WAIT)
        self.proc.stdout.close()


def alive_group(pgid):
    """Whether process group ``pgid`` still has a member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
