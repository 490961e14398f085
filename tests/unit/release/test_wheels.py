"""The shipped wheels hold their own package only: no hub or lab code on a Pi."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    res = subprocess.run(
        [sys.executable, str(REPO / "release" / "build_wheels.py"), "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def wheels(wheel_dir: Path) -> dict[str, list[str]]:
    out = {}
    for whl in wheel_dir.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            out[whl.name.split("-")[0]] = z.namelist()
    return out


def _top(names: list[str]) -> set[str]:
    return {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}


def test_each_wheel_holds_only_its_package(wheels: dict[str, list[str]]) -> None:
    assert set(wheels) == {"watchpost", "watchpost_protocol", "watchpost_hub", "watchpost_lab"}
    assert _top(wheels["watchpost"]) == {"appliance"}
    assert _top(wheels["watchpost_protocol"]) == {"protocol"}
    assert _top(wheels["watchpost_hub"]) == {"hub"}
    assert _top(wheels["watchpost_lab"]) == {"lab"}


def test_the_firmware_wheel_has_the_page_and_no_hub_side_code(
    wheels: dict[str, list[str]],
) -> None:
    files = wheels["watchpost"]
    assert "appliance/status/templates/status.html" in files
    assert "appliance/status/static/style.css" in files
    for name in files:
        assert not name.startswith(("hub/", "lab/")), name
        assert "operator" not in name and "provisioning" not in name and "labhub" not in name


def test_the_firmware_wheel_registers_no_hub_or_lab_commands(
    wheels: dict[str, list[str]], wheel_dir: Path
) -> None:
    whl = next(wheel_dir.glob("watchpost-*.whl"))
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = z.read(name).decode()
    assert "watchpost = appliance.cli:main" in text
    assert "watchpost.commands" not in text and "hub" not in text and "lab" not in text
