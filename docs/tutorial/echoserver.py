"""Tutorial, step 1: an echo server.

Run it with ``python echoserver.py`` and talk to it with ``nc 127.0.0.1 4915``.
"""

import bluelet


def echo(conn):
    """Send back everything the client sends, until it hangs up."""
    while True:
        data = yield conn.recv(4096)
        if not data:  # b"": the client closed its end
            return
        yield conn.sendall(data)


if __name__ == "__main__":
    bluelet.run(bluelet.server("127.0.0.1", 4915, echo))
