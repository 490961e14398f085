"""Suricata rule text -> `Rule`, or the reason it is skipped, or a syntax error.

A rule is ``action proto src sport -> dst dport (option; option:value; ...)`` on one line
(a line ending in ``\\`` continues on the next). Three outcomes per rule:

- loaded: every keyword is in the subset (see docs/rules.md) and every value is valid;
- skipped (`Unsupported`, with a reason such as ``unsupported keyword: flowbits``): the rule is
  well formed but needs something outside the subset; it is never loaded in part;
- a syntax error (`RuleSyntaxError`): malformed text or values (``depth:abc``, no ``sid``,
  unbalanced parentheses, an unknown classtype); `rules check` exits non-zero on these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from appliance.detect.rules import addresses as addr
from appliance.detect.rules.classification import ClassType
from appliance.detect.rules.matcher import (
    BUFFER_HOOK,
    FLAG_BITS,
    FLOW_TO_CLIENT,
    FLOW_TO_SERVER,
    HOOK_DNS,
    HOOK_HTTP,
    HOOK_PACKET,
    HOOK_TLS,
    PKT,
    STATE_ESTABLISHED,
    STATE_NOT_ESTABLISHED,
    STATE_STATELESS,
    Content,
    Item,
    PcreItem,
    Rule,
    Threshold,
)
from appliance.detect.rules.pcre import PcreSyntaxError, PcreUnsupported, compile_pcre


class RuleSyntaxError(ValueError):
    """Malformed rule text; the loader adds file:line."""


class Unsupported(ValueError):
    """A well-formed rule outside the subset; the message is the skip reason."""


ACTIONS = ("alert", "drop", "pass")
UNSUPPORTED_ACTIONS = ("reject", "rejectsrc", "rejectdst", "rejectboth", "config")
# proto -> (IP protocols, app protocol, hook the rule runs in)
PROTOS: dict[str, tuple[frozenset[int] | None, str, str]] = {
    "ip": (None, "", HOOK_PACKET),
    "any": (None, "", HOOK_PACKET),
    "pkthdr": (None, "", HOOK_PACKET),
    "tcp": (frozenset({6}), "", HOOK_PACKET),
    "tcp-pkt": (frozenset({6}), "", HOOK_PACKET),
    "udp": (frozenset({17}), "", HOOK_PACKET),
    "icmp": (frozenset({1, 58}), "", HOOK_PACKET),
    "icmpv4": (frozenset({1}), "", HOOK_PACKET),
    "icmpv6": (frozenset({58}), "", HOOK_PACKET),
    "http": (frozenset({6}), "http", HOOK_HTTP),
    "http1": (frozenset({6}), "http", HOOK_HTTP),
    "tls": (frozenset({6}), "tls", HOOK_TLS),
    "dns": (frozenset({6, 17}), "dns", HOOK_DNS),
}
APP_OF_HOOK = {HOOK_HTTP: "http", HOOK_TLS: "tls", HOOK_DNS: "dns"}

# Sticky buffer keywords (dotted, and the older underscore spellings that are also sticky).
STICKY = {
    "pkt_data": PKT,
    "http.method": "http.method",
    "http.uri": "http.uri",
    "http.uri.raw": "http.uri.raw",
    "http.host": "http.host",
    "http.host.raw": "http.host.raw",
    "http.user_agent": "http.user_agent",
    "http.header": "http.header",
    "http.header.raw": "http.header.raw",
    "tls.sni": "tls.sni",
    "tls_sni": "tls.sni",
    "ja3.hash": "ja3.hash",
    "ja3_hash": "ja3.hash",
    "ja3.string": "ja3.string",
    "ja3_string": "ja3.string",
    "ja4.hash": "ja4.hash",
    "dns.query": "dns.query",
    "dns_query": "dns.query",
}
# Older content modifiers: they move the content just before them into that buffer.
MODIFIER_BUFFERS = {
    "http_method": "http.method",
    "http_uri": "http.uri",
    "http_raw_uri": "http.uri.raw",
    "http_host": "http.host",
    "http_raw_host": "http.host.raw",
    "http_user_agent": "http.user_agent",
    "http_header": "http.header",
    "http_raw_header": "http.header.raw",
}
CONTENT_MODIFIERS = ("nocase", "depth", "offset", "distance", "within", "fast_pattern", "rawbytes")
META = ("msg", "sid", "rev", "gid", "classtype", "priority", "reference", "metadata")
OTHER = ("content", "pcre", "flow", "flags", "dsize", "threshold", "detection_filter")
KEYWORDS = frozenset((*META, *OTHER, *CONTENT_MODIFIERS, *STICKY, *MODIFIER_BUFFERS))

# Keywords of Suricata's language we know we do not do, with a reason better than "unsupported".
WHY_NOT = {
    "flowbits": "state across flows and rules",
    "xbits": "state across flows and rules",
    "flowint": "state across flows and rules",
    "file_data": "bodies and files are not inspected, flow heads only",
    "file.data": "bodies and files are not inspected, flow heads only",
    "http.request_body": "bodies are not inspected, flow heads only",
    "http_client_body": "bodies are not inspected, flow heads only",
    "http.response_body": "responses are not dissected",
    "http_server_body": "responses are not dissected",
    "http.stat_code": "responses are not dissected",
    "http_stat_code": "responses are not dissected",
    "http.cookie": "cookies are never read",
    "http_cookie": "cookies are never read",
    "byte_test": "byte arithmetic",
    "byte_jump": "byte arithmetic",
    "byte_extract": "byte arithmetic",
    "byte_math": "byte arithmetic",
    "lua": "scripts",
    "luajit": "scripts",
    "filemagic": "files are not inspected",
    "filemd5": "files are not inspected",
    "filename": "files are not inspected",
    "fileext": "files are not inspected",
    "filestore": "files are not kept",
    "app-layer-event": "app-layer events",
    "stream-event": "stream events",
    "decode-event": "decoder events",
    "base64_decode": "decoding transforms",
    "base64_data": "decoding transforms",
    "to_lowercase": "transforms",
    "ssl_state": "TLS state",
    "tls.cert_subject": "certificates are not dissected",
    "tls.cert_issuer": "certificates are not dissected",
    "ja3s.hash": "server hellos are not dissected",
}

_NUM = re.compile(r"^-?\d+$")


def split_rule(text: str) -> tuple[list[str], list[tuple[str, str | None]]]:
    """The seven header fields and the (name, raw value) options of one rule's text."""
    text = text.strip()
    open_at = text.find("(")
    if open_at < 0:
        raise RuleSyntaxError("no '(' starting the options")
    if not text.endswith(")"):
        raise RuleSyntaxError("the options do not end with ')'")
    header = _split_header(text[:open_at])
    return header, _split_options(text[open_at + 1 : -1])


