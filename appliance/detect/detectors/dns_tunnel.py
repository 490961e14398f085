"""`dns-tunnel`: data carried in DNS lookups (iodine, dnscat2, DNSExfiltrator, malware C2).

A tunnel encodes its data in the subdomain of a domain whose name server the attacker runs, so
one computer looks up many different, long, random-looking names under that one domain, often
with TXT or NULL questions whose answers carry data back. Ordinary names have some of these
traits one at a time (a CDN hash like ``d1a2b3c4.cloudfront.net``, a DKIM key lookup, an AWS
load balancer name), so each signature counts per computer and registrable domain over a
`window` of seconds:

- 8106001: `encoded_names` distinct names whose subdomain is long (at least `min_encoded`
  characters) and looks encoded: hex, base32/base64-like random letters and digits, escaped
  bytes. Severe: this is what tunnel traffic looks like.
- 8106002: `unique_names` distinct subdomains under one domain (reversed-address lookups such as
  DNS blocklists are not counted).
- 8106003: `txt_names` distinct TXT or NULL questions under one domain; service names starting
  with ``_`` (DKIM keys, ACME challenges, DMARC, SRV) are not counted.
- 8106004: `failed_names` distinct subdomains of one domain whose lookups failed (NXDOMAIN or
  SERVFAIL): a random-subdomain flood ("water torture"), an infected computer helping to take a
  domain's name servers down, or a tunnel whose server is gone.

Alerts name the domain, never the full looked-up names: in a tunnel those *are* the data.
State is bounded: at most `max_zones` (computer, domain) pairs, each holding at most a
threshold's worth of name hashes, reset every window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options
from appliance.detect.detectors.dga import GENERATED, randomness, split_name
from appliance.detect.records import dns_type_name


def _registrable(raw: str) -> None:
    """a registrable domain (example.com)"""
    text = raw.strip(".").lower()
    sub, label, _suffix = split_name(text)
    if not label or sub or " " in text:
        raise ValueError(f"expected a registrable domain such as example.com, got {raw!r}")


if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.detect.records import DnsMessage
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

CATEGORY = "DNS tunnel"
ENCODED = Signature(
    8106001,
    "DNS tunnel: a computer looked up many long encoded-looking names under one domain "
    "(data hidden in DNS)",
    CATEGORY,
    1,
)
UNIQUE = Signature(
    8106002,
    "DNS tunnel: a computer looked up an unusual number of different names under one domain",
    CATEGORY,
    2,
)
TXT_NULL = Signature(
    8106003,
    "DNS tunnel: a computer made many TXT or NULL lookups under one domain",
    CATEGORY,
    2,
)

FLOOD = Signature(
    8106004,
    "DNS flood: a computer's lookups of many different names under one domain failed "
    "(random-subdomain attack)",
    "DNS flood",
    2,
)

TXT, NULL = 16, 10
NXDOMAIN, SERVFAIL = 3, 2
PRUNE_EVERY = 30.0
NAME_CACHE = 8192
_HEX = frozenset("0123456789abcdef")

# Security products that look file hashes and addresses up in DNS by design (their queries look
# exactly like a tunnel), and DNS blocklists.
DEFAULT_IGNORE = (
    "sophosxl.net",
    "mcafee.com",
    "e5.sk",
    "cymru.com",
    "spamhaus.org",
    "spamcop.net",
    "surbl.org",
    "uribl.com",
    "sorbs.net",
    "barracudacentral.org",
    "senderscore.com",
    "dnswl.org",
    "mailspike.net",
)


def looks_encoded(sub: str, min_length: int) -> bool:
    """Whether a subdomain looks like encoded data: long, and hex, escaped or random-looking."""
    data = sub.replace(".", "")
    n = len(data)
    if n < min_length:
        return False
    if "\\" in data:  # bytes a host name never holds (base64 '+', '/', '=', binary)
        return True
    if _HEX.issuperset(data):
        return True
    letters = sum(c.isalpha() for c in data)
    if letters == n and n < 2 * min_length:
        return False  # long words (a few long dictionary labels) rather than data
    # Judge the longest label; a tunnel splits its data into labels of similar length.
    longest = max(sub.split("."), key=len)
    if len(longest) < min_length // 2:
        return False
    bits = randomness(longest.replace("-", ""))
    return bits >= GENERATED or bits >= 1.5 * len(longest)


def reversed_address(sub: str) -> bool:
    """Whether the subdomain starts with a reversed IPv4 address (``4.3.2.1``, as in DNS
    blocklist lookups like ``4.3.2.1.zen.example.org``) or a nibble-reversed IPv6 one."""
    labels = sub.split(".", 32)
    if len(labels) >= 4 and all(lb.isdigit() and len(lb) <= 3 for lb in labels[:4]):
        return True
    return len(labels) >= 32 and all(len(lb) == 1 and lb in _HEX for lb in labels[:32])


class _Zone:
    """One computer's recent lookups under one registrable domain."""

    __slots__ = ("alerted", "encoded", "failed", "first", "last", "longest", "names", "txt")

    def __init__(self, now: float) -> None:
        self.first = self.last = now
        self.names: set[int] = set()
        self.encoded: set[int] = set()
        self.txt: set[int] = set()
        self.failed: set[int] = set()
        self.alerted: set[int] = set()  # signature ids already reported this window
        self.longest = 0


