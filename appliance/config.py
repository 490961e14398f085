"""Typed settings loaded from TOML, every option declared once.

One frozen `Config` object is built once and passed down; a reload builds a new one and
components compare sections to see what changed. Every key has a default, and every error names
the key it is about (``inline.workers: expected an integer, got 'two'``) so an installer can fix
the file from a single line of output.

Each option is declared in one place, with its type, default, help text, allowed range or
choices and whether the regional hub may change it (`Option`): the core sections as the fields
of the dataclasses below (`setting`), each detector's as `Loader.add_option` calls in its
`load` classmethod. The loader, the remote allow-list (`check_remote`), the README tables and
``docs/config.md`` all read those declarations. This module is the bottom layer: it never imports
the detectors; `appliance.detect.registry` hands their declarations in (`register_detector`).

Two layers make the running config (`load_running`): the office's file
(``/etc/watchpost/watchpost.toml``, never written by the daemon) and the hub's overlay
(``<device.state_dir>/remote.toml``, written by `save_remote`), which holds only keys the hub may
change and wins over the file for those keys; for ``inline.never_block`` it only adds entries.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
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

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/etc/watchpost/watchpost.toml")
# The hub's changes, under device.state_dir (the office's /etc/watchpost is read-only to us).
REMOTE_FILE = "remote.toml"


class ConfigError(ValueError):
    """A bad setting; the message starts with the dotted key it is about."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class RemoteRefused(ConfigError):
    """A remote change to a key the hub may not set, or to a value outside what it may set."""


# --- declarations ---------------------------------------------------------------------------------

