"""Which components the daemon runs and how they are connected: the one place that says so.

- the LEDs (`appliance.leds`), reached by the view's `ack_alerts`/`identify`;
- the status page (`appliance.status.app`);
- remote management (`appliance.hublink.device`), given the hub link so it can hand the link its
  command handler before the link connects (the retained desired config of the first
  connection must not be missed);
- the hub link (`appliance.hublink.link`), whose outbox is the alert pipeline's journal, so every
  numbered alert is stored before it is published.

Start order is the order of `Wiring.components`; stop runs in reverse. A factory that fails is
logged and the daemon runs without that component: the packet path never depends on one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from appliance import leds as leds_mod
from appliance.alerts.outbox import Outbox
from appliance.component import Component
from appliance.config import Config
from appliance.hublink import device as device_mod
from appliance.hublink import link as link_mod
from appliance.leds import Leds
from appliance.status import app as page_mod

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Wiring:
    """The daemon's components, in start order, and the connections between them."""

    components: list[Component] = field(default_factory=list)
    journal: Outbox | None = None  # the alert pipeline's journal (the hub link's outbox)
    leds: Leds | None = None  # what `ack_alerts`/`identify` drive


def _make(what: str, factory: Callable[[], T | None]) -> T | None:
    try:
        return factory()
    except Exception:
        log.exception("%s failed to build; running without it", what)
        return None


def build(config: Config) -> Wiring:
    """The components `config` asks for, connected."""
    leds = _make("LEDs", lambda: leds_mod.component(config))
    page = _make("status page", lambda: page_mod.component(config))
    link = _make("hub link", lambda: link_mod.component(config))
    remote = _make("remote management", lambda: device_mod.component(config, link))
    comps: list[Component | None] = [leds, page, remote, link]
    return Wiring(
        components=[c for c in comps if c is not None],
        journal=link.journal if link is not None else None,
        leds=leds,
    )
