"""TLS ClientHello dissection: real openssl/curl hellos checked against tshark, JA4 against
the FoxIO specification's published example, GREASE, fragmentation and hellos cut short."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from appliance.detect.dissect import Dissectors
from appliance.detect.dissect.tls import parse_client_hello, parse_handshake
from tests.unit.detect.dissect.build import (
    client_hello,
    client_payloads,
    default_extensions,
    ext,
    ext_alpn,
    ext_list16,
    ext_point_formats,
    ext_sni,
    ext_versions,
    is_grease,
    ja4_reference,
    records,
    write_tcp_pcap,
)
from tests.unit.detect.dissect.capture import HANDSHAKES, tshark_fields, tshark_hellos

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

# The worked example of technical_details/JA4.md (FoxIO-LLC/ja4): 15 ciphers, 16 extensions
# (in wire order), 8 signature algorithms, ALPN h2, TLS 1.3, SNI present.
SPEC_CIPHERS = [
    0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9,
    0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
]  # fmt: skip
SPEC_EXTENSIONS = [
    0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D,
    0x0005, 0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015,
]  # fmt: skip
SPEC_SIG_ALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
SPEC_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
SPEC_JA4_NO_SIGALGS_C = "6d807ffa2a79"  # the spec's hash of the same extensions, no sig algs


def _grease(i: int) -> int:
    return 0x0A0A + 0x1010 * (i % 16)


def spec_hello(grease: bool = False, sig_algs: list[int] | None = SPEC_SIG_ALGS) -> bytes:
    """A ClientHello with the spec example's values (optionally with GREASE sprinkled in)."""
    exts = []
    for etype in SPEC_EXTENSIONS:
        if etype == 0x0000:
            exts.append(ext_sni("www.example.com"))
        elif etype == 0x0010:
            exts.append(ext_alpn([b"h2", b"http/1.1"]))
        elif etype == 0x000D:
            if sig_algs is not None:
                exts.append(ext_list16(0x000D, ([_grease(3)] if grease else []) + sig_algs))
            else:
                exts.append(ext(0x000D, b"\x00\x00"))
        elif etype == 0x002B:
            exts.append(ext_versions(([_grease(5)] if grease else []) + [0x0304, 0x0303]))
        elif etype == 0x000A:
            exts.append(ext_list16(0x000A, ([_grease(6)] if grease else []) + [0x001D, 0x0017]))
        elif etype == 0x000B:
            exts.append(ext_point_formats([0]))
        else:
            exts.append(ext(etype, b""))
    ciphers = list(SPEC_CIPHERS)
    if grease:
        ciphers.insert(0, _grease(0))
        exts.insert(0, ext(_grease(1), b""))
        exts.append(ext(_grease(2), b"\x00"))
    return client_hello(ciphers, exts)


# -- the JA4 specification ---------------------------------------------------------------------


def test_ja4_matches_the_spec_example() -> None:
    hello = parse_client_hello(records(spec_hello()))
    assert hello is not None
    assert hello.ja4 == SPEC_JA4
    assert hello.sni == "www.example.com"
    assert hello.alpn == ["h2", "http/1.1"]


def test_ja4_and_ja3_ignore_grease_everywhere() -> None:
    plain = parse_client_hello(records(spec_hello()))
    greased = parse_client_hello(records(spec_hello(grease=True)))
    assert plain is not None and greased is not None
    assert greased.ja4 == SPEC_JA4
    assert greased.ja3 == plain.ja3 and greased.ja3_hash == plain.ja3_hash
    assert greased.supported_versions == [0x0304, 0x0303]
    assert "2570" not in greased.ja3  # 0x0a0a in decimal


def test_ja4_without_signature_algorithms_ends_without_underscore() -> None:
    hello = parse_client_hello(records(spec_hello(sig_algs=None)))
    assert hello is not None
    assert hello.ja4.split("_")[2] == SPEC_JA4_NO_SIGALGS_C


@pytest.mark.parametrize(
    ("alpn", "chars"),
    [
        ([b"h2"], "h2"),
        ([b"http/1.1", b"h2"], "h1"),
        ([b"h"], "hh"),  # a single character is both first and last
        ([b""], "00"),
        (None, "00"),
        ([b"\xab"], "ab"),  # the spec's non-alphanumeric examples: hex first and last
        ([b"\xab\xcd"], "ad"),
        ([b"\x30\xab"], "3b"),
        ([b"\x30\x31\xab\xcd"], "3d"),
        ([b"\x30\xab\xcd\x31"], "01"),
    ],
)
def test_ja4_alpn_characters(alpn: list[bytes] | None, chars: str) -> None:
    exts = default_extensions(alpn=None)
    if alpn is not None:
        exts.append(ext_alpn(alpn))
    hello = parse_client_hello(records(client_hello([0x1301], exts)))
    assert hello is not None
    assert hello.ja4[8:10] == chars