Check = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: the single declaration its loader, docs and remote checks read.

    `range` and `choices` bound a scalar, or each item of a list. `check` is called with a value
    (each item of a list) and raises ValueError saying what is wrong. `remote` says whether the
    hub may set it: True, or "add" (a list the hub may only add entries to); `remote_range` is a
    tighter range for values set remotely (production limits). `path` and `secret` options are
    never remote.
    """

    name: str
    type: Any
    default: Any
    help: str
    range: tuple[float, float] | None = None
    choices: tuple[Any, ...] | None = None
    remote: bool | Literal["add"] = False
    remote_range: tuple[float, float] | None = None
    check: Check | None = None
    path: bool = False
    secret: bool = False
    # Why the hub may not change it (shown in a refusal); a default by kind otherwise.
    local_why: str = ""
    # How the default reads in docs when it is computed (the hostname).
    doc_default: str = ""

    def __post_init__(self) -> None:
        if self.remote and (self.path or self.secret):
            raise ValueError(f"{self.name}: a path or a secret is never remote")
        if self.remote_range and not self.remote:
            raise ValueError(f"{self.name}: remote_range without remote")
        if self.remote_range and self.range:
            lo, hi = self.range
            rlo, rhi = self.remote_range
            if not lo <= rlo <= rhi <= hi:
                raise ValueError(f"{self.name}: remote_range must lie inside range")
        if typing.get_origin(self.type) is Literal and self.choices is None:
            object.__setattr__(self, "choices", typing.get_args(self.type))
        if self.remote == "add" and typing.get_origin(self.type) is not tuple:
            raise ValueError(f"{self.name}: remote='add' needs a list option")

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.type) is tuple

    def validate(self, key: str, value: Any) -> Any:
        """`value` type-checked, in canonical form, within range/choices; ConfigError if not."""
        value = coerce(key, self.type, value)
        if self.is_list:
            for i, item in enumerate(value):
                self._check_one(f"{key}[{i}]", item)
        else:
            self._check_one(key, value)
        return value

    def _check_one(self, key: str, value: Any) -> None:
        if self.range is not None:
            lo, hi = self.range
            if not lo <= value <= hi:
                raise ConfigError(key, f"must be between {lo:g} and {hi:g}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            known = ", ".join(str(c) for c in self.choices)
            raise ConfigError(key, f"must be one of {known}, got {value!r}")
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as e:
                raise ConfigError(key, str(e)) from None

    def refusal(self, section: str) -> str:
        """Why the hub may not set this option."""
        if self.local_why:
            return self.local_why
        if self.secret:
            return "is a secret (local only)"
        if self.path:
            return "is a path on the device (local only)"
        if section == "privacy":
            return "is the office's privacy promise (local only)"
        return "is set by the office only"


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    **declared: Any,
) -> Any:
    """A dataclass field carrying its `Option` declaration (name, type and default come from the
    field itself)."""
    meta = {"option": {"help": help, **declared}}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _cidr(value: str) -> None:
    """an address or CIDR"""
    if not is_entry(value):
        raise ValueError(f"not an IP address or CIDR: {value!r}")


def _topic_safe(value: str) -> None:
    """1-64 letters, digits, `-`, `_` or `.`"""
    if not (0 < len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value)):
        raise ValueError(f"must be 1-64 letters, digits, '-', '_' or '.', got {value!r}")


def _host_port(value: str) -> None:
    """HOST:PORT or empty"""
    if not value:
        return
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")


DAY = 86400

# --- the core sections ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str = setting(
        help="Identity: part of every MQTT topic; the certificate CN is the id.",
        factory=lambda: socket.gethostname() or "watchpost",
        check=_topic_safe,
        local_why="is the certificate's identity; re-provision the device instead",
        doc_default="the hostname",
    )
    site: str = setting(
        "default",
        "Site name: part of every MQTT topic.",
        check=_topic_safe,
        local_why="is part of the topic root; re-provision the device instead",
    )
    state_dir: str = setting(
        "/var/lib/watchpost",
        "Replay state, bd_seq, daily tallies, page key, intel cache, the hub's overlay.",
        path=True,
    )


@dataclass(frozen=True, slots=True)
class InlineConfig:
    mode: Literal["monitor", "block"] = setting(
        "monitor",
        "`monitor` never drops; `block` drops intel hits via the kernel drop set.",
        remote=True,
    )
    queue: int = setting(
        0, "NFQUEUE number (the first of the range with several workers).", range=(0, 65535)
    )
    workers: int = setting(
        1,
        "Queue workers; more than 1 = one process per queue of a `queue-balance` range.",
        range=(1, 64),
        remote=True,
        remote_range=(1, 4),
    )
    bridge: str = setting("br0", "The bridge device.")
    uplink: str = setting("eth0", "The bridge port to the router (direction comes from ports).")
    office: str = setting("eth1", "The bridge port to the office switch.")
    head_packets: int = setting(
        8,
        "Packets per connection (both directions) that reach Python.",
        range=(1, 1000),
        remote=True,
        remote_range=(2, 64),
    )
    home_nets: tuple[str, ...] = setting(
        ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
        "Office ranges: direction in `replay`, what pseudonymisation hides.",
        check=_cidr,
        local_why="decides what pseudonymisation hides (local only)",
    )
    never_block: tuple[str, ...] = setting(
        (),
        "Addresses/CIDRs never blocked (router, DNS servers, the hub).",
        check=_cidr,
        remote="add",
    )
    block_ttl: int = setting(
        3600,
        "Seconds an address stays in the drop set.",
        range=(1, 30 * DAY),
        remote=True,
        remote_range=(60, 7 * DAY),
    )
    queue_maxlen: int = setting(
        4096,
        "Kernel queue length before fail-open.",
        range=(16, 1 << 20),
        remote=True,
        remote_range=(1024, 65536),
    )
    max_flows: int = setting(
        65536,
        "Flow table cap (least recently active evicted).",
        range=(256, 10_000_000),
        remote=True,
        remote_range=(4096, 262_144),
    )
    debug_delay_ms: float = setting(
        0.0,
        "Test only: sleep this long in every queue callback (a deliberately slow consumer).",
        range=(0, 10_000),
        local_why="is a test-only knob",
    )


@dataclass(frozen=True, slots=True)
class IntelConfig:
    paths: tuple[str, ...] = setting((), "Intel files (formats in the README).", path=True)
    cache: bool = setting(True, "Compiled cache in the state dir (fast start at 1 M indicators).")


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    window: float = setting(
        300.0,
        "Seconds over which repeats are folded into one alert with a count.",
        range=(1, DAY),
        remote=True,
    )
    rate_per_minute: int = setting(
        120,
        "Per-detector cap on alerts leaving the aggregator (token bucket); the excess is counted.",
        range=(1, 100_000),
        remote=True,
        remote_range=(1, 6000),
    )
    burst: int = setting(
        60,
        "Burst of that token bucket.",
        range=(1, 100_000),
        remote=True,
        remote_range=(1, 6000),
    )


@dataclass(frozen=True, slots=True)
class HubConfig:
    enabled: bool = setting(
        False,
        "Use the hub (`true` when a `[hub]` table exists).",
        local_why="would cut the device off from remote management",
        doc_default="false (true with a [hub] table)",
    )
    host: str = setting(
        "",
        "The broker's host name or address.",
        local_why="would move the device to another broker",
    )
    port: int = setting(
        8883,
        "The broker's TLS port.",
        range=(1, 65535),
        local_why="would move the device to another broker",
    )
    ca: str = setting("/etc/watchpost/hub-ca.pem", "The pinned CA of the broker.", path=True)
    cert: str = setting("/etc/watchpost/device.pem", "The device certificate.", path=True)
    key: str = setting("/etc/watchpost/device.key", "The device key.", path=True)
    command_pubkey: str = setting(
        "/etc/watchpost/command.pub",
        "The hub's Ed25519 command key(s) (PEM).",
        path=True,
        local_why="would change who may command the device (local only)",
    )
    outbox: str = setting(
        "",
        "The SQLite outbox.",
        path=True,
        doc_default="`<device.state_dir>/outbox.sqlite`",
    )
    outbox_max: int = setting(
        100_000,
        "Outbox bound; evicts lowest severity, then oldest (counted).",
        range=(10, 10_000_000),
        remote=True,
        remote_range=(1000, 1_000_000),
    )
    keepalive: int = setting(
        30, "MQTT keepalive, seconds.", range=(5, 3600), remote=True, remote_range=(10, 600)
    )
    telemetry_interval: int = setting(
        60,
        "Seconds between telemetry messages.",
        range=(5, DAY),
        remote=True,
        remote_range=(10, DAY),
    )
    renew_at_percent: int = setting(
        67,
        "Renew the device certificate (new key, CSR to the hub) once this share of its lifetime "
        "has passed, percent.",
        range=(10, 95),
    )


@dataclass(frozen=True, slots=True)
class StatusConfig:
    listen: str = setting(
        "0.0.0.0:8080",
        "HOST:PORT of the status page (empty: no page).",
        check=_host_port,
        local_why="decides who can reach the status page (local only)",
    )
    password_hash: str = setting(
        "",
        "scrypt hash from `watchpost passwd`; empty = the password set on the page at first run "
        "with the setup code (docs/page.md).",
        secret=True,
    )
    allow_from: tuple[str, ...] = setting(
        (),
        "Networks that may reach the status page from any port (default: the office bridge port "
        "and loopback only).",
        check=_cidr,
        local_why="decides who can reach the status page (local only)",
    )


@dataclass(frozen=True, slots=True)
class LedsConfig:
    enabled: bool = setting(True, "Drive the LEDs and read the button (MockFactory off a Pi).")
    green: int = setting(17, "BCM pin of the green LED.", range=(0, 27))
    amber: int = setting(27, "BCM pin of the amber LED.", range=(0, 27))
    red: int = setting(22, "BCM pin of the red LED.", range=(0, 27))
    button: int = setting(3, "BCM pin of the button.", range=(0, 27))


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    pseudonymize: bool = setting(
        False, "Replace office addresses by keyed HMAC tokens before anything leaves the device."
    )
    key: str = setting("", "The HMAC key (at least 16 characters).", secret=True)


@dataclass(frozen=True, slots=True)
class LogConfig:
    eve: str = setting("/var/log/watchpost/eve.json", "EVE-JSON alert log.", path=True)
    file: str = setting(
        "/var/log/watchpost/watchpost.log",
        "The daemon's own log (the `logs` command reads it).",
        path=True,
    )
    level: Literal["debug", "info", "warning", "error"] = setting("info", "Log level.")


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
    # The hub's overlay this config includes (TOML-shaped; for never_block only the entries it
    # added). Not compared: two configs that run the same are equal.
    remote: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def outbox_path(self) -> str:
        """`hub.outbox`, or the outbox in the state directory (its default): a config that moves
        the state directory moves the outbox with it."""
        return self.hub.outbox or str(Path(self.device.state_dir) / "outbox.sqlite")

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped form: what `save` writes and `get-config` reports."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            out[name] = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(getattr(self, name)).items()
            }
        out["detect"] = {
            name: {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}
            for name, opts in self.detect.items()
            if opts
        }
        return out

    def changed_sections(self, other: Config) -> set[str]:
        """Names of top-level sections that differ from `other` (for live reconfiguration)."""
        names = {*SECTIONS, "detect"}
        return {n for n in names if getattr(self, n) != getattr(other, n)}


_NOT_SECTIONS = ("detect", "source", "remote")
SECTIONS: dict[str, type] = {
    f.name: f.type if isinstance(f.type, type) else globals()[f.type]
    for f in dataclasses.fields(Config)
    if f.name not in _NOT_SECTIONS
}


def _section_options(cls: type) -> dict[str, Option]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        declared = dict(f.metadata["option"])
        factory = f.default_factory
        default = factory() if callable(factory) else f.default
        out[f.name] = Option(f.name, hints[f.name], default, declared.pop("help"), **declared)
    return out


# Every core option by section and key: the one table the loader, docs and remote checks use.
OPTIONS: dict[str, dict[str, Option]] = {
    name: _section_options(cls) for name, cls in SECTIONS.items()
}


# --- types ----------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def type_label(tp: Any) -> str:
    """A short type name for docs: ``int``, ``list of str``, ``monitor | block``."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {type_label(typing.get_args(tp)[0])}"
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


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


