"""No byte lost to a cancel, no message cut into by another writer.

On both cores, over real loopback sockets: a reader killed after the poll
reported its data but before it ran leaves that data in the socket; a read
raced against a timer in ``first()`` in a loop sees every byte; and many
coroutines writing large messages to one slow reader each get their message
out whole.
"""

import socket
import struct

import pytest

import bluelet
from _helpers import HOST, open_pair

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_fd_leak")]


def close_all(*socks):
    for sock in socks:
        sock.close()


def test_a_reader_killed_before_its_turn_leaves_its_bytes(core):
    """The loop knows bytes are waiting (the poll reported the socket while
    nobody read it), the reader yields its recv, and a kill is handled
    before the reader's turn: the bytes must stay for the next read."""
    got = []

    def reader(conn):
        got.append((yield conn.recv(100)))

    def killer(victim):
        yield bluelet.kill(victim)

    def root():
        listener = bluelet.Listener(HOST, 0)
        client, server = yield from open_pair(listener)
        client.sock.send(b"x")
        assert (yield server.recv(1, timeout=5)) == b"x"   # the socket is now polled
        client.sock.send(b"hello")
        yield bluelet.sleep(0.02)           # a poll reports it; nobody reads
        victim = reader(server)
        yield bluelet.spawn(victim)         # it yields its recv first ...
        yield bluelet.spawn(killer(victim))  # ... then the kill comes
        yield bluelet.sleep(0.02)
        rest = yield server.recv(100, timeout=5)
        close_all(client, server, listener)
        return rest

    assert bluelet.run(root()) == b"hello"
    assert got == []                        # the killed reader received nothing


@pytest.mark.parametrize("race", ["first", "move_on_after"])
def test_a_read_raced_against_a_timer_loses_nothing(core, race):
    total = 256 * 1024

    def sender(conn):
        chunk = bytes(range(256)) * 16      # 4 KiB
        for _ in range(total // len(chunk)):
            yield conn.sendall(chunk)
            yield bluelet.sleep(0)
        conn.close()

    def read_once(conn):
        return (yield conn.recv(65536))

    def tick():
        yield bluelet.sleep(0.0001)
        return None

    def root():
        listener = bluelet.Listener(HOST, 0)
        client, server = yield from open_pair(listener)
        yield bluelet.spawn(sender(client))
        received = bytearray()
        for _ in range(1_000_000):
            if race == "first":
                data = yield bluelet.first([read_once(server), tick()])
            else:
                data = yield bluelet.move_on_after(0.0001, server.recv(65536))
            if data is None:
                continue                    # the timer won: nothing read
            if not data:
                break
            received += data
        close_all(server, listener)
        return bytes(received)

    received = bluelet.run(root())
    assert len(received) == total
    assert received == (bytes(range(256)) * 16) * (total // 4096)


def test_concurrent_sendalls_on_one_connection_stay_whole(core):
    """Eight writers, six 96 KiB messages each, one slow reader: every
    message arrives contiguous (header, then its writer's byte throughout)."""
    writers, messages, size = 2, 24, 96 * 1024

    def writer(conn, wid):
        for seq in range(messages):
            body = bytes([wid]) * size
            yield conn.sendall(struct.pack("!BBI", wid, seq, size) + body)

    def slow_reader(conn):
        seen = []
        for _ in range(writers * messages):
            head = yield conn.readexactly(6, timeout=20)
            wid, seq, length = struct.unpack("!BBI", head)
            body = bytearray()
            while len(body) < length:
                body += yield conn.recv(min(8192, length - len(body)), timeout=20)
                yield bluelet.sleep(0)       # let the writers race
            assert bytes(body) == bytes([wid]) * length, "message %d.%d was cut into" % (wid, seq)
            seen.append((wid, seq))
        return seen

    def root():
        listener = bluelet.Listener(HOST, 0)
        client, server = yield from open_pair(listener)
        # Small buffers: every message takes many partial sends.
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        try:
            gens = [writer(client, wid) for wid in range(writers)]
            for gen in gens:
                yield bluelet.spawn(gen)
            seen = yield slow_reader(server)
            for gen in gens:
                yield bluelet.join(gen)
        finally:
            close_all(client, server, listener)
        return seen

    seen = bluelet.run(root())
    assert sorted(seen) == [(w, s) for w in range(writers) for s in range(messages)]
    for wid in range(writers):                # each writer's messages in its order
        assert [s for w, s in seen if w == wid] == list(range(messages))
