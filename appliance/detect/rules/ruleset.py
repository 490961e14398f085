"""Loading rule files into a `RuleSet`, and running it on one packet.

`load_files` reads every file, parses each rule (a line ending in ``\\`` continues on the
next; ``#`` lines are comments, and a commented-out rule is counted as disabled), and returns
the rule set with a `LoadReport`: rules loaded, rules skipped by reason, syntax errors as
``file:line: why``. A file that cannot be read, or is not text, is refused whole
(`RulesError`); a bad rule never stops the others from loading.

`RuleSet.match(hook, pkt, flow, from_client, record)` gives the rules that match (after
``threshold`` / ``detection_filter``), ``pass`` rules first, then ``drop``, then ``alert``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.detect.rules.addresses import Specs
from appliance.detect.rules.buffers import Buffers
from appliance.detect.rules.classification import ClassType
from appliance.detect.rules.classification import load as load_classes
from appliance.detect.rules.matcher import (
    HOOK_DNS,
    HOOK_HTTP,
    HOOK_PACKET,
    HOOK_TLS,
    Rule,
    intern_chains,
)
from appliance.detect.rules.parser import Parser, RuleSyntaxError, Unsupported
from appliance.detect.rules.prefilter import PortGroups, Prefilter
from appliance.detect.rules.threshold import Tracker

HOOKS = (HOOK_PACKET, HOOK_HTTP, HOOK_TLS, HOOK_DNS)
MAX_FILE = 64 << 20  # bytes of one rule file
MAX_ERRORS = 1000  # syntax errors kept for the report (all are counted)
_ACTION_ORDER = {"pass": 0, "drop": 1, "alert": 2}
GROUP_PROTOS = (1, 6, 17, 58)  # the IP protocols a rule header can name (icmp, tcp, udp, icmp6)
OTHER_PROTO = -1  # packets of any other protocol: only rules for any protocol
_RULE_START = ("alert ", "drop ", "pass ", "reject", "config ")


class RulesError(Exception):
    """A rule file refused whole (unreadable, binary, too big)."""


@dataclass
class LoadReport:
    files: list[str] = field(default_factory=list)
    loaded: int = 0
    disabled: int = 0  # commented-out rules
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> rules
    skipped_at: list[str] = field(default_factory=list)  # file:line: reason
    errors: list[str] = field(default_factory=list)  # file:line: why (first MAX_ERRORS)
    error_count: int = 0
    by_hook: Counter[str] = field(default_factory=Counter)
    prefiltered: int = 0  # rules with a prefilter pattern
    always: int = 0  # rules checked on every packet of their protocol/port

    def error(self, where: str, why: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"{where}: {why}")

    def skip(self, where: str, why: str) -> None:
        self.skipped[why] += 1
        if len(self.skipped_at) < MAX_ERRORS:
            self.skipped_at.append(f"{where}: {why}")

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        out = f"{self.loaded} rules loaded, {self.skipped_total} skipped"
        if self.error_count:
            out += f", {self.error_count} with syntax errors"
        return out


def iter_rules(text: str, source: str) -> Iterable[tuple[int, str, bool]]:
    """(line number, rule text, disabled) for each rule in a file's text; continuation lines
    (ending in backslash) are joined, and the first line's number is kept."""
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf:
            if not line:
                continue
            if line.startswith("#"):
                body = line.lstrip("#").strip()
                if body.startswith(_RULE_START) and body.endswith(")"):
                    yield n, body, True
                continue
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1])
            continue
        buf.append(line)
        yield start, " ".join(buf), False
        buf = []
    if buf:
        yield start, " ".join(buf), False


