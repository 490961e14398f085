"""Runs decoded packets through flows, dissectors and detectors; decides verdicts.

The same engine runs inline (fed by the NFQUEUE worker) and offline (`watchpost replay`), so a
pcap gives the alerts the live bridge would. It never raises into its caller: a detector or
dissector that throws is counted and the packet is still judged (accepted).
"""

from __future__ import annotations

import logging
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.alerts.model import Alert, Signature
from appliance.config import Config, ConfigError
from appliance.detect import dnstrust, registry
from appliance.detect.base import HOOKS, Detector, Options, check_hooks, hook, validate_options
from appliance.detect.blockguard import BLOCK_LIMIT, BlockGuard
from appliance.detect.dissect import Dissectors
from appliance.detect.dissect.sniff import server_greeting
from appliance.detect.intel import IntelStore
from appliance.detect.records import DnsMessage, HttpRequest
from appliance.packet.addrset import AddrSet, packed_address
from appliance.packet.decode import TCP, UDP, Packet, ip_to_str
from appliance.packet.flows import (
    DEEP_ANY_PORT,
    DIRECTION_NAMES,
    VERDICT_BLOCK,
    VERDICT_DEEP,
    VERDICT_NONE,
    VERDICT_PASS,
    Flow,
    FlowTable,
)

log = logging.getLogger(__name__)

# A TCP flow is judged (no more packets to Python) once its first client payload was dissected
# (a ClientHello split over segments: once it is whole); detectors that need more of a flow
# (cleartext logins, every request of a keep-alive HTTP connection) name protocols in
# `Detector.app_heads` (protocol -> head packets, both directions) and their usual ports in
# `Detector.deep_ports` (port -> head packets). A flow whose protocol is found by content (an
# HTTP request line, an FTP/SMTP/POP3/IMAP greeting, Telnet negotiation) on any port gets
# VERDICT_DEEP, so the kernel keeps queueing it, until its protocol's head is seen; then it is
# passed. A TLS or unknown flow is passed at its first client payload as before.
# A split hello is held for at most this many segments / bytes.
HELLO_SEGMENTS = 4
HELLO_BYTES = 16384
# Bounds under hostile traffic: a dissector reads at most HEAD_BYTES of one segment or datagram
# (an oversized one is judged on its head), and at most HOLDING_FLOWS flows hold a partial
# hello at once (the oldest gives up and is judged on what it sent), so held data never passes
# HOLDING_FLOWS * HELLO_BYTES (32 MiB) whatever the number of flows.
HEAD_BYTES = 4096
HOLDING_FLOWS = 2048


class Blocker(Protocol):
    """Puts an address into the kernel drop set (block mode)."""

    def block(self, addr: str, ttl: int) -> None: ...


# Where finished alerts go (the alert pipeline; a pipe to the main process in a worker).
AlertSink = Callable[[Alert], None]


class NameCache:
    """Address → the DNS name it was last answered for, so alerts can say which domain it was."""

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self._names: OrderedDict[bytes, str] = OrderedDict()

    def learn(self, msg: DnsMessage) -> None:
        """Learn the addresses of a believed answer's name chain (`msg.chain_addresses`)."""
        for text in msg.chain_addresses:
            try:
                addr = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
            except (OSError, ValueError):
                continue
            self._names[addr] = msg.qname
            self._names.move_to_end(addr)
        while len(self._names) > self.size:
            self._names.popitem(last=False)

    def get(self, addr: bytes) -> str:
        return self._names.get(addr, "")


@dataclass
class EngineStats:
    packets: int = 0
    alerts: int = 0
    blocked_packets: int = 0
    holds_given_up: int = 0  # partial hellos dropped to keep the holding bound
    dns_untrusted: int = 0  # DNS answers that answered no office question (never believed)
    hook_errors: Counter[str] = field(default_factory=Counter)


