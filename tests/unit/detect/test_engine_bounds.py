"""The engine stays bounded under hostile flow heads: partial hellos held by at most
HOLDING_FLOWS flows, oversized payloads read on their head only, each QUIC datagram decrypted
once."""

from __future__ import annotations

from appliance.detect import engine as engine_mod
from appliance.detect.dissect import quic as quic_mod
from appliance.detect.intel import IntelStore
from appliance.packet.decode import DecodeStats, decode_ip
from bench.hostile import _ip4, _payloads, _tcp, _udp
from tests.helpers import make_config

CLIENT, SERVER = 0xC6120000, 0xCB00710A  # 198.18.0.0, 203.0.113.10


def feed(engine: engine_mod.Engine, raws: list[bytes]) -> None:
    stats = DecodeStats()
    for raw in raws:
        pkt = decode_ip(raw, 1_800_000_000.0, stats)
        assert pkt is not None
        engine.process(pkt)


def new_engine() -> engine_mod.Engine:
    return engine_mod.Engine(make_config(), IntelStore(), lambda a: None)


def test_partial_hellos_are_held_by_a_bounded_number_of_flows(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(engine_mod, "HOLDING_FLOWS", 64)
    tcp, _quic = _payloads()
    eng = new_engine()
    raws = []
    for i in range(200):
        raws += [_ip4(CLIENT + 1 + i, SERVER, 6, _tcp(2000 + i, 443, 0x18, tcp[0]))]
    feed(eng, raws)
    assert len(eng._holding) == 64
    assert eng.stats.holds_given_up == 200 - 64
    held = [f for f in eng._holding.values() if f.notes and "hello" in f.notes["engine"]]
    assert len(held) == 64  # only the holders keep bytes; the others gave theirs up


def test_a_split_hello_is_still_read_whole() -> None:
    tcp, _quic = _payloads()
    eng = new_engine()
    seen = []
    eng._hooks["tls"].append(
        ("probe", lambda ctx, pkt, flow, hello: seen.append(hello), eng.ctx)  # type: ignore[arg-type]
    )
    # The hostile hello never ends within the head: after HELLO_SEGMENTS it is judged partial.
    segs = [_ip4(CLIENT + 1, SERVER, 6, _tcp(3000, 443, 0x18, s)) for s in tcp]
    segs.append(_ip4(CLIENT + 1, SERVER, 6, _tcp(3000, 443, 0x18, tcp[2])))
    feed(eng, segs)
    assert len(seen) == 1 and seen[0].sni == "hostile.example"
    assert not eng._holding


def test_each_quic_datagram_is_decrypted_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _tcp_segs, quic = _payloads()
    calls = []
    real = quic_mod.decrypt_initial

    def counting(data: bytes):  # type: ignore[no-untyped-def]
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(quic_mod, "decrypt_initial", counting)
    eng = new_engine()
    feed(eng, [_ip4(CLIENT + 1, SERVER, 17, _udp(4000, 443, d)) for d in quic])
    assert len(calls) == 3  # three datagrams, three decryptions (not 1 + 2 + 3)


def test_oversized_datagrams_are_judged_on_their_head() -> None:
    eng = new_engine()
    big = b"\xc3" + bytes(20_000)
    feed(eng, [_ip4(CLIENT + 1, SERVER, 17, _udp(4001, 443, big))])
    assert not eng._holding and eng.stats.packets == 1