class DnsTunnelDetector(Detector):
    name = "dns-tunnel"
    # replay --workers (Detector.partition): state per (client, zone).
    partition = "client"
    signatures = (ENCODED, UNIQUE, TXT_NULL, FLOOD)

    def __init__(self) -> None:
        self._zones: dict[tuple[bytes, str], _Zone] = {}
        self._names: dict[str, tuple[str, str] | None] = {}
        self._last: tuple[bytes, str, int] | None = None
        self._next_prune = 0.0

    @classmethod
    def load(cls, loader: Loader) -> None:
        loader.add_option(
            "window",
            float,
            300.0,
            "Seconds over which lookups per computer and domain count.",
            range=(1.0, 86400.0),
            remote=True,
        )
        loader.add_option(
            "min_encoded",
            int,
            24,
            "Shortest subdomain (characters, dots not counted) that can count as encoded data.",
            range=(8, 253),
            remote=True,
        )
        loader.add_option(
            "encoded_names",
            int,
            8,
            "Distinct encoded-looking names under one domain within the window that raise an "
            "alert.",
            range=(1, 100_000),
            remote=True,
        )
        loader.add_option(
            "unique_names",
            int,
            150,
            "Distinct subdomains of one domain within the window that raise an alert.",
            range=(2, 100_000),
            remote=True,
        )
        loader.add_option(
            "txt_names",
            int,
            20,
            "Distinct TXT/NULL lookups under one domain within the window that raise an alert.",
            range=(1, 100_000),
            remote=True,
        )
        loader.add_option(
            "failed_names",
            int,
            50,
            "Distinct subdomains of one domain whose lookups failed (NXDOMAIN, SERVFAIL) within "
            "the window that raise an alert (a random-subdomain flood).",
            range=(2, 100_000),
            remote=True,
        )
        loader.add_option(
            "ignore_domains",
            tuple[str, ...],
            DEFAULT_IGNORE,
            "Registrable domains never judged (security products that query hashes by DNS).",
            check=_registrable,
            remote=True,
        )
        loader.add_option(
            "max_zones",
            int,
            4096,
            "(computer, domain) pairs tracked at once; the least recently active go first.",
            range=(1, 1_000_000),
            remote=True,
            remote_range=(1, 100_000),
        )

    def configure(self, opts: Options) -> None:
        self.window, self.min_encoded = opts.window, opts.min_encoded
        self.encoded_names, self.unique_names = opts.encoded_names, opts.unique_names
        self.txt_names, self.max_zones = opts.txt_names, opts.max_zones
        self.failed_names = opts.failed_names
        self.ignore = frozenset(d.strip(".").lower() for d in opts.ignore_domains)
        self._names.clear()
        self._last = None

    def _split(self, qname: str) -> tuple[str, str] | None:
        """(subdomain, registrable domain) of a name worth counting, else None (cached)."""
        cache = self._names
        if qname in cache:
            return cache[qname]
        out = None
        if qname.count(".") >= 2:  # else no subdomain to carry data (example.com)
            sub, label, suffix = split_name(qname)
            domain = f"{label}.{suffix}"
            if sub and domain not in self.ignore and not reversed_address(sub):
                out = (sub, domain)
        if len(cache) >= NAME_CACHE:
            cache.clear()
        cache[qname] = out
        return out

    def dns(self, ctx: Context, pkt: Packet, flow: Flow, msg: DnsMessage) -> None:
        qname = msg.qname
        if msg.opcode != 0:
            return
        last = (flow.client, qname, msg.qtype)
        failed = msg.response and msg.rcode in (NXDOMAIN, SERVFAIL)
        dup = last == self._last
        if dup and not failed:
            return  # the answer to the query just counted: it adds nothing
        self._last = last
        split = self._split(qname)
        if split is None:
            return
        sub, domain = split
        now = ctx.now
        key = (flow.client, domain)
        zones = self._zones
        zone = zones.pop(key, None)  # re-inserted: the dict stays in activity order
        if zone is None or now - zone.first > self.window:
            zone = _Zone(now)
            while len(zones) >= self.max_zones:
                del zones[next(iter(zones))]
        zones[key] = zone
        zone.last = now
        h = hash(qname)
        service = sub[0] == "_" or "._" in sub
        if failed and not service and len(zone.failed) < self.failed_names:
            zone.failed.add(hash(sub))
            if len(zone.failed) >= self.failed_names:
                self._report(ctx, flow, msg, zone, domain, FLOOD, len(zone.failed))
        if dup:
            return  # the query was counted already
        if len(sub) > zone.longest:
            zone.longest = len(sub)
        if not service and len(zone.names) < self.unique_names:
            zone.names.add(hash(sub))
            if len(zone.names) >= self.unique_names:
                self._report(ctx, flow, msg, zone, domain, UNIQUE, len(zone.names))
        if msg.qtype in (TXT, NULL) and not service and len(zone.txt) < self.txt_names:
            zone.txt.add(h)
            if len(zone.txt) >= self.txt_names:
                self._report(ctx, flow, msg, zone, domain, TXT_NULL, len(zone.txt))
        if (
            len(sub) >= self.min_encoded  # cheap first: most subdomains are short
            and len(zone.encoded) < self.encoded_names
            and h not in zone.encoded
            and looks_encoded(sub, self.min_encoded)
        ):
            zone.encoded.add(h)
            if len(zone.encoded) >= self.encoded_names:
                self._report(ctx, flow, msg, zone, domain, ENCODED, len(zone.encoded))

    def tick(self, ctx: Context, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        # Zones are in activity order and a zone's start precedes its last activity: walk from
        # the least recently active and stop at the first live one (O(expired), no table scan).
        # A busy zone past its window is restarted by its next lookup anyway.
        zones = self._zones
        limit = now - self.window
        while zones:
            key = next(iter(zones))
            if zones[key].first >= limit:
                break
            del zones[key]

    def _report(
        self,
        ctx: Context,
        flow: Flow,
        msg: DnsMessage,
        zone: _Zone,
        domain: str,
        sig: Signature,
        count: int,
    ) -> None:
        if sig.sid in zone.alerted:
            return
        zone.alerted.add(sig.sid)
        dns = {"type": "answer" if msg.response else "query", "rrname": domain}
        dns["rrtype"] = dns_type_name(msg.qtype)
        ctx.alert(
            sig,
            flow=flow,
            app={"dns": dns},
            count=count,
            first_seen=zone.first,
            details={
                "domain": domain,
                "names": len(zone.names),
                "encoded_names": len(zone.encoded),
                "txt_null_names": len(zone.txt),
                "failed_names": len(zone.failed),
                "longest_subdomain": zone.longest,
                "window_s": self.window,
                "note": "the looked-up names are not reported: in a tunnel they are the data",
            },
        )
