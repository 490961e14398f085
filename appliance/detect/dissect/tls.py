"""TLS ClientHello: SNI, ALPN, supported versions, JA3 and JA4.

Read from the first payload packet of a TCP flow (record layer) or from the CRYPTO frames of a
decrypted QUIC Initial (`parse_handshake`, no record layer). A hello cut short by the end of the
segment (a large post-quantum key share spills into a second TCP segment or QUIC packet) still
yields what was read, with ``partial`` set and no fingerprints: a JA3/JA4 over half the
extensions would be a wrong fingerprint, not a shorter one.

JA3: https://github.com/salesforce/ja3 (GREASE values, RFC 8701, left out of every list).
JA4: the FoxIO JA4 TLS client fingerprint, technical_details/JA4.md in FoxIO-LLC/ja4.
"""

from __future__ import annotations

import functools
import hashlib
import struct

from appliance.detect.dissect.dns import host_text
from appliance.detect.records import TlsHello

MAX_RECORDS = 8  # TLS records gathered for one ClientHello
MAX_HELLO = 65536  # larger handshake messages are not ClientHellos anyone sends
MAX_EXTENSIONS = 128
MAX_LIST = 256  # entries read from one list inside an extension (ALPN, groups, ...)

GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))

EXT_SNI = 0x0000
EXT_GROUPS = 0x000A
EXT_POINT_FORMATS = 0x000B
EXT_SIG_ALGS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B

JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
_WANTED = frozenset(
    (EXT_SNI, EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIG_ALGS, EXT_ALPN, EXT_SUPPORTED_VERSIONS)
)
_NO_HASH = "000000000000"

_U16 = struct.Struct("!H")
_EXT = struct.Struct("!HH")


def parse_client_hello(data: bytes) -> TlsHello | None:
    """The ClientHello in a TCP payload that starts with a TLS handshake record, or None."""
    msg = _records(data)
    if msg is None:
        return None
    try:
        return parse_handshake(msg)
    except (ValueError, IndexError, struct.error):
        return None


