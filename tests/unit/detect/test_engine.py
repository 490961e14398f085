"""The engine: verdicts, split ClientHellos, failing detectors, block mode and its allow-list."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP

from appliance.alerts.model import Signature
from appliance.config import Config, ConfigError
from appliance.detect.base import Detector
from appliance.detect.dissect.quic import build_initial
from appliance.detect.engine import Engine
from appliance.packet.decode import decode_ip
from appliance.packet.flows import VERDICT_BLOCK, VERDICT_NONE, VERDICT_PASS
from bench.engine import tls_client_hello
from tests.helpers import Harness, make_config

PC1, WEB, EVIL = "198.18.0.11", "203.0.113.10", "203.0.113.66"


def big_hello(sni: str) -> bytes:
    """A ClientHello with a post-quantum-sized key share (~1.3 KB), as one TLS record."""
    rec = bytearray(tls_client_hello(sni))
    share = struct.pack("!HH", 0x33, 1222) + struct.pack("!H", 1220)
    share += struct.pack("!HH", 0x11EC, 1216) + bytes(1216)
    body_len = int.from_bytes(rec[6:9], "big") + len(share)
    # The extensions' length field: walk version, random, session id, ciphers, compression.
    off = 9 + 2 + 32
    off += 1 + rec[off]
    off += 2 + int.from_bytes(rec[off : off + 2], "big")
    off += 1 + rec[off]
    ext_len = int.from_bytes(rec[off : off + 2], "big") + len(share)
    rec[off : off + 2] = ext_len.to_bytes(2, "big")
    rec += share
    rec[6:9] = body_len.to_bytes(3, "big")
    rec[3:5] = (len(rec) - 5).to_bytes(2, "big")
    return bytes(rec)


def tcp(payload: bytes = b"", flags: str = "PA", sport: int = 40000, dport: int = 443):
    return IP(src=PC1, dst=WEB) / TCP(sport=sport, dport=dport, flags=flags) / payload


def intel(tmp_path: Path, *lines: str) -> Path:
    p = tmp_path / "intel.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def handshake(dport: int = 443, sport: int = 40000):
    return [
        tcp(flags="S", sport=sport, dport=dport),
        IP(src=WEB, dst=PC1) / TCP(sport=dport, dport=sport, flags="SA"),
        tcp(flags="A", sport=sport, dport=dport),
    ]


def test_flow_is_judged_after_its_first_client_payload(tmp_path: Path) -> None:
    h = Harness(intel_paths=[intel(tmp_path, "listed.example")])
    verdicts = h.feed([*handshake(), tcp(tls_client_hello("www.example.com"))])
    assert verdicts == [VERDICT_NONE] * 3 + [VERDICT_PASS]


def test_split_client_hello_is_joined(tmp_path: Path) -> None:
    h = Harness(intel_paths=[intel(tmp_path, "listed.example")])
    rec = big_hello("www.listed.example")
    assert len(rec) > 1400
    verdicts = h.feed([*handshake(), tcp(rec[:1000]), tcp(rec[1000:])])
    assert verdicts[3] == VERDICT_NONE  # held, not yet judged
    assert verdicts[4] == VERDICT_PASS
    sni = [a for a in h.finish() if a.get("tls", {}).get("sni") == "www.listed.example"]
    assert len(sni) == 1 and sni[0]["alert"]["signature_id"] == 8100005
    assert sni[0]["tls"]["ja4"].startswith("t13d")


def test_quic_hello_over_two_initials(tmp_path: Path) -> None:
    h = Harness(intel_paths=[intel(tmp_path, "quic.listed.example")])
    hello = big_hello("quic.listed.example")[5:]
    half = 700

    def crypto(offset: int, data: bytes) -> bytes:
        return b"\x06" + struct.pack("!HH", 0x4000 | offset, 0x4000 | len(data)) + data

    dcid, scid = bytes(range(8)), b"\x01\x02\x03\x04"
    first = build_initial(dcid, scid, crypto(0, hello[:half]).ljust(1150, b"\0"))
    second = build_initial(dcid, scid, crypto(half, hello[half:]).ljust(1150, b"\0"), pn=1)
    u = IP(src=PC1, dst=WEB) / UDP(sport=50000, dport=443)
    h.feed([u / first, u / second])
    hits = [a for a in h.finish() if a["watchpost"]["detector"] == "intel"]
    assert len(hits) == 1 and hits[0]["quic"]["sni"] == "quic.listed.example"


class Broken(Detector):
    name = "broken"
    signatures = (Signature(8199998, "Test: never", "Test", 3),)

    def packet(self, ctx, pkt, flow, from_client) -> None:
        raise RuntimeError("detector bug")


def test_a_failing_detector_is_counted_and_the_packet_still_judged(tmp_path: Path) -> None:
    h = Harness()
    h.engine.detectors.append(Broken())
    h.engine.configure(h.config, first=True)
    verdicts = h.feed(handshake())
    assert verdicts == [VERDICT_NONE] * 3
    assert h.engine.stats.hook_errors["broken.packet"] == 3


def test_block_mode_and_allow_list(tmp_path: Path) -> None:
    listed = intel(tmp_path, EVIL, WEB)
    cfg = make_config(inline={"mode": "block", "never_block": [WEB + "/32"]})
    blocked: list[tuple[str, int]] = []
    h = Harness(cfg, intel_paths=[listed])
    h.engine.blocker = type("B", (), {"block": lambda self, a, t: blocked.append((a, t))})()
    v_evil = h.feed([IP(src=PC1, dst=EVIL) / TCP(sport=1, dport=443, flags="S")])
    v_web = h.feed([IP(src=PC1, dst=WEB) / TCP(sport=2, dport=443, flags="S")])
    assert v_evil == [VERDICT_BLOCK] and v_web == [VERDICT_NONE]
    assert blocked == [(EVIL, cfg.inline.block_ttl)]
    actions = {a["dest_ip"]: a["alert"]["action"] for a in h.finish()}
    assert actions == {EVIL: "blocked", WEB: "allowed"}


def test_monitor_mode_never_blocks(tmp_path: Path) -> None:
    h = Harness(intel_paths=[intel(tmp_path, EVIL)])
    assert h.feed([IP(src=PC1, dst=EVIL) / TCP(sport=1, dport=443, flags="S")]) == [VERDICT_NONE]
    assert [a["alert"]["action"] for a in h.finish()] == ["allowed"]


def test_deep_ports_keep_flows_unjudged() -> None:
    h = Harness()
    assert h.engine.deep_ports().get(21, 0) > 8
    verdicts = h.feed([*handshake(dport=21), tcp(b"USER bob\r\n", dport=21)])
    assert verdicts[-1] == VERDICT_NONE


# --- staged configuration, hook names, who reports ------------------------------------------------


class Refuser(Detector):
    """Refuses new options at configure time (a resource it needs has gone)."""

    name = "refuser"
    refuse = False

    @classmethod
    def load(cls, loader) -> None:
        loader.add_option("level", int, 1, "Anything.", range=(0, 9), remote=True)

    def configure(self, opts) -> None:
        if type(self).refuse:
            raise opts.error("level", "the rule file it needs is gone")
        self.level = opts.level


def _staged_rig() -> tuple[Engine, dict, Config]:
    from appliance.config import from_dict, registered_detectors
    from appliance.detect.base import spec_of
    from appliance.detect.detectors.dga import DgaDetector
    from appliance.detect.detectors.portscan import PortScanDetector
    from appliance.detect.intel import IntelStore

    specs = {**registered_detectors(), "refuser": spec_of(Refuser)}
    Refuser.refuse = False
    dets = [PortScanDetector(), DgaDetector(), Refuser()]
    cfg = from_dict({"inline": {"home_nets": ["198.18.0.0/24"]}}, detectors=specs)
    engine = Engine(cfg, IntelStore(), lambda a: None, detectors=dets)
    return engine, specs, cfg


def _state(engine: Engine) -> list[dict]:
    """Each detector's option-derived attributes (address sets by their networks)."""
    return [
        {
            k: (tuple(v) if hasattr(v, "networks") else v)
            for k, v in vars(d).items()
            if not k.startswith("_") and not callable(v)
        }
        for d in engine.detectors
    ]


