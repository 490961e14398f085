"""`intel`: traffic with addresses, names and client fingerprints that threat-intel lists name.

Where it looks (all cheap: one or two O(log n) lookups per new flow, per DNS message, per
ClientHello, per HTTP request head):

- the first packet of every flow: both addresses; and, when the server address was learnt from a
  DNS answer for a listed domain, that domain (so an alert about an address names the domain);
- DNS queries (the name and its parents), and answers (listed addresses, listed CNAME targets);
- TLS and QUIC ClientHellos: SNI, JA3 and JA4;
- HTTP/1 request heads: Host and the URL.

In block mode a listed address goes into the kernel drop set; a listed name (SNI, HTTP host or
URL) drops only its flow, since a CDN address serves many sites; a believed DNS answer for a
listed domain blocks the addresses on its name chain. The engine's block guard
(detect/blockguard.py) has the last word: never the office, non-public addresses, the gateway,
the resolvers or the hub, and capped.
Signature ids are stable (8100001..8100011); the alert's category and severity come from the
indicator, the details say what was listed and by whom.

Context: an alert about a listed address (8100001, 8100004) carries the names its flow showed:
the DNS question asked of a listed resolver, the HTTP host and URL, the TLS or QUIC SNI (the
``dns``/``http``/``tls``/``quic`` object, and ``details.query``/``host``/``sni``). The address
is seen on a flow's first packet and the names come later in its head (a SYN before the
ClientHello), so the alert is held on the flow until the first name arrives (often the same
packet: a DNS query, a QUIC Initial) or `context_wait` seconds of packet time pass, then sent
once, with whatever context there was; at most HELD_MAX alerts wait at once (the oldest goes
out first). In block mode with blocking on, nothing is held: the flow ends at its first packet.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options
from appliance.detect.blockguard import BLOCK_LIMIT

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.detect.intel import Indicator
    from appliance.detect.records import DnsMessage, HttpRequest, TlsHello
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

CATEGORY = "Threat intel"
IP_HIT = Signature(8100001, "Threat intel: traffic with a listed address", CATEGORY, 1)
DNS_QUERY = Signature(8100002, "Threat intel: DNS lookup of a listed domain", CATEGORY, 1)
DNS_ANSWER_IP = Signature(
    8100003, "Threat intel: DNS answer points to a listed address", CATEGORY, 1
)
NAME_ADDR = Signature(
    8100004, "Threat intel: connection to an address of a listed domain", CATEGORY, 1
)
TLS_SNI = Signature(8100005, "Threat intel: TLS connection to a listed server name", CATEGORY, 1)
TLS_JA3 = Signature(8100006, "Threat intel: TLS client with a listed JA3 fingerprint", CATEGORY, 2)
TLS_JA4 = Signature(8100007, "Threat intel: TLS client with a listed JA4 fingerprint", CATEGORY, 2)
HTTP_HOST = Signature(8100008, "Threat intel: HTTP request to a listed host", CATEGORY, 1)
HTTP_URL = Signature(8100009, "Threat intel: HTTP request for a listed URL", CATEGORY, 1)
DNS_BLOCKED = Signature(
    8100010, "Threat intel: blocked the addresses of a listed domain", CATEGORY, 1
)

A, AAAA, CNAME = 1, 28, 5
_MISS = object()
MEMO_SIZE = 4096
HELD_MAX = 4096  # address alerts waiting for their flow's names


class _Held:
    """An address alert waiting on its flow for context (the ``ctx.alert`` arguments)."""

    __slots__ = ("args", "deadline", "flow")

    def __init__(self, flow: Flow, deadline: float, args: dict[str, Any]) -> None:
        self.flow = flow
        self.deadline = deadline
        self.args = args


class IntelDetector(Detector):
    name = "intel"
    # replay --workers (Detector.partition): state per flow (lookups memoised).
    partition = "flow"
    packet_first_only = True  # the packet hook judges a flow on its first packet
    signatures = (
        IP_HIT,
        DNS_QUERY,
        DNS_ANSWER_IP,
        NAME_ADDR,
        TLS_SNI,
        TLS_JA3,
        TLS_JA4,
        HTTP_HOST,
        HTTP_URL,
        DNS_BLOCKED,
        BLOCK_LIMIT,
    )

    def __init__(self) -> None:
        self.block = True
        self.block_fingerprints = False
        self.domain_addresses = True
        self._sigs: dict[tuple[int, str, int], Signature] = {}
        # Recent name lookups: a name is usually asked about several times in a row (the DNS
        # query, its answer, the SNI of the connection that follows).
        self._memo: dict[str, Indicator | None] = {}
        self._memo_store: object = None
        self.context_wait = 1.0
        self._held: OrderedDict[int, _Held] = OrderedDict()  # id(flow) -> held, oldest first

    @classmethod
    def load(cls, loader: Loader) -> None:
        loader.add_option(
            "block",
            bool,
            True,
            "In block mode, drop traffic with listed addresses, names and URLs (and the "
            "addresses DNS returns for listed domains).",
            remote=True,
        )
        loader.add_option(
            "block_fingerprints",
            bool,
            False,
            "In block mode, also drop servers contacted by a client whose JA3/JA4 fingerprint is "
            "listed (fingerprints are shared by unrelated clients: off by default).",
            remote=True,
        )
        loader.add_option(
            "domain_addresses",
            bool,
            True,
            "Alert on connections to addresses that DNS returned for a listed domain.",
            remote=True,
        )
        loader.add_option(
            "context_wait",
            float,
            1.0,
            "Seconds an alert about a listed address waits for its flow to show a name (DNS "
            "question, HTTP host and URL, TLS/QUIC SNI), so it is sent once with that context "
            "(0: sent at once, without).",
            range=(0.0, 10.0),
            remote=True,
        )

    def configure(self, opts: Options) -> None:
        self.block = opts.block
        self.block_fingerprints = opts.block_fingerprints
        self.domain_addresses = opts.domain_addresses
        self.context_wait = opts.context_wait

    # -- helpers --------------------------------------------------------------------------------

    def _sig(self, base: Signature, ind: Indicator) -> Signature:
        """The signature with the indicator's category and severity (sid and text unchanged)."""
        key = (base.sid, ind.category, ind.severity)
        sig = self._sigs.get(key)
        if sig is None:
            sev = ind.severity if ind.severity in (1, 2, 3) else base.severity
            sig = Signature(base.sid, base.name, ind.category or base.category, sev)
            if len(self._sigs) < 4096:  # categories come from feeds: keep the memo bounded
                self._sigs[key] = sig
        return sig

    def _domain(self, ctx: Context, name: str) -> Indicator | None:
        """`match_domain` with a small memo, emptied when the store is swapped."""
        intel = ctx.intel
        if intel is not self._memo_store:
            self._memo.clear()
            self._memo_store = intel
        hit = self._memo.get(name, _MISS)
        if hit is _MISS:
            hit = intel.match_domain(name)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[name] = hit
        return hit  # type: ignore[return-value]

    @staticmethod
    def _details(ind: Indicator, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "indicator": ind.value,
            "kind": ind.kind,
            "source": ind.source,
            "category": ind.category,
        }
        if ind.tags:
            out["tags"] = ind.tags
        out.update({k: v for k, v in extra.items() if v})
        return out

    # -- hooks ----------------------------------------------------------------------------------

    def _address_alert(
        self, ctx: Context, pkt: Packet, flow: Flow, sig: Signature, details: dict, listed: str
    ) -> None:
        """Alert about a listed address at once (block mode: the flow ends here) or hold it on
        the flow until its names arrive (`_fold`) or `context_wait` passes (`_release`)."""
        block = listed if self.block else None
        if (block and ctx.block_mode) or self.context_wait <= 0:
            ctx.alert(sig, pkt=pkt, flow=flow, details=details, block=block)
            return
        args: dict[str, Any] = {
            "at": ctx.now,
            "src": pkt.src_ip,
            "dst": pkt.dst_ip,
            "proto": pkt.proto_name,
            "src_port": pkt.sport if pkt.proto in (6, 17) else None,
            "dest_port": pkt.dport if pkt.proto in (6, 17) else None,
            "signature": sig,
            "details": details,
        }
        held = self._held
        while len(held) >= HELD_MAX:
            self._send(ctx, held.popitem(last=False)[1])
        held[id(flow)] = _Held(flow, ctx.now + self.context_wait, args)

    def _fold(self, ctx: Context, flow: Flow, app: dict[str, Any], **names: str) -> None:
        """The flow showed a name: send its held address alert with it (once)."""
        h = self._held.pop(id(flow), None)
        if h is None or h.flow is not flow:
            return
        h.args["app"] = app
        h.args["details"].update({k: v for k, v in names.items() if v})
        self._send(ctx, h)

    def _release(self, ctx: Context, now: float) -> None:
        """Send the held alerts whose wait is over, without context."""
        held = self._held
        while held:
            h = held[next(iter(held))]
            if h.deadline > now:
                return
            held.popitem(last=False)
            self._send(ctx, h)

    def _send(self, ctx: Context, h: _Held) -> None:
        args = h.args
        ctx.alert(args.pop("signature"), flow=h.flow, **args)

    def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None:
        if self._held:
            self._release(ctx, ctx.now)
        # Judge each flow once, on its first packet: later head packets add nothing.
        if flow.pkts_c + flow.pkts_s != 1:
            return
        intel = ctx.intel
        for addr in (pkt.dst, pkt.src):
            ind = intel.match_ip(addr)
            if ind is not None:
                listed = pkt.dst_ip if addr is pkt.dst else pkt.src_ip
                details = self._details(ind, listed=listed, domain=ctx.names.get(addr))
                self._address_alert(ctx, pkt, flow, self._sig(IP_HIT, ind), details, listed)
                return
        if not self.domain_addresses:
            return
        name = ctx.names.get(pkt.dst)
        if name:
            ind = self._domain(ctx, name)
            if ind is not None:
                details = self._details(ind, domain=name, address=pkt.dst_ip)
                self._address_alert(ctx, pkt, flow, self._sig(NAME_ADDR, ind), details, pkt.dst_ip)

    def tick(self, ctx: Context, now: float) -> None:
        if self._held:
            self._release(ctx, now)

    def dns(self, ctx: Context, pkt: Packet, flow: Flow, msg: DnsMessage) -> None:
        intel = ctx.intel
        if self._held and not msg.response:  # a listed resolver asked: the question
            self._fold(ctx, flow, msg.eve(), query=msg.qname)
        if not msg.response:
            ind = self._domain(ctx, msg.qname)
            if ind is not None:
                ctx.alert(
                    self._sig(DNS_QUERY, ind),
                    pkt=pkt,
                    flow=flow,
                    app=msg.eve(),
                    details=self._details(ind, query=msg.qname),
                )
            return
        # An answer: the listed name may be the question or a CNAME on the way.
        hit = self._domain(ctx, msg.qname)
        if hit is None:
            for ans in msg.answers:
                if ans.rrtype == CNAME and ans.data:
                    hit = self._domain(ctx, ans.data)
                    if hit is not None:
                        break
        addresses = [a.data for a in msg.answers if a.rrtype in (A, AAAA) and a.data]
        if hit is not None and self.block and msg.trusted and ctx.block_mode:
            # Only a believed answer (to an office host's own question, from beyond the bridge)
            # and only the addresses on the question's own name chain: a forged or unsolicited
            # answer never blocks anything. The DNS flow itself is left alone; the addresses go
            # into the drop set, the alert reads "client → address, blocked".
            blocked = [a for a in msg.chain_addresses if ctx.block(a)]
            if blocked:  # (blocking the first again below only refreshes its timeout)
                ctx.alert(
                    self._sig(DNS_BLOCKED, hit),
                    src=pkt.dst_ip,
                    dst=blocked[0],
                    proto=pkt.proto_name,
                    app=msg.eve(),
                    details=self._details(hit, query=msg.qname, addresses=blocked),
                    block=blocked[0],
                )
        for addr in addresses:
            ind = intel.match_ip_text(addr)
            if ind is not None:
                ctx.alert(
                    self._sig(DNS_ANSWER_IP, ind),
                    pkt=pkt,
                    flow=flow,
                    app=msg.eve(),
                    details=self._details(ind, query=msg.qname, address=addr),
                )
                return  # one alert per answer is enough; the connection will say the rest

    def tls(self, ctx: Context, pkt: Packet, flow: Flow, hello: TlsHello) -> None:
        intel = ctx.intel
        proto = "QUIC" if hello.quic else "TLS"
        if self._held:
            self._fold(ctx, flow, hello.eve(), sni=hello.sni)
        if hello.sni:
            ind = self._domain(ctx, hello.sni)
            if ind is not None:
                ctx.alert(
                    self._sig(TLS_SNI, ind),
                    pkt=pkt,
                    flow=flow,
                    app=hello.eve(),
                    details=self._details(ind, sni=hello.sni, transport=proto),
                    drop=self.block,
                )
                return
        counts = intel.counts
        if not (counts.get("ja3") or counts.get("ja4")):
            return  # no fingerprints listed: the hello need not be fingerprinted
        for sig, ind in (
            (TLS_JA3, intel.match_ja3(hello.ja3_hash)),
            (TLS_JA4, intel.match_ja4(hello.ja4)),
        ):
            if ind is not None:
                ctx.alert(
                    self._sig(sig, ind),
                    pkt=pkt,
                    flow=flow,
                    app=hello.eve(),
                    details=self._details(ind, sni=hello.sni, transport=proto),
                    block=pkt.dst_ip if self.block and self.block_fingerprints else None,
                )
                return

    def http(self, ctx: Context, pkt: Packet, flow: Flow, req: HttpRequest) -> None:
        intel = ctx.intel
        if self._held:
            self._fold(ctx, flow, req.eve(), host=req.host)
        target = req.path
        if target.startswith(("http://", "https://")):  # absolute form (a proxy request)
            url = target
            host = target.split("/", 3)[2]
        else:
            host = req.host
            if not host:
                return
            url = f"http://{host}{target if target.startswith('/') else '/' + target}"
        ind = intel.match_url(url)
        sig = HTTP_URL
        if ind is None:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            if not name or name[0] == "[" or name.replace(".", "").isdigit():
                return  # an address: the packet hook judged it already
            ind = self._domain(ctx, name)
            sig = HTTP_HOST
        if ind is None:
            return
        ctx.alert(
            self._sig(sig, ind),
            pkt=pkt,
            flow=flow,
            app=req.eve(),
            details=self._details(ind, host=host),
            drop=self.block,
        )
