"""serve() and server(): servers that survive their clients, stop gracefully
and run in several processes; on every core.

In-process tests run the server and its clients in one loop over loopback
port 0, under ``run_test``'s deadline or with a watchdog. What needs a
process of its own -- a low descriptor limit, memory measured as RSS,
pre-forked workers, signals sent from outside -- runs a small script in a
subprocess (``Running``: its own session, output read with time bounds).
A stop in-process is a real SIGINT sent by a coroutine to its own process
under ``run(..., handle_signals=True)``, which raises KeyboardInterrupt in
the root: the server.
"""

import errno
import logging
import os
import re
import signal
import socket
import ssl
import sys
import textwrap
import time

import pytest
import trustme

import bluelet
from _helpers import (
    HOST,
    WAIT,
    Running,
    abort,
    alive_group,
    assert_refused,
    core_env,
    echoer,
    fail_after,
    free_port,
    recv_all,
    reset_on_close,
    sigint_soon,
    start_server,
    wait_for,
    watchdog,
)
from bluelet.testing import run_test

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(60)]

DEADLINE = 30.0  # seconds of real time an in-process test may take; none comes close

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="pre-forking is POSIX only")
needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="measures memory through Linux's /proc")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def ask(port, message, ssl_context=None):
    """Coroutine, a client: connect, send ``message``, read one line back
    (b"" if the server closed first), close."""
    conn = yield bluelet.connect(HOST, port, ssl=ssl_context,
                                 server_hostname="localhost" if ssl_context else None)
    try:
        yield conn.sendall(message)
        return (yield conn.readline(timeout=WAIT))
    finally:
        conn.close()


def line_echo(conn):
    """Handler: send back one line."""
    line = yield conn.readline()
    yield conn.sendall(line)


def server_records(caplog, level):
    return [r for r in caplog.records if r.name == "bluelet.server" and r.levelno == level]


def stop_by_sigint():
    """Send this process SIGINT: under handle_signals, KeyboardInterrupt in the root."""
    os.kill(os.getpid(), signal.SIGINT)


def run_stoppable(root):
    """``run(root, handle_signals=True)``; a KeyboardInterrupt that escapes
    it fails the test instead of aborting the whole session."""
    try:
        return bluelet.run(root, handle_signals=True)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped run(): the server did not stop on it")


def closed(listener):
    return listener.sock.fileno() == -1


def blocking_ask(port, message, tries=1):
    """A plain client: one line back for ``message``; retried on a connection
    reset or refused up to ``tries`` times (a worker dying mid-way)."""
    for attempt in range(tries):
        try:
            with socket.create_connection((HOST, port), timeout=WAIT) as sock:
                sock.sendall(message)
                reply = sock.makefile("rb").readline()
            if reply or attempt == tries - 1:
                return reply
        except ConnectionError:
            if attempt == tries - 1:
                raise
        time.sleep(0.05)
    raise AssertionError("unreachable")


@pytest.fixture
def script(tmp_path):
    """script(core, source, *args): run ``source`` (dedented) as a Python
    program on ``core``; every one started is killed at the end."""
    started = []

    def start(core, source, *args):
        path = tmp_path / ("script%d.py" % len(started))
        path.write_text(textwrap.dedent(source))
        command = Running([sys.executable, str(path), *map(str, args)], core_env(core), tmp_path)
        started.append(command)
        return command

    yield start
    for command in started:
        command.close()


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------

def _handler(conn):
    yield conn.recv(1)


async def _async_generator_handler(conn):
    yield conn


@pytest.mark.parametrize("call, error, message", [
    (lambda l: bluelet.serve(l, _handler, handler_errors="loud"), ValueError, "'log' or 'raise'"),
    (lambda l: bluelet.serve(l, _handler, grace=-1), ValueError, "grace"),
    (lambda l: bluelet.serve(l, _handler, handshake_timeout="5"), ValueError, "handshake"),
    (lambda l: bluelet.serve(l, None), TypeError, "callable"),
    (lambda l: bluelet.serve(("127.0.0.1", 0), _handler), TypeError, "Listener"),
    (lambda l: bluelet.server(HOST, 0, _handler, workers=0), ValueError, "workers"),
    (lambda l: bluelet.server(HOST, 0, _handler, workers=2.0), ValueError, "workers"),
    (lambda l: bluelet.server(HOST, 0, _handler, handler_errors=None), ValueError, "'log'"),
    (lambda l: bluelet.serve(l, _async_generator_handler), TypeError, "async generator"),
    # Refused at the call even with workers, which would each die of it.
    (lambda l: bluelet.server(HOST, 0, _handler, workers=2, backlog="8"), TypeError, "backlog"),
    (lambda l: bluelet.server(HOST, 0, _handler, workers=2,
                              ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)), ValueError, "server"),
], ids=["handler_errors", "grace", "handshake_timeout", "handler", "listener", "workers=0",
        "workers=2.0", "server-handler_errors", "async-generator-handler", "workers-backlog",
        "workers-client-context"])
