"""Signed intel bundles, cut into chunks that fit under the broker's packet limit.

A bundle is one intel list file (the format `appliance.detect.intel.load_files` reads) plus a
manifest ``{"kind", "name", "version", "size", "sha256", "sig"}`` signed by the hub's command key.
The manifest signature is what makes the content trustworthy end to end: the chunk envelopes are
signed too, but only the manifest binds the reassembled bytes (size and SHA-256) to a version.

Each chunk travels as the args of one `intel-update` envelope: ``{"job", "manifest", "index",
"count", "chunk_size", "data"}`` (data in base64). The device spools chunks into a hidden
staging file in the intel directory (any order, duplicates with identical bytes ignored), checks
size and hash when the last one arrives, then swaps the file in with `os.replace` and asks the
daemon to reload; if the reload fails the previous file is put back, so the old store stays.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.envelope import EnvelopeError, sign_document, verify_document
from protocol.files import atomic_write, fsync_dir

KIND = "watchpost-intel"
RULES_KIND = "watchpost-rules"  # a Suricata-format rule file (`rules-update`)
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_CHUNK_BYTES = 44 * 1024  # base64 of this plus the envelope stays under 64 KiB
DEFAULT_CHUNK_BYTES = 32 * 1024
MAX_CHUNKS = math.ceil(MAX_BUNDLE_BYTES / 1024)
META_NAME = ".bundles.json"
MANIFEST_FIELDS = ("kind", "name", "version", "size", "sha256", "sig")
CHUNK_FIELDS = ("job", "manifest", "index", "count", "chunk_size", "data")
MAX_RANGES = 64  # missing-chunk ranges named in one answer


class BundleError(ValueError):
    """A bundle or chunk that cannot be used; the message says why."""


def _valid_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= 64
        and name[0].isalnum()
        and all(c.isalnum() or c in "._-" for c in name)
        and name != META_NAME
    )


def _valid_version(version: Any) -> bool:
    return (
        isinstance(version, str)
        and 0 < len(version) <= 64
        and all(c.isalnum() or c in "._:+-" for c in version)
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --- operator side -----------------------------------------------------------------------------


def make_manifest(
    data: bytes, name: str, version: str, key: Ed25519PrivateKey, kind: str = KIND
) -> dict[str, Any]:
    """The signed manifest of `data` (one intel list file; a release artifact with its `kind`)."""
    if not _valid_name(name):
        raise BundleError(f"bundle name {name!r}: use 1-64 letters, digits, '.', '_', '-'")
    if not _valid_version(version):
        raise BundleError(f"bundle version {version!r}: use 1-64 letters, digits, '._:+-'")
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle is {len(data)} bytes, more than {MAX_BUNDLE_BYTES}")
    doc = {
        "kind": kind,
        "name": name,
        "version": version,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return sign_document(doc, key)


def chunk_args(
    job: str, manifest: Mapping[str, Any], data: bytes, chunk_size: int = DEFAULT_CHUNK_BYTES
) -> list[dict[str, Any]]:
    """The args of each `intel-update` envelope carrying `data` in order."""
    if not 1 <= chunk_size <= MAX_CHUNK_BYTES:
        raise BundleError(f"chunk size must be between 1 and {MAX_CHUNK_BYTES} bytes")
    count = max(1, math.ceil(len(data) / chunk_size))
    return [
        {
            "job": job,
            "manifest": dict(manifest),
            "index": i,
            "count": count,
            "chunk_size": chunk_size,
            "data": base64.b64encode(data[i * chunk_size : (i + 1) * chunk_size]).decode(),
        }
        for i in range(count)
    ]


# --- device side -------------------------------------------------------------------------------


def check_manifest(
    manifest: Any, keys: Sequence[Ed25519PublicKey], kind: str = KIND
) -> dict[str, Any]:
    """Shape-check and verify a manifest of `kind`; raise BundleError naming the problem."""
    if not isinstance(manifest, dict):
        raise BundleError("manifest must be an object")
    extra = sorted(set(manifest) - set(MANIFEST_FIELDS))
    missing = [f for f in MANIFEST_FIELDS if f not in manifest]
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise BundleError(f"manifest: {'; '.join(parts)}")
    if manifest["kind"] != kind:
        raise BundleError(f"manifest kind must be {kind!r}, got {manifest['kind']!r}")
    if not _valid_name(manifest["name"]):
        raise BundleError(f"manifest name {manifest['name']!r} is not a safe file name")
    if not _valid_version(manifest["version"]):
        raise BundleError(f"manifest version {manifest['version']!r} is not a version string")
    size = manifest["size"]
    if not _is_int(size) or not 0 <= size <= MAX_BUNDLE_BYTES:
        raise BundleError(f"manifest size must be an integer from 0 to {MAX_BUNDLE_BYTES}")
    digest = manifest["sha256"]
    if not (
        isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
    ):
        raise BundleError("manifest sha256 must be 64 lowercase hex digits")
    try:
        verify_document(manifest, keys, "bundle manifest")
    except EnvelopeError as e:
        raise BundleError(str(e)) from None
    return dict(manifest)


def parse_chunk(args: Mapping[str, Any]) -> tuple[str, dict[str, Any], int, int, int, bytes]:
    """(job, manifest, index, count, chunk_size, data) from chunk args; BundleError if bad."""
    extra = sorted(set(args) - set(CHUNK_FIELDS))
    if extra:
        raise BundleError(f"args: unexpected {', '.join(extra)}")
    missing = [f for f in CHUNK_FIELDS if f not in args]
    if missing:
        raise BundleError(f"args: missing {', '.join(missing)}")
    job = args["job"]
    if not (
        isinstance(job, str) and 0 < len(job) <= 64 and all(c.isalnum() or c in "-_" for c in job)
    ):
        raise BundleError("args.job must be 1-64 letters, digits, '-' or '_'")
    if not isinstance(args["manifest"], dict):
        raise BundleError("args.manifest must be an object")
    index, count, chunk_size = args["index"], args["count"], args["chunk_size"]
    if not _is_int(count) or not 1 <= count <= MAX_CHUNKS:
        raise BundleError(f"args.count must be an integer from 1 to {MAX_CHUNKS}")
    if not _is_int(index) or not 0 <= index < count:
        raise BundleError(f"args.index must be an integer from 0 to {count - 1}")
    if not _is_int(chunk_size) or not 1 <= chunk_size <= MAX_CHUNK_BYTES:
        raise BundleError(f"args.chunk_size must be an integer from 1 to {MAX_CHUNK_BYTES}")
    if not isinstance(args["data"], str):
        raise BundleError("args.data must be a base64 string")
    try:
        data = base64.b64decode(args["data"], validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"chunk {index}: data is not valid base64") from None
    return job, dict(args["manifest"]), index, count, chunk_size, data


class Transfer:
    """One bundle being reassembled into a hidden staging file next to its final place.

    With `resumable`, the indexes of the chunks received are appended to a journal next to the
    staging file (``<staging>.idx``: a JSON header line, then one index a line, each written
    after its chunk's bytes are synced), so a Transfer made again for the same job, manifest and
    chunking (after a restart or a power cut) continues with the chunks it already has.
    """

    def __init__(
        self,
        job: str,
        manifest: Mapping[str, Any],
        count: int,
        chunk_size: int,
        intel_dir: Path,
        now: float,
        *,
        resumable: bool = False,
    ) -> None:
        size = manifest["size"]
        expected = max(1, math.ceil(size / chunk_size))
        if count != expected:
            raise BundleError(
                f"{count} chunks of {chunk_size} bytes cannot carry {size} bytes "
                f"(expected {expected})"
            )
        self.job = job
        self.manifest = dict(manifest)
        self.count = count
        self.chunk_size = chunk_size
        self.received: set[int] = set()
        self.started = now
        self.last_activity = now
        intel_dir.mkdir(parents=True, exist_ok=True)
        self.staging = intel_dir / f".{manifest['name']}.{job}.part"
        self.journal: Path | None = self.staging.with_name(self.staging.name + ".idx")
        self._jfd = -1
        header = {"job": job, "manifest": self.manifest, "count": count, "chunk_size": chunk_size}
        if resumable:
            self.received = _read_journal(self.journal, header, count)
        self.resumed = len(self.received)  # chunks found from before (0: a fresh transfer)
        flags = os.O_RDWR | os.O_CREAT | (0 if self.received else os.O_TRUNC)
        self._fd = os.open(self.staging, flags, 0o644)
        if not resumable:
            self.journal.unlink(missing_ok=True)
            self.journal = None
        elif not self.received:
            line = json.dumps(header, sort_keys=True) + "\n"
            atomic_write(self.journal, line.encode(), 0o600)
        if self.journal is not None:
            self._jfd = os.open(self.journal, os.O_WRONLY | os.O_APPEND)

    def expected_len(self, index: int) -> int:
        if index < self.count - 1:
            return self.chunk_size
        return int(self.manifest["size"]) - (self.count - 1) * self.chunk_size

    def add(self, index: int, data: bytes, now: float) -> bool:
        """Store chunk `index`; False when it is an identical duplicate. BundleError if bad."""
        want = self.expected_len(index)
        if len(data) != want:
            raise BundleError(f"chunk {index} is {len(data)} bytes, expected {want}")
        offset = index * self.chunk_size
        self.last_activity = now
        if index in self.received:
            if os.pread(self._fd, want, offset) != data:
                raise BundleError(f"chunk {index} arrived twice with different content")
            return False
        os.pwrite(self._fd, data, offset)
        if self._jfd >= 0:
            os.fdatasync(self._fd)  # the bytes first: a journalled index is always on disk
            os.write(self._jfd, f"{index}\n".encode())
            os.fdatasync(self._jfd)
        self.received.add(index)
        return True

    @property
    def complete(self) -> bool:
        return len(self.received) == self.count

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.received]

    def missing_ranges(self, limit: int = MAX_RANGES) -> list[list[int]]:
        """The chunks still wanted as ``[[first, last], ...]`` (at most `limit` ranges, the
        first ones: a sender resends those, and the next answer names the rest)."""
        return missing_ranges(self.received, self.count, limit)

    def finish(self) -> Path:
        """Check size and hash of the staged file; return its path (still staged)."""
        if not self.complete:
            raise BundleError(f"missing chunks {_ranges(self.missing())}")
        os.ftruncate(self._fd, self.manifest["size"])
        os.fsync(self._fd)
        digest = hashlib.sha256()
        with open(self.staging, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        size = self.staging.stat().st_size
        if size != self.manifest["size"]:
            raise BundleError(f"reassembled {size} bytes, manifest says {self.manifest['size']}")
        if digest.hexdigest() != self.manifest["sha256"]:
            raise BundleError("reassembled bundle does not match the manifest's sha256")
        self._close()
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)
        return self.staging

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._jfd >= 0:
            os.close(self._jfd)
            self._jfd = -1

    def close(self) -> None:
        """Let go of the files but keep them (a resumable transfer continues from them)."""
        self._close()

    def discard(self) -> None:
        self._close()
        self.staging.unlink(missing_ok=True)
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)


def missing_ranges(received: set[int], count: int, limit: int = 0) -> list[list[int]]:
    """``[[first, last], ...]`` of the indexes below `count` not in `received` (all ranges when
    `limit` is 0)."""
    out: list[list[int]] = []
    i = 0
    while i < count and (not limit or len(out) < limit):
        if i in received:
            i += 1
            continue
        j = i
        while j + 1 < count and j + 1 not in received:
            j += 1
        out.append([i, j])
        i = j + 1
    return out


def _read_journal(path: Path, header: Mapping[str, Any], count: int) -> set[int]:
    """The indexes a journal of the same transfer holds (empty: none, or another transfer)."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return set()
    try:
        if json.loads(lines[0]) != json.loads(json.dumps(header)):
            return set()
    except ValueError:
        return set()
    got: set[int] = set()
    # The last line may be cut short by a power cut: only whole lines (ending in \n) count.
    for line in lines[1:-1]:
        if line.isdigit() and int(line) < count:
            got.add(int(line))
    return got


def _ranges(indexes: Sequence[int]) -> str:
    """'1, 3-5' for [1, 3, 4, 5] (short messages for long gaps)."""
    out: list[str] = []
    start = prev = None
    for i in indexes:
        if start is None:
            start = prev = i
        elif i == prev + 1:  # type: ignore[operator]
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)