def _split_header(text: str) -> list[str]:
    fields = text.split()
    if len(fields) == 7 and all(f.count("[") == f.count("]") for f in fields):
        return fields  # no group with spaces inside: the common case
    return _split_header_slow(text)


def _split_header_slow(text: str) -> list[str]:
    fields = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch.isspace() and depth == 0:
            if cur:
                fields.append("".join(cur))
                cur = []
            continue
        if not ch.isspace():
            cur.append(ch)
    if cur:
        fields.append("".join(cur))
    if depth:
        raise RuleSyntaxError("unbalanced '[' in the header")
    if len(fields) != 7:
        raise RuleSyntaxError(
            f"the header needs 7 fields (action proto src sport dir dst dport), got {len(fields)}"
        )
    return fields


_OPTION = re.compile(r"((?:[^;\\]|\\.)*);", re.S)  # up to a ';' not escaped by a backslash
_OPTION_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def _split_options(body: str) -> list[tuple[str, str | None]]:
    """Options are separated by ';' that is not escaped with a backslash."""
    out: list[tuple[str, str | None]] = []
    end = 0
    match = _OPTION.match  # anchored at `end`: linear in the body, no search
    while (m := match(body, end)) is not None:
        _add_option(out, m.group(1))
        end = m.end()
    rest = body[end:].strip()
    if rest:
        raise RuleSyntaxError(f"option {rest[:40]!r} is not ended by ';'")
    return out


def _add_option(out: list[tuple[str, str | None]], raw: str) -> None:
    raw = raw.strip()
    if not raw:
        raise RuleSyntaxError("an empty option (';;')")
    name, colon, value = raw.partition(":")
    name = name.strip()
    if not name or not _OPTION_NAME.fullmatch(name):
        raise RuleSyntaxError(f"bad option name {name[:40]!r}")
    out.append((name, value.strip() if colon else None))


