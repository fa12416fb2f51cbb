"""TLS: Listener(ssl=), connect(ssl=) and TLSConnection, run once per core.

Certificates come from a throwaway CA made by ``trustme`` for "localhost",
127.0.0.1 and ::1. Every test talks over the loopback interface, binds port
0 and runs under ``run_test``'s deadline, so a read that waits for bytes
OpenSSL already holds fails the test instead of hanging it. Peers that are
not bluelet (a blocking ``ssl`` client or server, or a raw socket that never
speaks TLS) run in a worker thread or are driven by hand from the test.
"""

import contextlib
import os
import random
import socket
import ssl
import tempfile
import time

import pytest
import trustme

import bluelet
from _helpers import HOST, abort, echoer, needs_ipv6, wait_for
from bluelet.testing import run_test

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(60)]

DEADLINE = 30.0  # seconds of real time any one test may take; none comes close


# ---------------------------------------------------------------------------
# Certificates and contexts
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca):
    return ca.issue_cert("localhost", "127.0.0.1", "::1")


@pytest.fixture
def server_ctx(server_cert):
    """A server context holding the certificate for localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture
def client_ctx(ca):
    """A client context that trusts the test CA (and checks host names)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def listener(core, server_ctx):
    """A TLS Listener on a loopback port, closed after the test."""
    with bluelet.Listener(HOST, 0, ssl=server_ctx) as listener:
        yield listener


@pytest.fixture
def plain_listener(core):
    """A plain TCP Listener on a loopback port, closed after the test."""
    with bluelet.Listener(HOST, 0) as listener:
        yield listener


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def payload(size, seed=7):
    return random.Random(seed).randbytes(size)


class Server:
    """An accept loop on ``listener`` that spawns ``handler(conn)`` for each
    connection and closes the connection when the handler ends. What a
    handler raises is kept in ``errors`` rather than ending the run, so a
    test can assert which connection failed, and how."""

    def __init__(self, listener, handler):
        self.listener = listener
        self.handler = handler
        self.accepted = []
        self.errors = []
        self._handlers = []
        self._loop = None

    def start(self):
        """Coroutine: spawn the accept loop."""
        self._loop = self._accept_forever()
        yield bluelet.spawn(self._loop)

    def stop(self):
        """Coroutine: kill the accept loop and every handler; close the listener."""
        for task in [self._loop] + self._handlers:
            yield bluelet.kill(task)
        self.listener.close()

    def _accept_forever(self):
        while True:
            conn = yield self.listener.accept()
            self.accepted.append(conn)
            task = self._serve(conn)
            self._handlers.append(task)
            yield bluelet.spawn(task)

    def _serve(self, conn):
        try:
            yield self.handler(conn)
        except Exception as error:
            self.errors.append(error)
        finally:
            conn.close()


def line_echo(conn):
    """Handler: echo line by line until the peer closes."""
    while True:
        line = yield conn.readline()
        if not line:
            return
        yield conn.sendall(line)


def connect_tls(port, client_ctx):
    """Coroutine: ``connect`` with TLS, as a coroutine of its own to spawn."""
    return (yield bluelet.connect(HOST, port, ssl=client_ctx))


def tls_pair(listener, client_ctx):
    """Coroutine: a client TLSConnection to ``listener`` and the accepted
    server side, both with their handshake done: ``(client, server)``."""
    accepted = []

    def accept():
        peer = yield listener.accept()
        accepted.append(peer)
        yield peer.handshake()

    acceptor = accept()
    yield bluelet.spawn(acceptor)
    conn = yield bluelet.connect(HOST, listener.port, ssl=client_ctx)
    yield bluelet.join(acceptor)
    return conn, accepted[0]


@contextlib.contextmanager
def raw_client(port, host=HOST):
    """A plain blocking socket connected to ``port`` (the kernel completes
    the TCP handshake before any accept); it never speaks TLS by itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect((host, port))
        yield sock
    finally:
        sock.close()


def blocking_tls_client(context, port, message):
    """A plain ``ssl`` client (run in a worker thread): send ``message``,
    read as many bytes back; returns them and the protocol version."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(message)
            chunks = []
            got = 0
            while got < len(message):
                data = tls.recv(65536)
                if not data:
                    break
                chunks.append(data)
                got += len(data)
            return b"".join(chunks), tls.version()


