"""The `intel-update` job: a signed, versioned intel bundle sent in chunks, each chunk its own
command envelope; job states queued → in-progress → succeeded / failed / rejected. The
`rules-update` job is the same transfer with its own bundle kind, folder and `check` (the rules
are parsed before they are swapped in: see `appliance.hublink.rules_job`).

One transfer at a time: a new job supersedes (fails) the one in progress; a job whose missing
chunks do not come within `timeout` seconds fails. The bundle is checked against its signed
manifest and installed by `protocol.bundle.install`, which reloads intel through the device and
puts the previous bundle back if the reload refuses it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import bundle

log = logging.getLogger(__name__)

Reply = Callable[[dict[str, Any]], None]

TRANSFER_TIMEOUT_S = 300.0
REFUSED = "refused"
FAILED = "failed"
INVALID = "invalid"


class BadChunk(Exception):
    """A chunk envelope whose args are not a chunk (answered as an invalid command)."""


def answer(
    eid: str | None,
    ok: bool,
    *,
    result: Any = None,
    error: str = "",
    code: str = "",
    job: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A command answer: ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error",
    "code"}``, plus ``"job"`` for a job command."""
    out: dict[str, Any] = {"id": eid, "ok": ok}
    if ok:
        out["result"] = result if result is not None else {}
    else:
        out["error"] = error
        out["code"] = code
    if job is not None:
        out["job"] = job
    return out


class IntelTransfer:
    """The intel-update (or rules-update) job in progress (at most one)."""

    def __init__(
        self,
        keys: Sequence[Ed25519PublicKey],
        intel_dir: Path,
        reload_intel: Callable[[], str],
        counters: Counter[str],
        *,
        timeout: float = TRANSFER_TIMEOUT_S,
        kind: str = bundle.KIND,
        label: str = "intel-update",
        check: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """`check(staged, manifest)` (if given) looks at the reassembled bundle before it is
        swapped in: it returns what the answer reports, or raises BundleError to refuse it."""
        self.kind = kind
        self.label = label
        self.prefix = label.split("-")[0]  # counters: intel_updates, rules_failures, ...
        self.check = check
        self.keys = list(keys)
        self.intel_dir = intel_dir
        self.reload_intel = reload_intel
        self.counters = counters
        self.timeout = timeout
        self.transfer: bundle.Transfer | None = None
        self.reply: Reply | None = None
        self.job_id: str | None = None
        self.eid: str | None = None  # the envelope of its latest chunk

    def handle(
        self, env: dict[str, Any], reply: Reply, now: float, refuse: Callable[[], None]
    ) -> None:
        """One chunk envelope (already verified and committed). `refuse` gives the envelope
        back when the chunk is rejected before it changed anything. Answers for itself."""
        eid = env["id"]
        try:
            job, manifest, index, count, chunk_size, data = bundle.parse_chunk(env["args"])
        except bundle.BundleError as e:
            raise BadChunk(f"{self.label}: {e}") from None
        jobinfo: dict[str, Any] = {"id": job}
        t = self.transfer
        new_job = t is None or self.job_id != job
        if new_job:
            try:
                manifest = bundle.check_manifest(manifest, self.keys, self.kind)
                fresh = bundle.Transfer(job, manifest, count, chunk_size, self.intel_dir, now)
            except bundle.BundleError as e:
                self._reject(reply, eid, jobinfo, f"{self.label}: {e}", refuse)
                return
            except OSError as e:
                self._reject(reply, eid, jobinfo, f"{self.label}: staging: {e}", refuse)
                return
            if t is not None:
                self.end("failed", f"{self.label}: superseded by job {job}", None, None)
            self.transfer, self.job_id, t = fresh, job, fresh
        else:
            assert t is not None
            if manifest != t.manifest or count != t.count or chunk_size != t.chunk_size:
                message = f"{self.label}: chunk {index} does not match job {job}"
                self._reject(reply, eid, jobinfo, message, refuse)
                return
        self.reply = reply
        self.eid = eid
        self.counters["accepted"] += 1
        try:
            fresh_chunk = t.add(index, data, now)
        except bundle.BundleError as e:
            # Signed but inconsistent: the job cannot be trusted to finish correctly.
            self.end("failed", f"{self.label}: {e}", eid, reply)
            return
        except OSError as e:
            self.end("failed", f"{self.label}: staging: {e}", eid, reply)
            return
        progress = {"received": len(t.received), "count": t.count, "version": t.manifest["version"]}
        state = "queued" if new_job and not t.complete else "in-progress"
        reply(
            answer(
                eid,
                True,
                result={"chunk": index, "duplicate": not fresh_chunk},
                job={**jobinfo, "state": state, **progress},
            )
        )
        if not t.complete:
            return
        reply(
            answer(
                eid,
                True,
                result={},
                job={**jobinfo, "state": "in-progress", **progress, "step": "installing"},
            )
        )
        try:
            staged = t.finish()
            checked = self.check(staged, t.manifest) if self.check is not None else {}
            store_version = bundle.install(self.intel_dir, staged, t.manifest, self.reload_intel)
        except (bundle.BundleError, OSError) as e:
            self.end("failed", f"{self.label}: {e}", eid, reply)
            return
        self.transfer = None
        self.job_id = None
        self.reply = None
        self.counters[f"{self.prefix}_updates"] += 1
        log.info(
            "%s bundle %s %s installed", self.prefix, t.manifest["name"], t.manifest["version"]
        )
        reply(
            answer(
                eid,
                True,
                result={
                    "name": t.manifest["name"],
                    "version": t.manifest["version"],
                    **({"store_version": store_version} if self.check is None else checked),
                },
                job={**jobinfo, "state": "succeeded", **progress},
            )
        )

    def _reject(
        self,
        reply: Reply,
        eid: str,
        jobinfo: dict[str, Any],
        message: str,
        refuse: Callable[[], None],
    ) -> None:
        refuse()
        self.counters[f"rejected:{REFUSED}"] += 1
        log.warning("%s %s rejected: %s", self.label, eid, message)
        reply(answer(eid, False, error=message, code=REFUSED, job={**jobinfo, "state": "rejected"}))

    def end(self, state: str, message: str, eid: str | None, reply: Reply | None) -> None:
        """Fail the transfer in progress (if any), answering on `reply` or its latest one."""
        t = self.transfer
        if t is None:
            return
        reply = reply or self.reply
        t.discard()
        self.transfer = None
        self.job_id = None
        self.reply = None
        self.counters[f"{self.prefix}_failures"] += 1
        log.warning("%s job %s %s: %s", self.label, t.job, state, message)
        if reply is not None:
            reply(
                answer(
                    eid,
                    False,
                    error=message,
                    code=FAILED,
                    job={
                        "id": t.job,
                        "state": state,
                        "received": len(t.received),
                        "count": t.count,
                        "version": t.manifest["version"],
                    },
                )
            )

    def tick(self, now: float) -> None:
        """Fail a transfer that has waited too long for its missing chunks."""
        t = self.transfer
        if t is None or now - t.last_activity < self.timeout:
            return
        missing = bundle._ranges(t.missing())
        self.end(
            "failed",
            f"{self.label}: no chunk for {self.timeout:g} s, missing {missing}",
            self.eid,
            None,
        )

    def discard(self) -> None:
        if self.transfer is not None:
            self.transfer.discard()
            self.transfer = None
