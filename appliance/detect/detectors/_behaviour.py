"""Pieces shared by the behaviour detectors (portscan, bruteforce, exposure, beacon).

They all count things per host over time and report an *episode* (a scan, a brute-force run, a
beacon) as one alert when it is recognised plus, if it went on, one closing alert with the rest
of the count. Closing alerts are raised from `tick`, whose clock can run far ahead of the episode
(replay ends with a tick a billion seconds on), so they are stamped with the episode's own last
time (`report_at`), which keeps replay and inline alerts the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.packet.addrset import AddrSet, parse_entry
from appliance.packet.flows import DIR_INBOUND, DIR_INTERNAL, DIR_OUTBOUND, DIRECTION_NAMES

if TYPE_CHECKING:
    from appliance.alerts.model import Alert, Signature
    from appliance.detect.base import Options
    from appliance.detect.engine import Context

# Login and remote-access services by TCP port, named as an office owner knows them.
SERVICE_NAMES: dict[int, str] = {
    21: "FTP",
    22: "SSH",
    23: "Telnet",
    25: "SMTP",
    110: "POP3",
    111: "RPC portmapper",
    135: "Windows RPC",
    139: "Windows file sharing (NetBIOS)",
    143: "IMAP",
    389: "LDAP",
    445: "Windows file sharing (SMB)",
    515: "printer (LPD)",
    548: "Apple file sharing (AFP)",
    631: "printer (IPP)",
    1433: "Microsoft SQL Server",
    1521: "Oracle database",
    2049: "NFS file sharing",
    2375: "Docker API",
    3306: "MySQL database",
    3389: "Remote Desktop (RDP)",
    5432: "PostgreSQL database",
    5800: "VNC over HTTP",
    5900: "VNC remote desktop",
    5901: "VNC remote desktop",
    5902: "VNC remote desktop",
    5903: "VNC remote desktop",
    5984: "CouchDB database",
    5985: "Windows remote management (WinRM)",
    5986: "Windows remote management (WinRM)",
    6379: "Redis database",
    8291: "MikroTik Winbox",
    9100: "printer (JetDirect)",
    9200: "Elasticsearch database",
    11211: "Memcached",
    27017: "MongoDB database",
}

# Address blocks that only exist inside a site: when the direction is unknown (a pcap whose hosts
# are not in home_nets), a connection between two of these is taken to be internal.
_LAN = AddrSet(
    (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)


def lan_private(addr: bytes) -> bool:
    """True for RFC 1918, CGNAT, link-local, loopback and unique-local addresses."""
    return _LAN.contains(addr)


def not_unicast(addr: bytes) -> bool:
    """Multicast, limited broadcast or the unspecified address: never the target of a probe."""
    if len(addr) == 4:
        return addr[0] >= 224 or addr[0] == 0
    return addr[0] == 0xFF or not any(addr)


def direction_class(direction: int) -> str:
    """The signature family for a flow direction: "in", "out" (office host acts), "unknown"."""
    if direction == DIR_INBOUND:
        return "in"
    if direction in (DIR_OUTBOUND, DIR_INTERNAL):
        return "out"
    return "unknown"


def direction_name(direction: int) -> str:
    return DIRECTION_NAMES.get(direction, "unknown")


def report_at(ctx: Context, ts: float, detector: str, sig: Signature, **kw: Any) -> Alert:
    """`ctx.alert` stamped with time `ts` (an episode's last event) rather than the tick clock."""
    saved = ctx.now
    ctx.now = ts
    try:
        return ctx.alert(detector, sig, **kw)
    finally:
        ctx.now = saved


def check_range(opts: Options, name: str, lo: float, hi: float) -> Any:
    """The option's value, or `opts.error` if it is outside [lo, hi]."""
    value = getattr(opts, name)
    if not lo <= value <= hi:
        raise opts.error(name, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return value


def check_ports(opts: Options, name: str) -> frozenset[int]:
    """A list-of-ports option as a set; each must be 1..65535."""
    ports = getattr(opts, name)
    for i, p in enumerate(ports):
        if not 1 <= p <= 65535:
            raise opts.error(f"{name}[{i}]", f"not a port number (1-65535): {p!r}")
    return frozenset(ports)


def address_option(opts: Options, name: str, ports: bool = False) -> AddrSet:
    """A list option of addresses and networks (with ``ADDR:PORT`` entries if `ports`) as an
    `AddrSet`; the error names the entry (``detect.<name>.<option>[i]``)."""
    entries = getattr(opts, name)
    for i, text in enumerate(entries):
        try:
            parse_entry(text, ports=ports)
        except ValueError as e:
            raise opts.error(f"{name}[{i}]", str(e)) from None
    return AddrSet(entries, ports=ports)