def blocking_tls_echo_server(context, listening):
    """A plain ``ssl`` server (run in a worker thread): accept one client on
    ``listening`` and echo until it closes; returns the byte count."""
    raw, _ = listening.accept()
    raw.settimeout(10)
    echoed = 0
    with context.wrap_socket(raw, server_side=True) as tls:
        while True:
            data = tls.recv(65536)
            if not data:
                return echoed
            tls.sendall(data)
            echoed += len(data)


def tls_round_trip(port, client_ctx, lines):
    """Coroutine: connect with TLS, send each line and read its echo."""
    conn = yield bluelet.connect(HOST, port, ssl=client_ctx)
    with conn:
        replies = []
        for line in lines:
            yield conn.sendall(line)
            replies.append((yield conn.readline()))
        return replies


# ---------------------------------------------------------------------------
# Echo, with bluelet at both ends and against the ssl module
# ---------------------------------------------------------------------------

VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3",
                 marks=pytest.mark.skipif(not ssl.HAS_TLSv1_3, reason="OpenSSL without TLS 1.3")),
]


@pytest.mark.parametrize("version", VERSIONS)
def test_echo_with_bluelet_at_both_ends(core, listener, client_ctx, version):
    client_ctx.maximum_version = version
    server = Server(listener, line_echo)
    lines = [b"hello\n", b"over tls\n", b"x" * 5000 + b"\n"]

    def root():
        yield server.start()
        conn = yield bluelet.connect(HOST, listener.port, ssl=client_ctx)
        with conn:
            assert isinstance(conn, bluelet.TLSConnection)
            assert conn.sock.version() == version.name.replace("_", ".")
            replies = []
            for line in lines:
                yield conn.sendall(line)
                replies.append((yield conn.readline()))
        yield server.stop()
        return replies

    assert run_test(root(), DEADLINE) == lines
    assert server.errors == []
    assert all(isinstance(conn, bluelet.TLSConnection) for conn in server.accepted)


def test_bluelet_server_with_a_plain_ssl_client(core, listener, client_ctx):
    server = Server(listener, echoer)
    message = payload(300_000)

    def root():
        yield server.start()
        result = yield bluelet.to_thread(blocking_tls_client, client_ctx, listener.port, message)
        yield server.stop()
        return result

    echoed, version = run_test(root(), DEADLINE)
    assert echoed == message
    assert version in ("TLSv1.2", "TLSv1.3")
    assert server.errors == []


def test_bluelet_client_with_a_plain_ssl_server(core, server_ctx, client_ctx):
    message = payload(300_000)
    with socket.socket() as listening:
        listening.bind((HOST, 0))
        listening.listen()
        listening.settimeout(10)
        port = listening.getsockname()[1]

        def root():
            server_job = bluelet.to_thread(blocking_tls_echo_server, server_ctx, listening)
            yield bluelet.spawn(server_job)
            conn = yield bluelet.connect(HOST, port, ssl=client_ctx, server_hostname="localhost")
            with conn:
                yield conn.sendall(message)
                echoed = yield conn.readexactly(len(message))
            count = yield bluelet.join(server_job)
            return echoed, count

        echoed, count = run_test(root(), DEADLINE)
    assert echoed == message
    assert count == len(message)


@needs_ipv6
def test_tls_over_ipv6_checks_the_address_in_the_certificate(core, server_ctx, client_ctx):
    with bluelet.Listener("::1", 0, ssl=server_ctx) as listener:
        server = Server(listener, echoer)

        def root():
            yield server.start()
            conn = yield bluelet.connect("::1", listener.port, ssl=client_ctx)  # name: "::1"
            with conn:
                yield conn.sendall(b"six")
                reply = yield conn.recv(100)
            yield server.stop()
            return reply

        assert run_test(root(), DEADLINE) == b"six"
    assert server.errors == []


def test_many_concurrent_tls_clients(core, listener, client_ctx):
    server = Server(listener, line_echo)
    count = 40
    lines = [[b"client %d line %d\n" % (i, j) for j in range(3)] for i in range(count)]

    def root():
        yield server.start()
        clients = [tls_round_trip(listener.port, client_ctx, mine) for mine in lines]
        replies = yield bluelet.join_all(clients)
        yield server.stop()
        return replies

    assert run_test(root(), DEADLINE) == lines
    assert server.errors == []
    assert len(server.accepted) == count


