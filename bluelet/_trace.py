"""A timeline of a run: ``run(trace="trace.json")`` and ``python -m bluelet trace``.

``_Tracer`` is an instrument that records, in Chrome's trace-event format
(read by Perfetto, ``chrome://tracing`` and speedscope):

- a track per coroutine (named by its function), in the order spawned;
- a slice per step, from its resume to its next ``yield``;
- a slice per wait between two steps, named by what it waited for;
- an arrow from the step that spawned a coroutine to its first step, and
  from a step that woke a coroutine (a join, a queue, a lock...) to the
  step it then ran;
- the loop's own track, with a slice per I/O poll and how many were ready.

Events are kept in memory and written when the run ends; past
``MAX_EVENTS`` the recording stops (and says so in the file) so a
long-running server cannot grow without bound.

``draw`` turns such a file into a PNG with matplotlib, for people who would
rather look than read.
"""

import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from ._impl import current
from ._instrument import Instrument
from ._records import TaskInfo

__all__ = ["MAX_EVENTS", "draw", "start_trace"]

#: Events recorded at most; then the trace stops growing.
MAX_EVENTS = 1_000_000

_LOOP_TRACK = 0


class _Tracer(Instrument):
    """Records the run's steps, waits, wake-ups and polls as trace events."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._origin = time.perf_counter()
        self._events: List[Dict[str, Any]] = []
        self._full = False
        self._tracks: Dict[int, int] = {}        # id(coroutine) -> track
        self._step_start: Dict[int, float] = {}  # track -> when its step began
        self._wait_start: Dict[int, Tuple[float, str]] = {}  # track -> (when, on what)
        self._arrows: Dict[int, int] = {}        # track -> arrow id ending at its next step
        self._next_arrow = 1
        self._poll_start = 0.0
        self._meta(_LOOP_TRACK, "bluelet loop")

    def _now(self) -> float:
        return (time.perf_counter() - self._origin) * 1e6  # microseconds

    def _add(self, event: Dict[str, Any]) -> None:
        if self._full:
            return
        if len(self._events) >= MAX_EVENTS:
            self._full = True
            self._events.append({"name": "trace stopped: %d events" % MAX_EVENTS, "ph": "i",
                                 "ts": self._now(), "pid": 1, "tid": _LOOP_TRACK, "s": "g"})
            return
        self._events.append(event)

    def _meta(self, track: int, name: str) -> None:
        self._add({"name": "thread_name", "ph": "M", "pid": 1, "tid": track,
                   "args": {"name": name}})
        self._add({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": track,
                   "args": {"sort_index": track}})

    def _track(self, task: TaskInfo) -> int:
        key = id(task.coroutine)
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = len(self._tracks) + 1
            name = getattr(task.coroutine, "__qualname__", None) or repr(task.coroutine)
            self._meta(track, "%s #%d" % (name, track))
        return track

    def _arrow_from_running(self, to_track: int, name: str) -> None:
        """An arrow from the step running now (if any) to ``to_track``'s next step."""
        running = current()
        if running is None or to_track in self._arrows:
            return
        source = self._tracks.get(id(running))
        if source is None or source == to_track:
            return
        arrow = self._next_arrow
        self._next_arrow += 1
        self._arrows[to_track] = arrow
        self._add({"name": name, "cat": "wake", "ph": "s", "id": arrow, "ts": self._now(),
                   "pid": 1, "tid": source})

    def task_spawned(self, task: TaskInfo) -> None:
        self._arrow_from_running(self._track(task), "spawn")

    def task_scheduled(self, task: TaskInfo) -> None:
        self._arrow_from_running(self._track(task), "wake")

    def before_step(self, task: TaskInfo) -> None:
        track = self._track(task)
        now = self._now()
        waited = self._wait_start.pop(track, None)
        if waited is not None:
            self._add({"name": waited[1], "cat": "wait", "ph": "X", "ts": waited[0],
                       "dur": now - waited[0], "pid": 1, "tid": track})
        arrow = self._arrows.pop(track, None)
        if arrow is not None:
            self._add({"name": "wake", "cat": "wake", "ph": "f", "bp": "e", "id": arrow,
                       "ts": now, "pid": 1, "tid": track})
        self._step_start[track] = now

    def after_step(self, task: TaskInfo) -> None:
        track = self._track(task)
        now = self._now()
        start = self._step_start.pop(track, now)
        self._add({"name": "step", "cat": "step", "ph": "X", "ts": start, "dur": now - start,
                   "pid": 1, "tid": track, "args": {"then": task.detail}})
        if task.state != "done":
            self._wait_start[track] = (now, task.detail)

    def before_poll(self, timeout: float) -> None:
        self._poll_start = self._now()

    def after_poll(self, ready: int) -> None:
        now = self._now()
        self._add({"name": "poll: %d ready" % ready, "cat": "poll", "ph": "X",
                   "ts": self._poll_start, "dur": now - self._poll_start, "pid": 1,
                   "tid": _LOOP_TRACK})

    def write(self) -> None:
        """Write the trace file (at the end of the run)."""
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        with open(tmp, "w") as out:
            json.dump({"traceEvents": self._events, "displayTimeUnit": "ms",
                       "otherData": {"producer": "bluelet", "truncated": self._full}}, out)
        os.replace(tmp, self.path)


