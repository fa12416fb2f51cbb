"""A python-mpd2 client session against beets' BPD, counting idle answers.

BPD is started as beets' test_bpd.py starts it: ``beets.ui.main`` in a
forked process, on a temporary library of two tracks, listening on
127.0.0.1 with ports 0 (the ports are read back through a wrapped
``beets.util.bluelet.Listener``). The bluelet under it is the one
bluelet_for_beets puts in place (see there).

Then, on that server:

* python-mpd2: status, add a track, idle (the change pending since the add),
  idle answered by a second client's change, close;
* raw protocol, ``--rounds`` times each: idle then a change from a second
  client, and a change then idle (the change pending). MPD answers an idle
  with one ``changed:`` line per subsystem and one ``OK``; python-mpd2 would
  take a duplicate ``changed:``/``OK`` for the answer to the next command,
  so these rounds read the lines themselves, wait for the server to go
  quiet, and ping to check the connection is still in step;
* raw ``idle`` + ``noidle`` (python-mpd2's blocking client has no noidle):
  exactly one ``OK``;
* raw ``close``: the server closes the connection.

Prints one line per check and exits non-zero unless all hold.
Usage: mpd_session.py [--rounds N] [--server-log FILE] [--deadline SECONDS]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from unittest.mock import patch

import bluelet_for_beets  # first: BPD must import the chosen bluelet

import confuse
import mpd
import yaml
from beets.test.helper import TestHelper

HOST = "127.0.0.1"
QUIET = 0.15  # seconds without data after which the server is taken to be done


class _Helper(TestHelper):
    db_on_disk = True  # the forked server opens the library by path


def _start_server(args, assigned_port, log_path):  # runs in the forked child
    # BPD logs every protocol line (beets' test config is verbose): to a file.
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    real_listener = sys.modules["beets.util.bluelet"].Listener

    def listener_wrap(host, port):
        listener = real_listener(host, port)
        assigned_port.put_nowait(listener.sock.getsockname()[1])
        return listener

    with patch("beets.util.bluelet.Listener", side_effect=listener_wrap):
        import beets.ui

        beets.ui.main(args)


class Raw:
    """An MPD connection read line by line, exactly as the server sent it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.buf = b""
        self.eof = False
        hello = self.readline(5.0)
        if not (hello or b"").startswith(b"OK MPD "):
            raise RuntimeError(f"bad hello: {hello!r}")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def readline(self, timeout: float) -> bytes | None:
        """The next line, or None if none is complete within ``timeout``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                return None
            if data:
                self.buf += data
            else:
                self.eof = True
        if b"\n" not in self.buf:
            return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def response(self, timeout: float = 5.0) -> list[bytes]:
        """Lines up to and including the first OK or ACK."""
        lines: list[bytes] = []
        while True:
            line = self.readline(timeout)
            if line is None:
                raise TimeoutError(f"no complete response after {lines!r}")
            lines.append(line)
            if line == b"OK" or line.startswith(b"ACK "):
                return lines

    def rest(self) -> list[bytes]:
        """Whatever else arrives before the server has been quiet for QUIET s."""
        lines = []
        while (line := self.readline(QUIET)) is not None:
            lines.append(line)
        return lines

    def close(self) -> None:
        self.sock.close()


class Checks:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0

    def record(self, name: str, good: bool, detail: str) -> None:
        if good:
            self.ok += 1
        else:
            self.failed += 1
        print(f"  {'ok  ' if good else 'FAIL'} {name}: {detail}", flush=True)


def mpd2_part(port: int, path: str, checks: Checks) -> None:
    a, b = mpd.MPDClient(), mpd.MPDClient()
    a.timeout = b.timeout = 5
    a.idletimeout = 5
    a.connect(HOST, port)
    b.connect(HOST, port)
    status = a.status()
    checks.record("python-mpd2 status", "state" in status and "volume" in status,
                  f"state={status.get('state')} playlistlength={status.get('playlistlength')}")
    a.add(path)
    length = a.status().get("playlistlength")
    checks.record("python-mpd2 add", length == "1", f"playlistlength={length}")
    # The add left a "playlist" change pending for this client.
    try:
        changed = a.idle()
        a.ping()
        good, detail = changed == ["playlist"], f"idle -> {changed}, then ping ok"
    except mpd.base.MPDError as e:
        good, detail = False, f"{type(e).__name__}: {e}"
    checks.record("python-mpd2 idle (pending change)", good, detail)
    # Answered by the other client's change while this one waits.
    timer = threading.Timer(0.1, lambda: b.random(1))
    timer.start()
    try:
        changed = a.idle()
        timer.join()
        a.ping()
        length = a.status().get("playlistlength")
        good = changed == ["options"] and length == "1"
        detail = f"idle -> {changed}, then ping, status (playlistlength={length}) ok"
    except mpd.base.MPDError as e:
        timer.join()
        good, detail = False, f"{type(e).__name__}: {e}"
    checks.record("python-mpd2 idle (second client's change)", good, detail)
    for client in (a, b):
        client.close()
        client.disconnect()
    checks.record("python-mpd2 close", True, "both clients closed")


def raw_rounds(port: int, rounds: int, pending: bool, checks: Checks) -> None:
    raw = Raw(port)
    other = mpd.MPDClient()
    other.timeout = 5
    other.connect(HOST, port)
    exact = changed_lines = ok_lines = 0
    bad: list[str] = []
    state = 0
    for i in range(rounds):
        state ^= 1
        if pending:
            other.random(state)
            raw.send("idle")
        else:
            raw.send("idle")
            time.sleep(0.02)  # the server is idle by now, so the change answers it
            other.random(state)
        try:
            answer = raw.response() + raw.rest()
            raw.send("ping")
            pong = raw.response() + raw.rest()
        except TimeoutError as e:
            answer, pong = [f"timeout: {e}".encode()], []
        changed_lines += sum(line.startswith(b"changed: ") for line in answer)
        ok_lines += answer.count(b"OK")
        if answer == [b"changed: options", b"OK"] and pong == [b"OK"]:
            exact += 1
        elif len(bad) < 3:
            bad.append(f"round {i + 1}: idle answer {answer!r}, ping answer {pong!r}")
    other.close()
    other.disconnect()
    raw.close()
    what = "change then idle" if pending else "idle then change"
    checks.record(f"raw {what}", exact == rounds,
                  f"{exact}/{rounds} rounds exact; {changed_lines} 'changed:' lines and"
                  f" {ok_lines} 'OK' lines in all (one each per round expected)")
    for line in bad:
        print(f"       {line}")


def raw_noidle_close(port: int, checks: Checks) -> None:
    raw = Raw(port)
    raw.send("idle")
    time.sleep(0.02)
    raw.send("noidle")
    try:
        answer = raw.response() + raw.rest()
    except TimeoutError as e:
        answer = [f"timeout: {e}".encode()]
    checks.record("raw idle + noidle", answer == [b"OK"], f"answer {answer!r}")
    raw.send("close")
    line = raw.readline(5.0)
    checks.record("raw close", line is None and raw.eof,
                  "server closed the connection" if raw.eof else f"got {line!r}, no EOF")
    raw.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--server-log", default=os.devnull,
                        help="where the BPD server's output goes (default: nowhere)")
    parser.add_argument("--deadline", type=float, default=240.0,
                        help="give up (exit 2) after this many seconds")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: sys.exit("mpd_session: deadline passed"))
    signal.setitimer(signal.ITIMER_REAL, args.deadline)
    # BPD's server runs in a forked child, which inherits the swapped module.
    mp.set_start_method("fork", force=True)

    module = bluelet_for_beets.install()
    import beetsplug.bpd  # noqa: F401  (here, so the check below means something)

    bluelet_for_beets.check_bpd_uses(module)
    info = bluelet_for_beets.describe(module)
    print(f"mpd_session: bluelet file={info['file']} version={info['version']}"
          f" implementation={info['implementation']}", flush=True)
    checks = Checks()
    with _Helper() as helper:
        items = [helper.add_item(title=f"Track {n}", track=n, album="Album Title",
                                 artist="Artist Name") for n in (1, 2)]
        helper.lib.add_album(items)
        path = os.fsdecode(items[0].destination(relative_to_libdir=True))
        config = {"plugins": "bpd", "bpd": {"host": HOST, "port": 0, "control_port": 0}}
        with tempfile.NamedTemporaryFile("wb", dir=helper.temp_path, suffix=".yaml",
                                         delete=False) as f:
            f.write(yaml.dump(config, Dumper=confuse.Dumper, encoding="utf-8"))
        assigned_port: mp.Queue[int] = mp.Queue(2)
        server = mp.Process(target=_start_server, args=([
            "--library", helper.config["library"].as_filename(),
            "--directory", str(helper.lib_path), "--config", f.name, "bpd"],
            assigned_port, args.server_log))
        server.start()
        try:
            try:
                assigned_port.get(timeout=10)  # the control port
                port = assigned_port.get(timeout=10)
            except queue.Empty:
                checks.record("server start", False,
                              "BPD never made its listener through beets.util.bluelet.Listener"
                              " (or did not start): no port reported in 10 s")
                port = None
            if port is not None:
                mpd2_part(port, path, checks)
                raw_rounds(port, args.rounds, pending=False, checks=checks)
                raw_rounds(port, args.rounds, pending=True, checks=checks)
                raw_noidle_close(port, checks)
        finally:
            server.terminate()
            server.join(timeout=2)
            if server.is_alive():
                server.kill()
                server.join(timeout=2)
    print(f"mpd_session: {checks.ok} checks ok, {checks.failed} checks FAILED"
          f" (core {info['implementation']})", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
