"""Typed settings loaded from TOML.

One frozen `Config` object is built once and passed down; a reload builds a new one and
components compare sections to see what changed. Every key has a default, and every error names
the key it is about (``inline.workers: expected an integer, got 'two'``) so an installer can fix
the file from a single line of output. Detector sections (``[detect.<name>]``) are validated
against the options each detector declares itself (see `appliance.detect.base`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from appliance.packet.addrset import is_entry
from protocol.files import atomic_write

DEFAULT_PATH = Path("/etc/watchpost/watchpost.toml")


class ConfigError(ValueError):
    """A bad setting; the message starts with the dotted key it is about."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str = field(default_factory=lambda: socket.gethostname() or "watchpost")
    site: str = "default"
    state_dir: str = "/var/lib/watchpost"


@dataclass(frozen=True, slots=True)
class InlineConfig:
    mode: Literal["monitor", "block"] = "monitor"
    queue: int = 0
    workers: int = 1
    bridge: str = "br0"
    uplink: str = "eth0"
    office: str = "eth1"
    head_packets: int = 8
    home_nets: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
    never_block: tuple[str, ...] = ()
    block_ttl: int = 3600
    queue_maxlen: int = 4096
    max_flows: int = 65536
    # Test-only: sleep this long in every queue callback to simulate a stuck consumer.
    debug_delay_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class IntelConfig:
    paths: tuple[str, ...] = ()
    cache: bool = True


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    # Repeats of one detector/signature/source/destination within this many seconds are
    # reported as one alert with a count.
    window: float = 300.0
    # Per-detector cap on alerts leaving the aggregator (token bucket); the excess is counted.
    rate_per_minute: int = 120
    burst: int = 60


@dataclass(frozen=True, slots=True)
class HubConfig:
    enabled: bool = False
    host: str = ""
    port: int = 8883
    ca: str = "/etc/watchpost/hub-ca.pem"
    cert: str = "/etc/watchpost/device.pem"
    key: str = "/etc/watchpost/device.key"
    command_pubkey: str = "/etc/watchpost/command.pub"
    outbox: str = "/var/lib/watchpost/outbox.sqlite"
    outbox_max: int = 100_000
    keepalive: int = 30
    telemetry_interval: int = 60


@dataclass(frozen=True, slots=True)
class StatusConfig:
    listen: str = "0.0.0.0:8080"
    password_hash: str = ""


@dataclass(frozen=True, slots=True)
class LedsConfig:
    enabled: bool = True
    green: int = 17
    amber: int = 27
    red: int = 22
    button: int = 3


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    pseudonymize: bool = False
    key: str = ""


