"""The update job's state machine, persisted so a power cut at any step resumes or fails cleanly.

    queued -> downloading -> verifying -> installing -> switching -> checking
           -> succeeded | failed | rolled-back

`queued` and `downloading` belong to the daemon (the chunked transfer, `appliance.hublink.
update_job`); from `verifying` on, `Updater.apply` runs in its own process (outside the daemon's
unit, which it restarts). Every state is written to ``<state_dir>/update/job.json`` (atomic,
fsynced) BEFORE the step's work starts, so `boot_check` (run at boot, before the daemon) knows
where a power cut fell:

- queued, downloading: kept; the daemon resumes the download from its chunk journal;
- before the switch (verifying, installing): the half-made release and unpacked wheels are
  removed, the job `failed`; `current` never moved;
- during the switch or the health check: `current` is put back on the release it pointed at
  before and the job is `rolled-back` (the new release never proved healthy);
- `succeeded`: left as is (pruning is finished if it was cut short).

`WATCHPOST_UPDATE_TEST_HOOK` (tests and labs only) is ``step:action[,step:action]`` with action
`pause` (touch ``update/paused-<step>`` and wait to be killed) or `die` (SIGKILL itself) at a
named step: the job states and ``installing.venv``, ``installing.built``, ``switching.linked``,
``switching.migrated``.

A release may carry a config migration (`appliance.update.migrate`): it runs once after the link
and before the restart, its files backed up first; every rollback (here or at boot) restores
them before the old release starts again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.update import artifact, health, install, migrate
from appliance.update.layout import Layout
from protocol import release as rel
from protocol.files import atomic_write
from protocol.release import ReleaseError

QUEUED = "queued"
DOWNLOADING = "downloading"
VERIFYING = "verifying"
INSTALLING = "installing"
SWITCHING = "switching"
CHECKING = "checking"
SUCCEEDED = "succeeded"
FAILED = "failed"
ROLLED_BACK = "rolled-back"
STATES = (
    QUEUED, DOWNLOADING, VERIFYING, INSTALLING, SWITCHING, CHECKING, SUCCEEDED, FAILED, ROLLED_BACK
)  # fmt: skip
TERMINAL = (SUCCEEDED, FAILED, ROLLED_BACK)
HOOK_ENV = "WATCHPOST_UPDATE_TEST_HOOK"
SPACE_MARGIN = 64 * 1024 * 1024
SPACE_FACTOR = 4  # an installed venv takes ~3x its compressed wheels


def _is_version(text: str) -> bool:
    try:
        rel.parse_version(text)
    except ReleaseError:
        return False
    return True


def update_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / "update"


class JobStore:
    """``<state_dir>/update/job.json``: the one job (the latest)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = update_dir(state_dir)
        self.path = self.dir / "job.json"

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # atomic writes never leave half a file; a hand-broken one is no job
        return data if isinstance(data, dict) and data.get("state") in STATES else None

    def save(self, job: dict[str, Any]) -> None:
        atomic_write(self.path, json.dumps(job, sort_keys=True).encode(), 0o600)


def job_summary(doc: dict[str, Any] | None) -> dict[str, Any]:
    """What `status` shows of a job file: id, state, version, from, reason, at (the time of
    its latest state), migration (id, state); ``{}`` when there never was a job."""
    if not doc:
        return {}
    out = {k: doc[k] for k in ("id", "state", "version", "from", "reason") if doc.get(k)}
    history = doc.get("history") or []
    if history and isinstance(history[-1], list) and len(history[-1]) == 2:
        out["at"] = history[-1][1]
    migration = doc.get("migration")
    if isinstance(migration, dict):
        out["migration"] = {k: migration[k] for k in ("id", "state") if k in migration}
    return out