def start_trace(path: str) -> _Tracer:
    """A tracer writing to ``path`` once the run is over; checked now, so
    an unwritable path fails at the call, not after the run."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError("trace= needs a file path, not %r" % (path,))
    path = os.fspath(path)
    with open(path, "a"):
        pass
    return _Tracer(path)


def draw(path: str, png: str, window: Optional[Tuple[float, float]] = None,
         width: float = 12.0) -> int:
    """Draw the trace at ``path`` as a PNG timeline at ``png``; the number
    of tracks drawn. ``window`` (start, end), in milliseconds from the
    first event, draws only that stretch. Needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as source:
        events = json.load(source)["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    slices = [e for e in events if e.get("ph") == "X"]
    if not slices:
        raise ValueError("%s holds no steps to draw" % path)
    t0 = min(e["ts"] for e in slices)
    if window is not None:
        low, high = t0 + window[0] * 1e3, t0 + window[1] * 1e3
        slices = [dict(e, ts=max(e["ts"], low), dur=min(e["ts"] + e["dur"], high) - max(e["ts"], low))
                  for e in slices if e["ts"] < high and e["ts"] + e["dur"] > low]
        events = [e for e in events if e.get("ph") not in ("s", "f") or low <= e["ts"] <= high]
        if not slices:
            raise ValueError("%s holds nothing between %g and %g ms" % (path, window[0], window[1]))
    tracks = sorted({e["tid"] for e in slices})
    row = {track: index for index, track in enumerate(tracks)}
    colours = {"step": "#1f77b4", "wait": "#d8d8d8", "poll": "#ff7f0e"}
    figure, axes = plt.subplots(figsize=(width, 0.6 + 0.32 * len(tracks)))
    for kind, colour in colours.items():
        bars: Dict[int, List[Tuple[float, float]]] = {}
        for e in slices:
            if e.get("cat") == kind:
                bars.setdefault(e["tid"], []).append(((e["ts"] - t0) / 1e3,
                                                      max(e["dur"] / 1e3, 1e-3)))
        for track, spans in bars.items():
            height = 0.35 if kind == "wait" else 0.7
            axes.broken_barh(spans, (row[track] - height / 2, height), facecolors=colour)
    flows: Dict[Any, Dict[str, Any]] = {}
    for e in events:
        if e.get("ph") in ("s", "f"):
            flows.setdefault(e["id"], {})[e["ph"]] = e
    for flow in flows.values():
        if "s" in flow and "f" in flow:
            start, end = flow["s"], flow["f"]
            axes.annotate("", xy=((end["ts"] - t0) / 1e3, row.get(end["tid"], 0)),
                          xytext=((start["ts"] - t0) / 1e3, row.get(start["tid"], 0)),
                          arrowprops={"arrowstyle": "->", "color": "#2ca02c", "lw": 0.6})
    axes.set_yticks(range(len(tracks)))
    axes.set_yticklabels([names.get(track, str(track)) for track in tracks], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("milliseconds")
    axes.set_title("bluelet timeline: steps (blue), waits (grey), polls (orange), "
                   "wake-ups (green)", fontsize=9)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return len(tracks)


def draw_main(path: str, png: Optional[str], window: Optional[Tuple[float, float]] = None) -> int:
    """``python -m bluelet trace FILE [--png OUT [--window A:B]]``:
    summarise, and draw if asked."""
    with open(path) as source:
        events = json.load(source)["traceEvents"]
    steps = [e for e in events if e.get("cat") == "step"]
    tracks = {e["tid"] for e in steps}
    busy = sum(e["dur"] for e in steps) / 1e3
    print("%s: %d coroutines, %d steps, %.3f ms running coroutines" % (
        path, len(tracks), len(steps), busy))
    if png:
        draw(path, png, window)
        print("drew %s" % png)
    return 0
