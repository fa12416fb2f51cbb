"""Sockets: Listener, Connection and connect, run once per core.

Every test takes the ``core`` fixture, talks over the loopback interface
(127.0.0.1, or ::1 where IPv6 is tested) and binds port 0, learning the real
port from ``bluelet.Listener(host, 0).port``. Loops are bounded in count and
paced with ``bluelet.sleep``; assertions are about what a program can observe
(bytes, exceptions, ``finally`` blocks, descriptors), never about timing.
Scaffolding shared with test_scheduler.py (echo server and clients, watchdogs,
SIGINT delivery, descriptor counting) is in ``_helpers``.
"""

import contextlib
import errno
import gc
import logging
import os
import random
import resource
import socket
import threading
import warnings

import pytest

import bluelet
from _helpers import (
    HOST,
    abort,
    assert_refused,
    echo_round_trip,
    echoer,
    fd_count,
    free_port,
    needs_ipv6,
    open_pair,
    recv_all,
    recv_exactly,
    reset_on_close,
    sleeper,
    spawn_and_join,
    start_server,
    wait_for,
    watchdog,
)
from bluelet.testing import run_test

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(60)]

#: The errors a reset or broken connection may surface as, depending on
#: whether the kernel has already seen the RST when the call is made.
BROKEN = (ConnectionResetError, BrokenPipeError)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def payload(size, seed=1):
    return random.Random(seed).randbytes(size)



@contextlib.contextmanager
def _plain_client():
    """A Listener on a loopback port and a plain blocking socket connected to
    it, not yet accepted: ``(listener, raw)``, both closed at the end."""
    listener = bluelet.Listener(HOST, 0)
    raw = socket.create_connection((HOST, listener.port), timeout=5)
    try:
        yield listener, raw
    finally:
        raw.close()
        listener.close()


def _one_connection(server_side, client_side):
    """One run() over a loopback connection: ``server_side(conn)`` runs on the
    accepted end and ``client_side(conn)`` on the connecting end, both
    coroutines, concurrently. Each end is closed when its side ends (the
    listener with the server's). Returns both sides' results, server's first."""
    listener = bluelet.Listener(HOST, 0)
    results = {}

    def serve():
        conn = yield listener.accept()
        try:
            results["server"] = yield server_side(conn)
        finally:
            conn.close()
            listener.close()

    def dial():
        conn = yield bluelet.connect(HOST, listener.port)
        try:
            results["client"] = yield client_side(conn)
        finally:
            conn.close()

    bluelet.run(spawn_and_join([serve(), dial()]))
    return results["server"], results["client"]


def _sender(chunks, pause=0.01):
    """A client side for _one_connection: send ``chunks``, pausing after each."""

    def client_side(conn):
        for chunk in chunks:
            yield conn.sendall(chunk)
            yield bluelet.sleep(pause)

    return client_side


def _log_wait(log, event, errors):
    """Coroutine: note "waiting", yield ``event``, then note "returned", or the
    type of the ``errors`` exception the yield raised; "finally" at the end."""
    try:
        log.append("waiting")
        yield event
        log.append("returned")
    except errors as exc:
        log.append(type(exc))
    finally:
        log.append("finally")


# ---------------------------------------------------------------------------
# The classic echo server
# ---------------------------------------------------------------------------

def test_echo_server_with_five_concurrent_clients(core):
    port = free_port()
    results = {}

    def client(i):
        message = (b"client %d says hello; " % i) * (50 + i)
        # Send in several pieces so the clients interleave.
        echoed = yield echo_round_trip(port, message, pieces=4, pause=0.001)
        results[i] = echoed == message

    def root():
        srv = yield start_server(port, echoer)
        yield spawn_and_join([client(i) for i in range(5)])
        yield bluelet.kill(srv)  # its finally closes the listener
        return "done"

    assert bluelet.run(root()) == "done"
    assert results == {i: True for i in range(5)}
    assert_refused(HOST, port)


