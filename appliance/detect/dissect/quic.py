"""QUIC Initial packets from the client, decrypted with the public initial keys to read the
ClientHello (RFC 9001 section 5; QUIC v2, RFC 9369, differs only in salt, labels and type bits).

Initial packets are protected with keys derived from the client's Destination Connection ID and
a published salt, so anyone on the path can read them: that is what lets HTTP/3 be seen at all.
Steps: derive the client initial secret (HKDF), remove header protection (AES-ECB mask over a
sample of the ciphertext), decrypt the payload (AES-128-GCM, header as associated data), gather
the CRYPTO frames in offset order, and parse the ClientHello with the TLS code path.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from appliance.detect.dissect.tls import parse_handshake
from appliance.detect.records import TlsHello

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF

# version → (initial salt, key label, iv label, hp label, long-header type of Initial)
_VERSIONS = {
    QUIC_V1: (
        bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
        b"quic key",
        b"quic iv",
        b"quic hp",
        0,
    ),
    QUIC_V2: (
        bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
        b"quicv2 key",
        b"quicv2 iv",
        b"quicv2 hp",
        1,
    ),
}

MAX_DATAGRAMS = 4  # Initials gathered for one hello by `parse_initials`
MAX_FRAMES = 512  # frames read from one packet (Chrome scatters its hello over dozens)
MAX_ACK_RANGES = 64
MAX_CRYPTO = 65536  # CRYPTO stream bytes gathered (a ClientHello is a few kB)

_U32 = struct.Struct("!I")


class CryptoBuffer:
    """CRYPTO frame data placed by offset; `contiguous()` is the stream from 0 up to the first
    gap. Frames may arrive out of order and overlap (retransmissions)."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []

    def add(self, offset: int, data: bytes) -> None:
        if data and offset + len(data) <= MAX_CRYPTO:
            self.chunks.append((offset, data))

    def contiguous(self) -> bytes:
        out = bytearray()
        for off, data in sorted(self.chunks, key=lambda c: c[0]):
            have = len(out)
            if off > have:
                break
            if off + len(data) > have:
                out += data[have - off :]
        return bytes(out)


def expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 section 7.1)."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def client_initial_keys(dcid: bytes, version: int = QUIC_V1) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) protecting the client's Initial packets for this Destination CID."""
    salt, key_label, iv_label, hp_label, _ = _VERSIONS[version]
    h = hmac.HMAC(salt, hashes.SHA256())  # HKDF-Extract(salt, dcid)
    h.update(dcid)
    client = expand_label(h.finalize(), b"client in", 32)
    return (
        expand_label(client, key_label, 16),
        expand_label(client, iv_label, 12),
        expand_label(client, hp_label, 16),
    )


def _varint(data: bytes, off: int) -> tuple[int, int]:
    first = data[off]
    kind = first >> 6
    if kind == 0:
        return first, off + 1
    if kind == 1:
        return ((first & 0x3F) << 8) | data[off + 1], off + 2
    size = 4 if kind == 2 else 8
    end = off + size
    if end > len(data):
        raise IndexError("varint runs off the end")
    return int.from_bytes(data[off:end], "big") & ((1 << (size * 8 - 2)) - 1), end


