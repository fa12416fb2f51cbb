"""Sockets made elsewhere: Listener.from_socket, systemd_listeners() and --fd.

Socket activation is played the way systemd does it: a launcher moves the
sockets to descriptors 3 and up, then execs Python with LISTEN_PID (its own
pid, which exec keeps), LISTEN_FDS and LISTEN_FDNAMES set. Every test runs
under ``no_fd_leak``; the processes are bounded by ``Running``'s timeouts.
"""

import os
import signal
import socket
import sys
import textwrap

import pytest

import bluelet
from _helpers import HOST, WAIT, Running, core_env, echo_through
from conftest import CORES

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_fd_leak")]


def echo_once(listener):
    """Coroutine: serve one connection of ``listener`` as an echo server."""
    conn = yield listener.accept()
    with conn:
        while True:
            data = yield conn.recv(1024)
            if not data:
                return
            yield conn.sendall(data)


def test_from_socket_serves_a_tcp_socket_made_elsewhere(core):
    sock = socket.create_server((HOST, 0))
    listener = bluelet.Listener.from_socket(sock)
    assert (listener.host, listener.port, listener.path) == (HOST, sock.getsockname()[1], None)
    assert listener.sock is sock and not sock.getblocking()

    def client():
        conn = yield bluelet.connect(HOST, listener.port)
        with conn:
            yield conn.sendall(b"made elsewhere")
            return (yield conn.readexactly(14))

    def root():
        server = echo_once(listener)
        yield bluelet.spawn(server)
        reply = yield client()
        yield bluelet.join(server)
        return reply

    with listener:
        assert bluelet.run(root()) == b"made elsewhere"
    assert sock.fileno() == -1  # the Listener closed it


def test_from_socket_leaves_a_unix_sockets_file(core, tmp_path):
    path = str(tmp_path / "activated.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    with bluelet.Listener.from_socket(sock) as listener:
        assert (listener.port, listener.path) == (0, path)
    # Whoever bound it (systemd) owns the file.
    assert os.path.exists(path)


@pytest.mark.parametrize("make, error, message", [
    (lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), ValueError, "not listening"),
    (lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ValueError, "not a stream"),
    (lambda: "3", TypeError, "socket.socket"),
])
def test_from_socket_refuses_what_cannot_be_served(make, error, message):
    sock = make()
    try:
        with pytest.raises(error, match=message):
            bluelet.Listener.from_socket(sock)
    finally:
        if isinstance(sock, socket.socket):
            sock.close()


def test_from_socket_refuses_a_closed_socket():
    sock = socket.create_server((HOST, 0))
    sock.close()
    with pytest.raises(ValueError, match="closed"):
        bluelet.Listener.from_socket(sock)


def test_no_listeners_without_the_variables(monkeypatch):
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(variable, raising=False)
    assert bluelet.systemd_listeners() == []


def test_variables_for_another_process_are_not_ours(monkeypatch):
    """A child that inherited the variables must not take its parent's sockets."""
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "2")
    assert bluelet.systemd_listeners() == []
    assert "LISTEN_FDS" not in os.environ  # unset all the same


@pytest.mark.parametrize("fds, names, message", [
    ("two", None, "LISTEN_FDS='two' is not a count"),
    ("2", "web", "LISTEN_FDNAMES names 1 descriptors, LISTEN_FDS says 2"),
])
def test_bad_variables_are_refused(monkeypatch, fds, names, message):
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", fds)
    if names is None:
        monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    else:
        monkeypatch.setenv("LISTEN_FDNAMES", names)
    with pytest.raises(ValueError, match=message):
        bluelet.systemd_listeners(unset_environment=False)
    assert os.environ["LISTEN_FDS"] == fds


# Moves the descriptors named in argv[1] to 3, 4, ... and execs Python with
# the variables set, as systemd does (exec keeps the pid LISTEN_PID names).
LAUNCHER = textwrap.dedent("""
    import fcntl, os, sys
    fds = [int(fd) for fd in sys.argv[1].split(",")]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way first
    for index, fd in enumerate(high):
        os.dup2(fd, 3 + index)
        os.close(fd)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)))
    if sys.argv[2]:
        os.environ["LISTEN_FDNAMES"] = sys.argv[2]
    os.execv(sys.executable, [sys.executable] + sys.argv[3:])
""")