def test_bad_arguments_raise_at_the_call(core, call, error, message):
    with bluelet.Listener(HOST, 0) as listener:
        with pytest.raises(error, match=message):
            call(listener)


@needs_fork
def test_workers_need_to_be_the_root(core):
    def root():
        yield bluelet.spawn(_idle())  # another coroutine: the loop is not the server's
        yield bluelet.server(HOST, 0, _handler, workers=2)

    with pytest.raises(RuntimeError, match="must be the program's root"):
        bluelet.run(root())


def _idle():
    yield bluelet.sleep(0.01)


# ---------------------------------------------------------------------------
# 0.2.0's server()
# ---------------------------------------------------------------------------

def test_server_closes_the_connection_when_the_handler_ends(core):
    port = free_port()
    out = {}
    log = []

    def greeter(conn):
        yield conn.sendall(b"hi there")
        # returns without closing: server() must close it

    def client():
        conn = yield bluelet.connect(HOST, port)
        try:
            out["data"] = yield recv_all(conn, limit=1000)
        finally:
            conn.close()

    def root():
        srv = yield start_server(port, greeter)
        c = client()
        yield bluelet.spawn(c)
        dog = watchdog(3.0, [c], log)  # a missing EOF must not hang the test
        yield bluelet.spawn(dog)
        yield bluelet.join(c)
        yield bluelet.kill(dog)
        yield bluelet.kill(srv)

    bluelet.run(root())
    assert log == []
    assert out["data"] == b"hi there"  # then EOF


def _serve_until_sigint(port, handler, client, **options):
    """run() ``bluelet.server`` on ``port`` while a thread does ``client()``
    (plain blocking socket work) and then sends SIGINT, which must stop the
    server quietly. Returns run()'s value and the thread's outcome dict
    ("value" or "error")."""
    with sigint_soon(before=client) as outcome:
        try:
            value = bluelet.run(bluelet.server(HOST, port, handler, **options))
        except KeyboardInterrupt:  # would otherwise abort the whole session
            pytest.fail("KeyboardInterrupt escaped run() instead of stopping server()")
    return value, outcome


def _connect_retrying(port, tries=250):
    for _ in range(tries):
        try:
            return socket.create_connection((HOST, port), timeout=5)
        except ConnectionRefusedError:
            time.sleep(0.02)
    return socket.create_connection((HOST, port), timeout=5)


def test_run_server_returns_none_on_ctrl_c(core):
    port = free_port()

    def echo_once():
        with _connect_retrying(port) as sock:
            sock.sendall(b"are you there?")
            got = b""
            for _ in range(100):
                if len(got) >= 14:
                    break
                data = sock.recv(100)
                if not data:
                    break
                got += data
            return got

    value, result = _serve_until_sigint(port, echoer, echo_once)
    assert value is None  # run() returned normally
    assert result == {"value": b"are you there?"}
    assert_refused(HOST, port)  # the listener was closed


BUSY_HANDLER = """
    import signal, sys, time
    import bluelet

    def handler(conn):
        yield conn.readline()
        print("busy", flush=True)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # Python code, no yield: Ctrl-C lands here
            pass
        yield conn.sendall(b"done\\n")

    listener = bluelet.Listener("127.0.0.1", 0)
    print("port", listener.port, flush=True)
    result = bluelet.run(bluelet.serve(listener, handler, grace=5))  # no handle_signals
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    print("stopped", result, flush=True)
"""


def test_ctrl_c_inside_a_busy_handler_stops_a_plain_run_gracefully(core, script):
    server = script(core, BUSY_HANDLER)
    port = int(server.expect(r"^port (\d+)$").group(1))
    with socket.create_connection((HOST, port), timeout=WAIT) as sock:
        sock.sendall(b"work\n")
        server.expect("^busy$")
        os.kill(server.proc.pid, signal.SIGINT)
        assert sock.makefile("rb").readline() == b"done\n"  # the request was finished
    server.expect("^stopped None$")
    assert server.wait() == 0


