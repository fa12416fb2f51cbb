"""``python -m bluelet``: echo and http servers as subprocesses, on every core.

Each server runs in its own session (so a test can signal it and its
workers as a terminal would, and cleanup can kill them all), listens on
127.0.0.1 port 0 and prints the port it got; what it logs (workers
starting and ending) goes to stderr, read by ``_Log``. Every wait is
bounded: lines of output through ``Running.expect`` and ``_Log.expect``,
sockets by their timeouts, processes by ``wait(timeout)``. The bench command is checked in-process with a stand-in
for bench/run.py.
"""

import http.client
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import bluelet
from _helpers import HOST, WAIT, Running, abort, alive_group, core_env, echo_through
from conftest import CORES

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="the servers are tested with POSIX signals"),
]

def _gone(pid, timeout=WAIT):
    """Whether process ``pid`` has ended within ``timeout``.

    A zombie counts as ended: an orphan's is reaped by whatever adopted it,
    which in a container may be a PID 1 that never reaps.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open("/proc/%d/stat" % pid) as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        except OSError:
            pass  # no /proc here: kill() alone decides
        time.sleep(0.02)
    return False


@pytest.fixture
def start(tmp_path):
    """start(core, *arguments): ``python -m bluelet arguments`` running; its port."""
    started = []

    def start(core, *arguments):
        command = Running([sys.executable, "-m", "bluelet", *arguments], core_env(core), tmp_path)
        started.append(command)
        banner = command.expect(r"serving .* on (?:http://)?[\d.]+:(\d+)")
        assert "(%s core)" % core in banner.string
        return command, int(banner.group(1))

    yield start
    for command in started:
        command.close()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("command, option", [
    ("echo", "--workers"), ("http", "--directory"), ("bench", "--quick"), (None, "COMMAND")])
def test_help(capsys, command, option):
    from bluelet.__main__ import main
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"] if command else ["--help"])
    assert stop.value.code == 0
    assert option in capsys.readouterr().out


@pytest.mark.parametrize("command", [None, "echo", "http"])
def test_version(capsys, command):
    from bluelet.__main__ import main
    with pytest.raises(SystemExit) as stop:
        main([command, "--version"] if command else ["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == "bluelet %s (%s core)" % (
        bluelet.__version__, bluelet.IMPLEMENTATION)


@pytest.mark.parametrize("core_name", CORES)
def test_info_says_what_runs(tmp_path, core_name):
    done = subprocess.run([sys.executable, "-m", "bluelet", "info"], env=core_env(core_name),
                          cwd=tmp_path, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert fields["core"].strip() == core_name
    assert fields["bluelet"].strip() == bluelet.__version__
    assert os.path.isdir(fields["path"].strip())
    assert fields["poller"].strip()
    if core_name == "python":
        assert "BLUELET_PURE_PYTHON" in fields["why not compiled"]


def test_a_missing_compiled_core_is_said_at_import(tmp_path):
    """A copy of the package without its compiled core: a warning at import
    (not silence), and under BLUELET_REQUIRE_EXTENSIONS=1 an ImportError that
    says the core is not built (not a circular import)."""
    package = tmp_path / "bluelet"
    shutil.copytree(os.path.dirname(bluelet.__file__), package,
                    ignore=shutil.ignore_patterns("_loop.*.so", "_loop.*.pyd", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("BLUELET_PURE_PYTHON", None)
    env.pop("BLUELET_REQUIRE_EXTENSIONS", None)
    code = "import bluelet; print(bluelet.IMPLEMENTATION)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0 and done.stdout.strip() == "python", done.stderr
    assert "compiled core did not import" in done.stderr and "RuntimeWarning" in done.stderr
    env["BLUELET_REQUIRE_EXTENSIONS"] = "1"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode != 0
    assert "compiled core (bluelet._loop) is not built" in done.stderr
    env.pop("BLUELET_REQUIRE_EXTENSIONS")
    env["BLUELET_PURE_PYTHON"] = "1"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=WAIT)
    assert done.stdout.strip() == "python" and "RuntimeWarning" not in done.stderr


def test_module_runs_as_a_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bluelet", "--help"], env=core_env("python"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert "echo" in done.stdout and "http" in done.stdout and "bench" in done.stdout


@pytest.mark.parametrize("arguments, message", [
    (["echo", "--workers", "0"], "must be 1 or more"),
    (["echo", "--grace", "-1"], "must be 0 or more"),
    (["http", "--directory", "/nonexistent/bluelet"], "not a directory"),
    ([], "required"),
])
def test_bad_arguments(capsys, arguments, message):
    from bluelet.__main__ import main
    with pytest.raises(SystemExit) as stop:
        main(arguments)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_port_in_use(capsys):
    from bluelet.__main__ import main
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        with pytest.raises(SystemExit) as stop:
            main(["echo", "--port", str(taken.getsockname()[1])])
    assert stop.value.code == 1
    assert "cannot listen on 127.0.0.1 port" in capsys.readouterr().err


def test_bench_missing(capsys, monkeypatch):
    from bluelet import __main__ as cli
    monkeypatch.setattr(cli, "_bench_script", lambda: None)
    assert cli.main(["bench"]) == 2
    assert "not installed with the package" in capsys.readouterr().err


def test_bench_passes_arguments_through(capfd, monkeypatch, tmp_path):
    from bluelet import __main__ as cli
    script = tmp_path / "run.py"
    script.write_text("import sys; print(sys.argv[1:]); sys.exit(3)\n")
    monkeypatch.setattr(cli, "_bench_script", lambda: script)
    assert cli.main(["bench", "--quick", "--", "--rounds", "2"]) == 3
    assert capfd.readouterr().out == "['--quick', '--rounds', '2']\n"


def test_bench_script_is_found_only_in_a_source_tree():
    # Editable or in-place: the tree's bench/run.py; installed (CI, wheels): none.
    from bluelet import __main__ as cli
    tree = os.path.realpath(os.path.dirname(os.path.dirname(bluelet.__file__)))
    script = os.path.join(tree, "bench", "run.py")
    found = cli._bench_script()
    if os.path.isfile(script):
        assert str(found) == script
    else:
        assert found is None


# ---------------------------------------------------------------------------
# echo
# ---------------------------------------------------------------------------

def _connect(port):
    sock = socket.create_connection((HOST, port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


@pytest.mark.parametrize("core", CORES)
def testecho_through(start, core):
    server, port = start(core, "echo", "--port", "0")
    with _connect(port) as first, _connect(port) as second:
        assert echo_through(first, b"hello\n") == b"hello\n"
        payload = os.urandom(300000)
        assert echo_through(second, payload) == payload
        assert echo_through(first, b"still here") == b"still here"
    os.kill(server.proc.pid, signal.SIGINT)
    server.expect("^stopped$")
    assert server.wait() == 0


# ---------------------------------------------------------------------------
# http
# ---------------------------------------------------------------------------

SECRET = b"not to be served\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A directory to serve, a file outside it, and a symlink pointing there."""
    base = tmp_path_factory.mktemp("site")
    (base / "secret.txt").write_bytes(SECRET)
    root = base / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "page.html").write_bytes(b"<!DOCTYPE html><p>a page</p>\n")
    (root / "big.bin").write_bytes(random.Random(6).randbytes(3 * 1024 * 1024 + 17))
    (root / "empty.txt").write_bytes(b"")
    (root / "with index").mkdir()
    (root / "with index" / "index.html").write_bytes(b"<p>the index</p>\n")
    (root / "plain").mkdir()
    (root / "plain" / "a b.txt").write_bytes(b"spaced\n")
    (root / "plain" / "sub").mkdir()
    (root / "escape").symlink_to(base / "secret.txt")
    return root


