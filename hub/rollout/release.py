"""The release artifact as the hub checks it before sending it anywhere: a readable tar whose
manifest is signed by the release key, whose members are exactly the manifest's files, each of
its size and SHA-256 (the device checks all of it again; this catches a wrong or damaged file
before it goes to a thousand devices)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import release as rel


@dataclass(frozen=True)
class Release:
    path: Path
    manifest: dict[str, Any]
    data: bytes
    sha256: str

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def name(self) -> str:
        return rel.artifact_name(self.version)


def load(path: Path, keys: Sequence[Ed25519PublicKey]) -> Release:
    """Read and check the artifact at `path`; `rel.ReleaseError` naming the problem."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise rel.ReleaseError(f"release {path}: no such file") from None
    except OSError as e:
        raise rel.ReleaseError(f"release {path}: {e.strerror or e}") from None
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as e:
        raise rel.ReleaseError(f"release {path}: not a release artifact (tar): {e}") from None
    with tar:
        members = {m.name: m for m in tar.getmembers() if not m.isdir()}
        mi = members.pop(rel.MANIFEST_NAME, None)
        if mi is None or not mi.isfile() or mi.size > rel.MAX_MANIFEST_BYTES:
            raise rel.ReleaseError(f"release {path}: no usable {rel.MANIFEST_NAME}")
        f = tar.extractfile(mi)
        assert f is not None
        try:
            doc = json.loads(f.read())
        except ValueError as e:
            raise rel.ReleaseError(
                f"release {path}: {rel.MANIFEST_NAME} is not JSON: {e}"
            ) from None
        try:
            manifest = rel.verify(doc, keys)
        except rel.ReleaseError as e:
            raise rel.ReleaseError(f"release {path}: {e}") from None
        files = manifest["files"]
        if sorted(members) != sorted(files):
            extra = sorted(set(members) - set(files))[:3]
            missing = sorted(set(files) - set(members))[:3]
            raise rel.ReleaseError(
                f"release {path}: members do not match the manifest (extra {extra}, "
                f"missing {missing})"
            )
        for name, m in sorted(members.items()):
            fm = tar.extractfile(m) if m.isfile() else None
            if fm is None or m.size != files[name]["size"]:
                raise rel.ReleaseError(f"release {path}: {name} is not the manifest's file")
            if hashlib.sha256(fm.read()).hexdigest() != files[name]["sha256"]:
                raise rel.ReleaseError(
                    f"release {path}: {name}: sha256 does not match the manifest"
                )
    return Release(path, manifest, data, hashlib.sha256(data).hexdigest())
