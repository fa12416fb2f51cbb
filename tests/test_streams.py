"""Stream helpers of Connection, run once per core: timeouts on every wait,
readline/readuntil/readexactly with their limits and errors, shutdown_write,
sendfile, context managers and closing, a reset in the middle of sendall.

Each test runs over a fresh loopback TCP connection (both ends bluelet
Connections) under ``run_test``'s deadline, and under ``no_fd_leak``. What
is asserted is what a program sees: the bytes, the exceptions and where
they are raised (at the call or at the ``yield``), and that after a
timeout or a limit nothing that arrived is lost.
"""

import os
import random
import socket
import time

import pytest

import bluelet
from _helpers import HOST, open_pair, recv_all, recv_exactly, reset_on_close
from bluelet.testing import run_test

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(60)]

DEADLINE = 30.0  # seconds of real time any one test may take; none comes close
SHORT = 0.05     # a timeout that runs out: nothing will arrive in the meantime
KIB = 1024
MIB = 1024 * KIB

#: The errors a reset connection may surface as, depending on whether the
#: kernel has already seen the RST when the call is made.
BROKEN = (ConnectionResetError, BrokenPipeError)


def payload(size, seed=7):
    return random.Random(seed).randbytes(size)


def on_a_connection(body):
    """Run ``body(client, server)``, a coroutine, over a fresh loopback
    connection: ``client`` dialled, ``server`` accepted. Both ends are closed
    when it ends. Returns its result."""
    def root():
        with bluelet.Listener(HOST, 0) as listener:
            client, server = yield open_pair(listener)
        with client, server:
            return (yield body(client, server))

    return run_test(root(), timeout=DEADLINE)


def send_pieces(conn, pieces, shut=False):
    """Coroutine: send each of ``pieces`` apart (a pause between them, so
    the reader sees them as separate arrivals); then half-close if ``shut``."""
    for piece in pieces:
        yield conn.sendall(piece)
        yield bluelet.sleep(0.005)
    if shut:
        conn.shutdown_write()


def fill_send_buffer(conn):
    """Send on ``conn`` until the kernel has no room (the peer reads nothing)."""
    chunk = b"f" * (256 * KIB)
    for _ in range(4096):
        try:
            conn.sock.send(chunk)
        except BlockingIOError:
            return
    pytest.fail("the send buffer never filled")


# ---------------------------------------------------------------------------
# timeout= on every waiting method
# ---------------------------------------------------------------------------

WAITS = {
    "recv": lambda conn: conn.recv(100, timeout=SHORT),
    "readline": lambda conn: conn.readline(timeout=SHORT),
    "readuntil": lambda conn: conn.readuntil(b"\r\n", timeout=SHORT),
    "readexactly": lambda conn: conn.readexactly(10, timeout=SHORT),
    "send": lambda conn: conn.send(b"more", timeout=SHORT),
    # Far more than the kernel's buffers hold, with the peer reading nothing.
    "sendall": lambda conn: conn.sendall(b"s" * (64 * MIB), timeout=SHORT),
}


@pytest.mark.parametrize("wait", sorted(WAITS))
def test_each_wait_raises_timeout_at_its_yield(core, wait):
    def body(client, server):
        if wait == "send":
            fill_send_buffer(server)
        event = WAITS[wait](server)  # building it raises nothing
        with pytest.raises(bluelet.Timeout) as caught:
            yield event
        return isinstance(caught.value, TimeoutError)

    assert on_a_connection(body) is True


def test_accept_timeout_and_the_listener_stays_usable(core):
    def body():
        with bluelet.Listener(HOST, 0) as listener:
            with pytest.raises(bluelet.Timeout):
                yield listener.accept(timeout=SHORT)
            client, server = yield open_pair(listener)
        with client, server:
            yield client.sendall(b"after")
            return (yield recv_exactly(server, 5))

    assert run_test(body(), timeout=DEADLINE) == b"after"


def test_a_timed_out_recv_loses_nothing(core):
    def body(client, server):
        with pytest.raises(bluelet.Timeout):
            yield server.recv(100, timeout=SHORT)
        yield client.sendall(b"late")
        return (yield recv_exactly(server, 4))

    assert on_a_connection(body) == b"late"


