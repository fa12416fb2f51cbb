"""Tutorial, step 6: tests of the tutorial's programs with bluelet.testing.

Run them with ``pytest docs/tutorial``.
"""

import json
import os

import pytest

import bluelet
import echoserver
import kvclient
import kvload
import kvserver
from bluelet.testing import coroutine_test


def start(handler):
    """Coroutine: serve ``handler`` on a free port; return (server, port)."""
    listener = bluelet.Listener("127.0.0.1", 0)
    server = bluelet.serve(listener, handler)
    yield bluelet.spawn(server)
    return server, listener.port


@coroutine_test
def test_echo():
    server, port = yield start(echoserver.echo)
    conn = yield bluelet.connect("127.0.0.1", port)
    yield conn.sendall(b"hello")
    assert (yield conn.recv(5)) == b"hello"
    conn.close()
    yield bluelet.kill(server)


@coroutine_test
def test_set_get_del():
    store = {}
    server, port = yield start(lambda conn: kvserver.session(store, conn))
    conn = yield kvclient.connect("127.0.0.1", port)
    assert (yield kvclient.request(conn, "SET colour blue")) == "OK"
    assert (yield kvclient.request(conn, "GET colour")) == "blue"
    assert (yield kvclient.request(conn, "DEL colour")) == "OK"
    assert (yield kvclient.request(conn, "GET colour")) == "NOT FOUND"
    assert (yield kvclient.request(conn, "FROB")).startswith("ERROR")
    conn.close()
    yield bluelet.kill(server)


def silent(conn):
    """A server that reads requests and never answers."""
    while (yield conn.recv(4096)):
        pass


@coroutine_test(virtual_time=True)  # the 30-second timeout takes no real time
def test_request_times_out():
    server, port = yield start(silent)
    conn = yield kvclient.connect("127.0.0.1", port)
    with pytest.raises(bluelet.Timeout):
        yield kvclient.request(conn, "GET colour", seconds=30)
    conn.close()
    yield bluelet.kill(server)


@coroutine_test
def test_load_through_a_pool():
    store = {}
    server, port = yield start(lambda conn: kvserver.session(store, conn))
    commands = ["SET k%d v%d" % (i, i) for i in range(200)]
    replies = yield kvload.load("127.0.0.1", port, commands, workers=4)
    assert replies == ["OK"] * 200
    assert store == {"k%d" % i: "v%d" % i for i in range(200)}
    yield bluelet.kill(server)


@coroutine_test
def test_snapshot_saves_the_store(tmp_path):
    store = {"colour": "blue"}
    path = str(tmp_path / "store.json")
    saver = kvserver.snapshot(store, path, every=0.01)
    yield bluelet.spawn(saver)
    while not os.path.exists(path):  # save() renames whole files into place
        yield bluelet.sleep(0.01)
    yield bluelet.kill(saver)
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == store