def test_tls_over_a_unix_socket(core, server_ctx, client_ctx):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "tls.sock")
        with bluelet.Listener.unix(path, ssl=server_ctx) as listener:
            server = Server(listener, echoer)

            def client():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                    raw.settimeout(10)
                    raw.connect(path)
                    with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(b"over a unix socket")
                        return tls.recv(100)

            def root():
                yield server.start()
                reply = yield bluelet.to_thread(client)
                yield server.stop()
                return reply

            assert run_test(root(), DEADLINE) == b"over a unix socket"
    assert server.errors == []


# ---------------------------------------------------------------------------
# Large transfers and the bytes OpenSSL holds
# ---------------------------------------------------------------------------

def test_megabytes_with_readline_readexactly_and_sendall(core, listener, client_ctx):
    # A line of 3 MiB read with readline's small reads (each takes a slice
    # of a 16 KiB record, the rest waiting inside OpenSSL), then 3 MiB read
    # with readexactly; both echoed back with sendall while the client is
    # still writing, so sends fill the socket buffer and go out in parts.
    line = payload(3 << 20).replace(b"\n", b".") + b"\n"
    block = payload(3 << 20, seed=8)

    def handler(conn):
        got_line = yield conn.readline(limit=4 << 20)
        yield conn.sendall(got_line)
        got_block = yield conn.readexactly(len(block))
        yield conn.sendall(got_block)

    server = Server(listener, handler)

    def writer(conn):
        yield conn.sendall(line)
        yield conn.sendall(block)

    def root():
        yield server.start()
        conn = yield bluelet.connect(HOST, listener.port, ssl=client_ctx)
        with conn:
            sending = writer(conn)
            yield bluelet.spawn(sending)
            yield bluelet.sleep(0.05)  # let the server's replies back up first
            echoed_line = yield conn.readline(limit=4 << 20, bufsize=4096)
            echoed_block = yield conn.readexactly(len(block))
            yield bluelet.join(sending)
        yield server.stop()
        return echoed_line, echoed_block

    echoed_line, echoed_block = run_test(root(), DEADLINE)
    assert echoed_line == line
    assert echoed_block == block
    assert server.errors == []


def test_small_reads_of_one_buffered_record_do_not_wait(core, listener, client_ctx):
    # One 16 KiB record is the most TLS puts in a record: the first recv(10)
    # makes OpenSSL read and decrypt all of it, so the kernel has nothing
    # left to report. Every later recv must be served from OpenSSL's buffer;
    # one that waited for the socket to become readable would wait forever,
    # since the server sends nothing more until it hears back.
    record = payload(16384)

    def root():
        conn, peer = yield tls_pair(listener, client_ctx)
        with conn, peer:
            yield peer.sendall(record)  # one SSL_write: one record
            pieces = []
            got = 0
            while got < len(record):
                data = yield conn.recv(10, timeout=5)
                assert 0 < len(data) <= 10
                pieces.append(data)
                got += len(data)
            yield conn.sendall(b"done")
            ack = yield peer.recv(10)
        return b"".join(pieces), ack

    received, ack = run_test(root(), DEADLINE)
    assert received == record
    assert ack == b"done"


def test_a_timed_out_tls_recv_leaves_the_connection_usable(core, listener, client_ctx):
    def root():
        conn, peer = yield tls_pair(listener, client_ctx)
        with conn, peer:
            with pytest.raises(bluelet.Timeout):
                yield conn.recv(10, timeout=0.05)
            yield peer.sendall(b"late but whole\n")
            line = yield conn.readline(timeout=5)
        return line

    assert run_test(root(), DEADLINE) == b"late but whole\n"


# ---------------------------------------------------------------------------
# The handshake never blocks the loop
# ---------------------------------------------------------------------------

def test_a_client_that_never_starts_tls_does_not_stop_the_server(core, listener, client_ctx):
    server = Server(listener, line_echo)

    def root():
        yield server.start()
        with raw_client(listener.port):
            assert (yield wait_for(lambda: len(server.accepted) == 1))
            # The silent client's handler is inside its handshake now.
            replies = yield tls_round_trip(listener.port, client_ctx, [b"still served\n"])
            assert server.errors == []
        # The silent client leaves: its handler fails, alone.
        assert (yield wait_for(lambda: server.errors))
        yield server.stop()
        return replies

    assert run_test(root(), DEADLINE) == [b"still served\n"]
    assert len(server.errors) == 1 and isinstance(server.errors[0], OSError)


