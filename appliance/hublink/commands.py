"""Device side of remote management: verify signed envelopes, run commands, follow desired config.

Wiring (the daemon and the MQTT link):

- The daemon implements `Device` (a small facade over its real actions) and builds
  ``handler = CommandHandler.from_config(device)``; the handler is also a service component
  (`start`/`tick`/`stop`/`stats`): `start` runs a worker thread so slow commands (an intel
  reload) never stall the MQTT network loop; `tick` times out abandoned intel transfers.
- The link calls ``handler.attach(publish)`` once, where ``publish(subtopic, payload_dict,
  retain)`` publishes JSON under the device's topic root (used for ``config/reported``).
- For each message on ``cmd`` the link calls ``handler.on_command(payload, reply)``; ``reply``
  publishes an answer dict on ``cmd/res`` and, when the message had an MQTT 5 response topic, on
  that topic with the same correlation data. A command may answer more than once (job states).
- For each (retained) message on ``config/desired`` the link calls
  ``handler.on_desired(payload)``; after every (re)connect it calls ``handler.on_connect()``.

Answers are ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error", "code"}``;
job answers add ``"job": {"id", "state", ...}`` with state queued, in-progress, succeeded,
failed or rejected. A rejected envelope changes nothing: the last accepted `seq` is committed
only after a command has succeeded.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance import config as config_mod
from appliance.config import Config, ConfigError
from appliance.packet.addrset import AddrSet
from protocol import bundle
from protocol import envelope as env_mod
from protocol.envelope import EnvelopeError

log = logging.getLogger(__name__)

Reply = Callable[[dict[str, Any]], None]
Publish = Callable[[str, dict[str, Any], bool], None]
ClockSynced = Callable[[], bool]

REDACTED = "<redacted>"
# Secrets never leave the device; a set-config carrying REDACTED for one keeps the current value.
SECRET_KEYS = (("privacy", "key"), ("status", "password_hash"))
# Changing these remotely would cut the device off from its hub or its own identity.
PROTECTED_KEYS = {
    ("device", "id"): "is the certificate's identity; re-provision the device instead",
    ("device", "site"): "is part of the topic root; re-provision the device instead",
    ("device", "state_dir"): "holds the replay state; change it locally",
    ("hub", "enabled"): "would cut the device off from remote management",
    ("hub", "command_pubkey"): "would change who may command the device; change it locally",
}
MAX_LOG_LINES = 1000
MAX_LOG_BYTES = 32 * 1024
MAX_IDENTIFY_S = 600
MAX_ACK_IDS = 1000
RECENT_IDS = 512
TRANSFER_TIMEOUT_S = 300.0

# Answer codes for commands that got past the envelope checks.
INVALID = "invalid"  # bad args
REFUSED = "refused"  # the device (or a rule here) refused the action
FAILED = "failed"  # the action was tried and failed
BUSY = "busy"


# --- clock ------------------------------------------------------------------------------------

_TIME_ERROR = 5  # adjtimex() result while the kernel's STA_UNSYNC is set


def system_clock_synced() -> bool:
    """True once the clock has been synchronised (systemd-timesyncd flag or kernel NTP state).

    `adjtimex` with modes 0 only reads; its return value is TIME_ERROR while STA_UNSYNC is set,
    which both timesyncd and chrony clear once they have disciplined the clock.
    """
    if Path("/run/systemd/timesync/synchronized").exists():
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # larger than struct timex; modes = 0
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return False
    return state >= 0 and state != _TIME_ERROR


# --- the device facade -------------------------------------------------------------------------


class Device(Protocol):
    """What remote management may do to the appliance. Called from the handler's worker thread."""

    @property
    def config(self) -> Config:
        """The config in force (with `source` set to the file it is saved to)."""
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


# --- persisted replay state ---------------------------------------------------------------------


class CommandStateError(RuntimeError):
    """The persisted replay state cannot be read; commands are not safe to accept."""


