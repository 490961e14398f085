"""Device side of remote management: verify signed envelopes and run commands (the dispatch).

The jobs around it live next to it: `replay_state` (what was accepted, the time floor, the
clock), `intel_transfer` (the chunked intel-update job), `desired` (``config/desired`` and
``config/reported``).

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

import contextlib
import errno
import ipaddress
import json
import logging
import os
import queue
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance import config as config_mod
from appliance.config import Config, ConfigError, RemoteRefused
from appliance.hublink.desired import DesiredConfig
from appliance.hublink.intel_transfer import TRANSFER_TIMEOUT_S, BadChunk, IntelTransfer
from appliance.hublink.intel_transfer import answer as _answer
from appliance.hublink.replay_state import (
    CommandStateError,
    ReplayState,
    Undo,
    system_clock_synced,
)
from appliance.hublink.rules_job import make_transfer as rules_transfer
from appliance.hublink.rules_job import rules_dir_for
from appliance.hublink.update_job import UpdateJob
from appliance.packet.addrset import AddrSet
from protocol import bundle
from protocol import envelope as env_mod
from protocol.envelope import EnvelopeError

__all__ = [
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

Reply = Callable[[dict[str, Any]], None]
Publish = Callable[[str, dict[str, Any], bool], None]
ClockSynced = Callable[[], bool]

REDACTED = "<redacted>"
# Secrets never leave the device; a set-config carrying REDACTED for one keeps the current value.
SECRET_KEYS = (("privacy", "key"), ("status", "password_hash"))
MAX_LOG_LINES = 1000
MAX_LOG_BYTES = 32 * 1024
MAX_IDENTIFY_S = 600
MAX_ACK_IDS = 1000

# Answer codes for commands that got past the envelope checks.
INVALID = "invalid"  # bad args
REFUSED = "refused"  # the device (or a rule here) refused the action
FAILED = "failed"  # the action was tried and failed
BUSY = "busy"


# --- the device facade -------------------------------------------------------------------------


class Device(Protocol):
    """What remote management may do to the appliance. Called from the handler's worker thread."""

    @property
    def config(self) -> Config:
        """The config in force (with `source` set to the file it is saved to)."""
        ...

    @property
    def log_file(self) -> str:
        """The daemon's own log file ("" when it logs to no file): all `logs` may read."""
        ...

    def apply_config(self, config: Config) -> None:
        """Apply a validated config live; raise ConfigError to refuse, leaving the old in force."""
        ...

    def block(self, address: str, ttl: int) -> None:
        """Block `address` for `ttl` seconds."""
        ...

    def unblock(self, address: str) -> bool:
        """Lift a block; False if it was not blocked."""
        ...

    def reload_intel(self) -> str:
        """Rebuild the intel store (config paths + `bundle.installed_paths`) and swap it in.

        Return the new store's version; raise to refuse, keeping the old store.
        """
        ...

    def ack_alerts(self, ids: Sequence[str] | None) -> int:
        """Acknowledge alerts (all when `ids` is None); return how many were acknowledged."""
        ...

    def identify(self, seconds: int) -> None:
        """Blink the LEDs for `seconds` so an installer can find this unit."""
        ...

    def restart(self) -> None:
        """Schedule a clean restart of the daemon; return at once."""
        ...

    def reboot(self) -> None:
        """Schedule a reboot of the machine; return at once."""
        ...

    def status(self) -> dict[str, Any]:
        """The status dict (as on the status page and the retained `status` topic)."""
        ...


# --- helpers ------------------------------------------------------------------------------------