def test_ja4_no_sni_tls12_and_counts_capped_at_99() -> None:
    ciphers = list(range(0x0100, 0x0100 + 120))
    exts = [ext_point_formats([0]), ext_list16(0x000D, [0x0401])] + [
        ext(0x1000 + i, b"") for i in range(110)
    ]
    hello = parse_client_hello(records(client_hello(ciphers, exts)))
    assert hello is not None
    assert hello.ja4.startswith("t12i9999")  # no supported_versions: the hello's 0x0303
    assert hello.sni == ""


def test_empty_lists_hash_to_zeros() -> None:
    hello = parse_client_hello(records(client_hello([0x0A0A, 0x002F], None)))
    assert hello is not None
    assert hello.ja4 == "t12i010000_" + hashlib.sha256(b"002f").hexdigest()[:12] + "_000000000000"
    assert hello.ja3 == "771,47,,,"


# -- real clients against tshark ---------------------------------------------------------------


def _hello_payloads() -> dict[int, bytes]:
    """Client → :443 payloads that start a handshake record with a ClientHello."""
    return {
        f: p
        for f, p in client_payloads(HANDSHAKES, 443).items()
        if p[:2] == b"\x16\x03" and p[5] == 1
    }


@needs_tshark
def test_real_client_hellos_agree_with_tshark() -> None:
    payloads = _hello_payloads()
    fields = tshark_fields(
        HANDSHAKES,
        [
            "tls.handshake.extensions_server_name",
            "tls.handshake.ja3_full",
            "tls.handshake.ja3",
            "tls.handshake.extensions_alpn_str",
            "tls.handshake.extensions.supported_version",
        ],
        "tls.handshake.type == 1",
    )
    hellos = tshark_hellos(HANDSHAKES)
    assert len(hellos) == 4  # openssl x3 (TLS 1.3 + SNI, TLS 1.2 + ALPN, no SNI), curl --http2
    seen_sni = set()
    for frame, info in hellos.items():
        got = parse_client_hello(payloads[frame])
        assert got is not None, frame
        want = fields[frame]
        sni = want["tls.handshake.extensions_server_name"]
        assert got.sni == (sni[0].lower() if sni else "")
        seen_sni.add(got.sni)
        assert got.ja3 == want["tls.handshake.ja3_full"][0]
        assert got.ja3_hash == want["tls.handshake.ja3"][0]
        assert got.alpn == want["tls.handshake.extensions_alpn_str"]
        versions = [int(v, 16) for v in want["tls.handshake.extensions.supported_version"]]
        assert got.supported_versions == [v for v in versions if not is_grease(v)]
        assert got.ja4 == ja4_reference(info)
        assert not got.partial and not got.quic
    assert seen_sni == {"www.example.com", "api.example.org", "", "www.example.net"}


def test_real_client_hello_fingerprint_shapes() -> None:
    """What the fixture's clients are: TLS 1.3 and 1.2 openssl, curl with h2 first."""
    by_sni = {}
    for payload in _hello_payloads().values():
        hello = parse_client_hello(payload)
        assert hello is not None
        by_sni[hello.sni] = hello
    assert by_sni["www.example.com"].ja4.startswith("t13d")
    assert by_sni["api.example.org"].ja4.startswith("t12d")  # -tls1_2: no supported_versions
    assert by_sni["api.example.org"].ja4[8:10] == "h2"
    assert by_sni[""].ja4.startswith("t13i")
    assert by_sni["www.example.net"].ja4[8:10] == "h2"  # curl --http2
    assert by_sni["www.example.net"].eve()["tls"]["version"] == "TLS 1.3"


# JA4 of the fixture's hellos as an independent implementation computed them (ja4plus 1.4.0
# from PyPI, run once over tests/data/dissect/handshakes.pcap; not a test dependency).
INDEPENDENT_JA4 = {
    "www.example.com": "t13d311000_e8f1e7e78f70_1f22a2ca17c4",
    "api.example.org": "t12d2808h2_d943125447b4_e7e480e5a997",
    "": "t13i310900_e8f1e7e78f70_1f22a2ca17c4",
    "www.example.net": "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6",
}


def test_real_client_hellos_match_an_independent_ja4_implementation() -> None:
    got = {}
    for payload in _hello_payloads().values():
        hello = parse_client_hello(payload)
        assert hello is not None
        got[hello.sni] = hello.ja4
    assert got == INDEPENDENT_JA4


@needs_tshark
def test_greased_and_fragmented_hellos_agree_with_tshark(tmp_path: Path) -> None:
    """Hellos tshark has not seen from a real client: GREASE values, three records."""
    payloads = [records(spec_hello(grease=True)), records(spec_hello(), sizes=[40, 100])]
    pcap = write_tcp_pcap(tmp_path / "greased.pcap", payloads, 443)
    fields = tshark_fields(pcap, ["tls.handshake.ja3", "tls.handshake.extensions_server_name"])
    hellos = tshark_hellos(pcap)
    assert sorted(hellos) == [1, 2]
    for frame, payload in enumerate(payloads, start=1):
        got = parse_client_hello(payload)
        assert got is not None
        assert got.ja3_hash == fields[frame]["tls.handshake.ja3"][0]
        assert got.ja4 == ja4_reference(hellos[frame]) == SPEC_JA4


