"""The kernel side of the packet path: which packets reach Python, and what the kernel drops.

Everything lives in our own nftables table, ``inet watchpost``, replaced whole in one ``nft -f``
transaction (add + delete + create), so a ruleset is never half-applied and a daemon killed with
``kill -9`` leaves a table the next start simply replaces. Other tables are never touched.

Chains of ``inet watchpost`` (all on the forward hook, all limited to bridged traffic, i.e.
packets whose input and output device is the bridge; the appliance's own management traffic goes
through input/output, never forward):

- ``block`` (priority -10, block mode only): drops flows whose conntrack mark says blocked and
  traffic to or from the drop sets ``block4``/``block6`` (interval sets with per-element timeouts).
- ``heads`` (priority 0, only where the kernel has nft's native ``queue`` expression): sends the
  heads of connections to NFQUEUE.
- ``verdict`` (priority 10): copies the verdict the daemon put in the packet mark into the
  conntrack mark, and (block mode) drops a packet whose connection is now marked blocked.

Why the packet mark and a later chain: an NFQUEUE accept verdict ends only the base chain that
queued the packet; the packet then goes on through the base chains of higher priority on the
same hook. So the daemon answers "accept with mark PASS/BLOCK" and ``verdict``, at a later
priority, saves it into the connection (``ct mark``); from then on the queue rules skip the flow
(``ct mark & MASK != 0``) and the ``block`` chain drops a blocked one. This needs one traversal
per packet, where Suricata's repeat mode sends every judged packet through the hook twice. A
blocked packet is accepted with the BLOCK mark and then dropped by ``verdict`` so its connection
carries the mark; the blocked address also goes into the drop set, which catches the flows whose
first packet was dropped (their conntrack entry is never confirmed, so it cannot keep a mark).

Where the kernel lacks nft's ``queue`` expression (this build machine; ``nft`` says "No such file
or directory"), only the queue rules go into our own iptables-nft chain ``WATCHPOST`` in the
``filter`` table of each family, jumped to from ``FORWARD`` only by packets of flows without a
verdict and by stealth probes (`JUMPS`: a judged flow's packets leave at the first rule of the
hook's first chain, and the verdict chain lets them go at its first rule too)
(``-j NFQUEUE --queue-bypass``,
``connbytes``, ``connmark`` and ``physdev`` through nft_compat); the rest stays in our table.
That chain and its jump are replaced in one ``iptables-restore --noflush`` transaction and
removed the same way. We detect which to use at start with ``nft --check`` on a throwaway table.

What gets queued: the first ``inline.head_packets`` packets of each connection (both directions
counted together), longer heads on the ports detectors ask for (`Engine.deep_ports`) and on
connections whose conntrack mark says DEEP (the engine found a cleartext protocol by content;
up to the longest protocol head, port 0 of `Engine.deep_ports`), all DNS
(UDP and TCP port 53), and nothing of a connection that already has a verdict. Every queue rule
has bypass, so with no daemon listening traffic flows on. Only unicast is queued: the bridge
clones a broadcast or multicast frame (local delivery plus forwarding), the clones share the
packet's unconfirmed conntrack entry, and the kernel drops such a packet when it is queued
(``nf_ct_drop_unconfirmed``): a DHCP discover would be lost. For the same reason the service
pauses queueing while the bridge device is promiscuous (a capture on br0).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import Config
from appliance.packet.addrset import AddrSet
from appliance.packet.flows import DEEP_ANY_PORT

log = logging.getLogger(__name__)

TABLE = "watchpost"
CHAIN = "WATCHPOST"
PROBE_TABLE = "watchpost_probe"

# Verdict bits in the packet mark and the conntrack mark (chosen clear of the marks commonly used
# by kube-proxy, Tailscale and WireGuard tools).
MARK_MASK = 0x0C000000
MARK_PASS = 0x04000000
MARK_BLOCK = 0x08000000
# Both bits: no verdict yet, but queue this flow up to `RulesetSpec.deep_any` packets (a
# cleartext protocol the engine found by content on a port without a deep rule).
MARK_DEEP = MARK_PASS | MARK_BLOCK

# Priorities of our base chains on the forward hook (iptables' filter table sits at 0).
PRIO_BLOCK = -10
PRIO_QUEUE = 0
PRIO_VERDICT = 10

DNS_PORT = 53
# Stealth scan probes (no SYN/ACK/RST, no connection) queued at most this fast.
STEALTH_RATE = 100
STEALTH_BURST = 200
# iptables' multiport match takes at most 15 ports per rule.
MULTIPORT_MAX = 15

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FirewallError(RuntimeError):
    """A ruleset operation failed; the message says what and the tool's first error line."""


