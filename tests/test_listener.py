"""Listener: binding, addresses, accept with timeouts, closing, reuse_port,
Unix sockets; run once per core.

Every test binds port 0 (or a path in a temporary directory) on the loopback
interface and runs under ``run_test``'s deadline. Clients are plain blocking
sockets where bluelet's own ``connect`` is not what is under test.
"""

import errno
import os
import socket
import ssl
import tempfile

import pytest

import bluelet
from _helpers import HOST, assert_refused, needs_ipv6, wait_for
from bluelet.testing import run_test

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(60)]

DEADLINE = 20.0  # seconds of real time any one test may take

needs_reuse_port = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="this platform has no SO_REUSEPORT")


def connected(listener, host=HOST):
    """A plain blocking socket connected to ``listener`` (not accepted yet)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect((host, listener.port))
    except BaseException:
        sock.close()
        raise
    return sock


def accept_and_read(listener, size=100, timeout=None):
    """Coroutine: accept one connection, read up to ``size`` bytes, close it."""
    conn = yield listener.accept(timeout=timeout)
    with conn:
        return (yield conn.recv(size))


def unix_round_trip(listener, message):
    """Coroutine: connect to Unix ``listener``, send ``message``; what the
    accepted side read."""
    client = yield bluelet.connect_unix(listener.path)
    with client:
        yield client.sendall(message)
        return (yield accept_and_read(listener))


# ---------------------------------------------------------------------------
# Binding and addresses
# ---------------------------------------------------------------------------

def test_port_zero_binds_a_real_port(core):
    with bluelet.Listener(HOST, 0) as listener:
        assert listener.host == HOST
        assert isinstance(listener.port, int) and 0 < listener.port < 65536
        assert listener.sockname == (HOST, listener.port)
        assert listener.path is None
        assert listener.fileno() == listener.sock.fileno() >= 0
        with connected(listener) as client:
            client.sendall(b"port zero")
            assert run_test(accept_and_read(listener), DEADLINE) == b"port zero"


@needs_ipv6
def test_ipv6_loopback(core):
    with bluelet.Listener("::1", 0) as listener:
        assert listener.sock.family == socket.AF_INET6
        assert listener.sockname[:2] == ("::1", listener.port)

        def root():
            client = yield bluelet.connect("::1", listener.port)
            with client:
                peer = yield listener.accept()
                with peer:
                    assert peer.peername[:2] == client.sockname[:2]
                    yield client.sendall(b"six")
                    return (yield peer.recv(10))

        assert run_test(root(), DEADLINE) == b"six"


@pytest.mark.parametrize("host, port, error", [
    ("192.0.2.1", 0, OSError),  # TEST-NET: not an address of this machine
    (HOST, 70000, OverflowError),  # not 70000 % 65536, as getaddrinfo would have it
    (HOST, -1, OverflowError),
    (HOST, "80", TypeError),
    (HOST, 80.0, TypeError),
])
def test_a_bad_address_fails_at_the_call_and_leaks_nothing(core, host, port, error):
    with pytest.raises(error):
        bluelet.Listener(host, port)


def test_a_port_in_use_fails_at_the_call(core):
    with bluelet.Listener(HOST, 0) as first:
        with pytest.raises(OSError) as info:
            bluelet.Listener(HOST, first.port)
        assert info.value.errno == errno.EADDRINUSE


def test_repr_of_open_and_closed_listeners(core):
    listener = bluelet.Listener(HOST, 0)
    assert repr(listener) == "<Listener %r>" % ((HOST, listener.port),)
    listener.close()
    assert repr(listener) == "<Listener closed>"
    with bluelet.Listener(HOST, 0, ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) as tls:
        assert repr(tls) == "<Listener %r TLS>" % ((HOST, tls.port),)


# ---------------------------------------------------------------------------
# accept
# ---------------------------------------------------------------------------

def test_accept_timeout_raises_and_the_listener_still_accepts(core):
    with bluelet.Listener(HOST, 0) as listener:
        def root():
            with pytest.raises(bluelet.Timeout):
                yield listener.accept(timeout=0.05)
            with connected(listener) as client:
                client.sendall(b"after the timeout")
                return (yield accept_and_read(listener, timeout=5))

        assert run_test(root(), DEADLINE) == b"after the timeout"


def test_accept_with_a_timeout_returns_a_waiting_connection(core):
    with bluelet.Listener(HOST, 0) as listener, connected(listener) as client:
        client.sendall(b"already here")
        assert run_test(accept_and_read(listener, timeout=5), DEADLINE) == b"already here"


def test_accept_on_a_closed_listener_fails_at_the_call(core):
    listener = bluelet.Listener(HOST, 0)
    listener.close()
    with pytest.raises(bluelet.SocketClosedError):
        listener.accept()
    with pytest.raises(bluelet.SocketClosedError):
        listener.accept(timeout=1)
    with pytest.raises(bluelet.SocketClosedError):
        listener.sockname
    listener.close()  # twice is harmless


def test_closing_wakes_a_coroutine_waiting_in_accept(core):
    listener = bluelet.Listener(HOST, 0)
    port = listener.port
    log = []

    def waiter():
        log.append("waiting")
        try:
            yield listener.accept()
        except bluelet.SocketClosedError:
            log.append("closed")

    def root():
        task = waiter()
        yield bluelet.spawn(task)
        assert (yield wait_for(lambda: log))
        yield bluelet.sleep(0.02)
        listener.close()
        yield bluelet.join(task)

    run_test(root(), DEADLINE)
    assert log == ["waiting", "closed"]
    assert_refused(HOST, port)


def test_context_manager_closes(core):
    with bluelet.Listener(HOST, 0) as listener:
        port = listener.port
        assert repr(listener) != "<Listener closed>"
    assert repr(listener) == "<Listener closed>"
    with pytest.raises(bluelet.SocketClosedError):
        listener.accept()
    assert_refused(HOST, port)


def test_context_manager_closes_on_an_exception(core):
    with pytest.raises(KeyError):
        with bluelet.Listener(HOST, 0) as listener:
            raise KeyError("boom")
    assert repr(listener) == "<Listener closed>"


# ---------------------------------------------------------------------------
# reuse_port
# ---------------------------------------------------------------------------

@needs_reuse_port
def test_reuse_port_lets_two_listeners_share_a_port(core):
    count = 20
    with bluelet.Listener(HOST, 0, reuse_port=True) as first, \
            bluelet.Listener(HOST, first.port, reuse_port=True) as second:
        assert second.port == first.port
        got = []

        def acceptor(listener):
            while True:
                got.append((yield accept_and_read(listener)))

        def root():
            tasks = [acceptor(first), acceptor(second)]
            for task in tasks:
                yield bluelet.spawn(task)
            clients = []
            try:
                for i in range(count):
                    clients.append(connected(first))
                    clients[-1].sendall(b"%d" % i)
                assert (yield wait_for(lambda: len(got) == count))
            finally:
                for client in clients:
                    client.close()
                for task in tasks:
                    yield bluelet.kill(task)

        run_test(root(), DEADLINE)
    # The kernel hands each connection to exactly one of the two.
    assert sorted(got) == sorted(b"%d" % i for i in range(count))


@needs_reuse_port
def test_without_reuse_port_the_second_listener_fails(core):
    with bluelet.Listener(HOST, 0, reuse_port=True) as first:
        with pytest.raises(OSError) as info:
            bluelet.Listener(HOST, first.port)
        assert info.value.errno == errno.EADDRINUSE


def test_reuse_port_where_the_platform_lacks_it(core, monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)
    with pytest.raises(ValueError, match="SO_REUSEPORT"):
        bluelet.Listener(HOST, 0, reuse_port=True)


def reuse_address(listener):
    return listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)


def test_address_reuse_is_on_where_posix_means_it(core):
    with bluelet.Listener(HOST, 0) as listener:
        assert bool(reuse_address(listener)) == (os.name == "posix")


def test_address_reuse_stays_off_where_it_would_let_the_port_be_taken(core, monkeypatch):
    # Windows' SO_REUSEADDR lets a second socket bind the listening port.
    monkeypatch.setattr(bluelet._listener, "_REUSE_ADDRESS", False)
    with bluelet.Listener(HOST, 0) as listener:
        assert reuse_address(listener) == 0
        with connected(listener) as client:
            client.sendall(b"served")
            client.shutdown(socket.SHUT_WR)
            assert run_test(accept_and_read(listener, timeout=5), DEADLINE) == b"served"


# ---------------------------------------------------------------------------
# Unix sockets
# ---------------------------------------------------------------------------

@pytest.fixture
def socket_path():
    with tempfile.TemporaryDirectory() as directory:
        yield os.path.join(directory, "listener.sock")


def test_unix_listener_accepts_and_removes_its_file(core, socket_path):
    with bluelet.Listener.unix(socket_path) as listener:
        assert (listener.host, listener.port, listener.path) == ("", 0, socket_path)
        assert listener.sockname == socket_path
        assert repr(listener) == "<Listener %r>" % (socket_path,)

        assert run_test(unix_round_trip(listener, b"local"), DEADLINE) == b"local"
    assert not os.path.exists(socket_path)


def test_unix_listener_replaces_a_stale_socket_file(core, socket_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path)
    stale.close()  # the file stays, nobody listens
    with bluelet.Listener.unix(socket_path) as listener:
        assert listener.sockname == socket_path


def test_unix_listener_will_not_take_the_path_of_a_live_server(core, socket_path):
    with bluelet.Listener.unix(socket_path) as listener:
        with pytest.raises(OSError) as taken:
            bluelet.Listener.unix(socket_path)
        assert taken.value.errno == errno.EADDRINUSE
        # The probe that told it apart is a client that hung up at once.
        assert run_test(accept_and_read(listener), DEADLINE) == b""
        assert run_test(unix_round_trip(listener, b"still mine"), DEADLINE) == b"still mine"
        assert os.path.exists(socket_path)


def test_unix_listener_refuses_to_replace_another_file(core, socket_path):
    with open(socket_path, "w") as f:
        f.write("precious")
    with pytest.raises(FileExistsError):
        bluelet.Listener.unix(socket_path)
    with open(socket_path) as f:
        assert f.read() == "precious"


def test_unix_listener_needs_a_path(core):
    with pytest.raises(ValueError):
        bluelet.Listener.unix("")


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="abstract sockets are Linux's")
def test_unix_listener_in_the_abstract_namespace(core):
    name = "\0bluelet-test-%d-%d" % (os.getpid(), id(core))
    with bluelet.Listener.unix(name) as listener:
        assert run_test(unix_round_trip(listener, b"abstract"), DEADLINE) == b"abstract"
