"""What the dissectors hand to detectors: small records of names and fingerprints, no payload.

Each record knows its Suricata EVE form (`eve()`), so an alert about a DNS query or TLS handshake
carries the same ``dns`` / ``tls`` / ``http`` objects a SIEM already reads from Suricata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DNS_TYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    10: "NULL",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    43: "DS",
    46: "RRSIG",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    252: "AXFR",
    255: "ANY",
}
DNS_RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
}


def dns_type_name(rrtype: int) -> str:
    return DNS_TYPES.get(rrtype, f"TYPE{rrtype}")


@dataclass(slots=True)
class DnsAnswer:
    name: str
    rrtype: int
    ttl: int
    # Text of the record data for A/AAAA/CNAME/PTR/NS/MX targets; "" for types we do not render
    # (TXT and NULL contents are payload and are never kept, only their length).
    data: str
    length: int = 0


@dataclass(slots=True)
class DnsMessage:
    id: int
    response: bool
    opcode: int
    rcode: int
    qname: str  # lower case, no trailing dot; "" when there is no question
    qtype: int
    answers: list[DnsAnswer] = field(default_factory=list)
    truncated: bool = False
    transport: str = "udp"
    # Set by the engine on a response that answers an office host's own question (see
    # detect/dnstrust.py), with the question's name chain and the addresses on it. Only such
    # answers teach names or lead to blocks.
    trusted: bool = False
    chain_names: set[str] = field(default_factory=set)
    chain_addresses: list[str] = field(default_factory=list)

    @property
    def rcode_name(self) -> str:
        return DNS_RCODES.get(self.rcode, str(self.rcode))

    def eve(self) -> dict[str, Any]:
        if not self.response:
            return {
                "dns": {
                    "type": "query",
                    "id": self.id,
                    "rrname": self.qname,
                    "rrtype": dns_type_name(self.qtype),
                }
            }
        out: dict[str, Any] = {
            "type": "answer",
            "id": self.id,
            "rrname": self.qname,
            "rrtype": dns_type_name(self.qtype),
            "rcode": self.rcode_name,
        }
        if self.answers:
            out["answers"] = [
                {"rrname": a.name, "rrtype": dns_type_name(a.rrtype), "ttl": a.ttl, "rdata": a.data}
                for a in self.answers
                if a.data
            ]
        return {"dns": out}


@dataclass(slots=True, eq=False)
class TlsHello:
    """A TLS ClientHello, from TCP or from a decrypted QUIC Initial (`quic` = True).

    ``ja3`` (the JA3 string), ``ja3_hash`` (its MD5) and ``ja4`` are computed on first use
    (by an intel list of fingerprints, a rule, an alert's EVE form): most hellos are never
    fingerprinted, and building the strings and hashes costs more than the parse. The
    dissector leaves `fingerprint` (a function returning the three) for that; pass
    ``fingerprints=(ja3, ja3_hash, ja4)`` to give them directly.
    """

    version: int  # legacy_version from the hello, e.g. 0x0303
    sni: str  # lower case; "" when absent
    alpn: list[str] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)
    quic: bool = False
    # The hello was cut short (it continues in the next TCP segment or QUIC packet): what was
    # read is kept (SNI, ALPN if they came early), fingerprints are left empty.
    partial: bool = False
    fingerprints: tuple[str, str, str] | None = field(default=None, repr=False)
    fingerprint: Callable[[], tuple[str, str, str]] | None = field(default=None, repr=False)

    def _fingerprints(self) -> tuple[str, str, str]:
        fp = self.fingerprints
        if fp is None:
            make = self.fingerprint
            fp = self.fingerprints = make() if make is not None else ("", "", "")
            self.fingerprint = None
        return fp

    @property
    def ja3(self) -> str:
        return self._fingerprints()[0]

    @property
    def ja3_hash(self) -> str:
        return self._fingerprints()[1]

    @property
    def ja4(self) -> str:
        return self._fingerprints()[2]

    def _key(self) -> tuple[Any, ...]:
        return (self.version, self.sni, self.alpn, self.supported_versions, self.quic,
                self.partial, self._fingerprints())  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TlsHello):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the other records

    def eve(self) -> dict[str, Any]:
        tls: dict[str, Any] = {}
        if self.sni:
            tls["sni"] = self.sni
        tls["version"] = tls_version_name(max(self.supported_versions or [self.version]))
        if self.ja3:
            tls["ja3"] = {"hash": self.ja3_hash, "string": self.ja3}
        if self.ja4:
            tls["ja4"] = self.ja4
        if self.alpn:
            tls["client_alpns"] = list(self.alpn)
        return {"quic": {"sni": self.sni, "ja4": self.ja4}} if self.quic else {"tls": tls}


def tls_version_name(v: int) -> str:
    return {0x0300: "SSLv3", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2"}.get(
        v, "TLS 1.3" if v == 0x0304 else f"0x{v:04x}"
    )


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str  # the request target as sent (may be absolute-form for proxies)
    version: str  # "HTTP/1.1"
    host: str = ""
    user_agent: str = ""
    content_type: str = ""
    # Whether an Authorization: Basic header was present; the credentials themselves are dropped
    # by the dissector and never reach a detector.
    basic_auth: bool = False
    header_names: list[str] = field(default_factory=list)
    # Where this request's head starts in the segment (0 for the first; the header buffers of
    # rules are cut from the payload there), and the complete requests pipelined after it in
    # the same segment (set on the first request only; each has its own offset).
    offset: int = 0
    pipelined: tuple[HttpRequest, ...] = ()

    def eve(self) -> dict[str, Any]:
        http: dict[str, Any] = {
            "http_method": self.method,
            "url": redact_query(self.path),
            "protocol": self.version,
        }
        if self.host:
            http["hostname"] = self.host
        if self.user_agent:
            http["http_user_agent"] = self.user_agent
        return {"http": http}


def redact_query(target: str) -> str:
    """The request target with query values removed (they can hold tokens or passwords)."""
    path, sep, query = target.partition("?")
    if not sep:
        return path
    keys = [part.split("=", 1)[0] for part in query.split("&") if part]
    return path + "?" + "&".join(f"{k}=" for k in keys)
