"""Loops in threads on one port: ``server(..., threads=N)``.

On a free-threaded Python (3.13t, 3.14t, the GIL off), N threads of one
process each run a loop of their own, serving connections that their own
SO_REUSEPORT listener accepts: the kernel spreads new connections among
them, and the loops run on N CPUs at once, with no process per loop and
nothing shared but what the handler shares. The calling coroutine's loop
only waits for them. With the GIL, the threads would take turns on one
CPU: there ``workers=N`` (processes) is the way, and this refuses.

Linux only: elsewhere SO_REUSEPORT does not spread connections.
"""

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from . import _impl
from ._coroutines import FREE_THREADED
from ._errors import Cancelled
from ._listener import Listener, display
from ._prefork import reserve
from ._records import Coro
from ._threads import to_thread

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("bluelet.server")

__all__ = ["check_available", "threaded"]


def check_available(threads: int) -> None:
    """Raise at the call if ``threads`` loops cannot serve in parallel here."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    if not FREE_THREADED or gil:
        raise RuntimeError(
            "server(threads=%d) needs a free-threaded Python (3.13t, 3.14t) with the GIL "
            "off: with the GIL the threads' loops would take turns on one CPU; "
            "use workers=%d (processes) instead" % (threads, threads))
    if not sys.platform.startswith("linux"):
        raise NotImplementedError("server(threads=%d) needs Linux's SO_REUSEPORT, which "
                                  "spreads connections among listeners" % threads)


def threaded(host: str, port: int, backlog: int, ssl: "Optional[ssl.SSLContext]",
             threads: int, service: Callable[[Listener], Coro],
             grace: Optional[float]) -> Coro:
    """Coroutine: serve from ``threads`` loops in threads until stopped.

    A KeyboardInterrupt at its ``yield`` (Ctrl-C, or SIGTERM under
    ``run(..., handle_signals=True)``) stops every loop as Ctrl-C stops
    ``serve()`` (running handlers get ``grace`` seconds), and it returns
    None once all have ended; a kill stops them the same way, then goes on.
    A loop that fails ends the others too, and its exception is raised here.
    """
    # Held, bound but not listening, while the threads' listeners come and
    # go: it keeps the port, and tells which one port 0 gave.
    reserved = reserve(host, port)
    address = reserved.getsockname()
    loops = [_impl.Loop() for _ in range(threads)]
    failures: List[BaseException] = []

    def serve_in_thread(loop: Any) -> None:
        listener = Listener(address[0], address[1], backlog, ssl=ssl, reuse_port=True)
        try:
            loop.run(service(listener))
        except BaseException as error:  # the thread's end: reported by the caller
            failures.append(error)
            stop()
        finally:
            listener.close()

    def stop() -> None:
        for loop in loops:
            loop.interrupt(KeyboardInterrupt())

    workers = [threading.Thread(target=serve_in_thread, args=(loop,), daemon=True,
                                name="bluelet-server-%d" % n) for n, loop in enumerate(loops)]
    log.info("serving on %s with %d threads", display(address), threads)
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            yield to_thread(worker.join)
    except (KeyboardInterrupt, Cancelled) as stopping:
        stop()
        # No yield here: a kill is waiting. This loop has nothing else to run.
        for worker in workers:
            worker.join(None if grace is None else grace + 5)
        if isinstance(stopping, Cancelled):
            raise
    finally:
        reserved.close()
    if failures:
        raise failures[0]
