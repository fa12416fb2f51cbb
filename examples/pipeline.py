"""Child processes in a pipeline: word counts through ``sort | uniq -c``.

    python examples/pipeline.py
    python examples/pipeline.py --text "to be or not to be"

``bluelet.open_process`` starts a child whose piped streams are bluelet
Connections; one child's stdout can be the next one's stdin, as in a shell
pipeline, while a coroutine feeds the first and another reads the last.
``bluelet.run_process`` runs a child to its end (like ``subprocess.run``);
with ``timeout=`` it is stopped -- SIGTERM, SIGKILL after a grace period --
and reaped, and ``bluelet.Timeout`` is raised. Meanwhile the loop serves
every other coroutine: nothing blocks on a child.
"""

import argparse
import subprocess

import bluelet

TEXT = "the quick brown fox jumps over the lazy dog and the dog sleeps"


def feed(conn, words):
    with conn:
        for word in words:
            yield conn.sendall(word.encode() + b"\n")
    # Leaving the block closed stdin: sort sees the end of its input.


def word_counts(text):
    sorter = yield bluelet.open_process(["sort"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)
    # sort's output is handed over: uniq reads it itself, as after a shell's |.
    counter = yield bluelet.open_process(["uniq", "-c"], stdin=sorter.stdout,
                                         stdout=subprocess.PIPE)
    with sorter, counter:
        yield bluelet.spawn(feed(sorter.stdin, text.split()))
        counts = []
        while True:
            line = yield counter.stdout.readline()
            if not line:
                break
            count, word = line.split()
            counts.append((int(count), word.decode()))
        yield sorter.wait()
        yield counter.wait()
    return sorted(counts, key=lambda item: (-item[0], item[1]))


def main(text):
    for count, word in (yield word_counts(text))[:3]:
        print("%d %s" % (count, word))
    done = yield bluelet.run_process(["echo", "run_process works"], capture_output=True)
    print(done.stdout.decode().strip(), "(exit status %d)" % done.returncode)
    try:
        yield bluelet.run_process(["sleep", "30"], timeout=0.2)
    except bluelet.Timeout:
        print("sleep 30 timed out: stopped and reaped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", default=TEXT, help="the words to count")
    bluelet.run(main(parser.parse_args().text))