def test_ctrl_c_cancels_handlers_still_running_after_the_grace(core):
    port = free_port()
    finals = []

    def idle_handler(conn):
        try:
            yield conn.recv(100)  # waits: the client never sends
        finally:
            finals.append("handler finally")

    holder = {}

    def connect_and_wait():
        sock = _connect_retrying(port)
        holder["sock"] = sock
        time.sleep(0.1)  # the server accepts and the handler waits in recv
        return True

    value, result = _serve_until_sigint(port, idle_handler, connect_and_wait, grace=0.1)
    sock = holder["sock"]
    try:
        sock.settimeout(5)
        assert sock.recv(10) == b""  # server() closed the handler's connection
    finally:
        sock.close()
    assert value is None
    assert result == {"value": True}
    assert finals == ["handler finally"]
    assert_refused(HOST, port)


# ---------------------------------------------------------------------------
# Handler errors
# ---------------------------------------------------------------------------

def test_a_failing_handler_is_logged_and_the_others_are_served(core, caplog):
    caplog.set_level(logging.DEBUG, logger="bluelet.server")

    def handler(conn):
        line = yield conn.readline()
        if line == b"boom\n":
            raise ValueError("boom")
        if line == b"reset\n":
            raise ConnectionResetError("the peer went away")
        yield conn.sendall(line)

    listener = bluelet.Listener(HOST, 0)

    def root():
        srv = bluelet.serve(listener, handler)
        yield bluelet.spawn(srv)
        replies = []
        for message in (b"boom\n", b"hello\n", b"reset\n", b"again\n"):
            replies.append((yield ask(listener.port, message)))
        yield bluelet.kill(srv)
        return replies

    assert run_test(root(), DEADLINE) == [b"", b"hello\n", b"", b"again\n"]
    [error] = server_records(caplog, logging.ERROR)
    assert "handler" in error.getMessage() and error.exc_info[0] is ValueError
    debug = [r.getMessage() for r in server_records(caplog, logging.DEBUG)]
    assert any("ConnectionResetError" in text for text in debug)
    assert closed(listener)


def test_a_handler_that_is_not_a_coroutine_is_named_in_the_error(core, caplog):
    caplog.set_level(logging.ERROR, logger="bluelet.server")

    def plain_handler(conn):
        conn.sock.sendall(b"no yield here\n")   # a plain function: returns None

    listener = bluelet.Listener(HOST, 0)

    def root():
        srv = bluelet.serve(listener, plain_handler)
        yield bluelet.spawn(srv)
        reply = yield ask(listener.port, b"x\n")
        yield bluelet.kill(srv)
        return reply

    assert run_test(root(), DEADLINE) == b"no yield here\n"
    [error] = server_records(caplog, logging.ERROR)
    assert error.exc_info[0] is TypeError
    message = str(error.exc_info[1])
    assert "plain_handler returned None, not a coroutine" in message
    assert "generator function" in message
    assert closed(listener)


def test_handler_errors_raise_ends_run(core):
    listener = bluelet.Listener(HOST, 0)
    port = listener.port

    def handler(conn):
        yield conn.recv(10)
        raise ValueError("strict")

    def root():
        yield bluelet.spawn(ask(port, b"x\n"))
        yield bluelet.serve(listener, handler, handler_errors="raise")

    with pytest.raises(ValueError, match="strict"):
        bluelet.run(root())
    assert_refused(HOST, port)


def test_a_reset_mid_sendall_ends_only_that_handler(core, caplog):
    caplog.set_level(logging.DEBUG, logger="bluelet.server")
    big = bytes(8 << 20)
    ended = []

    def handler(conn):
        try:
            line = yield conn.readline()
            yield conn.sendall(big if line == b"big\n" else line)
        finally:
            ended.append(line)

    listener = bluelet.Listener(HOST, 0)

    def rude_client():
        conn = yield bluelet.connect(HOST, listener.port)
        try:
            reset_on_close(conn.sock)
            yield conn.sendall(b"big\n")
            assert len((yield conn.recv(1000))) > 0  # the reply has begun
        finally:
            conn.close()  # RST: the server is still in sendall

    def root():
        srv = bluelet.serve(listener, handler)
        yield bluelet.spawn(srv)
        yield rude_client()
        assert (yield wait_for(lambda: b"big\n" in ended))
        replies = []
        for i in range(3):
            replies.append((yield ask(listener.port, b"after %d\n" % i)))
        yield bluelet.kill(srv)
        return replies

    assert run_test(root(), DEADLINE) == [b"after 0\n", b"after 1\n", b"after 2\n"]
    assert server_records(caplog, logging.ERROR) == []
    assert any("ConnectionResetError" in r.getMessage() or "BrokenPipeError" in r.getMessage()
               for r in server_records(caplog, logging.DEBUG))


# ---------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------

