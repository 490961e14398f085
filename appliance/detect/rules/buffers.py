"""The bytes each sticky buffer names, built from a packet and its dissected record.

Built lazily per packet: only buffers some loaded rule looks in are made, each once, with its
lower-case form (for the prefilter and ``nocase``). Cookies are never put into any buffer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from appliance.detect.rules.matcher import PKT

MAX_HEAD = 16384  # as the HTTP dissector: bytes of a segment searched for the request head


def _http_head_lines(payload: bytes) -> list[bytes]:
    head = payload[:MAX_HEAD]
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[:end]
    lines = head.split(b"\n")[1:]
    return [ln.rstrip(b"\r") for ln in lines if ln.strip()]


def http_header(payload: bytes) -> bytes:
    """Suricata's normalised header buffer: ``Name: value\\r\\n`` per request header, the
    request line and Cookie headers left out."""
    out = []
    for ln in _http_head_lines(payload):
        name, colon, value = ln.partition(b":")
        if not colon or name[:1] in b" \t":
            continue
        if name.strip().lower() == b"cookie":
            continue
        out.append(name.strip() + b": " + value.strip() + b"\r\n")
    return b"".join(out)


def http_header_raw(payload: bytes) -> bytes:
    """The header lines as sent (each ending in CRLF), without the request line and cookies."""
    out = []
    for ln in _http_head_lines(payload):
        if ln.split(b":", 1)[0].strip().lower() == b"cookie":
            continue
        out.append(ln + b"\r\n")
    return b"".join(out)


def normalize_uri(target: str) -> bytes:
    """The request target percent-decoded once, ``/./`` removed and ``//`` collapsed (the
    parts of libhtp's normalisation ET rules rely on); ``?`` and what follows kept decoded."""
    raw = target.encode("utf-8", "surrogateescape")
    path, sep, query = raw.partition(b"?")
    path = unquote_to_bytes(path)
    while b"//" in path:
        path = path.replace(b"//", b"/")
    while b"/./" in path:
        path = path.replace(b"/./", b"/")
    return path + (sep + unquote_to_bytes(query) if sep else b"")


def _host(host: str) -> bytes:
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        h = h[1:end] if end > 0 else h
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.encode("utf-8", "surrogateescape")


class Buffers:
    """name -> (bytes, lower-case bytes) for one packet, or None when absent."""

    __slots__ = ("_cache", "_pkt", "_record")

    def __init__(self, pkt: Any, record: Any = None) -> None:
        self._pkt = pkt
        self._record = record
        self._cache: dict[str, tuple[bytes, bytes] | None] = {}

    def get(self, name: str) -> tuple[bytes, bytes] | None:
        try:
            return self._cache[name]
        except KeyError:
            pass
        raw = self._make(name)
        got = None if raw is None else (raw, raw.lower())
        self._cache[name] = got
        return got

    def _make(self, name: str) -> bytes | None:
        pkt, rec = self._pkt, self._record
        if name == PKT:
            return pkt.payload if pkt.payload_len else None
        if rec is None:
            return None
        if name.startswith("http."):
            if name == "http.method":
                return rec.method.encode("ascii", "replace")
            if name == "http.uri":
                return normalize_uri(rec.path)
            if name == "http.uri.raw":
                return rec.path.encode("utf-8", "surrogateescape")
            if name == "http.host":
                return _host(rec.host) if rec.host else None
            if name == "http.host.raw":
                return rec.host.encode("utf-8", "surrogateescape") if rec.host else None
            if name == "http.user_agent":
                return rec.user_agent.encode("utf-8", "surrogateescape") if rec.user_agent else None
            if name == "http.header":  # this request's own head (pipelined: at its offset)
                return http_header(pkt.payload[rec.offset :] if rec.offset else pkt.payload) or None
            if name == "http.header.raw":
                raw = pkt.payload[rec.offset :] if rec.offset else pkt.payload
                return http_header_raw(raw) or None
            return None
        if name == "tls.sni":
            return rec.sni.encode("utf-8", "surrogateescape") if rec.sni else None
        if name == "ja3.hash":
            return rec.ja3_hash.encode("ascii") if rec.ja3_hash else None
        if name == "ja3.string":
            return rec.ja3.encode("ascii") if rec.ja3 else None
        if name == "ja4.hash":
            return rec.ja4.encode("ascii") if rec.ja4 else None
        if name == "dns.query":
            return rec.qname.encode("utf-8", "surrogateescape") if rec.qname else None
        return None