# What each read is given before it times out, and what the next read of
# each kind then returns: the bytes that came before the timeout are first.
TIMED_OUT_READS = {
    "readline": (lambda conn: conn.readline(timeout=SHORT),
                 lambda conn: conn.readline(), b"hello\n"),
    "readuntil": (lambda conn: conn.readuntil(b"lo\n", timeout=SHORT),
                  lambda conn: conn.readuntil(b"lo\n"), b"hello\n"),
    "readexactly": (lambda conn: conn.readexactly(6, timeout=SHORT),
                    lambda conn: conn.readexactly(6), b"hello\n"),
    "readexactly then recv": (lambda conn: conn.readexactly(6, timeout=SHORT),
                              lambda conn: conn.recv(100), b"hel"),
}


@pytest.mark.parametrize("case", sorted(TIMED_OUT_READS))
def test_bytes_read_before_a_timeout_are_served_next(core, case):
    first, then, expected = TIMED_OUT_READS[case]

    def body(client, server):
        yield client.sendall(b"hel")
        with pytest.raises(bluelet.Timeout):
            yield first(server)
        yield client.sendall(b"lo\nworld\n")
        got = yield then(server)
        # And the stream goes on from exactly there.
        rest = yield recv_exactly(server, len(b"hello\nworld\n") - len(got))
        return got, got + rest

    assert on_a_connection(body) == (expected, b"hello\nworld\n")


def test_bad_timeouts_raise_at_the_call(core):
    makers = [
        lambda conn, t: conn.recv(10, timeout=t),
        lambda conn, t: conn.send(b"x", timeout=t),
        lambda conn, t: conn.sendall(b"x", timeout=t),
        lambda conn, t: conn.readline(timeout=t),
        lambda conn, t: conn.readuntil(b"\n", timeout=t),
        lambda conn, t: conn.readexactly(2, timeout=t),
    ]

    def body(client, server):
        for buffered in (False, True):
            if buffered:
                # Bytes waiting in the connection's buffer must not let a bad
                # timeout through unnoticed.
                yield client.sendall(b"ab\ncd\n")
                assert (yield server.readexactly(1)) == b"a"
            for make in makers:
                with pytest.raises(TypeError):
                    make(server, "1")
                with pytest.raises(ValueError):
                    make(server, float("nan"))
        return (yield server.readline())

    # The calls that raised took nothing from the stream.
    assert on_a_connection(body) == b"b\n"


def test_a_negative_timeout_is_already_over(core):
    # As for bluelet.timeout(): below zero counts as zero, and a wait that
    # has to wait at all runs out at once.
    def body(client, server):
        with pytest.raises(bluelet.Timeout):
            yield server.recv(10, timeout=-1)
        with pytest.raises(bluelet.Timeout):
            yield server.readline(timeout=-1)
        yield client.sendall(b"ok")
        return (yield recv_exactly(server, 2))

    assert on_a_connection(body) == b"ok"


# Reads served from the buffer (readline read past its line): a Timeout or
# kill that lands where the reader is resumed must leave the bytes buffered,
# or hand them over; never take them and drop them.
BUFFERED_READS = {
    "recv": lambda conn: conn.recv(100),
    "recv with timeout=": lambda conn: conn.recv(100, timeout=DEADLINE),
    "readexactly": lambda conn: conn.readexactly(5),
}


def _buffered_read_interrupted(read, how):
    """What a reader of the buffered b"body\n" got, and what was left for
    the next read, when ``how`` ("kill" or "timeout") hits it as it reads."""
    def body(client, server):
        yield client.sendall(b"HDR\nbody\n")
        assert (yield server.readexactly(4)) == b"HDR\n"  # b"body\n" stays buffered
        got = []

        def reader():
            if how == "timeout":
                yield bluelet.null()  # ready, not waiting, when the deadline passes
            got.append((yield read(server)))
            yield bluelet.sleep(DEADLINE)

        def interrupter(task):
            if how == "kill":
                yield bluelet.kill(task)  # it is ready to resume, holding what it read
            else:
                time.sleep(SHORT * 2)  # hold the loop past the reader's deadline
                yield bluelet.null()

        task = reader()
        if how == "kill":
            yield bluelet.spawn(task)
        else:
            task = bluelet.timeout(SHORT, task)
            yield bluelet.spawn(_catching(task, bluelet.Timeout))
        yield bluelet.spawn(interrupter(task))
        yield bluelet.sleep(SHORT * 4)
        if how == "kill":
            yield bluelet.join(task)
        client.close()
        rest = yield server.recv(100)
        return b"".join(got), rest

    return on_a_connection(body)


