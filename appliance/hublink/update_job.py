"""The `update` job on the device: a signed release artifact (`protocol.release`) arrives as a
chunked bundle of kind `watchpost-release` (the same transfer as intel bundles,
`protocol.bundle`), then the updater (`watchpost update apply`, outside the daemon's unit since
it restarts the daemon) verifies, installs, switches and checks it.

Job states answered on ``cmd/res``: queued (first chunk), downloading (each chunk), then the
updater's own states read from ``<state_dir>/update/job.json`` as it writes them: verifying,
installing, switching, checking, succeeded | failed | rolled-back. A new daemon (after the
switch) finds the final state in the same file (`watchpost update status`).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.hublink.intel_transfer import answer
from appliance.update.job import (
    DOWNLOADING,
    FAILED,
    QUEUED,
    TERMINAL,
    JobStore,
    job_summary,
    update_dir,
)
from protocol import bundle
from protocol import release as rel

log = logging.getLogger(__name__)

Reply = Callable[[dict[str, Any]], None]
Launch = Callable[[Path, str, str], None]
FOLLOW_S = 3600.0


LAB_ARGS_ENV = "WATCHPOST_UPDATE_LAB_ARGS"


def _watchpost_exe() -> str:
    """The running release's own `watchpost` (its venv's bin), else the one on PATH."""
    own = Path(sys.executable).parent / "watchpost"
    if own.is_file():
        return str(own)
    return shutil.which("watchpost") or "/opt/watchpost/bin/watchpost"


def updater_command(artifact: Path, job: str, version: str, state_dir: Path) -> list[str]:
    """`watchpost update apply ...`; the lab adds its own options (`--root`, `--probe-file`,
    ...) in WATCHPOST_UPDATE_LAB_ARGS and then runs it without systemd-run."""
    cmd = [_watchpost_exe(), "update", "apply", str(artifact), "--job", job, "--version", version,
           "--state-dir", str(state_dir)]  # fmt: skip
    lab = os.environ.get(LAB_ARGS_ENV)
    if lab:
        return [*cmd, *shlex.split(lab)]
    if shutil.which("systemd-run"):
        cmd = ["systemd-run", f"--unit=watchpost-update-{job}", "--collect", *cmd]
    return cmd


def systemd_launch(artifact: Path, job: str, version: str, state_dir: Path) -> None:
    """Run the updater as its own transient unit (so restarting the daemon does not kill it)."""
    cmd = updater_command(artifact, job, version, state_dir)
    log_path = update_dir(state_dir) / "updater.log"
    with open(log_path, "ab") as out:
        subprocess.Popen(cmd, start_new_session=True, stdout=out, stderr=out)


class UpdateJob:
    """At most one release transfer; the updater runs after the last chunk.

    Chunks are journalled (`protocol.bundle.Transfer` with `resumable`) in the state dir, so a
    transfer cut by a dropped link, a daemon restart or a reboot continues: every chunk answer
    carries ``received``, ``count`` and ``missing`` (the ranges still wanted, ``[[first, last],
    ...]``, the first `bundle.MAX_RANGES`), and a sender that resends any chunk of the job
    (e.g. chunk 0) learns from its answer which ones to send.
    """

    def __init__(
        self,
        keys: Sequence[Ed25519PublicKey],
        state_dir: str | os.PathLike[str],
        launch: Launch | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.keys = list(keys)
        self.state_dir = Path(state_dir)
        self.store = JobStore(state_dir)
        self.dir = update_dir(state_dir)
        # How the updater is started (tests pass their own): its own unit, by default.
        self.launch: Launch = launch or (lambda a, j, v: systemd_launch(a, j, v, self.state_dir))
        self.poll_s = poll_s
        self.transfer: bundle.Transfer | None = None
        self._file_state: tuple[str, str] | None = None  # (job, state) last saved by us
        self._restore()

    def _restore(self) -> None:
        """Pick up a download a restart or reboot cut short (from its chunk journal)."""
        doc = self.store.load()
        if not doc or doc["state"] not in (QUEUED, DOWNLOADING):
            return
        for journal in self.dir.glob(f".*.{doc['id']}.part.idx"):
            try:
                header = json.loads(journal.read_bytes().split(b"\n", 1)[0])
                manifest = bundle.check_manifest(header["manifest"], self.keys, kind=rel.KIND)
                t = bundle.Transfer(doc["id"], manifest, header["count"], header["chunk_size"],
                                    self.dir, time.time(), resumable=True)  # fmt: skip
            except (ValueError, KeyError, TypeError, OSError) as e:
                log.warning("update job %s: its download cannot be resumed: %s", doc["id"], e)
                continue
            self.transfer = t
            self._file_state = (t.job, doc["state"])
            log.info("update job %s: download resumed with %d of %d chunks", t.job,
                     len(t.received), t.count)  # fmt: skip
            return

    def _drop_stale(self, keep_job: str) -> None:
        """Remove the staged chunks of any other job (superseded)."""
        for p in self.dir.glob(".*.part*"):
            if f".{keep_job}.part" not in p.name:
                p.unlink(missing_ok=True)

    def _save(self, job: str, state: str, **fields: Any) -> dict[str, Any]:
        doc = {"id": job, "state": state, "history": [[state, int(time.time())]], **fields}
        self.store.save(doc)
        return doc

    def progress(self) -> dict[str, Any]:
        """The job for `status`: the transfer in progress (live counts), else the latest job
        the updater wrote (``{}`` when there never was one)."""
        t = self.transfer
        if t is not None:
            fs = self._file_state
            state = fs[1] if fs is not None and fs[0] == t.job else DOWNLOADING
            return {"id": t.job, "state": state, **self._counts(t)}
        return job_summary(self.store.load())

    @staticmethod
    def _counts(t: bundle.Transfer) -> dict[str, Any]:
        return {"version": t.manifest["version"], "received": len(t.received), "count": t.count,
                "missing": t.missing_ranges()}  # fmt: skip

    def handle(self, env: dict[str, Any], reply: Reply, now: float) -> None:
        eid = env["id"]
        try:
            job, manifest, index, count, chunk_size, data = bundle.parse_chunk(env["args"])
        except bundle.BundleError as e:
            raise ValueError(str(e)) from None
        t = self.transfer
        if (
            t is not None
            and t.job == job
            and (manifest != t.manifest or count != t.count or chunk_size != t.chunk_size)
        ):
            reply(answer(eid, False, error=f"update: chunk {index} does not match job {job}",
                         code="refused", job={"id": job, "state": DOWNLOADING,
                                              **self._counts(t)}))  # fmt: skip
            return
        if t is None or t.job != job:
            try:
                manifest = bundle.check_manifest(manifest, self.keys, kind=rel.KIND)
                version = manifest["version"]
                rel.parse_version(version)
                if manifest["name"] != rel.artifact_name(version):
                    raise bundle.BundleError(f"an artifact for {version} must be named "
                                             f"{rel.artifact_name(version)}")  # fmt: skip
                self.dir.mkdir(parents=True, exist_ok=True)
                free = shutil.disk_usage(self.dir).free
                if free < 2 * manifest["size"]:
                    raise bundle.BundleError(
                        f"not enough free space for the download: {free >> 20} MiB free"
                    )
                current = self.store.load()
                if current and current["state"] not in (*TERMINAL, QUEUED, DOWNLOADING):
                    raise bundle.BundleError(f"update job {current['id']} is {current['state']}")
                if t is not None:
                    t.discard()
                self._drop_stale(job)
                fresh = bundle.Transfer(job, manifest, count, chunk_size, self.dir, now,
                                        resumable=True)  # fmt: skip
            except (bundle.BundleError, rel.ReleaseError, OSError) as e:
                reply(answer(eid, False, error=f"update: {e}", code="refused",
                             job={"id": job, "state": FAILED}))  # fmt: skip
                return
            self.transfer = t = fresh
            if not fresh.resumed:
                self._save(job, QUEUED, version=version, count=count)
                self._file_state = (job, QUEUED)
            state = QUEUED if not fresh.resumed else DOWNLOADING
        else:
            state = DOWNLOADING
        try:
            fresh_chunk = t.add(index, data, now)
        except (bundle.BundleError, OSError) as e:
            self._end(t, f"update: {e}", eid, reply)
            return
        if state == DOWNLOADING and self._file_state != (job, DOWNLOADING):
            # The job file says downloading once (the chunk journal holds the progress).
            self._save(job, DOWNLOADING, version=t.manifest["version"], count=t.count)
            self._file_state = (job, DOWNLOADING)
        reply(answer(eid, True, result={"chunk": index, "duplicate": not fresh_chunk},
                     job={"id": job, "state": state, **self._counts(t)}))  # fmt: skip
        if not t.complete:
            return
        try:
            staged = t.finish()
            artifact = self.dir / "artifact.tar"
            os.replace(staged, artifact)
        except (bundle.BundleError, OSError) as e:
            self._end(t, f"update: {e}", eid, reply)
            return
        self.transfer = None
        version = t.manifest["version"]
        try:
            self.launch(artifact, job, version)
        except OSError as e:
            self._save(
                job, FAILED, version=version, reason=f"update: cannot start the updater: {e}"
            )
            reply(answer(eid, False, error=f"update: cannot start the updater: {e}",
                         code="failed", job={"id": job, "state": FAILED}))  # fmt: skip
            return
        threading.Thread(
            target=self.follow, args=(job, eid, reply), name="update-follow", daemon=True
        ).start()

    def _end(self, t: bundle.Transfer, message: str, eid: str, reply: Reply) -> None:
        t.discard()
        self.transfer = None
        self._save(t.job, FAILED, version=t.manifest["version"], reason=message)
        reply(answer(eid, False, error=message, code="failed", job={"id": t.job, "state": FAILED}))

    def follow(self, job: str, eid: str, reply: Reply, limit_s: float = FOLLOW_S) -> None:
        """Answer each state the updater writes, until a final one (or this daemon stops)."""
        seen = DOWNLOADING
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            doc = self.store.load()
            if doc and doc.get("id") == job and doc["state"] != seen:
                seen = doc["state"]
                info = {"id": job, "state": seen, "version": doc.get("version")}
                if seen in TERMINAL:
                    ok = seen == "succeeded"
                    reply(answer(eid, ok, result={"version": doc.get("version")},
                                 error=doc.get("reason", ""), code="" if ok else seen,
                                 job={**info, "reason": doc.get("reason", "")}))  # fmt: skip
                    return
                reply(answer(eid, True, result={}, job=info))
            time.sleep(self.poll_s)
