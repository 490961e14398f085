from scapy.layers.inet import IP, TCP, UDP

from appliance.packet.addrset import AddrSet
from appliance.packet.decode import SIDE_INTERNET, SIDE_OFFICE, DecodeStats, decode_ip
from appliance.packet.flows import (
    DIR_INBOUND,
    DIR_INTERNAL,
    DIR_OUTBOUND,
    DIR_UNKNOWN,
    FlowTable,
)


def pkt(scapy_pkt, ts=0.0, side=0):
    p = decode_ip(bytes(scapy_pkt), ts, DecodeStats())
    p.side = side
    return p


HOME = AddrSet(["198.18.0.0/24", "2001:db8:1::/48"])


def test_both_directions_share_one_flow_and_client_is_initiator() -> None:
    t = FlowTable(100, HOME)
    f1, c1 = t.lookup(
        pkt(IP(src="198.18.0.11", dst="203.0.113.10") / TCP(sport=4000, dport=80, flags="S"))
    )
    f2, c2 = t.lookup(
        pkt(IP(src="203.0.113.10", dst="198.18.0.11") / TCP(sport=80, dport=4000, flags="SA"))
    )
    assert f1 is f2 and c1 and not c2
    assert f1.pkts_c == 1 and f1.pkts_s == 1 and f1.direction == DIR_OUTBOUND
    f1b, _ = t.lookup(
        pkt(IP(src="198.18.0.11", dst="203.0.113.10") / TCP(sport=4000, dport=80, flags="A"))
    )
    assert f1b.established


def test_synack_first_sight_makes_receiver_the_client() -> None:
    t = FlowTable(100, HOME)
    f, from_client = t.lookup(
        pkt(IP(src="203.0.113.10", dst="198.18.0.11") / TCP(sport=80, dport=4000, flags="SA"))
    )
    assert not from_client and f.client_port == 4000 and f.direction == DIR_OUTBOUND


def test_direction_from_home_nets_and_from_bridge_port() -> None:
    t = FlowTable(100, HOME)
    inbound, _ = t.lookup(pkt(IP(src="198.51.100.23", dst="198.18.0.12") / TCP(dport=3389)))
    assert inbound.direction == DIR_INBOUND
    internal, _ = t.lookup(
        pkt(IP(src="198.18.0.11", dst="198.18.0.12") / UDP(sport=5000, dport=5001))
    )
    assert internal.direction == DIR_INTERNAL
    unknown, _ = t.lookup(pkt(IP(src="192.0.2.1", dst="203.0.113.1") / UDP(sport=5000, dport=5001)))
    assert unknown.direction == DIR_UNKNOWN
    # The bridge port wins over addresses: came in on the uplink → inbound.
    port, _ = t.lookup(
        pkt(IP(src="192.0.2.1", dst="203.0.113.1") / UDP(sport=6000, dport=53), side=SIDE_INTERNET)
    )
    assert port.direction == DIR_INBOUND
    port2, _ = t.lookup(
        pkt(IP(src="203.0.113.1", dst="192.0.2.1") / UDP(sport=53, dport=6001), side=SIDE_OFFICE)
    )
    # A reply from a well-known port: the receiver is the client, so this flow is inbound.
    assert port2.client_port == 6001 and port2.direction == DIR_INBOUND


def test_bounded_and_aged() -> None:
    t = FlowTable(256, HOME)
    for i in range(1000):
        t.lookup(
            pkt(
                IP(src="198.51.100.23", dst="198.18.0.12") / TCP(sport=1000 + i, dport=22),
                ts=float(i),
            )
        )
    assert len(t) == 256 and t.evicted == 744
    assert t.expire(10_000.0) == 256 and len(t) == 0


def test_ageing_walks_only_the_idle_flows_in_activity_order() -> None:
    t = FlowTable(10_000, HOME)
    for i in range(100):  # TCP flows created at t = 0..99
        t.lookup(pkt(IP(src="198.18.0.11", dst="203.0.113.10") / TCP(sport=1000 + i, dport=443),
                     ts=float(i)))  # fmt: skip
    # Flow 0 stays active: moved behind the others, so it outlives flows created after it.
    t.lookup(pkt(IP(src="198.18.0.11", dst="203.0.113.10") / TCP(sport=1000, dport=443), ts=150.0))
    t.lookup(pkt(IP(src="198.18.0.11", dst="203.0.113.53") / UDP(sport=5353, dport=53),
                 ts=120.0))  # fmt: skip
    # At 170: TCP idle > 120 s means last < 50 (flows 1..49); the UDP flow (60 s) is live.
    assert t.expire(170.0) == 49 and len(t) == 52
    ports = sorted(f.client_port for f in t if f.proto == 6)
    assert ports == [1000, *range(1050, 1100)]
    assert t.expire(170.0) == 0  # nothing more to do: the front is live
    assert t.expire(161.0 + 60.0) == 50 + 1  # flows 50..99 (TCP) and the UDP flow (idle 101 s)
    assert [f.client_port for f in t] == [1000] and t.expired == 100


def test_count_bound_evicts_the_least_recently_active() -> None:
    t = FlowTable(256, HOME)
    keep, _ = t.lookup(pkt(IP(src="198.18.0.11", dst="203.0.113.10") / TCP(sport=999, dport=443)))
    for i in range(300):
        t.lookup(pkt(IP(src="198.51.100.23", dst="198.18.0.12") / UDP(sport=1000 + i, dport=53),
                     ts=float(i)))  # fmt: skip
        if i % 10 == 0:  # the TCP flow keeps talking
            t.lookup(pkt(IP(src="198.18.0.11", dst="203.0.113.10") / TCP(sport=999, dport=443),
                         ts=float(i)))  # fmt: skip
    assert len(t) == 256 and t.evicted == 45 and keep in list(t)