# -- fragmentation, truncation, malformed input --------------------------------------------------


def test_hello_fragmented_over_records_equals_whole() -> None:
    whole = parse_client_hello(records(spec_hello()))
    for sizes in ([1], [3, 4], [50, 50, 50], [10] * 7):
        assert parse_client_hello(records(spec_hello(), sizes=sizes)) == whole


def test_hello_split_over_two_segments_keeps_what_came_first() -> None:
    """A big hello in one record, cut by the end of the first TCP segment."""
    for payload in _hello_payloads().values():
        whole = parse_client_hello(payload)
        assert whole is not None
        sni_end = payload.lower().find(whole.sni.encode()) + len(whole.sni) if whole.sni else 0
        for cut in range(1, len(payload)):
            got = parse_client_hello(payload[:cut])
            if got is None:
                continue
            assert got.partial
            assert got.ja3 == got.ja3_hash == got.ja4 == ""
            assert got.version == whole.version
            if whole.sni and cut >= sni_end:  # the server_name extension is complete
                assert got.sni == whole.sni
        # From the end of the cipher list on, a partial record comes back.
        assert parse_client_hello(payload[: len(payload) - 1]) is not None


def test_split_hello_reports_sni_seen_before_the_cut() -> None:
    exts = [ext_sni("early.example.com"), ext(0x0033, b"\x00" * 1200), ext_versions([0x0304])]
    payload = records(client_hello([0x1301], exts))
    got = parse_client_hello(payload[:700])
    assert got is not None and got.partial and got.sni == "early.example.com"
    late = [ext(0x0033, b"\x00" * 1200), ext_sni("late.example.com")]
    got = parse_client_hello(records(client_hello([0x1301], late))[:700])
    assert got is not None and got.partial and got.sni == ""


def _with_trailing_byte(hello: bytes) -> bytes:
    """The hello with a byte after its extensions, inside its declared length."""
    return b"\x01" + (len(hello) - 3).to_bytes(3, "big") + hello[4:] + b"\x00"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x16",
        b"\x16\x03\x01\x00\x00",
        b"\x17\x03\x03\x00\x10" + bytes(16),  # application data
        b"\x16\x03\x03\x00\x04\x02\x00\x00\x00",  # a ServerHello type
        records(client_hello([], default_extensions())),  # no ciphers
        records(client_hello([0x1301], default_extensions(), session_id=b"\x00" * 40)),
        records(_with_trailing_byte(client_hello([0x1301], default_extensions()))),
    ],
)
def test_not_a_client_hello(payload: bytes) -> None:
    assert parse_client_hello(payload) is None


def test_extension_overrunning_its_block_is_malformed() -> None:
    hello = bytearray(client_hello([0x1301], [ext_sni("a.example"), ext(0x0023, b"")]))
    hello[-1] = 5  # the last extension claims 5 bytes the (complete) hello does not have
    assert parse_handshake(bytes(hello)) is None


def test_hostile_sni_is_escaped() -> None:
    exts = [ext_sni(b"Evil\x00.Example.COM."), ext_versions([0x0304])]
    hello = parse_client_hello(records(client_hello([0x1301], exts)))
    assert hello is not None
    assert hello.sni == "evil\\000.example.com"


def test_dissectors_counts_tls() -> None:
    d = Dissectors()
    assert d.tls(records(spec_hello())) is not None
    assert d.tls(b"\x16\x03\x01\x00\x05hello") is None
    assert d.parsed["tls"] == 1 and d.malformed["tls"] == 1


def test_fingerprints_are_built_on_first_use() -> None:
    """JA3/JA4 wait until read; then they are what the dissector's values give, once."""
    from appliance.detect.dissect.tls import parse_client_hello
    from appliance.detect.records import TlsHello
    from bench.engine import tls_client_hello

    hello = parse_client_hello(tls_client_hello("www.example.com"))
    assert hello is not None and hello.fingerprints is None and hello.fingerprint is not None
    ja3, ja3_hash, ja4 = hello.ja3, hello.ja3_hash, hello.ja4
    assert ja3 == (
        "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,"
        "0-10-11-13-16-43-51,29-23-24,0"
    )
    assert ja3_hash == hashlib.md5(ja3.encode(), usedforsecurity=False).hexdigest()
    assert ja4.startswith("t13d1507h2_")
    assert hello.fingerprints == (ja3, ja3_hash, ja4) and hello.fingerprint is None
    given = TlsHello(0x0303, "a.example", fingerprints=("x", "y", "z"))
    assert (given.ja3, given.ja3_hash, given.ja4) == ("x", "y", "z")
    assert TlsHello(0x0303, "a.example").ja4 == ""
    assert parse_client_hello(tls_client_hello("www.example.com")) == hello