def _catching(coroutine, error):
    try:
        yield coroutine
    except error:
        pass


@pytest.mark.parametrize("how", ["kill", "timeout"])
@pytest.mark.parametrize("case", sorted(BUFFERED_READS))
def test_a_buffered_read_interrupted_at_its_yield_loses_nothing(core, case, how):
    got, rest = _buffered_read_interrupted(BUFFERED_READS[case], how)
    assert got + rest == b"body\n"



# ---------------------------------------------------------------------------
# readline and readuntil: limits, separators, end of stream
# ---------------------------------------------------------------------------

def test_readline_default_limit_stops_a_peer_that_never_sends_a_newline(core):
    state = {"sent": 0}

    def trickle(conn):
        # A slowloris: a kilobyte at a time, never a newline, until the
        # reader gives up (bounded well past 64 KiB).
        for _ in range(200):
            if "limited" in state:
                return
            yield conn.sendall(b"a" * KIB)
            state["sent"] += KIB
            yield bluelet.null()

    def body(client, server):
        t = trickle(client)
        yield bluelet.spawn(t)
        with pytest.raises(bluelet.LimitExceeded):
            yield server.readline()
        state["limited"] = True
        yield bluelet.join(t)
        # What was read is still there, in order.
        kept = yield server.readexactly(64 * KIB)
        return kept == b"a" * (64 * KIB), state["sent"] >= 64 * KIB

    assert on_a_connection(body) == (True, True)


def test_readline_default_limit_is_64_kib_inclusive(core):
    at_limit = b"x" * (64 * KIB - 1) + b"\n"
    over = b"y" * (64 * KIB) + b"\n"

    def body(client, server):
        yield bluelet.spawn(send_pieces(client, [at_limit, over]))
        first = yield server.readline()
        with pytest.raises(bluelet.LimitExceeded):
            yield server.readline()
        second = yield server.readline(limit=len(over))
        return first == at_limit, second == over

    assert on_a_connection(body) == (True, True)


@pytest.mark.parametrize("verb", ["readline", "readuntil"])
def test_custom_limit_line_at_it_accepted_one_over_refused_and_kept(core, verb):
    def read(conn, **kwargs):
        return getattr(conn, verb)(b"\r\n", **kwargs)

    def body(client, server):
        yield bluelet.spawn(send_pieces(client, [b"12345678\r", b"\n123456789\r\nnext\r\n"]))
        out = [(yield read(server, limit=10))]
        with pytest.raises(bluelet.LimitExceeded):
            yield read(server, limit=10)
        out.append((yield read(server, limit=11)))  # the same record, kept
        out.append((yield read(server, limit=10)))
        return out

    assert on_a_connection(body) == [b"12345678\r\n", b"123456789\r\n", b"next\r\n"]


def test_readuntil_a_long_separator_split_across_arrivals(core):
    # An HTTP head ends at CR LF CR LF; it comes in pieces that cut the
    # separator (and a near miss, CR LF CR then not LF) everywhere.
    head = b"GET / HTTP/1.1\r\nHost: x\r\n\rX: y\r\n\r\n"
    pieces = [b"GET / HTTP/1.1\r", b"\nHost: x\r\n", b"\r", b"X: y\r", b"\n\r", b"\nBODY"]

    def body(client, server):
        yield bluelet.spawn(send_pieces(client, pieces, shut=True))
        got = yield server.readuntil(b"\r\n\r\n")
        return got, (yield recv_all(server))

    assert on_a_connection(body) == (head, b"BODY")


def test_readuntil_at_end_of_stream_raises_incomplete_read(core):
    def body(client, server):
        yield bluelet.spawn(send_pieces(client, [b"first;", b"no sep", b"arator"], shut=True))
        first = yield server.readuntil(b";")
        with pytest.raises(bluelet.IncompleteRead) as caught:
            yield server.readuntil(b";")
        after = yield server.recv(10)  # the partial bytes were handed over
        return first, caught.value, after

    first, error, after = on_a_connection(body)
    assert (first, error.partial, error.expected, after) == (b"first;", b"no separator", None, b"")
    assert isinstance(error, EOFError)


