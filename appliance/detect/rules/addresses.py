"""Address and port lists of a rule header, with variables, negation, groups and ranges.

Suricata's grammar: ``any``, an address (``203.0.113.5``, ``2001:db8::1``), a network
(``198.18.0.0/15``), a range (``192.0.2.10-192.0.2.20``), a variable (``$HOME_NET``), a group
``[a, b, ...]`` (groups nest), and ``!`` before any of them. A group is the union of its
positive members minus its negated ones; a group of only negated members is "everything but".
Ports: ``any``, ``80``, ``1024:`` / ``:1023`` / ``80:90`` ranges, groups, negation, variables.

Both compile to sorted, merged integer ranges (per address family), so a test is a bisect; the
compiled sets are cached by their text so the thousands of rules that say ``$HOME_NET`` or
``$HTTP_PORTS`` share one object.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable, Mapping

V4_MAX = (1 << 32) - 1
V6_MAX = (1 << 128) - 1
PORT_MAX = 65535

Ranges = tuple[tuple[int, int], ...]

# Suricata's default variables (suricata.yaml), less HOME_NET, which comes from the config.
DEFAULT_VARS: dict[str, str] = {
    "EXTERNAL_NET": "!$HOME_NET",
    "HTTP_SERVERS": "$HOME_NET",
    "SMTP_SERVERS": "$HOME_NET",
    "SQL_SERVERS": "$HOME_NET",
    "DNS_SERVERS": "$HOME_NET",
    "TELNET_SERVERS": "$HOME_NET",
    "AIM_SERVERS": "$EXTERNAL_NET",
    "DC_SERVERS": "$HOME_NET",
    "DNP3_SERVER": "$HOME_NET",
    "DNP3_CLIENT": "$HOME_NET",
    "MODBUS_CLIENT": "$HOME_NET",
    "MODBUS_SERVER": "$HOME_NET",
    "ENIP_CLIENT": "$HOME_NET",
    "ENIP_SERVER": "$HOME_NET",
    "HTTP_PORTS": "80",
    "SHELLCODE_PORTS": "!80",
    "ORACLE_PORTS": "1521",
    "SSH_PORTS": "22",
    "DNP3_PORTS": "20000",
    "MODBUS_PORTS": "502",
    "FILE_DATA_PORTS": "[$HTTP_PORTS,110,143]",
    "FTP_PORTS": "21",
    "GENEVE_PORTS": "6081",
    "VXLAN_PORTS": "4789",
    "TEREDO_PORTS": "3544",
}


class SpecError(ValueError):
    """A malformed address or port list (a syntax error in the rule)."""


class UnknownVariable(SpecError):
    """A ``$NAME`` no variable defines."""


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def complement(ranges: Ranges, top: int) -> Ranges:
    out = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= top:
        out.append((nxt, top))
    return tuple(out)


def subtract(a: Ranges, b: Ranges, top: int) -> Ranges:
    """a minus b."""
    keep = complement(b, top)
    out = []
    for lo, hi in a:
        for klo, khi in keep:
            s, e = max(lo, klo), min(hi, khi)
            if s <= e:
                out.append((s, e))
    return merge(out)


def _split_group(body: str, what: str) -> list[str]:
    """The members of ``[...]`` (without the brackets), split at top-level commas."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in body:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unbalanced ']' in {what}")
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise SpecError(f"unbalanced '[' in {what}")
    parts.append("".join(cur).strip())
    if any(not p for p in parts):
        raise SpecError(f"empty member in {what}")
    return parts


