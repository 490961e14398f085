"""Helpers for the image tests: the payload customise.sh installs, and a root to install it in."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_BUILD = REPO / "image-build"
OVERLAY = IMAGE_BUILD / "overlay"


def manifest() -> list[tuple[str, str, int, str, str]]:
    """(kind, path, mode, owner, group) of every line of image-build/manifest.txt."""
    rows = []
    for line in (IMAGE_BUILD / "manifest.txt").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        kind, path, mode, owner, group = line.split()
        rows.append((kind, path, int(mode, 8), owner, group))
    return rows


def small_payload(dst: Path) -> Path:
    """customise.sh, manifest.txt and the overlay (symlinks resolved), without wheels."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(IMAGE_BUILD / "customise.sh", dst / "customise.sh")
    shutil.copy2(IMAGE_BUILD / "manifest.txt", dst / "manifest.txt")
    shutil.copytree(OVERLAY, dst / "overlay", symlinks=False)
    return dst


def empty_root(root: Path) -> Path:
    """The least a root needs for groupadd/usermod --root: passwd, group, shadow, gshadow."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nadm:x:4:\n")
    (etc / "shadow").write_text("root:$y$j9T$abc$def:20000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nadm:*::\n")
    for f in ("shadow", "gshadow"):
        os.chmod(etc / f, 0o640)
    (root / "usr/local/bin").mkdir(parents=True)
    return root


def run_customise(root: Path, payload: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(payload / "customise.sh"), "--root", str(root), "--payload", str(payload), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (owners, groupadd --root, network namespaces)")
