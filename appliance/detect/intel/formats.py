"""Feed formats: reading one intel file in bounded chunks, sniffing its format, and the per-line
parsers (plain lists, hosts files, abuse.ch CSV such as Feodo Tracker, URLhaus, ThreatFox and
SSLBL, Spamhaus DROP text or JSON lines, DShield ranges).

Bad lines are counted and reported with file and line; a file that is mostly junk, binary or cut
off mid-line is refused as a whole (and leaves the builder as it was). A new format is a `Format`
subclass plus a case in `sniff`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.detect.intel.builder import DOMAIN_RE, Builder, clean_domain
from appliance.detect.intel.store import (
    FORMAT_VERSION,
    FileReport,
    LoadProblem,
    Meta,
)

MAX_FILE_BYTES = 512 << 20
MAX_LINE = 16 << 10  # longer lines are junk (the longest real URLs are a few KiB)
CHUNK = 1 << 20
MAX_PROBLEMS_PER_FILE = 50

_SEVERITY_NAMES = {"high": 1, "medium": 2, "low": 3, "1": 1, "2": 2, "3": 3}
_HOSTS_IGNORED = {
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
}

# Known feeds: (source name, category, severity) used when the file does not say otherwise.
FEEDS: dict[str, tuple[str, str, int]] = {
    "feodo": ("feodotracker", "botnet-c2", 1),
    "urlhaus": ("urlhaus", "malware-distribution", 2),
    "threatfox": ("threatfox", "malware", 2),
    "sslbl": ("sslbl", "malware-tls-fingerprint", 2),
    "spamhaus-drop": ("spamhaus-drop", "hijacked-network", 2),
    "maltrail": ("maltrail", "malicious", 2),
}
# Column layouts of the abuse.ch CSV exports, for files whose header line is missing.
FEODO_COLUMNS = ("first_seen_utc", "dst_ip", "dst_port", "c2_status", "last_online", "malware")
URLHAUS_COLUMNS = (
    "id",
    "dateadded",
    "url",
    "url_status",
    "last_online",
    "threat",
    "tags",
    "urlhaus_link",
    "reporter",
)
_INDICATOR_COLUMNS = (
    "dst_ip",
    "ip_address",
    "ip",
    "url",
    "ja3_md5",
    "ioc_value",
    "ioc",
    "indicator",
    "domain",
    "host",
    "trail",
)
_TAG_COLUMNS = ("malware", "malware_printable", "listingreason", "tags", "reference")
_CATEGORY_COLUMNS = ("threat", "threat_type", "info")
# Maltrail's trail files: "trail,info,reference" (evil.example,emotet (malware),abuse.ch).
MALTRAIL_COLUMNS = ("trail", "info", "reference")
_STATUS_COLUMNS = ("c2_status", "url_status")
# ThreatFox ioc_type values that are not network indicators: skipped, not bad.
_NON_NETWORK_IOC = ("md5_hash", "sha1_hash", "sha256_hash", "sha3_384_hash", "imphash")


class Format:
    """Per-line parser of one file format; `parse` returns a problem text or None."""

    name = "plain"

    def __init__(self, builder: Builder, meta: Meta) -> None:
        self.b = builder
        self.meta = meta
        self.tail = builder.tail(meta)
        self.skipped = 0

    def directive(self, line: str) -> str | None:
        """``# watchpost: source=NAME category=WORD severity=1..3`` sets defaults from here on."""
        body = line.split("watchpost:", 1)[1]
        values = {}
        for part in body.split():
            key, sep, value = part.partition("=")
            if not sep or key not in ("source", "category", "severity") or not value:
                return f"bad directive {part!r} (use source=, category=, severity=)"
            values[key] = value
        sev = self.meta.severity
        if "severity" in values:
            sev = _SEVERITY_NAMES.get(values["severity"].lower(), 0)
            if not sev:
                return f"bad severity {values['severity']!r} (1..3 or high/medium/low)"
        self.meta = Meta(
            values.get("source", self.meta.source),
            values.get("category", self.meta.category),
            sev,
            self.meta.tags,
        )
        self.tail = self.b.tail(self.meta)
        return None

    def parse_text(self, text: str, lineno: int, bad: Callable[[int, str], None]) -> int:
        """Parse complete lines (`text` ends with a newline) numbered from `lineno` + 1;
        returns the last line number."""
        lines = text.split("\n")
        lines.pop()
        return self.parse_lines(lines, lineno, bad)

    def parse_lines(self, lines: list[str], lineno: int, bad: Callable[[int, str], None]) -> int:
        parse = self.parse
        for line in lines:
            lineno += 1
            if not line:
                continue
            if line[0] == "#" and _is_directive(line):
                why = self.directive(line)
            elif len(line) > MAX_LINE:
                why = f"line longer than {MAX_LINE} bytes"
            else:
                why = parse(line)
            if why is not None:
                bad(lineno, _explain(line, why))
        return lineno

    def parse(self, line: str) -> str | None:
        if "#" in line:
            line = line.split("#", 1)[0]
        token = line.strip()
        if not token:
            return None
        if " " in token or "\t" in token:  # "indicator  trailing words": the first word counts
            words = token.split()
            # DShield block list: "start end prefix-length ..." is the network start/prefix
            if (
                len(words) >= 3
                and words[2].isdigit()
                and ":" not in words[0]
                and self.b.parse_token(words[1])[0] == "ip"
            ):
                return self.b.add(f"{words[0]}/{words[2]}", self.tail)
            why = self.b.add(words[0], self.tail)
            return None if why is None else f"not an indicator line: {token[:80]!r}"
        return self.b.add(token, self.tail)


