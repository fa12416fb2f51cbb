"""Build script: only what pyproject.toml cannot say — the compiled core.

``bluelet._loop`` is compiled from ``bluelet/_loop.pyx`` with Cython. If
``BLUELET_NO_EXTENSIONS=1`` is set, Cython is missing, or there is no working
C compiler, the build goes on without it and the package runs on the
pure-Python core (``bluelet._loop_py``).
"""

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """Compile the core if we can; otherwise say why and install pure Python."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, broken toolchain, ...
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    def _skip(self, exc):
        if _flag("BLUELET_REQUIRE_EXTENSIONS"):
            raise exc
        sys.stderr.write(
            "WARNING: bluelet's compiled core was not built (%s); "
            "installing the pure-Python core.\n" % (exc,))


def _extensions():
    if _flag("BLUELET_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        if _flag("BLUELET_REQUIRE_EXTENSIONS"):
            raise
        sys.stderr.write("WARNING: Cython is not available (%s); installing the pure-Python core.\n" % exc)
        return []
    return cythonize(
        [Extension("bluelet._loop", ["bluelet/_loop.pyx"], extra_compile_args=["-O2"] if os.name != "nt" else [])],
        compiler_directives={"language_level": "3", "binding": True},
        annotate=_flag("BLUELET_ANNOTATE"),
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
