"""`rules`: Suricata-style rules (``[detect.rules] paths``) on flow heads and all DNS.

Each rule runs where its buffers are: payload and header rules on every queued packet, HTTP
buffers on a dissected request head (on each of the requests pipelined in one segment), TLS
buffers (SNI, JA3, JA4) on a ClientHello, ``dns.query`` on a DNS query. A match is an EVE
alert with the rule's gid, sid, rev, msg, and the class type's description and severity
(``watchpost.detector = "rules"``). ``drop`` rules put the flow's
outside address into the kernel drop set in block mode (through the engine's block path, so
`inline.never_block` applies); in monitor mode they alert as ``allowed``. A ``pass`` rule that
matches a flow silences the rules for the rest of that flow.

Packets of a flow that already has a verdict, or beyond `inline.head_packets`, are not looked
at: inline they would not reach Python, and `replay` must say what the bridge would.

Rule bundles from the hub (``watchpost-hub push-rules``) are installed by the hub link as
``<device.state_dir>/rules/*.rules`` (checked there before they are swapped in) and loaded with
``paths`` unless ``hub = false``: every engine looks at that folder once a second (`tick`), loads
the new set beside the running one (a thread; the first time, before the first packet) and swaps
it in whole; a set that fails to load leaves the running rules in place.

Loading: see `appliance.detect.rules`. Rules with syntax errors and rules outside the subset
are skipped and logged (file:line and why, with counts); a file that cannot be read or is not
text refuses the config, naming `detect.rules.paths`. Parsed rule sets are cached by file
names, sizes and modification times, so the config check and the engine share one load.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.alerts.model import Signature
from appliance.config import Config
from appliance.detect.base import Detector, Loader, Options
from appliance.detect.rules.addresses import SpecError, check_variables, default_vars
from appliance.detect.rules.classification import load as load_classes
from appliance.detect.rules.matcher import HOOK_DNS, HOOK_HTTP, HOOK_PACKET, HOOK_TLS, Rule
from appliance.detect.rules.parser import Parser
from appliance.detect.rules.prefilter import PortGroups
from appliance.detect.rules.ruleset import (
    OTHER_PROTO,
    LoadReport,
    RulesError,
    RuleSet,
    load_files,
    parse_text,
)
from appliance.detect.rules.threshold import Tracker
from appliance.packet.flows import DIR_INBOUND, DIR_OUTBOUND, VERDICT_NONE

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.detect.records import DnsMessage, HttpRequest, TlsHello
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

log = logging.getLogger(__name__)

MAX_LOGGED = 20  # syntax errors / skipped rules logged one by one (all are counted)

_cache: dict[tuple, RuleSet] = {}
_cache_lock = threading.Lock()
HUB_DIR = "rules"  # under device.state_dir: the rule bundles the hub installed
HUB_SUFFIX = ".rules"
_UNCHECKED = ("unchecked",)


def rules_dir_for(config: Config) -> Path:
    """Where the hub link installs rule bundles (``<device.state_dir>/rules``)."""
    return Path(config.device.state_dir) / HUB_DIR


def hub_files(rules_dir: str | os.PathLike[str]) -> list[str]:
    """The installed rule bundles: visible ``*.rules`` files (staging files are hidden)."""
    try:
        names = os.listdir(rules_dir)
    except OSError:
        return []
    return [
        os.path.join(rules_dir, n)
        for n in sorted(names)
        if n.endswith(HUB_SUFFIX) and not n.startswith(".")
    ]


def _hub_signature(rules_dir: str | os.PathLike[str]) -> tuple:
    return tuple(_file_key(p) for p in hub_files(rules_dir))


def rule_variables(config: Config) -> dict[str, str]:
    """The rule variables `config` gives (HOME_NET from inline.home_nets unless set)."""
    opts = config.detect.get("rules") or {}
    variables = default_vars(config.inline.home_nets)
    for item in opts.get("vars", ()):
        name, _, value = item.partition("=")
        variables[name.strip().lstrip("$")] = value.strip()
    return variables


def check_text(config: Config, text: str, source: str) -> LoadReport:
    """Parse rule text as the running config's rules detector would (its variables and
    classification): the report of loaded, skipped and syntax errors (``source:line``)."""
    opts = config.detect.get("rules") or {}
    classification = opts.get("classification") or None
    try:
        classes = load_classes(classification)
    except (OSError, ValueError) as e:
        raise RulesError(f"detect.rules.classification: {e}") from None
    parser = Parser(rule_variables(config), classes)
    report = LoadReport()
    report.files.append(source)
    into: dict[tuple[int, int], Any] = {}
    parse_text(text, source, parser, report, into)
    report.loaded = len(into)
    return report


def _file_key(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_size, st.st_mtime_ns)


def load_cached(paths: tuple[str, ...], variables: dict[str, str], classification: str) -> RuleSet:
    """The rule set of `paths` (the last one loaded is reused while the files are unchanged)."""
    key = (tuple(_file_key(p) for p in paths), tuple(sorted(variables.items())), classification)
    got = _cache.get(key)
    if got is None:
        got = load_files(paths, variables, classification or None)
        with _cache_lock:
            _cache.clear()
            _cache[key] = got
        _log_report(got)
    return got


def _log_report(rs: RuleSet) -> None:
    rep = rs.report
    log.info("rules: %s from %d file(s)", rep.summary(), len(rep.files))
    for why, n in sorted(rep.skipped.items(), key=lambda kv: -kv[1]):
        log.info("rules: %d skipped: %s", n, why)
    if rep.error_count:
        log.warning("rules: %d rule(s) with syntax errors skipped:", rep.error_count)
        for line in rep.errors[:MAX_LOGGED]:
            log.warning("rules: %s", line)
        if rep.error_count > MAX_LOGGED:
            log.warning("rules: ... and %d more", rep.error_count - MAX_LOGGED)


def parse_vars(opts: Options) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in opts.vars:
        name, eq, value = item.partition("=")
        name = name.strip().lstrip("$")
        if not eq or not name or not value.strip():
            raise opts.error("vars", f"expected NAME=VALUE, got {item!r}")
        out[name] = value.strip()
    return out


class RulesDetector(Detector):
    name = "rules"
    # replay --workers (Detector.partition): state per flow; "global" with threshold or
    # detection_filter rules (their counts span flows).
    partition = "flow"
    packet_passed = False  # the packet hook returns at once for a passed flow (DNS aside)
    signatures = ()  # one per loaded rule: see `watchpost rules check`

    def __init__(self) -> None:
        self.ruleset: RuleSet | None = None
        self.tracker = Tracker()
        self._vars: dict[str, str] = {}
        self._sigs: dict[int, Signature] = {}
        self._hooks: set[str] = set()
        self._packet_groups: dict[int, PortGroups | None] | None = None
        self._opts: Options | None = None
        self._hub_paths: tuple[str, ...] = ()
        self._hub_sig: tuple = _UNCHECKED
        self._pending: threading.Thread | None = None
        self._loaded: list[tuple[Options, tuple, tuple[str, ...], RuleSet | None, str]] = []
        self.reloads = 0  # hub bundle sets taken in
        self.reloads_failed = 0

    @classmethod
    def load(cls, loader: Loader) -> None:
        loader.add_option(
            "paths",
            tuple[str, ...],
            (),
            "Suricata-format rule files (see docs/rules.md for the keywords supported).",
            path=True,
        )
        loader.add_option(
            "vars",
            tuple[str, ...],
            (),
            "Rule variables as NAME=VALUE, e.g. 'HTTP_PORTS=[80,8080]'; HOME_NET defaults to "
            "inline.home_nets, EXTERNAL_NET to !$HOME_NET, the rest to Suricata's defaults.",
        )
        loader.add_option(
            "hub",
            bool,
            True,
            "Also load the rule bundles the hub pushed (watchpost-hub push-rules), installed in "
            "<device.state_dir>/rules; they are picked up live, within a second.",
        )
        loader.add_option(
            "classification",
            str,
            "",
            "A classification.config giving each classtype its severity (default: the one "
            "shipped, with the Suricata and Emerging Threats class types).",
            path=True,
        )

    @classmethod
    def check(cls, opts: Options) -> None:
        """When a config is read: variables, the classification file and the rule files (a
        file refused whole refuses the config; bad rules are logged and skipped)."""
        cls._load(opts)

    @classmethod
    def _load(
        cls, opts: Options, extra: tuple[str, ...] = ()
    ) -> tuple[RuleSet | None, dict[str, str]]:
        own = parse_vars(opts)
        variables = default_vars(Config().inline.home_nets)
        variables.update(own)
        problem = check_variables(variables)
        if problem:
            raise opts.error("vars", problem)
        if opts.classification and not os.path.isfile(opts.classification):
            raise opts.error("classification", f"{opts.classification}: no such file")
        paths = tuple(opts.paths) + extra
        if not paths:
            return None, own
        try:
            return load_cached(paths, variables, opts.classification), own
        except RulesError as e:
            raise opts.error("paths", str(e)) from None
        except ValueError as e:  # a bad classification file
            raise opts.error("classification", str(e)) from None

    def configure(self, opts: Options) -> None:
        ruleset, own = self._load(opts)
        extra: tuple[str, ...] = ()
        if opts.hub and self._hub_paths:
            # The hub's bundles loaded last time stay in (one load, not one without them first).
            try:
                ruleset, own = self._load(opts, self._hub_paths)
                extra = self._hub_paths
            except Exception:
                log.exception("rules: the hub's rule bundles failed to load again; without them")
                self._hub_sig = _UNCHECKED
        self._opts = opts
        self._take(ruleset, extra)
        self._vars = own

    def _take(self, ruleset: RuleSet | None, hub_paths: tuple[str, ...]) -> None:
        self.ruleset = ruleset
        self._hub_paths = hub_paths
        self._sigs = {}
        self.tracker = Tracker()
        self._hooks = ruleset.hooks() if ruleset is not None else set()
        thresholds = ruleset is not None and any(
            r.threshold is not None or r.detection_filter is not None for r in ruleset.rules
        )  # both count matches across flows (by source, destination or rule)
        self.partition = "global" if thresholds else "flow"
        self._packet_groups = (
            ruleset.groups[HOOK_PACKET] if ruleset is not None and HOOK_PACKET in self._hooks
            else None
        )  # fmt: skip

    # -- the hub's rule bundles (picked up live) ---------------------------------------------------

    def tick(self, ctx: Context, now: float) -> None:
        opts = self._opts
        if opts is None or not opts.hub:
            return
        pending = self._pending
        if pending is not None:
            if pending.is_alive():
                return
            self._pending = None
            self._finish(*self._loaded.pop())
            return
        rules_dir = rules_dir_for(ctx.config)
        sig = _hub_signature(rules_dir)
        if sig == self._hub_sig:
            return
        paths = tuple(hub_files(rules_dir))
        if self._hub_sig is _UNCHECKED:  # the first look (before the first packet): at once
            self._loaded.append(self._load_hub(opts, sig, paths))
            self._finish(*self._loaded.pop())
            return
        self._pending = threading.Thread(
            target=lambda: self._loaded.append(self._load_hub(opts, sig, paths)),
            name="rules-reload",
            daemon=True,
        )
        self._pending.start()

    def _load_hub(
        self, opts: Options, sig: tuple, paths: tuple[str, ...]
    ) -> tuple[Options, tuple, tuple[str, ...], RuleSet | None, str]:
        try:
            ruleset, _own = self._load(opts, paths)
        except Exception as e:  # ConfigError (a file refused whole) or a bug: keep the old set
            return opts, sig, paths, None, str(e)
        return opts, sig, paths, ruleset, ""

    def _finish(
        self, opts: Options, sig: tuple, paths: tuple[str, ...], ruleset: RuleSet | None, err: str
    ) -> None:
        self._hub_sig = sig  # not tried again until the folder changes
        if opts is not self._opts:
            self._hub_sig = _UNCHECKED  # reconfigured meanwhile: look again
            return
        if err:
            log.error("rules: the hub's rule bundles did not load, the running rules stay: %s", err)
            self.reloads_failed += 1
            return
        if ruleset is self.ruleset and paths == self._hub_paths:
            return  # nothing new (the first look at an empty folder)
        self._take(ruleset, paths)
        self.reloads += 1
        if paths:
            log.info("rules: %d rules in force with the hub's %s", len(ruleset or ()),
                     ", ".join(os.path.basename(p) for p in paths))  # fmt: skip

    def _wait_reload(self, timeout: float = 30.0) -> None:
        """Wait for a reload running in the background (tests, tools)."""
        pending = self._pending
        if pending is not None:
            pending.join(timeout)

    # -- helpers ---------------------------------------------------------------------------------

    def _bind_home(self, ctx: Context) -> None:
        """HOME_NET follows inline.home_nets unless `vars` sets it (checked per packet: cheap).
        The binding is the rule set's own, so engines sharing a cached rule set stay right."""
        rs = self.ruleset
        home = ctx.config.inline.home_nets
        if rs is None or rs.bound is home or "HOME_NET" in self._vars:
            return
        if rs.bound != home:
            variables = default_vars(home)
            variables.update(self._vars)
            try:
                rs.rebind(variables)
            except SpecError as e:
                log.error("rules: inline.home_nets makes a rule's address list empty: %s", e)
        rs.bound = home

    def _signature(self, r: Rule) -> Signature:
        sig = self._sigs.get(r.index)
        if sig is None:
            sig = Signature(
                r.sid,
                r.msg or f"rule {r.gid}:{r.sid}",
                r.category,
                r.severity,
                gid=r.gid,
                rev=r.rev,
            )
            self._sigs[r.index] = sig
        return sig

    def _report(
        self, ctx: Context, pkt: Packet, flow: Flow, hits: list[Rule], app: dict[str, Any]
    ) -> None:
        notes = flow.notes.get(self.name) if flow.notes else None
        if notes is not None and notes.get("pass"):
            return
        for r in hits:
            if r.action == "pass":
                flow.note(self.name)["pass"] = r.sid
                return
            details: dict[str, Any] = {"rule": r.source.rpartition("/")[2]}
            if r.classtype:
                details["classtype"] = r.classtype
            if r.references:
                details["references"] = [f"{k},{v}" for k, v in r.references]
            if r.metadata:
                details["metadata"] = list(r.metadata)
            block = None
            if r.action == "drop":
                details["action"] = "drop"
                block = _outside(flow)
            ctx.alert(self._signature(r), pkt=pkt, flow=flow, app=app, details=details,
                      block=block)  # fmt: skip

    # -- hooks -------------------------------------------------------------------------------------

    def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None:
        # The cheap tests first: most packets are past their flow's head (or of a judged flow)
        # and most of the rest are of a protocol no packet rule names.
        if (
            (
                flow.verdict != VERDICT_NONE
                or flow.pkts_c + flow.pkts_s > ctx.config.inline.head_packets
            )
            and pkt.sport != 53
            and pkt.dport != 53
        ):
            return
        groups = self._packet_groups
        if groups is None:
            return
        pf = groups.get(pkt.proto, groups[OTHER_PROTO])
        if pf is None:
            return
        self._bind_home(ctx)
        rs = self.ruleset
        assert rs is not None
        hits = rs.match_group(pf, pkt, flow, from_client, None, self.tracker)
        if hits:
            self._report(ctx, pkt, flow, hits, {})

    def http(self, ctx: Context, pkt: Packet, flow: Flow, req: HttpRequest) -> None:
        rs = self.ruleset
        if rs is None or HOOK_HTTP not in self._hooks:
            return
        self._bind_home(ctx)
        hits = rs.match(HOOK_HTTP, pkt, flow, True, req, self.tracker)
        if hits:
            self._report(ctx, pkt, flow, hits, req.eve())

    def tls(self, ctx: Context, pkt: Packet, flow: Flow, hello: TlsHello) -> None:
        rs = self.ruleset
        if rs is None or HOOK_TLS not in self._hooks or hello.quic:
            return  # QUIC is not TLS to a Suricata rule (it has quic.* keywords)
        self._bind_home(ctx)
        hits = rs.match(HOOK_TLS, pkt, flow, True, hello, self.tracker)
        if hits:
            self._report(ctx, pkt, flow, hits, hello.eve())

    def dns(self, ctx: Context, pkt: Packet, flow: Flow, msg: DnsMessage) -> None:
        rs = self.ruleset
        if rs is None or HOOK_DNS not in self._hooks or msg.response:
            return  # dns.query looks at queries, as Suricata's does
        self._bind_home(ctx)
        from_client = pkt.src == flow.client and pkt.sport == flow.client_port
        hits = rs.match(HOOK_DNS, pkt, flow, from_client, msg, self.tracker)
        if hits:
            self._report(ctx, pkt, flow, hits, msg.eve())


def _outside(flow: Flow) -> str | None:
    """The address a drop rule blocks (through the engine's block guard, so never_block and its
    caps apply): the flow's end outside the office; none for a flow inside the office or of
    unknown direction (blocking an office host is not a rule's call)."""
    from appliance.packet.decode import ip_to_str

    if flow.direction == DIR_OUTBOUND:
        return ip_to_str(flow.server)
    if flow.direction == DIR_INBOUND:
        return ip_to_str(flow.client)
    return None
