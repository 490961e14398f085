"""Loading and reloading: `load_files` (sources or the compiled cache) and `IntelManager`, which
rebuilds in the background and swaps the finished store in one reference assignment, keeping the
old store when a new load fails. `main` is ``python -m appliance.detect.intel``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.detect.intel.builder import Builder
from appliance.detect.intel.cache import cache_path, read_cache, write_cache
from appliance.detect.intel.formats import load_file, version_of
from appliance.detect.intel.store import IntelStore, LoadProblem

log = logging.getLogger("appliance.detect.intel")


def intel_cache_dir(state_dir: str) -> str | None:
    """Where compiled intel lives: the state directory (the config directory is read-only under
    systemd); None when it cannot be written (then no cache)."""
    d = Path(state_dir) / "intel-cache"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(d) if os.access(d, os.W_OK) else None


def describe(store: IntelStore, limit: int = 20) -> list[str]:
    """What loading said, one line each, for replay and check-config: every file with its
    indicator and bad-line counts (or why it was refused), then the first `limit` bad lines as
    ``file:line: why`` (with how many more)."""
    out = []
    for f in store.files:
        name = f.path
        if f.broken:
            out.append(f"intel {name}: refused: {f.broken}")
            continue
        line = f"intel {name}: {f.indicators} indicators ({f.format})"
        if f.bad_lines:
            line += f", {f.bad_lines} bad line{'s' if f.bad_lines != 1 else ''}"
        out.append(line)
    refused = {f.path for f in store.files if f.broken}
    lines = [p for p in store.problems if p.line or p.path not in refused]
    out += [f"intel {p}" for p in lines[:limit]]
    more = sum(f.bad_lines for f in store.files) - min(len(lines), limit)
    if more > 0:
        out.append(f"intel: ... and {more} more bad lines")
    return out


def load_files(
    paths: Iterable[str], *, cache: bool = False, cache_dir: str | None = None
) -> IntelStore:
    """Build a store from intel files. Never raises for bad content: problems are in
    `store.problems` and refused files in `store.broken`.

    With `cache`, a compiled copy is kept next to the first file (or in `cache_dir`) and reused
    while every source has the same size, mtime and content hash.
    """
    t0 = time.monotonic()
    paths = [str(p) for p in paths]
    cpath = cache_path(paths, cache_dir) if cache else None
    if cpath is not None and cpath.exists():
        store = read_cache(cpath, paths)
        if store is not None:
            store.load_seconds = time.monotonic() - t0
            return store
    builder = Builder()
    problems: list[LoadProblem] = []
    files = [load_file(Path(p), builder, problems) for p in paths]
    store = builder.build()
    store.files = files
    store.problems = problems
    store.version = version_of(files) if len(store) else "empty"
    if cpath is not None and not store.broken:
        try:
            write_cache(store, cpath)
        except OSError as e:
            log.warning("intel cache %s not written: %s", cpath, e.strerror or e)
    store.load_seconds = time.monotonic() - t0
    return store


# -- reloading ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    ok: bool
    version: str
    message: str
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


class IntelManager:
    """Owns the current store and replaces it atomically.

    A reload builds the new store completely (in a background thread) while the old one keeps
    serving; only a finished, acceptable store is swapped in, with one reference assignment, and
    the listeners (e.g. `Engine.set_intel`) are told. A load with a refused file keeps the old
    store and says why in `status()`; at the first load there is no old store, so the good files
    are served and the refused ones reported.
    """

    def __init__(
        self,
        paths: Iterable[str] = (),
        *,
        cache: bool = True,
        cache_dir: str | None = None,
        listeners: Iterable[Callable[[IntelStore], None]] = (),
        isolate: bool = True,
    ) -> None:
        self.paths = tuple(str(p) for p in paths)
        self.cache = cache
        # With a cache, compile in a child process first: parsing millions of lines then holds
        # neither this process's GIL (the packet path) nor its memory (the peak goes with the
        # child); this process only reads the finished cache.
        self.isolate = isolate
        self.cache_dir = cache_dir
        self.listeners = list(listeners)
        self._store = IntelStore()
        self._lock = threading.Lock()  # one load at a time
        self._thread: threading.Thread | None = None
        self._loaded_once = False
        self.last: LoadResult | None = None
        self.loaded_at = 0.0

    @property
    def store(self) -> IntelStore:
        return self._store

    @property
    def version(self) -> str:
        return self._store.version

    @property
    def loading(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def load(self) -> LoadResult:
        """Load now, in the calling thread; swap in the result if it is acceptable."""
        with self._lock:
            t0 = time.monotonic()
            try:
                if self.cache and self.isolate and self.paths:
                    self._compile_in_child()
                new = load_files(self.paths, cache=self.cache, cache_dir=self.cache_dir)
            except Exception as e:  # a bug or out of memory: keep serving the old store
                log.exception("intel load failed")
                result = LoadResult(False, self._store.version, f"intel load failed: {e!r}")
                self.last = result
                return result
            seconds = time.monotonic() - t0
            problems = [str(p) for p in new.problems[:20]]
            refused = new.broken
            if refused and self._loaded_once:
                why = "; ".join(f"{Path(f.path).name}: {f.broken}" for f in refused)
                result = LoadResult(
                    False,
                    self._store.version,
                    f"intel reload refused, still serving {self._store.version}: {why}",
                    seconds,
                    problems,
                )
                log.warning("%s", result.message)
            else:
                self._swap(new)
                msg = f"intel {new.version}: {len(new)} indicators from {len(self.paths)} files"
                if new.bad_lines:
                    msg += f", {new.bad_lines} bad lines"
                if refused:
                    msg += f", refused {', '.join(Path(f.path).name for f in refused)}"
                result = LoadResult(True, new.version, msg, seconds, problems)
                log.info("%s (%.2fs, %s)", msg, seconds, new.loaded_from)
            self.last = result
            return result

    def _compile_in_child(self) -> None:
        """Refresh the cache in a subprocess; on any failure the load below parses in-process."""
        cmd = [sys.executable, "-m", "appliance.detect.intel", "compile"]
        if self.cache_dir:
            cmd += ["--cache-dir", self.cache_dir]
        try:
            out = subprocess.run(
                [*cmd, "--", *self.paths], capture_output=True, text=True, timeout=300, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("intel compile subprocess failed (%s); loading in-process", e)
            return
        if out.returncode not in (0, 1):
            log.warning("intel compile subprocess exited %s: %s", out.returncode, out.stderr[-500:])

    def reload(self, paths: Iterable[str] | None = None) -> threading.Thread:
        """Start a background load (of new `paths`, if given); the old store serves until the
        new one is complete. Returns the thread (join it to wait)."""
        if paths is not None:
            self.paths = tuple(str(p) for p in paths)
        thread = threading.Thread(target=self.load, name="intel-load", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def wait(self, timeout: float | None = None) -> LoadResult | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.last

    def _swap(self, new: IntelStore) -> None:
        self._store = new
        self._loaded_once = True
        self.loaded_at = time.time()
        for fn in self.listeners:
            try:
                fn(new)
            except Exception:
                log.exception("intel listener failed")

    # -- service component hooks ---------------------------------------------------------------

    def configure(self, config: Any) -> None:
        """Live reconfiguration: reload in the background when `[intel]` changed."""
        paths = tuple(config.intel.paths)
        if paths != self.paths or bool(config.intel.cache) != self.cache:
            self.cache = bool(config.intel.cache)
            self.reload(paths)

    def stats(self) -> dict[str, Any]:
        return {"intel": self.status()}

    def status(self) -> dict[str, Any]:
        out = self._store.status()
        out["loading"] = self.loading
        out["loaded_at"] = self.loaded_at
        if self.last is not None:
            out["last_load"] = {"ok": self.last.ok, "message": self.last.message}
        return out


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.detect.intel compile|check [--cache-dir D] [--] FILE...``: compile
    the cache (used by `IntelManager` in a child process) or just report; prints the status as
    JSON; exit 1 when a file was refused."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("compile", "check"):
        print("usage: python -m appliance.detect.intel compile|check [--cache-dir D] FILE...")
        return 2
    cmd, args = args[0], args[1:]
    cache_dir = None
    if args[:1] == ["--cache-dir"] and len(args) >= 2:
        cache_dir, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    store = load_files(args, cache=cmd == "compile", cache_dir=cache_dir)
    print(json.dumps(store.status()))
    return 1 if store.broken else 0
