"""The daemon's numbers: kernel counters, fail-open accounting and the per-tick stats snapshot.

`Service.stats()` (its own counters plus every component's `stats()`) is taken ONCE per tick by
the main loop and handed to every component's `tick`; the same snapshot is what the status page,
the LEDs, the hub link's telemetry and the `status` command show.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from appliance.component import Component
from appliance.inline.firewall import Counters, Firewall, FirewallError
from appliance.inline.queue import queue_table

log = logging.getLogger(__name__)

KERNEL_CACHE_S = 1.0


class KernelCounters:
    """Rule counters and queue depth (read at most once a second), and the fail-open count
    across ruleset replacements (whose counters restart at zero)."""

    def __init__(self, firewall: Firewall) -> None:
        self.firewall = firewall
        self._cache: tuple[float, Counters, int] | None = None
        self._fail_open_before = 0
        self._received_at_apply = 0

    def read(self, numbers: Iterable[int], fresh: bool = False) -> tuple[Counters, int]:
        mono = time.monotonic()
        if fresh or self._cache is None or mono - self._cache[0] > KERNEL_CACHE_S:
            try:
                counters = self.firewall.counters()
            except FirewallError as e:
                log.debug("counters unavailable: %s", e)
                counters = Counters()
            kq = queue_table()
            depth = sum(kq[n]["total"] for n in numbers if n in kq)
            self._cache = (mono, counters, depth)
        return self._cache[1], self._cache[2]

    def fail_open_events(self, numbers: Iterable[int], received: int, fresh: bool = False) -> int:
        """Packets the queue rules sent that the daemon never saw: let through by the kernel
        because the queue was full (fail-open) or nobody listened (bypass)."""
        counters, depth = self.read(numbers, fresh)
        seen = received - self._received_at_apply
        return self._fail_open_before + max(0, counters.queued - seen - depth)

    def before_replace(self, numbers: Iterable[int], received: int) -> None:
        """The ruleset is about to be replaced: keep what its counters say."""
        self._fail_open_before = self.fail_open_events(numbers, received, fresh=True)

    def after_apply(self, received: int) -> None:
        self._received_at_apply = received
        self._cache = None


def merged(core: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Components add keys, never replace the core ones."""
    out = dict(core)
    for key, value in extra.items():
        out.setdefault(key, value)
    return out


def component_stats(
    components: Iterable[Component], failed: Callable[[Component, str], None]
) -> dict[str, Any]:
    """Every component's `stats()`, a failing one counted through `failed`."""
    extra: dict[str, Any] = {}
    for comp in components:
        try:
            extra.update(comp.stats())
        except Exception:
            failed(comp, "stats")
    return extra
