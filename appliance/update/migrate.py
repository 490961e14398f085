"""A release's config migration (declared and signed in its manifest, `protocol.release.
check_migration`): run once after the switch on files of the state dir, undone on rollback.

    backup()   copies every file the migration names into ``update/migration-backup/<job>/``
               (with ``index.json``: which files existed), fsynced, BEFORE anything changes;
    apply()    runs the steps file by file, each file written atomically;
    restore()  puts every backed-up file back byte for byte, and removes the ones that did not
               exist before (idempotent: a power cut during a restore is finished by the next).

``update/migrations.json`` lists the migrations applied (their ids): a migration already listed
is not run again; an undone one is taken off the list.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from protocol.files import atomic_write, fsync_dir

APPLIED = "migrations.json"
BACKUPS = "migration-backup"


class MigrationError(RuntimeError):
    """A migration that cannot run on this device's files; the message says which step."""


def applied(update_dir: Path) -> list[str]:
    try:
        data = json.loads((update_dir / APPLIED).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _set_applied(update_dir: Path, ids: list[str]) -> None:
    atomic_write(update_dir / APPLIED, json.dumps(ids).encode(), 0o600)


def files_of(migration: Mapping[str, Any]) -> list[str]:
    return sorted({str(s["file"]) for s in migration["steps"]})


def backup_dir(update_dir: Path, job: str) -> Path:
    return update_dir / BACKUPS / job


def backup(state_dir: Path, migration: Mapping[str, Any], dest: Path) -> None:
    """Copy the files the migration touches to `dest` (made anew), fsynced, with an index."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    index: dict[str, bool] = {}
    for name in files_of(migration):
        src = state_dir / name
        index[name] = src.is_file()
        if index[name]:
            atomic_write(dest / name, src.read_bytes(), src.stat().st_mode & 0o777)
    atomic_write(dest / "index.json", json.dumps({"files": index}).encode(), 0o600)
    fsync_dir(dest)


def restore(state_dir: Path, dest: Path) -> list[str]:
    """Put the files of backup `dest` back as they were; returns the names restored."""
    try:
        index = json.loads((dest / "index.json").read_text())["files"]
    except (FileNotFoundError, ValueError, KeyError):
        return []  # the backup was never completed: nothing was changed yet
    done = []
    for name, existed in sorted(index.items()):
        target = state_dir / name
        if existed:
            saved = dest / name
            atomic_write(target, saved.read_bytes(), saved.stat().st_mode & 0o777)
        else:
            target.unlink(missing_ok=True)
        done.append(name)
    fsync_dir(state_dir)
    return done


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text(encoding="utf-8"))
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise MigrationError(f"{path.name}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise MigrationError(f"{path.name}: not an object of tables")
    return data


def _table(doc: dict[str, Any], parts: list[str], create: bool, where: str) -> Any:
    t: Any = doc
    for p in parts:
        if not isinstance(t, dict):
            raise MigrationError(f"{where}: {'.'.join(parts)} runs through a value, not a table")
        if p not in t:
            if not create:
                return None
            t[p] = {}
        t = t[p]
    if not isinstance(t, dict):
        raise MigrationError(f"{where}: {'.'.join(parts)} is a value, not a table")
    return t


def _step(doc: dict[str, Any], step: Mapping[str, Any], where: str) -> None:
    *path, last = str(step["key"]).split(".")
    op = step["op"]
    if op == "set":
        _table(doc, path, True, where)[last] = step["value"]
        return
    table = _table(doc, path, False, where)
    if table is None or last not in table:
        return  # nothing set under the old name: nothing to move or delete
    value = table.pop(last)
    if op == "rename":
        *to_path, to_last = str(step["to"]).split(".")
        _table(doc, to_path, True, where)[to_last] = value


def apply(state_dir: Path, migration: Mapping[str, Any]) -> list[str]:
    """Run the steps; every file is checked whole before any is written. Returns the files."""
    docs: dict[str, dict[str, Any]] = {}
    for i, step in enumerate(migration["steps"]):
        name = str(step["file"])
        if name not in docs:
            docs[name] = _load(state_dir / name)
        _step(docs[name], step, f"migration {migration['id']} steps[{i}] ({name})")
    out: dict[str, bytes] = {}
    for name, doc in docs.items():
        try:
            out[name] = (
                tomli_w.dumps(doc).encode() if name.endswith(".toml") else json.dumps(doc).encode()
            )
        except (TypeError, ValueError) as e:
            raise MigrationError(f"migration {migration['id']}: {name}: {e}") from None
    for name, data in out.items():
        path = state_dir / name
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o640
        atomic_write(path, data, mode)
    return sorted(out)


def run_once(
    state_dir: Path, update_dir: Path, job: str, migration: Mapping[str, Any], saved: Any
) -> str:
    """Back up, apply and record `migration` unless it ran before; `saved(state)` is called with
    "backed-up" before the first change (so a rollback knows to restore). Returns "applied" or
    "skipped"."""
    ids = applied(update_dir)
    if migration["id"] in ids:
        return "skipped"
    backup(state_dir, migration, backup_dir(update_dir, job))
    saved("backed-up")
    apply(state_dir, migration)
    _set_applied(update_dir, [*ids, str(migration["id"])])
    return "applied"


def undo(state_dir: Path, update_dir: Path, job: str, migration_id: str) -> list[str]:
    """Restore the files of `job`'s migration and take it off the applied list."""
    restored = restore(state_dir, backup_dir(update_dir, job))
    ids = applied(update_dir)
    if migration_id in ids:
        _set_applied(update_dir, [i for i in ids if i != migration_id])
    return restored


def prune_backups(update_dir: Path, keep_job: str) -> None:
    """After a success: drop the backups of older jobs (this job's stays for a manual undo)."""
    root = update_dir / BACKUPS
    if root.is_dir():
        for d in root.iterdir():
            if d.name != keep_job:
                shutil.rmtree(d, ignore_errors=True)