def test_handshake_timeout_raises_timeout(core, listener):
    def root():
        with raw_client(listener.port):
            peer = yield listener.accept()
            with peer:
                with pytest.raises(bluelet.Timeout):
                    yield peer.handshake(timeout=0.05)
            with pytest.raises(bluelet.SocketClosedError):
                peer.handshake()

    run_test(root(), DEADLINE)


def test_connect_timeout_covers_the_tls_handshake(core, plain_listener, client_ctx):
    listener = plain_listener  # plain TCP: it never answers the ClientHello

    def root():
        with pytest.raises(bluelet.Timeout):
            yield bluelet.connect(HOST, listener.port, timeout=0.1, ssl=client_ctx)
        peer = yield listener.accept()
        peer.close()

    run_test(root(), DEADLINE)


def test_the_handshake_runs_at_the_first_write_too(core, listener, client_ctx):
    def root():
        connecting = connect_tls(listener.port, client_ctx)
        yield bluelet.spawn(connecting)
        peer = yield listener.accept()
        with peer:
            yield peer.sendall(b"hello first")  # no handshake() before it
            conn = yield bluelet.join(connecting)
            with conn:
                return (yield conn.recv(100))

    assert run_test(root(), DEADLINE) == b"hello first"


def test_a_reader_and_a_writer_both_waiting_for_the_first_handshake(core, listener, client_ctx):
    # Both trigger the handshake. If each drove it, each would wait on the
    # socket; one readiness report wakes one of them, and the other could
    # sleep through the end of the handshake, its data never sent.
    got = []

    def reader(peer):
        got.append((yield peer.recv(100)))

    def writer(peer):
        yield peer.sendall(b"from the server")

    def root():
        connecting = connect_tls(listener.port, client_ctx)
        yield bluelet.spawn(connecting)
        peer = yield listener.accept()
        with peer:
            tasks = [reader(peer), writer(peer)]
            for task in tasks:
                yield bluelet.spawn(task)
            client = yield bluelet.join(connecting)
            with client:
                greeting = yield client.recv(100, timeout=5)
                yield client.sendall(b"from the client")
                for task in tasks:
                    yield bluelet.join(task)
        return greeting, got

    assert run_test(root(), DEADLINE) == (b"from the server", [b"from the client"])


def _noting(log, name, event):
    """Coroutine: yield ``event``; note in ``log`` what it gave or raised."""
    try:
        log.append((name, (yield event)))
    except Exception as error:
        log.append((name, type(error)))


def test_when_the_handshake_driver_times_out_a_waiter_takes_over(core, listener, client_ctx):
    def late_client():
        with socket.create_connection((HOST, listener.port), timeout=10) as raw:
            time.sleep(0.2)  # starts TLS only after the first handshake() timed out
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"late")
                return tls.recv(100)

    def root():
        client = bluelet.to_thread(late_client)
        yield bluelet.spawn(client)
        peer = yield listener.accept()
        log = []
        with peer:
            tasks = [_noting(log, "driver", peer.handshake(timeout=0.05)),
                     _noting(log, "reader", peer.recv(100))]
            for task in tasks:
                yield bluelet.spawn(task)
            for task in tasks:
                yield bluelet.join(task)
            yield peer.sendall(b"served")
        assert (yield bluelet.join(client)) == b"served"
        return log

    assert run_test(root(), DEADLINE) == [("driver", bluelet.Timeout), ("reader", b"late")]


@pytest.mark.parametrize("how", ["garbage", "close"])
def test_when_the_handshake_fails_every_waiter_gets_the_error(core, listener, how):
    error = ssl.SSLError if how == "garbage" else bluelet.SocketClosedError

    def root():
        with raw_client(listener.port) as raw:
            peer = yield listener.accept()
            log = []
            tasks = [_noting(log, "driver", peer.handshake()),
                     _noting(log, "reader", peer.recv(100)),
                     _noting(log, "writer", peer.sendall(b"never"))]
            for task in tasks:
                yield bluelet.spawn(task)
            yield bluelet.sleep(0.02)  # all three wait now
            if how == "garbage":
                raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            else:
                peer.close()
            for task in tasks:
                yield bluelet.join(task)
            peer.close()
        return log

    log = run_test(root(), DEADLINE)
    assert [name for name, _ in log] == ["driver", "reader", "writer"]
    assert all(issubclass(outcome, error) for _, outcome in log), log


