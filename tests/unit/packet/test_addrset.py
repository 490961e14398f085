import ipaddress

import pytest

from appliance.packet.addrset import AddrSet, check_entries, is_entry, packed_address, parse_entry


def p(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_networks_and_single_addresses_of_both_families() -> None:
    s = AddrSet(["198.18.0.0/24", "203.0.113.7", "2001:db8:1::/48", "2001:db8::5"])
    assert s.contains(p("198.18.0.200"))
    assert not s.contains(p("198.18.1.1"))
    assert s.contains(p("203.0.113.7")) and not s.contains(p("203.0.113.8"))
    assert s.contains(p("2001:db8:1:ffff::1")) and not s.contains(p("2001:db8:2::1"))
    assert s.contains(p("2001:db8::5")) and not s.contains(p("2001:db8::6"))
    # Text and ipaddress objects too; anything that is not an address is not in the set.
    assert "198.18.0.9" in s and ipaddress.ip_address("203.0.113.7") in s
    assert "office-0123" not in s and "" not in s and 5 not in s
    assert len(s) == 4 and bool(s) and not AddrSet()


def test_ipv4_mapped_ipv6_is_ipv4_both_ways() -> None:
    s = AddrSet(["198.18.0.0/24", "::ffff:192.0.2.0/120"])
    assert s.contains(p("::ffff:198.18.0.5"))
    assert "::ffff:198.18.0.5" in s
    assert s.contains(p("192.0.2.77"))  # the mapped entry became 192.0.2.0/24
    assert [str(n) for n in s] == ["198.18.0.0/24", "192.0.2.0/24"]
    assert packed_address("::ffff:198.18.0.5") == p("198.18.0.5")
    assert s.covering(p("::ffff:192.0.2.1")) == ipaddress.ip_network("192.0.2.0/24")


def test_ports_only_where_asked_and_an_entry_without_port_matches_all() -> None:
    s = AddrSet(
        ["198.18.0.12:22", "198.18.0.12:3389", "[2001:db8::1]:443", "198.18.0.99"], ports=True
    )
    assert s.contains(p("198.18.0.12"), 22) and s.contains(p("198.18.0.12"), 3389)
    assert not s.contains(p("198.18.0.12"), 23) and not s.contains(p("198.18.0.12"))
    assert s.contains(p("2001:db8::1"), 443) and not s.contains(p("2001:db8::1"), 80)
    assert s.contains(p("198.18.0.99"), 12345)
    # A port entry and an all-ports entry for the same address: all ports.
    both = AddrSet(["198.18.0.12:22", "198.18.0.12"], ports=True)
    assert both.contains(p("198.18.0.12"), 80)
    with pytest.raises(ValueError, match="198.18.0.12:22"):
        AddrSet(["198.18.0.12:22"])  # ports not taken here


@pytest.mark.parametrize(
    "bad", ["", "nope", "198.18.0.0/33", "300.1.1.1", "198.18.0.1:0", "[2001:db8::1", "::1:x"]
)
def test_bad_entries_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="expected|bad port"):
        parse_entry(bad, ports=True)
    assert not is_entry(bad, ports=True)
    with pytest.raises(ValueError, match=r"^\[1\]: "):
        check_entries(["198.18.0.1", bad], ports=True)


def test_covering_and_overlapping_say_which_network() -> None:
    s = AddrSet(["198.18.0.0/24", "2001:db8::/32"])
    assert s.covering("198.18.0.5") == ipaddress.ip_network("198.18.0.0/24")
    assert s.covering("198.18.1.5") is None and s.covering("junk") is None
    assert s.overlapping("198.18.0.0/16") == ipaddress.ip_network("198.18.0.0/24")
    assert s.overlapping("198.18.0.7") is not None
    assert s.overlapping("2001:db8:5::/48") == ipaddress.ip_network("2001:db8::/32")
    assert s.overlapping("192.0.2.0/24") is None


def test_many_entries_agree_with_ipaddress() -> None:
    import random

    rnd = random.Random(7)
    nets = [
        ipaddress.ip_network((rnd.getrandbits(32), rnd.randint(8, 32)), strict=False)
        for _ in range(300)
    ]
    s = AddrSet(str(n) for n in nets)
    for _ in range(3000):
        a = ipaddress.ip_address(rnd.getrandbits(32))
        if rnd.random() < 0.5:
            a = rnd.choice(nets).network_address  # hit a few for sure
        assert s.contains(a.packed) == any(a in n for n in nets), a