def test_readline_and_readuntil_bad_arguments_raise_at_the_call(core):
    def body(client, server):
        for read in (server.readline, server.readuntil):
            with pytest.raises(TypeError):
                read("\n")
            with pytest.raises(ValueError):
                read(b"")
            with pytest.raises(ValueError):
                read(b"\r\n", limit=1)
            with pytest.raises(TypeError):
                read(b"\n", limit=10.5)
        with pytest.raises(ValueError):
            server.readline(bufsize=0)  # a 0-byte read would look like EOF
        with pytest.raises(ValueError):
            server.readline(bufsize=-1)
        yield client.sendall(b"fine\n")
        return (yield server.readline())

    assert on_a_connection(body) == b"fine\n"


# ---------------------------------------------------------------------------
# readexactly
# ---------------------------------------------------------------------------

def test_readexactly_across_many_small_sends(core):
    data = payload(700)
    pieces = [data[i:i + 7] for i in range(0, len(data), 7)]

    def body(client, server):
        yield bluelet.spawn(send_pieces(client, pieces))
        first = yield server.readexactly(33)     # cuts pieces in the middle
        second = yield server.readexactly(700 - 33 - 1)
        last = yield server.readexactly(1)
        return first + second + last

    assert on_a_connection(body) == data


def test_readexactly_at_end_of_stream_raises_incomplete_read(core):
    def body(client, server):
        yield bluelet.spawn(send_pieces(client, [b"abc", b"de"], shut=True))
        with pytest.raises(bluelet.IncompleteRead) as caught:
            yield server.readexactly(10)
        return caught.value, (yield server.readexactly(0)), (yield server.recv(10))

    error, zero, after = on_a_connection(body)
    assert (error.partial, error.expected, zero, after) == (b"abcde", 10, b"", b"")
    assert "5 bytes" in str(error) and "10 bytes" in str(error)


def test_readexactly_zero_returns_at_once(core):
    def body(client, server):
        return (yield server.readexactly(0))  # nothing was ever sent

    assert on_a_connection(body) == b""


def test_readexactly_several_mib(core):
    data = payload(5 * MIB + 3)

    def body(client, server):
        yield bluelet.spawn(send_pieces(client, [data]))
        got = yield server.readexactly(len(data))
        yield client.sendall(b"!")
        return got == data, (yield server.recv(10))

    assert on_a_connection(body) == (True, b"!")


def test_readexactly_and_recv_bad_sizes_raise_at_the_call(core):
    def body(client, server):
        for call, error in (
            (lambda: server.readexactly(-1), ValueError),
            (lambda: server.readexactly(2.5), TypeError),
            (lambda: server.recv(-1), ValueError),
            (lambda: server.recv(2.5), TypeError),
        ):
            with pytest.raises(error):
                call()
        yield client.sendall(b"xy")
        return (yield server.readexactly(2))

    assert on_a_connection(body) == b"xy"


@pytest.mark.parametrize("read", ["readline", "readuntil", "readexactly"])
def test_closed_by_another_coroutine_mid_read(core, read):
    # The reader's bytes and the closer's wake-up land in the same turn of
    # the loop; whichever runs first, the reader must hear SocketClosedError,
    # as a waiter on a closed connection does.
    log = []
    make = {"readline": lambda conn: conn.readline(),
            "readuntil": lambda conn: conn.readuntil(b"\n"),
            "readexactly": lambda conn: conn.readexactly(100)}[read]

    def reader(conn):
        try:
            yield make(conn)
        except bluelet.SocketClosedError:
            log.append("reader: closed")

    def closer(conn, signal):
        yield bluelet.wait_readable(signal)
        conn.close()

    def body(client, server):
        left, right = socket.socketpair()
        with left, right:
            r, c = reader(server), closer(server, left)
            yield bluelet.spawn(r)
            yield bluelet.spawn(c)
            yield bluelet.null()
            right.send(b"!")  # wakes the closer
            client.sock.send(b"partial")  # then the reader
            yield bluelet.join(c)
            yield bluelet.join(r)

    on_a_connection(body)
    assert log == ["reader: closed"]


# ---------------------------------------------------------------------------
# shutdown_write, closing, context managers
# ---------------------------------------------------------------------------