def test_echo_with_listener_directly(core):
    listener = bluelet.Listener(HOST, 0)
    port = listener.port
    seen = {}

    def acceptor(n):
        try:
            for _ in range(n):
                conn = yield listener.accept()
                assert isinstance(conn, bluelet.Connection)
                seen.setdefault("addrs", []).append(conn.addr)

                def handle(conn=conn):
                    try:
                        yield echoer(conn)
                    finally:
                        conn.close()

                yield bluelet.spawn(handle())
        finally:
            listener.close()

    def client(i):
        conn = yield bluelet.connect(HOST, port)
        try:
            local = conn.sock.getsockname()
            assert conn.sock.getpeername() == (HOST, port)
            msg = b"%d:" % i + b"x" * 3000
            yield conn.sendall(msg)
            echoed = yield recv_exactly(conn, len(msg))
            seen[i] = (echoed == msg, local)
        finally:
            conn.close()

    def root():
        yield bluelet.spawn(acceptor(3))
        yield spawn_and_join([client(i) for i in range(3)])

    bluelet.run(root())
    assert [seen[i][0] for i in range(3)] == [True, True, True]
    # The accepted connection's addr is the peer's address.
    assert sorted(seen["addrs"]) == sorted(seen[i][1] for i in range(3))
    assert_refused(HOST, port)


def test_connection_wraps_a_plain_socket(core):
    # Programs may build Connection(sock, addr) themselves, as in 0.2.0.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain_listener:
        plain_listener.bind((HOST, 0))
        plain_listener.listen(1)
        where = plain_listener.getsockname()
        client_sock = socket.create_connection(where, timeout=5)
        server_sock, addr = plain_listener.accept()
    client = bluelet.Connection(client_sock, where)
    server = bluelet.Connection(server_sock, addr)
    assert client.sock is client_sock and server.addr == addr
    out = []

    def root():
        try:
            s = echo_one(server)
            yield bluelet.spawn(s)
            yield client.sendall(b"wrapped\n")
            out.append((yield client.readline()))
        finally:
            client.close()
        yield bluelet.join(s)

    def echo_one(conn):
        try:
            line = yield conn.readline()
            yield conn.sendall(line)
            out.append((yield conn.recv(10)))  # EOF once the client closes
        finally:
            conn.close()

    bluelet.run(root())
    assert out == [b"wrapped\n", b""]


# ---------------------------------------------------------------------------
# readline
# ---------------------------------------------------------------------------

def test_readline_lines_arrive_in_odd_chunks(core):
    def reader(conn):
        lines = []
        for _ in range(4):
            lines.append((yield conn.readline()))
        return lines

    lines, _ = _one_connection(reader, _sender([b"a", b"\nb", b"b", b"\ncc", b"c"]))
    # The last line has no terminator: readline hands over the rest at EOF,
    # and after that it returns b"".
    assert lines == [b"a\n", b"bb\n", b"ccc", b""]


def test_readline_keeps_data_read_past_the_terminator(core):
    state = {}

    def server_side(conn):
        # Wait until the whole stream has been sent, so readline's single
        # recv picks up more than the first line.
        yield wait_for(lambda: state.get("sent"))
        out = []
        out.append((yield conn.readline()))
        out.append((yield conn.recv(6)))       # served from the buffer
        out.append((yield conn.readline()))    # from the buffer alone
        out.append((yield conn.recv(100)))     # the buffer's rest
        out.append((yield conn.readline()))    # from the socket
        out.append((yield conn.recv(100)))     # kept past that line
        out.append((yield conn.readline()))    # EOF
        out.append((yield conn.recv(100)))     # EOF
        return out

    def client_side(conn):
        yield conn.sendall(b"first\nsecond line\nthird")
        state["sent"] = True
        yield bluelet.sleep(0.05)
        yield conn.sendall(b" and more\nlast")

    out, _ = _one_connection(server_side, client_side)
    assert out == [
        b"first\n",
        b"second",
        b" line\n",
        b"third",
        b" and more\n",
        b"last",
        b"",
        b"",
    ]


@pytest.mark.parametrize("bufsize", [1, 3, 1024])
def test_readline_custom_terminator(core, bufsize):
    def reader(conn):
        lines = []
        for _ in range(6):
            lines.append((yield conn.readline(b"\r\n", bufsize)))
        return lines

    chunks = [b"GET / HTTP/1.0\r", b"\nHost: x\r\nX: a\nb\r", b"\n\r\n", b"tail"]
    lines, _ = _one_connection(reader, _sender(chunks))
    assert lines == [
        b"GET / HTTP/1.0\r\n",
        b"Host: x\r\n",
        b"X: a\nb\r\n",  # a lone "\n" is not the terminator
        b"\r\n",
        b"tail",
        b"",
    ]