def unquote(value: str, what: str) -> str:
    """A double-quoted option value with \\" \\; \\\\ \\: escapes resolved."""
    v = value.strip()
    if len(v) < 2 or v[0] != '"' or v[-1] != '"':
        raise RuleSyntaxError(f"{what}: expected a value in double quotes")
    return _unescape(v[1:-1], what)


def _unescape(s: str, what: str) -> str:
    if "\\" not in s and '"' not in s:
        return s
    out = []
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == "\\":
            if i + 1 >= n:
                raise RuleSyntaxError(f"{what}: a trailing backslash")
            nxt = s[i + 1]
            if nxt not in '";\\:|':
                raise RuleSyntaxError(f"{what}: invalid escape \\{nxt}")
            out.append(nxt)
            i += 2
            continue
        if ch == '"':
            raise RuleSyntaxError(f"{what}: an unescaped '\"' inside the value")
        out.append(ch)
        i += 1
    return "".join(out)


def content_bytes(value: str) -> tuple[bytes, bool]:
    """A content value -> (bytes, negated). ``|41 42|`` are hex bytes, the rest UTF-8 text."""
    v = value.strip()
    negated = v.startswith("!")
    if negated:
        v = v[1:].lstrip()
    if len(v) < 2 or v[0] != '"' or v[-1] != '"':
        raise RuleSyntaxError('content: expected "..." in double quotes')
    body = v[1:-1]
    if not body:
        raise RuleSyntaxError("content: empty")
    if not any(c in body for c in '|\\";'):
        return body.encode("utf-8"), negated  # plain text: the common case
    out = bytearray()
    i, n = 0, len(body)
    hex_mode = False
    while i < n:
        ch = body[i]
        if ch == "|" and not hex_mode:
            hex_mode = True
            i += 1
            continue
        if hex_mode:
            if ch == "|":
                hex_mode = False
                i += 1
                continue
            if ch.isspace():
                i += 1
                continue
            pair = body[i : i + 2]
            if len(pair) < 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                raise RuleSyntaxError(f"content: bad hex {pair!r} between '|'")
            out.append(int(pair, 16))
            i += 2
            continue
        if ch == "\\":
            if i + 1 >= n or body[i + 1] not in '";\\:|':
                raise RuleSyntaxError('content: invalid escape (only \\" \\; \\\\ \\: \\|)')
            out += body[i + 1].encode()
            i += 2
            continue
        if ch == '"':
            raise RuleSyntaxError("content: an unescaped '\"' (write \\\" or |22|)")
        if ch == ";":
            raise RuleSyntaxError("content: an unescaped ';'")
        out += ch.encode("utf-8")
        i += 1
    if hex_mode:
        raise RuleSyntaxError("content: a '|' hex section is not closed")
    if not out:
        raise RuleSyntaxError("content: empty")
    return bytes(out), negated