class Context:
    """What a detector gets in every hook: the current time, intel, and ways to report and act.

    One per detector (`Engine.contexts`), so `alert` knows who reports; the clock and the name
    cache are the engine's."""

    __slots__ = ("_engine", "detector")

    def __init__(self, engine: Engine, detector: str = "") -> None:
        self._engine = engine
        self.detector = detector

    @property
    def now(self) -> float:
        return self._engine.now

    @now.setter
    def now(self, value: float) -> None:
        self._engine.now = value

    @property
    def names(self) -> NameCache:
        return self._engine.names

    @property
    def config(self) -> Config:
        return self._engine.config

    @property
    def intel(self) -> IntelStore:
        return self._engine.intel

    @property
    def block_mode(self) -> bool:
        return self._engine.config.inline.mode == "block"

    def block(self, addr: str, evidence: str = "dns-answer") -> bool:
        """Put `addr` into the kernel drop set without judging the current flow (block mode and
        the block guard's rules apply); True if blocked. For addresses learnt from other
        traffic, such as the believed answers to a lookup of a listed domain."""
        return self._engine.block(addr, None, evidence)

    def alert(
        self,
        signature: Signature,
        *,
        at: float | None = None,
        pkt: Packet | None = None,
        flow: Flow | None = None,
        src: str | None = None,
        dst: str | None = None,
        proto: str | None = None,
        src_port: int | None = None,
        dest_port: int | None = None,
        app: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        count: int = 1,
        first_seen: float = 0.0,
        block: str | None = None,
        drop: bool = False,
    ) -> Alert:
        """Report a finding as this detector, at the current time (or `at`: an episode's own
        last event). Addresses default to the packet's (or the flow's client → server).

        With `block` set to an address and the engine in block mode, that address goes into the
        kernel drop set (if the block guard allows it) and the flow is dropped; with `drop`,
        only this flow is dropped (a listed name on a possibly shared server address). The
        alert then says ``blocked``.
        """
        if pkt is not None:
            src = src or pkt.src_ip
            dst = dst or pkt.dst_ip
            proto = proto or pkt.proto_name
            if src_port is None and pkt.proto in (TCP, UDP):
                src_port = pkt.sport
            if dest_port is None and pkt.proto in (TCP, UDP):
                dest_port = pkt.dport
        elif flow is not None:
            src = src or ip_to_str(flow.client)
            dst = dst or ip_to_str(flow.server)
            if src_port is None and flow.proto in (TCP, UDP):
                src_port = flow.client_port
            if dest_port is None and flow.proto in (TCP, UDP):
                dest_port = flow.server_port
        if proto is None:
            proto = {6: "TCP", 17: "UDP"}.get(flow.proto, str(flow.proto)) if flow else "IP"
        now = self._engine.now if at is None else at
        evidence = f"{self.detector}:{signature.sid}"
        engine = self._engine
        blocked = engine.block(block, flow, evidence) if block else drop and engine.drop_flow(flow)
        action = "blocked" if blocked else "allowed"
        if engine.guard.cap_reached:
            engine.guard.cap_reached = False
            self.alert(
                BLOCK_LIMIT,
                at=now,
                src=src,
                dst=block,
                proto=proto,
                details={"cap": engine.guard.cap, "active": len(engine.guard.active)},
            )
        alert = Alert(
            detector=self.detector,
            signature=signature,
            timestamp=now,
            src_ip=src or "",
            dest_ip=dst or "",
            proto=proto,
            src_port=src_port,
            dest_port=dest_port,
            action=action,
            direction=DIRECTION_NAMES[flow.direction] if flow is not None else "unknown",
            app_proto=flow.app if flow is not None else "",
            app=app or {},
            details=details or {},
            count=count,
            first_seen=first_seen or now,
            last_seen=now,
            intel_version=self._engine.intel.version,
        )
        self._engine.stats.alerts += 1
        self._engine.sink(alert)
        return alert


# (detector name, bound hook, its context): what the engine calls, in detector order.
HookList = list[tuple[str, Callable[..., None], Context]]
PortHooks = dict[int, HookList]  # server port -> its hook list


