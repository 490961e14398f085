"""The engines' blocker: block requests queued in the packet path, applied by the main loop."""

from __future__ import annotations

import logging

from appliance.inline.firewall import Firewall, FirewallError

log = logging.getLogger(__name__)


class BlockRequests:
    """The engines' blocker: requests are queued and applied to the firewall by the main loop,
    outside the packet callback (an ``nft`` call takes milliseconds)."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, int]] = []
        self.until: dict[str, float] = {}  # address → when our last block of it runs out
        self.failed = 0

    def block(self, addr: str, ttl: int) -> None:
        self.pending.append((addr, ttl))

    def flush(self, firewall: Firewall, now: float) -> None:
        while self.pending:
            addr, ttl = self.pending.pop(0)
            until = self.until.get(addr)
            if until is not None and until - now > ttl / 2:
                continue  # blocked recently: no need to refresh the timeout yet
            try:
                if firewall.block(addr, ttl):
                    self.until[addr] = now + ttl if ttl > 0 else float("inf")
            except FirewallError as e:
                self.failed += 1
                log.error("%s", e)
        if len(self.until) > 10_000:
            self.until = {a: t for a, t in self.until.items() if t > now}

    def forget(self) -> None:
        self.until.clear()