def test_handshake_twice_is_harmless(core, listener, client_ctx):
    def root():
        conn, peer = yield tls_pair(listener, client_ctx)
        with conn, peer:
            yield conn.handshake()
            yield peer.handshake(timeout=1)
            yield conn.sendall(b"ok")
            data = yield peer.recv(10)
        return data

    assert run_test(root(), DEADLINE) == b"ok"


# ---------------------------------------------------------------------------
# Certificates and host names
# ---------------------------------------------------------------------------

def test_a_client_without_the_ca_fails_verification_at_connect(core, listener):
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)  # trusts some other CA only
    server = Server(listener, echoer)

    def root():
        yield server.start()
        with pytest.raises(ssl.SSLCertVerificationError):
            yield bluelet.connect(HOST, listener.port, ssl=stranger)
        assert (yield wait_for(lambda: server.errors))
        yield server.stop()

    run_test(root(), DEADLINE)
    # The server's side of the failed handshake raised in that handler only.
    assert len(server.errors) == 1 and isinstance(server.errors[0], OSError)


@pytest.mark.parametrize("hostname, verified", [
    ("localhost", True),
    (None, True),  # the default: the host connected to, 127.0.0.1 (in the certificate)
    ("example.com", False),
])
def test_server_hostname_is_what_the_certificate_is_checked_against(core, listener, client_ctx,
                                                                   hostname, verified):
    server = Server(listener, echoer)

    def root():
        yield server.start()
        try:
            conn = yield bluelet.connect(HOST, listener.port, ssl=client_ctx,
                                         server_hostname=hostname)
        except ssl.SSLCertVerificationError as error:
            assert not verified
            assert "mismatch" in str(error)
        else:
            assert verified
            with conn:
                yield conn.sendall(b"checked")
                assert (yield conn.recv(100)) == b"checked"
        yield server.stop()

    run_test(root(), DEADLINE)


def test_server_hostname_without_ssl_is_an_error_at_the_call(core):
    with pytest.raises(ValueError, match="server_hostname"):
        bluelet.connect(HOST, 1, server_hostname="localhost")