# --- detector declarations --------------------------------------------------------------------


class Options:
    """Read-only attribute access to one detector's validated option values."""

    __slots__ = ("_detector", "_values")

    def __init__(self, detector: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_detector", detector)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"detect.{self._detector}.{name}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("options are read-only; change them through the config")

    def error(self, name: str, problem: str) -> ConfigError:
        """A ConfigError naming this detector's option, for `check`/`configure` to raise."""
        return ConfigError(f"detect.{self._detector}.{name}", problem)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


class Loader:
    """Collects the options a detector declares in its `load` classmethod."""

    def __init__(self, detector: str) -> None:
        self.detector = detector
        self.options: dict[str, Option] = {}

    def add_option(
        self,
        name: str,
        typespec: Any,
        default: Any,
        help: str,
        *,
        range: tuple[float, float] | None = None,
        choices: tuple[Any, ...] | None = None,
        remote: bool | Literal["add"] = False,
        remote_range: tuple[float, float] | None = None,
        check: Check | None = None,
        path: bool = False,
    ) -> None:
        key = f"detect.{self.detector}.{name}"
        if name in self.options:
            raise ValueError(f"{key}: declared twice")
        opt = Option(
            name, typespec, default, help, range=range, choices=choices, remote=remote,
            remote_range=remote_range, check=check, path=path,
        )  # fmt: skip
        opt.validate(key, default)  # a default must pass its own declaration
        self.options[name] = opt


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """What the config layer knows of a detector: its name, options and cross-option check."""

    name: str
    options: Mapping[str, Option]
    # Checks between options (window longer than timeout, ...): raises opts.error(...).
    check: Callable[[Options], None] | None = None


_detectors: dict[str, DetectorSpec] = {}


def register_detector(spec: DetectorSpec) -> None:
    """Make a detector's declarations known to the loader (done by appliance.detect.registry)."""
    _detectors[spec.name] = spec


def registered_detectors() -> Mapping[str, DetectorSpec]:
    return dict(_detectors)


def validate_options(spec: DetectorSpec, raw: Any) -> dict[str, Any]:
    """Defaults overlaid with `raw` (a detector's TOML table), each checked against its
    declaration, then the detector's own cross-option check."""
    prefix = f"detect.{spec.name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix, f"expected a table, got {raw!r}")
    for key in raw:
        if key not in spec.options:
            known = ", ".join(sorted(spec.options))
            raise ConfigError(f"{prefix}.{key}", f"unknown option (known: {known})")
    values = {name: opt.default for name, opt in spec.options.items()}
    for key, value in raw.items():
        values[key] = spec.options[key].validate(f"{prefix}.{key}", value)
    if spec.check is not None:
        spec.check(Options(spec.name, values))
    return values


def _build_detect(raw: Any, specs: Mapping[str, DetectorSpec]) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise ConfigError("detect", f"expected a table [detect], got {raw!r}")
    if raw and not specs:
        raise ConfigError("detect", "no detector declarations loaded (import the registry)")
    for name in raw:
        if name not in specs:
            known = ", ".join(sorted(specs))
            raise ConfigError(f"detect.{name}", f"unknown detector (known: {known})")
    return {name: validate_options(spec, raw.get(name, {})) for name, spec in specs.items()}


# --- loading --------------------------------------------------------------------------------------


def _build_section(name: str, raw: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(name, f"expected a table [{name}], got {raw!r}")
    declared = OPTIONS[name]
    for key in raw:
        if key not in declared:
            known = ", ".join(sorted(declared))
            raise ConfigError(f"{name}.{key}", f"unknown key (known: {known})")
    values = {key: declared[key].validate(f"{name}.{key}", value) for key, value in raw.items()}
    return SECTIONS[name](**values)


def from_dict(
    data: Mapping[str, Any],
    source: str = "",
    detectors: Mapping[str, DetectorSpec] | None = None,
    remote: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config from TOML-shaped data, raising ConfigError naming the first bad key.

    `detectors` defaults to the registered declarations; `remote` records which part of `data`
    is the hub's overlay (see `load_running`)."""
    sections: dict[str, Any] = {}
    for name, raw in data.items():
        if name == "detect":
            continue
        if name not in SECTIONS:
            raise ConfigError(
                name, f"unknown section (known: {', '.join(sorted(SECTIONS))}, detect)"
            )
        sections[name] = _build_section(name, raw)
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
    specs = registered_detectors() if detectors is None else detectors
    detect = _build_detect(data.get("detect", {}), specs)
    return Config(
        **sections, detect=detect, source=source, remote=copy.deepcopy(dict(remote or {}))
    )


def _read_toml(p: Path, what: str = "config file") -> dict[str, Any]:
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{what} {p}: no such file") from None
    except IsADirectoryError:
        raise ConfigError("", f"{what} {p}: is a directory") from None
    except PermissionError:
        raise ConfigError("", f"{what} {p}: permission denied") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{what} {p}: not UTF-8 text ({e.reason})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{what} {p}: {e}") from None


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate one TOML config file on its own (``check-config``, ``replay``)."""
    p = Path(path)
    return from_dict(_read_toml(p), source=str(p))


def remote_path(state_dir: str | os.PathLike[str]) -> Path:
    """Where the hub's overlay lives."""
    return Path(state_dir) / REMOTE_FILE


def load_running(path: str | os.PathLike[str]) -> Config:
    """The config the daemon runs: the office's file with the hub's overlay
    (``<device.state_dir>/remote.toml``) laid over it. The file names the state dir (device.*
    is never remote). An overlay that no longer fits (unreadable, or refused with the office's
    current file) is ignored with a logged reason: the office's file alone always runs."""
    p = Path(path)
    data = _read_toml(p)
    local = from_dict(data, source=str(p))
    overlay_file = remote_path(local.device.state_dir)
    if not overlay_file.exists():
        return local
    try:
        overlay = _read_toml(overlay_file, "remote overlay")
        check_remote(overlay)
        layered, adds = _layer(data, overlay)
        config = from_dict(layered, source=str(p))
    except ConfigError as e:
        log.error("hub overlay %s ignored, running the office's file alone: %s", overlay_file, e)
        return local
    return dataclasses.replace(config, remote=_remote_of(config, overlay, adds))


def _layer(
    local: Mapping[str, Any], overlay: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """TOML data of the office's file with the hub's (checked) overlay over it, and the entries
    the overlay added to each "add" list ("section.key" -> entries)."""
    data = copy.deepcopy(dict(local))
    adds: dict[str, list[Any]] = {}
    for section, table in overlay.items():
        if section == "detect":
            det = data.setdefault("detect", {})
            for name, opts in table.items():
                det.setdefault(name, {}).update(opts)
            continue
        if section not in data:
            # Not a [hub] table of the office's: the overlay must not switch the hub on.
            data[section] = {"enabled": False} if section == "hub" else {}
        target = data[section]
        for key, value in table.items():
            opt = OPTIONS[section][key]
            if opt.remote == "add":
                office = list(target.get(key, opt.default))
                adds[f"{section}.{key}"] = [v for v in value if v not in office]
                target[key] = office + adds[f"{section}.{key}"]
            else:
                target[key] = value
    return data, adds


def _remote_of(
    config: Config, overlay: Mapping[str, Any], adds: Mapping[str, list[Any]]
) -> dict[str, Any]:
    """The overlay's keys with `config`'s validated values (for "add" lists: the additions)."""
    out: dict[str, Any] = {}
    for section, table in overlay.items():
        if section == "detect":
            det = {
                name: {k: _plain(config.detect[name][k]) for k in opts}
                for name, opts in table.items()
                if opts
            }
            if det:
                out["detect"] = det
            continue
        vals = {}
        for key in table:
            dotted = f"{section}.{key}"
            if dotted in adds:
                if adds[dotted]:
                    vals[key] = list(adds[dotted])
            else:
                vals[key] = _plain(getattr(getattr(config, section), key))
        if vals:
            out[section] = vals
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --- the hub's changes ------------------------------------------------------------------------

_UNSET = object()


def _option_for(section: str, key: str) -> tuple[str, Option]:
    if section == "detect":
        raise AssertionError("detect keys go through _detect_option")  # pragma: no cover
    if section not in OPTIONS:
        known = ", ".join(sorted(OPTIONS))
        raise ConfigError(section, f"unknown section (known: {known}, detect)")
    if key not in OPTIONS[section]:
        known = ", ".join(sorted(OPTIONS[section]))
        raise ConfigError(f"{section}.{key}", f"unknown key (known: {known})")
    return f"{section}.{key}", OPTIONS[section][key]


def remote_keys() -> list[tuple[str, Option]]:
    """(dotted key, option) of every key the hub may set (the allow-list; detectors included)."""
    out = [(f"{s}.{k}", o) for s, opts in OPTIONS.items() for k, o in opts.items() if o.remote]
    for name, spec in registered_detectors().items():
        out += [(f"detect.{name}.{k}", o) for k, o in spec.options.items() if o.remote]
    return out


def _check_remote_value(key: str, section: str, opt: Option, value: Any, current: Any) -> None:
    if not opt.remote:
        # A key the hub may not set passes only when it carries the current value unchanged (a
        # get-config sent back whole); secrets are never compared (no oracle for them).
        if current is not _UNSET and not opt.secret:
            try:
                same = opt.validate(key, value) == current
            except ConfigError:
                same = False
            if same:
                return
        if opt.secret and current == "" and value == "":
            return
        raise RemoteRefused(key, f"the hub may not change this: it {opt.refusal(section)}")
    value = opt.validate(key, value)
    if opt.remote_range is not None:
        lo, hi = opt.remote_range
        for i, v in enumerate(value if opt.is_list else (value,)):
            if not lo <= v <= hi:
                where = f"{key}[{i}]" if opt.is_list else key
                raise RemoteRefused(
                    where, f"outside what the hub may set ({lo:g} to {hi:g}), got {v!r}"
                )


def check_remote(changes: Any, current: Config | None = None) -> None:
    """Refuse (RemoteRefused, naming the key) any change the hub may not make; ConfigError for
    malformed changes. With `current`, a local-only key carrying its current value is let
    through (it changes nothing)."""
    if not isinstance(changes, Mapping):
        raise ConfigError("", f"expected a TOML-shaped table, got {changes!r}")
    for section, table in changes.items():
        if not isinstance(table, Mapping):
            raise ConfigError(section, f"expected a table, got {table!r}")
        if section == "detect":
            specs = registered_detectors()
            for name, opts in table.items():
                if name not in specs:
                    known = ", ".join(sorted(specs))
                    raise ConfigError(f"detect.{name}", f"unknown detector (known: {known})")
                if not isinstance(opts, Mapping):
                    raise ConfigError(f"detect.{name}", f"expected a table, got {opts!r}")
                for key, value in opts.items():
                    opt = specs[name].options.get(key)
                    if opt is None:
                        known = ", ".join(sorted(specs[name].options))
                        raise ConfigError(
                            f"detect.{name}.{key}", f"unknown option (known: {known})"
                        )
                    cur = current.detect.get(name, {}).get(key, _UNSET) if current else _UNSET
                    _check_remote_value(f"detect.{name}.{key}", "detect", opt, value, cur)
            continue
        for key, value in table.items():
            dotted, opt = _option_for(section, key)
            cur = getattr(getattr(current, section), key) if current else _UNSET
            _check_remote_value(dotted, section, opt, value, cur)


def remote_merged(current: Config, changes: Mapping[str, Any]) -> Config:
    """`current` with the hub's `changes` laid over it, checked against the allow-list and
    validated whole (no I/O). The result's `remote` is the new overlay to save."""
    check_remote(changes, current)
    data = current.to_dict()
    overlay = copy.deepcopy(dict(current.remote))
    adds: dict[str, list[Any]] = {}
    for section, table in changes.items():
        if section == "detect":
            specs = registered_detectors()
            for name, opts in table.items():
                for key, value in opts.items():
                    if specs[name].options[key].remote:  # others are unchanged (checked)
                        data["detect"].setdefault(name, {})[key] = value
                        overlay.setdefault("detect", {}).setdefault(name, {})[key] = value
            continue
        for key, value in table.items():
            opt = OPTIONS[section][key]
            if not opt.remote:
                continue  # unchanged (check_remote let it through)
            if opt.remote == "add":
                before = current.remote.get(section, {}).get(key, [])
                office = [v for v in data[section][key] if v not in before]
                adds[f"{section}.{key}"] = [v for v in value if v not in office]
                data[section][key] = office + adds[f"{section}.{key}"]
            else:
                data[section][key] = value
            overlay.setdefault(section, {})[key] = value
    new = from_dict(data, source=current.source)
    for dotted, entries in _current_adds(current).items():
        adds.setdefault(dotted, entries)
    return dataclasses.replace(new, remote=_remote_of(new, overlay, adds))


def _current_adds(config: Config) -> dict[str, list[Any]]:
    return {
        f"{s}.{k}": list(v)
        for s, t in config.remote.items()
        if s != "detect"
        for k, v in t.items()
        if OPTIONS[s][k].remote == "add"
    }


def save_remote(config: Config, state_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write `config`'s overlay atomically to ``<state_dir>/remote.toml`` (device.state_dir by
    default); returns the path."""
    target = remote_path(state_dir if state_dir is not None else config.device.state_dir)
    atomic_write(target, tomli_w.dumps(dict(config.remote)).encode(), mode=0o640)
    return target


def apply_remote(
    current: Config, changes: Mapping[str, Any], state_dir: str | os.PathLike[str] | None = None
) -> Config:
    """The hub's `changes` checked, validated whole and saved as the overlay; nothing is saved
    when anything is refused (RemoteRefused / ConfigError naming the key)."""
    new = remote_merged(current, changes)
    save_remote(new, state_dir)
    return new


# --- local changes ----------------------------------------------------------------------------


def merged(config: Config, changes: Mapping[str, Any]) -> Config:
    """A new Config with local `changes` (TOML-shaped, partial) laid over `config`, fully
    revalidated (`watchpost passwd`). The hub's overlay is kept on top."""
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
    return from_dict(data, source=config.source, remote=config.remote)


def save(config: Config, path: str | os.PathLike[str] | None = None) -> None:
    """Write `config` as TOML atomically (to its source file unless `path` is given). Only for
    local tools: the daemon saves the hub's changes with `save_remote`."""
    target = path or config.source
    if not target:
        raise ConfigError("", "no path to save the config to")
    if config.remote:
        raise ConfigError("", "this config includes the hub's overlay; save it with save_remote")
    atomic_write(target, tomli_w.dumps(config.to_dict()).encode(), mode=0o640)
