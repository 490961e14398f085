"""Addresses block mode must never drop that traffic alone does not show: the device's own
default gateway (the office router) and the hub's addresses. (The resolvers office hosts use are
learned from their queries by the engine itself.)"""

from __future__ import annotations

import socket
from pathlib import Path

from appliance.config import Config


def protected_addresses(config: Config) -> list[tuple[str, str]]:
    """(address, why) pairs for the engine's block guard, read once at start."""
    out = [(gw, "gateway") for gw in default_gateways()]
    if config.hub.enabled and config.hub.host:
        try:
            infos = socket.getaddrinfo(config.hub.host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            infos = []
        out += [(str(info[4][0]), "hub") for info in infos]
    return out


def default_gateways(route_file: str = "/proc/net/route") -> list[str]:
    """IPv4 default gateways of this machine (from the kernel's routing table)."""
    out: list[str] = []
    try:
        lines = Path(route_file).read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            out.append(socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little")))
    return out