class _Resolver:
    """Shared logic: an item is positive or negated, a group, a variable, or a leaf."""

    kind = ""

    def __init__(self, variables: Mapping[str, str]) -> None:
        self.vars = variables

    def leaf(self, text: str) -> tuple[Ranges, Ranges]:  # (v4 or ports, v6)
        raise NotImplementedError

    def tops(self) -> tuple[int, int]:
        raise NotImplementedError

    def resolve(self, text: str, stack: tuple[str, ...] = ()) -> tuple[Ranges, Ranges]:
        text = text.strip()
        if not text:
            raise SpecError(f"empty {self.kind}")
        t4, t6 = self.tops()
        if text.startswith("!"):
            a, b = self.resolve(text[1:], stack)
            return complement(a, t4), complement(b, t6)
        if text.startswith("["):
            if not text.endswith("]"):
                raise SpecError(f"unbalanced '[' in {self.kind} {text!r}")
            members = _split_group(text[1:-1], f"{self.kind} {text!r}")
            pos4: list[tuple[int, int]] = []
            pos6: list[tuple[int, int]] = []
            neg4: list[tuple[int, int]] = []
            neg6: list[tuple[int, int]] = []
            any_pos = False
            for m in members:
                if m.startswith("!"):
                    a, b = self.resolve(m[1:], stack)
                    neg4 += a
                    neg6 += b
                else:
                    any_pos = True
                    a, b = self.resolve(m, stack)
                    pos4 += a
                    pos6 += b
            p4 = merge(pos4) if any_pos else ((0, t4),)
            p6 = merge(pos6) if any_pos else ((0, t6),) if t6 else ()
            return subtract(p4, merge(neg4), t4), subtract(p6, merge(neg6), t6)
        if text.startswith("$"):
            name = text[1:]
            if name in stack:
                raise SpecError(f"variable ${name} refers to itself")
            if name not in self.vars:
                raise UnknownVariable(f"unknown variable ${name}")
            return self.resolve(self.vars[name], (*stack, name))
        if text == "any":
            return ((0, t4),), (((0, t6),) if t6 else ())
        return self.leaf(text)


class _Addresses(_Resolver):
    kind = "address"

    def tops(self) -> tuple[int, int]:
        return V4_MAX, V6_MAX

    def leaf(self, text: str) -> tuple[Ranges, Ranges]:
        try:
            if "-" in text and "/" not in text:
                a, _, b = text.partition("-")
                lo, hi = ipaddress.ip_address(a.strip()), ipaddress.ip_address(b.strip())
                if lo.version != hi.version or int(lo) > int(hi):
                    raise SpecError(f"bad address range {text!r}")
                r = ((int(lo), int(hi)),)
                return (r, ()) if lo.version == 4 else ((), r)
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise SpecError(f"bad address {text!r}") from None
        r = ((int(net.network_address), int(net.broadcast_address)),)
        return (r, ()) if net.version == 4 else ((), r)


class _Ports(_Resolver):
    kind = "port"

    def tops(self) -> tuple[int, int]:
        return PORT_MAX, 0

    def leaf(self, text: str) -> tuple[Ranges, Ranges]:
        try:
            if ":" in text:
                a, _, b = text.partition(":")
                lo = int(a) if a.strip() else 0
                hi = int(b) if b.strip() else PORT_MAX
            else:
                lo = hi = int(text)
        except ValueError:
            raise SpecError(f"bad port {text!r}") from None
        if not 0 <= lo <= hi <= PORT_MAX:
            raise SpecError(f"bad port range {text!r}")
        return ((lo, hi),), ()


class AddrSet:
    """A compiled address list; ``None`` stands for ``any`` in rules (no test at all)."""

    __slots__ = ("_hi4", "_hi6", "_lo4", "_lo6", "text")

    def __init__(self, text: str, v4: Ranges, v6: Ranges) -> None:
        self.text = text
        self.set(v4, v6)

    def set(self, v4: Ranges, v6: Ranges) -> None:
        self._lo4 = tuple(r[0] for r in v4)
        self._hi4 = tuple(r[1] for r in v4)
        self._lo6 = tuple(r[0] for r in v6)
        self._hi6 = tuple(r[1] for r in v6)

    def __contains__(self, addr: bytes) -> bool:
        a = int.from_bytes(addr, "big")
        if len(addr) == 4:
            lo, hi = self._lo4, self._hi4
        else:
            lo, hi = self._lo6, self._hi6
        i = bisect_right(lo, a) - 1
        return i >= 0 and a <= hi[i]

    @property
    def empty(self) -> bool:
        return not self._lo4 and not self._lo6

    def __repr__(self) -> str:
        return f"AddrSet({self.text!r})"


