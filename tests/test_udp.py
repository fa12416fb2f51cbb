"""UDP: ``bluelet.udp`` and its UDPEndpoint, run once per core.

Every test talks over the loopback interface (127.0.0.1, or ::1) between
endpoints bound to port 0. Exchanges go in lockstep (a client waits for each
reply before sending again), so loopback buffers never overflow and no
datagram can be lost; every run is bounded by ``run_test``'s deadline.
"""

import errno
import socket
import threading

import pytest

import bluelet
from bluelet.testing import run_test
from _helpers import needs_ipv6

pytestmark = [pytest.mark.usefixtures("no_fd_leak"), pytest.mark.timeout(60)]

LOOPBACKS = ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)]


def echo_server(endpoint, count):
    """Coroutine: answer ``count`` datagrams, each with b"echo:" + itself."""
    for _ in range(count):
        data, address = yield endpoint.recvfrom()
        yield endpoint.sendto(b"echo:" + data, address)


def ask(endpoint, server, messages):
    """Coroutine: send each message to ``server`` and collect the replies."""
    replies = []
    for message in messages:
        yield endpoint.sendto(message, server)
        data, address = yield endpoint.recvfrom()
        assert address[:2] == server[:2]
        replies.append(data)
    return replies


# ---------------------------------------------------------------------------
# Exchanges
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", LOOPBACKS)
def test_echo_on_loopback(core, host):
    def main():
        with bluelet.udp(host, 0) as server, bluelet.udp(host, 0) as client:
            assert server.port != 0 and server.sockname[:2] == (host, server.port)
            yield bluelet.spawn(echo_server(server, 3))
            replies = yield ask(client, (host, server.port), [b"one", b"two", b"three"])
            assert replies == [b"echo:one", b"echo:two", b"echo:three"]

    run_test(main())


def test_many_datagrams_from_concurrent_clients_are_all_answered(core):
    clients, rounds = 8, 25

    def client(server, number):
        with bluelet.udp("127.0.0.1", 0) as endpoint:
            messages = [b"%d-%d" % (number, i) for i in range(rounds)]
            replies = yield ask(endpoint, server, messages)
            assert replies == [b"echo:" + m for m in messages]
            return len(replies)

    def main():
        with bluelet.udp("127.0.0.1", 0) as server:
            srv = echo_server(server, clients * rounds)
            yield bluelet.spawn(srv)
            address = ("127.0.0.1", server.port)
            counts = yield bluelet.join_all([client(address, n) for n in range(clients)])
            yield bluelet.join(srv)
        return counts

    assert run_test(main()) == [rounds] * clients


def test_datagram_boundaries_are_preserved(core):
    messages = [b"a", b"bb", b"", b"ccc", bytes(range(256)) * 4]

    def main():
        with bluelet.udp("127.0.0.1", 0) as receiver, bluelet.udp("127.0.0.1", 0) as sender:
            for message in messages:
                sent = yield sender.sendto(message, ("127.0.0.1", receiver.port))
                assert sent == len(message)
            got = []
            for _ in messages:
                data, _ = yield receiver.recvfrom()
                got.append(data)
        return got

    assert run_test(main()) == messages


def test_a_datagram_longer_than_bufsize_is_truncated_and_the_rest_lost(core):
    def main():
        with bluelet.udp("127.0.0.1", 0) as receiver, bluelet.udp("127.0.0.1", 0) as sender:
            address = ("127.0.0.1", receiver.port)
            yield sender.sendto(b"0123456789" * 10, address)
            yield sender.sendto(b"next", address)
            first, _ = yield receiver.recvfrom(10)
            second, _ = yield receiver.recvfrom(10)
        return first, second

    assert run_test(main()) == (b"0123456789", b"next")


