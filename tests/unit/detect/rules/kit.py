"""Rules through the real engine: a rule text, scapy packets in, the rule alerts out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP

from tests.helpers import Harness, at, make_config

PC1, PC2 = "198.18.0.11", "198.18.0.12"  # office
WEB, EVIL = "203.0.113.10", "203.0.113.66"  # internet
ATK = "198.51.100.23"
T0 = 1_800_000_000.0


def rules_config(path: Path, mode: str = "monitor", **rules_opts: Any) -> Any:
    return make_config(
        inline={"mode": mode}, detect={"rules": {"paths": [str(path)], **rules_opts}}
    )


class Rules:
    """A rule file in `tmp` and a fresh engine per `run`."""

    def __init__(self, tmp: Path, text: str, mode: str = "monitor", **opts: Any) -> None:
        self.path = tmp / f"t{abs(hash(text)) % 10**8}.rules"
        self.path.write_text(text)
        self.config = rules_config(self.path, mode, **opts)
        self.harness: Harness | None = None

    def run(self, packets: list) -> list[dict[str, Any]]:
        """All rule alerts (EVE) for `packets`, after every window closed."""
        h = Harness(self.config)
        h.verdicts = h.feed(packets)
        h.finish()
        assert not h.engine.stats.hook_errors, h.engine.stats.hook_errors
        self.harness = h
        return h.by_detector("rules")

    def sids(self, packets: list) -> list[int]:
        return sorted({a["alert"]["signature_id"] for a in self.run(packets)})

    def counts(self, packets: list) -> dict[int, int]:
        out: dict[int, int] = {}
        for a in self.run(packets):
            sid = a["alert"]["signature_id"]
            out[sid] = out.get(sid, 0) + a["watchpost"]["count"]
        return out


def tcp_flow(
    payload: bytes = b"",
    *,
    src: str = PC1,
    dst: str = WEB,
    sport: int = 40000,
    dport: int = 7000,
    ts: float = T0,
    banner: bytes = b"",
    handshake: bool = True,
) -> list:
    """Handshake, then an optional server banner, then the client's payload (one segment)."""
    c, s = IP(src=src, dst=dst), IP(src=dst, dst=src)
    pkts = []
    if handshake:
        pkts += [
            at(c / TCP(sport=sport, dport=dport, flags="S", seq=100), ts),
            at(s / TCP(sport=dport, dport=sport, flags="SA", seq=500, ack=101), ts + 0.001),
            at(c / TCP(sport=sport, dport=dport, flags="A", seq=101, ack=501), ts + 0.002),
        ]
    if banner:
        pkts.append(
            at(s / TCP(sport=dport, dport=sport, flags="PA", seq=501, ack=101) / banner, ts + 0.003)
        )
    if payload:
        pkts.append(
            at(
                c / TCP(sport=sport, dport=dport, flags="PA", seq=101, ack=501) / payload,
                ts + 0.004,
            )
        )
    return pkts


def http_request(
    target: str = "/",
    *,
    method: str = "GET",
    host: str | None = "www.example.com",
    ua: str | None = "Mozilla/5.0",
    headers: tuple[str, ...] = (),
    **kw: Any,
) -> list:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    if ua is not None:
        lines.append(f"User-Agent: {ua}")
    lines += list(headers)
    kw.setdefault("dport", 80)
    return tcp_flow(("\r\n".join(lines) + "\r\n\r\n").encode(), **kw)


def dns_query(name: str, *, src: str = PC1, sport: int = 40053, ts: float = T0) -> list:
    return [
        at(
            IP(src=src, dst="203.0.113.53")
            / UDP(sport=sport, dport=53)
            / DNS(id=7, rd=1, qd=DNSQR(qname=name, qtype="A")),
            ts,
        )
    ]


def syn(src: str = ATK, dst: str = PC2, dport: int = 22, sport: int = 50000, ts: float = T0,
        flags: str = "S") -> list:  # fmt: skip
    return [at(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags), ts)]


def udp(payload: bytes, dport: int, src: str = PC1, dst: str = WEB, ts: float = T0) -> list:
    return [at(IP(src=src, dst=dst) / UDP(sport=41000, dport=dport) / payload, ts)]