class CommandFailed(Exception):
    """A verified command that could not be carried out; nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Arg:
    kind: type
    required: bool = False
    default: Any = None
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()


def _check_args(cmd: str, args: Mapping[str, Any], spec: Mapping[str, Arg]) -> dict[str, Any]:
    unknown = sorted(set(args) - set(spec))
    if unknown:
        known = ", ".join(sorted(spec)) or "none"
        raise CommandFailed(INVALID, f"{cmd}: unknown argument(s) {', '.join(unknown)} ({known})")
    out: dict[str, Any] = {}
    for name, a in spec.items():
        if name not in args:
            if a.required:
                raise CommandFailed(INVALID, f"{cmd}: args.{name} is required")
            out[name] = a.default
            continue
        v = args[name]
        ok = isinstance(v, a.kind) and not (a.kind is int and isinstance(v, bool))
        if not ok:
            raise CommandFailed(INVALID, f"{cmd}: args.{name} must be {a.kind.__name__}")
        if a.lo is not None and a.hi is not None and not a.lo <= v <= a.hi:
            raise CommandFailed(INVALID, f"{cmd}: args.{name} must be from {a.lo} to {a.hi}")
        if a.choices and v not in a.choices:
            raise CommandFailed(
                INVALID, f"{cmd}: args.{name} must be one of {', '.join(a.choices)}"
            )
        out[name] = v
    return out


def redacted(config: Config) -> dict[str, Any]:
    """The TOML-shaped config with secrets replaced by REDACTED (what may leave the device)."""
    data = config.to_dict()
    for section, key in SECRET_KEYS:
        if data.get(section, {}).get(key):
            data[section][key] = REDACTED
    return data


def tail_lines(path: str | os.PathLike[str], lines: int, max_bytes: int) -> tuple[list[str], bool]:
    """The last `lines` lines of a regular file (a symlink or a FIFO is refused), reading at
    most `max_bytes` from its end."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        f.seek(0, os.SEEK_END)
        size = f.tell()
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(size - start)
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line is probably cut
    return text[-lines:], start > 0 or len(text) > lines


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
        self._commands: dict[str, Callable[[dict[str, Any], Reply], dict[str, Any] | None]] = {
            "ping": self._ping,
            "status": self._status,
            "get-config": self._get_config,
            "set-config": self._set_config,
            "set-mode": self._set_mode,
            "intel-update": self._intel_update,
            "rules-update": self._rules_update,
            "update": lambda env, reply: self.update.handle(env, reply, self.clock()),
            "block": self._block,
            "unblock": self._unblock,
            "ack-alerts": self._ack_alerts,
            "identify": self._identify,
            "logs": self._logs,
            "restart": self._restart,
            "reboot": self._reboot,
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

    def _ping(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        _check_args("ping", env["args"], {})
        return {"pong": True, "time": int(self.clock()), "clock_synced": self.clock_synced()}

    def _status(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        _check_args("status", env["args"], {})
        status = dict(self.device.status())
        status["commands"] = {
            **self.stats(),
            "last_seq": self.state.last_seq.get(env["device"], 0),
            "clock_synced": self.clock_synced(),
        }
        status["intel_bundles"] = bundle.installed(self.intel_dir)
        status["update"] = self.update.progress()  # live download counts, else the job file
        status["rules_bundles"] = bundle.installed(rules_dir_for(self.device.config))
        return status

    def _get_config(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        _check_args("get-config", env["args"], {})
        return {
            "config": redacted(self.device.config),
            "desired_version": self.state.desired_version,
        }

    def _set_config(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        new, changed = self.apply_changes(env["args"])
        if changed:
            self._deferred = self.desired.report
        return {"changed": changed, "config": redacted(new)}

    def _set_mode(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        args = _check_args(
            "set-mode", env["args"], {"mode": Arg(str, True, choices=("monitor", "block"))}
        )
        _new, changed = self.apply_changes({"inline": {"mode": args["mode"]}})
        if changed:
            self._deferred = self.desired.report
        return {"mode": args["mode"], "changed": changed}

    def apply_changes(
        self, changes: Mapping[str, Any], commit: Callable[[], None] | None = None
    ) -> tuple[Config, bool]:
        """Check `changes` against the remote allow-list, validate the whole result, apply it
        live, save it as the overlay under the state dir; all or nothing. `commit` (the desired
        version's save) runs last; if it fails the change is undone."""
        current = self.device.config
        if not isinstance(changes, Mapping):
            raise CommandFailed(INVALID, "set-config: args must be a TOML-shaped table")
        changes = _drop_redacted(changes)
        try:
            new = config_mod.remote_merged(current, changes)
        except RemoteRefused as e:
            raise CommandFailed(REFUSED, f"refused: {e}") from None
        except ConfigError as e:
            raise CommandFailed(INVALID, f"invalid config: {e}") from None
        if new == current:
            if commit is not None:
                self._commit_or_fail(commit)
            return current, False
        try:
            self.device.apply_config(new)
        except ConfigError as e:
            raise CommandFailed(REFUSED, f"refused by the device: {e}") from None
        except Exception as e:
            self._restore(current)
            raise CommandFailed(FAILED, f"applying the config failed, change undone: {e}") from e
        try:
            config_mod.save_remote(new)
        except (OSError, ConfigError) as e:
            self._restore(current)
            raise CommandFailed(FAILED, f"could not save the config, change undone: {e}") from e
        if commit is not None:
            try:
                self._commit_or_fail(commit)
            except CommandFailed:
                self._restore(current)
                with contextlib.suppress(OSError, ConfigError):
                    config_mod.save_remote(current)
                raise
        log.info("config changed: %s", ", ".join(sorted(new.changed_sections(current))))
        return new, True

    @staticmethod
    def _commit_or_fail(commit: Callable[[], None]) -> None:
        try:
            commit()
        except OSError as e:
            raise CommandFailed(
                FAILED, f"cannot save the replay state ({e.strerror or e}); change undone"
            ) from None

    def _restore(self, previous: Config) -> None:
        try:
            self.device.apply_config(previous)
        except Exception:
            log.exception("could not restore the previous config after a failed change")

    def _block(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        cfg = self.device.config
        args = _check_args(
            "block",
            env["args"],
            {
                "address": Arg(str, True),
                "ttl": Arg(int, default=cfg.inline.block_ttl, lo=1, hi=30 * 86400),
            },
        )
        addr = self._address("block", args["address"])
        net = AddrSet(cfg.inline.never_block).covering(addr)
        if net is not None:
            raise CommandFailed(REFUSED, f"block: {addr} is in never_block ({net})")
        if addr.is_loopback or addr.is_multicast or addr.is_unspecified or addr.is_link_local:
            raise CommandFailed(REFUSED, f"block: {addr} is not an address that can be blocked")
        try:
            self.device.block(str(addr), args["ttl"])
        except (ValueError, OSError) as e:
            raise CommandFailed(FAILED, f"block: {e}") from None
        return {"address": str(addr), "ttl": args["ttl"]}

    def _unblock(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        args = _check_args("unblock", env["args"], {"address": Arg(str, True)})
        addr = self._address("unblock", args["address"])
        try:
            was = self.device.unblock(str(addr))
        except (ValueError, OSError) as e:
            raise CommandFailed(FAILED, f"unblock: {e}") from None
        return {"address": str(addr), "was_blocked": bool(was)}

    @staticmethod
    def _address(cmd: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            raise CommandFailed(INVALID, f"{cmd}: {text!r} is not an IP address") from None

    def _ack_alerts(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        args = _check_args("ack-alerts", env["args"], {"ids": Arg(list)})
        ids = args["ids"]
        if ids is not None and (
            len(ids) > MAX_ACK_IDS or not all(isinstance(i, str) and 0 < len(i) <= 128 for i in ids)
        ):
            raise CommandFailed(
                INVALID, f"ack-alerts: args.ids must be up to {MAX_ACK_IDS} alert id strings"
            )
        count = self.device.ack_alerts(ids)
        return {"acknowledged": int(count)}

    def _identify(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        args = _check_args(
            "identify", env["args"], {"seconds": Arg(int, default=30, lo=1, hi=MAX_IDENTIFY_S)}
        )
        self.device.identify(args["seconds"])
        return {"seconds": args["seconds"]}

    def _logs(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        args = _check_args(
            "logs", env["args"], {"lines": Arg(int, default=100, lo=1, hi=MAX_LOG_LINES)}
        )
        path = self.device.log_file  # the daemon's own log, never a path from the args
        if not path:
            raise CommandFailed(FAILED, "logs: the daemon logs to no file (log.file is empty)")
        try:
            lines, truncated = tail_lines(path, args["lines"], MAX_LOG_BYTES)
        except OSError as e:
            raise CommandFailed(FAILED, f"logs: {path}: {e.strerror or e}") from None
        return {"file": path, "lines": lines, "truncated": truncated}

    def _restart(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        _check_args("restart", env["args"], {})
        self._deferred = self.device.restart
        return {"restarting": True}

    def _reboot(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        _check_args("reboot", env["args"], {})
        self._deferred = self.device.reboot
        return {"rebooting": True}

    # --- intel-update (a job: appliance.hublink.intel_transfer) -------------------------------

    def _intel_update(self, env: dict[str, Any], reply: Reply) -> None:
        undo = self._undo
        assert undo is not None
        try:
            self.intel.handle(env, reply, self.clock(), refuse=lambda: self.state.undo(undo))
        except BadChunk as e:
            raise CommandFailed(INVALID, str(e)) from None

    def _rules_update(self, env: dict[str, Any], reply: Reply) -> None:
        undo = self._undo
        assert undo is not None
        try:
            self.rules.handle(env, reply, self.clock(), refuse=lambda: self.state.undo(undo))
        except BadChunk as e:
            raise CommandFailed(INVALID, str(e)) from None

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


def _drop_redacted(changes: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in changes.items()}
    for section, key in SECRET_KEYS:
        sec = out.get(section)
        if isinstance(sec, dict) and sec.get(key) == REDACTED:
            del sec[key]
            if not sec:
                del out[section]
    return out


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
