"""``import bluelet.compat as bluelet``: 0.2.0's semantics where the default differs.

On both cores: a socket error during I/O ends the coroutine that yielded it
and its caller gets None (the default raises at the yield); readline has no
length limit (the default refuses 64 KiB); server() looks its Listener up in
the compat module and hands out compat connections.
"""

import errno
import logging
import socket
import struct
from unittest import mock

import pytest

import bluelet
import bluelet.compat
from _helpers import HOST
from bluelet.testing import run_test

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(30)]


def _peer_gone_pair(module):
    """A connection of ``module`` whose peer has closed (sends fail: EPIPE)."""
    mine, theirs = socket.socketpair()
    theirs.close()
    return module.Connection(mine, None)


def test_a_failed_send_ends_the_coroutine_and_its_caller_gets_none(core, caplog):
    conn = _peer_gone_pair(bluelet.compat)
    trace = []

    def sender():
        try:
            yield conn.sendall(b"x" * 10)
            trace.append("after the send")  # never: the coroutine has ended
        finally:
            trace.append("sender finally")

    def root():
        try:
            got = yield sender()
            trace.append(("caller got", got))
            return "root went on"
        finally:
            conn.close()

    assert run_test(root()) == "root went on"
    assert trace == ["sender finally", ("caller got", None)]
    # EPIPE: the peer left, which 0.2.0 did not print either.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_default_raises_the_error_at_the_yield(core):
    conn = _peer_gone_pair(bluelet)

    def root():
        try:
            with pytest.raises(BrokenPipeError):
                yield conn.sendall(b"x" * 10)
        finally:
            conn.close()

    run_test(root())


def test_a_reset_during_readline_gives_the_caller_none(core, caplog):
    def root():
        with bluelet.compat.Listener(HOST, 0) as listener:
            client = socket.create_connection((HOST, listener.port))
            server = yield listener.accept()
        assert type(server) is bluelet.compat.Connection
        with server:
            # Closing with SO_LINGER 0 sends a reset: the server's receive
            # fails with ECONNRESET.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            yield bluelet.sleep(0.05)
            return (yield server.readline())

    assert run_test(root()) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_error_other_than_a_gone_peer_is_logged_with_its_traceback(core, caplog):
    # An unconnected datagram socket: send fails with EDESTADDRREQ.
    conn = bluelet.compat.Connection(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), None)

    def root():
        try:
            return (yield _send_once(conn))
        finally:
            conn.close()

    assert run_test(root()) is None
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.name == "bluelet" and record.levelno == logging.ERROR
    assert record.exc_info[1].errno == errno.EDESTADDRREQ


def _send_once(conn):
    yield conn.send(b"x")
    return "sent"


def test_readline_has_no_length_limit(core):
    line = b"x" * (100 * 1024) + b"\n"

    def read_with(module):
        mine, theirs = socket.socketpair()
        conn, peer = module.Connection(mine, None), bluelet.Connection(theirs, None)
        try:
            yield bluelet.spawn(_send(peer, line))
            return (yield conn.readline())
        finally:
            conn.close()
            peer.close()

    assert run_test(read_with(bluelet.compat)) == line

    def default():
        with pytest.raises(bluelet.LimitExceeded):
            yield from read_with(bluelet)

    run_test(default())


def _send(conn, data):
    yield conn.sendall(data)


def test_server_looks_listener_up_in_compat_and_serves_compat_connections(core):
    seen = []
    real = bluelet.compat.Listener

    def wrapped(host, port):
        listener = real(host, port)
        seen.append(listener.port)
        return listener

    def handler(conn):
        seen.append(type(conn))
        line = yield conn.readline()
        yield conn.sendall(line)

    def root():
        serving = bluelet.compat.server(HOST, 0, handler)
        yield bluelet.spawn(serving)
        yield bluelet.sleep(0)  # the server has made its listener by then
        conn = yield bluelet.compat.connect(HOST, seen[0])
        assert type(conn) is bluelet.compat.Connection
        try:
            yield conn.sendall(b"hello\n")
            return (yield conn.readline())
        finally:
            conn.close()
            yield bluelet.kill(serving)

    with mock.patch("bluelet.compat.Listener", side_effect=wrapped):
        assert run_test(root()) == b"hello\n"
    assert seen[1:] == [bluelet.compat.Connection]


def test_compat_has_the_whole_public_api():
    assert set(bluelet.__all__) <= set(dir(bluelet.compat))
    assert bluelet.compat.spawn is bluelet.spawn
