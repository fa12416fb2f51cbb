"""The ``selectors`` poller, which macOS, the BSDs and Windows use, run on Linux.

Linux has epoll, so the rest of the suite never reaches the core's other
poller. Here each core is made to build a ``_SelectorsPoller`` instead, and
the behaviours that go through the poller -- sleeping with nothing to
watch, socket readiness, a descriptor closed under a waiter, a thread's
completion arriving through the wake-up socket -- are checked on it.
"""

import selectors
import socket

import pytest

import bluelet
from bluelet import _impl
from _helpers import HOST, echoer, pipe_files

pytestmark = pytest.mark.usefixtures("no_fd_leak")


class WindowsLikeSelector(selectors.SelectSelector):
    """select() as Windows has it: asked to watch nothing, it fails."""

    def select(self, timeout=None):
        if not self.get_map():
            raise OSError(10022, "An invalid argument was supplied (WSAEINVAL)")
        return super().select(timeout)


@pytest.fixture
def selectors_poller(core, monkeypatch):
    """The core under test, polling through ``selectors`` (select() as on
    Windows) for this test; the list of pollers it made."""
    module = _impl.load(core)
    made = []

    def new_poller():
        poller = module._SelectorsPoller()
        poller._selector.close()
        poller._selector = WindowsLikeSelector()
        made.append(poller)
        return poller

    monkeypatch.setattr(module, "_new_poller", new_poller)
    yield made


def test_only_sleepers_wait_for_the_deadline(selectors_poller):
    """Nothing registered at all: the wait is a plain sleep, not an error."""
    def sleeper():
        yield bluelet.sleep(0.05)
        return "woke"

    assert bluelet.run(sleeper()) == "woke"
    assert len(selectors_poller) == 1


def test_echo_over_a_socket_pair(selectors_poller):
    a, b = socket.socketpair()
    left, right = bluelet.Connection(a, None), bluelet.Connection(b, None)

    def root():
        yield bluelet.spawn(echoer(right))
        replies = []
        for n in range(20):
            yield left.sendall(b"%d\n" % n)
            replies.append((yield left.readline()))
        left.close()
        return replies

    try:
        assert bluelet.run(root()) == [b"%d\n" % n for n in range(20)]
    finally:
        left.close()
        right.close()
    assert selectors_poller


def test_listener_accept_and_connect(selectors_poller):
    def root():
        with bluelet.Listener(HOST, 0) as listener:
            accepted = []

            def accept_one():
                conn = yield listener.accept()
                accepted.append(conn)
                data = yield conn.recv(10)
                yield conn.sendall(data.upper())
                conn.close()

            yield bluelet.spawn(accept_one())
            with (yield bluelet.connect(HOST, listener.port, timeout=5)) as conn:
                yield conn.sendall(b"hi")
                return (yield conn.recv(10))

    assert bluelet.run(root()) == b"HI"


def test_closing_a_descriptor_wakes_its_waiter(selectors_poller):
    with pipe_files() as (rf, wf):
        def waiter():
            try:
                yield bluelet.wait_readable(rf)
            except bluelet.SocketClosedError:
                return "told"

        def root():
            task = waiter()
            yield bluelet.spawn(task)
            yield bluelet.sleep(0)  # after the next poll: the waiter waits by then
            bluelet.notify_closing(rf)
            return (yield bluelet.join(task))

        assert bluelet.run(root()) == "told"


def test_thread_completion_arrives_through_the_wakeup_socket(selectors_poller):
    def root():
        return (yield bluelet.to_thread(sum, [1, 2, 3]))

    assert bluelet.run(root()) == 6
