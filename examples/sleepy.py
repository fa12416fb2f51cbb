"""Coroutines that sleep for different times, all at once.

    python examples/sleepy.py               # sleeps of 0, 1, 3 and 5 seconds
    python examples/sleepy.py --scale 0.01  # the same, 100 times faster

Each sleeper announces its sleep at once and wakes in order of duration:
the whole run takes as long as the longest sleep, not the sum of them.

Rewritten for today's Python from Adrian Sampson's demo/sleepy.py in bluelet 0.2.0
(https://github.com/sampsyo/bluelet, MIT).
"""

import argparse
import time

import bluelet


def sleeper(seconds, started):
    print("going to sleep for %g s" % seconds, flush=True)
    yield bluelet.sleep(seconds)   # other coroutines run meanwhile
    print("woke up after %g s (at %.2f s)" % (seconds, time.monotonic() - started), flush=True)


def sleepy(durations):
    started = time.monotonic()
    sleepers = [sleeper(seconds, started) for seconds in durations]
    for coro in sleepers:
        yield bluelet.spawn(coro)
    # join: wait for each to finish (the order of joining does not matter).
    for coro in sleepers:
        yield bluelet.join(coro)
    print("all awake after %.2f s, not %g s" % (time.monotonic() - started, sum(durations)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="seconds per unit of sleep")
    args = parser.parse_args()
    bluelet.run(sleepy([units * args.scale for units in (0, 1, 3, 5)]))


if __name__ == "__main__":
    main()