@dataclass(frozen=True, slots=True)
class LogConfig:
    eve: str = "/var/log/watchpost/eve.json"
    file: str = "/var/log/watchpost/watchpost.log"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    inline: InlineConfig = field(default_factory=InlineConfig)
    intel: IntelConfig = field(default_factory=IntelConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    leds: LedsConfig = field(default_factory=LedsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Detector options by detector name, already validated against each detector's declaration.
    detect: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Where this config was read from (empty when built in code); not a TOML key.
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped form: what `save` writes and `get-config` reports."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("detect", "source"):
                continue
            out[f.name] = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(getattr(self, f.name)).items()
            }
        out["detect"] = {name: dict(opts) for name, opts in self.detect.items() if opts}
        return out

    def changed_sections(self, other: Config) -> set[str]:
        """Names of top-level sections that differ from `other` (for live reconfiguration)."""
        names = {f.name for f in dataclasses.fields(self)} - {"source"}
        return {n for n in names if getattr(self, n) != getattr(other, n)}


SECTIONS: dict[str, type] = {
    f.name: f.type if isinstance(f.type, type) else globals()[f.type]  # type: ignore[misc]
    for f in dataclasses.fields(Config)
    if f.name not in ("detect", "source")
}

# Validators that need more than a type check, by dotted key.
_CIDR_KEYS = {"inline.home_nets", "inline.never_block"}
_RANGES: dict[str, tuple[float, float]] = {
    "inline.queue": (0, 65535),
    "inline.workers": (1, 64),
    "inline.head_packets": (1, 1000),
    "inline.block_ttl": (1, 30 * 86400),
    "inline.queue_maxlen": (16, 1 << 20),
    "inline.max_flows": (256, 10_000_000),
    "inline.debug_delay_ms": (0, 10_000),
    "alerts.window": (1, 86400),
    "alerts.rate_per_minute": (1, 100_000),
    "alerts.burst": (1, 100_000),
    "hub.port": (1, 65535),
    "hub.outbox_max": (10, 10_000_000),
    "hub.keepalive": (5, 3600),
    "hub.telemetry_interval": (5, 86400),
    "leds.green": (0, 27),
    "leds.amber": (0, 27),
    "leds.red": (0, 27),
    "leds.button": (0, 27),
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp`; return it in canonical form or raise."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
        return tuple(coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            try:
                return coerce(key, arg, value)
            except ConfigError:
                pass
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported setting type {tp!r}")  # a bug in a declaration


def _check_value(key: str, value: Any) -> None:
    if key in _RANGES:
        lo, hi = _RANGES[key]
        if not lo <= value <= hi:
            raise ConfigError(key, f"must be between {lo:g} and {hi:g}, got {value!r}")
    if key in _CIDR_KEYS:
        for i, net in enumerate(value):
            if not is_entry(net):
                raise ConfigError(f"{key}[{i}]", f"not an IP address or CIDR: {net!r}")
    if key == "device.id" and not _is_topic_safe(value):
        raise ConfigError(key, f"must be 1-64 letters, digits, '-', '_' or '.', got {value!r}")
    if key == "device.site" and not _is_topic_safe(value):
        raise ConfigError(key, f"must be 1-64 letters, digits, '-', '_' or '.', got {value!r}")
    if key == "status.listen" and value:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(key, f"expected HOST:PORT, got {value!r}")


def _is_topic_safe(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value)


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(name, f"expected a table [{name}], got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{name}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
    values = {}
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        value = coerce(dotted, hints[key], value)
        _check_value(dotted, value)
        values[key] = value
    return cls(**values)


DetectValidator = Callable[[Mapping[str, Any]], Mapping[str, Mapping[str, Any]]]


def _default_detect_validator(raw: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    from appliance.detect.registry import validate_detect_section

    return validate_detect_section(raw)


def from_dict(
    data: Mapping[str, Any],
    source: str = "",
    detect_validator: DetectValidator | None = None,
) -> Config:
    """Build a Config from TOML-shaped data, raising ConfigError naming the first bad key."""
    sections: dict[str, Any] = {}
    for name, raw in data.items():
        if name == "detect":
            if not isinstance(raw, dict):
                raise ConfigError("detect", f"expected a table [detect], got {raw!r}")
            continue
        if name not in SECTIONS:
            raise ConfigError(
                name, f"unknown section (known: {', '.join(sorted(SECTIONS))}, detect)"
            )
        sections[name] = _build_section(name, SECTIONS[name], raw)
    # A [hub] table means a hub unless it says enabled = false; no [hub] means no hub.
    hub_raw = data.get("hub")
    if isinstance(hub_raw, dict) and "enabled" not in hub_raw:
        sections["hub"] = dataclasses.replace(sections["hub"], enabled=True)
    hub = sections.get("hub")
    if hub is not None and hub.enabled and not hub.host:
        raise ConfigError("hub.host", "required when the hub is enabled")
    privacy = sections.get("privacy")
    if privacy is not None and privacy.pseudonymize and 0 < len(privacy.key) < 16:
        # (no key at all is fine: a random one is made and kept in the state directory)
        raise ConfigError("privacy.key", "needs at least 16 characters when pseudonymize is on")
    validator = detect_validator or _default_detect_validator
    detect = validator(data.get("detect", {}))
    return Config(**sections, detect=detect, source=source)


def load(path: str | os.PathLike[str], detect_validator: DetectValidator | None = None) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {p}: no such file") from None
    except IsADirectoryError:
        raise ConfigError("", f"config file {p}: is a directory") from None
    except PermissionError:
        raise ConfigError("", f"config file {p}: permission denied") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"config file {p}: not UTF-8 text ({e.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"config file {p}: {e}") from None
    return from_dict(data, source=str(p), detect_validator=detect_validator)


def merged(config: Config, changes: Mapping[str, Any]) -> Config:
    """A new Config with `changes` (TOML-shaped, partial) laid over `config`, fully revalidated."""
    data = config.to_dict()
    for name, section in changes.items():
        if not isinstance(section, dict):
            raise ConfigError(name, f"expected a table, got {section!r}")
        if name == "detect":
            det = data.setdefault("detect", {})
            for dname, opts in section.items():
                if not isinstance(opts, dict):
                    raise ConfigError(f"detect.{dname}", f"expected a table, got {opts!r}")
                det.setdefault(dname, {}).update(opts)
        else:
            data.setdefault(name, {}).update(section)
    return from_dict(data, source=config.source)


def save(config: Config, path: str | os.PathLike[str] | None = None) -> None:
    """Write `config` as TOML atomically (to its source file unless `path` is given)."""
    target = path or config.source
    if not target:
        raise ConfigError("", "no path to save the config to")
    atomic_write(target, tomli_w.dumps(config.to_dict()).encode(), mode=0o640)
