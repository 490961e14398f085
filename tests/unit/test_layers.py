"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they bite: a copy of the
tree with one upward import written in (a lazy one, inside a function) fails the check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("appliance", "protocol", "hub", "lab")
LINT = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("tree")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def append(path: Path, text: str) -> str:
    old = path.read_text()
    path.write_text(old + text)
    return old


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    out = lint_imports(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_layers_and_passes_once_removed(tree: Path) -> None:
    flows = tree / "appliance" / "packet" / "flows.py"
    # The packet model reaching up into the engine, lazily (grimp sees function-level imports).
    lazy = "\n\ndef _up() -> object:\n    from appliance.detect import engine\n    return engine\n"
    old = append(flows, lazy)
    try:
        out = lint_imports(tree)
        assert out.returncode == 1, out.stdout
        assert "imports only point down" in out.stdout and "BROKEN" in out.stdout
        assert "appliance.packet.flows -> appliance.detect.engine" in out.stdout
    finally:
        flows.write_text(old)
    assert lint_imports(tree).returncode == 0


def test_the_firmware_importing_the_hub_is_forbidden(tree: Path) -> None:
    target = tree / "appliance" / "alerts" / "model.py"
    old = append(target, "\nimport hub.operator  # noqa: E402\n")
    try:
        out = lint_imports(tree)
        assert out.returncode == 1
        assert "firmware and protocol never import the hub or the lab BROKEN" in out.stdout
    finally:
        target.write_text(old)


def test_nothing_in_the_repository_points_outside_it() -> None:
    """No reference to the design document that used to live beside the repository."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    me = Path(__file__).resolve().relative_to(ROOT).as_posix()
    bad = []
    for name in files:
        if name == me:
            continue
        try:
            text = (ROOT / name).read_text(errors="replace")
        except (IsADirectoryError, FileNotFoundError):
            continue
        for needle in ("DESIGN" + ".md", "../" + "shared"):
            if needle in text:
                bad.append(f"{name}: {needle}")
    assert bad == []