def test_stop_finishes_the_request_in_flight_and_refuses_new_ones(core, caplog):
    caplog.set_level(logging.INFO, logger="bluelet.server")
    listener = bluelet.Listener(HOST, 0)
    reply = os.urandom(1 << 20)
    started = bluelet.Flag()
    proceed = bluelet.Flag()

    def handler(conn):
        yield conn.readline()
        started.set()
        yield proceed.wait()  # still working when the stop comes
        yield conn.sendall(reply)

    def client():
        conn = yield bluelet.connect(HOST, listener.port)
        try:
            yield conn.sendall(b"work\n")
            yield started.wait()
            stop_by_sigint()
            # Closed while the request is still being worked on.
            assert (yield wait_for(lambda: closed(listener)))
            try:
                yield bluelet.connect(HOST, listener.port)
                refused = False
            except ConnectionRefusedError:
                refused = True
            proceed.set()
            return refused, (yield recv_all(conn))
        finally:
            conn.close()

    def root():
        c = client()
        yield bluelet.spawn(c)
        stopped = yield bluelet.serve(listener, handler, grace=WAIT)
        return stopped, (yield bluelet.join(c))

    stopped, (refused, got) = run_stoppable(root())
    assert stopped is None
    assert refused
    assert got == reply  # all of it, then EOF
    assert any("waiting up to %g s for 1 connection" % WAIT in r.getMessage()
               for r in server_records(caplog, logging.INFO))


class _Stubborn:
    """Handler: takes its request, then never finishes on its own."""

    def __init__(self):
        self.started = bluelet.Flag()
        self.log = []

    def __call__(self, conn):
        try:
            yield conn.readline()
            self.started.set()
            yield bluelet.sleep(3600)
        finally:
            self.log.append("handler finally")


def _interrupting_client(listener, stubborn, interrupts):
    """Coroutine: a request to ``stubborn``, then ``interrupts`` SIGINTs (each
    after the first once the listener is closed); returns what the connection
    gives then: b"" once the server closes it."""
    conn = yield bluelet.connect(HOST, listener.port)
    try:
        yield conn.sendall(b"work\n")
        yield stubborn.started.wait()
        for count in range(interrupts):
            if count:
                assert (yield wait_for(lambda: closed(listener)))
            stop_by_sigint()
        return (yield conn.recv(10, timeout=WAIT))
    finally:
        conn.close()


def test_a_handler_that_outlasts_the_grace_is_cancelled(core):
    listener = bluelet.Listener(HOST, 0)
    stubborn = _Stubborn()

    def root():
        c = _interrupting_client(listener, stubborn, 1)
        yield bluelet.spawn(c)
        yield bluelet.serve(listener, stubborn, grace=0.1)
        assert stubborn.log == ["handler finally"]  # cancelled before serve() returned
        return (yield bluelet.join(c))

    assert run_stoppable(root()) == b""
    assert stubborn.log == ["handler finally"]


def test_a_second_interrupt_cancels_at_once(core):
    listener = bluelet.Listener(HOST, 0)
    stubborn = _Stubborn()

    def root():
        c = _interrupting_client(listener, stubborn, 2)
        dog = fail_after(WAIT, "the server's grace period")
        yield bluelet.spawn(c)
        yield bluelet.spawn(dog)
        yield bluelet.serve(listener, stubborn, grace=None)  # only a second stop ends it
        got = yield bluelet.join(c)
        yield bluelet.kill(dog)
        return got

    assert run_stoppable(root()) == b""
    assert stubborn.log == ["handler finally"]


def test_a_killed_server_closes_its_listener_and_cancels_its_handlers(core):
    listener = bluelet.Listener(HOST, 0)
    stubborn = _Stubborn()

    def root():
        srv = bluelet.serve(listener, stubborn)
        yield bluelet.spawn(srv)
        c = _interrupting_client(listener, stubborn, 0)
        yield bluelet.spawn(c)
        yield stubborn.started.wait()
        yield bluelet.kill(srv)
        assert closed(listener)  # at once
        return (yield bluelet.join(c))

    assert run_test(root(), DEADLINE) == b""
    assert stubborn.log == ["handler finally"]


class _Recording(bluelet.Listener):
    """Keeps every connection it accepts; counts the server's accept() calls."""

    def __init__(self, *args):
        super().__init__(*args)
        self.conns = []
        self.calls = 0

    def accept(self, timeout=None):
        self.calls += 1
        return self._recorded(super().accept(timeout))

    def _recorded(self, event):
        conn = yield event
        self.conns.append(conn)
        return conn


