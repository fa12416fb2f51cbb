#!/usr/bin/env bash
# Run beets' BPD test-suite against this bluelet, on each core.
#
# BPD, beets' MPD server, is the largest known user of bluelet 0.2.0; beets
# 2.13.1 is the last release vendoring it (beets/util/bluelet.py) and ships
# test/plugins/test_bpd.py (78 tests: 67 pass and 11 are expected failures
# on beets' own copy). This script puts THIS bluelet in place of the
# vendored one and requires the same result, on the compiled core and on the
# pure-Python one; then runs test_cmd_idle_with_pending 30 times per core
# (it is timing-sensitive), and a python-mpd2 client session
# (tools/beets_bpd/mpd_session.py) that checks each idle answer line by line.
#
# Usage:
#   tools/beets_bpd.sh PYTHON       PYTHON has this bluelet installed with its
#                                   compiled core (e.g. "$venv/bin/python");
#                                   that installed package is what is tested
#   tools/beets_bpd.sh --source     install the repo into the side venv instead
#                                   (compiles the core; needs a C compiler)
#   tools/beets_bpd.sh --baseline   the same runs on beets' vendored bluelet 0.2.0
# Environment:
#   BEETS_BPD_WORK=DIR   keep the side venv, beets' tests and the logs in DIR
#                        (reused by the next run); default: a temporary dir,
#                        removed at exit
#   BEETS_BPD_REPEAT=N   runs of test_cmd_idle_with_pending per core (30)
#   BEETS_BPD_ROUNDS=N   idle rounds of each kind in the mpd session (20)
#   PYTHON               interpreter for --source/--baseline (python3)
# Exits non-zero unless every run gives the expected counts (any skip, error
# or missing test is a failure: a suite that did not run must not pass).
#
# Needs root for apt-get the first time: BPD imports GStreamer through
# PyGObject (beetsplug/bpd/gstplayer.py), so the GStreamer runtime, its
# introspection data and libgirepository's headers come from Debian, and
# PyGObject is built from PyPI into the side venv (Debian's python3-gi is
# built for Debian's python3, not the interpreter under test). A stand-in
# gstplayer would test less and drift from beets; the real one installs in
# well under a minute.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
tools="$repo/tools/beets_bpd"
export PIP_DISABLE_PIP_VERSION_CHECK=1

BEETS_VERSION=2.13.1
# The file's 78 tests: 67 pass, 11 are expectedFailure (on beets' own copy).
EXPECT_PASSED=67
EXPECT_XFAILED=11
IDLE_TEST="test/plugins/test_bpd.py::BPDQueryTest::test_cmd_idle_with_pending"
repeat="${BEETS_BPD_REPEAT:-30}"
rounds="${BEETS_BPD_ROUNDS:-20}"

usage() { sed -n '/^# Usage:/,/^# Exits/p' "$0" >&2; exit 2; }
mode=project target_python=""
case "${1:-}" in
    --baseline) mode=baseline; target_python="${PYTHON:-python3}" ;;
    --source) mode=source; target_python="${PYTHON:-python3}" ;;
    -h|--help|"") usage ;;
    -*) usage ;;
    *) target_python="$1" ;;
esac
[ $# -le 1 ] || usage

if [ -n "${BEETS_BPD_WORK:-}" ]; then
    work="$(mkdir -p "$BEETS_BPD_WORK" && cd "$BEETS_BPD_WORK" && pwd)"
else
    work="$(mktemp -d "${TMPDIR:-/tmp}/beets-bpd.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/logs"
venv="$work/venv"
SECONDS=0
timings=()
mark() { timings+=("$(printf '%-46s %4ss' "$1" "$SECONDS")"); SECONDS=0; }

# --- the interpreter and the bluelet under test ---------------------------------
# Asked from / so that a source tree in the working directory cannot answer.
read -r base_python py_version < <(cd / && "$target_python" -c \
    'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
                           "%d.%d" % sys.version_info[:2])')
[ -n "${py_version:-}" ] || { echo "FAILED: cannot run $target_python" >&2; exit 1; }
# beets 2.13.1 needs Python >= 3.10 (and < 3.15).
case "$py_version" in
    3.1[0-4]) ;;
    *) echo "FAILED: beets $BEETS_VERSION does not run on Python $py_version ($target_python)" >&2; exit 1 ;;
