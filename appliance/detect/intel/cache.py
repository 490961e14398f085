"""The compiled cache: a store saved as its raw arrays (one file, CRC-checked, written
atomically) and reused while every source file has the same size, mtime and content hash, so a
restart with a million indicators takes a fraction of a second."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
import zlib
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from appliance.detect.intel.formats import CHUNK
from appliance.detect.intel.store import FORMAT_VERSION, FileReport, IntelStore, LoadProblem, Meta

_MAGIC = b"WPINTEL\x03"


def cache_path(paths: Iterable[str], cache_dir: str | None = None) -> Path | None:
    """Where the compiled form of this set of files lives: next to the first file, or in
    `cache_dir` when given."""
    resolved = [str(Path(p).resolve()) for p in paths]
    if not resolved:
        return None
    name = hashlib.sha256("\0".join(resolved).encode()).hexdigest()[:12]
    where = Path(cache_dir) if cache_dir else Path(resolved[0]).parent
    return where / f".watchpost-intel-{name}.cache"


def _sources_match(files: list[dict[str, Any]], paths: list[str]) -> bool:
    """Whether the cached sources are exactly `paths` with unchanged size, mtime and content
    (the content hash is computed only when size and mtime already match)."""
    if [x["path"] for x in files] != [str(Path(p)) for p in paths]:
        return False
    try:
        for x in files:
            st = os.stat(x["path"])
            if (st.st_size, st.st_mtime_ns) != (x["size"], x["mtime_ns"]):
                return False
        for x in files:
            digest = hashlib.sha256()
            with open(x["path"], "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != x["sha256"]:
                return False
    except OSError:
        return False
    return True


def _arrays(store: IntelStore) -> list[tuple[str, Any]]:
    return [
        ("v4h", store._v4h),
        ("v4s", store._v4s),
        ("v4e", store._v4e),
        ("v4v", store._v4v),
        ("v6v", store._v6v),
        ("hk", store._hk),
        ("hv", store._hv),
    ]


def write_cache(store: IntelStore, path: Path) -> None:
    """Save the compiled store atomically (a crash leaves the old cache or none, never half)."""
    header = {
        "format": FORMAT_VERSION,
        "byteorder": sys.byteorder,
        "version": store.version,
        "counts": store.counts,
        "meta": [[m.source, m.category, m.severity, m.tags] for m in store.meta],
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "mtime_ns": f.mtime_ns,
                "sha256": f.sha256,
                "report": f.as_dict(),
            }
            for f in store.files
        ],
        "problems": [[p.path, p.line, p.problem] for p in store.problems[:1000]],
        "arrays": {name: [arr.typecode, len(arr)] for name, arr in _arrays(store)},
        "v6": [len(store._v6s), len(store._v6e)],
    }
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            crc = 0
            f.write(_MAGIC + struct.pack("<I", len(blob)) + blob)
            for part in [arr for _, arr in _arrays(store)] + [store._v6s, store._v6e]:
                mv = memoryview(part).cast("B")
                crc = zlib.crc32(mv, crc)
                f.write(mv)
            f.write(struct.pack("<I", crc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_cache(path: Path, paths: list[str]) -> IntelStore | None:
    """The cached store if it was compiled from exactly these file contents, else None."""
    try:
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            (hlen,) = struct.unpack("<I", f.read(4))
            header = json.loads(f.read(hlen))
            if header.get("format") != FORMAT_VERSION or header.get("byteorder") != sys.byteorder:
                return None
            if not _sources_match(header["files"], paths):
                return None
            store = IntelStore()
            crc = 0
            for name, arr in _arrays(store):
                typecode, n = header["arrays"][name]
                if typecode != arr.typecode:
                    return None
                if n:  # read straight into the array: no second copy of a large buffer
                    arr = array(typecode, [0]) * n
                    setattr(store, f"_{name}", arr)
                    view = memoryview(arr).cast("B")
                    if f.readinto(view) != len(view):
                        return None
                    crc = zlib.crc32(view, crc)
                    view.release()
            n6s, n6e = header["v6"]
            store._v6s = f.read(n6s)
            store._v6e = f.read(n6e)
            crc = zlib.crc32(store._v6e, zlib.crc32(store._v6s, crc))
            tail = f.read(4)
            if len(tail) != 4 or struct.unpack("<I", tail)[0] != crc:
                return None
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    store.version = header["version"]
    store.counts = {k: int(v) for k, v in header["counts"].items()}
    store.meta = [Meta(s, c, int(sev), t) for s, c, sev, t in header["meta"]]
    for x in header["files"]:
        r = x["report"]
        store.files.append(
            FileReport(
                r["path"],
                r["format"],
                r["source"],
                r["indicators"],
                r["bad_lines"],
                r.get("skipped", 0),
                r.get("broken", ""),
                x["sha256"],
                x["size"],
                x["mtime_ns"],
            )
        )
    store.problems = [LoadProblem(p, n, why) for p, n, why in header["problems"]]
    store.loaded_from = "cache"
    return store
