#!/bin/bash
# Watchpost firmware: turn a Raspberry Pi OS (or Debian) root into a Watchpost appliance.
#
# The one customise step every image tool calls (pi-gen's stage-watchpost, an rpi-image-gen layer,
# the offline test root of tests/image): idempotent, offline, and the same result however often it
# runs. It installs
#   - the files of overlay/ with the modes and owners of manifest.txt (networkd bridge, units,
#     sysctl, modules-load, udev rule, the default config; a config already there is kept),
#   - the firmware release (watchpost + watchpost-protocol): its own venv in
#     /opt/watchpost/releases/<version> (the release folder is the venv, as the updater makes
#     it: appliance/update/layout.py), from the wheels in wheelhouse/ only (no index), with
#     /opt/watchpost/current -> releases/<version> (what an update switches) and
#     /opt/watchpost/bin -> current/bin (what the units run),
#   - the group `watchpost` (may read config and logs), a locked root password,
#   - enabled units (watchpost, the bridge MAC, first-boot enrolment, systemd-networkd/resolved/
#     timesyncd), NetworkManager
#     and dhcpcd masked, SSH off (WATCHPOST_SSH=on keeps it, for development images only).
#
# Usage: customise.sh [--root DIR] [--payload DIR] [--no-python]
#   Normally run as root inside the image's chroot (root /). From the host against a staging root:
#   --root DIR --no-python (files, group and units; the venv needs the target's own python3).
#   The payload (default: this script's directory) holds overlay/, manifest.txt and wheelhouse/;
#   image-build/build-payload.sh assembles it.
set -euo pipefail

ROOT=/
PAYLOAD=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON_STEP=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --payload) PAYLOAD=${2:?--payload needs a directory}; shift 2 ;;
    --no-python) PYTHON_STEP=0; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "customise: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

die() { echo "customise: $*" >&2; exit 1; }
say() { echo "customise: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (it sets owners and enables units)"
[ -d "$ROOT/etc" ] || die "$ROOT does not look like a root file system (no etc/)"
ROOT=$(cd "$ROOT" && pwd)
[ -f "$PAYLOAD/manifest.txt" ] || die "no manifest.txt in $PAYLOAD"
[ -d "$PAYLOAD/overlay" ] || die "no overlay/ in $PAYLOAD"
r() { if [ "$ROOT" = / ]; then printf '%s' "$1"; else printf '%s%s' "$ROOT" "$1"; fi; }

# -- the group -----------------------------------------------------------------------------------
gid_of() { awk -F: -v g="$1" '$1 == g { print $3; found = 1 } END { exit !found }' "$(r /etc/group)"; }
uid_of() { awk -F: -v u="$1" '$1 == u { print $3; found = 1 } END { exit !found }' "$(r /etc/passwd)"; }
if ! gid_of watchpost >/dev/null; then
  if [ "$ROOT" = / ]; then groupadd --system watchpost; else groupadd --root "$ROOT" --system watchpost; fi
  say "group watchpost created"
fi

# -- files ---------------------------------------------------------------------------------------
# Owners are looked up in the target's passwd/group, never the build host's.
changed=0
while read -r kind path mode owner group; do
  case "$kind" in ''|\#*) continue ;; esac
  uid=$(uid_of "$owner") || die "manifest: $path: no user $owner in $(r /etc/passwd)"
  gid=$(gid_of "$group") || die "manifest: $path: no group $group in $(r /etc/group)"
  dest=$(r "$path")
  case "$kind" in
    d) install -d -m "$mode" -o "$uid" -g "$gid" "$dest" ;;
    f|c)
      src="$PAYLOAD/overlay$path"
      [ -f "$src" ] || die "manifest: $path: not in the overlay ($src)"
      if [ "$kind" = c ] && [ -e "$dest" ]; then
        chown "$uid:$gid" "$dest"; chmod "$mode" "$dest"
      elif ! cmp -s "$src" "$dest" 2>/dev/null; then
        install -D -m "$mode" -o "$uid" -g "$gid" "$src" "$dest"; changed=$((changed + 1))
      else
        chown "$uid:$gid" "$dest"; chmod "$mode" "$dest"
      fi ;;
    *) die "manifest: unknown kind '$kind' for $path" ;;
  esac
