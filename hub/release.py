"""Release signing on the hub side: `watchpost-hub release keygen|sign`.

The release key (Ed25519) is apart from the command key: the command key says "this hub sent
this transfer", the release key says "this is a Watchpost release" and lives with whoever builds
releases. Devices hold the public half as /etc/watchpost/release-pubkey.pem.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import envelope
from protocol import release as rel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_artifact(
    out: Path,
    version: str,
    wheels: Mapping[str, Sequence[Path]],
    key: Ed25519PrivateKey,
    *,
    min_from: str = "0.0.0",
    downgrade: bool = False,
    built_at: int | None = None,
    migration: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the signed artifact tar: manifest.json first, then wheels/<machine>/<wheel>."""
    files: dict[str, Path] = {}
    for machine, paths in wheels.items():
        for p in paths:
            files[f"wheels/{machine}/{p.name}"] = p
    entries = {n: {"sha256": _sha256(p), "size": p.stat().st_size} for n, p in files.items()}
    doc = rel.make_manifest(
        version, min_from, entries, int(built_at or time.time()), downgrade, migration
    )
    signed = rel.sign(doc, key)
    data = json.dumps(signed, sort_keys=True, indent=1).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(rel.MANIFEST_NAME)
        info.size, info.mode, info.mtime = len(data), 0o644, signed["built_at"]
        tar.addfile(info, io.BytesIO(data))
        for name in sorted(files):
            info = tar.gettarinfo(str(files[name]), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(files[name], "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)
    return signed


def read_artifact(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, {member: bytes}) of an artifact, for re-signing."""
    with tarfile.open(path, "r:") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        blobs = {n: tar.extractfile(m).read() for n, m in members.items()}  # type: ignore[union-attr]
    manifest = json.loads(blobs.pop(rel.MANIFEST_NAME))
    return manifest, blobs


def resign(
    path: Path,
    key: Ed25519PrivateKey,
    downgrade: bool | None = None,
    migration: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Sign an artifact again (another key, marked as a downgrade, or with a config migration;
    otherwise its own migration is kept); hashes recomputed."""
    manifest, blobs = read_artifact(path)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        wheels: dict[str, list[Path]] = {}
        for name, data in blobs.items():
            w = rel.wheel_path(name)
            if w is None:
                raise click.ClickException(f"{path}: unexpected member {name}")
            p = Path(tmp) / w[0] / w[1]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            wheels.setdefault(w[0], []).append(p)
        return write_artifact(
            path, manifest["version"], wheels, key, min_from=manifest["min_from"],
            downgrade=manifest["downgrade"] if downgrade is None else downgrade,
            built_at=manifest["built_at"],
            migration=migration if migration is not None else manifest.get("migration"),
        )  # fmt: skip


@click.group("release")
def release() -> None:
    """Release keys and signed firmware release artifacts."""


@release.command("keygen")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=".")
def keygen(out_dir: Path) -> None:
    """Make release-key.pem (keep it off the hub if you can) and release-pubkey.pem (devices)."""
    private, public = out_dir / "release-key.pem", out_dir / "release-pubkey.pem"
    for p in (private, public):
        if p.exists():
            raise click.ClickException(f"{p} exists; refusing to overwrite a release key")
    priv_pem, pub_pem = envelope.generate_keypair()
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv_pem)
    public.write_bytes(pub_pem)
    click.echo(f"{private}\n{public}")


@release.command("sign")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path))
@click.option("--downgrade/--no-downgrade", default=None, help="sign it as a downgrade (or not)")
def sign(artifact: Path, key_path: Path, downgrade: bool | None) -> None:
    """Sign ARTIFACT with the release key (after a build, or to mark a downgrade)."""
    try:
        key = envelope.load_private_key(key_path)
    except envelope.KeyFileError as e:
        raise click.ClickException(str(e).replace("command key", "release key")) from None
    doc = resign(artifact, key, downgrade)
    click.echo(f"{artifact}: release {doc['version']} signed ({len(doc['files'])} files)")
