"""Coroutines calling coroutines: values returned, exceptions raised, deep chains.

    python examples/delegation.py
    python examples/delegation.py --depth 100000

``yield child()`` runs ``child`` to the end and evaluates to what it
returns, as a plain function call would; an exception in ``child`` is
raised at that ``yield``. (``yield bluelet.call(child())`` and
``yield bluelet.end(value)`` are the 0.2.0 spellings and still work.)

Rewritten for today's Python from Adrian Sampson's demo/delegation.py in bluelet 0.2.0
(https://github.com/sampsyo/bluelet, MIT).
"""

import argparse
import sys

import bluelet


def child():
    print("child started")
    yield bluelet.null()            # let other coroutines run
    print("child resumed")
    return 42


def parent():
    print("parent started")
    result = yield child()          # a call: wait for child's return value
    print("child returned", result)
    legacy = yield bluelet.call(old_style_child())
    print("old-style child returned", legacy)


def old_style_child():
    yield bluelet.null()
    yield bluelet.end("an end() value")


def failing():
    yield bluelet.null()
    raise ValueError("raised two calls down")


def middle():
    yield failing()                 # not caught here: it goes on up
    print("never printed")


def catcher():
    try:
        yield middle()
    except ValueError as error:
        print("caught:", error)


def total(n):
    """1 + 2 + ... + n, one nested call per term."""
    if n == 0:
        return 0
    return n + (yield total(n - 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=5000, help="nesting of the deep chain")
    args = parser.parse_args()
    bluelet.run(parent())
    bluelet.run(catcher())
    # The scheduler keeps the chain itself, so it may be far deeper than
    # Python's recursion limit.
    print("total(%d) = %d, %d calls deep (the recursion limit is %d)" % (
        args.depth, bluelet.run(total(args.depth)), args.depth, sys.getrecursionlimit()))


if __name__ == "__main__":
    main()