@pytest.fixture(scope="module", params=CORES)
def http_port(request, site, tmp_path_factory):
    """The port of an http server on ``site``, one per core for the module."""
    core = request.param
    command = Running([sys.executable, "-m", "bluelet", "http", "--port", "0", "-d", str(site)],
                      core_env(core), tmp_path_factory.mktemp("http-" + core))
    try:
        banner = command.expect(r"serving HTTP on http://127\.0\.0\.1:(\d+)/ from (.*) with")
        assert "(%s core)" % core in banner.string
        assert banner.group(2) == str(site)
        yield int(banner.group(1))
        assert command.proc.poll() is None, "the server ended"
        os.kill(command.proc.pid, signal.SIGTERM)
        command.expect("^stopped$")
        assert command.wait() == 0
    finally:
        command.close()


def _get(port, method, path, headers=None):
    """(response, body) for one request with http.client."""
    conn = http.client.HTTPConnection(HOST, port, timeout=WAIT)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def _exchange(port, data):
    """Send raw ``data``; everything the server sends until it closes."""
    with _connect(port) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


@pytest.mark.parametrize("path, ctype", [
    ("/hello.txt", "text/plain"),
    ("/page.html", "text/html"),
    ("/big.bin", "application/octet-stream"),
    ("/empty.txt", "text/plain"),
    ("/plain/a%20b.txt", "text/plain"),
])
def test_http_get(http_port, site, path, ctype):
    response, body = _get(http_port, "GET", path)
    expected = (site / path.lstrip("/").replace("%20", " ")).read_bytes()
    assert response.status == 200
    assert response.getheader("Content-Type") == ctype
    assert int(response.getheader("Content-Length")) == len(expected)
    assert body == expected