class _Plain(Format):
    """One indicator per line, kinds mixed. The common kinds (IPv4, domains) take a fast path
    because a million-line list must load in a few seconds on a Pi."""

    def parse_lines(self, lines: list[str], lineno: int, bad: Callable[[int, str], None]) -> int:
        b = self.b
        h4, hk, ht = b.h4, b.hk, b.ht
        pton, af_inet = socket.inet_pton, socket.AF_INET
        domain_match = DOMAIN_RE.fullmatch
        blake = hashlib.blake2b
        tail = self.tail
        n_ip = n_dom = 0
        for line in lines:
            lineno += 1
            if not line:
                continue
            c = line[0]
            if c == "#":
                if _is_directive(line):
                    why = self.directive(line)
                    tail = self.tail
                    if why is not None:
                        bad(lineno, why)
                continue
            if "#" in line:
                line = line.split("#", 1)[0]
            tok = line.strip()
            if not tok or len(tok) > 253:
                if tok:
                    why = (
                        self.parse(tok)
                        if len(line) <= MAX_LINE
                        else f"line longer than {MAX_LINE} bytes"
                    )
                    if why is not None:
                        bad(lineno, _explain(line, why))
                continue
            c = tok[0]
            if "0" <= c <= "9" and "0" <= tok[-1] <= "9":
                try:
                    a = int.from_bytes(pton(af_inet, tok), "big")
                except OSError:
                    pass
                else:
                    h4[a >> 24].append(a << 32 | tail)
                    n_ip += 1
                    continue
            elif "." in tok:  # (the pattern admits only ASCII letters, digits, '-', '_', '.')
                low = tok.lower()
                if low[-1] == ".":
                    low = low[:-1]
                if domain_match(low) is not None:
                    h = int.from_bytes(blake(b"d\0" + low.encode(), digest_size=8).digest(), "big")
                    hk[h >> 56].append(h)
                    ht[h >> 56].append(tail)
                    n_dom += 1
                    continue
            why = self.parse(tok)
            if why is not None:
                bad(lineno, _explain(line, why))
        b.counts["ip"] += n_ip
        b.counts["domain"] += n_dom
        return lineno


def _is_directive(line: str) -> bool:
    return line.lstrip("# \t").startswith("watchpost:")


def _explain(line: str, why: str) -> str:
    """Say "not UTF-8 text" for lines that were not, instead of the parser's complaint."""
    try:
        line.encode()
    except UnicodeEncodeError:
        return "not UTF-8 text"
    return why