def test_readline_keyword_arguments_and_many_lines(core):
    lines_sent = [b"line %d|" % i for i in range(200)]

    def reader(conn):
        got = []
        for _ in range(len(lines_sent) + 1):
            line = yield conn.readline(terminator=b"|", bufsize=7)
            if not line:
                break
            got.append(line)
        return got

    stream = b"".join(lines_sent)
    chunks = [stream[i:i + 999] for i in range(0, len(stream), 999)]
    lines, _ = _one_connection(reader, _sender(chunks))
    assert lines == lines_sent


# ---------------------------------------------------------------------------
# send / sendall
# ---------------------------------------------------------------------------

def test_send_returns_the_count_and_the_peer_gets_exactly_that(core):
    small = b"hello world"
    big = payload(8 << 20, seed=2)

    def client_side(conn):
        n1 = yield conn.send(small)
        n2 = yield conn.send(big)  # may be partial
        return n1, n2

    received, (n1, n2) = _one_connection(recv_all, client_side)
    assert isinstance(n1, int) and isinstance(n2, int)
    assert 1 <= n1 <= len(small)
    assert 1 <= n2 <= len(big)
    assert received == small[:n1] + big[:n2]


def test_sendall_8_mib_to_a_slow_reader(core):
    data = payload(8 << 20, seed=3)

    def slow_reader(conn):
        yield bluelet.sleep(0.1)  # let the sender fill every buffer
        chunks = []
        for i in range(len(data) + 1):
            chunk = yield conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if i % 16 == 0:
                yield bluelet.sleep(0.001)
        return b"".join(chunks)

    def writer(conn):
        return (yield conn.sendall(data))

    received, sendall_result = _one_connection(slow_reader, writer)
    assert sendall_result is None
    assert len(received) == len(data)
    assert received == data


def test_send_and_sendall_reject_str_at_the_call(core):
    def client_side(conn):
        with pytest.raises(TypeError):
            conn.send("text")
        with pytest.raises(TypeError):
            conn.sendall("text")
        # The connection is still usable afterwards.
        yield conn.sendall(b"ok")

    received, _ = _one_connection(lambda conn: recv_exactly(conn, 2), client_side)
    assert received == b"ok"


# ---------------------------------------------------------------------------
# Listener
# ---------------------------------------------------------------------------

def test_listener_port_zero_exposes_the_real_port(core):
    listener = bluelet.Listener(HOST, 0)
    try:
        assert listener.host == HOST
        assert isinstance(listener.port, int) and listener.port != 0
        assert listener.sock.getsockname() == (HOST, listener.port)
        assert listener.sock.gettimeout() == 0.0  # non-blocking
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    finally:
        listener.close()
    assert_refused(HOST, listener.port)


def test_listener_reuseaddr_allows_rebinding_after_connections(core):
    listener = bluelet.Listener(HOST, 0)
    port = listener.port
    out = []

    def root():
        conn, peer = yield open_pair(listener)
        # The server side closes first: its end goes to TIME_WAIT.
        peer.close()
        out.append((yield conn.recv(10)))
        conn.close()
        listener.close()

    bluelet.run(root())
    assert out == [b""]
    again = bluelet.Listener(HOST, port)  # SO_REUSEADDR: no EADDRINUSE
    try:
        assert again.port == port
    finally:
        again.close()


