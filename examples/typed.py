"""Typed bluelet, in both styles: what a type checker can follow.

``python examples/typed.py`` runs an echo server written as an ``async def``
and a client written as a generator, and prints the line that came back.
``python tools/check_types.py`` runs mypy on this file: every
``reveal_type`` below must show the type its comment names, so CI notices
when an annotation of bluelet's stops carrying a type through.

What mypy follows: ``await event`` in an ``async def``, and ``yield from
event`` in a generator annotated ``-> bluelet.Gen[T]``. A plain ``data =
yield event`` is ``Any`` to it (Python types a yield by the generator's
send type, which is one for all yields).
"""

from typing import TYPE_CHECKING

import bluelet

HOST = "127.0.0.1"


async def shout(conn: bluelet.Connection) -> None:
    """The server's handler: each line back in capitals."""
    try:
        while True:
            line = await conn.readline()
            if TYPE_CHECKING:
                reveal_type(line)  # revealed: bytes
            if not line:
                break
            await conn.sendall(line.upper())
    finally:
        conn.close()


def ask(port: int, text: bytes) -> bluelet.Gen[bytes]:
    """A client in generator style: one line there and back."""
    conn = yield from bluelet.connect(HOST, port)
    if TYPE_CHECKING:
        reveal_type(conn)  # revealed: bluelet._connection.Connection
    try:
        yield from conn.sendall(text + b"\n")
        answer = yield from conn.readline()
    finally:
        conn.close()
    return answer.rstrip(b"\n")


async def main() -> str:
    with bluelet.Listener(HOST, 0) as listener:
        server = bluelet.serve(listener, shout)
        await bluelet.spawn(server)
        answer = await bluelet.call(ask(listener.port, b"hello"))
        if TYPE_CHECKING:
            reveal_type(answer)  # revealed: bytes
        results: bluelet.Queue[str] = bluelet.Queue()
        await results.put(answer.decode())
        text = await results.get()
        if TYPE_CHECKING:
            reveal_type(text)  # revealed: str
        await bluelet.kill(server)
    return text


if __name__ == "__main__":
    result = bluelet.run(main())
    if TYPE_CHECKING:
        reveal_type(result)  # revealed: str
    print(result)