def _records(data: bytes) -> bytes | None:
    """The handshake bytes from consecutive handshake records (a hello may be fragmented over
    several records), up to the end of the first message or of `data`."""
    n = len(data)
    if n < 9 or data[0] != 0x16 or data[1] != 3 or data[2] > 4:
        return None
    parts: list[bytes] = []
    have = 0
    need = -1
    off = 0
    for _ in range(MAX_RECORDS):
        if off + 5 > n or data[off] != 0x16 or data[off + 1] != 3:
            break
        (rlen,) = _U16.unpack_from(data, off + 3)
        if rlen == 0 or rlen > 18432:  # 2^14 plus the allowed expansion
            return None if off == 0 else b"".join(parts)
        frag = data[off + 5 : off + 5 + rlen]
        parts.append(frag)
        have += len(frag)
        off += 5 + rlen
        if need < 0 and have >= 4:
            first = parts[0] if len(parts[0]) >= 4 else b"".join(parts)
            need = 4 + ((first[1] << 16) | (first[2] << 8) | first[3])
        if len(frag) < rlen or (need >= 0 and have >= need):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_handshake(msg: bytes, quic: bool = False) -> TlsHello | None:
    """A ClientHello handshake message (type, 3-byte length, body), possibly cut short.

    Raises ValueError/IndexError/struct.error on malformed input (callers catch them).
    """
    if len(msg) < 4 or msg[0] != 1:
        return None
    hlen = (msg[1] << 16) | (msg[2] << 8) | msg[3]
    if hlen < 38 or hlen > MAX_HELLO:
        return None
    body = msg[4 : 4 + hlen]
    n = len(body)
    partial = n < hlen
    (version,) = _U16.unpack_from(body)
    if body[0] != 3 and version not in JA4_VERSIONS:
        return None
    p = 34
    sid = body[p]
    if sid > 32:
        return None
    p += 1 + sid
    (clen,) = _U16.unpack_from(body, p)
    p += 2
    if clen == 0 or clen & 1 or p + clen > n:
        return None  # no cipher list, odd length, or cut inside it: nothing worth keeping
    ciphers = struct.unpack_from(f"!{clen >> 1}H", body, p)
    p += clen
    comp = body[p]
    p += 1 + comp
    exts: list[int] = []
    spans: dict[int, tuple[int, int]] = {}  # wanted extension → (start, end) of its data
    if p > n:
        if not partial:
            return None
    elif p < n or partial:
        if p + 2 > n:
            ext_end = n
        else:
            (elen,) = _U16.unpack_from(body, p)
            p += 2
            ext_end = p + elen
            if ext_end > n:
                if not partial:
                    return None
                ext_end = n
            elif ext_end < n and not partial:
                return None  # trailing bytes after the extensions
        unpack = _EXT.unpack_from
        for _ in range(MAX_EXTENSIONS + 1):
            if p + 4 > ext_end:
                if p != ext_end and not partial:
                    return None
                break
            etype, elen = unpack(body, p)
            p += 4
            end = p + elen
            if end > ext_end:
                if not partial:
                    return None
                break  # this extension continues in the next segment
            if etype not in GREASE:
                exts.append(etype)
                if etype in _WANTED and etype not in spans:
                    spans[etype] = (p, end)
            p = end
        else:
            if not partial:
                return None  # more extensions than any client sends
    sni = _sni(body, *spans[EXT_SNI]) if EXT_SNI in spans else ""
    alpn = _alpn(body, *spans[EXT_ALPN]) if EXT_ALPN in spans else []
    versions = _u8_list16(body, spans.get(EXT_SUPPORTED_VERSIONS))
    alpn_text = [a.decode("ascii", "backslashreplace") for a in alpn]
    hello = TlsHello(
        version=version,
        sni=sni,
        alpn=alpn_text,
        supported_versions=versions,
        quic=quic,
        partial=partial,
    )
    if partial:
        return hello
    groups = _u16_list16(body, spans.get(EXT_GROUPS))
    sig_algs = _u16_list16(body, spans.get(EXT_SIG_ALGS))
    span = spans.get(EXT_POINT_FORMATS)
    formats: list[int] = []
    if span is not None and span[1] > span[0]:
        formats = list(body[span[0] + 1 : min(span[1], span[0] + 1 + body[span[0]])][:MAX_LIST])
    ciphers_ng = [c for c in ciphers if c not in GREASE]
    # JA3/JA4 are built when someone reads them (TlsHello.ja3 ...), from these values.
    hello.fingerprint = functools.partial(
        fingerprints, quic, version, versions, EXT_SNI in spans, ciphers_ng, exts, alpn,
        sig_algs, groups, formats,
    )  # fmt: skip
    return hello


def fingerprints(
    quic: bool,
    version: int,
    versions: list[int],
    has_sni: bool,
    ciphers_ng: list[int],
    exts: list[int],
    alpn: list[bytes],
    sig_algs: list[int],
    groups: list[int],
    formats: list[int],
) -> tuple[str, str, str]:
    """(JA3 string, its MD5, JA4) of a whole hello's values, GREASE already removed."""
    ja3 = ",".join(
        (
            str(version),
            _dec_list(ciphers_ng),
            _dec_list(exts),
            _dec_list(groups),
            _dec_list(formats),
        )
    )
    ja3_hash = hashlib.md5(ja3.encode(), usedforsecurity=False).hexdigest()
    return ja3, ja3_hash, ja4(quic, version, versions, has_sni, ciphers_ng, exts, alpn, sig_algs)


