"""pytest plugin: run generator and ``async def`` tests under bluelet.

Installed with bluelet (a ``pytest11`` entry point) and inactive until used:

* ``@pytest.mark.bluelet`` on a test that is a generator function or an
  ``async def`` runs it under ``bluelet.testing.run_test``, with a real-time
  deadline and a dump of every coroutine when it passes. The marker takes
  ``timeout=`` (seconds, default 5) and ``virtual_time=``.
  ``bluelet_mode = auto`` in the ini file marks every such test.
* ``async def`` fixtures (a coroutine, or an async generator with set-up
  before its ``yield`` and clean-up after it) requested by such a test run
  inside the test's own run, before it, so they may use bluelet I/O and
  spawn coroutines (a server) that live through the test.
* ``bluelet_clock``: a fixture that makes the test run with virtual time and
  gives a ``bluelet.testing.VirtualClock`` (``now()``, ``jump(seconds)``).
* ``--bluelet-seeds=K`` runs each bluelet test under the schedule seeds 0 to
  K-1 (``run(schedule_seed=...)``: the ready coroutines in a shuffled
  order); a failure names its seed, and ``--bluelet-seed=N`` replays it.
* ``--bluelet-core=cython|python|both`` chooses the scheduler core
  (``both``: each test once on each).
"""

import functools
import inspect
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from . import _impl
from .testing import VirtualClock, run_test

_CORES = ("cython", "python")


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("bluelet")
    group.addoption("--bluelet-core", choices=_CORES + ("both",), default=None,
                    help="the core bluelet tests run on (default: the one bluelet chose)")
    group.addoption("--bluelet-seeds", type=int, default=None, metavar="K",
                    help="run each bluelet test under schedule seeds 0..K-1")
    group.addoption("--bluelet-seed", type=int, default=None, metavar="N",
                    help="run each bluelet test under schedule seed N (replays a failure)")
    parser.addini("bluelet_mode", "auto: run every generator or async def test under "
                  "bluelet; strict (default): only those marked bluelet", default="strict")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "bluelet(timeout=5.0, virtual_time=False): run this generator or "
        "async def test under bluelet")


def _is_coroutine_function(func: Any) -> bool:
    return inspect.isgeneratorfunction(func) or inspect.iscoroutinefunction(func)


def _is_bluelet_test(item: Any) -> bool:
    if not isinstance(item, pytest.Function) or not _is_coroutine_function(item.obj):
        return False
    return (item.get_closest_marker("bluelet") is not None
            or item.config.getini("bluelet_mode") == "auto")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: Any) -> Optional[List[Any]]:
    # pytest refuses a test that is a generator function (its yield tests
    # are gone): a bluelet one is collected as any test function is.
    if not (inspect.isgeneratorfunction(obj) and collector.istestfunction(obj, name)):
        return None
    marked = any(mark.name == "bluelet" for mark in getattr(obj, "pytestmark", ()))
    if not (marked or collector.get_closest_marker("bluelet") is not None
            or collector.config.getini("bluelet_mode") == "auto"):
        return None
    return list(collector._genfunctions(name, obj))


def pytest_collection_modifyitems(items: List[Any]) -> None:
    # Auto mode: marked like the rest, so that -m bluelet selects them.
    for item in items:
        if _is_bluelet_test(item) and item.get_closest_marker("bluelet") is None:
            item.add_marker("bluelet")


class _Pending:
    """An ``async def`` fixture of a bluelet test: made inside the test's run."""

    def __init__(self, func: Callable[..., Any], kwargs: Dict[str, Any]) -> None:
        self.func = func
        self.kwargs = kwargs


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Iterator[None]:
    func = fixturedef.func
    # The test that asked for it (request.node is the module for a fixture
    # of module scope).
    test = getattr(request, "_pyfuncitem", request.node)
    if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)) \
            or not _is_bluelet_test(test):
        yield
        return
    if fixturedef.scope != "function":
        raise pytest.UsageError(
            "the async fixture %r has scope %r: async fixtures of bluelet tests run inside "
            "the test's own run, so they must be function-scoped"
            % (fixturedef.argname, fixturedef.scope))

    @functools.wraps(func)
    def pending(*args: Any, **kwargs: Any) -> _Pending:
        return _Pending(functools.partial(func, *args), kwargs)

    fixturedef.func = pending
    try:
        yield
    finally:
        fixturedef.func = func


