#!/usr/bin/env bash
# Memory safety of the compiled core, on every CI run.
#
# 1. AddressSanitizer and UndefinedBehaviorSanitizer: the core is compiled
#    with -fsanitize=address,undefined and the whole test suite runs on it
#    (libasan preloaded, since the interpreter is not instrumented; Python's
#    own allocator off, so a freed object is freed memory ASan can see; leak
#    detection off, since CPython keeps objects alive until exit by design).
#    Any sanitizer report fails the run, whatever pytest says.
# 2. Reference leaks: Debian's debug interpreter (python3.11-dbg) builds the
#    core and runs tools/refleak.py, which repeats spawn/kill storms,
#    timeouts, scopes, task groups, queues, echo and TLS and fails on steady
#    growth of sys.gettotalrefcount().
#
# Usage: tools/check_memory.sh
# Needs gcc, and root with Debian's archive to install python3.11-dbg.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/bluelet-memory.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The tracked files (the suite runs examples/ and bench/ too), built in
# place in a copy, never in the checkout.
copy_tree() {
    mkdir -p "$1"
    (cd "$repo" && git ls-files -z | xargs -0 cp --parents -t "$1")
}

# --- 1. ASan + UBSan ----------------------------------------------------------
copy_tree "$work/asan"
python3 -m venv "$work/asan-venv"
"$work/asan-venv/bin/python" -m pip install -q --upgrade pip
"$work/asan-venv/bin/python" -m pip install -q --upgrade "setuptools>=77" cython exceptiongroup \
    pytest pytest-timeout hypothesis trustme aiohttp redis uvloop
(
    cd "$work/asan"
    CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g" \
    LDFLAGS="-fsanitize=address,undefined" BLUELET_REQUIRE_EXTENSIONS=1 \
        "$work/asan-venv/bin/python" setup.py -q build_ext --inplace
)
# The flags must have taken: a core built without them would pass silently.
# (grep reads all of ldd's output: -q would quit early, and under pipefail
# ldd's SIGPIPE would fail the check.)
ldd "$work"/asan/bluelet/_loop*.so | grep libasan >/dev/null || {
    echo "memory check: the core was not built with AddressSanitizer" >&2; exit 1; }
log="$work/asan.log"
set +e
(
    cd "$work/asan"
    LD_PRELOAD="$(gcc -print-file-name=libasan.so)" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    PYTHONMALLOC=malloc BLUELET_REQUIRE_EXTENSIONS=1 \
        "$work/asan-venv/bin/python" -m pytest -q -p no:cacheprovider tests
) >"$log" 2>&1
status=$?
set -e
tail -n 3 "$log"
if grep -Eq "ERROR: AddressSanitizer|runtime error:|SUMMARY: UndefinedBehaviorSanitizer" "$log"; then
    grep -E -A 30 "ERROR: AddressSanitizer|runtime error:" "$log" | head -n 80
    echo "memory check: the sanitizers reported errors in the compiled core" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "memory check: the suite failed on the sanitized core (exit $status)" >&2
    exit 1
fi
echo "memory check: ASan+UBSan clean over the whole suite"

# --- 2. Reference leaks on the debug interpreter --------------------------------
if ! command -v python3.11-dbg >/dev/null; then
    echo "installing Debian's python3.11-dbg"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-dbg python3.11-dev \
        python3.11-venv >/dev/null
fi
copy_tree "$work/dbg"
python3.11-dbg -m venv "$work/dbg-venv"
"$work/dbg-venv/bin/python" -m pip install -q --upgrade pip
"$work/dbg-venv/bin/python" -m pip install -q --upgrade "setuptools>=77" cython
(cd "$work/dbg" && BLUELET_REQUIRE_EXTENSIONS=1 "$work/dbg-venv/bin/python" setup.py -q build_ext --inplace)
(cd "$work/dbg" && BLUELET_REQUIRE_EXTENSIONS=1 "$work/dbg-venv/bin/python" tools/refleak.py)
