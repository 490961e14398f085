#!/bin/bash
# Watchpost firmware: assemble the payload that customise.sh installs into an image root:
#   OUT/customise.sh, manifest.txt, packages*.txt, overlay/ (symlinks into systemd/ resolved),
#   OUT/wheelhouse/: the firmware and protocol wheels built from this tree (release/build_wheels.py)
#   plus every pinned dependency of requirements.txt, so the image installs offline.
#
# Usage: build-payload.sh OUT
#   PYTHON        the python whose pip builds the wheels (default: .venv/bin/python, else python3)
#   WHEEL_CACHE   a directory keeping the dependency wheels between runs (optional)
#   WHEEL_PLATFORM  empty: wheels for this machine (the offline test root is amd64 Bookworm, the
#                 same Python 3.11 as the image); or a pip platform tag such as
#                 manylinux_2_17_aarch64 for a Pi image built on another machine: dependency
#                 wheels are then downloaded as binary wheels for that platform and Python 3.11.
set -euo pipefail

die() { echo "build-payload: $*" >&2; exit 1; }
[ $# = 1 ] || die "usage: build-payload.sh OUT"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=$1
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then py="$repo/.venv/bin/python"; else py=python3; fi
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
case "$out/" in "$here"/*) die "OUT must not be inside image-build/ ($out)" ;; esac
rm -rf "$out/overlay" "$out/wheelhouse.new"
install -m 0755 "$here/customise.sh" "$out/customise.sh"
install -m 0644 "$here/manifest.txt" "$here/packages.txt" "$here/packages-rpi.txt" "$out/"
cp -rL "$here/overlay" "$out/overlay"

mkdir -p "$out/wheelhouse.new"
pip=("$py" -m pip --disable-pip-version-check -q)
# The firmware and the protocol package it shares with the hub, one wheel each (release/).
"$py" "$repo/release/build_wheels.py" --out "$out/wheelhouse.new" firmware protocol >/dev/null \
  || die "release/build_wheels.py firmware protocol failed"
# The pinned dependencies: built (or downloaded) once per requirements.txt, Python and
# platform into WHEEL_CACHE when it is set (tests/image sets it), copied from there afterwards.
key=$( { cat "$here/requirements.txt"; "$py" -c 'import sys, sysconfig; print(sys.version_info[:2], sysconfig.get_platform())'; echo "${WHEEL_PLATFORM:-}"; } | sha256sum | cut -c1-16)
deps="$out/deps.new"
if [ -n "${WHEEL_CACHE:-}" ] && [ -f "$WHEEL_CACHE/$key/.complete" ]; then
  deps="$WHEEL_CACHE/$key"
else
  rm -rf "$deps"
  mkdir -p "$deps"
  if [ -z "${WHEEL_PLATFORM:-}" ]; then
    "${pip[@]}" wheel -w "$deps" -r "$here/requirements.txt" \
      || die "pip wheel -r requirements.txt failed"
  else
    "${pip[@]}" download --only-binary=:all: --platform "$WHEEL_PLATFORM" --python-version 3.11 \
      --implementation cp -d "$deps" -r "$here/requirements.txt" \
      || die "no binary wheels for $WHEEL_PLATFORM of every pinned dependency (see requirements.txt)"
  fi
  touch "$deps/.complete"
  if [ -n "${WHEEL_CACHE:-}" ]; then
    mkdir -p "$WHEEL_CACHE"
    rm -rf "${WHEEL_CACHE:?}/$key"
    mv "$deps" "$WHEEL_CACHE/$key"
    deps="$WHEEL_CACHE/$key"
  fi
fi
cp "$deps"/*.whl "$out/wheelhouse.new/"
rm -rf "$out/deps.new"
rm -rf "$out/wheelhouse"
mv "$out/wheelhouse.new" "$out/wheelhouse"
echo "build-payload: $out ($(find "$out/wheelhouse" -name '*.whl' | wc -l) wheels)"
