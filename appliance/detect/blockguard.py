"""Block mode's safety rules: which addresses may go into the kernel drop set.

A detector asks to block because of evidence (a listed address, a DNS answer for a listed
name); the guard decides. It never lets an automatic block take the office down:

- never an office address (`inline.home_nets`), nor an address in `inline.never_block`;
- never a non-public address (RFC 1918, CGNAT, loopback, link-local, multicast, ULA,
  unspecified, reserved; IPv4-mapped IPv6 judged by its IPv4 address). The documentation and
  benchmarking ranges count as public unless listed in `inline.never_block` (the lab uses them
  as its internet);
- never the office's gateway or DNS resolvers (learned: where office hosts send DNS, the
  device's own default route) or the hub;
- at most `cap` automatic blocks alive at once and `rate` a minute per kind of evidence; the
  first refusal for the cap is reported (`cap_reached`) so an alert can say so.

Every refusal is counted by reason (`refused`), for status and telemetry.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

from appliance.alerts.model import Signature
from appliance.packet.addrset import AddrSet, packed_address

NON_PUBLIC = AddrSet(
    (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)

# Said once when the cap first refuses a block (by the detector whose block it was).
BLOCK_LIMIT = Signature(
    8100011,
    "Threat intel: block limit reached, further automatic blocks refused",
    "Threat intel",
    2,
)

DEFAULT_CAP = 1024  # automatic blocks alive at once
DEFAULT_RATE = 60  # automatic blocks a minute, per kind of evidence


class BlockGuard:
    """Says whether an automatic block of an address is allowed, and counts every refusal."""

    def __init__(
        self,
        home_nets: AddrSet | None = None,
        never_block: AddrSet | None = None,
        *,
        cap: int = DEFAULT_CAP,
        rate: int = DEFAULT_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home = home_nets or AddrSet()
        self.never = never_block or AddrSet()
        self.cap = cap
        self.rate = rate
        self._clock = clock
        self.protected: dict[bytes, str] = {}  # packed learned gateway/resolvers/hub -> why
        self.active: dict[str, float] = {}  # blocked address -> when it expires (clock time)
        self._recent: dict[str, deque[float]] = {}
        self.refused: Counter[str] = Counter()
        self.allowed = 0
        self.cap_reached = False  # set on the first refusal for the cap; cleared when read

    def configure(self, home_nets: AddrSet, never_block: AddrSet) -> None:
        self.home, self.never = home_nets, never_block

    # -- what is protected ----------------------------------------------------------------------

    def protect(self, addr: str, why: str) -> None:
        """Never block `addr` (a learned resolver or gateway, the hub). Bounded: 256 entries."""
        ip = _plain(packed_address(addr))
        if ip is not None and ip not in self.protected and len(self.protected) < 256:
            self.protected[ip] = why

    def reason_not_to_block(self, addr: str) -> str | None:
        """Why `addr` must never be blocked, or None when it may be (cap and rate aside)."""
        ip = _plain(packed_address(addr))
        if ip is None:
            return "not-an-address"
        if self.home.contains(ip):
            return "office"
        if self.never.contains(ip):
            return "never-block"
        if NON_PUBLIC.contains(ip):
            return "non-public"
        why = self.protected.get(ip)
        if why is not None:
            return why
        return None

    # -- the decision ---------------------------------------------------------------------------

    def allow(self, addr: str, evidence: str, ttl: float) -> bool:
        """True if an automatic block of `addr` (for `evidence`, lasting `ttl` s) may go ahead."""
        why = self.reason_not_to_block(addr)
        if why is not None:
            self.refused[why] += 1
            return False
        now = self._clock()
        if addr in self.active and self.active[addr] > now:
            self.active[addr] = max(self.active[addr], now + ttl)
            return True  # a refresh of a live block costs nothing
        if len(self.active) >= self.cap:
            self.active = {a: t for a, t in self.active.items() if t > now}
        if len(self.active) >= self.cap:
            if not self.refused["cap"]:
                self.cap_reached = True
            self.refused["cap"] += 1
            return False
        recent = self._recent.setdefault(evidence, deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= self.rate:
            self.refused["rate"] += 1
            return False
        recent.append(now)
        self.active[addr] = now + ttl
        self.allowed += 1
        return True

    def forget(self, addr: str) -> None:
        """`addr` was unblocked (by the hub or its TTL)."""
        self.active.pop(addr, None)

    def stats(self) -> dict[str, int]:
        out = {f"block_refused_{k.replace('-', '_')}": v for k, v in self.refused.items()}
        out["blocks_allowed"] = self.allowed
        out["blocks_active"] = len(self.active)
        out["block_protected"] = len(self.protected)
        return out


def _plain(packed: bytes | None) -> bytes | None:
    """An IPv4-mapped IPv6 address as the IPv4 address it carries (one key per address)."""
    if packed is not None and len(packed) == 16 and packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return packed[12:]
    return packed
