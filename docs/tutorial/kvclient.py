"""Tutorial, step 3: a client for kvserver.py, with timeouts.

``python kvclient.py GET colour`` sends one command and prints the reply.
"""

import sys

import bluelet


def connect(host, port, seconds=5.0):
    """Coroutine: a Connection to ``(host, port)``, within ``seconds``."""
    return (yield bluelet.timeout(seconds, bluelet.connect(host, port)))


def request(conn, command, seconds=5.0):
    """Coroutine: send one command; the value is the reply, without "\\n".

    Raises bluelet.Timeout if no whole reply comes within ``seconds``: then
    close the connection, since a late reply would be read as the next one's.
    """
    yield conn.sendall(command.encode("utf-8") + b"\n")
    line = yield bluelet.timeout(seconds, conn.readline())
    if not line.endswith(b"\n"):
        raise ConnectionError("the server closed the connection")
    return line[:-1].decode("utf-8")


def main(command, port=4916):
    """Send ``command`` to 127.0.0.1:``port``; return the reply."""
    conn = yield connect("127.0.0.1", port)
    try:
        return (yield request(conn, command))
    finally:
        conn.close()


if __name__ == "__main__":
    print(bluelet.run(main(" ".join(sys.argv[1:]))))
