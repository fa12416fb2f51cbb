#!/usr/bin/env bash
# The test suite on CPython 3.14, both cores, in a throwaway Debian sid chroot.
#
#   bash tools/py314_chroot.sh [WORKDIR]      # as root; about 3 minutes
#
# pyenv here stops at 3.13 and cannot download; Debian's newest suite (sid)
# has a signed python3.14. mmdebstrap (from Debian) makes a minimal sid root
# holding it and a compiler; the project's tracked files are copied in, built
# and installed into a venv there with the test extras, and the README's test
# command runs against the installed package (the compiled core required).
# sid's index is signed by keys debian-archive-keyring already has; the
# mirror's copy of it may be past its Valid-Until date, so only that check is
# relaxed, never the signatures. Wheels built in the chroot link sid's glibc:
# they are for this test only. The chroot is removed at the end unless
# WORKDIR was given.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -ge 1 ]; then
    work="$1"
    keep=1
else
    work="$(mktemp -d /tmp/bluelet-py314.XXXXXX)"
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
# The interpreter and a compiler; what the tests start themselves (Redis, a
# virtual X screen, xdotool, Tk for 3.14), so that none of them skips here.
packages=python3.14,python3.14-venv,python3.14-dev,python3.14-tk,gcc,libc6-dev,ca-certificates
packages=$packages,redis-server,xvfb,xdotool
if [ "$(cat "$root/.bluelet-packages" 2>/dev/null)" != "$packages" ]; then
    rm -rf "$root"
    mmdebstrap --quiet --variant=apt --include="$packages" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
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

chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BLUELET_REQUIRE_EXTENSIONS=1 BLUELET_REQUIRE_REDIS=1 BLUELET_REQUIRE_XVFB=1 \
    /bin/bash -euo pipefail -c '
        python3.14 --version
        rm -rf /venv
        python3.14 -m venv /venv
        /venv/bin/python -m pip install -q --upgrade pip
        cd /src
        /venv/bin/python -m pip install -q ".[test]"
        (cd / && /venv/bin/python -c "import bluelet, sys; print(\"bluelet\", bluelet.__version__, \"core:\", bluelet.IMPLEMENTATION, \"on\", sys.version.split()[0])")
        /venv/bin/pytest -q -p no:cacheprovider
        BLUELET_PURE_PYTHON=1 /venv/bin/pytest -q -p no:cacheprovider
    '