def test_http_head(http_port, site):
    response, body = _get(http_port, "HEAD", "/big.bin")
    assert response.status == 200
    assert int(response.getheader("Content-Length")) == (site / "big.bin").stat().st_size
    assert body == b""
    # Nothing was sent after the head: the connection still frames correctly.
    raw = _exchange(http_port, b"HEAD /hello.txt HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n")
    assert b"Content-Length: 13\r\n" in raw


def test_http_not_found(http_port):
    response, body = _get(http_port, "GET", "/missing.txt")
    assert response.status == 404
    assert int(response.getheader("Content-Length")) == len(body)
    assert b"404 Not Found" in body


def test_http_method_not_allowed(http_port):
    response, body = _get(http_port, "DELETE", "/hello.txt")
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/plain/../../secret.txt",
    "/plain/%2E%2E/../secret.txt", "/escape", "/..%2fsecret.txt", "//../secret.txt",
    "http://x/../secret.txt"])
def test_http_traversal_refused(http_port, path):
    # Raw: http.client would not send these paths as they are.
    raw = _exchange(http_port, b"GET %s HTTP/1.0\r\n\r\n" % path.encode())
    assert raw.split(b" ", 2)[1] in (b"403", b"404"), raw
    assert SECRET not in raw


def test_http_range(http_port, site):
    data = (site / "big.bin").read_bytes()
    response, body = _get(http_port, "GET", "/big.bin", {"Range": "bytes=100-199"})
    assert response.status == 206
    assert response.getheader("Content-Range") == "bytes 100-199/%d" % len(data)
    assert body == data[100:200]
    response, body = _get(http_port, "GET", "/big.bin", {"Range": "bytes=-17"})
    assert (response.status, body) == (206, data[-17:])
    response, body = _get(http_port, "GET", "/big.bin", {"Range": "bytes=3000000-"})
    assert (response.status, body) == (206, data[3000000:])
    response, body = _get(http_port, "GET", "/big.bin", {"Range": "bytes=%d-" % len(data)})
    assert response.status == 416
    assert response.getheader("Content-Range") == "bytes */%d" % len(data)
    # A stale If-Range: the whole file, not the range.
    response, body = _get(http_port, "GET", "/big.bin", {
        "Range": "bytes=0-9", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert (response.status, body) == (200, data)


def test_http_if_modified_since(http_port):
    response, _ = _get(http_port, "GET", "/hello.txt")
    modified = response.getheader("Last-Modified")
    response, body = _get(http_port, "GET", "/hello.txt", {"If-Modified-Since": modified})
    assert (response.status, body) == (304, b"")
    assert response.getheader("Content-Length") is None
    response, body = _get(http_port, "GET", "/hello.txt",
                          {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert (response.status, body) == (200, b"hello, world\n")


@pytest.mark.parametrize("quiet", [False, True])
def test_http_access_log_after_the_body(core, site, tmp_path, quiet):
    args = [sys.executable, "-m", "bluelet", "http", "--port", "0", "-d", str(site)]
    command = Running(args + (["--no-access-log"] if quiet else []), core_env(core), tmp_path)
    try:
        port = int(command.expect(r"serving HTTP on http://127\.0\.0\.1:(\d+)/").group(1))
        _get(port, "GET", "/big.bin", {"Range": "bytes=0-99"})
        _get(port, "GET", "/missing.txt")
        os.kill(command.proc.pid, signal.SIGTERM)
        command.expect("^stopped$")
        assert command.wait() == 0
    finally:
        command.close()
    log = command.errors.read_text()
    if quiet:
        assert '"GET' not in log
    else:
        assert '"GET /big.bin HTTP/1.1" 206 100' in log       # the bytes sent
        assert '"GET /missing.txt HTTP/1.1" 404' in log


def test_http_directories(http_port):
    response, body = _get(http_port, "GET", "/with%20index")
    assert response.status == 301
    assert response.getheader("Location") == "/with%20index/"
    response, body = _get(http_port, "GET", "/with%20index/")
    assert (response.status, body) == (200, b"<p>the index</p>\n")
    response, body = _get(http_port, "GET", "/plain/")
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert b'<a href="a%20b.txt">a b.txt</a>' in body
    assert b'<a href="sub/">sub/</a>' in body


def test_http_keep_alive(http_port, site):
    conn = http.client.HTTPConnection(HOST, http_port, timeout=WAIT)
    try:
        conn.request("GET", "/hello.txt")
        first = conn.getresponse()
        assert first.read() == b"hello, world\n"
        assert first.getheader("Connection") == "keep-alive"
        sock = conn.sock
        conn.request("GET", "/big.bin")
        assert conn.getresponse().read() == (site / "big.bin").read_bytes()
        assert conn.sock is sock, "the second request needed a new connection"
    finally:
        conn.close()


def test_http_pipelined_then_closed(http_port):
    raw = _exchange(http_port, b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                               b"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                               b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert raw.count(b"hello, world\n") == 2
    assert raw.endswith(b"hello, world\n")


def test_http_1_0_closes(http_port):
    raw = _exchange(http_port, b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert b"Connection: close\r\n" in raw and raw.endswith(b"\r\n\r\nhello, world\n")


@pytest.mark.parametrize("request_bytes, status", [
    (b"garbage\r\n\r\n", 400),
    (b"\x00\xff\xfe junk \x01\r\n\r\n", 400),
    (b"GET /hello.txt HTTP/1.1\r\n\r\n", 400),                    # no Host
    (b"GET /hello.txt\r\n\r\n", 400),                             # HTTP/0.9
    (b"GET /hello.txt HTTP/1.1\r\nHost x\r\n\r\n", 400),          # no colon
    (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET /%00 HTTP/1.0\r\n\r\n", 400),
    (b"GET hello.txt HTTP/1.0\r\n\r\n", 400),
    (b"GET /hello.txt HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40000 + b"\r\n\r\n", 431),
], ids=lambda value: repr(value)[:40] if isinstance(value, bytes) else str(value))
def test_http_malformed(http_port, request_bytes, status):
    raw = _exchange(http_port, request_bytes)
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:200]
    assert b"Connection: close\r\n" in raw
    response, _ = _get(http_port, "GET", "/hello.txt")
    assert response.status == 200


def test_http_request_with_body_is_answered(http_port):
    # Its body is not read: the reply closes the connection, after draining
    # what was sent so the reply is not lost to a reset.
    raw = _exchange(http_port, b"POST /hello.txt HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: 100000\r\n\r\n" + b"x" * 100000)
    assert raw.startswith(b"HTTP/1.1 405 ")


def test_http_survives_resets(http_port):
    with _connect(http_port) as sock:       # mid-request
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHo")
        abort(sock)
    with _connect(http_port) as sock:       # mid-response
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK")
        abort(sock)
    for _ in range(3):
        response, body = _get(http_port, "GET", "/hello.txt")
        assert (response.status, body) == (200, b"hello, world\n")


@pytest.mark.parametrize("core", CORES)
def test_http_idle_timeout(start, site, core):
    _, port = start(core, "http", "--port", "0", "-d", str(site), "--timeout", "0.3")
    with _connect(port) as sock:
        began = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, no reply
        assert time.monotonic() - began < WAIT
    with _connect(port) as sock:    # a slow request head counts as idle too
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\n")
        time.sleep(0.5)
        try:
            sock.sendall(b"Host: x\r\n\r\n")
            assert sock.recv(100) == b""
        except ConnectionError:
            pass  # the server's RST for the late data won the race


# ---------------------------------------------------------------------------
# --workers and signals
# ---------------------------------------------------------------------------

class _Log:
    """What a server logs to stderr, read line by line as it is written."""

    def __init__(self, command):
        self.path = command.errors
        self.read = 0  # lines already matched or passed over

    def expect(self, pattern, timeout=WAIT):
        """The match of the next logged line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.path.read_text().split("\n")[:-1]  # whole lines only
            for index in range(self.read, len(lines)):
                match = re.search(pattern, lines[index])
                if match:
                    self.read = index + 1
                    return match
            if time.monotonic() > deadline:
                raise AssertionError("no logged line matching %r in %r"
                                     % (pattern, lines[self.read:]))
            time.sleep(0.02)


def _workers(log, count):
    return [int(log.expect(r"\] worker (\d+) started$").group(1)) for _ in range(count)]


@pytest.mark.parametrize("core", CORES)
def test_workers_restart_and_stop(start, site, core):
    server, port = start(core, "http", "--port", "0", "-d", str(site), "--workers", "2")
    log = _Log(server)
    pids = _workers(log, 2)
    for _ in range(4):
        assert _get(port, "GET", "/hello.txt")[0].status == 200
    os.kill(pids[0], signal.SIGKILL)
    exited = log.expect(r"\] worker (\d+) exited with status -9; restarting$")
    assert int(exited.group(1)) == pids[0]
    pids += _workers(log, 1)
    for _ in range(4):
        assert _get(port, "GET", "/hello.txt")[0].status == 200
    os.kill(server.proc.pid, signal.SIGTERM)
    server.expect("^stopped$")
    assert server.wait() == 0
    assert all(_gone(pid) for pid in pids)
    assert not alive_group(server.proc.pid)


class _Talker:
    """A client in a thread: connect, echo, close, over and over, counting
    each failure (refused, reset, a short or wrong reply) until stopped."""

    def __init__(self, port):
        self.port = port
        self.done = 0
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._talk, daemon=True)
        self._thread.start()

    def _talk(self):
        n = 0
        while not self._stop.is_set() and n < 100000:
            n += 1
            message = b"request %d\n" % n
            try:
                with _connect(self.port) as sock:
                    if echo_through(sock, message) != message:
                        self.errors.append("wrong reply to %r" % message)
                self.done += 1
            except (OSError, AssertionError) as error:
                self.errors.append(repr(error))

    def stop(self):
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


@pytest.mark.parametrize("core", CORES)
def test_reload_replaces_the_workers_without_refusing_anyone(start, core):
    """SIGHUP twice while a client connects and talks in a loop, and while a
    connection opened before stays open: every request is answered."""
    server, port = start(core, "echo", "--port", "0", "--workers", "2")
    log = _Log(server)
    first = _workers(log, 2)
    with _connect(port) as kept:
        assert echo_through(kept, b"before") == b"before"
        talker = _Talker(port)
        try:
            pids = first
            for _ in range(2):
                time.sleep(0.3)
                os.kill(server.proc.pid, signal.SIGHUP)
                log.expect(r"reloading: starting 2 new worker\(s\)")
                new = _workers(log, 2)
                stopped = {int(log.expect(r"replaced worker (\d+) stopped").group(1))
                           for _ in range(2 if pids is not first else 1)}
                assert stopped <= set(pids) and not set(new) & set(pids)
                pids = new
            time.sleep(0.3)
        finally:
            talker.stop()
        # The connection from before the reloads is still served by the first
        # worker that took it, which drains it within --grace.
        assert echo_through(kept, b"after") == b"after"
    assert talker.errors == [] and talker.done > 50
    os.kill(server.proc.pid, signal.SIGTERM)
    server.expect("^stopped$")
    assert server.wait() == 0
    assert all(_gone(pid) for pid in first + pids)


def test_workers_ctrl_c_lets_open_connections_finish(start):
    # The terminal's Ctrl-C signals every process of the foreground group.
    server, port = start(CORES[0], "echo", "--port", "0", "--workers", "2")
    pids = _workers(_Log(server), 2)
    with _connect(port) as sock:
        assert echo_through(sock, b"ping") == b"ping"
        os.killpg(server.proc.pid, signal.SIGINT)
        # Two processes log these, so either may come first: each is looked
        # for from the start of the log.
        _Log(server).expect(r"stopping: waiting up to 10 s for 1 connection")
        _Log(server).expect(r"\] worker \d+ stopped \(status 0\)$")  # the other one: idle
        assert echo_through(sock, b"still served") == b"still served"
        with pytest.raises(ConnectionRefusedError):
            _connect(port).close()  # but no new connection is taken
    server.expect("^stopped$")  # once the last connection has closed
    assert server.wait() == 0
    assert all(_gone(pid) for pid in pids)
    assert not any("restarting" in line for line in server.errors.read_text().splitlines())


def test_workers_end_with_their_parent(start):
    server, port = start(CORES[0], "echo", "--port", "0", "--workers", "2")
    pids = _workers(_Log(server), 2)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.wait()
    # Orphans are reaped by init, not by us: wait until they are gone.
    assert all(_gone(pid) for pid in pids)


@pytest.mark.parametrize("core", CORES)
def test_sigterm_single_process(start, core):
    server, port = start(core, "echo", "--port", "0", "--grace", "0.2")
    with _connect(port) as sock:
        assert echo_through(sock, b"x") == b"x"
        os.kill(server.proc.pid, signal.SIGTERM)
        server.expect("^stopped$")
        assert server.wait() == 0
        assert sock.recv(10) == b""  # after the grace, its handler was cancelled


@pytest.mark.parametrize("workers", [1, 2])
def test_second_ctrl_c_stops_at_once(start, workers):
    server, port = start(CORES[0], "echo", "--port", "0", "--grace", "3600",
                         "--workers", str(workers))
    log = _Log(server)
    if workers > 1:
        _workers(log, workers)  # all listening
    with _connect(port) as sock:
        assert echo_through(sock, b"x") == b"x"
        os.kill(server.proc.pid, signal.SIGINT)
        log.expect(r"stopping: waiting up to 3600 s for 1 connection")
        os.kill(server.proc.pid, signal.SIGINT)
        server.expect("^stopped$")
        assert server.wait() == 0
        assert sock.recv(10) == b""
