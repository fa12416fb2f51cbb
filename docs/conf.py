"""Sphinx configuration for the bluelet documentation.

Build (CI does this with warnings as errors)::

    python -m pip install ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Document the checkout these pages live in, not whichever bluelet happens to
# be installed: the reference must match the source next to it.
sys.path.insert(0, str(ROOT))

# The reference is generated from the pure-Python core. The scheduler core
# exists twice with one API (a surface-parity test checks the names and
# signatures), but its docstrings live once, on the pure twin
# (bluelet/_loop_py.py); the compiled classes in bluelet/_loop.pyx only say
# "Twin of ``bluelet._loop_py.X``". Forcing the pure core before autodoc
# imports bluelet makes every public name resolve to the documented twin, so
# the reference is complete and the same whether or not the extension was
# built (a fresh clone has no compiled core in the source tree anyway).
os.environ["BLUELET_PURE_PYTHON"] = "1"

import bluelet  # noqa: E402  (must follow the environment set above)
import bluelet.testing  # noqa: E402

project = "bluelet"
author = "The bluelet developers"
copyright = "The bluelet developers; MIT licence"
release = bluelet.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown pages link to each other's headings by their slug.
myst_heading_anchors = 4

# Core events and classes are defined in private modules (bluelet._loop_py,
# bluelet._connection, ...); in signatures show them as their public short names.
python_use_unqualified_type_names = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}

html_theme = "alabaster"
html_title = "bluelet %s" % release
html_theme_options = {
    "description": "Concurrent socket programs as plain generator coroutines",
    "fixed_sidebar": True,
    # Wide enough for the benchmark tables and 79-column code.
    "page_width": "1100px",
}


def _check_reference_complete(app, env):
    """Warn (an error under -W) about public names the reference misses.

    The API page lists names by topic rather than with one automodule, so a
    name added to ``bluelet.__all__`` (or ``bluelet.testing.__all__``) must be
    added there too; this keeps the two from drifting apart.
    """
    from sphinx.util import logging

    documented = set(env.get_domain("py").objects)
    for module in (bluelet, bluelet.testing):
        for name in module.__all__:
            qualified = "%s.%s" % (module.__name__, name)
            if qualified not in documented:
                logging.getLogger(__name__).warning(
                    "%s is public but not in the API reference (docs/api.rst)", qualified)


def setup(app):
    """Register the completeness check of the API reference."""
    app.connect("env-check-consistency", _check_reference_complete)