class _Hosts(Format):
    name = "hosts"

    def parse(self, line: str) -> str | None:
        if "#" in line:
            line = line.split("#", 1)[0]
        fields = line.split()
        if not fields:
            return None
        if len(fields) < 2 or self.b.parse_token(fields[0])[0] != "ip":
            return f"not a hosts line: {line.strip()[:80]!r}"
        for name in fields[1:]:
            if name.lower() in _HOSTS_IGNORED:
                continue
            clean = clean_domain(name)
            if clean is None:
                return f"not a domain: {name[:80]!r}"
            self.b.add_parsed("domain", clean, self.tail)
        return None


class _Drop(Format):
    """Spamhaus DROP/EDROP text: ``CIDR ; SBLnnn``, comments start with ';'."""

    name = "spamhaus-drop"

    def parse(self, line: str) -> str | None:
        body = line.strip()
        if not body or body[0] in ";#":
            return None
        net, _, sbl = body.partition(";")
        if not self.add_network(net.strip(), sbl.strip()):
            return f"not a DROP line: {body[:80]!r}"
        return None

    def add_network(self, net: str, sbl: str) -> bool:
        """Add one DROP network tagged with its SBL id; False if `net` is no address/CIDR."""
        kind, parsed = self.b.parse_token(net)
        if kind not in ("cidr", "ip"):
            return False
        tail = self.b.tail(Meta(self.meta.source, self.meta.category, self.meta.severity, sbl))
        self.b.add_parsed(kind, parsed, tail)
        return True


class _DropJson(_Drop):
    """Spamhaus DROP JSON lines: ``{"cidr": ..., "sblid": ..., "rir": ...}``, then metadata."""

    name = "spamhaus-drop-json"

    def parse(self, line: str) -> str | None:
        body = line.strip()
        if not body or body[0] in ";#":
            return None
        try:
            obj = json.loads(body)
        except ValueError:
            return f"not JSON: {body[:80]!r}"
        if not isinstance(obj, dict):
            return f"not a JSON object: {body[:80]!r}"
        if obj.get("type") == "metadata":
            return None
        cidr = obj.get("cidr")
        if not isinstance(cidr, str):
            return "no 'cidr' in object"
        if not self.add_network(cidr.replace("\\/", "/"), str(obj.get("sblid", ""))):
            return f"bad cidr {cidr[:80]!r}"
        return None


class _Csv(Format):
    """abuse.ch-style CSV (Feodo Tracker, URLhaus, ThreatFox, SSLBL) located by column names."""

    name = "csv"

    def __init__(self, builder: Builder, meta: Meta, columns: tuple[str, ...]) -> None:
        super().__init__(builder, meta)
        self.columns = columns
        idx = {c: i for i, c in enumerate(columns)}
        self.ind_col = next(idx[c] for c in _INDICATOR_COLUMNS if c in idx)
        self.tag_col = next((idx[c] for c in _TAG_COLUMNS if c in idx), None)
        self.cat_col = next((idx[c] for c in _CATEGORY_COLUMNS if c in idx), None)
        self.status_col = next((idx[c] for c in _STATUS_COLUMNS if c in idx), None)
        self.conf_col = idx.get("confidence_level")
        self.type_col = idx.get("ioc_type")
        self._tails: dict[tuple[str, str, int], int] = {}

    def directive(self, line: str) -> str | None:
        self._tails = {}
        return super().directive(line)

    def parse(self, line: str) -> str | None:
        body = line.strip()
        if not body or body[0] == "#":
            return None
        try:
            row = next(csv.reader([body], strict=True))
        except (csv.Error, StopIteration) as e:
            return f"bad CSV row ({e}): {body[:80]!r}"
        row = [c.strip() for c in row]
        if tuple(c.lower() for c in row) == self.columns:
            return None  # the header row itself
        if len(row) <= self.ind_col:
            return f"expected {len(self.columns)} columns, got {len(row)}: {body[:80]!r}"
        tc = self.type_col
        if tc is not None and len(row) > tc and row[tc].lower() in _NON_NETWORK_IOC:
            self.skipped += 1
            return None
        kind, parsed = self.b.parse_token(row[self.ind_col])
        if kind is None:
            return parsed
        self.b.add_parsed(kind, parsed, self._tail(row))
        return None

    def _tail(self, row: list[str]) -> int:
        meta = self.meta
        sev = meta.severity
        category = meta.category
        if self.cat_col is not None and self.cat_col < len(row) and row[self.cat_col]:
            category = row[self.cat_col].lower().replace("_", "-")
        sc = self.status_col
        if sc is not None and sc < len(row) and row[sc].lower() == "offline":
            sev = min(3, sev + 1)  # no longer answering: still worth knowing, less urgent
        if self.conf_col is not None and self.conf_col < len(row):
            try:
                conf = int(row[self.conf_col])
            except ValueError:
                pass
            else:
                sev = 1 if conf >= 90 else 2 if conf >= 50 else 3
        tags = ""
        if self.tag_col is not None and self.tag_col < len(row):
            tags = row[self.tag_col][:64]
        key = (category, tags, sev)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = self.b.tail(Meta(meta.source, category, sev, tags))
        return tail


