#!/bin/bash -e
# pi-gen sub-stage (runs on the build host): install the packages of packages.txt and
# packages-rpi.txt, then run the one customise script inside the image's chroot. The payload
# (customise.sh, overlay/, manifest.txt, wheelhouse/ for arm64) is made by
# image-build/build-payload.sh; image-build/pi-gen/build.sh passes its path as WATCHPOST_PAYLOAD.
# shellcheck disable=SC2154  # ROOTFS_DIR and on_chroot come from pi-gen's build.sh
payload=${WATCHPOST_PAYLOAD:?WATCHPOST_PAYLOAD must name the payload directory (build-payload.sh)}
[ -x "${payload}/customise.sh" ] || { echo "stage-watchpost: no customise.sh in ${payload}" >&2; exit 1; }

rm -rf "${ROOTFS_DIR}/tmp/watchpost-payload"
cp -a "${payload}" "${ROOTFS_DIR}/tmp/watchpost-payload"
packages=$(cat "${payload}/packages.txt" "${payload}/packages-rpi.txt" | sed -e 's/#.*//' | xargs)
on_chroot <<CHROOT
set -e
apt-get install -y --no-install-recommends ${packages}
/tmp/watchpost-payload/customise.sh
CHROOT
rm -rf "${ROOTFS_DIR}/tmp/watchpost-payload"