class Engine:
    """Flows + dissectors + detectors over decoded packets."""

    def __init__(
        self,
        config: Config,
        intel: IntelStore,
        sink: AlertSink,
        blocker: Blocker | None = None,
        detectors: list[Detector] | None = None,
    ) -> None:
        self.config = config
        self.intel = intel
        self.sink = sink
        self.blocker = blocker
        self.stats = EngineStats()
        self._home = _addresses("inline.home_nets", config.inline.home_nets)
        self._never_block = _addresses("inline.never_block", config.inline.never_block)
        # The engine's own: read it, but only the engine replaces it (`reset_flows`).
        self.flows = FlowTable(config.inline.max_flows, self._home)
        self.dissect = Dissectors()
        # The clock (packet time) and the address -> name cache every detector context shares.
        self.now = 0.0
        self.names = NameCache()
        self.ctx = Context(self)
        self.detectors = detectors if detectors is not None else registry.create_detectors()
        self.contexts: dict[str, Context] = {}  # one per detector
        self._options: dict[str, Options] = {}
        self._hooks: dict[str, HookList] = {}
        self._packet_first: HookList = []  # `packet` hooks by packet kind (`_dispatch_packets`)
        self._packet_later: HookList = []
        self._packet_first_port: dict[int, HookList] = {}
        self._packet_later_port: dict[int, HookList] = {}
        # The same for packets of a passed flow (VERDICT_PASS, not DNS): without the detectors
        # that set `packet_passed = False`.
        self._packet_passed_first: HookList = []
        self._packet_passed_later: HookList = []
        self._packet_passed_first_port: dict[int, HookList] = {}
        self._packet_passed_later_port: dict[int, HookList] = {}
        self._dispatch_src: dict[str, HookList] = {}
        self._dispatched: dict[int, tuple[dict[str, HookList], tuple[Any, ...]]] = {}
        self.guard = BlockGuard(self._home, self._never_block)
        self._holding: OrderedDict[int, Flow] = OrderedDict()  # flows holding a partial hello
        self._deep: dict[int, int] = {}  # port -> head packets (the ports' protocols)
        self._app_heads: dict[str, int] = {}  # protocol -> head packets
        self._next_tick = 0.0
        # Called on every tick after the detectors (the alert pipeline's aggregation windows).
        self.tickers: list[Callable[[float], None]] = []
        self.configure(config, first=True)

    # -- configuration -------------------------------------------------------------------------

    def configure(self, config: Config, first: bool = False) -> None:
        """Apply a (validated) config to every detector, staged: every detector whose options
        changed is checked first, then all take their new options; when any refuses, every
        detector is left (or put back) as it was and the ConfigError is raised."""
        home = _addresses("inline.home_nets", config.inline.home_nets)
        never_block = _addresses("inline.never_block", config.inline.never_block)
        staged: list[tuple[Detector, Options, bool]] = []
        for det in self.detectors:
            if det.name not in self.contexts:
                check_hooks(type(det))  # a misspelt hook is an error, not a hook never called
                self.contexts[det.name] = Context(self, det.name)
            values = config.detect.get(det.name) or validate_options(det, {})
            old = self._options.get(det.name)
            if not first and old is not None and old.as_dict() == dict(values):
                staged.append((det, old, False))
                continue
            opts = Options(det.name, values)
            type(det).check(opts)  # raises ConfigError naming the option; nothing changed yet
            staged.append((det, opts, True))
        done: list[Detector] = []
        try:
            for det, opts, changed in staged:
                if changed:
                    det.configure(opts)
                    done.append(det)
        except Exception:
            for det in done:  # put back the options each accepted before
                if det.name in self._options:
                    det.configure(self._options[det.name])
            raise
        self._options = {det.name: opts for det, opts, _ in staged}
        self.config = config
        self._home, self._never_block = home, never_block
        self.flows.max_flows = config.inline.max_flows
        self.flows.home = self._home
        self.guard.configure(home, never_block)
        enabled = [d for d, opts, _ in staged if opts.enabled]
        self._deep, self._app_heads = _heads(enabled)
        self._hooks = {
            name: [
                (d.name, fn, self.contexts[d.name])
                for d in enabled
                if (fn := hook(d, name)) is not None
            ]
            for name in HOOKS
        }
        self._dispatched = {}
        self._dispatch_packets(self._hooks)

    def _dispatch_packets(self, hooks_by_name: dict[str, HookList]) -> None:
        """Precomputed `packet` hook lists (dispatch as data) from `hooks_by_name["packet"]`:
        for a flow's first packet from a side and for later ones, by server port (ports no
        detector named share one list), and the same for packets of a passed flow, each in
        detector order, holding only the detectors that declared interest. Built once per hook
        table (a replay worker swaps tables)."""
        self._dispatch_src = hooks_by_name
        done = self._dispatched.get(id(hooks_by_name))
        if done is None or done[0] is not hooks_by_name:
            by_name = {d.name: d for d in self.detectors}
            want = [
                (
                    by_name[h[0]].packet_first_only,
                    by_name[h[0]].packet_ports,
                    by_name[h[0]].packet_passed,
                    h,
                )
                for h in hooks_by_name["packet"]
            ]
            ports = set().union(*(p for _, p, _, _ in want if p is not None))

            def hooks(first: bool, port: int | None, passed: bool) -> HookList:
                return [
                    h
                    for first_only, only, on_passed, h in want
                    if (first or not first_only)
                    and (only is None or port in only)
                    and (on_passed or not passed)
                ]

            def four(passed: bool) -> tuple[HookList, HookList, PortHooks, PortHooks]:
                return (
                    hooks(True, None, passed),
                    hooks(False, None, passed),
                    {port: hooks(True, port, passed) for port in ports},
                    {port: hooks(False, port, passed) for port in ports},
                )

            lists = four(False) + four(True)
            done = self._dispatched[id(hooks_by_name)] = (hooks_by_name, lists)
        (
            self._packet_first,
            self._packet_later,
            self._packet_first_port,
            self._packet_later_port,
            self._packet_passed_first,
            self._packet_passed_later,
            self._packet_passed_first_port,
            self._packet_passed_later_port,
        ) = done[1]

    def set_intel(self, intel: IntelStore) -> None:
        self.intel = intel

    def reset_flows(self) -> None:
        """Forget every flow, so each is judged again (after a reload: a new mode, new intel or
        new detector options apply to flows already under way, too)."""
        self.flows = FlowTable(self.config.inline.max_flows, self._home)
        self._holding.clear()

    def counters(self) -> dict[str, int]:
        """The figures a queue worker reports for its engine."""
        return {
            "flows": len(self.flows),
            "engine_packets": self.stats.packets,
            "hook_errors": sum(self.stats.hook_errors.values()),
            # block guard refusals and blocks, untrusted DNS answers
            **self.guard.stats(),
            "dns_untrusted": self.stats.dns_untrusted,
        }

    def deep_ports(self) -> dict[int, int]:
        """Ports whose flows detectors want to see further into: port → head packets; under
        `DEEP_ANY_PORT` the longest head of a protocol found by content (the kernel's bound for
        flows with VERDICT_DEEP)."""
        out = dict(self._deep)
        if self._app_heads:
            out[DEEP_ANY_PORT] = max(self._app_heads.values())
        return out

    def _judge_head(self, flow: Flow) -> None:
        """A flow without a verdict after a payload: DEEP while its protocol's head goes on
        (the packet count is the kernel's `ct packets`: both directions), else PASS."""
        app = flow.app  # known by content (TLS: no head, whatever the port), else the port's
        head = self._app_heads.get(app, 0) if app else self._deep.get(flow.server_port, 0)
        if head and flow.pkts_c + flow.pkts_s < head:
            if app:  # found by content: the kernel queues it past inline.head_packets
                flow.verdict = VERDICT_DEEP
        else:
            flow.verdict = VERDICT_PASS

    # -- the packet path -----------------------------------------------------------------------

    def process(self, pkt: Packet) -> int:
        """Run one packet through everything; returns the flow's verdict (VERDICT_*)."""
        stats = self.stats
        stats.packets += 1
        ts = pkt.ts
        self.now = ts
        if ts >= self._next_tick:
            self.tick(ts)
        flow, from_client = self.flows.lookup(pkt)
        if self._hooks is not self._dispatch_src:
            self._dispatch_packets(self._hooks)
        first = (flow.pkts_c if from_client else flow.pkts_s) == 1
        if flow.verdict != VERDICT_PASS or pkt.sport == 53 or pkt.dport == 53:
            if first:
                hooks = self._packet_first_port.get(flow.server_port, self._packet_first)
            else:
                hooks = self._packet_later_port.get(flow.server_port, self._packet_later)
        elif first:
            hooks = self._packet_passed_first_port.get(flow.server_port, self._packet_passed_first)
        else:
            hooks = self._packet_passed_later_port.get(flow.server_port, self._packet_passed_later)
        if hooks:
            for name, fn, ctx in hooks:
                try:
                    fn(ctx, pkt, flow, from_client)
                except Exception:
                    self._hook_failed(name, "packet")
        verdict = flow.verdict
        # `_dissect` does nothing for a judged flow (PASS, BLOCK) unless it is DNS: not called.
        if (
            pkt.payload_len
            and pkt.fragment != 2
            and (verdict in (VERDICT_NONE, VERDICT_DEEP) or pkt.sport == 53 or pkt.dport == 53)
        ):
            self._dissect(pkt, flow, from_client)
            verdict = flow.verdict
        if verdict == VERDICT_BLOCK:
            stats.blocked_packets += 1
        return verdict

    def _dissect(self, pkt: Packet, flow: Flow, from_client: bool) -> None:
        d = self.dissect
        if pkt.sport == 53 or pkt.dport == 53:
            msg = d.dns(pkt.payload, pkt.proto == TCP)
            if msg is not None:
                flow.app = "dns"
                if not msg.response:
                    # (a resolver already protected is not parsed from text again)
                    if dnstrust.note_query(flow, msg) and flow.server not in self.guard.protected:
                        self.guard.protect(ip_to_str(flow.server), "resolver")
                elif dnstrust.believe_answer(flow, msg, from_client, pkt.side):
                    msg.trusted = True
                    msg.chain_names, msg.chain_addresses = dnstrust.chain(msg)
                    self.names.learn(msg)
                else:
                    self.stats.dns_untrusted += 1
                self._run("dns", pkt, flow, msg)
            return
        verdict = flow.verdict
        if verdict and verdict != VERDICT_DEEP:
            return
        if not from_client:
            if pkt.proto == TCP:
                if not flow.app and self._app_heads:  # a server that greets first
                    flow.app = server_greeting(pkt.payload[:200])
                if flow.app or verdict or flow.server_port in self._deep:
                    self._judge_head(flow)
            return
        if pkt.proto == TCP:
            payload = pkt.payload
            eng = flow.notes.get("engine") if flow.notes else None
            held = eng.get("hello") if eng else None
            if len(payload) > HEAD_BYTES:
                payload = payload[:HEAD_BYTES]
            if held is not None:
                self._more_hello(pkt, flow, held, payload)
            elif verdict == VERDICT_DEEP:
                # Further into a cleartext flow's head: every HTTP request of a keep-alive
                # connection; other protocols are read by the detectors' packet hooks.
                if flow.app == "http" and 0x41 <= payload[0] <= 0x5A:
                    req = d.http(payload)
                    if req is not None:
                        self._run_http(pkt, flow, req)
            elif payload[0] == 0x16:
                hello = d.tls(payload)
                if hello is not None and hello.partial:
                    # A ClientHello over several segments (post-quantum key shares): hold the
                    # start, judge the flow once the rest arrives.
                    flow.note("engine")["hello"] = [payload]
                    self._hold(flow)
                    return
                if hello is not None:
                    flow.app = "tls"
                    self._run("tls", pkt, flow, hello)
            elif 0x41 <= payload[0] <= 0x5A:  # an upper-case letter: maybe an HTTP method
                req = d.http(payload)
                if req is not None:
                    flow.app = "http"
                    self._run_http(pkt, flow, req)
            if flow.verdict in (VERDICT_NONE, VERDICT_DEEP) and not (eng and "hello" in eng):
                self._judge_head(flow)
        elif pkt.proto == UDP and pkt.dport == 443 and pkt.data[pkt.payload_off] & 0xC0 == 0xC0:
            self._quic(pkt, flow)

    def _more_hello(self, pkt: Packet, flow: Flow, held: list[bytes], payload: bytes) -> None:
        """Another segment of a held ClientHello: parse the joined bytes, or keep holding."""
        held.append(payload)
        joined = b"".join(held)[:HELLO_BYTES]
        hello = self.dissect.tls(joined)
        holding = hello is not None and hello.partial
        if holding and len(held) < HELLO_SEGMENTS and len(joined) < HELLO_BYTES:
            self._hold(flow)
            return
        del flow.note("engine")["hello"]
        self._holding.pop(id(flow), None)
        if hello is None:
            return
        flow.app = "tls"
        self._run("tls", pkt, flow, hello)

    def _quic(self, pkt: Packet, flow: Flow) -> None:
        """A QUIC long-header packet from the client: the Initial(s) carry the ClientHello."""
        notes = flow.note("engine")
        if notes.get("quic_done"):
            return
        payload = pkt.payload
        # Each datagram is decrypted once; what a flow keeps is its CRYPTO chunks, bounded.
        chunks = self.dissect.quic_crypto(payload) if len(payload) <= HEAD_BYTES else []
        held: list[tuple[int, bytes]] = notes.setdefault("quic", [])
        held += chunks
        count = notes["quic_n"] = notes.get("quic_n", 0) + 1
        size = sum(len(c) for _, c in held)
        hello = self.dissect.quic_hello(held) if held else None
        if hello is not None and hello.partial and count < HELLO_SEGMENTS and size <= HELLO_BYTES:
            self._hold(flow)
            return
        notes["quic_done"] = True
        del notes["quic"]
        self._holding.pop(id(flow), None)
        if hello is not None:
            flow.app = "quic"
            self._run("tls", pkt, flow, hello)

    def _hold(self, flow: Flow) -> None:
        """`flow` holds a partial hello: keep it among the HOLDING_FLOWS most recent holders."""
        holding = self._holding
        key = id(flow)
        if key in holding:
            holding.move_to_end(key)
            return
        while len(holding) >= HOLDING_FLOWS:
            _, oldest = holding.popitem(last=False)
            notes = oldest.notes.get("engine") if oldest.notes else None
            if notes is not None:
                notes.pop("hello", None)
                if notes.pop("quic", None) is not None:
                    notes["quic_done"] = True
            self.stats.holds_given_up += 1
        holding[key] = flow  # (the reference keeps the id unique while it is held)

    def _run_http(self, pkt: Packet, flow: Flow, req: HttpRequest) -> None:
        """The http hooks on a request head and on each request pipelined behind it in the
        same segment (the dissector's `pipelined`), in order, each with its own buffers."""
        self._run("http", pkt, flow, req)
        for more in req.pipelined:
            self._run("http", pkt, flow, more)

    def _run(self, hook_name: str, pkt: Packet, flow: Flow, record: Any) -> None:
        for name, fn, ctx in self._hooks[hook_name]:
            try:
                fn(ctx, pkt, flow, record)
            except Exception:
                self._hook_failed(name, hook_name)

    def tick(self, now: float) -> None:
        """Once a second: detector housekeeping and flow ageing."""
        self._next_tick = now + 1.0
        self.now = now
        for name, fn, ctx in self._hooks["tick"]:
            try:
                fn(ctx, now)
            except Exception:
                self._hook_failed(name, "tick")
        for fn in self.tickers:
            fn(now)
        self.flows.expire(now)

    def _hook_failed(self, detector: str, hook_name: str) -> None:
        key = f"{detector}.{hook_name}"
        if not self.stats.hook_errors[key]:
            log.exception("detector hook %s failed (further failures only counted)", key)
        self.stats.hook_errors[key] += 1

    # -- acting --------------------------------------------------------------------------------

    def block(self, addr: str, flow: Flow | None, evidence: str = "") -> bool:
        """Block `addr` (and drop `flow`) in block mode if the guard allows; True if blocked."""
        if self.config.inline.mode != "block":
            return False
        ttl = self.config.inline.block_ttl
        if not self.guard.allow(addr, evidence or "unknown", ttl):
            return False
        if flow is not None:
            flow.verdict = VERDICT_BLOCK
        if self.blocker is not None:
            self.blocker.block(addr, ttl)
        return True

    def drop_flow(self, flow: Flow | None) -> bool:
        """Drop just `flow` (its conntrack entry is marked) in block mode; True if dropped."""
        if self.config.inline.mode != "block" or flow is None:
            return False
        flow.verdict = VERDICT_BLOCK
        return True

    def is_never_block(self, addr: str) -> bool:
        """Whether `addr` must never be blocked (in ``inline.never_block``, or not an address)."""
        packed = packed_address(addr)
        return packed is None or self._never_block.contains(packed)

    def protect(self, addr: str, why: str) -> None:
        """Never block `addr` automatically (the office gateway, the hub)."""
        self.guard.protect(addr, why)