esac
bluelet_dir=""
if [ "$mode" = project ]; then
    bluelet_dir="$(cd / && env -u BLUELET_PURE_PYTHON "$target_python" -c \
        'import bluelet, os; print(os.path.dirname(os.path.realpath(bluelet.__file__)))')"
    case "$bluelet_dir" in
        "$repo/bluelet") echo "FAILED: $target_python imports bluelet from the source tree ($bluelet_dir);" \
                        "install the package (pip install $repo), not in editable mode" >&2; exit 1 ;;
    esac
fi

# --- GStreamer from Debian ---------------------------------------------------------
# libgirepository1.0-dev (not 2.0) and PyGObject < 3.51 to match it: both exist
# on Debian 12 and 13.
debs=(gir1.2-gstreamer-1.0 gstreamer1.0-plugins-base libgirepository1.0-dev pkg-config gcc)
missing=()
for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "beets_bpd: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >"$work/logs/apt.log" 2>&1 || { tail -n 30 "$work/logs/apt.log" >&2; exit 1; }
fi
mark "system packages (GStreamer)"

# --- side venv: beets, its test needs, PyGObject ---------------------------------------
# Same interpreter as the bluelet under test, since its compiled core is
# linked in from there (below). Reused when BEETS_BPD_WORK keeps it and
# nothing it was made from has changed.
requirements=("beets==$BEETS_VERSION" "pytest>=8.4,<10" "pytest-timeout>=2.3" "python-mpd2>=3.1,<4")
stamp="$base_python $py_version ${requirements[*]} PyGObject<3.51"
if [ "$(cat "$venv/.beets-bpd-ready" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$venv"
    "$base_python" -m venv "$venv"
    {
        "$venv/bin/python" -m pip install -q --upgrade pip
        # PyGObject without pycairo (BPD draws nothing), built against
        # Debian's libgirepository with no build isolation (meson from here).
        "$venv/bin/python" -m pip install -q meson-python ninja
        "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation \
            -Csetup-args=-Dpycairo=disabled -Csetup-args=-Dtests=false "PyGObject<3.51"
        "$venv/bin/python" -m pip install -q "${requirements[@]}"
    } >"$work/logs/pip.log" 2>&1 || { tail -n 40 "$work/logs/pip.log" >&2; exit 1; }
    # Without the vendored copy, any path to BPD that skips the swap below
    # fails with an ImportError instead of quietly testing bluelet 0.2.0.
    site="$("$venv/bin/python" -c 'import beets.util, os; print(os.path.dirname(beets.util.__file__))')"
    rm -f "$site/bluelet.py" "$site"/__pycache__/bluelet.*
    echo "$stamp" >"$venv/.beets-bpd-ready"
fi
(cd / && "$venv/bin/python" -c '
import gi; gi.require_version("Gst", "1.0")
from gi.repository import Gst; Gst.init(None)
assert Gst.ElementFactory.make("playbin", None) is not None, "no playbin (gstreamer1.0-plugins-base)"
try:
    import beets.util.bluelet
except ImportError:
    pass
else:
    raise SystemExit("the vendored beets/util/bluelet.py is still importable")
')
mark "side venv (beets $BEETS_VERSION, PyGObject, pytest)"

# --- beets' tests, from its sdist ----------------------------------------------------------
# Only test/ is copied out: with beets/ beside it, pytest's rootdir insertion
# would import beets from the sdist rather than the installed package.
if [ ! -f "$work/run/test/plugins/test_bpd.py" ]; then
    rm -rf "$work/sdist" "$work/run"
    "$venv/bin/python" -m pip download -q --no-deps --no-binary beets -d "$work/sdist" \
        "beets==$BEETS_VERSION" >"$work/logs/sdist.log" 2>&1 || { cat "$work/logs/sdist.log" >&2; exit 1; }
    tar -xzf "$work/sdist/beets-$BEETS_VERSION.tar.gz" -C "$work/sdist"
    mkdir -p "$work/run"
    cp -r "$work/sdist/beets-$BEETS_VERSION/test" "$work/run/test"
    # beets keeps no pytest settings; this empty file stops pytest from
    # taking some enclosing directory's (this repo's, say) as its own.
    printf '[pytest]\n' >"$work/run/pytest.ini"
fi
vendored="$work/sdist/beets-$BEETS_VERSION/beets/util/bluelet.py"
mark "beets $BEETS_VERSION tests (sdist)"

# --- which bluelet -------------------------------------------------------------------------
# bluelet_for_beets (a pytest plugin, -p) swaps beets.util.bluelet before BPD
# is imported; PYTHONPATH carries it and, for THIS bluelet, a directory
# holding only a link to the installed package, so that nothing else of
# that environment comes along.
pythonpath="$tools"
cores=()
case "$mode" in
    baseline)
        export BEETS_BPD_VENDORED_BLUELET="$vendored"
        cores=(vendored) ;;
    project)
        mkdir -p "$work/bluelet-path"
        ln -sfn "$bluelet_dir" "$work/bluelet-path/bluelet"
        pythonpath="$work/bluelet-path:$tools"
        cores=(cython python) ;;
    source)
        BLUELET_REQUIRE_EXTENSIONS=1 "$venv/bin/python" -m pip install -q --force-reinstall \
            --no-deps "$repo" >"$work/logs/bluelet-install.log" 2>&1 \
            || { tail -n 40 "$work/logs/bluelet-install.log" >&2; exit 1; }
        cores=(cython python)
        mark "bluelet from $repo into the side venv" ;;