done <"$PAYLOAD/manifest.txt"
say "$changed file(s) installed or updated"

# -- the firmware release ------------------------------------------------------------------------
if [ "$PYTHON_STEP" = 1 ]; then
  [ "$ROOT" = / ] || die "the release venv must be made inside the target (chroot); use --no-python from outside"
  wheelhouse="$PAYLOAD/wheelhouse"
  shopt -s nullglob
  wheels=("$wheelhouse"/watchpost-*.whl)
  shopt -u nullglob
  [ ${#wheels[@]} = 1 ] || die "needs exactly one watchpost-<version>-*.whl in $wheelhouse, found ${#wheels[@]}"
  version=$(basename "${wheels[0]}" | cut -d- -f2)
  [[ "$version" =~ ^[0-9][0-9A-Za-z.+!]*$ ]] || die "cannot read a version from ${wheels[0]}"
  release=/opt/watchpost/releases/$version
  venv=$release
  if [ -f "$release/.complete" ] && [ "$("$venv/bin/watchpost" --version 2>/dev/null)" = "watchpost, version $version" ]; then
    say "release $version already installed"
  else
    command -v python3 >/dev/null || die "no python3 in the target (packages.txt)"
    python3 -c 'import ensurepip' 2>/dev/null || die "python3 cannot make venvs (install python3-venv)"
    rm -rf "$release"
    # Only the wheelhouse counts: no index, and no pip settings inherited from the build host.
    for v in "${!PIP_@}"; do unset "$v"; done
    export PIP_CONFIG_FILE=/dev/null
    # System site packages: gpiozero finds the Pi archive's python3-lgpio there.
    python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install --quiet --no-index --no-cache-dir --disable-pip-version-check \
      --find-links "$wheelhouse" "watchpost==$version" \
      || die "pip install of watchpost $version from $wheelhouse failed (a dependency wheel missing or for another platform?)"
    [ "$("$venv/bin/watchpost" --version)" = "watchpost, version $version" ] \
      || die "the installed watchpost does not report version $version"
    touch "$release/.complete"
    say "release $version installed in $release"
  fi
  # Switch atomically: a new symlink renamed over the old one.
  ln -sfn "releases/$version" /opt/watchpost/.current.new
  mv -T /opt/watchpost/.current.new /opt/watchpost/current
  ln -sfn current/bin /opt/watchpost/.bin.new
  mv -T /opt/watchpost/.bin.new /opt/watchpost/bin
  ln -sfn /opt/watchpost/bin/watchpost /usr/local/bin/watchpost
fi

# -- units ---------------------------------------------------------------------------------------
have_unit() {
  local d
  for d in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
    [ -e "$(r "$d/$1")" ] && return 0
  done
  return 1
}
sysctl_() { systemctl --root="$ROOT" --quiet "$@"; }
sysctl_ enable watchpost.service watchpost-bridge-mac.service watchpost-enrol.service
for unit in systemd-networkd.service systemd-resolved.service systemd-timesyncd.service; do
  if have_unit "$unit"; then sysctl_ enable "$unit"; else say "warning: no $unit in this root (packages.txt)"; fi
done
# The bridge belongs to systemd-networkd alone.
sysctl_ mask NetworkManager.service NetworkManager-wait-online.service dhcpcd.service
if [ "${WATCHPOST_SSH:-off}" = on ]; then
  say "warning: WATCHPOST_SSH=on: SSH stays as the base image has it (development images only)"
else
  for unit in ssh.service ssh.socket; do
    if have_unit "$unit"; then sysctl_ disable "$unit"; fi
  done
  # Raspberry Pi OS turns SSH on when a file named ssh is on the boot partition: not on ours.
  sysctl_ mask sshswitch.service
fi

# -- no password to log in with ------------------------------------------------------------------
shadow=$(r /etc/shadow)
if [ -f "$shadow" ] && awk -F: '$1 == "root" && $2 !~ /^[!*]/ { found = 1 } END { exit !found }' "$shadow"; then
  if [ "$ROOT" = / ]; then usermod --lock root; else usermod --root "$ROOT" --lock root; fi
  say "root password locked"
fi
say "done ($ROOT)"
