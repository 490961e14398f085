#!/bin/bash
# Build the Watchpost image with pi-gen: build.sh PIGEN_DIR PAYLOAD_DIR
#   PIGEN_DIR    a pi-gen checkout (arm64 branch), on a Debian host with its dependencies
#   PAYLOAD_DIR  made by image-build/build-payload.sh with WHEEL_PLATFORM=manylinux_2_17_aarch64
# Stages: stage0 stage1 stage2 (Raspberry Pi OS Lite, not exported) + stage-watchpost (exported).
set -euo pipefail
die() { echo "pi-gen/build.sh: $*" >&2; exit 1; }
[ $# = 2 ] || die "usage: build.sh PIGEN_DIR PAYLOAD_DIR"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pigen=$(cd "$1" && pwd)
payload=$(cd "$2" && pwd)
{ [ -x "$pigen/build.sh" ] && [ -d "$pigen/stage2" ]; } || die "$pigen is not a pi-gen checkout"
compgen -G "$payload/wheelhouse/cryptography-*aarch64*.whl" >/dev/null \
  || die "$payload has no arm64 wheels (build it with WHEEL_PLATFORM=manylinux_2_17_aarch64)"
touch "$pigen/stage2/SKIP_IMAGES"
rm -rf "$pigen/stage-watchpost"
cp -a "$here/stage-watchpost" "$pigen/stage-watchpost"
{
  cat "$here/config"
  echo "STAGE_LIST=\"stage0 stage1 stage2 $pigen/stage-watchpost\""
} >"$pigen/config.watchpost"
cd "$pigen"
export WATCHPOST_PAYLOAD="$payload"
# pi-gen passes only selected variables to its stages: export ours through its config file too.
echo "export WATCHPOST_PAYLOAD=\"$payload\"" >>"$pigen/config.watchpost"
exec ./build.sh -c config.watchpost