esac

# Runs in $work/run (outside the repo): `import bluelet` must find the
# installed package, never the source tree. The core is chosen by
# BLUELET_PURE_PYTHON, and the plugin refuses to run on another one.
in_env() {  # in_env CORE CMD...
    local core="$1"; shift
    local pure=()
    [ "$core" = python ] && pure=(BLUELET_PURE_PYTHON=1)
    (cd "$work/run" && env -u BLUELET_PURE_PYTHON "${pure[@]}" PYTHONPATH="$pythonpath" \
        BEETS_BPD_EXPECT_IMPLEMENTATION="$([ "$core" = vendored ] || echo "$core")" "$@")
}

# Each core's bluelet, before any run: the wrong one (a pure-only build
# where the compiled core is expected, say) stops everything here.
for core in "${cores[@]}"; do
    in_env "$core" "$venv/bin/python" -c 'import bluelet_for_beets as b
i = b.describe(b.install())
print("core %s: bluelet file=%s version=%s implementation=%s"
      % ("'"$core"'", i["file"], i["version"], i["implementation"]))'
done

status=0
rows=()
# pytest_run NAME CORE EXPECT_PASSED EXPECT_XFAILED PYTEST-ARGS...: one pytest
# process, its output in logs/NAME-CORE.log; true if the counts the plugin
# wrote (left in $last_counts) are exactly the expected ones. The timeout
# signals timeout's whole process group, so the BPD servers forked by a
# hung run go too.
pytest_run() {
    local name="$1" core="$2" want_passed="$3" want_xfailed="$4"; shift 4
    local log="$work/logs/$name-$core.log" counts="$work/logs/$name-$core.counts"
    rm -f "$counts"
    in_env "$core" env BEETS_BPD_COUNTS="$counts" timeout -k 10 600 "$venv/bin/python" -m pytest \
        -p bluelet_for_beets -p no:cacheprovider --timeout=60 -rfEs --tb=short --show-capture=no \
        "$@" >"$log" 2>&1 || true
    if [ ! -s "$counts" ]; then
        last_counts="passed=0 failed=0 xfailed=0 xpassed=0 skipped=0 error=1 exitstatus=-1"
        echo "  $name/$core: pytest gave no counts (crashed, or timed out); its output:" >&2
        tail -n 30 "$log" >&2
        return 1
    fi
    last_counts="$(cat "$counts")"
    [ "$last_counts" = "passed=$want_passed failed=0 xfailed=$want_xfailed xpassed=0 skipped=0 error=0 exitstatus=0" ]
}

# The first LINES lines of pytest's FAILURES section (awk, not a pipe into
# head, whose early exit would kill the script under pipefail).
failures() { awk -v max="$2" '/^=+ FAILURES =+$/ { on = 1 } on && n++ < max' "$1"; }