def _int(value: str | None, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if value is None or not _NUM.match(value.strip()):
        raise RuleSyntaxError(f"{what}: expected a number, got {value!r}")
    n = int(value)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise RuleSyntaxError(f"{what}: {n} outside {lo}..{hi}")
    return n


def _flag(value: str | None, name: str) -> None:
    if value is not None:
        raise RuleSyntaxError(f"{name}: takes no value")


class Parser:
    """Parses rules against one set of variables and classes (cached address/port lists)."""

    def __init__(self, variables: Mapping[str, str], classes: Mapping[str, ClassType]) -> None:
        self.specs = addr.Specs(variables)
        self.classes = classes

    def parse(self, text: str, source: str = "") -> Rule:
        header, options = split_rule(text)
        action, proto, src, sport, direction, dst, dport = header
        # Unsupported keywords and kinds first: such a rule is skipped whatever its values are.
        sid_raw = next((v for n, v in options if n == "sid"), None)
        if sid_raw is None:
            raise RuleSyntaxError("no sid")
        sid = _int(sid_raw, "sid", 1, 2**32 - 1)
        if action not in ACTIONS:
            if action in UNSUPPORTED_ACTIONS:
                raise Unsupported(f"unsupported action: {action}")
            raise RuleSyntaxError(f"unknown action {action!r}")
        if direction not in ("->", "<>"):
            if direction == "<-":
                raise RuleSyntaxError("direction '<-' is not valid (write the rule with '->')")
            raise RuleSyntaxError(f"bad direction {direction!r} (expected -> or <>)")
        if proto not in PROTOS:
            if re.fullmatch(r"[a-z0-9\-]+", proto):
                raise Unsupported(f"unsupported protocol: {proto}")
            raise RuleSyntaxError(f"bad protocol {proto!r}")
        for name, _ in options:
            if name not in KEYWORDS:
                why = WHY_NOT.get(name)
                raise Unsupported(f"unsupported keyword: {name}" + (f" ({why})" if why else ""))
        ipprotos, app, hook = PROTOS[proto]
        try:
            rule = Rule(
                action=action,
                proto=proto,
                ipprotos=ipprotos,
                app=app,
                src=self.specs.address(src),
                sport=self.specs.port(sport),
                dst=self.specs.address(dst),
                dport=self.specs.port(dport),
                bidirectional=direction == "<>",
                sid=sid,
                hook=hook,
                source=source,
            )
        except addr.UnknownVariable as e:
            raise Unsupported(str(e)) from None
        except addr.SpecError as e:
            raise RuleSyntaxError(str(e)) from None
        self._options(rule, options)
        return rule

    def _options(self, rule: Rule, options: list[tuple[str, str | None]]) -> None:
        items: list[Item] = []
        sticky = PKT
        last: Item | None = None  # the content/pcre modifiers apply to
        seen: set[str] = set()
        classtype: ClassType | None = None
        priority: int | None = None
        refs: list[tuple[str, str]] = []
        meta: list[str] = []
        for name, value in options:
            if name in ("msg", "sid", "rev", "gid", "classtype", "priority", "flow", "flags",
                        "dsize", "threshold", "detection_filter"):  # fmt: skip
                if name in seen:
                    raise RuleSyntaxError(f"{name} given twice")
                seen.add(name)
            if name == "msg":
                rule.msg = unquote(value or "", "msg")
            elif name == "sid":
                pass  # read above
            elif name == "rev":
                rule.rev = _int(value, "rev", 0, 2**32 - 1)
            elif name == "gid":
                rule.gid = _int(value, "gid", 0, 2**32 - 1)
            elif name == "classtype":
                ct = (value or "").strip()
                if ct not in self.classes:
                    raise RuleSyntaxError(
                        f"unknown classtype {ct!r} (not in the classification file)"
                    )
                classtype = self.classes[ct]
            elif name == "priority":
                priority = _int(value, "priority", 1, 255)
            elif name == "reference":
                kind, comma, where = (value or "").partition(",")
                if not comma or not kind.strip() or not where.strip():
                    raise RuleSyntaxError("reference: expected type,value")
                refs.append((kind.strip(), where.strip()))
            elif name == "metadata":
                if not value:
                    raise RuleSyntaxError("metadata: expected key value[, key value ...]")
                meta += [m.strip() for m in value.split(",") if m.strip()]
            elif name == "flow":
                self._flow(rule, value)
            elif name == "flags":
                rule.flags = _flags(value)
            elif name == "dsize":
                rule.dsize = _dsize(value)
            elif name in ("threshold", "detection_filter"):
                th = _threshold(name, value)
                if name == "threshold":
                    rule.threshold = th
                else:
                    rule.detection_filter = th
            elif name in STICKY:
                _flag(value, name)
                sticky = STICKY[name]
                last = None
            elif name == "content":
                pattern, negated = content_bytes(value or "")
                last = Content(pattern, negated=negated, buffer=sticky)
                items.append(last)
            elif name == "pcre":
                try:
                    p = compile_pcre(value or "")
                except PcreSyntaxError as e:
                    raise RuleSyntaxError(str(e)) from None
                except PcreUnsupported as e:
                    raise Unsupported(str(e)) from None
                if p.buffer is not None and sticky != PKT and p.buffer != sticky:
                    raise RuleSyntaxError(f"pcre: flag selects {p.buffer} inside {sticky}")
                last = PcreItem(p, buffer=p.buffer or sticky)
                items.append(last)
            elif name in MODIFIER_BUFFERS:
                _flag(value, name)
                if not isinstance(last, Content):
                    raise RuleSyntaxError(f"{name}: no content before it")
                if last.buffer != PKT:
                    raise RuleSyntaxError(f"{name}: the content is already in {last.buffer}")
                last.buffer = MODIFIER_BUFFERS[name]
            else:  # a content modifier
                self._modifier(last, name, value)
        if classtype is not None:
            rule.classtype = classtype.name
            rule.category = classtype.description
            rule.severity = classtype.severity
        if priority is not None:
            rule.severity = min(priority, 3)
        if classtype is None and priority is None:
            rule.severity = 3
        rule.references = tuple(refs)
        rule.metadata = tuple(meta)
        self._chains(rule, items)

    def _flow(self, rule: Rule, value: str | None) -> None:
        if not value:
            raise RuleSyntaxError("flow: expected to_server, to_client, established, ...")
        for part in (p.strip() for p in value.split(",")):
            if part in ("to_server", "from_client"):
                d = FLOW_TO_SERVER
            elif part in ("to_client", "from_server"):
                d = FLOW_TO_CLIENT
            elif part in ("established", "not_established", "stateless"):
                s = {"established": STATE_ESTABLISHED, "not_established": STATE_NOT_ESTABLISHED,
                     "stateless": STATE_STATELESS}[part]  # fmt: skip
                if rule.flow_state and rule.flow_state != s:
                    raise RuleSyntaxError(f"flow: {part} contradicts an earlier state")
                rule.flow_state = s
                continue
            elif part == "no_stream":
                continue  # packets are what is inspected anyway
            elif part in ("only_stream", "only_frag", "no_frag"):
                raise Unsupported(f"flow: {part} (packets are inspected, not streams)")
            else:
                raise RuleSyntaxError(f"flow: unknown option {part!r}")
            if rule.flow_dir and rule.flow_dir != d:
                raise RuleSyntaxError(f"flow: {part} contradicts an earlier direction")
            rule.flow_dir = d

    def _modifier(self, last: Item | None, name: str, value: str | None) -> None:
        if not isinstance(last, Content):
            raise RuleSyntaxError(f"{name}: no content before it")
        c = last
        if name == "nocase":
            _flag(value, name)
            c.nocase = True
        elif name == "rawbytes":
            _flag(value, name)
        elif name == "fast_pattern":
            if value is not None and value.strip() != "only":
                parts = value.split(",")
                if len(parts) != 2 or not all(_NUM.match(p.strip()) for p in parts):
                    raise RuleSyntaxError(
                        "fast_pattern: expected no value, 'only' or offset,length"
                    )
            if c.negated:
                raise RuleSyntaxError("fast_pattern: cannot be a negated content")
            c.fast_pattern = True
        else:
            if getattr(c, name) is not None:
                raise RuleSyntaxError(f"{name} given twice for one content")
            if name in ("depth", "offset"):
                n = _int(value, name, 0, 65535)
                if c.relative:
                    raise RuleSyntaxError(f"{name}: mixes absolute and relative (distance/within)")
            elif name == "distance":
                n = _int(value, name, -65535, 65535)
            else:
                n = _int(value, name, 1, 65535)
            if name in ("distance", "within") and (c.offset is not None or c.depth is not None):
                raise RuleSyntaxError(f"{name}: mixes relative and absolute (offset/depth)")
            setattr(c, name, n)

    def _chains(self, rule: Rule, items: list[Item]) -> None:
        chains: dict[str, list[Item]] = {}
        for it in items:
            if isinstance(it, Content):
                plen = len(it.pattern)
                if it.depth is not None and it.depth < plen:
                    raise RuleSyntaxError(f"depth {it.depth} is shorter than the content ({plen})")
                if it.within is not None and it.within < plen:
                    raise RuleSyntaxError(
                        f"within {it.within} is shorter than the content ({plen})"
                    )
                if it.nocase:
                    it.pattern = it.pattern.lower()
            chain = chains.setdefault(it.buffer, [])
            if it.relative and not chain:
                raise RuleSyntaxError(
                    f"{'pcre R' if isinstance(it, PcreItem) else 'distance/within'} needs an "
                    f"earlier content or pcre in {it.buffer}"
                )
            chain.append(it)
        hooks = {BUFFER_HOOK[b] for b in chains if b != PKT}
        if len(hooks) > 1:
            raise Unsupported(f"buffers of two protocols ({', '.join(sorted(hooks))})")
        if hooks:
            hook = hooks.pop()
            if rule.hook not in (HOOK_PACKET, hook):
                raise Unsupported(f"{next(b for b in chains if b != PKT)} in a {rule.proto} rule")
            rule.hook = hook
            rule.app = APP_OF_HOOK[hook]
            if rule.ipprotos is None:
                rule.ipprotos = PROTOS[rule.app][0]
        rule.chains = {b: tuple(c) for b, c in chains.items()}
        rule.fast = _fast_pattern(items)
        if (
            rule.hook == HOOK_PACKET
            and rule.fast is None
            and not (rule.flags or rule.dsize or rule.ipprotos or rule.sport or rule.dport)
            and rule.src is None
            and rule.dst is None
        ):
            raise Unsupported("matches every packet (no content, flags, dsize, port or address)")


def _fast_pattern(items: list[Item]) -> tuple[str, bytes] | None:
    """The content the prefilter looks for: the one marked fast_pattern, else the longest
    non-negated one (ties: the first)."""
    contents = [it for it in items if isinstance(it, Content) and not it.negated]
    marked = [c for c in contents if c.fast_pattern]
    if len(marked) > 1:
        raise RuleSyntaxError("fast_pattern on more than one content")
    pick = marked[0] if marked else max(contents, key=lambda c: len(c.pattern), default=None)
    if pick is None:
        return None
    return pick.buffer, pick.pattern.lower()


def _flags(value: str | None) -> tuple[str, int, int]:
    v = (value or "").strip()
    if not v:
        raise RuleSyntaxError("flags: expected letters of FSRPAUCE0")
    main, _, ignore = v.partition(",")
    main = main.strip()
    mod = ""
    for m in "!+*":
        if main.startswith(m) or main.endswith(m):
            mod = m
            main = main.strip(m)
            break
    bits = 0
    if main == "0":
        if mod:
            raise RuleSyntaxError("flags: 0 takes no modifier")
    else:
        if not main:
            raise RuleSyntaxError("flags: no flag letters")
        for ch in main:
            if ch not in FLAG_BITS:
                raise RuleSyntaxError(f"flags: unknown flag {ch!r}")
            bits |= FLAG_BITS[ch]
    mask = 0
    for ch in ignore.strip():
        if ch not in FLAG_BITS:
            raise RuleSyntaxError(f"flags: unknown flag {ch!r} in the ignore mask")
        mask |= FLAG_BITS[ch]
    return mod, bits, mask


_DSIZE = re.compile(r"^\s*(?:(<=|>=|<|>|!)?\s*(\d+)|(\d+)\s*<>\s*(\d+))\s*$")


def _dsize(value: str | None) -> tuple[str, int, int]:
    m = _DSIZE.match(value or "")
    if not m:
        raise RuleSyntaxError(f"dsize: expected N, <N, >N, <=N, >=N, !N or N<>M, got {value!r}")
    if m.group(3) is not None:
        a, b = int(m.group(3)), int(m.group(4))
        if a >= b:
            raise RuleSyntaxError(f"dsize: {a}<>{b} is an empty range")
        return "<>", a, b
    return m.group(1) or "=", int(m.group(2)), 0


def _threshold(name: str, value: str | None) -> Threshold:
    fields: dict[str, str] = {}
    for part in (value or "").split(","):
        k, _, v = part.strip().partition(" ")
        if not k or not v.strip():
            raise RuleSyntaxError(f"{name}: expected 'key value' pairs, got {part.strip()!r}")
        if k in fields:
            raise RuleSyntaxError(f"{name}: {k} given twice")
        fields[k] = v.strip()
    want = {"track", "count", "seconds"} | ({"type"} if name == "threshold" else set())
    if set(fields) != want:
        missing, extra = want - set(fields), set(fields) - want
        why = f"missing {', '.join(sorted(missing))}" if missing else ""
        why += ("; " if why and extra else "") + (
            f"unknown {', '.join(sorted(extra))}" if extra else ""
        )
        raise RuleSyntaxError(f"{name}: {why}")
    kind = fields.get("type", "detection")
    if kind not in ("limit", "threshold", "both", "detection"):
        raise RuleSyntaxError(f"{name}: type must be limit, threshold or both, got {kind!r}")
    track = fields["track"]
    if track not in ("by_src", "by_dst", "by_rule", "by_both"):
        raise RuleSyntaxError(f"{name}: track must be by_src, by_dst, by_rule or by_both")
    return Threshold(
        kind,
        track,
        _int(fields["count"], f"{name} count", 1, 1_000_000),
        _int(fields["seconds"], f"{name} seconds", 1, 86400 * 30),
    )