def test_tls_session_information(core, listener, client_ctx):
    def root():
        conn, peer = yield tls_pair(listener, client_ctx)
        with conn, peer:
            info = (conn.sock.version(), peer.sock.version(), conn.sock.getpeercert(),
                    peer.sock.getpeercert(), conn.sock.cipher())
        return info

    client_version, server_version, cert, client_cert, cipher = run_test(root(), DEADLINE)
    assert client_version in ("TLSv1.2", "TLSv1.3")
    assert server_version == client_version
    assert ("DNS", "localhost") in cert["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
    assert client_cert is None  # the client showed no certificate
    assert cipher[1] == client_version


def test_client_certificates(core, listener, ca, server_ctx, client_ctx):
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    ca.issue_cert("client@example.org").configure_cert(client_ctx)

    def root():
        conn, peer = yield tls_pair(listener, client_ctx)
        with conn, peer:
            yield conn.sendall(b"who am I")
            yield peer.recv(100)  # TLS 1.3: the server checks the client's certificate here
            cert = peer.sock.getpeercert()
        return cert

    cert = run_test(root(), DEADLINE)
    assert cert["subjectAltName"] == (("email", "client@example.org"),)


# ---------------------------------------------------------------------------
# Closing
# ---------------------------------------------------------------------------

def test_shutdown_write_is_not_implemented_and_the_connection_survives(core, listener, client_ctx):
    def root():
        conn, peer = yield tls_pair(listener, client_ctx)
        with conn, peer:
            with pytest.raises(NotImplementedError):
                conn.shutdown_write()
            yield conn.sendall(b"still open")
            data = yield peer.recv(100)
        return data

    assert run_test(root(), DEADLINE) == b"still open"


@pytest.mark.parametrize("closer", ["client", "server"])
@pytest.mark.parametrize("exchange", [False, True], ids=["fresh", "after-data"])
def test_the_peer_of_a_closed_tls_connection_reads_eof(core, listener, client_ctx, closer,
                                                       exchange):
    # Closing right after the handshake is the tricky case: a TLS 1.3
    # server sends its session tickets then, and a client that closes with
    # them unread must still end the stream cleanly. Repeated, as that races.

    def root():
        seen = []
        for _ in range(10):
            conn, peer = yield tls_pair(listener, client_ctx)
            if exchange:
                yield conn.sendall(b"ping")
                assert (yield peer.recv(10)) == b"ping"
                yield peer.sendall(b"pong")
                assert (yield conn.recv(10)) == b"pong"
            closing, other = (conn, peer) if closer == "client" else (peer, conn)
            closing.close()
            seen.append((yield other.recv(100)))
            seen.append((yield other.recv(100)))  # and again: still EOF
            other.close()
        return seen

    assert run_test(root(), DEADLINE) == [b""] * 20


def test_close_sends_close_notify(core, listener, client_ctx):
    # A client that does not forgive a missing close_notify (a truncation
    # attack looks the same) reads a clean end of stream.

    def strict_client():
        with socket.create_connection((HOST, listener.port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="localhost",
                                        suppress_ragged_eofs=False) as tls:
                tls.sendall(b"bye")
                return tls.recv(100), tls.recv(100)

    def root():
        client = bluelet.to_thread(strict_client)
        yield bluelet.spawn(client)
        peer = yield listener.accept()
        with peer:
            assert (yield peer.recv(100)) == b"bye"
            yield peer.sendall(b"last words")
        result = yield bluelet.join(client)
        return result

    assert run_test(root(), DEADLINE) == (b"last words", b"")


@pytest.mark.parametrize("wait", ["recv", "sendall"])
def test_close_wakes_a_coroutine_waiting_on_a_tls_connection(core, listener, client_ctx, wait):
    log = []

    def waiter(conn):
        log.append("waiting")
        try:
            if wait == "recv":
                yield conn.recv(100)
            else:
                yield conn.sendall(b"s" * (32 << 20))  # the peer reads none of it
        except bluelet.SocketClosedError:
            log.append("closed")

    def root():
        conn, peer = yield tls_pair(listener, client_ctx)
        with peer:
            task = waiter(conn)
            yield bluelet.spawn(task)
            yield bluelet.sleep(0.05)
            conn.close()  # close_notify cannot go out past the unsent data; no matter
            yield bluelet.join(task)

    run_test(root(), DEADLINE)
    assert log == ["waiting", "closed"]


# ---------------------------------------------------------------------------
# Kills and resets in the middle
# ---------------------------------------------------------------------------

def _killed_while_waiting(make_waiter):
    """Coroutine: spawn ``make_waiter(log)``, let it wait, kill it; returns
    its log (it notes "waiting", and "cancelled" when Cancelled arrives)."""
    log = []
    task = make_waiter(log)
    yield bluelet.spawn(task)
    assert (yield wait_for(lambda: "waiting" in log))
    yield bluelet.sleep(0.02)
    yield bluelet.kill(task)
    return log


def test_kill_during_the_client_handshake_closes_its_socket(core, plain_listener, client_ctx):
    listener = plain_listener  # never answers the ClientHello

    def connecting(log):
        log.append("waiting")
        try:
            yield bluelet.connect(HOST, listener.port, ssl=client_ctx)
        except bluelet.Cancelled:
            log.append("cancelled")
            raise

    def root():
        log = yield _killed_while_waiting(connecting)
        peer = yield listener.accept()
        # The client's socket is closed: the server reads the ClientHello, then EOF.
        yield bluelet.timeout(5, _read_to_eof(peer))
        peer.close()
        return log

    assert run_test(root(), DEADLINE) == ["waiting", "cancelled"]


def _read_to_eof(conn):
    for _ in range(1000):
        if not (yield conn.recv(65536)):
            return
    raise AssertionError("no EOF")


@pytest.mark.parametrize("where", ["handshake", "recv"])
def test_kill_during_a_server_side_handshake_or_recv(core, listener, client_ctx, where):
    def root():
        with contextlib.ExitStack() as stack:
            if where == "handshake":
                stack.enter_context(raw_client(listener.port))  # silent: no ClientHello
                peer = yield listener.accept()
                conn = None
            else:
                conn, peer = yield tls_pair(listener, client_ctx)
                stack.enter_context(conn)

            def waiter(log):
                log.append("waiting")
                try:
                    yield peer.handshake() if where == "handshake" else peer.recv(100)
                except bluelet.Cancelled:
                    log.append("cancelled")
                    raise
                finally:
                    peer.close()

            log = yield _killed_while_waiting(waiter)
            if conn is not None:
                assert (yield conn.recv(100)) == b""  # the killed side closed
        return log

    assert run_test(root(), DEADLINE) == ["waiting", "cancelled"]


def test_a_peer_that_resets_mid_handshake_fails_that_handshake_only(core, listener, client_ctx):
    server = Server(listener, line_echo)

    def root():
        yield server.start()
        with raw_client(listener.port) as rude:
            rude.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
            assert (yield wait_for(lambda: len(server.accepted) == 1))
            yield bluelet.sleep(0.02)  # its handler waits for the rest of it
            abort(rude)
        assert (yield wait_for(lambda: server.errors))
        replies = yield tls_round_trip(listener.port, client_ctx, [b"fine\n"])
        yield server.stop()
        return replies

    assert run_test(root(), DEADLINE) == [b"fine\n"]
    assert len(server.errors) == 1
    assert isinstance(server.errors[0], (ConnectionResetError, ssl.SSLError))


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["silent", "hello"])
def test_a_client_gone_before_accept_does_not_break_accept(core, listener, client_ctx, sent):
    # Wrapping an accepted socket whose client has already reset makes the
    # ssl module raise; accept() must skip that client and return the next.

    def client():
        conn = yield bluelet.connect(HOST, listener.port, timeout=5, ssl=client_ctx)
        with conn:
            yield conn.sendall(b"second")
            return (yield conn.recv(100, timeout=5))

    def root():
        with raw_client(listener.port) as gone:
            if sent:
                gone.sendall(sent)
            abort(gone)
        yield bluelet.sleep(0.02)  # the reset has arrived
        talker = client()
        yield bluelet.spawn(talker)
        peer = yield listener.accept(timeout=5)
        with peer:
            data = yield peer.recv(100)
            yield peer.sendall(data)
            reply = yield bluelet.join(talker)
        return reply

    assert run_test(root(), DEADLINE) == b"second"


# ---------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------

def test_listener_ssl_must_be_a_server_context(core):
    with pytest.raises(TypeError, match="SSLContext"):
        bluelet.Listener(HOST, 0, ssl=True)
    with pytest.raises(ValueError, match="client"):
        bluelet.Listener(HOST, 0, ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


def test_connect_ssl_must_be_a_client_context(core):
    # Refused at the call, before any socket is made (no_fd_leak checks it).
    # (Python 3.9's create_default_context makes contexts for either side.)
    with pytest.raises(TypeError, match="SSLContext"):
        bluelet.connect(HOST, 1, ssl="yes")
    with pytest.raises(ValueError, match="client context"):
        bluelet.connect(HOST, 1, ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


# ---------------------------------------------------------------------------
# STARTTLS, session resumption, recv_into
# ---------------------------------------------------------------------------

def starttls_server(listener, server_ctx, seen):
    """Handler of a line protocol that upgrades on "STARTTLS": then it
    echoes one line over TLS, upper-cased."""
    conn = yield listener.accept()
    with conn:
        assert (yield conn.readline()) == b"STARTTLS\r\n"
        yield conn.sendall(b"220 go ahead\r\n")
        try:
            tls = yield conn.start_tls(server_ctx, server_side=True)
        except ValueError as exc:
            seen.append(exc)
            return
        with tls:
            seen.append(tls.sock.version())
            line = yield tls.readline()
            yield tls.sendall(line.upper())


def test_start_tls_upgrades_in_mid_stream(core, plain_listener, server_ctx, client_ctx):
    seen = []

    def client():
        conn = yield bluelet.connect(HOST, plain_listener.port)
        yield conn.sendall(b"STARTTLS\r\n")
        assert (yield conn.readline()) == b"220 go ahead\r\n"
        tls = yield conn.start_tls(client_ctx, server_hostname="localhost")
        with pytest.raises(bluelet.SocketClosedError):
            conn.recv(10)  # the plaintext Connection is used up
        with tls:
            assert isinstance(tls, bluelet.TLSConnection)
            yield tls.sendall(b"over tls\n")
            return (yield tls.readline())

    def root():
        server = starttls_server(plain_listener, server_ctx, seen)
        yield bluelet.spawn(server)
        reply = yield client()
        yield bluelet.join(server)
        return reply

    assert run_test(root(), timeout=DEADLINE) == b"OVER TLS\n"
    assert seen and seen[0].startswith("TLS")


def test_start_tls_refuses_plaintext_sent_before_the_handshake(core, plain_listener,
                                                               server_ctx):
    """The STARTTLS injection attack: a command pipelined after STARTTLS
    must not be taken as if it came over TLS."""
    seen = []

    def client():
        conn = yield bluelet.connect(HOST, plain_listener.port)
        with conn:
            yield conn.sendall(b"STARTTLS\r\nRCPT TO:<victim>\r\n")
            yield conn.readline()
            return (yield conn.recv(100))  # the server hangs up

    def root():
        server = starttls_server(plain_listener, server_ctx, seen)
        yield bluelet.spawn(server)
        at_end = yield client()
        yield bluelet.join(server)
        return at_end

    assert run_test(root(), timeout=DEADLINE) == b""
    assert isinstance(seen[0], ValueError) and "plaintext" in str(seen[0])


def test_start_tls_misuse_raises_at_the_call(core, listener, plain_listener, server_ctx,
                                             client_ctx):
    def root():
        conn, peer = yield tls_pair(listener, client_ctx)
        with conn, peer:
            with pytest.raises(ValueError, match="already TLS"):
                conn.start_tls(client_ctx)
        plain = yield bluelet.connect(HOST, plain_listener.port)
        with plain:
            with pytest.raises(TypeError, match="SSLContext"):
                plain.start_tls(None)
            with pytest.raises(ValueError, match="client context"):
                # Made explicitly: on 3.9 create_default_context(CLIENT_AUTH)
                # gives a PROTOCOL_TLS context, usable on either side.
                plain.start_tls(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
            with pytest.raises(ValueError, match="server_hostname and session"):
                plain.start_tls(server_ctx, server_side=True, server_hostname="localhost")
            with pytest.raises(TypeError, match="SSLSession"):
                plain.start_tls(client_ctx, session="a session")
        return "ok"

    assert run_test(root(), timeout=DEADLINE) == "ok"


def test_a_failed_start_tls_handshake_closes_the_socket(core, plain_listener, client_ctx):
    def root():
        def refuse():
            conn = yield plain_listener.accept()
            with conn:
                yield conn.recv(1000)  # the ClientHello
                yield conn.sendall(b"not TLS at all\r\n" * 8)

        yield bluelet.spawn(refuse())
        conn = yield bluelet.connect(HOST, plain_listener.port)
        with pytest.raises(ssl.SSLError):
            yield conn.start_tls(client_ctx, server_hostname="localhost")
        return "ok"

    assert run_test(root(), timeout=DEADLINE) == "ok"  # no_fd_leak: nothing left open


def test_connect_resumes_a_session(core, listener, client_ctx):
    def one_exchange(session=None):
        conn = yield bluelet.connect(HOST, listener.port, ssl=client_ctx, session=session)
        with conn:
            yield conn.sendall(b"ping\n")
            assert (yield conn.readline()) == b"ping\n"
            # Under TLS 1.3 the ticket comes after the handshake: read first.
            return conn.tls_session, conn.sock.session_reused

    def root():
        server = bluelet.spawn(bluelet.serve(listener, line_echo))
        yield server
        session, first_reused = yield one_exchange()
        _, reused = yield one_exchange(session)
        listener.close()
        return session is not None, first_reused, reused

    assert run_test(root(), timeout=DEADLINE) == (True, False, True)


def test_session_needs_tls_and_an_ssl_session(core):
    with pytest.raises(ValueError, match="only meaningful with ssl"):
        bluelet.connect(HOST, 1, session=object())
    with pytest.raises(TypeError, match="SSLSession"):
        bluelet.connect(HOST, 1, ssl=ssl.create_default_context(), session="resume")


def test_recv_into_over_tls(core, listener, client_ctx):
    def root():
        conn, peer = yield tls_pair(listener, client_ctx)
        with conn, peer:
            data = payload(100000)

            def send():
                yield peer.sendall(data)

            yield bluelet.spawn(send())
            buffer = bytearray(4096)
            got = bytearray()
            while len(got) < len(data):
                n = yield conn.recv_into(buffer)
                assert n > 0
                got += buffer[:n]
            return bytes(got) == data

    assert run_test(root(), timeout=DEADLINE) is True
