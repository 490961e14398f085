"""Builders for dissector test inputs: TLS ClientHellos from parts, RFC 9001 vectors, pcaps.

The hello builder writes the wire format from lists of values so tests can state exactly what a
hello holds (GREASE, odd ALPNs, many ciphers) and compare fingerprints with the JA4 spec.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap


def u16s(values: Iterable[int]) -> bytes:
    values = list(values)
    return struct.pack(f"!{len(values)}H", *values)


def ext(etype: int, data: bytes) -> bytes:
    return struct.pack("!HH", etype, len(data)) + data


def ext_sni(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    entry = b"\x00" + struct.pack("!H", len(raw)) + raw
    return ext(0x0000, struct.pack("!H", len(entry)) + entry)


def ext_alpn(protocols: Iterable[bytes]) -> bytes:
    body = b"".join(bytes((len(p),)) + p for p in protocols)
    return ext(0x0010, struct.pack("!H", len(body)) + body)


def ext_list16(etype: int, values: Iterable[int]) -> bytes:
    """An extension whose data is a 2-byte length and u16 values (groups, signature algs)."""
    body = u16s(values)
    return ext(etype, struct.pack("!H", len(body)) + body)


def ext_versions(values: Iterable[int]) -> bytes:
    body = u16s(values)
    return ext(0x002B, bytes((len(body),)) + body)


def ext_point_formats(values: Iterable[int]) -> bytes:
    body = bytes(values)
    return ext(0x000B, bytes((len(body),)) + body)


def client_hello(
    ciphers: Iterable[int],
    extensions: Iterable[bytes] | None,
    version: int = 0x0303,
    session_id: bytes = b"\x11" * 32,
) -> bytes:
    """A ClientHello handshake message (no record layer)."""
    body = struct.pack("!H", version) + b"\x5a" * 32
    body += bytes((len(session_id),)) + session_id
    cs = u16s(ciphers)
    body += struct.pack("!H", len(cs)) + cs + b"\x01\x00"
    if extensions is not None:
        exts = b"".join(extensions)
        body += struct.pack("!H", len(exts)) + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(handshake: bytes, sizes: Iterable[int] | None = None) -> bytes:
    """`handshake` in TLS handshake records, split at the given fragment sizes."""
    out = b""
    rest = handshake
    for size in [*(sizes or []), len(handshake)]:
        frag, rest = rest[:size], rest[size:]
        if frag:
            out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
    return out


def default_extensions(sni: str | None = "www.example.com", alpn=(b"h2", b"http/1.1")):
    """A TLS 1.3-style extension list, as browsers send (without GREASE)."""
    exts = []
    if sni is not None:
        exts.append(ext_sni(sni))
    exts += [
        ext_list16(0x000A, [0x001D, 0x0017, 0x0018]),
        ext_point_formats([0]),
        ext_list16(0x000D, [0x0403, 0x0804, 0x0401]),
    ]
    if alpn is not None:
        exts.append(ext_alpn(alpn))
    exts += [ext_versions([0x0304, 0x0303]), ext(0x0033, b"\x00\x00"), ext(0x002D, b"\x01\x01")]
    return exts


def is_grease(v: int) -> bool:
    return v & 0x0F0F == 0x0A0A and v >> 8 == v & 0xFF


def ja4_reference(info: dict[str, Any], quic: bool = False) -> str:
    """JA4 computed from tshark's dissection, written from the spec independently of the
    dissector (strings throughout, as the spec describes it)."""
    ciphers = [f"{c:04x}" for c in info["ciphers"] if not is_grease(c)]
    exts = [f"{e:04x}" for e in info["extensions"] if not is_grease(e)]
    versions = [v for v in info["supported_versions"] if not is_grease(v)]
    version = max(versions) if versions else info["version"]
    ver = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}.get(version, "00")
    alpn = info["alpn"][0] if info["alpn"] else b""
    if not alpn:
        alpn_chars = "00"
    elif all(chr(x).isascii() and chr(x).isalnum() for x in (alpn[0], alpn[-1])):
        alpn_chars = chr(alpn[0]) + chr(alpn[-1])
    else:
        alpn_chars = alpn.hex()[0] + alpn.hex()[-1]
    a = "{}{}{}{:02d}{:02d}{}".format(
        "q" if quic else "t",
        ver,
        "d" if "0000" in exts else "i",
        min(len(ciphers), 99),
        min(len(exts), 99),
        alpn_chars,
    )
    b = hashlib.sha256(",".join(sorted(ciphers)).encode()).hexdigest()[:12] if ciphers else "0" * 12
    kept = sorted(e for e in exts if e not in ("0000", "0010"))
    sigs = [f"{s:04x}" for s in info["sig_algs"] if not is_grease(s)]
    text = ",".join(kept) + ("_" + ",".join(sigs) if sigs else "")
    c = hashlib.sha256(text.encode()).hexdigest()[:12] if kept else "0" * 12
    return f"{a}_{b}_{c}"


# -- RFC 9001 Appendix A (client Initial) -------------------------------------------------------

RFC_DCID = bytes.fromhex("8394c8f03e515708")
RFC_CLIENT_KEY = bytes.fromhex("1f369613dd76d5467730efcbe3b1a22d")
RFC_CLIENT_IV = bytes.fromhex("fa044b2f42a3fd3b46fb255c")
RFC_CLIENT_HP = bytes.fromhex("9f50449e04a0e810283a1e9933adedd2")
# The unprotected payload of A.2: a CRYPTO frame with the ClientHello, then PADDING to 1162.
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
RFC_PAYLOAD = RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
RFC_PROTECTED = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
RFC_HELLO = RFC_CRYPTO_FRAME[4:]  # the ClientHello message inside the CRYPTO frame


def crypto_frame(offset: int, data: bytes) -> bytes:
    from appliance.detect.dissect.quic import _encode_varint

    return b"\x06" + _encode_varint(offset) + _encode_varint(len(data)) + data


# -- pcaps --------------------------------------------------------------------------------------


def client_payloads(pcap: Path, dport: int) -> dict[int, bytes]:
    """frame number → payload of every TCP or UDP packet with a payload sent to `dport`."""
    out = {}
    for i, pkt in enumerate(rdpcap(str(pcap)), start=1):
        for proto in (TCP, UDP):
            if proto in pkt and pkt[proto].dport == dport:
                payload = bytes(pkt[proto].payload)  # raw bytes, whatever scapy dissected
                if payload:
                    out[i] = payload
    return out


def write_udp_pcap(path: Path, payloads: Iterable[bytes], dport: int, sport: int = 50000) -> Path:
    """Payloads as UDP datagrams 198.18.0.11 → 203.0.113.10:dport, one frame each."""
    pkts = [
        Ether() / IP(src="198.18.0.11", dst="203.0.113.10") / UDP(sport=sport, dport=dport) / p
        for p in payloads
    ]
    wrpcap(str(path), pkts)
    return path


def write_tcp_pcap(path: Path, payloads: Iterable[bytes], dport: int) -> Path:
    """Payloads as TCP segments (one connection per payload, no handshake: tshark dissects
    TLS and HTTP on a first segment anyway)."""
    pkts = [
        Ether()
        / IP(src="198.18.0.11", dst="203.0.113.10")
        / TCP(sport=40000 + i, dport=dport, flags="PA", seq=1000)
        / p
        for i, p in enumerate(payloads)
    ]
    wrpcap(str(path), pkts)
    return path