def _somaxconn_sysctl():
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def test_listener_backlog_takes_a_burst_before_any_accept(core):
    count = min(200, socket.SOMAXCONN)
    limit = _somaxconn_sysctl()
    if limit is not None and limit < count:
        pytest.skip("net.core.somaxconn is %d, below the %d the test needs" % (limit, count))
    listener = bluelet.Listener(HOST, 0)
    port = listener.port
    socks = []
    errors = []
    done = threading.Event()

    def connect_burst():
        # Plain blocking connects; with a small backlog the SYNs beyond it
        # are dropped and connect() times out.
        try:
            for i in range(count):
                sock = socket.create_connection((HOST, port), timeout=2)
                socks.append(sock)
                sock.sendall(b"%d\n" % i)
        except OSError as exc:
            errors.append(exc)
        finally:
            done.set()

    got = set()
    accepted = []

    def root():
        thread = threading.Thread(target=connect_burst, daemon=True)
        thread.start()
        # The bluelet server accepts nothing until the burst is over.
        finished = yield wait_for(done.is_set, tries=2000, pause=0.005)
        assert finished
        try:
            for _ in range(len(socks)):
                conn = yield listener.accept()
                accepted.append(conn)
                line = yield conn.readline()
                got.add(int(line))
        finally:
            for conn in accepted:
                conn.close()
            listener.close()

    try:
        bluelet.run(root())
    finally:
        for sock in socks:
            sock.close()
    assert errors == []
    assert len(socks) == count
    assert got == set(range(count))


@needs_ipv6
def test_ipv6_loopback_listener_connect_and_server(core):
    listener = bluelet.Listener("::1", 0)
    assert listener.port != 0
    assert listener.sock.family == socket.AF_INET6
    assert listener.sock.getsockname()[:2] == ("::1", listener.port)
    port = free_port("::1")
    out = {}

    def direct():
        try:
            conn, peer = yield open_pair(listener)
            try:
                assert peer.addr[0] == "::1"
                yield conn.sendall(b"over ipv6\n")
                out["direct"] = yield peer.readline()
            finally:
                conn.close()
                peer.close()
        finally:
            listener.close()

    def via_server():
        srv = yield start_server(port, echoer, host="::1")
        out["server"] = yield echo_round_trip(port, b"echo six", host="::1")
        yield bluelet.kill(srv)

    def root():
        yield direct()
        yield via_server()

    bluelet.run(root())
    assert out == {"direct": b"over ipv6\n", "server": b"echo six"}
    assert_refused("::1", port)


# ---------------------------------------------------------------------------
# More than 1,024 descriptors
# ---------------------------------------------------------------------------

def test_two_thousand_concurrent_connections(core):
    n = 2000
    need = 2 * n + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip("RLIMIT_NOFILE hard limit %d is below the %d descriptors needed" % (hard, need))
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        _many_connections(n)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _many_connections(n):
    listener = bluelet.Listener(HOST, 0)
    port = listener.port
    state = {"server_open": 0, "client_open": 0, "echoed": 0, "ok": 0, "max_fd": 0}

    def handler(conn):
        state["server_open"] += 1
        try:
            yield echoer(conn)
        finally:
            state["server_open"] -= 1
            conn.close()

    def acceptor():
        try:
            for _ in range(n):
                conn = yield listener.accept()
                state["max_fd"] = max(state["max_fd"], conn.sock.fileno())
                yield bluelet.spawn(handler(conn))
        finally:
            listener.close()

    def gate():
        # Finishes once every client has its echo: only then may any close.
        yield wait_for(lambda: state["echoed"] == n, tries=3000, pause=0.005)
        state["at_gate"] = (state["echoed"], state["client_open"], state["server_open"])

    def client(i, gate_coro):
        conn = yield bluelet.connect(HOST, port)
        state["client_open"] += 1
        state["max_fd"] = max(state["max_fd"], conn.sock.fileno())
        try:
            message = b"message number %d\n" % i
            yield conn.sendall(message)
            line = yield conn.readline()
            if line == message:
                state["ok"] += 1
            state["echoed"] += 1
            yield bluelet.join(gate_coro)
        finally:
            state["client_open"] -= 1
            conn.close()

    def root():
        yield bluelet.spawn(acceptor())
        g = gate()
        yield bluelet.spawn(g)
        yield spawn_and_join([client(i, g) for i in range(n)])

    bluelet.run(root())
    assert state["at_gate"] == (n, n, n)  # all open at the same time
    assert state["ok"] == n
    assert state["max_fd"] > 1024
    assert state["client_open"] == 0
    assert state["server_open"] == 0


# ---------------------------------------------------------------------------
# Connection reset, broken pipe, other socket errors
# ---------------------------------------------------------------------------

