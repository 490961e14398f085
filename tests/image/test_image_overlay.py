"""The overlay and manifest agree, and customise.sh stages them into a root with the right
paths, modes, owners, enabled/masked units, group and locked password, idempotently."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.image.conftest import (
    IMAGE_BUILD,
    OVERLAY,
    REPO,
    empty_root,
    manifest,
    run_customise,
    small_payload,
)

pytestmark = pytest.mark.usefixtures("needs_root")

ENABLED = {
    "multi-user.target.wants/watchpost.service": "/etc/systemd/system/watchpost.service",
    "multi-user.target.wants/watchpost-enrol.service": (
        "/etc/systemd/system/watchpost-enrol.service"
    ),
    "systemd-networkd.service.wants/watchpost-bridge-mac.service": (
        "/etc/systemd/system/watchpost-bridge-mac.service"
    ),
}
MASKED = (
    "NetworkManager.service",
    "NetworkManager-wait-online.service",
    "dhcpcd.service",
    "sshswitch.service",
)


def overlay_files() -> set[str]:
    return {
        "/" + str(p.relative_to(OVERLAY))
        for p in OVERLAY.rglob("*")
        if p.is_file() or p.is_symlink()
    }


def test_overlay_and_manifest_agree() -> None:
    listed = {path for kind, path, *_ in manifest() if kind in "fc"}
    assert overlay_files() == listed
    dirs = {path for kind, path, *_ in manifest() if kind == "d"}
    for kind, path, mode, owner, group in manifest():
        assert kind in ("d", "f", "c"), path
        assert owner == "root" and group in ("root", "watchpost"), path
        assert not mode & 0o002, f"{path} is world-writable"
        if kind == "c":
            assert not mode & 0o004, f"{path}: config must not be world-readable"
    assert "/etc/watchpost" in dirs and "/var/lib/watchpost" in dirs


def test_overlay_symlinks_stay_in_the_repo() -> None:
    """The overlay reuses systemd/ (one source of truth); every link resolves inside the repo."""
    links = [p for p in OVERLAY.rglob("*") if p.is_symlink()]
    assert {p.name for p in links} >= {"watchpost.service", "99-watchpost.conf"}
    for p in links:
        target = p.resolve()
        assert target.is_file(), p
        assert target.is_relative_to(REPO / "systemd"), (p, target)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """mode, uid, gid and content hash (or link target) of everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = "-> " + os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            what = "dir"
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return out


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    root = empty_root(tmp_path / "root")
    payload = small_payload(tmp_path / "payload")
    result = run_customise(root, payload, "--no-python")
    assert result.returncode == 0, result.stderr
    return root, payload, result


def test_staged_root(staged: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    root, _payload, result = staged
    group = [line.split(":") for line in (root / "etc/group").read_text().splitlines()]
    gids = {g[0]: int(g[2]) for g in group}
    assert "watchpost" in gids and gids["watchpost"] < 1000  # a system group
    for kind, path, mode, _owner, grp in manifest():
        p = root / path.lstrip("/")
        st = p.lstat()
        assert stat.S_IMODE(st.st_mode) == mode, f"{path}: {oct(st.st_mode)} != {oct(mode)}"
        assert (st.st_uid, st.st_gid) == (0, gids[grp]), path
        if kind == "d":
            assert stat.S_ISDIR(st.st_mode), path
        else:
            assert stat.S_ISREG(st.st_mode), f"{path} must be a plain file, not a link"
            assert p.read_bytes() == (OVERLAY / path.lstrip("/")).read_bytes(), path
    system = root / "etc/systemd/system"
    for link, target in ENABLED.items():
        assert os.readlink(system / link) == target, link
    for unit in MASKED:
        assert os.readlink(system / unit) == "/dev/null", unit
    shadow = (root / "etc/shadow").read_text()
    assert shadow.startswith("root:!"), "root's password must be locked"
    # The distribution units are not in an empty root: said, not silently skipped.
    assert "warning: no systemd-networkd.service in this root" in result.stdout
    assert "done (" in result.stdout


def test_rerun_changes_nothing(staged: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    root, payload, _ = staged
    before = snapshot(root)
    again = run_customise(root, payload, "--no-python")
    assert again.returncode == 0, again.stderr
    assert "0 file(s) installed or updated" in again.stdout
    assert snapshot(root) == before


def test_config_of_an_enrolled_device_is_kept(
    staged: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    root, payload, _ = staged
    cfg = root / "etc/watchpost/watchpost.toml"
    cfg.write_text('[device]\nid = "wp-0042"\n')
    os.chmod(cfg, 0o666)
    unit = root / "etc/systemd/system/watchpost.service"
    unit.write_text("stale\n")
    assert run_customise(root, payload, "--no-python").returncode == 0
    assert cfg.read_text() == '[device]\nid = "wp-0042"\n'
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640  # but its mode is put right
    assert unit.read_bytes() == (REPO / "systemd/watchpost.service").read_bytes()


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    payload = small_payload(tmp_path / "payload")
    r = run_customise(tmp_path / "nowhere", payload, "--no-python")
    assert r.returncode == 1 and "does not look like a root file system" in r.stderr
    root = empty_root(tmp_path / "root")
    r = run_customise(root, payload)  # the venv cannot be made from outside the target
    assert r.returncode == 1 and "must be made inside the target (chroot)" in r.stderr
    with (payload / "manifest.txt").open("a") as f:
        f.write("f /etc/not-in-overlay 0644 root root\n")
    r = run_customise(root, payload, "--no-python")
    assert r.returncode == 1
    assert "manifest: /etc/not-in-overlay: not in the overlay" in r.stderr
    r = subprocess.run(
        [str(IMAGE_BUILD / "customise.sh"), "--bogus"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr


def test_shipped_config_passes_check_config() -> None:
    cfg = OVERLAY / "etc/watchpost/watchpost.toml"
    r = subprocess.run(
        [str(REPO / ".venv/bin/watchpost"), "check-config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{cfg}: ok"
