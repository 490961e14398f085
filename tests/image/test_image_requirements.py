"""The image's pinned wheelhouse list covers every runtime dependency the firmware wheel names
(a dependency added to the firmware but not pinned here would make the offline install fail)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_every_firmware_dependency_is_pinned_for_the_image() -> None:
    firmware = tomllib.loads((REPO / "release/wheels/firmware/pyproject.toml").read_text())
    needed = {_name(r) for r in firmware["project"]["dependencies"]} - {"watchpost-protocol"}
    pinned = {
        _name(line)
        for line in (REPO / "image-build/requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert needed <= pinned, f"not pinned in image-build/requirements.txt: {needed - pinned}"