def test_a_detector_that_refuses_leaves_every_detector_as_it_was() -> None:
    from appliance.config import from_dict

    engine, specs, cfg = _staged_rig()
    before = _state(engine)
    assert before[0]["ports"] == 10 and before[1]["min_length"] == 8 and before[2]["level"] == 1
    new = from_dict(
        {
            "inline": {"home_nets": ["198.18.0.0/24"]},
            "detect": {
                "portscan": {"ports": 50},
                "dga": {"min_length": 12},
                "refuser": {"level": 5},
            },
        },
        detectors=specs,
    )
    Refuser.refuse = True  # the third detector refuses after the first two took theirs
    with pytest.raises(ConfigError) as e:
        engine.configure(new)
    assert e.value.key == "detect.refuser.level"
    assert _state(engine) == before
    assert engine.config is cfg
    Refuser.refuse = False
    engine.configure(new)  # and all of it lands when everyone accepts
    after = _state(engine)
    assert (after[0]["ports"], after[1]["min_length"], after[2]["level"]) == (50, 12, 5)


def test_options_that_fail_a_check_change_no_detector() -> None:
    """A config that bypassed the loader (built in code) is checked before anything changes."""
    engine, _specs, cfg = _staged_rig()
    before = _state(engine)
    bad = dataclasses.replace(
        cfg,
        detect={
            **cfg.detect,
            "dga": {**cfg.detect["dga"], "min_length": 12},
            "portscan": {**cfg.detect["portscan"], "probe_timeout": 600.0},
        },
    )
    with pytest.raises(ConfigError, match="detect.portscan.probe_timeout"):
        engine.configure(bad)
    assert _state(engine) == before