def test_sendto_accepts_any_bytes_like_data(core):
    def main():
        with bluelet.udp("127.0.0.1", 0) as receiver, bluelet.udp("127.0.0.1", 0) as sender:
            address = ("127.0.0.1", receiver.port)
            yield sender.sendto(bytearray(b"array"), address)
            yield sender.sendto(memoryview(b"xviewx")[1:-1], address)
            first, _ = yield receiver.recvfrom()
            second, _ = yield receiver.recvfrom()
        return [first, second]

    assert run_test(main()) == [b"array", b"view"]


# ---------------------------------------------------------------------------
# Timeouts and closing
# ---------------------------------------------------------------------------

def test_recvfrom_timeout_raises_timeout_and_the_endpoint_still_works(core):
    def main():
        with bluelet.udp("127.0.0.1", 0) as receiver, bluelet.udp("127.0.0.1", 0) as sender:
            with pytest.raises(bluelet.Timeout):
                yield receiver.recvfrom(timeout=0.05)
            yield sender.sendto(b"late", ("127.0.0.1", receiver.port), timeout=5)
            data, address = yield receiver.recvfrom(timeout=5)
            assert (data, address) == (b"late", sender.sockname)

    run_test(main())


def test_a_waiter_gets_socket_closed_error_when_another_coroutine_closes(core):
    log = []

    def waiter(endpoint):
        try:
            yield endpoint.recvfrom()
        except bluelet.SocketClosedError:
            log.append("closed")
            raise

    def main():
        endpoint = bluelet.udp("127.0.0.1", 0)
        w = waiter(endpoint)
        yield bluelet.spawn(w)
        yield bluelet.sleep(0)  # after the next poll: the waiter waits in recvfrom by then
        assert [t.state for t in bluelet.tasks() if t.coroutine is w] == ["io"]
        endpoint.close()
        with pytest.raises(bluelet.SocketClosedError):
            yield bluelet.join(w)

    run_test(main())
    assert log == ["closed"]


def test_close_is_idempotent_and_calls_on_a_closed_endpoint_raise_at_the_call(core):
    endpoint = bluelet.udp("127.0.0.1", 0)
    event = endpoint.recvfrom()
    endpoint.close()
    endpoint.close()
    assert endpoint.sock.fileno() == -1
    assert "closed" in repr(endpoint)
    with pytest.raises(bluelet.SocketClosedError):
        endpoint.recvfrom()
    with pytest.raises(bluelet.SocketClosedError):
        endpoint.sendto(b"x", ("127.0.0.1", 9))

    def main():
        # Made before the close, yielded after: the same error, not EBADF.
        with pytest.raises(bluelet.SocketClosedError):
            yield event

    run_test(main())


def test_the_context_manager_closes_even_on_error(core):
    with pytest.raises(ZeroDivisionError):
        with bluelet.udp("127.0.0.1", 0) as endpoint:
            assert "fd=" in repr(endpoint)
            1 / 0
    assert endpoint.sock.fileno() == -1
    with pytest.raises(bluelet.SocketClosedError):
        endpoint.recvfrom()


# ---------------------------------------------------------------------------
# Bad input and errors from the OS
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("call, error", [
    (lambda e: e.recvfrom(0), ValueError),
    (lambda e: e.recvfrom(-1), ValueError),
    (lambda e: e.recvfrom("10"), TypeError),
    (lambda e: e.recvfrom(10, timeout="soon"), TypeError),
    (lambda e: e.sendto("text", ("127.0.0.1", 9)), TypeError),
    (lambda e: e.sendto(None, ("127.0.0.1", 9)), TypeError),
    (lambda e: e.sendto(b"x", "127.0.0.1"), TypeError),
    (lambda e: e.sendto(b"x", ("127.0.0.1",)), TypeError),
    (lambda e: e.sendto(b"x", (b"127.0.0.1", 9)), TypeError),
    (lambda e: e.sendto(b"x", ("127.0.0.1", "9")), TypeError),
    (lambda e: e.sendto(b"x", ("127.0.0.1", 65536)), ValueError),
    (lambda e: e.sendto(b"x", ("127.0.0.1", 9), timeout=float("nan")), ValueError),
])
def test_bad_arguments_raise_at_the_call(core, call, error):
    with bluelet.udp("127.0.0.1", 0) as endpoint:
        with pytest.raises(error):
            call(endpoint)


