"""The firmware release artifact: its manifest format, read alike by the builder, the hub and
the device.

An artifact is an uncompressed tar holding ``manifest.json`` and ``wheels/<machine>/*.whl``
(the firmware and protocol wheels built from the tree plus every pinned dependency wheel for
that machine, e.g. ``x86_64`` or ``aarch64``, so a device installs with no package index). The
manifest is ``{"kind", "version", "min_from", "downgrade", "built_at", "machines", "files",
"sig"}`` and optionally ``"migration"`` (see `check_migration`): ``files`` maps every other
member's path to ``{"sha256", "size"}``; ``sig`` is an
Ed25519 signature (`protocol.envelope.sign_document`) by the RELEASE key, a key apart from the
hub's command key. Over MQTT the tar travels as a chunked bundle (`protocol.bundle`) of kind
`KIND`, whose own manifest is signed by the command key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.envelope import EnvelopeError, sign_document, verify_document

KIND = "watchpost-release"
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_FILES = 2000
MANIFEST_FIELDS = (
    "kind",
    "version",
    "min_from",
    "downgrade",
    "built_at",
    "machines",
    "files",
    "sig",
)
OPTIONAL_FIELDS = ("migration",)
MIGRATION_OPS = {"set": ("value",), "rename": ("to",), "delete": ()}
MAX_MIGRATION_STEPS = 100
_MIGRATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_STATE_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\.(toml|json)$")
_KEY_PART = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VERSION = re.compile(r"^(\d{1,6})(\.\d{1,6}){0,4}$")
_PATH = re.compile(r"^wheels/([A-Za-z0-9_]{1,32})/([A-Za-z0-9_.+!-]{1,200}\.whl)$")


class ReleaseError(ValueError):
    """A release artifact or manifest that cannot be used; the message says why."""


def parse_version(text: Any, what: str = "version") -> tuple[int, ...]:
    """(0, 1, 2) for "0.1.2"; only dotted numbers are release versions."""
    if not isinstance(text, str) or not _VERSION.match(text):
        raise ReleaseError(f"{what} {text!r} is not a release version (dotted numbers, e.g. 0.2.1)")
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (5 - len(parts))


def artifact_name(version: str) -> str:
    return f"watchpost-{version}.tar"


def wheel_path(path: str) -> tuple[str, str] | None:
    """(machine, file name) of an artifact member path, or None when it is not one."""
    m = _PATH.match(path)
    return (m.group(1), m.group(2)) if m else None


def make_manifest(
    version: str,
    min_from: str,
    files: Mapping[str, Mapping[str, Any]],
    built_at: int,
    downgrade: bool = False,
    migration: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The unsigned manifest; `check_shape` holds for it."""
    machines = sorted({m[0] for p in files if (m := wheel_path(p))})
    doc = {
        "kind": KIND,
        "version": version,
        "min_from": min_from,
        "downgrade": bool(downgrade),
        "built_at": int(built_at),
        "machines": machines,
        "files": {p: {"sha256": f["sha256"], "size": f["size"]} for p, f in sorted(files.items())},
    }
    if migration is not None:
        doc["migration"] = dict(migration)
    check_shape({**doc, "sig": ""})
    return doc


