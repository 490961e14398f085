"""The release layout the image makes and an update switches:

    <root>/releases/<version>/     a venv with a `.complete` stamp
    <root>/current -> releases/<version>     what the units run (<root>/bin -> current/bin)
    <root>/previous -> releases/<version>    the last-known-good release kept for rollback

Symlinks are switched atomically: a new link under a temporary name renamed over the old one,
then the directory fsynced. Only `current` and `previous` are kept; `prune` removes the rest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from protocol.files import fsync_dir

COMPLETE = ".complete"
PARTIAL = ".partial"


class Layout:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.current = self.root / "current"
        self.previous = self.root / "previous"

    def release(self, version: str) -> Path:
        return self.releases / version

    def partial(self, version: str) -> Path:
        return self.releases / f"{version}{PARTIAL}"

    def complete(self, version: str) -> bool:
        return (self.release(version) / COMPLETE).is_file()

    def _target(self, link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        parts = Path(target).parts
        if len(parts) != 2 or parts[0] != "releases":
            return None
        return parts[1]

    def current_version(self) -> str | None:
        """The version `current` points at (None without a valid link)."""
        return self._target(self.current)

    def previous_version(self) -> str | None:
        return self._target(self.previous)

    def _point(self, link: Path, version: str) -> None:
        tmp = link.with_name(f".{link.name}.new")
        tmp.unlink(missing_ok=True)
        os.symlink(f"releases/{version}", tmp)
        os.replace(tmp, link)
        fsync_dir(self.root)

    def switch(self, version: str) -> None:
        """Point `current` at releases/<version> in one rename."""
        if not self.complete(version):
            raise FileNotFoundError(f"release {version} is not complete in {self.releases}")
        self._point(self.current, version)

    def keep_previous(self, version: str) -> None:
        self._point(self.previous, version)

    def clean_temporaries(self) -> list[str]:
        """Remove half-made links (a power cut between symlink and rename)."""
        gone = []
        for link in (self.current, self.previous):
            tmp = link.with_name(f".{link.name}.new")
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
                gone.append(tmp.name)
        return gone

    def prune(self, keep_partial: str | None = None) -> list[str]:
        """Remove every release except current and previous; returns what was removed."""
        keep = {v for v in (self.current_version(), self.previous_version()) if v}
        removed: list[str] = []
        if not self.releases.is_dir():
            return removed
        for d in sorted(self.releases.iterdir()):
            if d.name in keep or (keep_partial and d.name == f"{keep_partial}{PARTIAL}"):
                continue
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            else:
                d.unlink()
            removed.append(d.name)
        if removed:
            fsync_dir(self.releases)
        return removed
