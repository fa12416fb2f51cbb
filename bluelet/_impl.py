"""The one place that chooses the scheduler core.

The compiled twin (``bluelet._loop``) is used when it imports and
``BLUELET_PURE_PYTHON`` is not set; otherwise the pure twin
(``bluelet._loop_py``). On interpreters other than CPython the pure twin is
always used. ``BLUELET_REQUIRE_EXTENSIONS=1`` turns a missing compiled core
into an ImportError, so CI and wheel tests never test the pure twin by
accident.

Every other module takes the core's names from here. ``use()`` swaps the core
in place, so tests and benchmarks can run both twins in one process.
"""

import os
import platform
import sys
import types
import warnings
from typing import TYPE_CHECKING

from . import _loop_py

if TYPE_CHECKING:
    # The names bound by globals().update() below, as a type checker sees
    # them: from the core's stub, _loop.pyi, which describes both twins.
    from ._loop import *  # noqa: F401,F403

#: The names every core defines (tests/test_parity.py checks the twins agree);
#: the public API re-exports them.
CORE_NAMES = tuple(_loop_py.__all__)


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def load(name: str) -> types.ModuleType:
    """Return the core module called ``name`` ("cython" or "python")."""
    if name == "python":
        return _loop_py
    if name == "cython":
        from . import _loop
        return _loop
    raise ValueError("unknown bluelet core %r (expected 'cython' or 'python')" % (name,))


def _choose() -> str:
    if _flag("BLUELET_PURE_PYTHON") or platform.python_implementation() != "CPython":
        return "python"
    try:
        load("cython")
    except ImportError as exc:
        if _flag("BLUELET_REQUIRE_EXTENSIONS"):
            raise ImportError("bluelet's compiled core (bluelet._loop) is not built in %s; "
                              "BLUELET_REQUIRE_EXTENSIONS=1 forbids the pure-Python "
                              "fallback" % _PACKAGE) from exc
        _warn_fallback(exc)
        return "python"
    return "cython"


_PACKAGE = os.path.dirname(os.path.abspath(__file__))

#: Why the compiled core is not running, when it is not (``python -m bluelet info``).
FALLBACK_REASON = ""


def _warn_fallback(exc: ImportError) -> None:
    """Say once, at import, that the compiled core is missing: a silent
    fallback would leave a program several times slower with no sign why."""
    global FALLBACK_REASON
    if os.path.exists(os.path.join(_PACKAGE, "_loop.pyx")) and \
            os.path.exists(os.path.join(os.path.dirname(_PACKAGE), "setup.py")):
        # From a checkout's root, the source tree shadows the installed package.
        FALLBACK_REASON = (
            "bluelet is imported from the source tree %s, whose compiled core is not built. "
            "Build it in place (python setup.py build_ext --inplace), or import the "
            "installed package from outside the checkout" % _PACKAGE)
    else:
        FALLBACK_REASON = (
            "bluelet's compiled core did not import (%s). Reinstall with a C compiler; pip "
            "may reuse a pure wheel it cached before: pip install --no-cache-dir "
            "--force-reinstall bluelet" % exc)
    warnings.warn(FALLBACK_REASON + ". Running on the pure-Python core; "
                  "BLUELET_PURE_PYTHON=1 chooses it and silences this.",
                  RuntimeWarning, stacklevel=2)


IMPLEMENTATION = _choose()
core = load(IMPLEMENTATION)
globals().update((name, getattr(core, name)) for name in CORE_NAMES)


def use(name: str) -> str:
    """Make core ``name`` the one every bluelet module uses; return the old name.

    Rebinds, in each loaded ``bluelet`` module, the names that still point at
    the current core's objects. For tests and benchmarks that compare the
    twins in one process; programs choose with ``BLUELET_PURE_PYTHON``.
    """
    global IMPLEMENTATION, core
    new = load(name)
    old_name, old = IMPLEMENTATION, core
    swaps = {id(getattr(old, n)): getattr(new, n) for n in CORE_NAMES}
    for mod_name, module in list(sys.modules.items()):
        if module is None or not (mod_name == "bluelet" or mod_name.startswith("bluelet.")):
            continue
        if mod_name in ("bluelet._loop", "bluelet._loop_py"):
            continue  # the cores themselves keep their own objects
        namespace = vars(module)
        for key, value in list(namespace.items()):
            if id(value) in swaps and key in CORE_NAMES:
                namespace[key] = swaps[id(value)]
        if "IMPLEMENTATION" in namespace:
            namespace["IMPLEMENTATION"] = name
    IMPLEMENTATION, core = name, new
    return old_name