class JobView:
    """The latest job's summary for the daemon's once-a-second snapshot: the job file is read
    again only when it changed (one stat a call)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.store = JobStore(state_dir)
        self._key: tuple[int, int] | None = None
        self._summary: dict[str, Any] = {}

    def summary(self) -> dict[str, Any]:
        try:
            st = self.store.path.stat()
            key: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except OSError:
            key = None
        if key != self._key:
            self._key = key
            self._summary = job_summary(self.store.load()) if key else {}
        return dict(self._summary)


def hook_from_env(state_dir: Path) -> Callable[[str], None]:
    spec = os.environ.get(HOOK_ENV, "")
    actions = dict(part.split(":", 1) for part in spec.split(",") if ":" in part)
    if not actions:
        return lambda step: None

    def hook(step: str) -> None:
        action = actions.get(step)
        if action == "pause":
            update_dir(state_dir).mkdir(parents=True, exist_ok=True)
            (update_dir(state_dir) / f"paused-{step}").write_text(str(os.getpid()))
            while True:
                time.sleep(3600)
        elif action == "die":
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


@dataclass
class Updater:
    """What an update needs from the machine; the CLI builds the real one."""

    layout: Layout
    state_dir: Path
    keys: Sequence[Ed25519PublicKey]
    machine: str
    probe: Callable[[], health.Sample]
    restart: Callable[[], None]
    python: str
    system_site_packages: bool = True
    deadline_s: float = health.DEFAULT_DEADLINE_S
    interval_s: float = health.DEFAULT_INTERVAL_S
    hook: Callable[[str], None] = field(default=lambda step: None)

    def __post_init__(self) -> None:
        self.store = JobStore(self.state_dir)

    @property
    def wheels_dir(self) -> Path:
        return self.store.dir / "wheels"

    def _set(self, job: dict[str, Any], state: str, **fields: Any) -> None:
        job.update(fields)
        job["state"] = state
        job.setdefault("history", []).append([state, int(time.time())])
        self.store.save(job)
        self.hook(state)

    def _fail(self, job: dict[str, Any], reason: str) -> dict[str, Any]:
        shutil.rmtree(self.wheels_dir, ignore_errors=True)
        version = job.get("version")
        if isinstance(version, str) and _is_version(version):
            shutil.rmtree(self.layout.partial(version), ignore_errors=True)
        self._set(job, FAILED, reason=reason)
        return job

    # --- the run ---------------------------------------------------------------------------

    def apply(self, path: Path, job_id: str, expect_version: str | None = None) -> dict[str, Any]:
        """Verify, install, switch and check the artifact at `path`; returns the final job."""
        current = self.layout.current_version()
        job: dict[str, Any] = self.store.load() or {}
        if job.get("id") != job_id:
            job = {"id": job_id, "history": []}
        job.update({"artifact": str(path), "from": current, "reason": ""})
        self._set(job, VERIFYING)
        # Free space first: nothing is unpacked onto a disk that cannot take it.
        need = path.stat().st_size * SPACE_FACTOR + SPACE_MARGIN
        self.layout.releases.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.layout.releases).free
        if free < need:
            return self._fail(
                job, f"not enough free space in {self.layout.releases}: {free >> 20} MiB free, "
                f"{need >> 20} MiB needed",
            )  # fmt: skip
        try:
            verified = artifact.verify(path, self.keys, self.machine)
            version = verified.version
            job["version"] = version
            self._check_versions(verified.manifest, current, expect_version)
        except ReleaseError as e:
            return self._fail(job, f"refused: {e}")
        self._set(job, INSTALLING)
        try:
            wheels = artifact.extract_wheels(verified, self.wheels_dir)
            install.install(
                self.layout, version, wheels, python=self.python,
                system_site_packages=self.system_site_packages, hook=self.hook,
            )  # fmt: skip
        except (ReleaseError, install.InstallError, OSError) as e:
            return self._fail(job, f"install of {version} failed: {e}")
        finally:
            shutil.rmtree(self.wheels_dir, ignore_errors=True)
        try:
            first = self.probe()
            time.sleep(self.interval_s)
            before = health.baseline(first, self.probe())
        except OSError:
            before = health.Baseline()
        self._set(
            job,
            SWITCHING,
            baseline=before.to_dict(),
            previous_before=self.layout.previous_version(),
        )
        if current:
            self.layout.keep_previous(current)
        self.layout.switch(version)
        self.hook("switching.linked")
        mig = verified.manifest.get("migration")
        if mig:
            try:
                self._migrate(job, mig)
            except (migrate.MigrationError, OSError) as e:
                return self.rollback(job, f"config migration {mig['id']} failed: {e}")
            self.hook("switching.migrated")
        try:
            self.restart()
        except OSError as e:
            return self.rollback(job, f"restarting the daemon failed: {e}")
        self._set(job, CHECKING)
        reason = health.wait_healthy(before, self.probe, self.deadline_s, self.interval_s)
        if reason is not None:
            return self.rollback(job, reason)
        self._set(job, SUCCEEDED, reason="")
        self.finish(job)
        return job

    def _check_versions(
        self, manifest: dict[str, Any], current: str | None, expect: str | None
    ) -> None:
        version = manifest["version"]
        if expect is not None and version != expect:
            raise ReleaseError(f"the artifact is release {version}, the job is for {expect}")
        if current is None:
            return
        new, cur = rel.parse_version(version), rel.parse_version(current, "current release")
        if new == cur:
            raise ReleaseError(f"release {version} is already running")
        if new < cur and not manifest["downgrade"]:
            raise ReleaseError(
                f"release {version} is older than the running {current}: a downgrade, and the "
                "manifest is not signed as one"
            )
        if cur < rel.parse_version(manifest["min_from"]):
            raise ReleaseError(
                f"release {version} upgrades from {manifest['min_from']} or later; "
                f"this device runs {current}"
            )

    def _migrate(self, job: dict[str, Any], mig: dict[str, Any]) -> None:
        """Run the release's config migration once (backed up first, see `migrate`)."""
        info: dict[str, Any] = {"id": mig["id"], "state": "pending"}
        job["migration"] = info

        def saved(state: str) -> None:
            info["state"] = state
            self.store.save(job)

        info["state"] = migrate.run_once(self.state_dir, self.store.dir, str(job["id"]), mig, saved)
        self.store.save(job)

    def _undo_migration(self, job: dict[str, Any]) -> None:
        """Put the files a migration changed back (before the old release starts again)."""
        info = job.get("migration")
        if isinstance(info, dict) and info.get("state") in ("backed-up", "applied"):
            migrate.undo(self.state_dir, self.store.dir, str(job["id"]), str(info["id"]))
            info["state"] = "undone"
            self.store.save(job)

    def finish(self, job: dict[str, Any]) -> None:
        """After success: prune older releases, drop the artifact."""
        self.layout.prune()
        migrate.prune_backups(self.store.dir, str(job.get("id")))
        art = job.get("artifact")
        if art:
            Path(art).unlink(missing_ok=True)
        job["pruned"] = True
        self.store.save(job)

    def rollback(self, job: dict[str, Any], reason: str) -> dict[str, Any]:
        """Switch back to the release that ran before, restart it, report why."""
        old = self._switch_back(job)
        with_restart = ""
        try:
            self.restart()
        except OSError as e:
            with_restart = f" (restarting {old} failed too: {e})"
        self._drop_new(job)
        self._set(job, ROLLED_BACK, reason=f"{reason}; switched back to {old}{with_restart}")
        return job

    def _switch_back(self, job: dict[str, Any]) -> Any:
        """The config migration undone, `current` and `previous` as before the job; the old
        release's version."""
        old = job.get("from")
        self._undo_migration(job)
        if old and self.layout.complete(old):
            self.layout.switch(old)
        prev = job.get("previous_before")
        if prev and self.layout.complete(prev):
            self.layout.keep_previous(prev)
        return old

    def _drop_new(self, job: dict[str, Any]) -> None:
        """The job's new release removed, unless it is what runs."""
        old, new = job.get("from"), job.get("version")
        if new and new != old and self.layout.current_version() != new:
            shutil.rmtree(self.layout.release(new), ignore_errors=True)

    # --- at boot ---------------------------------------------------------------------------

    def boot_check(self) -> dict[str, Any] | None:
        """Finish or revert what a power cut left; returns the job (None: there is none)."""
        self.layout.clean_temporaries()
        job = self.store.load()
        if job is None:
            return None
        state = job["state"]
        if state == SUCCEEDED:
            if not job.get("pruned"):
                self.finish(job)
            return job
        if state in TERMINAL:
            return job
        if state in (QUEUED, DOWNLOADING):
            # The daemon's download: its chunk journal lets the next chunk resume it (nothing
            # outside the state dir was touched yet).
            return job
        old = job.get("from")
        if state in (VERIFYING, INSTALLING) or (
            state == SWITCHING and self.layout.current_version() == old
        ):
            for part in (p for p in self.layout.releases.glob("*.partial") if p.is_dir()):
                shutil.rmtree(part, ignore_errors=True)
            new = job.get("version")
            if new and new != old and new != self.layout.current_version():
                shutil.rmtree(self.layout.release(new), ignore_errors=True)
            art = job.get("artifact")
            if art:
                Path(art).unlink(missing_ok=True)
            return self._fail(job, f"interrupted while {state} (power cut or crash); {old} kept")
        # switching with current moved, or checking: the new release never proved healthy.
        return self._boot_rollback(job, state)

    def _boot_rollback(self, job: dict[str, Any], state: str) -> dict[str, Any]:
        reason = f"interrupted while {state} before the health check passed (power cut or crash)"
        old = self._switch_back(job)
        self._drop_new(job)
        # No restart here: the boot check runs before the daemon's unit starts.
        self._set(job, ROLLED_BACK, reason=f"{reason}; switched back to {old}")
        return job
