"""Debug mode: a warning for every event dropped without having been
yielded (or awaited), which is a forgotten ``yield``.

On with ``run(debug=True)``, ``BLUELET_DEBUG=1`` or ``python -X dev``. While
it is on, the cores hold each event they make, with where it was made
(``creation_site``), until it is yielded; the loop reports, between passes
and at the end of the run, those nothing else holds any more (``dropped``,
``never_yielded``). This module holds what the two cores share. Off,
nothing is recorded: making an event costs one test of a flag.
"""

import os
import sys
import threading
import warnings
from types import FrameType
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["creation_site", "default", "dropped", "never_yielded", "table_lock"]

#: Held around every use of a core's table of unyielded events: loops in
#: several threads share it, and iterating it while another thread adds to
#: it would fail.
table_lock = threading.Lock()

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep

#: Where an event was made: (filename, line, function, module globals' __name__).
Site = Tuple[str, int, str, Optional[str]]


def default() -> bool:
    """Whether debug mode is on when ``run()`` is not told: BLUELET_DEBUG or
    Python's development mode."""
    return os.environ.get("BLUELET_DEBUG", "") not in ("", "0") or sys.flags.dev_mode


def creation_site() -> Optional[Site]:
    """The first frame outside bluelet: the line of the program that made
    the event (``conn.recv()`` is made in bluelet, asked for there)."""
    frame: Optional[FrameType] = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    if frame is None:
        return None
    return (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name,
            frame.f_globals.get("__name__"))


def never_yielded(event_type: str, site: Site) -> None:
    """Warn, at the line that made it, that an event was never yielded."""
    filename, lineno, function, module = site
    warnings.warn_explicit(
        "bluelet: %s made in %s() was never yielded or awaited (a forgotten yield?)"
        % (event_type, function), RuntimeWarning, filename, lineno, module)


def dropped(unyielded: Dict[int, Tuple[Any, Optional[Site]]]
            ) -> List[Tuple[Any, Optional[Site]]]:
    """Take out of ``unyielded`` (id -> (event, site)) and give the events
    it alone still holds: the program has let go of them unyielded."""
    with table_lock:
        # What a reference count reads for an object held only by its
        # entry, read the same way as the others; then interpreter details
        # (borrowed stack references, say) cancel out.
        unyielded[0] = (object(), None)  # no id() is 0
        counts = {key: sys.getrefcount(entry[0]) for key, entry in unyielded.items()}
        alone = counts.pop(0)
        del unyielded[0]
        return [unyielded.pop(key) for key, count in counts.items() if count <= alone]
