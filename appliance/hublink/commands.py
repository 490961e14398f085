"""Device side of remote management: verify signed envelopes and dispatch commands.

This module is the dispatcher only: the envelope checks, the replay-state commit around each
command, the answers and the worker thread. The rest lives next to it: `handlers` (one module
per kind of command and the dispatch table `handlers.COMMANDS`, as data), `command_api` (the
`Device` facade, argument checks, answer codes), `remote_config` (set-config's all-or-nothing
apply and the redaction), `replay_state` (what was accepted, the time floor, the clock),
`intel_transfer` (the chunked intel-update job), `rules_job` (rule bundles over it),
`update_job` (the release update job), `desired` (``config/desired`` and ``config/reported``).

Wiring (the daemon and the MQTT link):

- The daemon implements `Device` (a small facade over its real actions,
  `appliance.hublink.device.ServiceDevice`) and builds ``CommandHandler.from_config(device)``;
  `start` runs a worker thread so slow commands (an intel reload) never stall the MQTT network
  loop; `tick` times out abandoned intel transfers.
- The link calls ``handler.attach(publish)`` once, where ``publish(subtopic, payload_dict,
  retain)`` publishes JSON under the device's topic root (used for ``config/reported``).
- For each message on ``cmd`` the link calls ``handler.on_command(payload, reply)``; ``reply``
  publishes an answer dict on ``cmd/res`` and, when the message had an MQTT 5 response topic, on
  that topic with the same correlation data. A command may answer more than once (job states).
- For each (retained) message on ``config/desired`` the link calls
  ``handler.on_desired(payload)``; after every (re)connect it calls ``handler.on_connect()``.

Answers are ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error", "code"}``;
job answers add ``"job": {"id", "state", ...}`` with state queued, in-progress, succeeded,
failed or rejected. Every payload gets an answer, whatever it holds (bad UTF-8, lone
surrogates, junk): never silence, never a traceback. An envelope on ``cmd`` must be signed
``"for": "cmd"``. Its seq is saved before the command acts (a failed save refuses it); a command
refused after that gets its seq back, so a rejected envelope changes nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.config import Config
from appliance.hublink import remote_config
from appliance.hublink.command_api import (
    BUSY,
    FAILED,
    ClockSynced,
    CommandFailed,
    Device,
    Publish,
    Reply,
)
from appliance.hublink.desired import DesiredConfig
from appliance.hublink.handlers import COMMANDS, Handler
from appliance.hublink.handlers.info import tail_lines
from appliance.hublink.intel_transfer import TRANSFER_TIMEOUT_S, IntelTransfer
from appliance.hublink.intel_transfer import answer as _answer
from appliance.hublink.remote_config import REDACTED, redacted
from appliance.hublink.replay_state import (
    CommandStateError,
    ReplayState,
    Undo,
    system_clock_synced,
)
from appliance.hublink.rules_job import make_transfer as rules_transfer
from appliance.hublink.update_job import UpdateJob
from protocol import envelope as env_mod
from protocol.envelope import EnvelopeError

__all__ = [
    "REDACTED",
    "CommandFailed",
    "CommandHandler",
    "CommandStateError",
    "Device",
    "ReplayState",
    "redacted",
    "system_clock_synced",
    "tail_lines",
]

log = logging.getLogger(__name__)


# --- the handler --------------------------------------------------------------------------------


class CommandHandler:
    """Verifies envelopes and runs commands against a `Device`; see the module docstring."""

    def __init__(
        self,
        device: Device,
        keys: Sequence[Ed25519PublicKey],
        state_path: str | os.PathLike[str],
        intel_dir: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        clock_synced: ClockSynced = system_clock_synced,
        publish: Publish | None = None,
        queue_max: int = 64,
        transfer_timeout: float = TRANSFER_TIMEOUT_S,
        commands: Mapping[str, Handler] | None = None,
    ) -> None:
        self.device = device
        self.keys = list(keys)
        self.state = ReplayState(state_path, clock=clock)
        self.intel_dir = Path(intel_dir)
        self.clock = clock
        self.clock_synced = clock_synced
        self.counters: Counter[str] = Counter()
        self.intel = IntelTransfer(
            self.keys,
            self.intel_dir,
            lambda: self.device.reload_intel(),
            self.counters,
            timeout=transfer_timeout,
        )
        self.rules = rules_transfer(
            self.keys, lambda: self.device.config, self.counters, timeout=transfer_timeout
        )
        self.update = UpdateJob(self.keys, Path(state_path).parent)
        self.desired = DesiredConfig(self)
        self.desired.publish = publish
        self._lock = threading.RLock()
        self._queue: queue.Queue[tuple[str, bytes, Reply | None] | None] = queue.Queue(queue_max)
        self._worker: threading.Thread | None = None
        # The dispatch table (`appliance.hublink.handlers.COMMANDS`), bound to this handler.
        self._commands: dict[str, Callable[[dict[str, Any], Reply], dict[str, Any] | None]] = {
            name: functools.partial(run, self) for name, run in (commands or COMMANDS).items()
        }
        self._deferred: Callable[[], None] | None = None
        self._undo: Undo | None = None  # the commit of the command running now

    @classmethod
    def from_config(cls, device: Device, **kwargs: Any) -> CommandHandler:
        """A handler using the config's command key and state directory."""
        cfg = device.config
        keys = env_mod.load_public_keys(cfg.hub.command_pubkey)
        return cls(
            device,
            keys,
            state_path=state_path_for(cfg),
            intel_dir=intel_dir_for(cfg),
            **kwargs,
        )

    @property
    def commands(self) -> tuple[str, ...]:
        return tuple(self._commands)

    def redacted(self, config: Config) -> dict[str, Any]:
        return redacted(config)

    # --- link side ----------------------------------------------------------------------------

    def attach(self, publish: Publish) -> None:
        """Where `config/reported` goes: ``publish(subtopic, payload, retain)``."""
        self.desired.publish = publish

    def on_command(self, payload: bytes, reply: Reply) -> None:
        """A message on `cmd` (from the MQTT thread): queued for the worker, or run inline."""
        self._submit("cmd", payload, reply)

    def on_desired(self, payload: bytes) -> None:
        """A (retained) message on `config/desired`."""
        self._submit("desired", payload, None)

    def on_connect(self) -> None:
        """After each (re)connect: make sure `config/reported` is current."""
        self._submit("report", b"", None)

    def _submit(self, kind: str, payload: bytes, reply: Reply | None) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._run(kind, payload, reply)
            return
        try:
            self._queue.put_nowait((kind, bytes(payload), reply))
        except queue.Full:
            self.counters["busy"] += 1
            if reply is not None:
                eid = _peek_id(payload)
                reply(_answer(eid, False, error="busy: too many commands queued", code=BUSY))

    def _run(self, kind: str, payload: bytes, reply: Reply | None) -> None:
        try:
            if kind == "cmd" and reply is not None:
                self.handle_command(payload, reply)
            elif kind == "desired":
                self.handle_desired(payload)
            elif kind == "report":
                self.report()
        except Exception:  # a bug must not kill the worker or the MQTT thread
            log.exception("command handler failed on a %s message", kind)

    # --- life cycle (driven by remote management, appliance.hublink.device) --------------------

    def start(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        self._worker = threading.Thread(target=self._work, name="hub-commands", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._run(*item)

    def stop(self) -> None:
        worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(None)
            worker.join(timeout=10)
        self._worker = None
        with self._lock:
            self.intel.discard()
            self.rules.discard()

    def tick(self, now: float) -> None:
        """Fail an intel transfer that has waited too long for its missing chunks."""
        # Never wait here: tick runs in the daemon's main loop while a reload may hold the lock.
        if not self._lock.acquire(blocking=False):
            return
        try:
            self.intel.tick(now)
            self.rules.tick(now)
        finally:
            self._lock.release()

    def stats(self) -> dict[str, Any]:
        return {
            "commands_accepted": self.counters["accepted"],
            "commands_rejected": sum(
                v for k, v in self.counters.items() if k.startswith("rejected:")
            ),
            "desired_version": self.state.desired_version,
        }

    # --- commands -------------------------------------------------------------------------------

    def handle_command(self, payload: bytes, reply: Reply) -> None:
        """Verify and run one envelope; every outcome is answered through `reply`."""
        with self._lock:
            self._deferred = None
            try:
                env = env_mod.parse(payload)
                self.authenticate(env, env_mod.FOR_COMMAND)
                fn = self._commands.get(env["cmd"])
                if fn is None:
                    raise EnvelopeError(
                        env_mod.UNKNOWN,
                        f"unknown command {env['cmd']!r} (known: {', '.join(self._commands)})",
                        env["id"],
                    )
            except EnvelopeError as e:
                self._reject(reply, e.envelope_id, e.code, str(e))
                return
            except Exception as e:  # a bug in the checks: still answer
                log.exception("checking an envelope failed")
                self._reject(reply, _peek_id(payload), env_mod.MALFORMED, f"malformed: {e!r}")
                return
            cmd, eid = env["cmd"], env["id"]
            try:  # used before it acts: a crash in the middle cannot let it run twice
                undo = self.state.commit(env["device"], env["seq"], eid, env["issued_at"])
            except OSError as e:
                self._reject(
                    reply,
                    eid,
                    FAILED,
                    f"cannot save the replay state ({e.strerror or e}): {cmd} refused, "
                    "nothing done",
                    cmd=cmd,
                )
                return
            self._undo = undo
            try:
                result = fn(env, reply)
            except CommandFailed as e:
                self._refuse(undo, reply, eid, e.code, str(e), cmd)
                return
            except (ValueError, OSError, NotImplementedError, TimeoutError) as e:
                self._refuse(undo, reply, eid, FAILED, f"{cmd}: {e}", cmd)
                return
            except Exception as e:  # a bug in a device action: still answer
                log.exception("command %s failed", cmd)
                self._refuse(undo, reply, eid, FAILED, f"{cmd}: internal error: {e!r}", cmd)
                return
            finally:
                self._undo = None
            if result is None:  # a job command that answered for itself
                return
            self.counters["accepted"] += 1
            log.info("command %s (%s) done", cmd, eid)
            reply(_answer(eid, True, result=result))
            deferred, self._deferred = self._deferred, None
        if deferred is not None:
            deferred()

    def authenticate(self, env: dict[str, Any], purpose: str) -> None:
        """For this device, signed by the hub, meant for `purpose` (cmd or desired), not
        replayed (commands) and not expired; else EnvelopeError."""
        me = self.device.config.device.id
        if env["device"] != me:
            raise EnvelopeError(
                env_mod.WRONG_DEVICE,
                f"wrong device: the envelope is for {env['device']!r}, this is {me!r}",
                env["id"],
            )
        env_mod.verify(env, self.keys)
        if env["for"] != purpose:
            where = "cmd" if purpose == env_mod.FOR_COMMAND else "config/desired"
            raise EnvelopeError(
                env_mod.WRONG_PURPOSE,
                f"wrong purpose: the envelope is signed for {env['for']!r}, not for {where}",
                env["id"],
            )
        if purpose == env_mod.FOR_COMMAND:
            self.state.check(env["device"], env["seq"], env["id"])
        self.state.check_expiry(env, self.clock(), self.clock_synced())

    @staticmethod
    def describe_failure(e: BaseException) -> str:
        if isinstance(e, EnvelopeError | CommandFailed):
            return str(e)
        log.error("desired config failed", exc_info=e)
        return f"internal error: {e!r}"

    def _refuse(
        self, undo: Undo, reply: Reply, eid: str, code: str, message: str, cmd: str
    ) -> None:
        self.state.undo(undo)
        self._reject(reply, eid, code, message, cmd=cmd)

    def _reject(
        self, reply: Reply, eid: str | None, code: str, message: str, cmd: str = ""
    ) -> None:
        self.counters[f"rejected:{code}"] += 1
        log.warning("command %s %s rejected: %s", cmd or "?", eid or "?", message)
        reply(_answer(eid, False, error=message, code=code))

    def defer(self, action: Callable[[], None]) -> None:
        """Run `action` after the running command's answer is sent (restart, reboot, a
        `config/reported` refresh)."""
        self._deferred = action

    @property
    def running_undo(self) -> Undo | None:
        """The replay-state commit of the command running now (a job gives it back itself)."""
        return self._undo

    def apply_changes(
        self, changes: Mapping[str, Any], commit: Callable[[], None] | None = None
    ) -> tuple[Config, bool]:
        """A remote config change, all or nothing (`remote_config.apply_changes`)."""
        return remote_config.apply_changes(self.device, changes, commit)

    # --- desired / reported config (appliance.hublink.desired) ----------------------------------

    def handle_desired(self, payload: bytes) -> None:
        """Apply a retained desired config when its version is newer (see `desired`)."""
        with self._lock:
            self.desired.handle(payload)

    def reported(self, error: str = "", rejected_version: int | None = None) -> dict[str, Any]:
        return self.desired.reported(error, rejected_version)

    def report(self, error: str = "", rejected_version: int | None = None) -> None:
        """Publish `config/reported` (retained) if a link is attached."""
        self.desired.report(error, rejected_version)


def _peek_id(payload: bytes) -> str | None:
    try:
        eid = json.loads(payload).get("id")
    except (ValueError, AttributeError):
        return None
    return eid if isinstance(eid, str) and len(eid) <= 128 else None


def state_path_for(config: Config) -> Path:
    return Path(config.device.state_dir) / "commands.json"


def intel_dir_for(config: Config) -> Path:
    """Where intel bundles from the hub are installed (load `bundle.installed_paths` of it)."""
    return Path(config.device.state_dir) / "intel"
