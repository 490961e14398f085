"""The shape every detector has (after mitmproxy's addons).

A detector declares its options in the classmethod `load` (``loader.add_option(name, type,
default, help, range=..., choices=..., remote=...)``: the one declaration the config loader, the
docs and the hub's allow-list read), may check options against each other in the classmethod
`check`, takes new values in `configure`, and implements only the event hooks it needs; the
engine calls only hooks a detector actually defines:

    packet(ctx, pkt, flow, from_client)   every queued packet (flow heads, all DNS)
    dns(ctx, pkt, flow, msg)              a dissected DNS query or answer
    tls(ctx, pkt, flow, hello)            a TLS or QUIC ClientHello
    http(ctx, pkt, flow, req)             an HTTP/1 request head
    tick(ctx, now)                        about once a second (packet time in replay)

A detector whose `packet` hook only looks at a flow's first packet from each side sets
``packet_first_only``; one that only looks at some server ports has ``packet_ports`` (a
frozenset, set in `configure`): the engine then never calls it for other packets. One that
returns at once for a passed flow (`VERDICT_PASS`; DNS aside) sets ``packet_passed = False``.

Any other public method is an error when the detector is loaded (a misspelt hook would never be
called); helpers start with ``_``. Each detector gets its own `ctx`, so ``ctx.alert(signature,
...)`` knows who reports and when. Hooks must be cheap (they run on the packet path) and must
not keep packets: only the few fields they need.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from appliance.alerts.model import Signature
from appliance.config import (
    ConfigError,
    DetectorSpec,
    Loader,
    Option,
    Options,
    type_label,
)
from appliance.config import validate_options as _validate

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.detect.records import DnsMessage, HttpRequest, TlsHello
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

__all__ = [
    "HOOKS",
    "ConfigError",
    "Detector",
    "Loader",
    "Option",
    "Options",
    "check_hooks",
    "declared_options",
    "hook",
    "spec_of",
    "type_label",
    "validate_options",
]

# Hook name -> its arguments after self.
HOOKS: dict[str, tuple[str, ...]] = {
    "packet": ("ctx", "pkt", "flow", "from_client"),
    "dns": ("ctx", "pkt", "flow", "msg"),
    "tls": ("ctx", "pkt", "flow", "hello"),
    "http": ("ctx", "pkt", "flow", "req"),
    "tick": ("ctx", "now"),
}
# Public names a detector may define besides hooks.
API = frozenset({"load", "check", "configure", "stats"})


class Detector:
    """Base class: subclasses set `name` and `signatures` and define the hooks they need."""

    name: ClassVar[str] = ""
    signatures: ClassVar[tuple[Signature, ...]] = ()
    # How the detector's state is keyed, so `replay --workers` can split flows over processes
    # (appliance/replay/parallel.py): "flow" (only per flow), "client" (per flow client, e.g.
    # a scanning source), "inbound-server" (per server of flows opened from outside), or
    # "global" (anything else: replay then runs in one process and says so).
    partition: str = "global"
    # IP protocols whose packets the `packet` hook needs in every replay worker.
    replicated: ClassVar[tuple[int, ...]] = ()
    # Dispatch as data, read by the engine after every `configure`: the `packet` hook is called
    # only on a flow's first packet from each side when `packet_first_only` is set, and only on
    # flows whose server port is in `packet_ports` unless that is None. They spare the calls
    # that would return at once; the hook still checks its own conditions.
    packet_first_only: ClassVar[bool] = False
    packet_ports: frozenset[int] | None = None
    # False: the `packet` hook is not called for packets of a flow the engine already passed
    # (VERDICT_PASS when the packet's hooks start; DNS on port 53 excepted): inline, the kernel
    # queues none of them, so only a replay has them to skip.
    packet_passed: ClassVar[bool] = True

    @classmethod
    def load(cls, loader: Loader) -> None:
        """Declare options with ``loader.add_option(name, type, default, help, ...)``."""

    @classmethod
    def check(cls, opts: Options) -> None:
        """Checks between options (one must be below another): raise ``opts.error(name, why)``.
        Runs when a config is read, and again by the engine before anything changes."""

    def configure(self, opts: Options) -> None:
        """Take new option values (already checked). The engine calls it only when this
        detector's options changed. It may raise ``opts.error`` (a resource it needs is
        missing) only before changing anything; the engine then puts every detector back."""

    # Hooks are looked up by name; the base class deliberately defines none of them.
    if TYPE_CHECKING:

        def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None: ...
        def dns(self, ctx: Context, pkt: Packet, flow: Flow, msg: DnsMessage) -> None: ...
        def tls(self, ctx: Context, pkt: Packet, flow: Flow, hello: TlsHello) -> None: ...
        def http(self, ctx: Context, pkt: Packet, flow: Flow, req: HttpRequest) -> None: ...
        def tick(self, ctx: Context, now: float) -> None: ...


def _cls(detector: Detector | type[Detector]) -> type[Detector]:
    return detector if isinstance(detector, type) else type(detector)


@functools.cache
def _spec(cls: type[Detector]) -> DetectorSpec:
    check_hooks(cls)
    loader = Loader(cls.name)
    loader.add_option("enabled", bool, True, f"Run the {cls.name} detector.", remote=True)
    cls.load(loader)
    has_check = cls.check.__func__ is not Detector.check.__func__  # type: ignore[attr-defined]
    return DetectorSpec(cls.name, dict(loader.options), cls.check if has_check else None)


def spec_of(detector: Detector | type[Detector]) -> DetectorSpec:
    """The declarations of a detector class (checked once: hook names, option defaults)."""
    return _spec(_cls(detector))  # type: ignore[arg-type]  # classes hash by identity


def declared_options(detector: Detector | type[Detector]) -> dict[str, Option]:
    """All options of a detector, including the implicit `enabled` switch."""
    return dict(spec_of(detector).options)


def validate_options(detector: Detector | type[Detector], raw: Any) -> dict[str, Any]:
    """Defaults overlaid with `raw` (the detector's TOML table), every value checked."""
    return _validate(spec_of(detector), raw)


def check_hooks(cls: type[Detector]) -> None:
    """Refuse a detector class with a public method that is neither a hook nor part of the
    detector API (a misspelt hook), or a hook with the wrong arguments."""
    if not cls.name:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__}: a detector needs a name")
    for klass in cls.__mro__:
        if klass in (Detector, object):
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_") or isinstance(value, property):
                continue
            if not (callable(value) or isinstance(value, classmethod | staticmethod)):
                continue
            where = f"detector {cls.name!r} ({cls.__module__}.{cls.__qualname__}.{attr})"
            if attr in HOOKS:
                params = list(inspect.signature(getattr(cls, attr)).parameters.values())[1:]
                varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
                if not varargs and len(params) != len(HOOKS[attr]):
                    want = ", ".join(HOOKS[attr])
                    raise TypeError(f"{where}: hook {attr} takes ({want})")
            elif attr not in API:
                hooks = ", ".join(HOOKS)
                raise TypeError(
                    f"{where}: not a hook (hooks: {hooks}); name helpers with a leading '_'"
                )


def hook(detector: Detector, name: str) -> Callable[..., None] | None:
    """The detector's bound hook method, or None when it does not implement that hook."""
    fn = getattr(detector, name, None)
    return fn if callable(fn) else None
