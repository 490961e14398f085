"""The one address-set matcher: networks and single addresses, IPv4 and IPv6, optionally ports.

Used for everything that asks "is this address in that list": ``inline.home_nets``,
``inline.never_block``, detector ``ignore``/``allow`` options, the firewall's refusals, the
status page's office side, pseudonymisation.

Entries are text: ``198.18.0.12``, ``198.18.0.0/24``, ``2001:db8::/32`` and, where the set
takes ports (``AddrSet(..., ports=True)``), ``198.18.0.12:3389`` or ``[2001:db8::1]:22``. An
entry without a port matches every port. IPv4-mapped IPv6 addresses (``::ffff:198.18.0.1``) are
IPv4 addresses, both as entries and when looked up, so a dual-stack socket's view of a peer
matches the IPv4 list.

``contains(packed, port)`` is the hot path (a flow's direction in replay, pseudonymisation of
every address string): one ``int.from_bytes`` and one dict probe per distinct prefix length in
the set, whatever its size.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_MAPPED_NET = ipaddress.IPv6Network("::ffff:0:0/96")
_MISSING = frozenset({-1})  # a sentinel no port can be in

# Per family: ((shift, {address >> shift: ports or None for every port}), ...), widest first.
_Levels = tuple[tuple[int, dict[int, frozenset[int] | None]], ...]


class AddrSet:
    """An immutable set of networks (with optional ports) matched on packed or text addresses."""

    __slots__ = ("_levels4", "_levels6", "_networks")

    def __init__(self, entries: Iterable[str] = (), *, ports: bool = False) -> None:
        """Parse `entries`; raises ValueError naming the first bad entry (nothing half-built)."""
        parsed = [parse_entry(text, ports=ports) for text in entries]
        self._networks: tuple[Network, ...] = tuple(net for net, _ in parsed)
        self._levels4 = _levels(((n, p) for n, p in parsed if n.version == 4), 32)
        self._levels6 = _levels(((n, p) for n, p in parsed if n.version == 6), 128)

    # -- the hot path ----------------------------------------------------------------------------

    def contains(self, addr: bytes, port: int = 0) -> bool:
        """Whether the packed address `addr` (4 or 16 bytes), on `port`, is in the set."""
        if len(addr) == 4:
            levels = self._levels4
        elif addr[:12] == _MAPPED_PREFIX:
            addr = addr[12:]
            levels = self._levels4
        else:
            levels = self._levels6
        if not levels:
            return False
        a = int.from_bytes(addr, "big")
        for shift, table in levels:
            allowed = table.get(a >> shift, _MISSING)
            if allowed is None or (allowed is not _MISSING and port in allowed):
                return True
        return False

    def __contains__(self, addr: object) -> bool:
        """``packed in s``, ``"198.18.0.1" in s`` or ``ip_address(...) in s`` (any port)."""
        if isinstance(addr, bytes):
            return self.contains(addr)
        if isinstance(addr, str):
            return self.contains_text(addr)
        if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return self.contains(addr.packed)
        return False

    def contains_text(self, text: str, port: int = 0) -> bool:
        """Like `contains` for an address string; anything that is not an address: False."""
        packed = packed_address(text)
        return packed is not None and self.contains(packed, port)

    # -- for messages and the firewall ------------------------------------------------------------

    def covering(self, addr: str | bytes | Address) -> Network | None:
        """The first network of the set that holds `addr` (any port), or None."""
        ip = _address(addr)
        if ip is None:
            return None
        for net in self._networks:
            if net.version == ip.version and ip in net:
                return net
        return None

    def overlapping(self, net: str | Network) -> Network | None:
        """The first network of the set that overlaps `net` (a network or address), or None."""
        other = _v4_if_mapped(
            ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
        )
        for mine in self._networks:
            if mine.version == other.version and mine.overlaps(other):
                return mine
        return None

    @property
    def networks(self) -> tuple[Network, ...]:
        return self._networks

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __len__(self) -> int:
        return len(self._networks)

    def __iter__(self) -> Iterator[Network]:
        return iter(self._networks)

    def __repr__(self) -> str:
        return f"AddrSet({[str(n) for n in self._networks]!r})"


def parse_entry(text: str, *, ports: bool = False) -> tuple[Network, int]:
    """One entry as (network, port or 0); raises ValueError saying what was expected."""
    what = "an IP address or network" + (", optionally with :PORT" if ports else "")
    if not isinstance(text, str):
        raise ValueError(f"expected {what}, got {text!r}")
    addr, port = text.strip(), 0
    if ports and addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected {what}, got {text!r}")
        addr = host
        port = _port(rest[1:], text) if rest else 0
    elif ports and addr.count(":") == 1:
        addr, _, port_text = addr.partition(":")
        port = _port(port_text, text)
    try:
        net = ipaddress.ip_network(addr, strict=False)
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None
    return _v4_if_mapped(net), port


def check_entries(entries: Iterable[str], *, ports: bool = False) -> None:
    """Raise ValueError("[i]: why") for the first entry `AddrSet` would refuse."""
    for i, text in enumerate(entries):
        try:
            parse_entry(text, ports=ports)
        except ValueError as e:
            raise ValueError(f"[{i}]: {e}") from None


def is_entry(text: str, *, ports: bool = False) -> bool:
    """Whether `text` is an entry `AddrSet` takes."""
    try:
        parse_entry(text, ports=ports)
    except ValueError:
        return False
    return True


def packed_address(text: str) -> bytes | None:
    """The packed form of an address string (IPv4-mapped IPv6 as IPv4), or None."""
    if not text or not (text[0].isdigit() or ":" in text):
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.packed
    return ip.packed


def _address(addr: str | bytes | Address) -> Address | None:
    if isinstance(addr, bytes):
        if len(addr) == 16 and addr[:12] == _MAPPED_PREFIX:
            addr = addr[12:]
        return ipaddress.ip_address(addr) if len(addr) in (4, 16) else None
    if isinstance(addr, str):
        packed = packed_address(addr)
        return None if packed is None else ipaddress.ip_address(packed)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _v4_if_mapped(net: Network) -> Network:
    """``::ffff:198.18.0.0/120`` is ``198.18.0.0/24``."""
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_MAPPED_NET):
        base = int(net.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((base, net.prefixlen - 96))
    return net


def _levels(entries: Iterable[tuple[Network, int]], bits: int) -> _Levels:
    by_len: dict[int, dict[int, frozenset[int] | None]] = {}
    for net, port in entries:
        shift = bits - net.prefixlen
        table = by_len.setdefault(shift, {})
        key = int(net.network_address) >> shift
        if not port:
            table[key] = None  # every port
        elif key not in table:
            table[key] = frozenset({port})
        elif (known := table[key]) is not None:
            table[key] = known | {port}
    # Widest networks first: they are usually the few big office ranges that most lookups hit.
    return tuple(sorted(by_len.items(), reverse=True))


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad port in {whole!r} (expected 1-65535)")
    return int(text)
