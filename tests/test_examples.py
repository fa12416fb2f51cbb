"""Every script in examples/ runs, as ``python examples/X.py``, on every core.

The core is chosen through the environment (BLUELET_PURE_PYTHON), as a user
would. Servers listen on 127.0.0.1 port 0 and print the port; every example
is given a count, a scale or a flag that makes it end by itself, and every
wait is bounded.
"""

import http.client
import os
import re
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _helpers import HOST, WAIT, Running, core_env, free_port
from conftest import CORES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=CORES)
def env(request):
    """The environment that runs the examples on one core."""
    return core_env(request.param)


def run_example(name, env, tmp_path, *arguments):
    """The stdout of ``examples/name`` run to its end; it must succeed."""
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *arguments], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def example(env, tmp_path):
    """example(name, *arguments): the example running, as a ``Running``."""
    started = []

    def start(name, *arguments):
        running = Running([sys.executable, str(EXAMPLES / name), *arguments], env, tmp_path)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


def test_every_example_is_tested():
    tested = {"echo.py", "httpd.py", "sleepy.py", "delegation.py", "ipc.py", "fetch.py",
              "typed.py", "tk_chat.py", "pipeline.py", "thread_callback.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_echo(example):
    server = example("echo.py", "--port", "0", "--clients", "2")
    port = int(server.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    # Both clients connected at once: served concurrently.
    with socket.create_connection((HOST, port), timeout=WAIT) as first, \
            socket.create_connection((HOST, port), timeout=WAIT) as second:
        for sock, message in ((second, b"second"), (first, b"first")):
            sock.sendall(message)
            assert sock.recv(100) == message
    assert server.wait() == 0
    assert sum(line.startswith("disconnected") for line in server.seen + server.rest()) == 2


def test_httpd(example, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_bytes(b"hello from the example\n")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    server = example("httpd.py", "--port", "0", "--directory", str(site), "--requests", "5")
    port = int(server.expect(r"serving .* on http://127\.0\.0\.1:(\d+)/").group(1))
    conn = http.client.HTTPConnection(HOST, port, timeout=WAIT)
    conn.request("GET", "/hello.txt")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"hello from the example\n")
    assert response.getheader("Content-Type") == "text/plain"
    conn.close()
    conn.request("GET", "/")
    assert b'<a href="hello.txt">' in conn.getresponse().read()
    conn.close()
    conn.request("GET", "/missing")
    assert conn.getresponse().status == 404
    conn.close()
    replies = []
    for path in (b"/../secret.txt", b"/%00"):  # outside; a failing request
        with socket.create_connection((HOST, port), timeout=WAIT) as sock:
            sock.sendall(b"GET %s HTTP/1.0\r\n\r\n" % path)
            replies.append(sock.recv(100))
    assert replies[0].startswith(b"HTTP/1.0 403 ")
    assert server.wait() == 0
    if sys.version_info >= (3, 10):
        # os.path.realpath raises ValueError for the NUL: the failure was
        # reported, not fatal.
        assert replies[1] == b""
        assert any(line.startswith("error: ValueError") for line in server.rest())
    else:
        # Python 3.9's realpath lets a NUL through, to a plain 404.
        assert replies[1].startswith(b"HTTP/1.0 404 ")


def test_sleepy(env, tmp_path):
    lines = run_example("sleepy.py", env, tmp_path, "--scale", "0.02").splitlines()
    assert [line.split(" (")[0] for line in lines[:8]] == [
        "going to sleep for 0 s", "going to sleep for 0.02 s",
        "going to sleep for 0.06 s", "going to sleep for 0.1 s",
        "woke up after 0 s", "woke up after 0.02 s",
        "woke up after 0.06 s", "woke up after 0.1 s"]
    assert lines[8].startswith("all awake after")


def test_delegation(env, tmp_path):
    # Deeper than the recursion limit: the scheduler keeps the chain.
    out = run_example("delegation.py", env, tmp_path, "--depth", "3000")
    assert out.splitlines()[:6] == [
        "parent started", "child started", "child resumed", "child returned 42",
        "old-style child returned an end() value", "caught: raised two calls down"]
    assert "total(3000) = 4501500, 3000 calls deep" in out


def test_typed(env, tmp_path):
    # An async def server and a generator client (tools/check_types.py
    # checks what mypy makes of it).
    assert run_example("typed.py", env, tmp_path) == "HELLO\n"


def test_ipc(env, tmp_path):
    lines = run_example("ipc.py", env, tmp_path, "--count", "5").splitlines()
    replies = [re.fullmatch(r"child (\d+) says (\d+) squared is (\d+)", line)
               for line in lines[:-1]]
    assert [(int(m[2]), int(m[3])) for m in replies] == [(n, n * n) for n in range(1, 6)]
    assert str(os.getpid()) not in {m[1] for m in replies}  # another process answered
    assert lines[-1] == "child exited with status 0"


def test_pipeline(env, tmp_path):
    out = run_example("pipeline.py", env, tmp_path, "--text", "b a c a b a")
    assert out.splitlines() == [
        "3 a", "2 b", "1 c", "run_process works (exit status 0)",
        "sleep 30 timed out: stopped and reaped"]


def test_thread_callback(env, tmp_path):
    assert run_example("thread_callback.py", env, tmp_path).splitlines() == [
        "loop got reading 1", "loop got reading 2", "loop got reading 3",
        "thread got ack 3 readings"]


def test_fetch(env, tmp_path):
    lines = run_example("fetch.py", env, tmp_path, "--count", "8", "--delay", "0.05").splitlines()
    pages = sorted(int(line.rsplit("/", 1)[1]) for line in lines[:-1])
    assert pages == list(range(8))
    assert all(line.startswith("HTTP/1.0 200 OK") for line in lines[:-1])
    assert lines[-1].startswith("8 URLs in")


def test_fetch_reports_failures(env, tmp_path):
    refused = "http://127.0.0.1:%d/" % free_port()
    lines = run_example("fetch.py", env, tmp_path, refused, "ftp://example.invalid/").splitlines()
    assert len(lines) == 3 and all(line.startswith("failed:") for line in lines[:2])


@pytest.fixture
def x_display():
    """A virtual X screen (Debian's Xvfb) and xdotool to press keys in it.

    Skipped where either is missing, unless BLUELET_REQUIRE_XVFB=1 (CI,
    which installs both) makes that a failure.
    """
    xvfb, xdotool = shutil.which("Xvfb"), shutil.which("xdotool")
    missing = [name for name, path in (("Xvfb", xvfb), ("xdotool", xdotool)) if path is None]
    try:
        import tkinter  # noqa: F401
    except ImportError:
        missing.append("tkinter")
    if missing:
        if os.environ.get("BLUELET_REQUIRE_XVFB", "") not in ("", "0"):
            pytest.fail("BLUELET_REQUIRE_XVFB is set but %s is missing" % ", ".join(missing))
        pytest.skip("%s missing (Debian: apt install xvfb xdotool python3-tk)" % ", ".join(missing))
    # -displayfd: Xvfb picks a free display and writes its number there.
    read_end, write_end = os.pipe()
    server = subprocess.Popen([xvfb, "-displayfd", str(write_end), "-screen", "0", "640x480x24",
                               "-nolisten", "tcp"], pass_fds=(write_end,),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    try:
        number = b""
        while not number.endswith(b"\n"):
            if not select.select([read_end], [], [], WAIT)[0]:
                pytest.fail("Xvfb did not start")
            chunk = os.read(read_end, 16)
            if not chunk:
                pytest.fail("Xvfb exited at start")
            number += chunk
        yield ":" + number.decode().strip(), xdotool
    finally:
        os.close(read_end)
        server.terminate()
        server.wait(timeout=WAIT)


def test_tk_chat(example, env, x_display):
    display, xdotool = x_display
    env["DISPLAY"] = display
    window = example("tk_chat.py", "--port", "0")
    port = int(window.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    with socket.create_connection((HOST, port), timeout=WAIT) as client:
        client.sendall(b"hello tk\n")
        assert client.makefile("rb").readline() == b"HELLO TK\n"
    window.expect(r"^got: hello tk$")
    # A real window: found by its title, and q pressed in it stops the program.
    found = subprocess.run([xdotool, "search", "--sync", "--name", "bluelet in Tk"],
                           env=env, capture_output=True, text=True, timeout=WAIT)
    window_id = found.stdout.split()[0]
    subprocess.run([xdotool, "windowfocus", "--sync", window_id, "key", "q"], env=env,
                   capture_output=True, timeout=WAIT, check=True)
    window.expect(r"^stopped: Cancelled\(\)$")
    assert window.wait() == 0
