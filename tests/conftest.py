"""Run every test that takes the ``core`` fixture once per scheduler core.

The fixture switches the whole ``bluelet`` package to one core (ids
``cython`` and ``python``) for the duration of the test, so tests use the
public API exactly as programs do. Define ``WaitableEvent`` subclasses inside
the test, after the switch, so they derive from the active core's class.

With ``BLUELET_REQUIRE_EXTENSIONS=1`` (CI) a missing compiled core fails the
``cython`` runs instead of skipping them.
"""

import gc
import os
import time

import pytest

import bluelet
from bluelet import _impl

REQUIRE_EXTENSIONS = os.environ.get("BLUELET_REQUIRE_EXTENSIONS", "") not in ("", "0")


def _available(name):
    try:
        _impl.load(name)
    except ImportError:
        return False
    return True


#: The compiled core joins the runs when it is built, or when CI insists on it
#: (then a missing build fails loudly in ``_impl.use``).
CORES = [name for name in ("cython", "python") if REQUIRE_EXTENSIONS or _available(name)]


@pytest.fixture(params=CORES)
def core(request):
    """The name of the core under test; bluelet uses it until the test ends."""
    name = request.param
    previous = _impl.use(name)
    try:
        yield name
    finally:
        _impl.use(previous)


def _open_fds():
    """``{fd: what it points at}`` for this process (Linux's /proc)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass  # the listing's own descriptor, already gone
    return found


@pytest.fixture
def no_fd_leak():
    """Fail the test if it leaves a descriptor open that it did not find.

    Network test modules use it for every test (``pytestmark``). Before
    failing it collects garbage and waits up to a second: a descriptor held
    by a reference cycle, or by a thread still finishing, is not a leak.
    """
    before = _open_fds()
    yield
    leaked = {}
    for _ in range(50):
        leaked = {fd: what for fd, what in _open_fds().items() if before.get(fd) != what}
        if not leaked:
            return
        # Collecting costs tens of milliseconds: only when something is open.
        gc.collect()
        time.sleep(0.02)
    pytest.fail("descriptors leaked: %s" % ", ".join(
        "%d -> %s" % item for item in sorted(leaked.items())))


def pytest_report_header(config):
    """Say which bluelet is under test: CI must test the installed build."""
    return "bluelet %s from %s; cores under test: %s; default core: %s" % (
        bluelet.__version__, os.path.dirname(bluelet.__file__), ", ".join(CORES), _impl.IMPLEMENTATION)