@dataclass(frozen=True)
class RulesetSpec:
    """Everything the ruleset text depends on (rendered by `render_nft` / `render_iptables`)."""

    bridge: str
    uplink: str
    office: str
    queue_first: int
    queue_last: int
    head_packets: int
    block_mode: bool
    native_queue: bool
    # Port → head packets for flows detectors want to see further into (TCP).
    deep: tuple[tuple[int, int], ...] = ()
    # Head packets of flows marked DEEP (0: the engine marks none).
    deep_any: int = 0
    # Drop-set elements carried over from the ruleset being replaced: (address, seconds; 0 = no
    # timeout).
    blocked: tuple[tuple[str, int], ...] = ()
    # False: no queue rules at all (inspection paused, e.g. while the bridge is promiscuous).
    queueing: bool = True

    @classmethod
    def from_config(
        cls,
        config: Config,
        native_queue: bool,
        deep_ports: Mapping[int, int] | None = None,
        blocked: Iterable[tuple[str, int]] = (),
        queueing: bool = True,
    ) -> RulesetSpec:
        inl = config.inline
        head = inl.head_packets
        ports = dict(deep_ports or {})
        deep_any = ports.pop(DEEP_ANY_PORT, 0)
        deep = tuple(sorted((p, n) for p, n in ports.items() if n > head))
        for port, n in deep:
            if not 0 < port < 65536 or n < 1:
                raise FirewallError(f"deep port {port} with {n} packets is out of range")
        return cls(
            bridge=inl.bridge,
            uplink=inl.uplink,
            office=inl.office,
            queue_first=inl.queue,
            queue_last=inl.queue + inl.workers - 1,
            head_packets=head,
            block_mode=inl.mode == "block",
            native_queue=native_queue,
            deep=deep,
            deep_any=max(deep_any, head) if deep_any > 0 else 0,
            blocked=tuple(blocked),
            queueing=queueing,
        )

    def __post_init__(self) -> None:
        for name in ("bridge", "uplink", "office"):
            value = getattr(self, name)
            if not _is_ifname(value):
                raise FirewallError(f"inline.{name}: not a valid interface name: {value!r}")
        if not 0 <= self.queue_first <= self.queue_last <= 65535:
            raise FirewallError(f"queue range {self.queue_first}-{self.queue_last} is invalid")

    @property
    def queues(self) -> list[int]:
        return list(range(self.queue_first, self.queue_last + 1))

    def deep_groups(self) -> list[tuple[int, list[int]]]:
        """Deep ports grouped by head length, in chunks that fit one multiport rule."""
        by_n: dict[int, list[int]] = {}
        for port, n in self.deep:
            by_n.setdefault(n, []).append(port)
        out = []
        for n in sorted(by_n, reverse=True):
            ports = by_n[n]
            for i in range(0, len(ports), MULTIPORT_MAX):
                out.append((n, ports[i : i + MULTIPORT_MAX]))
        return out


def _is_ifname(name: str) -> bool:
    return 0 < len(name) < 16 and all(c.isalnum() or c in "-_.@:" for c in name)


# -- rendering (pure functions: the ruleset text is unit-tested) --------------------------------


def _nft_queue(spec: RulesetSpec) -> str:
    target = (
        str(spec.queue_first)
        if spec.queue_first == spec.queue_last
        else f"{spec.queue_first}-{spec.queue_last}"
    )
    return f"counter queue flags bypass to {target}"