def _reset_while_waiting(make_wait, settle=None):
    """A plain client connects; the accepted end ``conn`` yields
    ``make_wait(conn)``; once it waits (and ``settle`` s more) the client
    aborts, so the kernel resets the connection. Returns the waiter's log:
    "waiting", then "returned" or the type of the OSError its yield raised,
    then "finally"."""
    log = []

    def handler_side(listener):
        conn = yield listener.accept()
        try:
            yield _log_wait(log, make_wait(conn), OSError)
        finally:
            conn.close()

    def root(listener, raw):
        h = handler_side(listener)
        yield bluelet.spawn(h)
        assert (yield wait_for(lambda: "waiting" in log))
        if settle:
            yield bluelet.sleep(settle)
        abort(raw)
        yield bluelet.join(h)
        listener.close()

    with _plain_client() as (listener, raw):
        bluelet.run(root(listener, raw))
    return log


def test_reset_during_recv_is_raised_at_the_yield(core):
    log = _reset_while_waiting(lambda conn: conn.recv(1024))
    assert log == ["waiting", ConnectionResetError, "finally"]


def test_reset_during_sendall_is_raised_at_the_yield(core):
    big = b"x" * (32 << 20)  # far more than the kernel buffers hold
    # The peer never read anything.
    log = _reset_while_waiting(lambda conn: conn.sendall(big), settle=0.02)
    assert log[0] == "waiting"
    assert log[1] in BROKEN
    assert log[2:] == ["finally"]


@pytest.mark.parametrize("where", ["recv", "sendall"])
def test_uncaught_reset_ends_only_that_coroutine(core, where, capsys, caplog):
    caplog.set_level(logging.DEBUG, logger="bluelet")
    log = []

    def handler_side(listener):
        conn = yield listener.accept()
        try:
            log.append("waiting")
            if where == "recv":
                yield conn.recv(1024)
            else:
                yield conn.sendall(b"y" * (32 << 20))
            log.append("no error")
        finally:
            log.append("finally")
            conn.close()

    def bystander():
        for i in range(5):
            yield bluelet.sleep(0.01)
            log.append("bystander %d" % i)

    def root(listener, raw):
        h, b = handler_side(listener), bystander()
        yield bluelet.spawn(h)
        yield bluelet.spawn(b)
        assert (yield wait_for(lambda: "waiting" in log))
        abort(raw)
        try:
            yield bluelet.join(h)  # a joiner is handed the error
        except BROKEN:
            log.append("joined")
        yield bluelet.join(b)
        listener.close()
        return "root finished"

    with _plain_client() as (listener, raw):
        assert bluelet.run(root(listener, raw)) == "root finished"
    assert "no error" not in log
    assert log.index("waiting") < log.index("finally") < log.index("joined")
    assert "bystander 4" in log
    assert "Traceback" not in capsys.readouterr().err
    loud = [r for r in caplog.records if r.name.startswith("bluelet") and r.levelno > logging.DEBUG]
    assert loud == []


def test_server_keeps_serving_after_a_handler_sees_a_reset(core):
    port = free_port()
    out = {}

    def rude_client():
        conn = yield bluelet.connect(HOST, port)
        yield conn.sendall(b"ping")
        out["rude"] = yield recv_exactly(conn, 4)  # the handler is back in recv
        reset_on_close(conn.sock)
        conn.close()

    def root():
        srv = yield start_server(port, echoer)
        yield rude_client()
        yield bluelet.sleep(0.05)  # the handler meets the reset
        out["polite"] = yield echo_round_trip(port, b"hello again")
        yield bluelet.kill(srv)
        return "ok"

    assert bluelet.run(root()) == "ok"
    assert out == {"rude": b"ping", "polite": b"hello again"}


def test_broken_pipe_when_writing_to_a_closed_peer(core):
    listener = bluelet.Listener(HOST, 0)
    raw = socket.create_connection((HOST, listener.port), timeout=5)
    raw.close()  # an orderly close; writes to it will soon fail
    log = []

    def root():
        conn = yield listener.accept()
        try:
            for i in range(400):
                ev = conn.send(b"z" * 1024)  # building the event never raises
                try:
                    yield ev
                except BROKEN as exc:
                    log.append(type(exc))
                    break
                log.append("sent")
                yield bluelet.sleep(0.005)
            else:
                log.append("never failed")
        finally:
            log.append("finally")
            conn.close()
            listener.close()

    bluelet.run(root())
    assert "never failed" not in log
    assert log[-2] in BROKEN
    assert log[-1] == "finally"
    assert log.count("sent") >= 1  # the first write still succeeds