class ReplayState:
    """Last accepted seq per device, recent envelope ids and the applied desired version.

    Written atomically after every accepted command, so a restart (or a power cut) cannot open
    a window for replaying an envelope that was already accepted.
    """

    FORMAT = 1

    def __init__(self, path: str | os.PathLike[str], recent_max: int = RECENT_IDS) -> None:
        self.path = Path(path)
        self.last_seq: dict[str, int] = {}
        self.recent: deque[str] = deque(maxlen=recent_max)
        self.desired_version = 0
        self.desired_applied_at = 0
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            raise CommandStateError(f"replay state {self.path}: {e.strerror or e}") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != self.FORMAT:
                raise ValueError("unknown format")
            last = data["last_seq"]
            recent = data["recent_ids"]
            if not isinstance(last, dict) or not all(
                isinstance(k, str) and type(v) is int for k, v in last.items()
            ):
                raise ValueError("bad last_seq")
            if not isinstance(recent, list) or not all(isinstance(i, str) for i in recent):
                raise ValueError("bad recent_ids")
            version = data.get("desired_version", 0)
            applied = data.get("desired_applied_at", 0)
            if type(version) is not int or type(applied) is not int:
                raise ValueError("bad desired_version")
        except (ValueError, KeyError, TypeError) as e:
            raise CommandStateError(
                f"replay state {self.path} is unreadable ({e}); refusing commands rather than "
                "forgetting which were already accepted"
            ) from None
        self.last_seq = dict(last)
        self.recent.extend(recent)
        self.desired_version = version
        self.desired_applied_at = applied

    def check(self, device: str, seq: int, envelope_id: str) -> None:
        last = self.last_seq.get(device)
        if last is not None and seq <= last:
            raise EnvelopeError(
                env_mod.REPLAYED,
                f"replayed: seq {seq} is not above the last accepted seq {last}",
                envelope_id,
            )
        if envelope_id in self.recent:
            raise EnvelopeError(
                env_mod.REPLAYED, f"replayed: id {envelope_id} was already accepted", envelope_id
            )

    def accept(self, device: str, seq: int, envelope_id: str) -> None:
        self.last_seq[device] = seq
        self.recent.append(envelope_id)
        self._save()

    def set_desired(self, version: int, now: float) -> None:
        self.desired_version = version
        self.desired_applied_at = int(now)
        self._save()

    def _save(self) -> None:
        data = {
            "format": self.FORMAT,
            "last_seq": self.last_seq,
            "recent_ids": list(self.recent),
            "desired_version": self.desired_version,
            "desired_applied_at": self.desired_applied_at,
        }
        config_mod.atomic_write(self.path, json.dumps(data, sort_keys=True).encode(), mode=0o600)


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
    """The last `lines` lines of a file, reading at most `max_bytes` from its end."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(size - start)
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line is probably cut
    return text[-lines:], start > 0 or len(text) > lines


def _answer(
    eid: str | None,
    ok: bool,
    *,
    result: Any = None,
    error: str = "",
    code: str = "",
    job: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": eid, "ok": ok}
    if ok:
        out["result"] = result if result is not None else {}
    else:
        out["error"] = error
        out["code"] = code
    if job is not None:
        out["job"] = job
    return out


# --- the handler --------------------------------------------------------------------------------


class CommandHandler:
    """Verifies envelopes and runs commands against a `Device`; see the module docstring."""

    SUBSCRIPTIONS = ("cmd", "config/desired")

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
        self.state = ReplayState(state_path)
        self.intel_dir = Path(intel_dir)
        self.clock = clock
        self.clock_synced = clock_synced
        self.transfer_timeout = transfer_timeout
        self._publish = publish
        self._lock = threading.RLock()
        self._queue: queue.Queue[tuple[str, bytes, Reply | None] | None] = queue.Queue(queue_max)
        self._worker: threading.Thread | None = None
        self._transfer: bundle.Transfer | None = None
        self._transfer_reply: Reply | None = None
        self._transfer_id: str | None = None
        self._transfer_eid: str | None = None  # the envelope of its latest chunk
        self.counters: Counter[str] = Counter()
        self._commands: dict[str, Callable[[dict[str, Any], Reply], dict[str, Any] | None]] = {
            "ping": self._ping,
            "status": self._status,
            "get-config": self._get_config,
            "set-config": self._set_config,
            "set-mode": self._set_mode,
            "intel-update": self._intel_update,
            "block": self._block,
            "unblock": self._unblock,
            "ack-alerts": self._ack_alerts,
            "identify": self._identify,
            "logs": self._logs,
            "restart": self._restart,
            "reboot": self._reboot,
        }
        self._deferred: Callable[[], None] | None = None

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

    # --- link side ----------------------------------------------------------------------------

    def attach(self, publish: Publish) -> None:
        """Where `config/reported` goes: ``publish(subtopic, payload, retain)``."""
        self._publish = publish

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
            if self._transfer is not None:
                self._transfer.discard()
                self._transfer = None

    def tick(self, now: float) -> None:
        """Fail an intel transfer that has waited too long for its missing chunks."""
        # Never wait here: tick runs in the daemon's main loop while a reload may hold the lock.
        if not self._lock.acquire(blocking=False):
            return
        try:
            t = self._transfer
            if t is None or now - t.last_activity < self.transfer_timeout:
                return
            missing = bundle._ranges(t.missing())
            self._end_transfer(
                "failed",
                f"intel-update: no chunk for {self.transfer_timeout:g} s, missing {missing}",
                self._transfer_eid,
                None,
            )
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
                self._authenticate(env, replay=True, expiry=True)
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
            try:
                result = fn(env, reply)
            except CommandFailed as e:
                self._reject(reply, env["id"], e.code, str(e), cmd=env["cmd"])
                return
            except (ValueError, OSError, NotImplementedError, TimeoutError) as e:
                self._reject(reply, env["id"], FAILED, f"{env['cmd']}: {e}", cmd=env["cmd"])
                return
            except Exception as e:  # a bug in a device action: still answer
                log.exception("command %s failed", env["cmd"])
                self._reject(reply, env["id"], FAILED, f"{env['cmd']}: internal error: {e!r}")
                return
            if result is None:  # a job command that answered for itself
                return
            self._accept(env)
            log.info("command %s (%s) done", env["cmd"], env["id"])
            reply(_answer(env["id"], True, result=result))
            deferred, self._deferred = self._deferred, None
        if deferred is not None:
            deferred()

    def _authenticate(self, env: dict[str, Any], *, replay: bool, expiry: bool) -> None:
        me = self.device.config.device.id
        if env["device"] != me:
            raise EnvelopeError(
                env_mod.WRONG_DEVICE,
                f"wrong device: the envelope is for {env['device']!r}, this is {me!r}",
                env["id"],
            )
        env_mod.verify(env, self.keys)
        if replay:
            self.state.check(env["device"], env["seq"], env["id"])
        if expiry and self.clock_synced():
            now = int(self.clock())
            if now > env["expires_at"]:
                raise EnvelopeError(
                    env_mod.EXPIRED,
                    f"expired: expired at {env['expires_at']}, the device clock says {now}",
                    env["id"],
                )

    def _accept(self, env: Mapping[str, Any]) -> None:
        self.state.accept(env["device"], env["seq"], env["id"])
        self.counters["accepted"] += 1

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
            self._deferred = self.report
        return {"changed": changed, "config": redacted(new)}

    def _set_mode(self, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
        args = _check_args(
            "set-mode", env["args"], {"mode": Arg(str, True, choices=("monitor", "block"))}
        )
        _new, changed = self.apply_changes({"inline": {"mode": args["mode"]}})
        if changed:
            self._deferred = self.report
        return {"mode": args["mode"], "changed": changed}

    def apply_changes(self, changes: Mapping[str, Any]) -> tuple[Config, bool]:
        """Validate `changes` as a whole, apply live, save atomically; all or nothing."""
        current = self.device.config
        if not isinstance(changes, Mapping):
            raise CommandFailed(INVALID, "set-config: args must be a TOML-shaped table")
        changes = _drop_redacted(changes)
        for (section, key), why in PROTECTED_KEYS.items():
            sec = changes.get(section)
            if (
                isinstance(sec, Mapping)
                and key in sec
                and sec[key] != getattr(getattr(current, section), key)
            ):
                raise CommandFailed(REFUSED, f"{section}.{key} {why}")
        try:
            new = config_mod.merged(current, changes)
        except ConfigError as e:
            raise CommandFailed(INVALID, f"invalid config: {e}") from None
        if new == current:
            return current, False
        if not current.source:
            raise CommandFailed(REFUSED, "the running config has no file to save changes to")
        try:
            self.device.apply_config(new)
        except ConfigError as e:
            raise CommandFailed(REFUSED, f"refused by the device: {e}") from None
        except Exception as e:
            self._restore(current)
            raise CommandFailed(FAILED, f"applying the config failed, change undone: {e}") from e
        try:
            config_mod.save(new)
        except (OSError, ConfigError) as e:
            self._restore(current)
            raise CommandFailed(FAILED, f"could not save the config, change undone: {e}") from e
        log.info("config changed: %s", ", ".join(sorted(new.changed_sections(current))))
        return new, True

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
        path = self.device.config.log.file
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

    # --- intel-update (a job) -------------------------------------------------------------------

    def _intel_update(self, env: dict[str, Any], reply: Reply) -> None:
        eid = env["id"]
        try:
            job, manifest, index, count, chunk_size, data = bundle.parse_chunk(env["args"])
        except bundle.BundleError as e:
            raise CommandFailed(INVALID, f"intel-update: {e}") from None
        jobinfo: dict[str, Any] = {"id": job}
        now = self.clock()
        t = self._transfer
        new_job = t is None or self._transfer_id != job
        if new_job:
            try:
                manifest = bundle.check_manifest(manifest, self.keys)
            except bundle.BundleError as e:
                self._job_reject(reply, eid, jobinfo, f"intel-update: {e}")
                return
            try:
                fresh = bundle.Transfer(job, manifest, count, chunk_size, self.intel_dir, now)
            except bundle.BundleError as e:
                self._job_reject(reply, eid, jobinfo, f"intel-update: {e}")
                return
            except OSError as e:
                self._job_reject(reply, eid, jobinfo, f"intel-update: staging: {e}")
                return
            if t is not None:
                self._end_transfer("failed", f"intel-update: superseded by job {job}", None, None)
            self._transfer, self._transfer_id, t = fresh, job, fresh
        else:
            assert t is not None
            if manifest != t.manifest or count != t.count or chunk_size != t.chunk_size:
                self._job_reject(
                    reply, eid, jobinfo, f"intel-update: chunk {index} does not match job {job}"
                )
                return
        self._transfer_reply = reply
        self._transfer_eid = eid
        try:
            fresh_chunk = t.add(index, data, now)
        except bundle.BundleError as e:
            # Signed but inconsistent: the job cannot be trusted to finish correctly.
            self._accept(env)
            self._end_transfer("failed", f"intel-update: {e}", eid, reply)
            return
        except OSError as e:
            self._accept(env)
            self._end_transfer("failed", f"intel-update: staging: {e}", eid, reply)
            return
        self._accept(env)
        progress = {
            "received": len(t.received),
            "count": t.count,
            "version": t.manifest["version"],
        }
        state = "queued" if new_job and not t.complete else "in-progress"
        reply(
            _answer(
                eid,
                True,
                result={"chunk": index, "duplicate": not fresh_chunk},
                job={**jobinfo, "state": state, **progress},
            )
        )
        if not t.complete:
            return
        reply(
            _answer(
                eid,
                True,
                result={},
                job={**jobinfo, "state": "in-progress", **progress, "step": "installing"},
            )
        )
        try:
            staged = t.finish()
            store_version = bundle.install(
                self.intel_dir, staged, t.manifest, self.device.reload_intel
            )
        except (bundle.BundleError, OSError) as e:
            self._end_transfer("failed", f"intel-update: {e}", eid, reply)
            return
        self._transfer = None
        self._transfer_id = None
        self._transfer_reply = None
        self.counters["intel_updates"] += 1
        log.info("intel bundle %s %s installed", t.manifest["name"], t.manifest["version"])
        reply(
            _answer(
                eid,
                True,
                result={
                    "name": t.manifest["name"],
                    "version": t.manifest["version"],
                    "store_version": store_version,
                },
                job={**jobinfo, "state": "succeeded", **progress},
            )
        )

    def _job_reject(self, reply: Reply, eid: str, jobinfo: dict[str, Any], message: str) -> None:
        self.counters[f"rejected:{REFUSED}"] += 1
        log.warning("intel-update %s rejected: %s", eid, message)
        reply(
            _answer(eid, False, error=message, code=REFUSED, job={**jobinfo, "state": "rejected"})
        )

    def _end_transfer(self, state: str, message: str, eid: str | None, reply: Reply | None) -> None:
        t = self._transfer
        if t is None:
            return
        reply = reply or self._transfer_reply
        t.discard()
        self._transfer = None
        self._transfer_id = None
        self._transfer_reply = None
        self.counters["intel_failures"] += 1
        log.warning("intel-update job %s %s: %s", t.job, state, message)
        if reply is not None:
            reply(
                _answer(
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

    # --- desired / reported config --------------------------------------------------------------

    def handle_desired(self, payload: bytes) -> None:
        """Apply a retained desired config when its version (the envelope's seq) is newer."""
        if not payload:
            return  # the retained message was cleared
        with self._lock:
            error = ""
            version = None
            try:
                env = env_mod.parse(payload)
                # A retained state, not a one-shot command: ordering comes from its version, so
                # neither the command seq nor the expiry applies (it is re-read on every connect).
                self._authenticate(env, replay=False, expiry=False)
                if env["cmd"] != "set-config":
                    raise EnvelopeError(
                        env_mod.MALFORMED,
                        f"malformed: config/desired must carry set-config, not {env['cmd']!r}",
                        env["id"],
                    )
                version = env["seq"]
                if version > self.state.desired_version:
                    self.apply_changes(env["args"])
                    self.state.set_desired(version, self.clock())
                    self.counters["desired_applied"] += 1
                    log.info("desired config version %d applied", version)
            except EnvelopeError as e:
                error = str(e)
            except CommandFailed as e:
                error = str(e)
            if error:
                self.counters["desired_rejected"] += 1
                log.warning("desired config rejected: %s", error)
            self.report(error=error, rejected_version=version if error else None)

    def reported(self, error: str = "", rejected_version: int | None = None) -> dict[str, Any]:
        cfg = self.device.config
        out: dict[str, Any] = {
            "device": cfg.device.id,
            "version": self.state.desired_version,
            "applied_at": self.state.desired_applied_at,
            "reported_at": int(self.clock()),
            "config": redacted(cfg),
        }
        if error:
            out["error"] = error
            if rejected_version is not None:
                out["rejected_version"] = rejected_version
        return out

    def report(self, error: str = "", rejected_version: int | None = None) -> None:
        """Publish `config/reported` (retained) if a link is attached."""
        if self._publish is None:
            return
        try:
            self._publish("config/reported", self.reported(error, rejected_version), True)
        except Exception:
            log.exception("could not publish config/reported")


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
