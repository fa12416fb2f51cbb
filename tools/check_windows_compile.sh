#!/usr/bin/env bash
# Cross-compile bluelet's compiled core for Windows x86_64, without Windows.
#
# No Windows machine, and no Windows CPython, can be reached from where
# bluelet is developed, so the core is neither built nor tested on Windows
# there. This catches what can be caught without one: C in _loop.pyx that
# would not compile for Windows, such as a POSIX header or call left outside
# its #if branch. It cythonizes the core as setup.py does, compiles the C
# (no link, no run) with mingw-w64 against CPython's own Windows headers
# (Include/ and PC/pyconfig.h from Debian's source package of the system's
# CPython), with implicit declarations and pointer mismatches as errors,
# and fails if the object still calls one of the POSIX functions the core
# uses on Linux. What it cannot show: that MSVC, which builds CPython's
# Windows releases, accepts the code too; that the core runs on Windows;
# that other CPython versions' headers compile.
#
# Usage: tools/check_windows_compile.sh
# Needs Debian's package archive; root, to install mingw-w64 if it is missing.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/bluelet-windows.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cc=x86_64-w64-mingw32-gcc
# What the core calls on Linux only; none may reach a Windows object.
posix_only="close read write recv send clock_gettime epoll_create1 epoll_ctl epoll_wait"

if ! command -v "$cc" >/dev/null; then
    echo "installing mingw-w64 (Debian's gcc-mingw-w64-x86-64)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-mingw-w64-x86-64 >/dev/null
fi

# --- CPython's Windows headers -----------------------------------------------
# The system's apt sources, as source-package entries, in a private apt
# configuration: the machine's own apt set-up is left as it was.
apt_dir="$work/apt"
mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial"
for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] && sed 's/^Types: .*/Types: deb-src/' "$f" >"$apt_dir/sources/$(basename "$f")"
done
if [ -f /etc/apt/sources.list ]; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >"$apt_dir/sources/main.list"
fi
apt_private=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/sources"
             -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::pkgcache="
             -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=root")
apt-get "${apt_private[@]}" update -qq
version="$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
(cd "$work" && apt-get "${apt_private[@]}" source --download-only -qq "python$version" \
    >/dev/null 2>&1 || true)  # the Debian patches may 404 on a snapshot; the tarball is what counts
tarball="$(ls "$work"/python"$version"_*.orig.tar.* 2>/dev/null | head -n 1)"
if [ -z "$tarball" ]; then
    echo "FAILED: no CPython $version source tarball from Debian's archive" >&2
    exit 1
fi
tar -xf "$tarball" -C "$work" --wildcards '*/Include/*' '*/PC/pyconfig.h'
headers="$(dirname "$(ls -d "$work"/Python-*/Include)")"

# --- cythonize and compile ----------------------------------------------------
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "Cython>=3.0"
cp "$repo/bluelet/_loop.pyx" "$work/_loop.pyx"
"$work/venv/bin/cython" -3 --directive binding=True -o "$work/_loop.c" "$work/_loop.pyx"
"$cc" -c -O2 -Wall -DMS_WIN64 \
    -Werror=implicit-function-declaration -Werror=incompatible-pointer-types -Werror=int-conversion \
    -I"$headers/Include" -I"$headers/PC" "$work/_loop.c" -o "$work/_loop.obj"

# --- what the object needs from outside ---------------------------------------
externals="$(x86_64-w64-mingw32-nm -u "$work/_loop.obj" | awk '{print $NF}' \
    | sed 's/^__imp_//' | grep -v -E '^_?Py' | sort -u | tr '\n' ' ')"
for name in $posix_only; do
    case " $externals " in
        *" $name "*) echo "FAILED: the Windows object calls POSIX $name()" >&2; exit 1 ;;
    esac
done
echo "Windows x86_64 object of the core: compiled against CPython $(basename "$headers")'s" \
     "Windows headers with $("$cc" --version | head -n 1); C library calls: $externals"