@pytest.fixture
def bluelet_clock() -> VirtualClock:
    """The virtual clock of this bluelet test, which then runs with
    ``virtual_time=True``: ``now()``, ``jump(seconds)``."""
    return VirtualClock()


async def _resolve(value: Any, made: Dict[int, Any], finalizers: List[Any]) -> Any:
    """``value``, or what the pending fixture ``value`` gives, made once."""
    if not isinstance(value, _Pending):
        return value
    if id(value) not in made:
        kwargs = {name: await _resolve(arg, made, finalizers)
                  for name, arg in value.kwargs.items()}
        result = value.func(**kwargs)
        if inspect.isasyncgen(result):
            made[id(value)] = await result.__anext__()
            finalizers.append(result)
        else:
            made[id(value)] = await result
    return made[id(value)]


async def _finish(agen: Any) -> None:
    try:
        await agen.__anext__()
    except StopAsyncIteration:
        return
    raise RuntimeError("the async fixture %s yielded twice" % (agen.__qualname__,))


async def _with_fixtures(test: Callable[..., Any], funcargs: Dict[str, Any]) -> Any:
    """Make the pending fixtures, run the test, clean the fixtures up (last
    made, first cleaned), all in one run."""
    made: Dict[int, Any] = {}
    finalizers: List[Any] = []
    try:
        args = {name: await _resolve(value, made, finalizers)
                for name, value in funcargs.items()}
        body = test(**args)
        if inspect.isgenerator(body):
            return await _impl.call(body)
        return await body
    finally:
        for agen in reversed(finalizers):
            await _finish(agen)


def _runs(item: Any) -> List[Tuple[Optional[str], Optional[int]]]:
    """The (core, seed) pairs to run ``item`` under."""
    option = item.config.getoption
    core = option("--bluelet-core")
    cores: List[Optional[str]] = list(_CORES) if core == "both" else [core]
    if option("--bluelet-seed") is not None:
        seeds: List[Optional[int]] = [option("--bluelet-seed")]
    elif option("--bluelet-seeds") is not None:
        seeds = list(range(option("--bluelet-seeds")))
    else:
        seeds = [None]
    return [(c, s) for c in cores for s in seeds]


def _run_once(item: Any, core: Optional[str], seed: Optional[int], **options: Any) -> None:
    funcargs = {name: item.funcargs[name] for name in item._fixtureinfo.argnames}
    previous = None if core is None else _impl.use(core)
    try:
        run_test(_with_fixtures(item.obj, funcargs), schedule_seed=seed, **options)
    except BaseException:
        where = ["core %s" % core] if core else []
        if seed is not None:
            where.append("schedule_seed=%d (replay it: --bluelet-seed=%d)" % (seed, seed))
        if where:
            # Shown with the failure's captured output.
            sys.stderr.write("bluelet: %s failed under %s\n" % (item.nodeid, ", ".join(where)))
        raise
    finally:
        if previous is not None:
            _impl.use(previous)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: Any) -> Optional[bool]:
    if not _is_bluelet_test(pyfuncitem):
        return None
    marker = pyfuncitem.get_closest_marker("bluelet")
    options = dict(marker.kwargs) if marker is not None else {}
    if "bluelet_clock" in pyfuncitem.funcargs:
        options["virtual_time"] = True
    for core, seed in _runs(pyfuncitem):
        _run_once(pyfuncitem, core, seed, **options)
    return True