@pytest.mark.parametrize("end", ["run fails", "server killed"])
def test_a_handler_that_never_started_has_its_connection_closed(core, caplog, end):
    listener = _Recording(HOST, 0)
    ran = []

    def handler(conn):
        ran.append(conn)
        yield conn.recv(1)

    def meddler(srv):
        # Runs every pass: it acts in the pass right after the one in which
        # the server spawned a handler (and accepted again), before that
        # handler's first turn.
        for _ in range(10000):
            if listener.calls == 2:
                if end == "run fails":
                    raise RuntimeError("the run ends here")
                yield bluelet.kill(srv)
                return
            yield bluelet.null()

    def root():
        srv = bluelet.serve(listener, handler)
        yield bluelet.spawn(srv)
        yield bluelet.spawn(meddler(srv))
        conn = yield bluelet.connect(HOST, listener.port)
        try:
            return (yield conn.recv(1, timeout=WAIT))
        finally:
            conn.close()

    if end == "run fails":
        with pytest.raises(RuntimeError, match="the run ends here"):
            bluelet.run(root())
    else:
        assert bluelet.run(root()) == b""
    assert len(listener.conns) == 1 and listener.conns[0].closed
    assert ran == []
    assert closed(listener)
    assert server_records(caplog, logging.ERROR) == []


def test_closing_the_listener_stops_the_server_gracefully(core):
    listener = bluelet.Listener(HOST, 0)
    started = bluelet.Flag()

    def handler(conn):
        yield conn.readline()
        started.set()
        yield bluelet.sleep(0.1)
        yield conn.sendall(b"done\n")

    def root():
        srv = bluelet.serve(listener, handler)
        yield bluelet.spawn(srv)
        client = ask(listener.port, b"work\n")
        yield bluelet.spawn(client)
        yield started.wait()
        listener.close()
        assert (yield bluelet.join(srv)) is None  # returned, after the handler
        return (yield bluelet.join(client))

    assert run_test(root(), DEADLINE) == b"done\n"


# ---------------------------------------------------------------------------
# Out of descriptors
# ---------------------------------------------------------------------------

def _emfile():
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    yield  # a coroutine, as accept()'s event is to the server


def test_exhausted_accept_backs_off_and_resumes_when_a_handler_ends(core, caplog):
    # Virtual time: the backoff's sleeps take none, and the order of what
    # happens (a handler ends, the server accepts, a 5 ms timer fires) is
    # exact.
    caplog.set_level(logging.INFO, logger="bluelet.server")

    class Exhausted(bluelet.Listener):
        """accept() fails with EMFILE while ``full``; counts the failures."""
        full = False
        failures = 0

        def accept(self, timeout=None):
            if self.full:
                self.failures += 1
                return _emfile()
            return super().accept(timeout)

    listener = Exhausted(HOST, 0)
    release = bluelet.Flag()
    events = []

    def handler(conn):
        listener.full = True  # this connection took the last descriptor
        events.append("handler started")
        try:
            yield release.wait()
        finally:
            listener.full = False  # ... and gives it back

    def root():
        srv = bluelet.serve(listener, handler)
        yield bluelet.spawn(srv)
        clients = []
        for _ in range(3):
            conn = yield bluelet.connect(HOST, listener.port)
            clients.append(conn)
        try:
            # Two accepted; the third waits in the kernel's queue.
            assert (yield wait_for(lambda: listener.failures > 0))
            yield bluelet.sleep(10)
            failures = listener.failures
            release.set()
            yield bluelet.sleep(0.005)  # far shorter than the backoff by now
            events.append("5 ms later")
            yield bluelet.kill(srv)
        finally:
            for conn in clients:
                conn.close()
        return failures

    failures = run_test(root(), DEADLINE, virtual_time=True)
    # 10 s of pauses doubling from 10 ms to 1 s: about 17 tries, not a spin.
    assert 5 <= failures <= 30
    assert events == ["handler started"] * 3 + ["5 ms later"]
    warnings = server_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and os.strerror(errno.EMFILE) in warnings[0].getMessage()
    assert any(r.getMessage() == "accepting again" for r in server_records(caplog, logging.INFO))


