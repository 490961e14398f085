"""`exposure`: someone on the internet completed a connection to a risky office service.

Remote desktops, file shares, databases and printers open to the internet are how most small
offices get ransomware. An attempt proves nothing (the internet knocks on every port all day;
that is `portscan`'s business); a *completed* TCP handshake from outside (SYN, SYN-ACK, ACK)
proves the service is reachable, so that is what is reported. Each exposed service (office
address and port) is reported once when first reached, then at most once per `repeat` seconds
with the number of connections and distinct outside hosts since the last report.

With an unknown direction (a pcap whose hosts are not in home_nets) a connection counts unless
both ends are LAN-private addresses (RFC 1918 and the like), and has its own signature.

Services the office exposes on purpose go in `allow` (``198.18.0.12:22``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options
from appliance.detect.detectors._behaviour import (
    SERVICE_NAMES,
    address_option,
    address_port_entry,
    direction_name,
    lan_private,
)
from appliance.packet.addrset import AddrSet
from appliance.packet.decode import ACK, RST, SYN, TCP, ip_to_str
from appliance.packet.flows import DIR_INBOUND, DIR_UNKNOWN

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

CATEGORY = "Exposed service"
REMOTE = Signature(
    8104001,
    "Exposed service: a computer on the internet connected to an office remote-access service",
    CATEGORY,
    1,
)
FILES = Signature(
    8104002,
    "Exposed service: a computer on the internet connected to office file sharing",
    CATEGORY,
    1,
)
DATABASE = Signature(
    8104003,
    "Exposed service: a computer on the internet connected to an office database",
    CATEGORY,
    1,
)
PRINTER = Signature(
    8104004,
    "Exposed service: a computer on the internet connected to an office printer",
    CATEGORY,
    2,
)
OTHER = Signature(
    8104005,
    "Exposed service: a computer on the internet connected to a watched office service",
    CATEGORY,
    2,
)
UNKNOWN = Signature(
    8104006,
    "Exposed service: a risky service accepted a connection from another network",
    CATEGORY,
    2,
)

REMOTE_PORTS = (22, 23, 3389, 5800, 5900, 5901, 5902, 5903, 5985, 5986, 8291)
FILE_PORTS = (21, 111, 135, 139, 445, 548, 2049)
DATABASE_PORTS = (1433, 1521, 2375, 3306, 5432, 5984, 6379, 9200, 11211, 27017)
PRINTER_PORTS = (515, 631, 9100)
CLASSES = (
    (REMOTE_PORTS, REMOTE),
    (FILE_PORTS, FILES),
    (DATABASE_PORTS, DATABASE),
    (PRINTER_PORTS, PRINTER),
)
DEFAULT_PORTS = tuple(sorted(p for ports, _ in CLASSES for p in ports))
MAX_SOURCES_LISTED = 256
SAMPLE = 10


class _Service:
    """One exposed office service between two reports."""

    __slots__ = ("connections", "first", "flow", "last", "reported_at", "sources")

    def __init__(self, flow: Flow, ts: float) -> None:
        self.flow = flow
        self.first = self.last = ts
        self.reported_at = ts
        self.connections = 0
        self.sources: set[bytes] = set()


class ExposureDetector(Detector):
    name = "exposure"
    # replay --workers (Detector.partition): state per office server of inbound flows.
    partition = "inbound-server"
    signatures = (REMOTE, FILES, DATABASE, PRINTER, OTHER, UNKNOWN)

    def __init__(self) -> None:
        self.ports = frozenset(DEFAULT_PORTS)
        self.packet_ports = self.ports  # the engine calls the packet hook for these only
        self.repeat = 3600.0
        self.allow = AddrSet()
        self.max_services = 1024
        self._sig = {p: sig for ports, sig in CLASSES for p in ports}
        self._services: OrderedDict[tuple[bytes, int], _Service] = OrderedDict()

    @classmethod
    def load(cls, loader: Loader) -> None:
        loader.add_option(
            "ports",
            tuple[int, ...],
            DEFAULT_PORTS,
            "TCP ports of risky office services: remote access (SSH, Telnet, RDP, VNC, WinRM),"
            " file sharing (FTP, SMB, NFS, AFP), databases and printers.",
            range=(1, 65535),
            remote=True,
        )
        loader.add_option(
            "repeat",
            float,
            3600.0,
            "Seconds between reports about the same exposed service (with the connections since).",
            range=(1, 30 * 86400),
            remote=True,
        )
        loader.add_option(
            "allow",
            tuple[str, ...],
            (),
            "Office services exposed on purpose, never reported: ADDRESS, NETWORK or ADDRESS:PORT.",
            check=address_port_entry,
            remote=True,
        )
        loader.add_option(
            "max_services",
            int,
            1024,
            "Most exposed services remembered at once (oldest reported and forgotten first).",
            range=(16, 1_000_000),
            remote=True,
            remote_range=(16, 100_000),
        )

    def configure(self, opts: Options) -> None:
        self.ports, self.repeat = frozenset(opts.ports), opts.repeat
        self.packet_ports = self.ports
        self.allow = address_option(opts, "allow", ports=True)
        self.max_services = opts.max_services

    def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None:
        # The client's ACK that completes the handshake: SYN and SYN-ACK were seen before it.
        if (
            not from_client
            or pkt.proto != TCP
            or flow.server_port not in self.ports
            or pkt.flags & (SYN | ACK | RST) != ACK
            or flow.tcp_flags_s & (SYN | ACK) != SYN | ACK
            or not flow.tcp_flags_c & SYN
        ):
            return
        direction = flow.direction
        if direction != DIR_INBOUND and (
            direction != DIR_UNKNOWN or (lan_private(flow.client) and lan_private(flow.server))
        ):
            return
        notes = flow.note(self.name)
        if notes:
            return  # this connection was counted already
        notes["seen"] = True
        port = flow.server_port
        if self.allow and self.allow.contains(flow.server, port):
            return
        key = (flow.server, port)
        services = self._services
        svc = services.get(key)
        ts = pkt.ts
        if svc is None:
            if len(services) >= self.max_services:
                self._report(ctx, services.popitem(last=False)[1])
            svc = services[key] = _Service(flow, ts)
            svc.connections = 1
            svc.sources.add(flow.client)
            self._report(ctx, svc)
            return
        if not svc.connections:
            svc.first = ts
        svc.connections += 1
        svc.last = ts
        svc.flow = flow
        if len(svc.sources) < MAX_SOURCES_LISTED:
            svc.sources.add(flow.client)

    def _report(self, ctx: Context, svc: _Service) -> None:
        if not svc.connections:
            return
        flow = svc.flow
        port = flow.server_port
        sig = self._sig.get(port, OTHER) if flow.direction == DIR_INBOUND else UNKNOWN
        sources = sorted(ip_to_str(s) for s in svc.sources)
        details: dict[str, Any] = {
            "direction": direction_name(flow.direction),
            "service": SERVICE_NAMES.get(port, f"TCP port {port}"),
            "connections": svc.connections,
            "outside_hosts": len(sources),
            "sample_sources": sources[:SAMPLE],
        }
        if len(svc.sources) >= MAX_SOURCES_LISTED:
            details["outside_hosts_at_least"] = True
        ctx.alert(
            sig,
            at=svc.last,
            flow=flow,
            src=ip_to_str(flow.client),
            dst=ip_to_str(flow.server),
            details=details,
            count=svc.connections,
            first_seen=svc.first,
        )
        svc.connections = 0
        svc.sources = set()

    def tick(self, ctx: Context, now: float) -> None:
        # Services are kept in report order, so the due ones are at the front.
        services = self._services
        due = now - self.repeat
        while services:
            key = next(iter(services))
            svc = services[key]
            if svc.reported_at > due:
                break
            del services[key]
            if svc.connections:
                self._report(ctx, svc)
                # Keep watching: the next report comes a full `repeat` after this one.
                svc.reported_at = max(now, svc.last)
                services[key] = svc

    def stats(self) -> dict[str, int]:
        """Sizes of the bounded state (for tests and telemetry)."""
        return {"services": len(self._services)}