def _set_elements(spec: RulesetSpec, version: int) -> str:
    items = []
    for addr, ttl in spec.blocked:
        net = ipaddress.ip_network(addr, strict=False)
        if net.version != version:
            continue
        items.append(f"{_net_text(net)} timeout {ttl}s" if ttl > 0 else _net_text(net))
    return f"\t\telements = {{ {', '.join(items)} }}\n" if items else ""


def _net_text(net: Network) -> str:
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def render_nft(spec: RulesetSpec) -> str:
    """The ``inet watchpost`` table as an nft script that replaces any existing one atomically."""
    b = json.dumps(spec.bridge)
    bridged = f"\t\tiifname != {b} return\n\t\toifname != {b} return\n"
    mask, keep = f"0x{MARK_MASK:08x}", f"0x{~MARK_MASK & 0xFFFFFFFF:08x}"
    out = [
        f"add table inet {TABLE}\n",
        f"delete table inet {TABLE}\n",
        f"table inet {TABLE} {{\n",
    ]
    for version, name in ((4, "block4"), (6, "block6")):
        out.append(
            f"\tset {name} {{\n\t\ttype ipv{version}_addr\n\t\tflags interval, timeout\n"
            + _set_elements(spec, version)
            + "\t}\n"
        )
    if spec.block_mode:
        out.append(
            f"\tchain block {{\n\t\ttype filter hook forward priority {PRIO_BLOCK}; "
            "policy accept;\n"
            + bridged
            + f"\t\tct mark & {mask} == 0x{MARK_BLOCK:08x} counter drop\n"
            "\t\tip saddr @block4 counter drop\n"
            "\t\tip daddr @block4 counter drop\n"
            "\t\tip6 saddr @block6 counter drop\n"
            "\t\tip6 daddr @block6 counter drop\n"
            "\t}\n"
        )
    if spec.native_queue and spec.queueing:
        q = _nft_queue(spec)
        lines = [
            "\t\tmeta pkttype != host return\n",
            f"\t\tmeta l4proto {{ tcp, udp }} th dport {DNS_PORT} {q}\n",
            f"\t\tmeta l4proto {{ tcp, udp }} th sport {DNS_PORT} {q}\n",
        ]
        for n, ports in spec.deep_groups():
            pset = "{ " + ", ".join(map(str, ports)) + " }"
            lines.append(f"\t\ttcp dport {pset} ct packets <= {n} {q}\n")
            lines.append(f"\t\ttcp sport {pset} ct packets <= {n} {q}\n")
        lines.append(f"\t\tct packets <= {spec.head_packets} {q}\n")
        lines.append(
            "\t\tct state invalid tcp flags & (syn | ack | rst) == 0 "
            f"limit rate {STEALTH_RATE}/second burst {STEALTH_BURST} packets {q}\n"
        )
        # A flow with a verdict leaves at the first rule (stealth probes have no connection:
        # `ct mark` does not match them, so they are let through to the stealth rule).
        judged = f"\t\tct mark & {mask} != 0x00000000 return\n"
        if spec.deep_any:  # a flow marked DEEP (bridged: only the daemon marks it) goes on
            judged = (
                f"\t\tct mark & {mask} == 0x{MARK_DEEP:08x} ct packets <= {spec.deep_any} {q}\n"
                + judged
            )
        out.append(
            f"\tchain heads {{\n\t\ttype filter hook forward priority {PRIO_QUEUE}; "
            "policy accept;\n" + judged + bridged + "".join(lines) + "\t}\n"
        )
    # Only a packet the daemon just answered carries a verdict mark: every other packet (all of a
    # judged flow's) leaves at the first rule, before the bridged checks.
    verdict = [
        bridged,
        f"\t\tmeta mark & {mask} == 0x{MARK_PASS:08x} "
        f"ct mark set ct mark & {keep} | 0x{MARK_PASS:08x} counter\n",
        f"\t\tmeta mark & {mask} == 0x{MARK_BLOCK:08x} "
        f"ct mark set ct mark & {keep} | 0x{MARK_BLOCK:08x} counter\n",
        f"\t\tmeta mark & {mask} == 0x{MARK_DEEP:08x} "
        f"ct mark set ct mark & {keep} | 0x{MARK_DEEP:08x} counter\n",
    ]
    if spec.block_mode:
        verdict.append(f"\t\tct mark & {mask} == 0x{MARK_BLOCK:08x} counter drop\n")
    out.append(
        f"\tchain verdict {{\n\t\ttype filter hook forward priority {PRIO_VERDICT}; "
        f"policy accept;\n\t\tmeta mark & {mask} == 0x00000000 return\n"
        + "".join(verdict)
        + "\t}\n"
    )
    out.append("}\n")
    return "".join(out)