class RuleSet:
    """Loaded rules, their prefilters (one per hook) and the threshold state."""

    def __init__(self, rules: list[Rule], report: LoadReport, specs: Specs | None = None) -> None:
        self.rules = rules
        self.report = report
        self.specs = specs
        # What the address variables are bound to (the rules detector keeps HOME_NET on
        # inline.home_nets): opaque to the rule set.
        self.bound: Any = None
        for i, r in enumerate(rules):
            r.index = i
        intern_chains(rules)
        # Port groups per hook and IP protocol: a packet consults only its protocol's groups
        # (a UDP packet never runs the automaton of TCP payload rules) and of those only the
        # "any" group and its ports' groups; OTHER_PROTO holds the rules for any protocol, for
        # packets of protocols no rule names.
        self.groups: dict[str, dict[int, PortGroups | None]] = {
            h: _groups([r for r in rules if r.hook == h]) for h in HOOKS
        }
        report.by_hook = Counter(r.hook for r in rules)
        report.prefiltered = sum(1 for r in rules if r.fast is not None)
        report.always = len(rules) - report.prefiltered

    def __len__(self) -> int:
        return len(self.rules)

    def group(self, hook: str, proto: int) -> PortGroups | None:
        """The port groups of `hook`'s rules that can match IP protocol `proto` (None: none
        can)."""
        groups = self.groups[hook]
        return groups.get(proto, groups[OTHER_PROTO])

    def hooks(self) -> set[str]:
        """The hooks that have rules (the detector registers only those)."""
        return {r.hook for r in self.rules}

    def rebind(self, variables: Mapping[str, str]) -> None:
        """Give the address variables new values (HOME_NET from inline.home_nets) without
        parsing again; raises SpecError, with nothing changed, if a list would match nothing."""
        if self.specs is not None:
            self.specs.rebind(variables)

    def match(
        self,
        hook: str,
        pkt: Any,
        flow: Any,
        from_client: bool,
        record: Any = None,
        tracker: Tracker | None = None,
    ) -> list[Rule]:
        """The rules of `hook` that match this packet (and its record), after thresholds
        (kept in `tracker`; none: thresholds are not applied)."""
        pf = self.groups[hook].get(pkt.proto, self.groups[hook][OTHER_PROTO])
        if pf is None:
            return []
        return self.match_group(pf, pkt, flow, from_client, record, tracker)

    def match_group(
        self,
        pg: PortGroups,
        pkt: Any,
        flow: Any,
        from_client: bool,
        record: Any = None,
        tracker: Tracker | None = None,
    ) -> list[Rule]:
        """`match` with the packet's protocol group already looked up (`group`)."""
        if record is None and not pkt.payload_len and not pg.header_rules:
            return []  # no buffer at all, and every rule here needs one
        pfs = pg.lookup(pkt.sport, pkt.dport, from_client)
        if not pfs:
            return []
        bufs = Buffers(pkt, record)
        idxs: Iterable[int]
        if record is None and not pkt.payload_len:
            # no buffer at all: only rules without content (the groups' always-check lists)
            one = len(pfs) == 1
            idxs = pfs[0].always if one else sorted({i for pf in pfs for i in pf.always})
        else:
            lowered: dict[str, str] = {}
            found: set[int] = set()
            for pf in pfs:
                for name in pf.buffers:
                    if name not in lowered:
                        got = bufs.get(name)
                        lowered[name] = got[1].decode("latin-1") if got is not None else ""
                pf.candidates(lowered, found)
            idxs = sorted(found)
        rules = self.rules
        out: list[Rule] = []
        # one per packet when several candidates: rules sharing a header or a chain share the
        # answer (the same method, the same HOME_NET -> EXTERNAL_NET)
        heads: dict[Any, bool] | None = {} if len(idxs) > 1 else None
        chains: dict[int, bool] | None = {} if len(idxs) > 1 else None
        for i in idxs:
            r = rules[i]
            if not r.header_matches(pkt, heads) or not r.state_matches(pkt, flow, from_client):
                continue
            if r.chains and not r.content_matches(bufs, chains):
                continue
            if (
                tracker is not None
                and (r.threshold is not None or r.detection_filter is not None)
                and not tracker.allow(r, pkt.src, pkt.dst, pkt.ts)
            ):
                continue
            out.append(r)
        if len(out) > 1:
            out.sort(key=lambda r: (_ACTION_ORDER[r.action], r.index))
        return out


def _groups(rules: list[Rule]) -> dict[int, PortGroups | None]:
    """IP protocol -> the port groups of the rules that can match it (None when there are
    none); protocols with the same rules share them, and so do port groups with the same
    rules."""
    out: dict[int, PortGroups | None] = {}
    made: dict[tuple[int, ...], PortGroups] = {}
    shared: dict[tuple[int, ...], Prefilter] = {}
    for proto in (*GROUP_PROTOS, OTHER_PROTO):
        mine = [r for r in rules if r.ipprotos is None or proto in r.ipprotos]
        if not mine:
            out[proto] = None
            continue
        key = tuple(r.index for r in mine)
        pg = made.get(key)
        if pg is None:
            pg = made[key] = PortGroups(mine, shared)
        out[proto] = pg
    return out


def read_text(path: str | Path) -> str:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE:
            raise RulesError(f"{p}: {size} bytes, more than {MAX_FILE} (refused)")
        data = p.read_bytes()
    except OSError as e:
        raise RulesError(f"{p}: {e.strerror or e}") from None
    if b"\x00" in data:
        raise RulesError(f"{p}: a binary file, not rules (refused)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RulesError(f"{p}: not UTF-8 text (byte {e.start}) (refused)") from None


def parse_text(
    text: str, source: str, parser: Parser, report: LoadReport, into: dict[tuple[int, int], Rule]
) -> None:
    for line, body, disabled in iter_rules(text, source):
        where = f"{source}:{line}"
        if disabled:
            report.disabled += 1
            continue
        try:
            rule = parser.parse(body, where)
        except Unsupported as e:
            report.skip(where, str(e))
            continue
        except RuleSyntaxError as e:
            report.error(where, str(e))
            continue
        old = into.get(rule.key)
        if old is not None:
            keep, drop = (rule, old) if rule.rev > old.rev else (old, rule)
            report.skip(
                drop.source,
                f"duplicate sid {rule.gid}:{rule.sid} (rev {keep.rev} at {keep.source} kept)",
            )
            into[rule.key] = keep
            continue
        into[rule.key] = rule


def load_files(
    paths: Iterable[str | Path],
    variables: Mapping[str, str],
    classification: str | Path | None = None,
    classes: Mapping[str, ClassType] | None = None,
) -> RuleSet:
    """Every rule of `paths`; raises RulesError for a file refused whole (nothing loaded)."""
    if classes is None:
        try:
            classes = load_classes(classification)
        except OSError as e:
            raise RulesError(f"{classification}: {e.strerror or e}") from None
        except ValueError as e:
            raise RulesError(str(e)) from None
    parser = Parser(variables, classes)
    report = LoadReport()
    by_key: dict[tuple[int, int], Rule] = {}
    for p in paths:
        report.files.append(str(p))
        parse_text(read_text(p), str(p), parser, report, by_key)
    rules = list(by_key.values())  # load order (a duplicate keeps the first one's place)
    report.loaded = len(rules)
    return RuleSet(rules, report, parser.specs)