def install(
    intel_dir: Path, staged: Path, manifest: Mapping[str, Any], reload: Callable[[], Any]
) -> Any:
    """Swap the staged bundle in and reload; on a failed reload put the old file back.

    Returns what `reload` returned (the new store's version). The metadata file is written only
    after a successful reload, so a failure leaves the intel directory as it was.
    """
    name = manifest["name"]
    final = intel_dir / name
    prev = intel_dir / f".{name}.prev"
    prev.unlink(missing_ok=True)
    had_old = final.exists()
    if had_old:
        os.link(final, prev)
    os.replace(staged, final)
    fsync_dir(intel_dir)
    try:
        result = reload()
    except Exception as e:
        if had_old:
            os.replace(prev, final)
        else:
            final.unlink(missing_ok=True)
        fsync_dir(intel_dir)
        raise BundleError(f"reload refused the bundle, previous intel kept: {e}") from e
    prev.unlink(missing_ok=True)
    meta = installed(intel_dir)
    meta[name] = {
        "version": manifest["version"],
        "sha256": manifest["sha256"],
        "size": manifest["size"],
        "installed_at": int(time.time()),
    }
    atomic_write(intel_dir / META_NAME, json.dumps(meta, sort_keys=True).encode())
    return result


def installed(intel_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Installed bundles by file name: version, sha256, size, installed_at."""
    path = Path(intel_dir) / META_NAME
    with contextlib.suppress(FileNotFoundError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if isinstance(v, dict)}
    return {}


def installed_paths(intel_dir: str | os.PathLike[str]) -> list[str]:
    """The bundle files the daemon should load besides `intel.paths` (hidden files excluded)."""
    d = Path(intel_dir)
    if not d.is_dir():
        return []
    return sorted(str(p) for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