def _heads(detectors: list[Detector]) -> tuple[dict[int, int], dict[str, int]]:
    """The longest head each port and each protocol is asked for by `detectors`."""
    ports: dict[int, int] = {}
    apps: dict[str, int] = {}
    for d in detectors:
        for port, n in getattr(d, "deep_ports", {}).items():
            ports[port] = max(n, ports.get(port, 0))
        for app, n in getattr(d, "app_heads", {}).items():
            apps[app] = max(n, apps.get(app, 0))
    return ports, apps


def _addresses(key: str, entries: tuple[str, ...]) -> AddrSet:
    try:
        return AddrSet(entries)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


class WorkerEngine(Engine):
    """The engine of a queue worker process (``inline.workers`` > 1): it loads its own copy of
    the intel files the main process names. Passed to the queue worker as its engine factory
    (``appliance.inline.contract.EngineFactory``)."""

    def __init__(
        self, config: Config, intel_paths: list[str], sink: AlertSink, blocker: Blocker
    ) -> None:
        super().__init__(config, _load_intel(config, intel_paths), sink, blocker)

    def load_intel(self, paths: list[str]) -> None:
        self.set_intel(_load_intel(self.config, paths))


def _load_intel(config: Config, paths: list[str]) -> IntelStore:
    from appliance.detect.intel import intel_cache_dir, load_files

    cache_dir = intel_cache_dir(config.device.state_dir)
    return load_files(paths, cache=config.intel.cache, cache_dir=cache_dir)