def test_uncaught_broken_pipe_in_sendall_ends_only_that_coroutine(core):
    listener = bluelet.Listener(HOST, 0)
    raw = socket.create_connection((HOST, listener.port), timeout=5)
    raw.close()
    log = []

    def writer():
        conn = yield listener.accept()
        try:
            for _ in range(400):
                yield conn.sendall(b"w" * 4096)
                yield bluelet.sleep(0.005)
            log.append("never failed")
        finally:
            log.append("writer finally")
            conn.close()

    def other():
        for _ in range(3):
            yield bluelet.sleep(0.01)
        log.append("other done")

    def root():
        yield bluelet.spawn(writer())  # nobody joins it: its error stays its own
        yield spawn_and_join([other()])
        listener.close()
        return 42

    assert bluelet.run(root()) == 42
    assert "never failed" not in log
    assert "writer finally" in log and "other done" in log


def test_connect_refused_is_raised_at_the_yield(core):
    port = free_port()
    log = []

    def root():
        ev = bluelet.connect(HOST, port)  # the call itself never raises
        try:
            yield ev
            log.append("connected?")
        except ConnectionRefusedError:
            log.append("refused")
        # The program goes on and can still make good connections.
        listener = bluelet.Listener(HOST, 0)
        try:
            conn, peer = yield open_pair(listener)
            yield conn.sendall(b"fine")
            log.append((yield recv_exactly(peer, 4)))
            conn.close()
            peer.close()
        finally:
            listener.close()

    bluelet.run(root())
    assert log == ["refused", b"fine"]


def test_uncaught_connect_refused_ends_run_with_it(core):
    port = free_port()
    log = []

    def doomed():
        try:
            yield bluelet.connect(HOST, port)
        finally:
            log.append("doomed finally")

    def root():
        yield bluelet.spawn(sleeper(3, log, "sleeper closed"))
        yield bluelet.spawn(doomed())
        yield bluelet.sleep(3)

    with pytest.raises(ConnectionRefusedError):
        bluelet.run(root())
    assert sorted(log) == ["doomed finally", "sleeper closed"]


# ---------------------------------------------------------------------------
# SocketClosedError
# ---------------------------------------------------------------------------

def test_an_event_made_before_close_never_touches_the_socket_that_reuses_its_fd(core):
    def root():
        with bluelet.Listener(HOST, 0) as listener:
            old, old_peer = yield open_pair(listener)
            stale_recv, stale_send = old.recv(100), old.sendall(b"for the closed socket")
            fd = old.fileno()
            old.close()
            new, new_peer = yield open_pair(listener)
        with old_peer, new, new_peer:
            # The lowest free number goes to the next socket made.
            assert fd in (new.fileno(), new_peer.fileno())
            reuser, partner = (new, new_peer) if new.fileno() == fd else (new_peer, new)
            yield partner.sendall(b"for the new socket")
            with pytest.raises(OSError) as stale:
                yield stale_recv
            assert stale.value.errno == errno.EBADF
            assert (yield reuser.recv(100)) == b"for the new socket"
            with pytest.raises(OSError) as stale:
                yield stale_send
            assert stale.value.errno == errno.EBADF
            reuser.shutdown_write()
            assert (yield partner.recv(100)) == b""

    run_test(root(), timeout=20.0)


def test_operations_on_closed_connection_and_listener_raise_at_the_call(core):
    listener = bluelet.Listener(HOST, 0)
    out = []

    def root():
        conn, peer = yield open_pair(listener)
        conn.close()
        for make in (
            lambda: conn.recv(1),
            lambda: conn.send(b"x"),
            lambda: conn.sendall(b"x"),
            lambda: conn.readline(),
            lambda: conn.readline(b"\r\n", 16),
        ):
            with pytest.raises(bluelet.SocketClosedError):
                make()
        # The other end just sees EOF.
        out.append((yield peer.recv(10)))
        peer.close()
        with pytest.raises(bluelet.SocketClosedError):
            peer.recv(1)
        listener.close()
        with pytest.raises(bluelet.SocketClosedError):
            listener.accept()

    bluelet.run(root())
    assert out == [b""]


