#!/bin/bash -e
# pi-gen: start from the previous stage's root (stage2: Raspberry Pi OS Lite).
# shellcheck disable=SC2154  # ROOTFS_DIR and copy_previous come from pi-gen's build.sh
if [ ! -d "${ROOTFS_DIR}" ]; then
  copy_previous
fi