FD_EXHAUSTION = """
    import errno, logging, os, resource, sys, time
    import bluelet

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    class Counting(bluelet.Listener):
        attempts = 0

        def accept(self, timeout=None):
            self.attempts += 1
            return super().accept(timeout)

    def echo_line(conn):
        yield conn.sendall((yield conn.readline()))

    def fill():
        held = []
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as error:
                if error.errno != errno.EMFILE:
                    raise
                return held

    def exhaust(listener):
        yield bluelet.sleep(0.05)  # the server waits in accept
        held = fill()
        attempts, cpu = listener.attempts, time.process_time()
        print("full; port", listener.port, flush=True)
        yield bluelet.sleep(1.5)  # a client connects meanwhile
        print("attempts %d cpu %.3f" % (listener.attempts - attempts,
                                        time.process_time() - cpu), flush=True)
        for fd in held:
            os.close(fd)

    def main():
        listener = Counting("127.0.0.1", 0)
        yield bluelet.spawn(exhaust(listener))
        yield bluelet.serve(listener, echo_line)

    bluelet.run(main(), handle_signals=True)
    print("stopped", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="setrlimit and signals: POSIX")
def test_out_of_descriptors_in_a_real_process(core, script):
    server = script(core, FD_EXHAUSTION)
    port = int(server.expect(r"^full; port (\d+)$").group(1))
    with socket.create_connection((HOST, port), timeout=WAIT) as sock:
        sock.sendall(b"waiting in the queue\n")
        server.expect(os.strerror(errno.EMFILE))  # the warning
        counts = server.expect(r"^attempts (\d+) cpu ([\d.]+)$")
        # 1.5 s of pauses doubling from 10 ms: about 8 tries. A spinning
        # loop would try thousands of times and use the whole 1.5 s of CPU.
        assert int(counts.group(1)) <= 30
        assert float(counts.group(2)) < 0.75
        # The descriptors are back: the queued client is served, and more.
        with sock.makefile("rb") as replies:
            assert replies.readline() == b"waiting in the queue\n"
    assert blocking_ask(port, b"and the next\n") == b"and the next\n"
    server.expect("^accepting again$")
    os.kill(server.proc.pid, signal.SIGTERM)
    server.expect("^stopped$")
    assert server.wait() == 0


# ---------------------------------------------------------------------------
# Clients that misbehave
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def test_a_failed_tls_handshake_does_not_disturb_other_clients(core, ca, caplog):
    caplog.set_level(logging.DEBUG, logger="bluelet.server")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    untrusting = ssl.create_default_context()  # the system's CAs: not ours
    port = free_port()

    def silent():
        conn = yield bluelet.connect(HOST, port)  # TCP only: no ClientHello
        try:
            return (yield conn.recv(10, timeout=WAIT))
        finally:
            conn.close()

    def root():
        srv = bluelet.server(HOST, port, line_echo, ssl=server_ctx, handshake_timeout=0.3)
        yield bluelet.spawn(srv)
        yield bluelet.null()  # it listens
        quiet = silent()
        yield bluelet.spawn(quiet)
        with pytest.raises(ssl.SSLCertVerificationError):
            yield ask(port, b"let me in\n", untrusting)
        replies = []
        for i in range(3):
            replies.append((yield ask(port, b"hello %d\n" % i, trusting)))
        dropped = yield bluelet.join(quiet)
        yield bluelet.kill(srv)
        return replies, dropped

    replies, dropped = run_test(root(), DEADLINE)
    assert replies == [b"hello 0\n", b"hello 1\n", b"hello 2\n"]
    assert dropped == b""  # after handshake_timeout
    failed = [r for r in server_records(caplog, logging.DEBUG)
              if "TLS handshake" in r.getMessage()]
    assert len(failed) == 2
    assert server_records(caplog, logging.ERROR) == []


def test_slowloris_and_floods_are_dropped_while_others_are_served(core):
    def handler(conn):
        try:
            line = yield conn.readline(limit=1024, timeout=0.5)
        except bluelet.LimitExceeded:
            yield conn.sendall(b"too long\n")
            return
        yield conn.sendall(line)

    listener = bluelet.Listener(HOST, 0)
    trickled = [0]

    def trickle(conn):
        for _ in range(200):  # 10 s at most: far past the 0.5 s allowed
            yield conn.sendall(b"x")
            trickled[0] += 1
            yield bluelet.sleep(0.05)

    def slowloris():
        conn = yield bluelet.connect(HOST, listener.port)
        sender = trickle(conn)
        try:
            yield bluelet.spawn(sender)
            try:
                return (yield conn.recv(10, timeout=WAIT))
            except ConnectionResetError:
                return b""  # our late bytes met a closed socket: dropped too
        finally:
            yield bluelet.kill(sender)
            conn.close()

    def root():
        srv = bluelet.serve(listener, handler)
        yield bluelet.spawn(srv)
        slow = slowloris()
        yield bluelet.spawn(slow)
        flood = yield ask(listener.port, b"y" * 100_000)
        served = []
        for i in range(5):
            served.append((yield ask(listener.port, b"line %d\n" % i)))
            yield bluelet.sleep(0.02)
        dropped = yield bluelet.join(slow)
        yield bluelet.kill(srv)
        return flood, served, dropped

    flood, served, dropped = run_test(root(), DEADLINE)
    assert flood == b"too long\n"
    assert served == [b"line %d\n" % i for i in range(5)]
    assert dropped == b""
    assert trickled[0] < 1024  # dropped by the timeout, not by the limit


SLOW_READER = """
    import sys
    import bluelet

    PAGE = 1 << 20
    sent = [0]

    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    def handler(conn):
        command = yield conn.readline()
        if command == b"flood\\n":
            chunk = memoryview(b"x" * PAGE)  # touched pages: they count in RSS
            for _ in range(64):
                yield conn.sendall(chunk)
                sent[0] += 1
        elif command == b"stats\\n":
            yield conn.sendall(b"%d %d\\n" % (sent[0], rss() - base))
        else:
            yield conn.sendall(command)

    listener = bluelet.Listener("127.0.0.1", 0)
    base = rss()
    print("port", listener.port, flush=True)
    bluelet.run(bluelet.serve(listener, handler), handle_signals=True)
    print("stopped", flush=True)
