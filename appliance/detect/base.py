"""The shape every detector has (after mitmproxy's addons).

A detector declares its options with defaults and help text in `load`, checks them in
`configure` (raising `ConfigError` that names ``detect.<name>.<option>``), and implements only the
event hooks it needs; the engine calls only hooks a detector actually defines:

    packet(ctx, pkt, flow, from_client)   every queued packet (flow heads, all DNS)
    dns(ctx, pkt, flow, msg)              a dissected DNS query or answer
    tls(ctx, pkt, flow, hello)            a TLS or QUIC ClientHello
    http(ctx, pkt, flow, req)             an HTTP/1 request head
    tick(ctx, now)                        about once a second (packet time in replay)

Hooks must be cheap (they run on the packet path) and must not keep packets: only the few
fields they need.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from appliance.alerts.model import Signature
from appliance.config import ConfigError, coerce

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.detect.records import DnsMessage, HttpRequest, TlsHello
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

HOOKS = ("packet", "dns", "tls", "http", "tick")


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    name: str
    typespec: Any
    default: Any
    help: str


class Loader:
    """Collects the options a detector declares in `load`."""

    def __init__(self, detector: str) -> None:
        self.detector = detector
        self.options: dict[str, Option] = {}

    def add_option(self, name: str, typespec: Any, default: Any, help: str) -> None:
        if name in self.options:
            raise ValueError(f"detect.{self.detector}.{name}: declared twice")
        coerce(f"detect.{self.detector}.{name}", typespec, default)  # defaults must type-check
        self.options[name] = Option(name, typespec, default, help)


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
        """A ConfigError naming this detector's option, for `configure` to raise."""
        return ConfigError(f"detect.{self._detector}.{name}", problem)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


class Detector:
    """Base class: subclasses set `name` and `signatures` and define the hooks they need."""

    name: ClassVar[str] = ""
    signatures: ClassVar[tuple[Signature, ...]] = ()

    def load(self, loader: Loader) -> None:
        """Declare options with `loader.add_option(name, type, default, help)`."""

    def configure(self, opts: Options, updated: set[str]) -> None:
        """Check and take new option values; raise ``opts.error(name, why)`` if bad."""

    # Hooks are looked up by name; the base class deliberately defines none of them.
    if TYPE_CHECKING:

        def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None: ...
        def dns(self, ctx: Context, pkt: Packet, flow: Flow, msg: DnsMessage) -> None: ...
        def tls(self, ctx: Context, pkt: Packet, flow: Flow, hello: TlsHello) -> None: ...
        def http(self, ctx: Context, pkt: Packet, flow: Flow, req: HttpRequest) -> None: ...
        def tick(self, ctx: Context, now: float) -> None: ...


def declared_options(detector: Detector) -> dict[str, Option]:
    """All options of `detector`, including the implicit `enabled` switch."""
    loader = Loader(detector.name)
    loader.add_option("enabled", bool, True, f"Run the {detector.name} detector.")
    detector.load(loader)
    return loader.options


def validate_options(detector: Detector, raw: Any) -> dict[str, Any]:
    """Defaults overlaid with `raw` (the detector's TOML table), type-checked, names checked."""
    prefix = f"detect.{detector.name}"
    if not isinstance(raw, dict):
        raise ConfigError(prefix, f"expected a table, got {raw!r}")
    declared = declared_options(detector)
    for key in raw:
        if key not in declared:
            raise ConfigError(
                f"{prefix}.{key}", f"unknown option (known: {', '.join(sorted(declared))})"
            )
    values = {name: opt.default for name, opt in declared.items()}
    for key, value in raw.items():
        values[key] = coerce(f"{prefix}.{key}", declared[key].typespec, value)
    return values


def hook(detector: Detector, name: str) -> Callable[..., None] | None:
    """The detector's bound hook method, or None when it does not implement that hook."""
    fn = getattr(detector, name, None)
    return fn if callable(fn) else None


def type_label(typespec: Any) -> str:
    origin = typing.get_origin(typespec)
    if origin is tuple:
        return f"list of {type_label(typing.get_args(typespec)[0])}"
    return getattr(typespec, "__name__", str(typespec))