def test_a_misspelt_hook_is_an_error_when_the_detector_loads() -> None:
    from appliance.detect.base import check_hooks, spec_of
    from appliance.detect.intel import IntelStore

    class Typo(Detector):
        name = "typo"

        def dnss(self, ctx, pkt, flow, msg) -> None: ...

    class WrongArgs(Detector):
        name = "wrongargs"

        def tick(self, ctx) -> None: ...

    with pytest.raises(TypeError, match="dnss.*not a hook"):
        check_hooks(Typo)
    with pytest.raises(TypeError, match="dnss"):
        spec_of(Typo)
    with pytest.raises(TypeError, match="hook tick takes"):
        Engine(make_config(), IntelStore(), lambda a: None, detectors=[WrongArgs()])


def test_the_engine_stamps_each_alert_with_its_detector_and_time() -> None:
    seen: list = []

    class Reporter(Detector):
        name = "reporter"
        signatures = (Signature(8199997, "Test: seen", "Test", 3),)

        def packet(self, ctx, pkt, flow, from_client) -> None:
            ctx.alert(self.signatures[0], pkt=pkt)
            ctx.alert(self.signatures[0], pkt=pkt, at=1_700_000_000.0)

    h = Harness()
    h.engine.sink = seen.append
    h.engine.detectors.append(Reporter())
    h.engine.configure(h.config, first=True)
    h.feed([tcp(flags="S")], start=1_800_000_000.0)
    assert [(a.detector, a.timestamp) for a in seen] == [
        ("reporter", 1_800_000_000.0),
        ("reporter", 1_700_000_000.0),
    ]


def test_packet_dispatch_as_data_calls_no_hook_that_would_act() -> None:
    """The precomputed packet-hook lists (first packet of a side / later, by server port) give
    the alerts of calling every packet hook on every packet, on office traffic with attacks
    for each detector that declares interest (intel, beacon, bruteforce, exposure, portscan)."""
    from bench.mix import office_mix_timed
    from tests.helpers import at

    t0 = 1_800_000_000.0
    atk, pc = "198.51.100.23", "198.18.0.12"
    pkts: list = []
    for i in range(30):  # brute force on SSH, exposure of RDP, a port scan with refusals
        ts = t0 + i * 2.0
        for dport, sport in ((22, 40000 + i), (3389, 41000 + i)):
            c, s = IP(src=atk, dst=pc), IP(src=pc, dst=atk)
            pkts += [
                at(c / TCP(sport=sport, dport=dport, flags="S"), ts),
                at(s / TCP(sport=dport, dport=sport, flags="SA"), ts + 0.001),
                at(c / TCP(sport=sport, dport=dport, flags="A"), ts + 0.002),
                at(s / TCP(sport=dport, dport=sport, flags="PA") / b"SSH-2.0-x\r\n", ts + 0.01),
                at(s / TCP(sport=dport, dport=sport, flags="FA"), ts + 0.5),
            ]
        for port in range(1000 + i * 20, 1020 + i * 20):
            pkts.append(at(IP(src=atk, dst=pc) / TCP(sport=50000, dport=port, flags="S"), ts))
            pkts.append(at(IP(src=pc, dst=atk) / TCP(sport=port, dport=50000, flags="RA"), ts))
    for i in range(40):  # a beacon: the same call every 60 s
        pkts.append(at(IP(src=pc, dst=EVIL) / TCP(sport=30000 + i, dport=8080, flags="S"),
                       t0 + i * 60.0))  # fmt: skip
    raws = sorted(
        [(float(p.time), bytes(p)) for p in pkts] + office_mix_timed(4000, seed=5),
        key=lambda x: x[0],
    )

    def alerts(everything: bool) -> list[tuple]:
        h = Harness()
        eng = h.engine
        if everything:  # the reference: every packet hook on every packet
            eng._packet_first = eng._packet_later = eng._hooks["packet"]
            eng._packet_first_port = eng._packet_later_port = {}
            eng._packet_passed_first = eng._packet_passed_later = eng._hooks["packet"]
            eng._packet_passed_first_port = eng._packet_passed_later_port = {}
        else:
            assert len(eng._packet_later) < len(eng._hooks["packet"])
            assert len(eng._packet_passed_later) < len(eng._packet_later)
        for ts, raw in raws:
            pkt = decode_ip(raw, ts, h.stats)
            if pkt is not None:
                eng.process(pkt)
        h.finish()
        assert not eng.stats.hook_errors
        return [
            (a["watchpost"]["detector"], a["alert"]["signature_id"], a["src_ip"], a["dest_ip"],
             a.get("src_port"), a.get("dest_port"), a["watchpost"]["count"], a["timestamp"])
            for a in h.alerts
        ]  # fmt: skip

    got, want = alerts(False), alerts(True)
    assert {a[0] for a in want} >= {"bruteforce", "exposure", "portscan", "beacon"}
    assert got == want
