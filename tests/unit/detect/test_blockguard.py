"""The block guard: what block mode may never drop, caps and rates, counted refusals."""

from __future__ import annotations

import pytest

from appliance.detect.blockguard import BlockGuard
from appliance.packet.addrset import AddrSet

HOME = ("198.18.0.0/15",)


def guard(**kw: object) -> tuple[BlockGuard, list[float]]:
    clock = [1000.0]
    g = BlockGuard(AddrSet(HOME), AddrSet(["203.0.113.99/32"]), clock=lambda: clock[0], **kw)  # type: ignore[arg-type]
    return g, clock


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("198.18.0.11", "office"),
        ("::ffff:198.18.0.1", "office"),  # IPv4-mapped: judged as the IPv4 address
        ("203.0.113.99", "never-block"),
        ("10.1.2.3", "non-public"),
        ("172.20.0.1", "non-public"),
        ("192.168.1.1", "non-public"),
        ("100.64.0.1", "non-public"),  # CGNAT
        ("127.0.0.1", "non-public"),
        ("169.254.1.1", "non-public"),
        ("224.0.0.251", "non-public"),
        ("255.255.255.255", "non-public"),
        ("0.0.0.0", "non-public"),
        ("::1", "non-public"),
        ("fe80::1", "non-public"),
        ("fd00::1", "non-public"),
        ("ff02::1", "non-public"),
        ("::ffff:10.0.0.1", "non-public"),
        ("not-an-ip", "not-an-address"),
    ],
)
def test_never_blocked(addr: str, reason: str) -> None:
    g, _ = guard()
    assert g.reason_not_to_block(addr) == reason
    assert g.allow(addr, "intel:8100001", 60) is False
    assert g.refused[reason] == 1
    assert g.stats()[f"block_refused_{reason.replace('-', '_')}"] == 1


def test_public_and_documentation_addresses_may_be_blocked() -> None:
    g, _ = guard()
    for addr in ("203.0.113.66", "198.51.100.23", "8.8.4.4", "2001:db8::66", "2a00:1450::1"):
        assert g.allow(addr, "intel:8100001", 60), addr
    assert g.allowed == 5 and not g.refused


def test_learned_gateway_resolvers_and_hub_are_protected() -> None:
    g, _ = guard()
    g.protect("203.0.113.53", "resolver")
    g.protect("192.0.2.10", "hub")
    assert g.allow("203.0.113.53", "dns-answer", 60) is False
    assert g.allow("192.0.2.10", "intel:8100001", 60) is False
    assert g.refused == {"resolver": 1, "hub": 1}
    g.protect("garbage", "x")  # ignored, no crash
    assert len(g.protected) == 2


def test_the_cap_bounds_live_blocks_and_is_reported_once() -> None:
    g, clock = guard(cap=3, rate=100)
    for i in range(3):
        assert g.allow(f"203.0.113.{i + 1}", "intel:8100001", 60)
    assert g.allow("203.0.113.50", "intel:8100001", 60) is False
    assert g.cap_reached and g.refused["cap"] == 1
    g.cap_reached = False
    assert g.allow("203.0.113.51", "intel:8100001", 60) is False
    assert not g.cap_reached  # said once
    assert g.allow("203.0.113.1", "intel:8100001", 60)  # refreshing a live block is free
    clock[0] += 61  # the first three ran out
    assert g.allow("203.0.113.52", "intel:8100001", 60)


def test_the_rate_is_per_kind_of_evidence() -> None:
    g, clock = guard(cap=1000, rate=2)
    assert g.allow("203.0.113.1", "dns-answer", 600)
    assert g.allow("203.0.113.2", "dns-answer", 600)
    assert g.allow("203.0.113.3", "dns-answer", 600) is False
    assert g.refused["rate"] == 1
    assert g.allow("203.0.113.3", "intel:8100001", 600)  # other evidence has its own budget
    clock[0] += 60.5
    assert g.allow("203.0.113.4", "dns-answer", 600)