def render_iptables_rules(spec: RulesetSpec) -> list[str]:
    """The rules of our ``WATCHPOST`` chain (the same for iptables and ip6tables)."""
    if spec.queue_first == spec.queue_last:
        target = f"-j NFQUEUE --queue-num {spec.queue_first} --queue-bypass"
    else:
        target = f"-j NFQUEUE --queue-balance {spec.queue_first}:{spec.queue_last} --queue-bypass"
    # (Flows with a verdict get here only when marked DEEP: the jumps test the connmark.)

    def heads(n: int) -> str:
        return f"-m connbytes --connbytes 0:{n} --connbytes-dir both --connbytes-mode packets"

    rules = [f"-A {CHAIN} -m pkttype ! --pkt-type unicast -j RETURN"]
    if spec.deep_any:  # (a DEEP mark is only ever set on bridged flows: no physdev match)
        mark = f"-m connmark --mark 0x{MARK_DEEP:x}/0x{MARK_MASK:x}"
        rules.append(f"-A {CHAIN} {mark} {heads(spec.deep_any)} {target}")
        rules.append(f"-A {CHAIN} -m connmark ! --mark 0x0/0x{MARK_MASK:x} -j RETURN")

    for pin, pout in ((spec.office, spec.uplink), (spec.uplink, spec.office)):
        phys = f"-m physdev --physdev-in {pin} --physdev-out {pout}"
        for proto in ("udp", "tcp"):
            rules.append(f"-A {CHAIN} {phys} -p {proto} -m multiport --ports {DNS_PORT} {target}")
        for n, ports in spec.deep_groups():
            plist = ",".join(map(str, ports))
            rules.append(
                f"-A {CHAIN} {phys} -p tcp -m multiport --ports {plist} {heads(n)} {target}"
            )
        rules.append(f"-A {CHAIN} {phys} {heads(spec.head_packets)} {target}")
        # Stealth probes (FIN, NULL, Xmas) start no connection, so conntrack calls them invalid
        # and the head rules never see them; queue them at a bounded rate for the scan detector.
        rules.append(
            f"-A {CHAIN} {phys} -p tcp --tcp-flags SYN,ACK,RST NONE -m conntrack --ctstate INVALID"
            f" -m limit --limit {STEALTH_RATE}/sec --limit-burst {STEALTH_BURST} {target}"
        )
    return rules


# The jumps to our chain, cheapest first: a packet of a flow with a verdict fails the first (a
# native `ct mark` test) and the second (a TCP flags test, failed by anything with ACK/SYN/RST,
# and by all UDP at the protocol test) and leaves FORWARD without entering our chain. The second
# one is there for stealth probes (FIN, NULL, Xmas): conntrack calls them invalid and gives
# them no connection, so `ct mark` never matches them. The physdev port matches (nft_compat,
# slow) run only for flow heads.
JUMPS = (
    f"-A FORWARD -m connmark --mark 0x0/0x{MARK_MASK:x} -j {CHAIN}",
    f"-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST,ACK NONE -m conntrack --ctstate INVALID "
    f"-j {CHAIN}",
    # A flow the engine marked DEEP (a cleartext protocol followed to its head): queued on.
    f"-A FORWARD -m connmark --mark 0x{MARK_DEEP:x}/0x{MARK_MASK:x} -j {CHAIN}",
)