class PortSet:
    """A compiled port list; small lists are a frozenset, wide ones ranges."""

    __slots__ = ("_hi", "_lo", "_set", "text")

    def __init__(self, text: str, ranges: Ranges) -> None:
        self.text = text
        size = sum(hi - lo + 1 for lo, hi in ranges)
        self._set = (
            frozenset(p for lo, hi in ranges for p in range(lo, hi + 1)) if size <= 64 else None
        )
        self._lo = tuple(r[0] for r in ranges)
        self._hi = tuple(r[1] for r in ranges)

    def __contains__(self, port: int) -> bool:
        s = self._set
        if s is not None:
            return port in s
        i = bisect_right(self._lo, port) - 1
        return i >= 0 and port <= self._hi[i]

    @property
    def ports(self) -> frozenset[int] | None:
        """The ports, when the list is small enough to index by; None for wide lists."""
        return self._set

    @property
    def empty(self) -> bool:
        return not self._lo

    def __repr__(self) -> str:
        return f"PortSet({self.text!r})"


class Specs:
    """Compiles and caches the address and port lists of a rule set's headers."""

    def __init__(self, variables: Mapping[str, str]) -> None:
        self.vars = dict(variables)
        self._addr = _Addresses(self.vars)
        self._port = _Ports(self.vars)
        self._addr_cache: dict[str, AddrSet | None] = {}
        self._port_cache: dict[str, PortSet | None] = {}

    def address(self, text: str) -> AddrSet | None:
        """The compiled list, or None for one that matches every address."""
        if text in self._addr_cache:
            return self._addr_cache[text]
        v4, v6 = self._addr.resolve(text)
        full = v4 == ((0, V4_MAX),) and v6 == ((0, V6_MAX),)
        # A list naming a variable stays an object even when it is "any" today, so `rebind`
        # can change it in place (HOME_NET follows inline.home_nets).
        out = None if full and "$" not in text else AddrSet(text, v4, v6)
        if out is not None and out.empty:
            raise SpecError(f"address list {text!r} matches no address")
        self._addr_cache[text] = out
        return out

    def rebind(self, variables: Mapping[str, str]) -> None:
        """New values for the variables: every address list naming one is recompiled in place
        (all or nothing: a list that would match no address raises SpecError first)."""
        resolver = _Addresses(dict(variables))
        staged = []
        for text, obj in self._addr_cache.items():
            if obj is None or "$" not in text:
                continue
            v4, v6 = resolver.resolve(text)
            if not v4 and not v6:
                raise SpecError(f"address list {text!r} matches no address")
            staged.append((obj, v4, v6))
        for obj, v4, v6 in staged:
            obj.set(v4, v6)
        self.vars = dict(variables)
        self._addr = resolver

    def port(self, text: str) -> PortSet | None:
        if text in self._port_cache:
            return self._port_cache[text]
        ranges, _ = self._port.resolve(text)
        out = None if ranges == ((0, PORT_MAX),) else PortSet(text, ranges)
        if out is not None and out.empty:
            raise SpecError(f"port list {text!r} matches no port")
        self._port_cache[text] = out
        return out


def default_vars(home_nets: Iterable[str]) -> dict[str, str]:
    """Suricata's defaults with ``HOME_NET`` = the office ranges of the config."""
    nets = list(home_nets)
    out = {"HOME_NET": "[" + ",".join(nets) + "]" if nets else "any"}
    out.update(DEFAULT_VARS)
    return out


def check_variables(variables: Mapping[str, str]) -> str | None:
    """The first problem with a variables table (name -> list text), or None."""
    specs = Specs(variables)
    for name, value in variables.items():
        if (
            not name
            or not (name[0].isalpha() or name[0] == "_")
            or not all(c.isalnum() or c == "_" for c in name)
        ):
            return f"bad variable name {name!r}"
        try:
            if name.endswith("_PORTS"):
                specs.port(f"${name}")
            else:
                specs.address(f"${name}")
        except SpecError as e:
            return f"{name} = {value!r}: {e}"
    return None
