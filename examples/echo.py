"""An echo server: every client gets back what it sends.

    python examples/echo.py                 # port 4915, until Ctrl-C
    python examples/echo.py --port 0 --clients 1

then, in another terminal, `nc 127.0.0.1 4915` and type. Each client is
served by its own coroutine; they all share one thread.

Rewritten for today's Python from Adrian Sampson's demo/echo.py in bluelet 0.2.0
(https://github.com/sampsyo/bluelet, MIT).
"""

import argparse

import bluelet


def echoer(conn):
    """Serve one client: read, write back, until it closes its side."""
    host, port = conn.addr[:2]
    print("connected: %s:%d" % (host, port), flush=True)
    try:
        while True:
            data = yield conn.recv(1024)   # suspends this coroutine only
            if not data:                   # b"": the client closed
                break
            yield conn.sendall(data)
    finally:
        print("disconnected: %s:%d" % (host, port), flush=True)
        conn.close()


def echo_server(host, port, clients):
    """Accept clients (forever, or ``clients`` of them) and serve each."""
    listener = bluelet.Listener(host, port)
    print("listening on %s:%d" % (host, listener.port), flush=True)
    try:
        counted = []   # the handlers to wait for, when there is a count
        while clients is None or len(counted) < clients:
            conn = yield listener.accept()
            handler = echoer(conn)
            # spawn: run the handler concurrently and accept the next client.
            yield bluelet.spawn(handler)
            if clients is not None:
                counted.append(handler)
        # Served the count: wait for the last handlers to finish, then stop.
        yield bluelet.join_all(counted)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        listener.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4915, help="0 picks a free port")
    parser.add_argument("--clients", type=int, help="exit after serving this many clients")
    args = parser.parse_args()
    # handle_signals: Ctrl-C becomes KeyboardInterrupt at the server's yield.
    bluelet.run(echo_server(args.host, args.port, args.clients), handle_signals=True)


if __name__ == "__main__":
    main()