def activated(fds, tail, names=None):
    """The argv of a process that puts ``fds`` at 3, 4, ... and execs
    ``python tail...`` with the socket-activation variables set."""
    return [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), ":".join(names or ()),
            *tail]


CHILD = textwrap.dedent("""
    import os, sys
    import bluelet

    listeners = bluelet.systemd_listeners()
    print("listeners", [(l.name, l.port, l.path) for l in listeners], flush=True)
    print("left", sorted(v for v in os.environ if v.startswith("LISTEN_")), flush=True)
    print("inheritable", [os.get_inheritable(l.fileno()) for l in listeners], flush=True)

    def reply_once(listener):
        conn = yield listener.accept()
        with conn:
            yield conn.sendall((yield conn.readexactly(9)))

    print("core", bluelet.IMPLEMENTATION, flush=True)
    bluelet.run(reply_once(listeners[0]))
    for listener in listeners:
        listener.close()
    print("done", flush=True)
""")


@pytest.mark.parametrize("core", CORES)
def test_systemd_listeners_in_an_activated_process(core, tmp_path):
    web = socket.create_server((HOST, 0))
    admin_path = str(tmp_path / "admin.sock")
    admin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    admin.bind(admin_path)
    admin.listen()
    port = web.getsockname()[1]
    child = Running(activated([web.fileno(), admin.fileno()], ["-c", CHILD], ["web", "admin"]),
                    core_env(core), tmp_path, pass_fds=(web.fileno(), admin.fileno()))
    try:
        web.close()  # the child has its own copies now
        admin.close()
        assert child.expect("^listeners").string == "listeners %r" % (
            [("web", port, None), ("admin", 0, admin_path)],)
        assert child.expect("^left").string == "left []"
        assert child.expect("^inheritable").string == "inheritable [False, False]"
        assert child.expect("^core").string == "core " + ("cython" if core == "cython" else "python")
        with socket.create_connection((HOST, port), timeout=WAIT) as sock:
            sock.settimeout(WAIT)
            assert echo_through(sock, b"activated") == b"activated"
        child.expect("^done$")
        assert child.wait() == 0
    finally:
        child.close()


def test_a_descriptor_that_is_no_listener_is_named(tmp_path):
    read_end, write_end = os.pipe()
    code = "import bluelet; bluelet.systemd_listeners()"
    child = Running(activated([read_end], ["-c", code], ["pipe"]), core_env("python"),
                    tmp_path, pass_fds=(read_end,))
    try:
        os.close(read_end)
        os.close(write_end)
        assert child.wait() == 1
        assert "descriptor 3 (pipe) from LISTEN_FDS is not a socket" in child.errors.read_text()
    finally:
        child.close()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("workers", [1, 2])
def test_the_command_line_serves_an_inherited_socket(core, workers, tmp_path):
    sock = socket.create_server((HOST, 0))
    port = sock.getsockname()[1]
    server = Running(activated([sock.fileno()], ["-m", "bluelet", "echo", "--fd", "3",
                                                 "--workers", str(workers)]),
                     core_env(core), tmp_path, pass_fds=(sock.fileno(),))
    try:
        sock.close()
        banner = server.expect(r"serving echo on ([\d.]+):(\d+)")
        assert "(%s core)" % core in banner.string
        assert int(banner.group(2)) == port
        for _ in range(2 * workers):
            with socket.create_connection((HOST, port), timeout=WAIT) as client:
                client.settimeout(WAIT)
                assert echo_through(client, b"inherited") == b"inherited"
        os.kill(server.proc.pid, signal.SIGINT)
        server.expect("^stopped$")
        assert server.wait() == 0
    finally:
        server.close()


def test_the_command_line_names_a_bad_descriptor(tmp_path):
    server = Running([sys.executable, "-m", "bluelet", "echo", "--fd", "97"],
                     core_env("python"), tmp_path)
    try:
        assert server.wait() == 1
        assert "cannot serve descriptor 97" in server.errors.read_text()
    finally:
        server.close()
