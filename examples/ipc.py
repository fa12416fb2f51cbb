"""Two processes, each running bluelet, exchanging messages over a socket pair.

    python examples/ipc.py --count 5

The parent makes a connected pair of sockets (``socket.socketpair()``),
starts a child process with one end, and keeps the other. Messages are
JSON values, each sent as a 4-byte length and then its bytes. The parent
sends numbers from one coroutine while another reads the child's replies
(their squares) at the same time: a conversation, not lock-step.

Rewritten for today's Python from Adrian Sampson's demo/ipc.py in bluelet 0.2.0
(https://github.com/sampsyo/bluelet, MIT).
"""

import argparse
import json
import multiprocessing
import os
import socket
import struct

import bluelet


class Endpoint:
    """One end of a message channel over a connected stream socket."""

    def __init__(self, sock):
        self.conn = bluelet.Connection(sock, None)

    def send(self, message):
        data = json.dumps(message).encode()
        yield self.conn.sendall(struct.pack("!I", len(data)) + data)

    def receive(self):
        """The next message; None once the other end has closed."""
        header = yield self._exactly(4)
        if not header:
            return None
        (size,) = struct.unpack("!I", header)
        return json.loads((yield self._exactly(size)))

    def _exactly(self, size):
        data = b""
        while len(data) < size:
            chunk = yield self.conn.recv(size - len(data))
            if not chunk:
                if data:
                    raise EOFError("the other end closed in the middle of a message")
                break
            data += chunk
        return data


# --- the child process -----------------------------------------------------

def squarer(endpoint):
    """Answer each number with its square until the parent closes."""
    while True:
        message = yield endpoint.receive()
        if message is None:
            return
        yield endpoint.send({"n": message["n"], "square": message["n"] ** 2, "pid": os.getpid()})


def child_main(sock):
    bluelet.run(squarer(Endpoint(sock)))


# --- the parent process ----------------------------------------------------

def sender(endpoint, count):
    for n in range(1, count + 1):
        yield endpoint.send({"n": n})
    # Half-close: the child reads end of stream once it has every number.
    endpoint.conn.sock.shutdown(socket.SHUT_WR)


def receiver(endpoint):
    while True:
        reply = yield endpoint.receive()
        if reply is None:
            return
        print("child %d says %d squared is %d" % (reply["pid"], reply["n"], reply["square"]),
              flush=True)


def parent_main(sock, count):
    endpoint = Endpoint(sock)
    # Both directions at once: replies are read while numbers are still sent.
    yield bluelet.join_all([sender(endpoint, count), receiver(endpoint)])
    endpoint.conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="numbers to send")
    args = parser.parse_args()
    mine, theirs = socket.socketpair()
    # Start the child before the parent's loop runs: a process must not be
    # forked from inside a running loop.
    child = multiprocessing.Process(target=child_main, args=(theirs,))
    child.start()
    theirs.close()  # the child has its own copy
    bluelet.run(parent_main(mine, args.count))
    child.join()
    print("child exited with status", child.exitcode)


if __name__ == "__main__":
    main()
