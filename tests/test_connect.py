"""connect(), connect_unix() and Listener.unix, run once per core.

What a program sees when it dials out: the Connection it gets and its
addresses; the errors at the ``yield`` (refused, unknown name, timeout);
that a name is resolved without stalling other coroutines; that every
address of a name is tried; that nothing is left open however the attempt
ends (every test runs under ``no_fd_leak``); and that bad arguments raise
at the call. Host names are answered by a fake ``socket.getaddrinfo``
(numeric hosts still go to the real one), so no test depends on DNS.

A TCP connect that cannot complete, on loopback: a listener with a backlog
of 0 whose queue is filled and never accepted; the kernel then drops the
next SYN, so that handshake hangs until our timeout.
"""

import contextlib
import errno
import ipaddress
import os
import random
import select
import socket
import sys
import threading

import pytest

import bluelet
from _helpers import HOST, WAIT, free_port, needs_ipv6, open_pair, recv_exactly, wait_for
from bluelet.testing import run_test

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(60)]

DEADLINE = 30.0  # seconds of real time any one test may take; none comes close

_REAL_GETADDRINFO = socket.getaddrinfo


# ---------------------------------------------------------------------------
# A resolver under the test's control
# ---------------------------------------------------------------------------

def _numeric(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class FakeResolver:
    """Stands in for ``socket.getaddrinfo``: numeric hosts (and lookups
    that allow only those) go to the real one; a host name gets
    ``answers[name]`` (a list of addrinfo tuples, or an exception to
    raise), ``socket.gaierror`` EAI_NONAME if it has none.

    While ``gate`` is set to a ``threading.Event``, a name lookup first
    waits for it (at most WAIT seconds). ``threads`` records the thread of
    each name lookup.
    """

    def __init__(self):
        self.answers = {}
        self.gate = None
        self.threads = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        if flags & socket.AI_NUMERICHOST or host is None or _numeric(host):
            return _REAL_GETADDRINFO(host, port, family, type, proto, flags)
        self.threads.append(threading.current_thread())
        if self.gate is not None and not self.gate.wait(WAIT):
            raise AssertionError("the test never opened the resolver's gate")
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def resolver(monkeypatch):
    fake = FakeResolver()
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    try:
        yield fake
    finally:
        if fake.gate is not None:
            fake.gate.set()  # a lookup left waiting ends now


def tcp(host, port):
    """One addrinfo entry for a numeric ``host``, as getaddrinfo gives it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = (host, port, 0, 0) if family == socket.AF_INET6 else (host, port)
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)


# ---------------------------------------------------------------------------
# Listeners that never answer
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def full_backlog():
    """The port of a TCP listener (backlog 0, never accepting) whose queue
    is full, so that a connect to it cannot complete.

    Linux queues one connection for a backlog of 0. Plain clients dial all
    at once; once the listener is readable one of them is in the queue, so
    it is full, and the others' SYNs, like any that come later, are dropped.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers = []
    try:
        listener.bind((HOST, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(sock)
            sock.setblocking(False)
            sock.connect_ex((HOST, port))
        readable, _, _ = select.select([listener], [], [], WAIT)
        if not readable:
            pytest.fail("no client got into the listener's queue")
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


@contextlib.contextmanager
def full_unix_backlog(path):
    """A Unix listener at ``path`` (backlog 0, never accepting) whose queue
    is full: Linux answers a non-blocking connect with EAGAIN."""
    listener = bluelet.Listener.unix(path, backlog=0)
    fillers = []
    try:
        for _ in range(8):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            fillers.append(sock)
            sock.setblocking(False)
            if sock.connect_ex(path) == errno.EAGAIN:
                break
        else:
            pytest.fail("the Unix listener's queue never filled up")
        yield
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def open_pair_by_name(listener, name):
    """Coroutine: connect to ``listener`` by host ``name``, accept; both ends."""
    conn = yield bluelet.connect(name, listener.port)
    peer = yield listener.accept()
    return conn, peer


# ---------------------------------------------------------------------------
# connect(): success, refusal, names
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", [HOST, pytest.param("::1", marks=needs_ipv6)])
def test_connect_gives_a_connection_with_both_addresses(core, host):
    listener = bluelet.Listener(host, 0)

    def body():
        with listener:
            conn = yield bluelet.connect(host, listener.port)
            peer = yield listener.accept()
        with conn, peer:
            assert isinstance(conn, bluelet.Connection)
            assert conn.addr == (host, listener.port)
            assert conn.peername[:2] == (host, listener.port)
            assert conn.peername == peer.sockname
            assert conn.sockname == peer.peername
            yield conn.sendall(b"hi")
            return (yield recv_exactly(peer, 2))

    assert run_test(body(), timeout=DEADLINE) == b"hi"


def test_connect_with_a_numeric_service_string(core):
    # As in socket (and bluelet 0.2.0, which used create_connection), the
    # port may be given as a string.
    listener = bluelet.Listener(HOST, 0)

    def body():
        with listener:
            conn = yield bluelet.connect(HOST, str(listener.port))
            peer = yield listener.accept()
        conn.close()
        peer.close()
        return conn.addr

    assert run_test(body(), timeout=DEADLINE) == (HOST, str(listener.port))


def test_connect_to_localhost_with_the_real_resolver(core):
    listener = bluelet.Listener(HOST, 0)

    def body():
        with listener:
            conn, peer = yield open_pair_by_name(listener, "localhost")
        with conn, peer:
            yield peer.sendall(b"ok")
            return (yield recv_exactly(conn, 2)), conn.peername[:2]

    assert run_test(body(), timeout=DEADLINE) == (b"ok", (HOST, listener.port))


def test_a_busy_to_thread_pool_does_not_hold_up_name_lookups(core):
    # Every to_thread thread busy, and more calls waiting behind them: a
    # connect by name still resolves at once, on the lookup threads.
    listener = bluelet.Listener(HOST, 0)
    release = threading.Event()
    previous = bluelet.set_thread_limit(1)

    def body():
        blocked = [bluelet.to_thread(release.wait, 30) for _ in range(3)]
        for call in blocked:
            yield bluelet.spawn(call)
        try:
            with listener:
                conn, peer = yield bluelet.timeout(5, open_pair_by_name(listener, "localhost"))
            with conn, peer:
                return conn.peername[1]
        finally:
            release.set()
            for call in blocked:
                yield bluelet.join(call)

    try:
        assert run_test(body(), timeout=DEADLINE) == listener.port
    finally:
        bluelet.set_thread_limit(previous)


def test_a_slow_name_lookup_does_not_stop_the_loop(core, resolver):
    # The lookup cannot finish until another coroutine has run three times:
    # done on the loop's thread, it would wait out the gate and fail.
    resolver.gate = threading.Event()
    listener = bluelet.Listener(HOST, 0)
    resolver.answers["slow.test"] = [tcp(HOST, listener.port)]
    log = []

    def ticker():
        for i in range(3):
            yield bluelet.sleep(0.01)
            log.append("tick %d" % i)
        resolver.gate.set()

    def dial():
        conn = yield bluelet.connect("slow.test", listener.port)
        log.append("connected")
        conn.close()

    def body():
        with listener:
            yield bluelet.spawn(ticker())
            yield dial()
            (yield listener.accept()).close()

    run_test(body(), timeout=DEADLINE)
    assert log == ["tick 0", "tick 1", "tick 2", "connected"]
    assert len(resolver.threads) == 1
    assert resolver.threads[0] is not threading.main_thread()


def test_an_unknown_name_raises_gaierror_at_the_yield(core, resolver):
    def body():
        event = bluelet.connect("nowhere.test", 80)  # the call does not look it up
        assert resolver.threads == []
        with pytest.raises(socket.gaierror) as caught:
            yield event
        return caught.value.errno

    assert run_test(body(), timeout=DEADLINE) == socket.EAI_NONAME


@pytest.mark.parametrize("first", [HOST, pytest.param("::1", marks=needs_ipv6)])
def test_every_address_is_tried_until_one_accepts(core, resolver, first):
    closed = free_port(first)  # nobody listens there: refused
    listener = bluelet.Listener(HOST, 0)
    resolver.answers["two.test"] = [tcp(first, closed), tcp(HOST, listener.port)]

    def body():
        with listener:
            conn = yield bluelet.connect("two.test", listener.port)
            peer = yield listener.accept()
        with conn, peer:
            return conn.peername[:2], conn.addr

    assert run_test(body(), timeout=DEADLINE) == ((HOST, listener.port),
                                                  ("two.test", listener.port))


def test_an_address_this_host_cannot_make_a_socket_for_is_skipped(core, resolver):
    # Say IPv6 is switched off: socket() itself fails for that entry.
    listener = bluelet.Listener(HOST, 0)
    unmakeable = (socket.AF_INET, socket.SOCK_STREAM, 999, "", (HOST, listener.port))
    resolver.answers["odd.test"] = [unmakeable, tcp(HOST, listener.port)]

    def body():
        with listener:
            conn = yield bluelet.connect("odd.test", listener.port)
            peer = yield listener.accept()
        conn.close()
        peer.close()
        return "connected"

    assert run_test(body(), timeout=DEADLINE) == "connected"


def test_every_address_refused_raises_connection_refused(core, resolver):
    ports = [free_port(), free_port()]
    resolver.answers["none.test"] = [tcp(HOST, port) for port in ports]

    def body():
        with pytest.raises(ConnectionRefusedError):
            yield bluelet.connect("none.test", 80)

    run_test(body(), timeout=DEADLINE)


def test_different_failures_are_all_reported(core, resolver):
    port = free_port()
    unmakeable = (socket.AF_INET, socket.SOCK_STREAM, 999, "", (HOST, port))
    resolver.answers["mixed.test"] = [unmakeable, tcp(HOST, port)]

    def body():
        with pytest.raises(OSError) as caught:
            yield bluelet.connect("mixed.test", port)
        return caught.value

    error = run_test(body(), timeout=DEADLINE)
    assert not isinstance(error, ConnectionRefusedError)  # not only that
    assert "mixed.test" in str(error) and os.strerror(errno.ECONNREFUSED) in str(error)


def test_an_address_that_never_answers_costs_only_the_head_start(core, resolver):
    # RFC 8305: the next address starts beside the silent one after the
    # delay, long before the caller's timeout; the silent one is closed.
    listener = bluelet.Listener(HOST, 0)

    def body(silent):
        resolver.answers["blackhole.test"] = [tcp(HOST, silent), tcp(HOST, listener.port)]
        with listener:
            conn = yield bluelet.connect("blackhole.test", 0, timeout=WAIT,
                                         happy_eyeballs_delay=0.05)
            peer = yield listener.accept()
        with conn, peer:
            return conn.peername[:2]

    with full_backlog() as silent:
        assert run_test(body(silent), timeout=DEADLINE) == (HOST, listener.port)


def test_without_a_head_start_a_silent_first_address_uses_up_the_timeout(core, resolver):
    listener = bluelet.Listener(HOST, 0)

    def body(silent):
        resolver.answers["blackhole.test"] = [tcp(HOST, silent), tcp(HOST, listener.port)]
        with listener, pytest.raises(bluelet.Timeout):
            yield bluelet.connect("blackhole.test", 0, timeout=0.3, happy_eyeballs_delay=None)
        return "timed out on the first address"

    with full_backlog() as silent:
        assert run_test(body(silent), timeout=DEADLINE) == "timed out on the first address"


def test_address_families_take_turns_in_the_resolvers_order():
    from bluelet._connect import interleave
    v6a, v6b, v6c = tcp("::1", 1), tcp("::1", 2), tcp("::1", 3)
    v4a, v4b = tcp(HOST, 4), tcp(HOST, 5)
    assert interleave([v6a, v6b, v6c, v4a, v4b]) == [v6a, v4a, v6b, v4b, v6c]
    assert interleave([v4a, v6a, v6b]) == [v4a, v6a, v6b]
    assert interleave([]) == []


# ---------------------------------------------------------------------------
# connect(): timeouts, kills, bad arguments
# ---------------------------------------------------------------------------

def test_connect_timeout_when_the_handshake_cannot_complete(core):
    log = []

    def body(port):
        event = bluelet.connect(HOST, port, timeout=0.2)
        try:
            yield event
        except bluelet.Timeout as exc:
            log.append(isinstance(exc, TimeoutError))
        # The program goes on and can still connect elsewhere.
        listener = bluelet.Listener(HOST, 0)
        with listener:
            conn, peer = yield open_pair(listener)
        conn.close()
        peer.close()
        log.append("then connected")

    with full_backlog() as port:
        run_test(body(port), timeout=DEADLINE)
    assert log == [True, "then connected"]


def test_connect_timeout_after_an_earlier_address_failed_is_still_a_timeout(core, resolver):
    # The first address refuses, the second never answers: what runs out is
    # the caller's timeout, and that is what must reach it.
    refused = free_port()

    def body():
        with pytest.raises(bluelet.Timeout):
            yield bluelet.connect("half.test", 80, timeout=0.3)

    with full_backlog() as port:
        resolver.answers["half.test"] = [tcp(HOST, refused), tcp(HOST, port)]
        run_test(body(), timeout=DEADLINE)


def test_connect_timeout_while_the_name_is_being_resolved(core, resolver):
    # The gate opens only after the timeout: had the lookup run on the
    # loop's thread, it would have waited out the gate and failed instead.
    resolver.gate = threading.Event()
    resolver.answers["stuck.test"] = [tcp(HOST, 9)]

    def body():
        with pytest.raises(bluelet.Timeout):
            yield bluelet.connect("stuck.test", 80, timeout=0.2)
        resolver.gate.set()
        return len(resolver.threads)

    assert run_test(body(), timeout=DEADLINE) == 1


@pytest.mark.parametrize("stage", ["resolving", "handshake"])
def test_killing_a_coroutine_inside_connect_leaves_nothing_open(core, resolver, stage):
    log = []

    def dialer(host, port):
        try:
            log.append("dialing")
            yield bluelet.connect(host, port)
            log.append("connected?")
        finally:
            log.append("finally")

    def body(host, port):
        d = dialer(host, port)
        yield bluelet.spawn(d)
        if stage == "resolving":
            assert (yield wait_for(lambda: resolver.threads))
        else:
            assert (yield wait_for(lambda: "dialing" in log))
            yield bluelet.sleep(0.05)  # the SYN is out; no answer comes
        yield bluelet.kill(d)

    if stage == "resolving":
        resolver.gate = threading.Event()  # opened when the test ends
        resolver.answers["slow.test"] = [tcp(HOST, 9)]
        run_test(body("slow.test", 9), timeout=DEADLINE)
    else:
        with full_backlog() as port:
            run_test(body(HOST, port), timeout=DEADLINE)
    assert log == ["dialing", "finally"]


@pytest.mark.parametrize("call, error", [
    pytest.param(lambda: bluelet.connect(None, 80), TypeError, id="host None"),
    pytest.param(lambda: bluelet.connect(b"127.0.0.1", 80), TypeError, id="host bytes"),
    # getaddrinfo would quietly take 70000 as port 4464.
    pytest.param(lambda: bluelet.connect(HOST, 70000), OverflowError, id="port 70000"),
    pytest.param(lambda: bluelet.connect(HOST, -1), OverflowError, id="port -1"),
    pytest.param(lambda: bluelet.connect(HOST, 80.0), TypeError, id="port float"),
    pytest.param(lambda: bluelet.connect(HOST, True), TypeError, id="port bool"),
    pytest.param(lambda: bluelet.connect(HOST, None), TypeError, id="port None"),
    pytest.param(lambda: bluelet.connect(HOST, 80, timeout="1"), TypeError, id="timeout str"),
    pytest.param(lambda: bluelet.connect(HOST, 80, timeout=float("nan")), ValueError,
                 id="timeout NaN"),
    pytest.param(lambda: bluelet.connect(HOST, 80, server_hostname="x"), ValueError,
                 id="server_hostname without ssl"),
    pytest.param(lambda: bluelet.connect(HOST, 80, happy_eyeballs_delay=-1), ValueError,
                 id="happy_eyeballs_delay negative"),
    pytest.param(lambda: bluelet.connect(HOST, 80, happy_eyeballs_delay="0.1"), ValueError,
                 id="happy_eyeballs_delay str"),
    pytest.param(lambda: bluelet.connect_unix(""), ValueError, id="unix empty path"),
    pytest.param(lambda: bluelet.connect_unix(None), TypeError, id="unix path None"),
    pytest.param(lambda: bluelet.connect_unix(3), TypeError, id="unix path int"),
    pytest.param(lambda: bluelet.connect_unix("/nonexistent", timeout="1"), TypeError,
                 id="unix timeout str"),
])
def test_bad_arguments_raise_at_the_call(core, call, error):
    with pytest.raises(error):
        call()


# ---------------------------------------------------------------------------
# Unix sockets
# ---------------------------------------------------------------------------

def _unix_echo(listener, path, message):
    """Coroutine: connect to ``path``, accept on ``listener``, echo one
    message across; returns what came back and both ends' addresses."""
    conn = yield bluelet.connect_unix(path)
    peer = yield listener.accept()
    with conn, peer:
        yield conn.sendall(message)
        yield peer.sendall((yield recv_exactly(peer, len(message))))
        echoed = yield recv_exactly(conn, len(message))
        return echoed, conn.addr, conn.peername, listener.sockname


def test_unix_echo_and_the_file_is_removed_on_close(core, tmp_path):
    path = str(tmp_path / "echo.sock")

    def body():
        with bluelet.Listener.unix(path) as listener:
            assert (listener.path, listener.port) == (path, 0)
            assert os.path.exists(path)
            return (yield _unix_echo(listener, path, b"over unix"))

    assert run_test(body(), timeout=DEADLINE) == (b"over unix", path, path, path)
    assert not os.path.exists(path)


def test_unix_listener_replaces_a_stale_socket_file(core, tmp_path):
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(path)  # its process "died": the file stays, nobody listens
    assert os.path.exists(path)

    def body():
        with pytest.raises(ConnectionRefusedError):
            yield bluelet.connect_unix(path)  # nobody behind the stale file
        with bluelet.Listener.unix(path) as listener:
            return (yield _unix_echo(listener, path, b"fresh"))[0]

    assert run_test(body(), timeout=DEADLINE) == b"fresh"
    assert not os.path.exists(path)


def test_unix_listener_will_not_replace_another_kind_of_file(core, tmp_path):
    path = tmp_path / "precious.txt"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        bluelet.Listener.unix(str(path))
    assert path.read_bytes() == b"keep me"


def test_connect_unix_to_a_missing_path_raises_at_the_yield(core, tmp_path):
    def body():
        event = bluelet.connect_unix(str(tmp_path / "missing.sock"))
        with pytest.raises(FileNotFoundError):
            yield event

    run_test(body(), timeout=DEADLINE)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the abstract socket namespace is Linux's")
def test_unix_abstract_namespace(core, tmp_path):
    name = "\0bluelet-test-%d-%d" % (os.getpid(), random.randrange(1 << 30))

    def body():
        with bluelet.Listener.unix(name) as listener:
            return (yield _unix_echo(listener, name, b"no file"))

    echoed, addr, peername, sockname = run_test(body(), timeout=DEADLINE)
    assert (echoed, addr) == (b"no file", name)
    assert peername == sockname == name.encode()  # how Linux reports it


def test_connect_unix_timeout_on_a_full_backlog(core, tmp_path):
    path = str(tmp_path / "busy.sock")

    def body():
        with pytest.raises(bluelet.Timeout):
            yield bluelet.connect_unix(path, timeout=0.2)

    with full_unix_backlog(path):
        run_test(body(), timeout=DEADLINE)