def sign(doc: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_document(doc, key)


def check_shape(doc: Any) -> dict[str, Any]:
    """Every field present, of its type and range; ReleaseError naming the first problem."""
    if not isinstance(doc, dict):
        raise ReleaseError("release manifest must be a JSON object")
    missing = [f for f in MANIFEST_FIELDS if f not in doc]
    extra = sorted(set(doc) - set(MANIFEST_FIELDS) - set(OPTIONAL_FIELDS))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else []
        )
        raise ReleaseError(f"release manifest: {'; '.join(parts)}")
    if doc["kind"] != KIND:
        raise ReleaseError(f"release manifest kind must be {KIND!r}, got {doc['kind']!r}")
    parse_version(doc["version"], "release manifest version")
    parse_version(doc["min_from"], "release manifest min_from")
    if not isinstance(doc["downgrade"], bool):
        raise ReleaseError("release manifest downgrade must be true or false")
    if not isinstance(doc["built_at"], int) or isinstance(doc["built_at"], bool):
        raise ReleaseError("release manifest built_at must be an integer (Unix time)")
    files = doc["files"]
    if not isinstance(files, dict) or not 0 < len(files) <= MAX_FILES:
        raise ReleaseError(f"release manifest files must be an object of 1-{MAX_FILES} entries")
    for path, entry in files.items():
        if wheel_path(path) is None:
            raise ReleaseError(f"release manifest files: {path!r} is not wheels/<machine>/*.whl")
        if not isinstance(entry, dict) or set(entry) != {"sha256", "size"}:
            raise ReleaseError(f"release manifest files[{path!r}] must be {{sha256, size}}")
        digest, size = entry["sha256"], entry["size"]
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ReleaseError(f"release manifest files[{path!r}].sha256: 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ReleaseError(f"release manifest files[{path!r}].size: a non-negative integer")
    machines = doc["machines"]
    have = sorted({m[0] for p in files if (m := wheel_path(p))})
    if machines != have:
        raise ReleaseError(f"release manifest machines {machines!r} do not match its files {have}")
    if "migration" in doc:
        check_migration(doc["migration"])
    return dict(doc)


def check_migration(mig: Any) -> dict[str, Any]:
    """A config migration: ``{"id", "steps": [{"op", "file", "key", ...}]}``, run once after the
    switch on files of the device's state dir (``remote.toml``, the hub's overlay, or another
    ``*.toml`` / ``*.json`` there) and undone on rollback. Ops: ``set`` (``value``), ``rename``
    (``to``, another dotted key), ``delete``; keys are dotted paths into the file's tables.
    ReleaseError naming the first problem."""
    what = "release manifest migration"
    if not isinstance(mig, dict) or set(mig) != {"id", "steps"}:
        raise ReleaseError(f"{what} must be an object of id and steps")
    if not isinstance(mig["id"], str) or not _MIGRATION_ID.match(mig["id"]):
        raise ReleaseError(f"{what} id {mig['id']!r}: 1-64 letters, digits, '.', '_', '-'")
    steps = mig["steps"]
    if not isinstance(steps, list) or not 0 < len(steps) <= MAX_MIGRATION_STEPS:
        raise ReleaseError(f"{what} steps must be a list of 1-{MAX_MIGRATION_STEPS} steps")
    for i, step in enumerate(steps):
        where = f"{what} steps[{i}]"
        if not isinstance(step, dict) or step.get("op") not in MIGRATION_OPS:
            raise ReleaseError(f"{where}: op must be one of {', '.join(MIGRATION_OPS)}")
        want = {"op", "file", "key", *MIGRATION_OPS[step["op"]]}
        if set(step) != want:
            raise ReleaseError(
                f"{where}: a {step['op']} step has exactly {', '.join(sorted(want))}"
            )
        f = step["file"]
        if not isinstance(f, str) or not _STATE_FILE.match(f):
            raise ReleaseError(f"{where}: file {f!r} is not a *.toml or *.json in the state dir")
        for k in ("key", "to") if "to" in step else ("key",):
            parts = step[k].split(".") if isinstance(step[k], str) else []
            if not 0 < len(parts) <= 8 or not all(_KEY_PART.match(p) for p in parts):
                raise ReleaseError(f"{where}: {k} {step[k]!r} is not a dotted key")
        if step["op"] == "set" and step["value"] is None and f.endswith(".toml"):
            raise ReleaseError(f"{where}: TOML has no null (use delete)")
    return dict(mig)


def verify(doc: Any, keys: Sequence[Ed25519PublicKey]) -> dict[str, Any]:
    """Shape-check and verify the release key's signature; ReleaseError if either fails."""
    checked = check_shape(doc)
    try:
        verify_document(checked, keys, "release manifest")
    except EnvelopeError as e:
        raise ReleaseError(str(e).replace("command key", "release key")) from None
    return checked
