"""Release artifacts built once per session from this repository (real wheels, real pins), and
fake device roots (releases/, current, state dir) to update."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import __version__
from appliance.update.layout import Layout
from protocol import envelope

REPO = Path(__file__).resolve().parents[3]
MACHINE = os.uname().machine


def bump(version: str) -> str:
    parts = version.split(".")
    return ".".join([*parts[:-1], str(int(parts[-1]) + 1)])


@dataclass
class Keys:
    private: Path
    public: Path
    other_private: Path

    def public_keys(self) -> list:  # type: ignore[type-arg]
        return envelope.load_public_keys(self.public)


@dataclass
class Artifacts:
    old: Path  # this tree's version
    new: Path  # the same tree with the version bumped
    old_version: str
    new_version: str


@pytest.fixture(scope="session")
def release_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("release-keys")
    priv, pub = envelope.generate_keypair()
    (d / "release-key.pem").write_bytes(priv)
    (d / "release-pubkey.pem").write_bytes(pub)
    other = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    (d / "other-key.pem").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Keys(d / "release-key.pem", d / "release-pubkey.pem", d / "other-key.pem")


def _build(tree: Path, key: Path, out: Path, cache: Path) -> Path:
    res = subprocess.run(
        [sys.executable, str(tree / "release" / "build_release.py"), "--key", str(key),
         "--out", str(out), "--machine", MACHINE, "--deps-cache", str(cache)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.split(" (")[0])


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, release_keys: Keys) -> Artifacts:
    base = tmp_path_factory.mktemp("artifacts")
    cache = base / "deps"
    old = _build(REPO, release_keys.private, base / "old", cache)
    # A staged copy of the tree with the version bumped: the "next release".
    stage = base / "stage"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("appliance", "protocol", "hub", "release"):
        shutil.copytree(REPO / name, stage / name, ignore=ignore)
    init = stage / "appliance" / "__init__.py"
    new_version = bump(__version__)
    init.write_text(
        re.sub(r'__version__ = "[^"]+"', f'__version__ = "{new_version}"', init.read_text())
    )
    new = _build(stage, release_keys.private, base / "new", cache)
    return Artifacts(old, new, __version__, new_version)


def fake_release(layout: Layout, version: str) -> Path:
    """A stand-in for an installed release (a script answering --version, stamped complete)."""
    d = layout.release(version)
    (d / "bin").mkdir(parents=True)
    w = d / "bin" / "watchpost"
    w.write_text(f"#!/bin/sh\necho 'watchpost, version {version}'\n")
    w.chmod(0o755)
    (d / ".complete").touch()
    return d


@dataclass
class Device:
    root: Path
    state: Path
    layout: Layout


@pytest.fixture
def device(tmp_path: Path, artifacts: Artifacts) -> Device:
    """A root running the old version (a stand-in release), with an empty state dir."""
    layout = Layout(tmp_path / "opt")
    layout.releases.mkdir(parents=True)
    fake_release(layout, artifacts.old_version)
    layout.switch(artifacts.old_version)
    (tmp_path / "state").mkdir()
    return Device(tmp_path / "opt", tmp_path / "state", layout)


def tree(root: Path) -> dict[str, str]:
    """Every path under root with its link target or content (what 'untouched' compares)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes().hex()[:64] + str(p.stat().st_size)
        else:
            out[rel] = "dir"
    return out