def decrypt_initial(data: bytes) -> tuple[int, bytes] | None:
    """(version, plaintext payload) of the client Initial packet at the start of a datagram,
    or None if it is not one or does not decrypt."""
    n = len(data)
    if n < 7 or not data[0] & 0x80:
        return None
    (version,) = _U32.unpack_from(data, 1)
    params = _VERSIONS.get(version)
    if params is None or (data[0] >> 4) & 3 != params[4]:
        return None
    dlen = data[5]
    if dlen > 20:
        return None
    dcid = data[6 : 6 + dlen]
    p = 6 + dlen
    slen = data[p]
    if slen > 20:
        return None
    p += 1 + slen
    token_len, p = _varint(data, p)
    p += token_len
    length, p = _varint(data, p)
    pn_off = p
    end = pn_off + length
    if end > n or length < 20 or pn_off + 20 > n:
        return None
    key, iv, hp = client_initial_keys(dcid, version)
    sample = data[pn_off + 4 : pn_off + 20]
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)
    first = data[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    pn_bytes = bytes(data[pn_off + i] ^ mask[1 + i] for i in range(pn_len))
    header = bytes((first,)) + data[1:pn_off] + pn_bytes
    pn = int.from_bytes(pn_bytes, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    try:
        plain = AESGCM(key).decrypt(nonce, data[pn_off + pn_len : end], header)
    except InvalidTag:
        return None
    return version, plain


def _encode_varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return struct.pack("!H", 0x4000 | value)
    if value < 0x40000000:
        return struct.pack("!I", 0x80000000 | value)
    return struct.pack("!Q", 0xC000000000000000 | value)


def build_initial(
    dcid: bytes,
    scid: bytes,
    payload: bytes,
    pn: int = 0,
    pn_len: int = 4,
    version: int = QUIC_V1,
    token: bytes = b"",
) -> bytes:
    """A protected client Initial packet carrying `payload` (frames, padding included), for
    crafting test and lab traffic (e.g. an HTTP/3 hello with a chosen SNI, sent with scapy)."""
    key, iv, hp = client_initial_keys(dcid, version)
    first = 0xC0 | (_VERSIONS[version][4] << 4) | (pn_len - 1)
    length = pn_len + len(payload) + 16
    header = (
        bytes((first,))
        + struct.pack("!I", version)
        + bytes((len(dcid),))
        + dcid
        + bytes((len(scid),))
        + scid
        + _encode_varint(len(token))
        + token
        + _encode_varint(length)
    )
    pn_off = len(header)
    header += pn.to_bytes(pn_len, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    packet = bytearray(header + AESGCM(key).encrypt(nonce, payload, header))
    sample = bytes(packet[pn_off + 4 : pn_off + 20])
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)
    packet[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        packet[pn_off + i] ^= mask[1 + i]
    return bytes(packet)


def crypto_frames(plain: bytes) -> CryptoBuffer | None:
    """The CRYPTO data of a decrypted Initial payload (PADDING, PING, ACK skipped); None if a
    frame is malformed before any CRYPTO data was seen."""
    buf = CryptoBuffer()
    n = len(plain)
    p = 0
    try:
        for _ in range(MAX_FRAMES):
            if p >= n:
                break
            ftype = plain[p]
            if ftype == 0x00:  # PADDING: skip the whole run at C speed
                rest = plain[p:].lstrip(b"\x00")
                p = n - len(rest)
                continue
            p += 1
            if ftype == 0x01:  # PING
                continue
            if ftype == 0x06:  # CRYPTO
                off, p = _varint(plain, p)
                ln, p = _varint(plain, p)
                if p + ln > n:
                    break
                buf.add(off, plain[p : p + ln])
                p += ln
            elif ftype in (0x02, 0x03):  # ACK (client Initials acknowledge server Initials)
                _, p = _varint(plain, p)  # largest acknowledged
                _, p = _varint(plain, p)  # delay
                count, p = _varint(plain, p)
                if count > MAX_ACK_RANGES:
                    break
                for _ in range(1 + 2 * count + (3 if ftype == 0x03 else 0)):
                    _, p = _varint(plain, p)
            else:
                break  # CONNECTION_CLOSE or a frame not allowed in Initial packets
    except IndexError:
        if not buf.chunks:
            return None
    return buf


def parse_initial(data: bytes) -> TlsHello | None:
    """The ClientHello (quic=True) in a client's QUIC Initial datagram, or None.

    A hello larger than one packet (post-quantum key shares) yields a partial record from the
    first packet; a later packet holding only the rest of the stream yields None (a caller
    that keeps a flow's first Initials can read the whole hello with `parse_initials`).
    """
    return parse_initials((data,))


def parse_initials(datagrams: Sequence[bytes]) -> TlsHello | None:
    """The ClientHello carried by the CRYPTO frames of one or more client Initial datagrams of
    a connection (at most MAX_DATAGRAMS; ones that do not decrypt are skipped)."""
    chunks: list[tuple[int, bytes]] = []
    for data in datagrams[:MAX_DATAGRAMS]:
        chunks += initial_crypto(data)
    return hello_from_crypto(chunks)


def initial_crypto(data: bytes) -> list[tuple[int, bytes]]:
    """The (offset, bytes) CRYPTO chunks of one client Initial datagram: it is decrypted once,
    and a caller keeping a flow's hello across datagrams keeps these, not the datagram."""
    try:
        got = decrypt_initial(data)
        if got is None:
            return []
        frames = crypto_frames(got[1])
    except (ValueError, IndexError, struct.error):
        return []
    return frames.chunks if frames is not None else []


def hello_from_crypto(chunks: Sequence[tuple[int, bytes]]) -> TlsHello | None:
    """The ClientHello in the CRYPTO stream made of `chunks` (partial if the stream stops)."""
    buf = CryptoBuffer()
    buf.chunks.extend(chunks)
    try:
        stream = buf.contiguous()
        return parse_handshake(stream, quic=True) if stream else None
    except (ValueError, IndexError, struct.error):
        return None