def test_os_errors_raise_at_the_yield_and_end_only_that_coroutine(core):
    def failing(endpoint, data, address):
        yield endpoint.sendto(data, address)

    def main():
        with bluelet.udp("127.0.0.1", 0) as server, bluelet.udp("127.0.0.1", 0) as client:
            yield bluelet.spawn(echo_server(server, 1))
            too_long = failing(client, bytes(70000), ("127.0.0.1", server.port))
            yield bluelet.spawn(too_long)
            with pytest.raises(OSError) as too_long_error:
                yield bluelet.join(too_long)
            assert too_long_error.value.errno == errno.EMSGSIZE
            wrong_family = failing(client, b"x", ("::1", server.port))
            yield bluelet.spawn(wrong_family)
            with pytest.raises(OSError):
                yield bluelet.join(wrong_family)
            # Everything else carries on, this endpoint included.
            assert (yield ask(client, ("127.0.0.1", server.port), [b"still"])) == [b"echo:still"]

    run_test(main())


def test_bind_errors_raise_at_udp(core):
    with bluelet.udp("127.0.0.1", 0) as taken:
        with pytest.raises(OSError):
            bluelet.udp("127.0.0.1", taken.port)


# ---------------------------------------------------------------------------
# Host names: looked up in a worker thread
# ---------------------------------------------------------------------------

class SlowResolver:
    """Stands in for ``socket.getaddrinfo``: a lookup of ``name`` holds its
    thread until ``release`` is set, then answers with 127.0.0.1. Any other
    host, and a numeric-only query (which cannot block), goes to the real
    function."""

    def __init__(self, name):
        self.name = name
        self.started = threading.Event()
        self.release = threading.Event()
        self.real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        flags = args[3] if len(args) > 3 else kwargs.get("flags", 0)
        if host != self.name or flags & socket.AI_NUMERICHOST:
            return self.real(host, port, *args, **kwargs)
        self.started.set()
        # On the loop's thread this would stall everything, then fail.
        if not self.release.wait(5):
            raise AssertionError("the lookup was never released: it blocked the loop")
        return self.real("127.0.0.1", port, *args, **kwargs)


def test_a_host_name_is_looked_up_without_blocking_other_coroutines(core, monkeypatch):
    resolver = SlowResolver("slow.example")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)

    def releaser():
        for _ in range(500):
            if resolver.started.is_set():
                break
            yield bluelet.sleep(0.01)
        resolver.release.set()

    def main():
        with bluelet.udp("127.0.0.1", 0) as receiver, bluelet.udp("127.0.0.1", 0) as sender:
            yield bluelet.spawn(releaser())
            sent = yield sender.sendto(b"by name", ("slow.example", receiver.port))
            data, _ = yield receiver.recvfrom()
        return sent, data

    try:
        assert run_test(main()) == (7, b"by name")
    finally:
        resolver.release.set()


def test_sendto_timeout_covers_the_lookup(core, monkeypatch):
    resolver = SlowResolver("stuck.example")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)

    def main():
        with bluelet.udp("127.0.0.1", 0) as sender:
            with pytest.raises(bluelet.Timeout):
                yield sender.sendto(b"x", ("stuck.example", 9), timeout=0.05)
            assert resolver.started.is_set()

    try:
        run_test(main())
    finally:
        resolver.release.set()


def test_a_failed_lookup_raises_at_the_yield(core, monkeypatch):
    real = socket.getaddrinfo

    def no_such_host(host, *args, **kwargs):
        if host == "nowhere.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)

    def main():
        with bluelet.udp("127.0.0.1", 0) as sender:
            event = sender.sendto(b"x", ("nowhere.example", 9))
            with pytest.raises(socket.gaierror):
                yield event

    run_test(main())
