"""The component contract: what a daemon component (LEDs, status page, hub link, remote
management) may see of the daemon, and the hooks it implements.

A component never gets the daemon itself. It gets a `DaemonView` at `start`: read-only access to
the config in force, the latest stats snapshot and the intel status, plus only the actions a
component is allowed (block/unblock an address, apply a config, reload intel, acknowledge alerts,
blink the LEDs, ask for a clean stop). Every tick the daemon takes ONE stats snapshot (its own
counters plus every component's `stats()`) and hands the same snapshot to every component's
`tick`; nothing calls back into the daemon for numbers.

Components are made by factories named ``component(config) -> Component | None`` (None when the
config leaves the component off) and wired together explicitly in one place,
`appliance.service.wiring`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from appliance.config import Config

Snapshot = Mapping[str, Any]
"""One tick's stats: the daemon's counters plus every component's `stats()` (core keys win)."""


@dataclass(frozen=True, slots=True)
class IntelStatus:
    """What a component may know of the intel store."""

    version: str
    indicators: int
    paths: tuple[str, ...]


class DaemonView(Protocol):
    """What a component may see of the daemon and ask of it.

    Reads and the firewall actions are safe from any thread; `apply_config` belongs to the
    daemon's main loop (call it from a component's `tick`, or hand it over as
    `appliance.hublink.device.ServiceDevice` does).
    """

    @property
    def config(self) -> Config:
        """The config in force (`source` is the file it was loaded from)."""
        ...

    @property
    def running(self) -> bool:
        """True while the daemon's main loop runs (and so ticks the components)."""
        ...

    def snapshot(self) -> Snapshot:
        """The latest tick's stats snapshot (empty before the first one)."""
        ...

    def intel_status(self) -> IntelStatus:
        """Version, size and files of the intel store in use."""
        ...

    def block(self, address: str, ttl: int) -> bool:
        """Put `address` in the drop set for `ttl` seconds; False when `inline.never_block`
        covers it. Raises OSError when the firewall cannot do it."""
        ...

    def unblock(self, address: str) -> bool:
        """Lift a block; False if it was not blocked. OSError when the firewall fails."""
        ...

    def apply_config(self, new: Config) -> None:
        """Run with `new` (e.g. a new mode) from now on; ConfigError with nothing changed when
        it is refused. Main loop only."""
        ...

    def reload_intel(self) -> str:
        """Rebuild the intel store (config paths plus installed hub bundles) and swap it in;
        the new version. ValueError, with the old store kept, when it cannot be built."""
        ...

    def ack_alerts(self, ids: Sequence[str] | None) -> int:
        """Acknowledge alerts (all when `ids` is None): how many were outstanding."""
        ...

    def identify(self, seconds: float) -> None:
        """Blink every LED for `seconds`. NotImplementedError without LEDs."""
        ...

    @property
    def has_leds(self) -> bool:
        """Whether `ack_alerts`/`identify` reach LEDs."""
        ...

    def request_stop(self) -> None:
        """Ask for a clean stop (systemd starts the daemon again)."""
        ...


@runtime_checkable
class Component(Protocol):
    """The hooks a daemon component implements (all of them; a hook with nothing to do is
    empty). Exceptions from a hook are logged and counted, never fatal to the daemon."""

    name: str

    def start(self, view: DaemonView) -> None:
        """Before packets are queued; a raise leaves the daemon running without the component."""
        ...

    def tick(self, now: float, snapshot: Snapshot) -> None:
        """About once a second in the main loop, with that tick's stats snapshot."""
        ...

    def configure(self, config: Config) -> None:
        """Take a new config live; raise ConfigError to refuse it (nothing changed)."""
        ...

    def stop(self) -> None:
        """Clean stop (in reverse start order)."""
        ...

    def stats(self) -> dict[str, Any]:
        """This component's numbers, merged into the snapshot (never replacing core keys)."""
        ...