def test_half_close_echo(core):
    # The client says it is done sending; the server reads to EOF, then
    # answers; the client still reads the whole answer.
    def server_side(conn):
        request = yield recv_all(conn)
        yield conn.sendall(request[::-1])
        conn.shutdown_write()

    def body(client, server):
        yield bluelet.spawn(server_side(server))
        yield client.sendall(b"stressed")
        client.shutdown_write()
        reply = yield recv_all(client)
        with pytest.raises(BrokenPipeError):
            yield client.send(b"too late")
        return reply

    assert on_a_connection(body) == b"desserts"


def test_context_managers_close_even_on_error(core):
    seen = {}

    def body():
        with pytest.raises(ZeroDivisionError):
            with bluelet.Listener(HOST, 0) as listener:
                seen["listener"] = listener
                client, server = yield open_pair(listener)
                with client, server:
                    seen["ends"] = (client, server)
                    1 / 0

    run_test(body(), timeout=DEADLINE)
    client, server = seen["ends"]
    assert client.closed and server.closed
    with pytest.raises(bluelet.SocketClosedError):
        seen["listener"].accept()
    with pytest.raises(bluelet.SocketClosedError):
        seen["listener"].sockname


def test_calls_on_a_closed_connection_raise_at_the_call(core, tmp_path):
    (tmp_path / "f").write_bytes(b"data")
    calls = [
        lambda conn, f: conn.readuntil(b"\n"),
        lambda conn, f: conn.readexactly(1),
        lambda conn, f: conn.sendfile(f),
        lambda conn, f: conn.shutdown_write(),
        lambda conn, f: conn.fileno(),
        lambda conn, f: conn.peername,
        lambda conn, f: conn.sockname,
    ]

    def body(client, server):
        assert not client.closed
        client.close()
        client.close()  # twice is harmless
        assert client.closed
        with open(tmp_path / "f", "rb") as f:
            for call in calls:
                with pytest.raises(bluelet.SocketClosedError):
                    call(client, f)
        return (yield server.recv(10)), repr(client)

    assert on_a_connection(body) == (b"", "<Connection closed>")


# ---------------------------------------------------------------------------
# sendfile
# ---------------------------------------------------------------------------

FILE_SIZE = 3 * MIB + 17  # more than one chunk


@pytest.fixture(params=["os.sendfile", "read and send", "seek, read and send"])
def file_path(request, tmp_path, monkeypatch):
    """A file of FILE_SIZE bytes of ``payload``; with "read and send" the
    platform's sendfile is taken away, so Connection falls back, and with
    "seek, read and send" pread too, as on Windows."""
    if request.param != "os.sendfile":
        monkeypatch.delattr(os, "sendfile", raising=False)
    if request.param == "seek, read and send":
        monkeypatch.delattr(os, "pread", raising=False)
    path = tmp_path / "payload.bin"
    path.write_bytes(payload(FILE_SIZE, seed=11))
    return path


@pytest.mark.parametrize("offset, count, expect", [
    (0, None, slice(0, FILE_SIZE)),
    (1000, 5000, slice(1000, 6000)),
    (FILE_SIZE - 10, 1000, slice(FILE_SIZE - 10, FILE_SIZE)),  # count past the end
    (FILE_SIZE + 5, None, slice(0, 0)),                        # offset past the end
    (5, 0, slice(0, 0)),
])
def test_sendfile(core, file_path, offset, count, expect):
    def body(client, server):
        with open(file_path, "rb") as f:
            f.seek(123)
            reader = recv_all(server)
            yield bluelet.spawn(reader)
            sent = yield client.sendfile(f, offset, count)
            client.shutdown_write()
            got = yield bluelet.join(reader)
            return sent, got, f.tell()

    sent, got, position = on_a_connection(body)
    expected = file_path.read_bytes()[expect]
    assert sent == len(expected)
    assert got == expected
    assert position == 123  # the file's own position is neither used nor moved


def test_sendfile_bad_arguments_raise_at_the_call(core, tmp_path):
    (tmp_path / "f").write_bytes(b"data")

    def body(client, server):
        with open(tmp_path / "f", "rb") as f:
            with pytest.raises(ValueError):
                client.sendfile(f, -1)
            with pytest.raises(ValueError):
                client.sendfile(f, 0, -1)
            with pytest.raises(TypeError):
                client.sendfile(f, timeout="1")
            sent = yield client.sendfile(f)
        return sent, (yield recv_exactly(server, 4))

    assert on_a_connection(body) == (4, b"data")