def ja4(
    quic: bool,
    version: int,
    supported_versions: list[int],
    has_sni: bool,
    ciphers: list[int],
    extensions: list[int],
    alpn: list[bytes],
    sig_algs: list[int],
) -> str:
    """The JA4 fingerprint from a hello's values, GREASE already removed.

    ALPN characters follow the specification text (JA4.md): a first or last byte that is not
    ASCII alphanumeric makes both characters come from the hex of the first ALPN value, as
    s2n-tls does too. (FoxIO's own tools have printed such bytes differently over time; only
    odd ALPN values are affected, never h2, h3, http/1.1.)
    """
    ver = JA4_VERSIONS.get(max(supported_versions) if supported_versions else version, "00")
    first = alpn[0] if alpn else b""
    if not first:
        alpn_chars = "00"
    elif _alnum(first[0]) and _alnum(first[-1]):
        alpn_chars = chr(first[0]) + chr(first[-1])
    else:
        h = first.hex()
        alpn_chars = h[0] + h[-1]
    a = (
        f"{'q' if quic else 't'}{ver}{'d' if has_sni else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{alpn_chars}"
    )
    b = _hash12(_hex_list(sorted(ciphers))) if ciphers else _NO_HASH
    kept = sorted([e for e in extensions if e != EXT_SNI and e != EXT_ALPN])
    if kept:
        text = _hex_list(kept)
        if sig_algs:
            text += "_" + _hex_list(sig_algs)
        c = _hash12(text)
    else:
        c = _NO_HASH
    return f"{a}_{b}_{c}"


def _dec_list(values: list[int]) -> str:
    """'4865-4866-...': JA3's decimal lists (one C-level format instead of str() per value)."""
    return ("%d-" * len(values))[:-1] % tuple(values)


def _hex_list(values: list[int]) -> str:
    """'0005,000a,...': 4-digit lower-case hex, comma separated (packed and hexed in C)."""
    return struct.pack(f"!{len(values)}H", *values).hex(",", 2)


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _alnum(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def _u16_list(body: bytes, start: int, end: int) -> list[int]:
    """Big-endian u16 values in body[start:end], GREASE left out, at most MAX_LIST."""
    count = min((end - start) >> 1, MAX_LIST)
    if count <= 0:
        return []
    return [v for v in struct.unpack_from(f"!{count}H", body, start) if v not in GREASE]


def _u16_list16(body: bytes, span: tuple[int, int] | None) -> list[int]:
    """The u16 list of an extension whose data is a 2-byte length and the values."""
    if span is None or span[1] - span[0] < 2:
        return []
    start = span[0] + 2
    return _u16_list(body, start, min(span[1], start + _U16.unpack_from(body, span[0])[0]))


def _u8_list16(body: bytes, span: tuple[int, int] | None) -> list[int]:
    """The u16 list of an extension whose data is a 1-byte length and the values."""
    if span is None or span[1] <= span[0]:
        return []
    start = span[0] + 1
    return _u16_list(body, start, min(span[1], start + body[span[0]]))


def _sni(body: bytes, p: int, end: int) -> str:
    """The first host_name in a server_name extension; "" if there is none."""
    if p + 2 > end:
        return ""
    list_end = min(end, p + 2 + _U16.unpack_from(body, p)[0])
    p += 2
    for _ in range(MAX_LIST):
        if p + 3 > list_end:
            break
        kind = body[p]
        (ln,) = _U16.unpack_from(body, p + 1)
        p += 3
        if p + ln > list_end:
            break
        if kind == 0:
            return host_text(body[p : p + ln])
        p += ln
    return ""


def _alpn(body: bytes, p: int, end: int) -> list[bytes]:
    """The protocol names of an ALPN extension."""
    if p + 2 > end:
        return []
    list_end = min(end, p + 2 + _U16.unpack_from(body, p)[0])
    p += 2
    out: list[bytes] = []
    for _ in range(MAX_LIST):
        if p >= list_end:
            break
        ln = body[p]
        p += 1
        if p + ln > list_end:
            break
        out.append(body[p : p + ln])
        p += ln
    return out
