#!/bin/bash
# `make image`: what can be built and checked on this machine, then pi-gen where it can run.
#   1. the payload (overlay + customise.sh + wheelhouse for this machine) in build/image/payload
#   2. tests/image: the overlay staged and checked, networkd files, shellcheck, the bridge in a
#      network namespace, and customise.sh in a Debian Bookworm chroot (slow, cached root)
#   3. pi-gen with stage-watchpost, only when PIGEN_DIR is a pi-gen checkout and the Raspberry Pi
#      archive answers; otherwise one line saying what it needs.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=${IMAGE_OUT:-$repo/build/image}
py=${PYTHON:-$repo/.venv/bin/python}
archive=${RPI_ARCHIVE:-http://archive.raspberrypi.com/debian/}

WHEEL_CACHE=${WHEEL_CACHE:-$out/wheel-cache} image-build/build-payload.sh "$out/payload"
WATCHPOST_PAYLOAD="$out/payload" "$py" -m pytest -q tests/image

need=()
if [ -z "${PIGEN_DIR:-}" ] || [ ! -x "${PIGEN_DIR}/build.sh" ]; then
  need+=("PIGEN_DIR=<a pi-gen checkout, arm64 branch>")
fi
if ! curl -fsS --max-time 10 -o /dev/null "${archive}dists/bookworm/InRelease" 2>/dev/null; then
  need+=("the Raspberry Pi archive ($archive), which this machine cannot reach")
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "make image: pi-gen not run: needs $(printf '%s and ' "${need[@]}" | sed 's/ and $//'); the offline checks above passed"
  exit 0
fi
WHEEL_PLATFORM=manylinux_2_17_aarch64 image-build/build-payload.sh "$out/payload-arm64"
image-build/pi-gen/build.sh "$PIGEN_DIR" "$out/payload-arm64"