def _csv_header(line: str) -> tuple[str, ...] | None:
    """Column names if `line` (possibly commented out) is a CSV header we understand."""
    body = line.lstrip("#; ").strip()
    if "," not in body:
        return None
    try:
        cols = tuple(c.strip().lower() for c in next(csv.reader([body])))
    except (csv.Error, StopIteration):
        return None
    if any(c in cols for c in _INDICATOR_COLUMNS) and len(cols) >= 2:
        return cols
    return None


def _trail_row(line: str, builder: Builder) -> bool:
    """A headerless Maltrail row: an indicator, then an info text and a reference."""
    parts = line.split(",")
    return len(parts) == 3 and builder.parse_token(parts[0].strip())[0] is not None


def sniff(head: list[str], path: Path, builder: Builder) -> Format:
    """Choose the parser for a file from its first lines (comments and data)."""
    comments = " ".join(ln.lower() for ln in head if ln.lstrip().startswith(("#", ";")))
    data = [ln.strip() for ln in head if ln.strip() and not ln.lstrip().startswith(("#", ";"))]
    data = data[:50]
    feed = ""
    if "feodo tracker" in comments:
        feed = "feodo"
    elif "urlhaus" in comments:
        feed = "urlhaus"
    elif "threatfox" in comments:
        feed = "threatfox"
    elif "sslbl" in comments or "ssl blacklist" in comments:
        feed = "sslbl"
    elif "spamhaus" in comments:
        feed = "spamhaus-drop"

    columns = None
    csv_like = bool(data) and sum(1 for d in data if "," in d) > len(data) // 2
    for ln in head if csv_like else ():  # a header only counts when the rows have commas
        columns = _csv_header(ln)
        if columns is not None:
            break
    if columns is not None:
        if "dst_ip" in columns and "c2_status" in columns:
            feed = "feodo"
        elif "url_status" in columns or "urlhaus_link" in columns:
            feed = "urlhaus"
        elif "ioc_value" in columns:
            feed = "threatfox"
        elif "ja3_md5" in columns:
            feed = "sslbl"
        elif "trail" in columns:
            feed = "maltrail"
    elif data and sum(1 for d in data if d.count(",") >= 2) > len(data) // 2:
        columns = {"feodo": FEODO_COLUMNS, "urlhaus": URLHAUS_COLUMNS}.get(feed)
        if columns is None and sum(1 for d in data if _trail_row(d, builder)) > len(data) // 2:
            columns, feed = MALTRAIL_COLUMNS, "maltrail"

    source, category, severity = FEEDS.get(feed, (path.stem, "malicious", 2))
    meta = Meta(source, category, severity)
    if data and sum(1 for d in data if d.startswith("{") and '"cidr"' in d) > len(data) // 2:
        return _DropJson(builder, Meta(*FEEDS["spamhaus-drop"]))
    if data and sum(1 for d in data if re.match(r"\S+/\d+\s*;", d)) > len(data) // 2:
        return _Drop(builder, Meta(*FEEDS["spamhaus-drop"]))
    if columns is not None:
        fmt = _Csv(builder, meta, columns)
        fmt.name = f"csv:{feed}" if feed else "csv"
        return fmt
    hostlike = 0
    for d in data:  # "0.0.0.0 name": an address, then a name (not "start end" ranges)
        parts = d.split("#", 1)[0].split()
        if (
            len(parts) >= 2
            and builder.parse_token(parts[0])[0] == "ip"
            and (parts[1].lower() in _HOSTS_IGNORED or builder.parse_token(parts[1])[0] == "domain")
        ):
            hostlike += 1
    if data and hostlike > len(data) // 2:
        return _Hosts(builder, Meta(path.stem, "blocklist", 2))
    plain = _Plain(builder, meta)
    plain.name = f"plain:{feed}" if feed else "plain"
    return plain


