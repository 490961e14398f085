"""``pcre`` on the packet path without backtracking: RE2, over at most PCRE_CAP bytes.

Python's `re` (like PCRE) backtracks: ``(a+)+$`` on 30 ``a``s and a ``b`` takes minutes, and a
rule set is written by others. RE2 (the PyPI ``google-re2`` binding) compiles to automata and
matches in time linear in the input, whatever the pattern, so one pcre costs at most
O(PCRE_CAP x pattern size): the input handed to it is cut at PCRE_CAP bytes. Patterns RE2 cannot
run in linear time (backreferences, lookahead/lookbehind, atomic groups, possessive quantifiers,
recursion) are refused when the rule loads and the rule is skipped with that reason: never half
loaded, never run with a backtracking engine.

Flags: ``i m s x`` as in PCRE, ``A`` (anchored at the start), ``G`` (ungreedy), ``R`` (relative
to the previous match) and the HTTP buffer flags ``U`` (normalised URI), ``I`` (raw URI),
``H`` / ``D`` (headers), ``M`` (method), ``V`` (User-Agent), ``W`` (Host), which select the
buffer as the sticky keywords do. ``E``, ``O`` and the body/cookie/status buffers are outside
the subset (the rule is skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2

# Bytes of a buffer a pcre sees (from its start, or from the previous match with R). 2 KiB
# holds a request head's URI, headers and the start of any payload a flow head carries.
PCRE_CAP = 2048
# Memory RE2 may use for one compiled pattern (its DFA cache); a pattern needing more is refused.
MAX_MEM = 1 << 20

# Buffer flags -> the sticky buffer they select.
BUFFER_FLAGS = {
    "U": "http.uri",
    "I": "http.uri.raw",
    "H": "http.header",
    "D": "http.header.raw",
    "M": "http.method",
    "V": "http.user_agent",
    "W": "http.host",
}
UNSUPPORTED_FLAGS = {
    "E": "pcre flag E (dollar only at the very end)",
    "O": "pcre flag O (overriding the match limits)",
    "P": "pcre flag P (request body is not inspected)",
    "Q": "pcre flag Q (response body is not inspected)",
    "C": "pcre flag C (cookies are not inspected)",
    "K": "pcre flag K (cookies are not inspected)",
    "S": "pcre flag S (response status is not inspected)",
    "Y": "pcre flag Y (response status is not inspected)",
    "B": "pcre flag B (raw bytes: payload is always raw here)",
}


class PcreSyntaxError(ValueError):
    """The pcre option is malformed (a syntax error)."""


class PcreUnsupported(ValueError):
    """Well formed, but outside the subset (skip the rule with this reason)."""


@dataclass(slots=True)
class Pcre:
    regex: Any  # re2._Regexp
    source: str
    negated: bool
    relative: bool
    buffer: str | None  # selected by a buffer flag, else None (the current sticky buffer)

    def search(self, data: bytes, start: int = 0) -> tuple[int, int] | None:
        """(start, end) of the first match in data[start : start + PCRE_CAP], or None."""
        window = data[start : start + PCRE_CAP]
        m = self.regex.search(window)
        if m is None:
            return None
        return start + m.start(), start + m.end()


def _strip_extended(pat: str) -> str:
    """PCRE's x flag done before compiling (RE2 has no x): unescaped whitespace outside a
    character class goes, and so does ``#`` to the end of the line."""
    out = []
    i, n = 0, len(pat)
    in_class = False
    while i < n:
        ch = pat[i]
        if ch == "\\" and i + 1 < n:
            out.append(pat[i : i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
            out.append(ch)
        elif ch == "[":
            in_class = True
            out.append(ch)
            if i + 1 < n and pat[i + 1] == "^":
                out.append("^")
                i += 1
            if i + 1 < n and pat[i + 1] == "]":
                out.append("]")
                i += 1
        elif ch in " \t\r\n\f\v":
            pass
        elif ch == "#":
            while i < n and pat[i] != "\n":
                i += 1
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _translate(pat: str) -> str:
    r"""The few PCRE spellings RE2 writes differently: ``\Z`` (end or before a final newline)."""
    out = []
    i, n = 0, len(pat)
    while i < n:
        ch = pat[i]
        if ch == "\\" and i + 1 < n:
            nxt = pat[i + 1]
            out.append(r"(?:\n?\z)" if nxt == "Z" else pat[i : i + 2])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


_REFUSED = (
    ("(?=", "lookahead"),
    ("(?!", "negative lookahead"),
    ("(?<=", "lookbehind"),
    ("(?<!", "negative lookbehind"),
    ("(?>", "atomic group"),
    ("(?R", "recursion"),
)


def compile_pcre(value: str) -> Pcre:
    """Compile the value of a ``pcre`` option: ``"/pattern/flags"`` or ``!"/pattern/flags"``."""
    v = value.strip()
    negated = v.startswith("!")
    if negated:
        v = v[1:].lstrip()
    if len(v) < 2 or v[0] != '"' or v[-1] != '"':
        raise PcreSyntaxError('pcre: expected "/pattern/flags" in double quotes')
    body = v[1:-1]
    if not body.startswith("/"):
        raise PcreSyntaxError("pcre: the pattern must start with '/'")
    end = body.rfind("/")
    if end == 0:
        raise PcreSyntaxError("pcre: no closing '/' after the pattern")
    pattern, flags = body[1:end], body[end + 1 :]
    if not pattern:
        raise PcreSyntaxError("pcre: empty pattern")
    relative = False
    buffer: str | None = None
    inline = ""
    for f in flags:
        if f in "ims":
            inline += f
        elif f == "x":
            pattern = _strip_extended(pattern)
        elif f == "A":
            pattern = r"\A(?:" + pattern + ")"
        elif f == "G":
            inline += "U"
        elif f == "R":
            relative = True
        elif f in BUFFER_FLAGS:
            if buffer is not None and buffer != BUFFER_FLAGS[f]:
                raise PcreSyntaxError(
                    f"pcre: flags select two buffers ({buffer}, {BUFFER_FLAGS[f]})"
                )
            buffer = BUFFER_FLAGS[f]
        elif f in UNSUPPORTED_FLAGS:
            raise PcreUnsupported(UNSUPPORTED_FLAGS[f])
        else:
            raise PcreSyntaxError(f"pcre: unknown flag {f!r}")
    for token, what in _REFUSED:
        if token in pattern:
            raise PcreUnsupported(f"pcre needs backtracking ({what})")
    pattern = _translate(pattern)
    if inline:
        pattern = f"(?{''.join(sorted(set(inline)))}){pattern}"
    opts = re2.Options()
    opts.encoding = re2.Options.Encoding.LATIN1
    opts.log_errors = False
    opts.max_mem = MAX_MEM
    try:
        # The rule text is UTF-8; a non-ASCII literal then matches its UTF-8 bytes.
        regex = re2.compile(pattern.encode("utf-8"), opts)
    except re2.error as e:
        why = e.args[0] if e.args else str(e)
        if isinstance(why, bytes):
            why = why.decode("utf-8", "replace")
        if why.startswith(("missing ", "unexpected ", "trailing ")):
            raise PcreSyntaxError(f"pcre: {why}") from None  # malformed for PCRE too
        if why.startswith("bad repetition operator") and why.rstrip().endswith("+"):
            raise PcreUnsupported("pcre needs backtracking (possessive quantifier)") from None
        if why.startswith("invalid escape sequence: \\") and why[-1:].isdigit():
            raise PcreUnsupported("pcre needs backtracking (backreference)") from None
        raise PcreUnsupported(
            f"pcre outside the linear-time subset ({why.split(':')[0]})"
        ) from None
    return Pcre(regex, value, negated, relative, buffer)