def test_closed_connection_with_buffered_data_still_raises(core):
    listener = bluelet.Listener(HOST, 0)
    out = []

    def root():
        conn, peer = yield open_pair(listener)
        try:
            yield conn.sendall(b"one\ntwo\nthree\n")
            yield bluelet.sleep(0.02)
            out.append((yield peer.readline()))  # "two\nthree\n" stays buffered
        finally:
            conn.close()
            peer.close()
            listener.close()
        with pytest.raises(bluelet.SocketClosedError):
            peer.recv(3)
        with pytest.raises(bluelet.SocketClosedError):
            peer.readline()

    bluelet.run(root())
    assert out == [b"one\n"]


def _closed_while_waiting(prepare):
    """``prepare()`` is a coroutine returning ``(make_wait, close)``. A
    coroutine waits in ``make_wait()``; another coroutine then calls
    ``close()``; the waiter must get SocketClosedError at its yield. All in
    one ``run``; a watchdog kills a waiter that is never woken."""
    log = []

    def root():
        make_wait, close = yield prepare()
        w = _log_wait(log, make_wait(), bluelet.SocketClosedError)
        yield bluelet.spawn(w)
        dog = watchdog(3.0, [w], log)
        yield bluelet.spawn(dog)
        assert (yield wait_for(lambda: "waiting" in log))
        yield bluelet.sleep(0.01)
        close()
        yield bluelet.join(w)
        yield bluelet.kill(dog)

    bluelet.run(root())
    return log


@pytest.mark.parametrize("wait", ["recv", "readline", "sendall"])
def test_close_while_another_coroutine_waits_on_the_connection(core, wait):
    with _plain_client() as (listener, raw):
        if wait == "readline":
            raw.sendall(b"partial line without terminator")  # no terminator: it waits

        def prepare():
            conn = yield listener.accept()
            if wait == "recv":
                return (lambda: conn.recv(100)), conn.close
            if wait == "readline":
                return conn.readline, conn.close
            return (lambda: conn.sendall(b"s" * (32 << 20))), conn.close

        log = _closed_while_waiting(prepare)
    assert log == ["waiting", bluelet.SocketClosedError, "finally"]


def test_close_while_another_coroutine_waits_in_accept(core):
    listener = bluelet.Listener(HOST, 0)
    port = listener.port

    def prepare():
        yield bluelet.null()
        return listener.accept, listener.close

    log = _closed_while_waiting(prepare)
    assert log == ["waiting", bluelet.SocketClosedError, "finally"]
    assert_refused(HOST, port)


# ---------------------------------------------------------------------------
# Descriptors
# ---------------------------------------------------------------------------

def _open_and_close_connections(n, refused=10):
    port = free_port()
    dead_port = free_port()
    stats = {"ok": 0, "refused": 0}

    def client(i):
        conn = yield bluelet.connect(HOST, port)
        try:
            msg = b"#%d\n" % i
            yield conn.sendall(msg)
            if (yield conn.readline()) == msg:
                stats["ok"] += 1
        finally:
            conn.close()

    def root():
        srv = yield start_server(port, echoer)
        batch = 50
        for start in range(0, n, batch):
            yield spawn_and_join([client(i) for i in range(start, min(n, start + batch))])
        for _ in range(refused):
            try:
                yield bluelet.connect(HOST, dead_port)
            except ConnectionRefusedError:
                stats["refused"] += 1
        yield bluelet.kill(srv)

    bluelet.run(root())
    return stats


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_no_descriptor_leak(core):
    _open_and_close_connections(2, refused=1)  # warm up lazily created state
    gc.collect()
    before = fd_count()
    with warnings.catch_warnings(record=True) as caught:
        # A socket left for the garbage collector to close is a leak too.
        warnings.simplefilter("always", ResourceWarning)
        stats = _open_and_close_connections(200)
        gc.collect()
    after = fd_count()
    assert stats == {"ok": 200, "refused": 10}
    assert after == before
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []
