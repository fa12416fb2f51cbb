#!/usr/bin/env bash
# Build the sdist, check what it carries, and install it from scratch.
#
# The sdist must hold everything to build the compiled core from its Cython
# source and to test and benchmark the package, and nothing generated: no C
# from Cython (each install cythonizes _loop.pyx, so the C always matches the
# Cython compiling it), no compiled modules, no bytecode, no virtualenvs.
# It is then installed into a fresh venv with the compiler available, which
# must compile the core (BLUELET_REQUIRE_EXTENSIONS=1), and the compiled core
# is imported from outside the source tree.
#
# Usage: tools/check_sdist.sh [OUTDIR]   (default: dist/; the sdist is left there)
# Environment: PYTHON, the interpreter for the venvs (default python3).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/bluelet-sdist.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q build
"$work/tools/bin/python" -m build --sdist --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; exit 1; }
sdist="$(echo "$work"/dist/*.tar.gz)"
[ -f "$sdist" ] || { echo "FAILED: expected one sdist, got: $sdist" >&2; exit 1; }

# --- what it carries ---------------------------------------------------------
# Paths inside the archive, without the leading "bluelet-VERSION/".
tar -tzf "$sdist" | sed 's|^[^/]*/||' | grep -v '/$' | sort >"$work/files"
problems=0
require() {
    grep -qxE "$1" "$work/files" || { echo "MISSING from the sdist: $1" >&2; problems=1; }
}
for path in README.md LICENSE pyproject.toml setup.py bluelet/__init__.py 'bluelet/_loop\.pyx' \
        'bluelet/_loop\.pyi' 'bluelet/_loop_py\.py' bluelet/py.typed tests/conftest.py 'tests/test_.*\.py' \
        'bench/run\.py' 'bench/loadgen\.c' 'bench/requirements\.txt'; do
    require "$path"
done
# Every tracked source of the package, its tests, examples and docs ships.
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    while read -r path; do
        grep -qxF "$path" "$work/files" || { echo "MISSING from the sdist (tracked): $path" >&2; problems=1; }
    done < <(git -C "$repo" ls-files -- bluelet tests examples docs 'bench/*.py' 'bench/*.c')
fi
if grep -E '^bluelet/.*\.c$|\.(so|pyd|pyc|pyo)$|(^|/)(\.venv[^/]*|__pycache__|build|\.build)/' "$work/files" >&2; then
    echo "GENERATED files in the sdist (listed above)" >&2
    problems=1
fi
[ "$problems" = 0 ] || { echo "FAILED: sdist contents ($sdist)" >&2; exit 1; }
echo "sdist contents OK: $(wc -l <"$work/files") files in $(basename "$sdist") ($(stat -c %s "$sdist") bytes)"

# --- installs from scratch, compiling the core ---------------------------------
"$python" -m venv "$work/venv"
BLUELET_REQUIRE_EXTENSIONS=1 "$work/venv/bin/pip" install -q "$sdist" >"$work/install.log" 2>&1 \
    || { tail -n 40 "$work/install.log" >&2; echo "FAILED: installing the sdist" >&2; exit 1; }
# From $work, not the repo, so the source tree cannot be what is imported.
(cd "$work" && BLUELET_REQUIRE_EXTENSIONS=1 "$work/venv/bin/python" -c '
import bluelet, bluelet._loop
assert bluelet.IMPLEMENTATION == "cython", bluelet.IMPLEMENTATION
assert bluelet._loop.__file__.startswith("'"$work/venv/"'"), bluelet._loop.__file__
print("sdist install OK: bluelet", bluelet.__version__, "core:", bluelet.IMPLEMENTATION, "from", bluelet._loop.__file__)
')
cp "$sdist" "$out/"
echo "$out/$(basename "$sdist")"