count() { sed -n "s/.*\b$1=\([0-9-]*\).*/\1/p" <<<"$2"; }
row() {  # row RUN CORE COUNTS VERDICT
    rows+=("$(printf '%-26s %-9s %6s %6s %7s %7s %7s %5s  %s' "$1" "$2" \
        "$(count passed "$3")" "$(count failed "$3")" "$(count xfailed "$3")" \
        "$(count xpassed "$3")" "$(count skipped "$3")" "$(count error "$3")" "$4")")
}

for core in "${cores[@]}"; do
    # The whole file.
    echo "== test_bpd.py on core $core"
    log="$work/logs/test_bpd-$core.log"
    if pytest_run test_bpd "$core" "$EXPECT_PASSED" "$EXPECT_XFAILED" test/plugins/test_bpd.py; then
        verdict=ok
    else
        verdict=FAILED status=1
        failures "$log" 120
        sed -n '/short test summary info/,$p' "$log"
    fi
    # Which bluelet pytest ran on (the plugin's header line), and the result.
    grep -m1 '^bluelet for beets:' "$log" || true
    [ "$verdict" = FAILED ] || tail -n 1 "$log"
    row "test_bpd.py" "$core" "$last_counts" "$verdict"
    mark "test_bpd.py, core $core"

    # The idle test, alone, $repeat times (a fresh process each: pytest-repeat
    # cannot repeat unittest.TestCase tests).
    echo "== $IDLE_TEST x$repeat on core $core"
    passes=0 sum="passed=0 failed=0 xfailed=0 xpassed=0 skipped=0 error=0"
    for ((i = 1; i <= repeat; i++)); do
        if pytest_run "idle-$i" "$core" 1 0 "$IDLE_TEST"; then
            passes=$((passes + 1))
            rm -f "$work/logs/idle-$i-$core.log"
        elif [ "$passes" -eq "$((i - 1))" ]; then
            # The first failure's traceback, for the record.
            failures "$work/logs/idle-$i-$core.log" 40
        fi
        sum="$(for key in passed failed xfailed xpassed skipped error; do
            echo -n "$key=$(( $(count "$key" "$sum") + $(count "$key" "$last_counts") )) "; done)"
    done
    echo "  $passes/$repeat passed"
    if [ "$passes" -eq "$repeat" ]; then verdict=ok; else verdict=FAILED status=1; fi
    row "idle_with_pending x$repeat" "$core" "$sum" "$verdict"
    mark "idle_with_pending x$repeat, core $core"

    # A python-mpd2 client session; its checks fill passed/failed.
    echo "== mpd_session.py ($rounds idle rounds of each kind) on core $core"
    log="$work/logs/mpd_session-$core.log"
    if in_env "$core" timeout -k 10 300 "$venv/bin/python" "$tools/mpd_session.py" \
            --rounds "$rounds" --server-log "$work/logs/mpd_session-$core.server.log" >"$log" 2>&1; then
        verdict=ok
    else
        verdict=FAILED status=1
    fi
    cat "$log"
    summary="$(sed -n 's/^mpd_session: \([0-9]*\) checks ok, \([0-9]*\) checks FAILED.*/passed=\1 failed=\2/p' "$log")"
    row "mpd_session (checks)" "$core" "${summary:-passed=0 failed=1} xfailed=- xpassed=- skipped=- error=-" "$verdict"
    mark "mpd_session, core $core"
done

echo
echo "== beets $BEETS_VERSION BPD on bluelet ($mode)"
printf '%-26s %-9s %6s %6s %7s %7s %7s %5s  %s\n' run core passed failed xfailed xpassed skipped error verdict
printf '%s\n' "${rows[@]}"
echo "expected: test_bpd.py $EXPECT_PASSED passed, $EXPECT_XFAILED xfailed; idle test $repeat/$repeat passed"
echo "time:"
printf '  %s\n' "${timings[@]}"
[ -z "${BEETS_BPD_WORK:-}" ] || echo "logs: $work/logs"
if [ "$status" -ne 0 ]; then
    echo "beets_bpd: FAILED" >&2
fi
exit "$status"