"""


@needs_proc
def test_a_client_that_never_reads_costs_no_memory(core, script):
    server = script(core, SLOW_READER)
    port = int(server.expect(r"^port (\d+)$").group(1))
    with socket.socket() as lazy:
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        lazy.connect((HOST, port))
        lazy.sendall(b"flood\n")  # 64 MiB that it never reads
        previous = None
        for _ in range(100):  # until the server's sendall stops making progress
            sent, grown = map(int, blocking_ask(port, b"stats\n").split())
            if sent == previous:
                break
            previous = sent
            time.sleep(0.05)
        assert sent < 64  # waiting in sendall, not done
        assert grown < 16 << 20  # not the megabytes it is asked to send
        assert blocking_ask(port, b"still here\n") == b"still here\n"
        abort(lazy)
    assert blocking_ask(port, b"after the reset\n") == b"after the reset\n"
    os.kill(server.proc.pid, signal.SIGTERM)
    server.expect("^stopped$")
    assert server.wait() == 0


# ---------------------------------------------------------------------------
# workers=N
# ---------------------------------------------------------------------------

WORKERS = """
    import logging, os, sys, threading, time
    import bluelet

    out = sys.stdout
    if "no-stdout" in sys.argv:
        # As when started with fd 1 closed: sys.stdout is None. The log
        # goes to a copy of the pipe the test reads.
        out = os.fdopen(os.dup(1), "w", buffering=1)
        os.close(1)
        sys.stdout = None
    if "thread" in sys.argv:
        # Another thread, as to_thread's pool leaves behind: it blocks no
        # signal, so the kernel may hand it the supervisor's.
        threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
    if "broken-start" in sys.argv:
        def broken(self):
            raise OSError("no listener for this worker")
        bluelet._prefork.Endpoint.listener = broken
    logging.basicConfig(stream=out, level=logging.INFO, format="%(message)s")

    def handler(conn):
        line = yield conn.readline()
        if line == b"slow\\n":
            yield bluelet.sleep(0.5)
        yield conn.sendall(b"%d\\n" % os.getpid())

    bluelet.run(bluelet.server("127.0.0.1", 0, handler, workers=2, grace=5),
                handle_signals=sys.argv[1] == "1")
    print("stopped", file=out, flush=True)
"""


def _workers_port(server):
    """The port the WORKERS script's supervisor says it serves."""
    return int(server.expect(r"^serving on 127\.0\.0\.1:(\d+) with 2 workers$").group(1))


def _sigterm_stops_all(server):
    """SIGTERM to the supervisor: it stops, exits 0 and leaves no worker behind."""
    os.kill(server.proc.pid, signal.SIGTERM)
    server.expect("^stopped$")
    assert server.wait() == 0
    assert not alive_group(server.proc.pid)


def _pids_answering(port, wanted, tries=200):
    """The pids that answer new connections, once all of ``wanted`` have."""
    seen = set()
    for _ in range(tries):
        seen.add(int(blocking_ask(port, b"pid\n", tries=3)))
        if wanted <= seen:
            break
    return seen


@needs_fork
@pytest.mark.parametrize("handle_signals", [0, 1], ids=["plain-run", "handle_signals"])
def test_workers_serve_restart_and_stop(core, script, handle_signals):
    server = script(core, WORKERS, handle_signals)
    port = _workers_port(server)
    pids = [int(server.expect(r"^worker (\d+) started$").group(1)) for _ in range(2)]
    assert _pids_answering(port, set(pids)) == set(pids)  # the kernel spreads them

    os.kill(pids[0], signal.SIGKILL)
    exited = server.expect(r"^worker (\d+) exited with status -9; restarting$")
    assert int(exited.group(1)) == pids[0]
    pids.append(int(server.expect(r"^worker (\d+) started$").group(1)))
    assert _pids_answering(port, set(pids[1:])) == set(pids[1:])

    # A request in flight when the supervisor is told to stop still gets
    # its answer: the workers stop gracefully.
    with socket.create_connection((HOST, port), timeout=WAIT) as sock:
        sock.sendall(b"slow\n")
        time.sleep(0.1)  # the worker has the request
        os.kill(server.proc.pid, signal.SIGTERM)
        assert int(sock.makefile("rb").readline()) in pids[1:]
    server.expect("^stopped$")
    assert server.wait() == 0
    assert not any("killing it" in line for line in server.seen)  # all stopped on SIGTERM
    assert not alive_group(server.proc.pid)  # no worker left behind