def render_iptables(spec: RulesetSpec, stale_jumps: Iterable[str] = ()) -> str:
    """An ``iptables-restore --noflush`` script: (re)create our chain and exactly our jumps.

    Declaring the chain flushes it if it exists; `stale_jumps` are the FORWARD rules (as
    ``iptables -S`` prints them) that jump to it now, deleted in the same transaction.
    """
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    lines += ["-D" + j[2:] for j in stale_jumps]
    lines += render_iptables_rules(spec)
    lines += JUMPS
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_iptables_removal(jumps: Iterable[str], chain_exists: bool) -> str | None:
    """A restore script that deletes our jumps and chain; None if there is nothing to remove."""
    lines = ["-D" + j[2:] for j in jumps]
    if chain_exists:
        lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
    if not lines:
        return None
    return "\n".join(["*filter", *lines, "COMMIT"]) + "\n"


# -- running the tools ---------------------------------------------------------------------------


Runner = Callable[[list[str], str | None], subprocess.CompletedProcess[str]]


def run_tool(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a firewall tool; a missing binary becomes a FirewallError naming the package."""
    if shutil.which(argv[0]) is None:
        package = "nftables" if argv[0] == "nft" else "iptables"
        raise FirewallError(f"{argv[0]} not found (install the {package} package)")
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


def _first_error(proc: subprocess.CompletedProcess[str]) -> str:
    for line in (proc.stderr or proc.stdout or "").splitlines():
        if line.strip():
            return line.strip()
    return f"exit code {proc.returncode}"


@dataclass
class Counters:
    """Kernel-side packet counts of the current ruleset (reset when it is replaced)."""

    queued: int = 0  # packets the queue rules sent to NFQUEUE (incl. bypassed ones)
    blocked: int = 0  # packets the block rules dropped
    verdicts: int = 0  # packets whose verdict mark was saved into their connection


@dataclass
class Firewall:
    """Applies, replaces and removes our ruleset; manages the drop sets."""

    config: Config
    runner: Runner = run_tool
    sysctl_root: Path = Path("/proc/sys")
    _native: bool | None = field(default=None, init=False)
    _spec: RulesetSpec | None = field(default=None, init=False)

    @property
    def applied(self) -> bool:
        """Whether this instance has put a ruleset in place (and not removed it)."""
        return self._spec is not None

    # -- detection ------------------------------------------------------------------------------

    def native_queue(self) -> bool:
        """Whether the kernel has nft's native queue expression (checked once, no side effect)."""
        if self._native is None:
            probe = (
                f"table inet {PROBE_TABLE} {{\n\tchain probe {{\n"
                "\t\tqueue flags bypass to 0\n\t}\n}\n"
            )
            proc = self.runner(["nft", "--check", "-f", "-"], probe)
            if proc.returncode == 0:
                self._native = True
            else:
                err = proc.stderr or ""
                if "No such file or directory" not in err and "not supported" not in err:
                    log.warning("nft queue probe failed unexpectedly: %s", _first_error(proc))
                self._native = False
            log.info(
                "nft native queue expression: %s",
                "yes" if self._native else "no, queue rules go into iptables-nft",
            )
        return self._native

    # -- whole ruleset --------------------------------------------------------------------------

    def apply(
        self,
        config: Config | None = None,
        deep_ports: Mapping[int, int] | None = None,
        queueing: bool = True,
        blocked: Mapping[str, float | None] | None = None,
    ) -> None:
        """Put the ruleset for `config` in place, replacing whatever is there (ours only).

        Drop-set elements of a table being replaced are carried over with their remaining time,
        so a reload or restart does not unblock anything. The table (with the verdict chain) goes
        in before the queue rules, so a queued packet always finds the chain that saves its mark.
        With `queueing` false there are no queue rules: nothing is inspected, blocks still apply.
        `blocked` adds drop-set elements (address → seconds left, None: no timeout), e.g. those
        of a dead daemon's table read before it was removed.
        """
        if config is not None:
            self.config = config
        self._prepare_kernel()
        native = self.native_queue()
        carried = self._carry({**(blocked or {}), **self.blocked()})
        spec = RulesetSpec.from_config(self.config, native, deep_ports, carried, queueing)
        self._nft(render_nft(spec), "apply the nftables ruleset")
        try:
            for family in (4, 6):
                if native or not queueing:
                    self._remove_iptables(family)
                else:
                    jumps, _exists = self._iptables_state(family)
                    self._restore(family, render_iptables(spec, jumps), "apply the queue rules")
        except FirewallError:
            self.remove()
            raise
        self._spec = spec

    def _carry(self, elements: Mapping[str, float | None]) -> list[tuple[str, int]]:
        """Drop-set elements to put into a new table: never-block entries left out, and
        elements inside a wider one dropped (an interval set refuses overlaps)."""
        nets = self.never_block()
        parsed: list[tuple[Network, float | None]] = []
        for addr, left in elements.items():
            try:
                net = _parse_net(addr)
            except FirewallError:
                continue
            if nets.overlapping(net) is None:
                parsed.append((net, left))
        out = []
        for net, left in parsed:
            if any(
                o != net and o.version == net.version and net.subnet_of(o)  # type: ignore[arg-type]
                for o, _ in parsed
            ):
                continue
            out.append((_net_text(net), 0 if left is None else max(1, int(left))))
        return out

    def remove(self) -> None:
        """Remove our table, chains and jumps (queue rules first); other rules stay untouched."""
        errors = []
        for family in (4, 6):
            try:
                self._remove_iptables(family)
                self._drop_empty_filter_table(family)
            except FirewallError as e:
                errors.append(str(e))
        proc = self.runner(["nft", "list", "table", "inet", TABLE], None)
        if proc.returncode == 0:
            try:
                self._nft(f"delete table inet {TABLE}\n", "remove the nftables table")
            except FirewallError as e:
                errors.append(str(e))
        self._spec = None
        if errors:
            raise FirewallError("; ".join(errors))

    def present(self) -> dict[str, Any]:
        """What of ours is in the kernel now (for tests and status): table text, chains, jumps."""
        out: dict[str, Any] = {}
        proc = self.runner(["nft", "list", "table", "inet", TABLE], None)
        out["table"] = proc.stdout if proc.returncode == 0 else None
        for family in (4, 6):
            jumps, exists = self._iptables_state(family)
            out[f"iptables{family}_jumps"] = jumps
            out[f"iptables{family}_chain"] = self._iptables_rules(family) if exists else None
        return out

    # -- drop sets ------------------------------------------------------------------------------

    def never_block(self) -> AddrSet:
        return AddrSet(self.config.inline.never_block)

    def block(self, addr: str, ttl: int) -> bool:
        """Drop traffic to and from `addr` (an address or network) for `ttl` seconds (0: until
        unblocked). Refused (False) for anything overlapping ``inline.never_block``."""
        net = _parse_net(addr)
        if self.never_block().overlapping(net) is not None:
            log.info("not blocking %s: inline.never_block covers it", addr)
            return False
        setname = "block4" if net.version == 4 else "block6"
        text = _net_text(net)
        same_family = [n for n in map(_parse_net, self.blocked()) if n.version == net.version]
        if any(n != net and n.supernet_of(net) for n in same_family):  # type: ignore[arg-type]
            return True  # already covered by a wider blocked network
        # Narrower elements inside the new network would overlap it (an error in an interval
        # set): replace them in the same transaction.
        lines = [
            f"delete element inet {TABLE} {setname} {{ {_net_text(n)} }}"
            for n in same_family
            if n != net and n.subnet_of(net)  # type: ignore[arg-type]
        ]
        timeout = f" timeout {int(ttl)}s" if ttl > 0 else ""
        add = f"add element inet {TABLE} {setname} {{ {text}{timeout} }}"
        if net in same_family:
            # Already there: delete and add again to restart its timeout ("add" alone keeps
            # the old one). Not mixed with other deletes: the kernel refuses that combination.
            refresh = f"delete element inet {TABLE} {setname} {{ {text} }}\n{add}\n"
            try:
                self._nft(refresh, f"block {addr}")
            except FirewallError:
                self._nft(add + "\n", f"block {addr}")  # it expired meanwhile
        else:
            self._nft("\n".join([*lines, add]) + "\n", f"block {addr}")
        log.info("blocked %s for %s", text, f"{ttl}s" if ttl > 0 else "ever")
        return True

    def unblock(self, addr: str) -> bool:
        """Remove `addr` from the drop set; False if it was not there."""
        net = _parse_net(addr)
        if net not in {_parse_net(a) for a in self.blocked()}:
            return False
        setname = "block4" if net.version == 4 else "block6"
        self._nft(
            f"delete element inet {TABLE} {setname} {{ {_net_text(net)} }}\n", f"unblock {addr}"
        )
        log.info("unblocked %s", addr)
        return True

    def blocked(self) -> dict[str, float | None]:
        """Blocked address/network → seconds until it expires (None: no timeout)."""
        out: dict[str, float | None] = {}
        for setname in ("block4", "block6"):
            proc = self.runner(["nft", "-j", "list", "set", "inet", TABLE, setname], None)
            if proc.returncode != 0:
                continue  # no table (yet): nothing blocked
            out.update(parse_set_elements(proc.stdout))
        return out

    # -- counters -------------------------------------------------------------------------------

    def counters(self) -> Counters:
        """Packet counters of the queue, block and verdict rules (for telemetry)."""
        c = Counters()
        proc = self.runner(["nft", "-j", "list", "table", "inet", TABLE], None)
        if proc.returncode == 0:
            for chain, rule in _nft_rules(proc.stdout):
                pkts = _rule_packets(rule)
                kinds = {next(iter(e)) for e in rule.get("expr", []) if isinstance(e, dict)}
                if chain == "heads" and "queue" in kinds:
                    c.queued += pkts
                elif "drop" in kinds:
                    c.blocked += pkts
                elif chain == "verdict" and "mangle" in kinds:
                    c.verdicts += pkts
        if not self.native_queue():
            for family in (4, 6):
                c.queued += self._iptables_queue_packets(family)
        return c

    # -- helpers --------------------------------------------------------------------------------

    def _prepare_kernel(self) -> None:
        """Conntrack accounting (for packet counts) and br_netfilter (bridged → inet hooks)."""
        self._sysctl("net/netfilter/nf_conntrack_acct", "1", required=True)
        bridge = self.sysctl_root / "net/bridge/bridge-nf-call-iptables"
        if not bridge.exists():
            subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
        if not bridge.exists():
            raise FirewallError(
                "br_netfilter is not loaded: bridged traffic cannot reach netfilter "
                "(modprobe br_netfilter)"
            )
        self._sysctl("net/bridge/bridge-nf-call-iptables", "1", required=True)
        self._sysctl("net/bridge/bridge-nf-call-ip6tables", "1", required=False)

    def _sysctl(self, key: str, value: str, required: bool) -> None:
        path = self.sysctl_root / key
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as e:
            if required:
                raise FirewallError(f"cannot set {key.replace('/', '.')}={value}: {e}") from None
            log.warning("cannot set %s=%s: %s", key.replace("/", "."), value, e)

    def _nft(self, script: str, what: str) -> None:
        proc = self.runner(["nft", "-f", "-"], script)
        if proc.returncode != 0:
            raise FirewallError(f"cannot {what}: nft: {_first_error(proc)}")

    def _restore(self, family: int, script: str, what: str) -> None:
        tool = "iptables-restore" if family == 4 else "ip6tables-restore"
        proc = self.runner([tool, "--noflush"], script)
        if proc.returncode != 0:
            raise FirewallError(f"cannot {what} (IPv{family}): {tool}: {_first_error(proc)}")

    def _ipt(self, family: int) -> str:
        return "iptables" if family == 4 else "ip6tables"

    def _iptables_state(self, family: int) -> tuple[list[str], bool]:
        """(FORWARD rules that jump to our chain, whether our chain exists)."""
        tool = self._ipt(family)
        proc = self.runner([tool, "-w", "-S", "FORWARD"], None)
        jumps = []
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                words = shlex.split(line)
                if words[:2] == ["-A", "FORWARD"] and words[-2:] == ["-j", CHAIN]:
                    jumps.append(line.strip())
        exists = self.runner([tool, "-w", "-S", CHAIN], None).returncode == 0
        return jumps, exists

    def _iptables_rules(self, family: int) -> list[str]:
        proc = self.runner([self._ipt(family), "-w", "-S", CHAIN], None)
        return [ln for ln in proc.stdout.splitlines() if ln.startswith("-A ")]

    def _remove_iptables(self, family: int) -> None:
        jumps, exists = self._iptables_state(family)
        script = render_iptables_removal(jumps, exists)
        if script is not None:
            self._restore(family, script, "remove the queue rules")

    def _drop_empty_filter_table(self, family: int) -> None:
        """Delete the iptables-nft ``filter`` table if it holds nothing: no rules, no chains
        of its own, every policy accept. iptables-nft creates it on first use (our chain);
        left empty it changes nothing, but a stopped appliance should be a plain bridge."""
        fam = "ip" if family == 4 else "ip6"
        proc = self.runner(["nft", "-j", "list", "table", fam, "filter"], None)
        if proc.returncode != 0:
            return
        try:
            items = json.loads(proc.stdout).get("nftables", [])
        except ValueError:
            return
        for item in items:
            if not isinstance(item, dict) or "metainfo" in item or "table" in item:
                continue
            chain = item.get("chain")
            if chain is None or "hook" not in chain or chain.get("policy") != "accept":
                return  # a rule, a set, a user chain or a drop policy: not ours to remove
        self._nft(f"delete table {fam} filter\n", f"remove the empty {fam} filter table")

    def _iptables_queue_packets(self, family: int) -> int:
        proc = self.runner([self._ipt(family), "-w", "-L", CHAIN, "-n", "-v", "-x"], None)
        if proc.returncode != 0:
            return 0
        total = 0
        for line in proc.stdout.splitlines():
            words = line.split()
            if len(words) > 2 and words[2] == "NFQUEUE" and words[0].isdigit():
                total += int(words[0])
        return total


def _parse_net(addr: str) -> Network:
    try:
        return ipaddress.ip_network(addr.strip(), strict=False)
    except ValueError:
        raise FirewallError(f"not an IP address or network: {addr!r}") from None


def parse_set_elements(text: str) -> dict[str, float | None]:
    """Elements of ``nft -j list set`` output: address/network → seconds left (None: forever)."""
    out: dict[str, float | None] = {}
    try:
        doc = json.loads(text)
    except ValueError:
        return out
    for item in doc.get("nftables", []):
        s = item.get("set") if isinstance(item, dict) else None
        if not s:
            continue
        for elem in s.get("elem", []):
            expires: float | None = None
            val = elem
            if isinstance(elem, dict) and "elem" in elem:
                inner = elem["elem"]
                val = inner.get("val")
                if "expires" in inner:
                    expires = float(inner["expires"])
                elif "timeout" in inner:
                    expires = float(inner["timeout"])
            if isinstance(val, dict) and "prefix" in val:
                key = f"{val['prefix']['addr']}/{val['prefix']['len']}"
            elif isinstance(val, dict):
                continue  # not something `block` adds (a range or concatenation)
            else:
                key = str(val)
            out[key] = expires
    return out


def _nft_rules(text: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        doc = json.loads(text)
    except ValueError:
        return []
    return [
        (item["rule"].get("chain", ""), item["rule"])
        for item in doc.get("nftables", [])
        if isinstance(item, dict) and "rule" in item
    ]


def _rule_packets(rule: dict[str, Any]) -> int:
    for e in rule.get("expr", []):
        if isinstance(e, dict) and "counter" in e and isinstance(e["counter"], dict):
            return int(e["counter"].get("packets", 0))
    return 0
