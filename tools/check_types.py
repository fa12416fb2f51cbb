"""Check that mypy sees the types examples/typed.py says it sees, and
rejects the mistakes bluelet's types are there to catch.

Runs ``mypy --strict`` on examples/typed.py and compares each ``Revealed
type`` note with the ``# revealed: T`` comment on that line; then runs it on
each snippet of MISTAKES, each of which must fail. Exits non-zero, listing
what differs; prints the revealed types and the errors when all is as
expected. Run it from anywhere, with the interpreter whose mypy and bluelet
should be used.
"""

import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(os.path.dirname(HERE), "examples", "typed.py")

NOTE = re.compile(r'^.*?typed\.py:(\d+): note: Revealed type is "(.*)"$')
EXPECTED = re.compile(r"#\s*revealed:\s*(\S+)")


#: Programs mypy must refuse: (what is wrong, the program).
MISTAKES = [
    ("a read is bytes, not int", """
import bluelet
async def f(conn: bluelet.Connection) -> None:
    n: int = await conn.recv(10)
"""),
    ("sendall takes bytes, not str", """
import bluelet
async def f(conn: bluelet.Connection) -> None:
    await conn.sendall("text")
"""),
    ("a forgotten await", """
import bluelet
async def child() -> int:
    return 1
async def f() -> None:
    child()
"""),
    ("a queue of bytes takes no str", """
import bluelet
async def f(q: bluelet.Queue[bytes]) -> None:
    await q.put("text")
"""),
    ("a generator's result type is checked", """
import bluelet
def f(conn: bluelet.Connection) -> bluelet.Gen[int]:
    data = yield from conn.recv(10)
    return data
"""),
    ("a dropped event (with --enable-error-code unused-awaitable)", """
# mypy: enable-error-code="unused-awaitable"
import bluelet
def f(conn: bluelet.Connection) -> bluelet.Gen[None]:
    conn.sendall(b"lost")
    yield bluelet.null()
"""),
    ("run() gives the root's type", """
import bluelet
async def main() -> bytes:
    return b""
n: int = bluelet.run(main())
"""),
]


def mypy(path):
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           "--python-version", "3.9", path],
                          capture_output=True, text=True)
    return done.stdout + done.stderr


def refused():
    """The mistakes mypy let through, and the errors it gave for the rest."""
    missed, said = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for what, program in MISTAKES:
            path = os.path.join(tmp, "mistake.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(program)
            errors = [line.split(": error: ", 1)[1] for line in mypy(path).splitlines()
                      if ": error: " in line]
            if errors:
                said.append("refused, %s: %s" % (what, errors[0]))
            else:
                missed.append("mypy let this through (%s):%s" % (what, program))
    for line in said:
        print(line)
    return missed


def main():
    with open(EXAMPLE, encoding="utf-8") as f:
        expected = {n: m.group(1) for n, line in enumerate(f, 1)
                    for m in [EXPECTED.search(line)] if m}
    output = mypy(EXAMPLE)
    revealed = {}
    errors = []
    for line in output.splitlines():
        m = NOTE.match(line)
        if m:
            revealed[int(m.group(1))] = m.group(2)
        elif ": error:" in line:
            errors.append(line)
    problems = errors + ["line %d: expected %s, mypy revealed %s"
                         % (n, expected.get(n), revealed.get(n))
                         for n in sorted(set(expected) | set(revealed))
                         if expected.get(n) != revealed.get(n)]
    if problems or not expected:
        print("\n".join(problems or ["no '# revealed:' comments in %s" % EXAMPLE]))
        print(output)
        return 1
    for n in sorted(revealed):
        print("examples/typed.py:%d: %s" % (n, revealed[n]))
    missed = refused()
    if missed:
        print("\n".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
