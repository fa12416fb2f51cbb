"""Make beets' BPD run on a chosen bluelet (a pytest plugin, and a helper).

beets vendors bluelet 0.2.0 as ``beets.util.bluelet``; BPD does
``from beets.util import bluelet``. This module, imported before BPD is,
replaces that module with another one, in ``sys.modules`` and as the
``beets.util.bluelet`` attribute, so that BPD, the test file and the BPD
servers the tests fork (they inherit the parent's modules) all use it.

Which bluelet:

* by default the ``bluelet`` package found on ``sys.path``: this project's
  installed package, the one under test;
* with ``BEETS_BPD_VENDORED_BLUELET=/path/to/beets/util/bluelet.py``, that
  file (beets' own vendored copy, from its sdist): the baseline.

``BEETS_BPD_EXPECT_IMPLEMENTATION`` (``cython`` or ``python``) makes a run on
the wrong core an error instead of a pass on the other core.

``BEETS_BPD_COUNTS=FILE`` has the plugin write the run's outcome counts there
(``passed=N failed=N ...``), so the calling script need not parse pytest's
output.

Use with pytest as ``-p bluelet_for_beets`` (this directory on PYTHONPATH);
other scripts call :func:`install` before importing ``beetsplug.bpd``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

_MODNAME = "beets.util.bluelet"


def _load() -> types.ModuleType:
    vendored = os.environ.get("BEETS_BPD_VENDORED_BLUELET")
    if vendored:
        spec = importlib.util.spec_from_file_location(_MODNAME, vendored)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the vendored bluelet from {vendored!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODNAME] = module
        spec.loader.exec_module(module)
        return module
    import bluelet

    return bluelet


def install() -> types.ModuleType:
    """Put the chosen bluelet in place of ``beets.util.bluelet``; idempotent."""
    current = sys.modules.get(_MODNAME)
    if current is not None and getattr(current, "_bluelet_for_beets", False):
        return current
    if "beetsplug.bpd" in sys.modules:
        # BPD would already hold whatever bluelet it imported first.
        raise RuntimeError("beetsplug.bpd was imported before bluelet_for_beets")
    module = _load()
    import beets.util

    sys.modules[_MODNAME] = module
    beets.util.bluelet = module
    module._bluelet_for_beets = True
    expected = os.environ.get("BEETS_BPD_EXPECT_IMPLEMENTATION")
    if expected and describe(module)["implementation"] != expected:
        raise RuntimeError(
            f"bluelet core is {describe(module)['implementation']!r},"
            f" expected {expected!r} ({module.__file__})"
        )
    return module


def describe(module: types.ModuleType) -> dict[str, str]:
    return {
        "file": str(module.__file__),
        "version": str(getattr(module, "__version__", "none (vendored 0.2.0)")),
        "implementation": str(getattr(module, "IMPLEMENTATION", "vendored")),
    }


def check_bpd_uses(module: types.ModuleType) -> None:
    """Fail unless the imported BPD holds ``module`` as its bluelet."""
    bpd = sys.modules.get("beetsplug.bpd")
    if bpd is not None and bpd.bluelet is not module:
        raise RuntimeError(
            f"beetsplug.bpd uses {bpd.bluelet!r}, not {module!r}"
        )


# --- pytest hooks -------------------------------------------------------------
# Installed at import: pytest imports ``-p`` plugins before any conftest or
# test module, so before anything can import BPD or the vendored copy.
_module = install()


def pytest_report_header(config):
    info = describe(_module)
    return [
        f"bluelet for beets: file={info['file']} version={info['version']}"
        f" implementation={info['implementation']}"
    ]


def pytest_collection_finish(session):
    # The test module has imported BPD by now (unless it skipped, which the
    # calling script treats as a failure).
    check_bpd_uses(_module)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = os.environ.get("BEETS_BPD_COUNTS")
    if not path:
        return
    stats = terminalreporter.stats
    # A skip or an error at collection (say, BPD failing to import) lands in
    # "skipped"/"error" too, so the caller sees it, not just fewer tests.
    keys = ("passed", "failed", "xfailed", "xpassed", "skipped", "error")
    counts = " ".join(f"{key}={len(stats.get(key, []))}" for key in keys)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{counts} exitstatus={int(exitstatus)}\n")