# ---------------------------------------------------------------------------
# A reset in the middle of sendall
# ---------------------------------------------------------------------------

def test_a_reset_mid_sendall_fails_that_coroutine_only(core):
    log = []

    def sender(conn):
        try:
            yield conn.sendall(b"m" * (64 * MIB))
            log.append("sent everything?")
        except BROKEN as exc:
            log.append(type(exc))

    def rude_reader(conn):
        # Reads a little of the flood, then resets: SO_LINGER 0 and close.
        yield conn.readexactly(256 * KIB)
        reset_on_close(conn.sock)
        conn.close()
        log.append("reset")

    def chatter(conn, peer):
        # Another connection, busy all along, is not disturbed.
        for i in range(20):
            yield conn.sendall(b"%d\n" % i)
            log.append((yield peer.readline()))
            yield bluelet.sleep(0.002)

    def body(client, server):
        with bluelet.Listener(HOST, 0) as listener:
            other, other_peer = yield open_pair(listener)
        with other, other_peer:
            s, r, c = sender(client), rude_reader(server), chatter(other, other_peer)
            for coro in (s, r, c):
                yield bluelet.spawn(coro)
            for coro in (s, r, c):
                yield bluelet.join(coro)

    on_a_connection(body)
    assert log.count("reset") == 1
    failures = [entry for entry in log if isinstance(entry, type)]
    assert len(failures) == 1 and failures[0] in BROKEN
    assert [entry for entry in log if isinstance(entry, bytes)] == [b"%d\n" % i for i in range(20)]
    assert "sent everything?" not in log


# ---------------------------------------------------------------------------
# recv_into
# ---------------------------------------------------------------------------

def test_recv_into_fills_the_callers_buffer(core):
    def body(client, server):
        buffer = bytearray(8)
        yield client.sendall(b"abcdefghij")
        counts = []
        got = b""
        while len(got) < 10:
            n = yield server.recv_into(buffer)
            counts.append(n)
            got += buffer[:n]
        yield client.sendall(b"xyz")
        view = memoryview(buffer)
        n = yield server.recv_into(view[2:], 2)  # at most nbytes, into a slice
        client.shutdown_write()
        rest = yield server.recv_into(buffer)
        at_end = yield server.recv_into(buffer)
        return got, max(counts), n, bytes(buffer[2:4]), rest, at_end

    assert on_a_connection(body) == (b"abcdefghij", 8, 2, b"xy", 1, 0)


def test_recv_into_serves_bytes_read_ahead_first(core):
    def body(client, server):
        yield client.sendall(b"line\nrest")
        line = yield server.readline()
        buffer = bytearray(100)
        n = yield server.recv_into(buffer)
        return line, bytes(buffer[:n])

    # readline read "rest" along with its line; recv_into gets it, not a wait.
    assert on_a_connection(body) == (b"line\n", b"rest")


def test_a_timed_out_recv_into_loses_nothing(core):
    def body(client, server):
        buffer = bytearray(16)
        with pytest.raises(bluelet.Timeout):
            yield server.recv_into(buffer, timeout=SHORT)
        yield client.sendall(b"late")
        n = yield server.recv_into(buffer)
        return bytes(buffer[:n])

    assert on_a_connection(body) == b"late"


def test_recv_into_bad_buffers_raise_at_the_call(core):
    def body(client, server):
        with pytest.raises(TypeError, match="writable"):
            server.recv_into(b"read-only")
        with pytest.raises(TypeError):
            server.recv_into("text")
        with pytest.raises(ValueError, match="more than the buffer"):
            server.recv_into(bytearray(4), 5)
        with pytest.raises(ValueError, match="room for a byte"):
            server.recv_into(bytearray(0))
        with pytest.raises(ValueError, match=">= 0"):
            server.recv_into(bytearray(4), -1)
        server.close()
        with pytest.raises(bluelet.SocketClosedError):
            server.recv_into(bytearray(4))
        yield bluelet.null()
        return "ok"

    assert on_a_connection(body) == "ok"