def load_file(path: Path, builder: Builder, problems: list[LoadProblem]) -> FileReport:
    """Parse one file into `builder`; a refused file leaves the builder as it was."""
    report = FileReport(str(path))
    mark = builder.mark()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            report.size, report.mtime_ns = st.st_size, st.st_mtime_ns
            if st.st_size > MAX_FILE_BYTES:
                report.broken = f"too large ({st.st_size} bytes, limit {MAX_FILE_BYTES})"
            else:
                _parse_stream(f, path, builder, problems, report)
    except OSError as e:
        report.broken = f"cannot read: {e.strerror or e}"
    if not report.broken and report.bad_lines and report.bad_lines >= report.indicators:
        report.broken = (
            f"mostly not indicators ({report.bad_lines} bad lines, "
            f"{report.indicators} indicators): wrong file or corrupted"
        )
    if report.broken:
        builder.rollback(mark)
        report.indicators = 0
        problems.append(LoadProblem(str(path), 0, f"file refused: {report.broken}"))
    return report


def _parse_stream(
    f: Any, path: Path, builder: Builder, problems: list[LoadProblem], report: FileReport
) -> None:
    digest = hashlib.sha256()
    first = f.read(CHUNK)
    if b"\0" in first[:65536]:
        report.broken = "binary data (NUL bytes), not a text list"
        return
    head = first[:65536].decode("utf-8", "replace").splitlines()[:200]
    fmt = sniff(head, path, builder)
    report.format, report.source = fmt.name, fmt.meta.source
    before = sum(builder.counts.values())
    n_problems = 0

    def bad(lineno: int, why: str) -> None:
        nonlocal n_problems
        report.bad_lines += 1
        n_problems += 1
        if n_problems <= MAX_PROBLEMS_PER_FILE:
            problems.append(LoadProblem(str(path), lineno, why))

    lineno = 0
    carry = b""
    skipping = False  # inside an overlong line, dropping bytes until its end
    last_bad = False
    chunk = first
    while chunk:
        digest.update(chunk)
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            if len(carry) > MAX_LINE:
                if not skipping:
                    bad(lineno + 1, f"line longer than {MAX_LINE} bytes")
                    skipping = True
                carry = b""
            chunk = f.read(CHUNK)
            continue
        complete, carry = data[: cut + 1], data[cut + 1 :]
        if b"\0" in complete:
            report.broken = f"binary data (NUL bytes) after line {lineno}"
            return
        text = complete.decode("utf-8", "surrogateescape")
        if skipping:  # the first line is the end of an overlong one, already counted
            lineno += 1
            text = text.partition("\n")[2]
            skipping = False
        lineno = fmt.parse_text(text, lineno, bad)
        if len(carry) > MAX_LINE:
            bad(lineno + 1, f"line longer than {MAX_LINE} bytes")
            skipping = True
            carry = b""
        chunk = f.read(CHUNK)
    if carry and not skipping:
        lineno += 1
        line = carry.decode("utf-8", "surrogateescape")
        why = fmt.parse(line) if len(line) <= MAX_LINE else f"line longer than {MAX_LINE} bytes"
        if why is not None:
            bad(lineno, why)
            last_bad = True
    if last_bad:
        report.broken = f"ends mid-line at line {lineno} (half-written?)"
        return
    report.skipped = fmt.skipped
    report.indicators = sum(builder.counts.values()) - before
    report.sha256 = digest.hexdigest()


def version_of(files: list[FileReport]) -> str:
    digest = hashlib.sha256(f"watchpost-intel/{FORMAT_VERSION}".encode())
    for f in files:
        if not f.broken:
            digest.update(f"\0{Path(f.path).name}\0{f.sha256}".encode())
    return digest.hexdigest()[:12]
