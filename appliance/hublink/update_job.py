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

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.hublink.intel_transfer import answer
from appliance.update.job import DOWNLOADING, FAILED, QUEUED, TERMINAL, JobStore, update_dir
from protocol import bundle
from protocol import release as rel

log = logging.getLogger(__name__)

Reply = Callable[[dict[str, Any]], None]
Launch = Callable[[Path, str, str], None]
FOLLOW_S = 3600.0


def systemd_launch(artifact: Path, job: str, version: str) -> None:
    """Run the updater as its own transient unit (so restarting the daemon does not kill it)."""
    exe = shutil.which("watchpost") or "/opt/watchpost/bin/watchpost"
    cmd = [exe, "update", "apply", str(artifact), "--job", job, "--version", version]
    if shutil.which("systemd-run"):
        cmd = ["systemd-run", f"--unit=watchpost-update-{job}", "--collect", *cmd]
    subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)


class UpdateJob:
    """At most one release transfer; the updater runs after the last chunk."""

    def __init__(
        self,
        keys: Sequence[Ed25519PublicKey],
        state_dir: str | os.PathLike[str],
        launch: Launch = systemd_launch,
        poll_s: float = 0.5,
    ) -> None:
        self.keys = list(keys)
        self.store = JobStore(state_dir)
        self.dir = update_dir(state_dir)
        self.launch = launch
        self.poll_s = poll_s
        self.transfer: bundle.Transfer | None = None

    def _save(self, job: str, state: str, **fields: Any) -> dict[str, Any]:
        doc = {"id": job, "state": state, "history": [[state, int(time.time())]], **fields}
        self.store.save(doc)
        return doc

    def handle(self, env: dict[str, Any], reply: Reply, now: float) -> None:
        eid = env["id"]
        try:
            job, manifest, index, count, chunk_size, data = bundle.parse_chunk(env["args"])
        except bundle.BundleError as e:
            raise ValueError(str(e)) from None
        t = self.transfer
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
                fresh = bundle.Transfer(job, manifest, count, chunk_size, self.dir, now)
            except (bundle.BundleError, rel.ReleaseError, OSError) as e:
                reply(answer(eid, False, error=f"update: {e}", code="refused",
                             job={"id": job, "state": FAILED}))  # fmt: skip
                return
            if t is not None:
                t.discard()
            self.transfer = t = fresh
            self._save(job, QUEUED, version=version)
            state = QUEUED
        else:
            state = DOWNLOADING
        try:
            t.add(index, data, now)
        except (bundle.BundleError, OSError) as e:
            self._end(t, f"update: {e}", eid, reply)
            return
        progress = {"received": len(t.received), "count": t.count, "version": t.manifest["version"]}
        if state == DOWNLOADING or not t.complete:
            self._save(job, DOWNLOADING, version=t.manifest["version"])
        reply(
            answer(eid, True, result={"chunk": index}, job={"id": job, "state": state, **progress})
        )
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