_WORKER_CAME_OR_WENT = r"^worker (\d+) (started|exited with status -9; restarting)$"


def _comings_and_goings(server, count):
    """The next ``count`` worker starts and exits, as (pid, "started" or "exited")."""
    return [(int(m.group(1)), m.group(2).split()[0])
            for m in (server.expect(_WORKER_CAME_OR_WENT) for _ in range(count))]


@needs_fork
def test_workers_are_kept_and_stopped_with_another_thread_in_the_supervisor(core, script):
    server = script(core, WORKERS, 0, "thread")
    port = _workers_port(server)
    first = [pid for pid, _ in _comings_and_goings(server, 2)]
    for pid in first:  # both die together: each SIGCHLD may go to the other thread
        os.kill(pid, signal.SIGKILL)
    events = _comings_and_goings(server, 4)
    assert sorted(pid for pid, what in events if what == "exited") == sorted(first)
    second = [pid for pid, what in events if what == "started"]
    assert _pids_answering(port, set(second)) == set(second)

    # One that dies at once is restarted only after a pause; a SIGTERM
    # during the pause (taken by either thread) stops everything cleanly.
    os.kill(second[0], signal.SIGKILL)
    server.expect(r"^worker %d exited with status -9; restarting$" % second[0])
    _sigterm_stops_all(server)


@needs_fork
def test_workers_run_where_the_process_has_no_stdout(core, script):
    server = script(core, WORKERS, 0, "no-stdout")
    port = _workers_port(server)
    pids = [pid for pid, _ in _comings_and_goings(server, 2)]
    assert _pids_answering(port, set(pids)) == set(pids)
    _sigterm_stops_all(server)


@needs_fork
def test_a_worker_that_cannot_start_fails_the_server_instead_of_restarting(core, script):
    server = script(core, WORKERS, 0, "broken-start")
    server.expect(r"^worker \d+ failed$")
    assert server.wait() == 1
    assert "RuntimeError: a worker failed to start" in server.errors.read_text()
    assert not any(re.search("started|restarting", line) for line in server.seen + server.rest())
    assert not alive_group(server.proc.pid)


def test_server_calls_a_patched_listener_as_0_2_0_did(core):
    # beets' BPD tests patch bluelet.Listener to learn the port bound for
    # port 0: server() must look the name up in the package when it starts
    # and call it with (host, port), as 0.2.0 did.
    from unittest import mock

    real_listener = bluelet.Listener
    calls = []

    def wrapped(host, port):
        listener = real_listener(host, port)
        calls.append((host, port, listener.sock.getsockname()[1]))
        return listener

    def echo_once(conn):
        data = yield conn.recv(100)
        yield conn.sendall(data)

    def client():
        yield bluelet.null()  # the server's first step makes the listener
        while not calls:
            yield bluelet.sleep(0.001)
        conn = yield bluelet.connect(HOST, calls[0][2])
        try:
            yield conn.sendall(b"hello")
            return (yield conn.recv(100))
        finally:
            conn.close()

    def main():
        serving = bluelet.server(HOST, 0, echo_once)
        yield bluelet.spawn(serving)
        try:
            return (yield client())
        finally:
            yield bluelet.kill(serving)

    with mock.patch("bluelet.Listener", side_effect=wrapped):
        assert bluelet.run(main()) == b"hello"
    assert [call[:2] for call in calls] == [(HOST, 0)]


def test_a_line_over_the_limit_is_logged_as_a_warning_once(core, caplog):
    # 0.2.0's readline had no limit: a program moving over whose records
    # exceed 64 KiB must be told, not left with a silent hang-up.
    caplog.set_level(logging.DEBUG, logger="bluelet.server")

    def handler(conn):
        line = yield conn.readline()
        yield conn.sendall(line)

    listener = bluelet.Listener(HOST, 0)

    def root():
        srv = bluelet.serve(listener, handler)
        yield bluelet.spawn(srv)
        try:
            yield ask(listener.port, b"x" * (70 * 1024) + b"\n")
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset, or an EOF
        yield bluelet.kill(srv)

    run_test(root(), DEADLINE)
    [warning] = server_records(caplog, logging.WARNING)
    assert "limit" in warning.getMessage() and warning.exc_info is None
    assert closed(listener)
