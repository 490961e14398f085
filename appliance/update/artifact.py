"""Artifact verification: the release key's signature and every file's hash are checked on the
tar as it lies in the state dir, before one byte of it is unpacked.

`verify` reads the member list and the manifest, checks the signature, that the members are
exactly the manifest's files (regular files, no links, no other paths), and streams each member
through SHA-256. `extract_wheels` then writes one machine's wheels to a fresh folder, hashing
again as it writes (the tar is not trusted to be the one that was checked).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import release as rel
from protocol.release import ReleaseError

BLOCK = 1 << 20


@dataclass(frozen=True)
class Verified:
    """A checked artifact: its manifest and the wheels of this machine."""

    path: Path
    manifest: dict[str, Any]
    machine: str

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def wheels(self) -> dict[str, dict[str, Any]]:
        out = {}
        for p, entry in self.manifest["files"].items():
            w = rel.wheel_path(p)
            if w and w[0] == self.machine:
                out[p] = entry
        return out

    def size(self) -> int:
        return sum(int(e["size"]) for e in self.wheels().values())


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    out: dict[str, tarfile.TarInfo] = {}
    for m in tar.getmembers():
        if m.isdir():
            continue
        if not m.isfile():
            raise ReleaseError(f"artifact member {m.name!r} is not a regular file")
        if m.name in out:
            raise ReleaseError(f"artifact member {m.name!r} appears twice")
        out[m.name] = m
    return out


def _digest(f: Any) -> str:
    h = hashlib.sha256()
    while block := f.read(BLOCK):
        h.update(block)
    return h.hexdigest()


def verify(path: Path, keys: Sequence[Ed25519PublicKey], machine: str) -> Verified:
    """Check signature, member list and every hash; ReleaseError naming the first problem."""
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as e:
        raise ReleaseError(f"artifact {path.name}: not a readable tar ({e})") from None
    with tar:
        try:
            members = _members(tar)
        except tarfile.TarError as e:
            raise ReleaseError(f"artifact {path.name}: broken tar ({e})") from None
        mi = members.pop(rel.MANIFEST_NAME, None)
        if mi is None:
            raise ReleaseError(f"artifact {path.name}: no {rel.MANIFEST_NAME}")
        if mi.size > rel.MAX_MANIFEST_BYTES:
            raise ReleaseError(f"artifact {path.name}: {rel.MANIFEST_NAME} is too large")
        f = tar.extractfile(mi)
        assert f is not None
        try:
            doc = json.loads(f.read())
        except ValueError as e:
            raise ReleaseError(
                f"artifact {path.name}: {rel.MANIFEST_NAME}: not JSON ({e})"
            ) from None
        manifest = rel.verify(doc, keys)
        files = manifest["files"]
        extra = sorted(set(members) - set(files))
        missing = sorted(set(files) - set(members))
        if extra:
            raise ReleaseError(f"artifact holds files its manifest does not list: {extra[:3]}")
        if missing:
            raise ReleaseError(f"artifact lacks files its manifest lists: {missing[:3]}")
        for name, m in members.items():
            if m.size != files[name]["size"]:
                raise ReleaseError(
                    f"{name}: {m.size} bytes, the manifest says {files[name]['size']}"
                )
            fm = tar.extractfile(m)
            assert fm is not None
            if _digest(fm) != files[name]["sha256"]:
                raise ReleaseError(f"{name}: sha256 does not match the manifest (tampered?)")
    if machine not in manifest["machines"]:
        raise ReleaseError(
            f"release {manifest['version']} has no wheels for this machine ({machine}); "
            f"it has {', '.join(manifest['machines'])}"
        )
    version = manifest["version"]
    names = [rel.wheel_path(p) for p in files]
    firmware = [w for w in names if w and w[0] == machine and w[1].startswith("watchpost-")]
    if not firmware or any(not w[1].startswith(f"watchpost-{version}-") for w in firmware):
        got = ", ".join(w[1] for w in firmware) or "none"
        raise ReleaseError(
            f"release {version}: its firmware wheel is not version {version} ({got})"
        )
    return Verified(path, manifest, machine)


def extract_wheels(verified: Verified, dest: Path) -> Path:
    """Write this machine's wheels into `dest` (made anew), each hashed again while written."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    wanted = verified.wheels()
    with tarfile.open(verified.path, "r:") as tar:
        for name, entry in sorted(wanted.items()):
            src = tar.extractfile(tar.getmember(name))
            assert src is not None
            out = dest / Path(name).name
            h = hashlib.sha256()
            with open(out, "wb") as f:
                while block := src.read(BLOCK):
                    h.update(block)
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            if h.hexdigest() != entry["sha256"]:
                shutil.rmtree(dest, ignore_errors=True)
                raise ReleaseError(f"{name}: changed after it was verified")
    return dest
