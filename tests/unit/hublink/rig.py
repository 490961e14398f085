"""A fake Device and a handler rig over a real config file, replay state and intel directory."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import config as config_mod
from appliance.config import Config, ConfigError
from appliance.detect import intel as intel_mod
from appliance.hublink.commands import CommandHandler
from protocol import bundle
from protocol import envelope as E

DEVICE = "dev1"


class FakeDevice:
    """Records what remote management asked for; can be told to refuse."""

    def __init__(self, config: Config, intel_dir: Path) -> None:
        self._config = config
        self.intel_dir = intel_dir
        self.applied: list[Config] = []
        self.refuse_config: str = ""
        self.fail_apply = False
        self.blocked: dict[str, int] = {}
        self.acked: list[Sequence[str] | None] = []
        self.identified: list[int] = []
        self.restarts = 0
        self.reboots = 0
        self.reload_error: str = ""
        self.store = intel_mod.load_files(bundle.installed_paths(intel_dir))
        self.log_file = config.log.file  # the daemon opened its log at start

    @property
    def config(self) -> Config:
        return self._config

    def apply_config(self, config: Config) -> None:
        if self.refuse_config:
            raise ConfigError("inline.bridge", self.refuse_config)
        if self.fail_apply:
            raise RuntimeError("driver exploded")
        self.applied.append(config)
        self._config = config

    def block(self, address: str, ttl: int) -> None:
        self.blocked[address] = ttl

    def unblock(self, address: str) -> bool:
        return self.blocked.pop(address, None) is not None

    def reload_intel(self) -> str:
        if self.reload_error:
            raise ValueError(self.reload_error)
        self.store = intel_mod.load_files(bundle.installed_paths(self.intel_dir))
        return self.store.version

    def ack_alerts(self, ids: Sequence[str] | None) -> int:
        self.acked.append(ids)
        return len(ids) if ids is not None else 7

    def identify(self, seconds: int) -> None:
        self.identified.append(seconds)

    def restart(self) -> None:
        self.restarts += 1

    def reboot(self) -> None:
        self.reboots += 1

    def status(self) -> dict[str, Any]:
        return {"state": "ready", "mode": self._config.inline.mode, "intel": self.store.version}


@dataclass
class Rig:
    """Everything a test needs: the handler, its device, keys and the files it touches."""

    handler: CommandHandler
    device: FakeDevice
    key: Ed25519PrivateKey
    config_path: Path
    state_path: Path
    intel_dir: Path
    clock: list[float]
    synced: list[bool]
    published: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    seq: int = 1_000

    def env(self, cmd: str, args: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
        """A signed envelope with the next seq (fields in `over` replace before signing)."""
        self.seq += 1
        fields = {
            "id": f"id-{self.seq}",
            "device": DEVICE,
            "for": E.FOR_COMMAND,
            "cmd": cmd,
            "args": args or {},
            "seq": self.seq,
            "issued_at": int(self.clock[0]),
            "expires_at": int(self.clock[0]) + 300,
        }
        fields.update(over)
        return E.sign_document(fields, self.key)

    def desired(self, args: dict[str, Any], version: int, **over: Any) -> bytes:
        """A signed desired config (``"for": "desired"``, 30 days) of `version`."""
        over.setdefault("expires_at", int(self.clock[0]) + E.DESIRED_TTL)
        return E.encode(self.env("set-config", args, seq=version, **{"for": E.FOR_DESIRED, **over}))

    def send(self, env: dict[str, Any] | bytes) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []
        payload = env if isinstance(env, bytes) else E.encode(env)
        self.handler.handle_command(payload, answers.append)
        return answers

    def one(self, env: dict[str, Any] | bytes) -> dict[str, Any]:
        answers = self.send(env)
        assert len(answers) == 1, answers
        return answers[0]

    def snapshot(self) -> dict[str, Any]:
        """Everything a rejected command must leave alone."""
        overlay = config_mod.remote_path(self.device.config.device.state_dir)
        return {
            "state": self.state_path.read_bytes() if self.state_path.exists() else None,
            "config_file": self.config_path.read_bytes(),
            "overlay": overlay.read_bytes() if overlay.exists() else None,
            "config": self.device.config,
            "mode": self.device.config.inline.mode,
            "intel": {
                p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.intel_dir.glob("*"))
                if p.is_file()
            }
            if self.intel_dir.exists()
            else {},
            "blocked": dict(self.device.blocked),
            "calls": (
                len(self.device.applied),
                len(self.device.acked),
                len(self.device.identified),
                self.device.restarts,
                self.device.reboots,
            ),
            "store": self.device.store.version,
        }

    def restart_handler(self) -> CommandHandler:
        """A new handler over the same files, as after a daemon restart."""
        self.handler.stop()
        self.handler = CommandHandler(
            self.device,
            [self.key.public_key()],
            self.state_path,
            self.intel_dir,
            clock=lambda: self.clock[0],
            clock_synced=lambda: self.synced[0],
            publish=lambda t, p, r: self.published.append((t, p, r)),
        )
        return self.handler


def write_config(path: Path, state_dir: Path, log_file: Path) -> Config:
    data = {
        "device": {"id": DEVICE, "site": "site1", "state_dir": str(state_dir)},
        "inline": {"home_nets": ["198.18.0.0/24"], "never_block": ["198.18.0.1/32"]},
        "hub": {"host": "192.0.2.10", "command_pubkey": str(path.parent / "command.pub")},
        "privacy": {"pseudonymize": True, "key": "k" * 32},
        "log": {"file": str(log_file)},
    }
    cfg = config_mod.from_dict(data, source=str(path))
    config_mod.save(cfg)
    return config_mod.load(path)
