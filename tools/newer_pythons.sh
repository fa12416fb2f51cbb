#!/usr/bin/env bash
# The test suite on the Pythons pyenv here lacks, in a throwaway Debian sid
# chroot: CPython 3.14 (both cores), then a free-threaded CPython 3.13t with
# the GIL off (both cores).
#
#   bash tools/newer_pythons.sh [WORKDIR]     # as root; about 10 minutes
#
# pyenv here stops at 3.13 and cannot download. mmdebstrap (from Debian)
# makes a minimal sid root holding sid's signed python3.14, a compiler, and
# what the tests start themselves (Redis, a virtual X screen, xdotool, Tk).
# sid's index is signed by keys debian-archive-keyring already has; the
# mirror's copy may be past its Valid-Until date, so only that check is
# relaxed, never the signatures.
#
# 3.14: the project's tracked files are copied in, installed into a venv
# with the test extras, and the README's test command runs against the
# installed package (the compiled core required), on each core.
#
# 3.13t: Debian ships no free-threaded build, and the mirror serves no 3.14
# source, but it serves trixie's python3.13 source package. apt fetches it
# (checked against the signed Sources index); its upstream tarball, without
# Debian's patches (which move site-packages and drop ensurepip), is built
# with --disable-gil. The suite then runs with the GIL off, minus the
# modules whose dependencies have no cp313t wheel and need a Rust or libuv
# build from source: test_tls.py and test_server.py (trustme, which needs
# cryptography) and test_aio.py (uvloop). `import bluelet` must leave the
# GIL off (tests/test_loop_per_thread.py checks it).
#
# Wheels built in the chroot link sid's glibc: they are for these tests
# only. The chroot is removed at the end unless WORKDIR was given (then it
# is reused, with the 3.13t build, by the next run).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -ge 1 ]; then
    work="$1"
    keep=1
else
    work="$(mktemp -d /tmp/bluelet-pythons.XXXXXX)"
    keep=0
fi
mkdir -p "$work"
root="$work/sid"
mounted=()

cleanup() {
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" || true
    done
    if [ "$keep" = 0 ]; then
        rm -rf "$work"
    fi
}
trap cleanup EXIT

if ! command -v mmdebstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >/dev/null
fi
packages=python3.14,python3.14-venv,python3.14-dev,python3.14-tk,gcc,make,libc6-dev
packages=$packages,ca-certificates,xz-utils,redis-server,xvfb,xdotool
# What CPython's own build needs for the modules the tests use.
packages=$packages,libssl-dev,zlib1g-dev,libffi-dev,libbz2-dev,liblzma-dev,libsqlite3-dev
packages=$packages,libreadline-dev,libncurses-dev,uuid-dev,tk-dev
if [ "$(cat "$root/.bluelet-packages" 2>/dev/null)" != "$packages" ]; then
    rm -rf "$root"
    mmdebstrap --quiet --variant=apt --include="$packages" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --setup-hook='echo "deb-src http://deb.debian.org/debian trixie main" >> "$1/etc/apt/sources.list"' \
        sid "$root" http://deb.debian.org/debian
    echo "$packages" > "$root/.bluelet-packages"
fi

rm -rf "$root/src"
mkdir -p "$root/src"
(cd "$repo" && git ls-files -z | xargs -0 cp --parents -t "$root/src")
# pip inside reaches PyPI the way the host does: its resolver and CA bundle.
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca-bundle.crt"
for fs in proc sys dev; do
    mount --bind "/$fs" "$root/$fs"
    mounted+=("$root/$fs")
done

inside() {
    chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        BLUELET_REQUIRE_EXTENSIONS=1 BLUELET_REQUIRE_REDIS=1 BLUELET_REQUIRE_XVFB=1 \
        /bin/bash -euo pipefail -c "$1"
}

# --- CPython 3.14 ------------------------------------------------------------
inside '
    python3.14 --version
    rm -rf /venv314
    python3.14 -m venv /venv314
    /venv314/bin/python -m pip install -q --upgrade pip
    cd /src
    /venv314/bin/python -m pip install -q ".[test]"
    (cd / && /venv314/bin/python -c "import bluelet, sys; print(\"bluelet\", bluelet.__version__, \"core:\", bluelet.IMPLEMENTATION, \"on\", sys.version.split()[0])")
    /venv314/bin/pytest -q -p no:cacheprovider
    BLUELET_PURE_PYTHON=1 /venv314/bin/pytest -q -p no:cacheprovider
'

# --- free-threaded CPython 3.13t -------------------------------------------------
inside '
    if [ ! -x /opt/py313t/bin/python3.13t ]; then
        apt-get -o Acquire::Check-Valid-Until=false update -qq
        mkdir -p /build && chown _apt /build && cd /build
        apt-get source -qq --download-only python3.13/trixie
        rm -rf upstream && mkdir upstream
        tar -C upstream -xf python3.13_*.orig.tar.xz
        cd upstream/*
        ./configure -q --disable-gil --prefix=/opt/py313t --with-ensurepip=install >/build/configure.log
        make -j"$(nproc)" -s >/build/make.log 2>&1
        make -s install >/build/install.log 2>&1
    fi
    /opt/py313t/bin/python3.13t -VV
    rm -rf /venv313t
    /opt/py313t/bin/python3.13t -m venv /venv313t
    /venv313t/bin/python -m pip install -q --upgrade pip
    cd /src
    /venv313t/bin/python -m pip install -q .
    # Wheels only: a dependency without a cp313t wheel would need a Rust
    # toolchain to build.
    /venv313t/bin/python -m pip install -q --only-binary :all: pytest pytest-timeout \
        hypothesis redis aiohttp
    (cd / && /venv313t/bin/python -c "import bluelet, sys; print(\"bluelet\", bluelet.__version__, \"core:\", bluelet.IMPLEMENTATION, \"GIL enabled:\", sys._is_gil_enabled())")
    skip="--ignore tests/test_tls.py --ignore tests/test_server.py --ignore tests/test_aio.py"
    /venv313t/bin/pytest -q -p no:cacheprovider $skip
    BLUELET_PURE_PYTHON=1 /venv313t/bin/pytest -q -p no:cacheprovider $skip
'
