"""The hub's addresses in the daemon unit's ``IPAddressAllow=`` drop-in, kept up to date.

``watchpost.service`` has ``IPAddressDeny=any`` and allows only loopback, link-local, multicast
and the private ranges; the one drop-in ``watchpost.service.d/hub.conf`` adds the hub's public
addresses. The enrolment writes it first; since a hub may move, `watchpost hub-addresses`
(``ExecStartPre=`` of the unit, so at every daemon start, before the link connects) resolves
the hub's name again and, when the set of usable addresses changed, rewrites the drop-in and
applies it to the starting unit (``systemctl set-property --runtime``).

Inside the design, whatever DNS says:

- only single addresses (never a network, never ``any``), at most `MAX_ADDRESSES`;
- a non-public address (`appliance.detect.blockguard.NON_PUBLIC`: RFC 1918, CGNAT, loopback,
  link-local, multicast, ULA, unspecified, reserved; IPv4-mapped IPv6 judged as IPv4) is
  ignored: the unit's own list already allows the private ones, and no other may be added;
- an office address (``inline.home_nets``) is refused: a hub name pointed at the office's own
  hosts must not open the daemon's sockets to them;
- no answer, or nothing usable left: the drop-in stays as it was (a DNS failure at boot never
  locks the device out of its hub), and the status says why;
- an empty ``IPAddressAllow=`` is never written (in a drop-in it would reset the unit's list).

What happened is logged and kept in ``<state_dir>/hub-addresses.json`` (`read_status`), which
the hub link puts into its status (``hub.addresses``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.detect.blockguard import NON_PUBLIC
from appliance.packet.addrset import AddrSet
from protocol.files import atomic_write

log = logging.getLogger(__name__)

DROPIN = Path("/etc/systemd/system/watchpost.service.d/hub.conf")
UNIT = "watchpost.service"
STATUS_FILE = "hub-addresses.json"
MAX_ADDRESSES = 16
RESOLVE_TIMEOUT_S = 15.0

Resolver = Callable[[str, int], list[str]]
Apply = Callable[[list[str]], str]  # "" applied, else why not


class ResolveError(OSError):
    """The hub's name did not resolve; the text says why."""


def resolve(host: str, port: int, timeout: float = RESOLVE_TIMEOUT_S) -> list[str]:
    """Every address `host` resolves to (sorted, unique); ResolveError within `timeout`."""
    box: dict[str, Any] = {}

    def look() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=look, name="hub-resolve", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise ResolveError(f"cannot resolve the hub's name {host!r} (no answer in {timeout:g} s)")
    if "error" in box:
        e = box["error"]
        raise ResolveError(f"cannot resolve the hub's name {host!r} ({e.strerror or e})")
    return sorted({str(info[4][0]) for info in box["infos"]})


def screen(found: Sequence[str], office: AddrSet) -> tuple[list[str], list[tuple[str, str]]]:
    """(the addresses the drop-in may hold, [(address, why not)] for the others)."""
    kept: list[str] = []
    refused: list[tuple[str, str]] = []
    for text in found:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            refused.append((text, "not an address"))
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        addr = str(ip)
        if NON_PUBLIC.contains_text(addr):
            refused.append((addr, "not a public address (the unit's own list covers private ones)"))
        elif office.contains_text(addr):
            refused.append((addr, "an office address (inline.home_nets)"))
        elif addr in kept:
            continue
        elif len(kept) >= MAX_ADDRESSES:
            refused.append((addr, f"more than {MAX_ADDRESSES} addresses"))
        else:
            kept.append(addr)
    return sorted(kept, key=_order), refused


def _order(addr: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(addr)
    return ip.version, int(ip)


def write_dropin(path: Path, addresses: Sequence[str], host: str) -> None:
    if not addresses:
        raise ValueError("an empty IPAddressAllow= would reset the unit's allow list")
    text = (
        f"# Written by watchpost (enrol, hub-addresses): the hub {host}, the only public\n"
        "# addresses the daemon's own sockets may reach (watchpost.service: IPAddressDeny=any).\n"
        f"[Service]\nIPAddressAllow={' '.join(addresses)}\n"
    )
    atomic_write(path, text.encode(), mode=0o644)


def read_dropin(path: Path) -> list[str]:
    """The addresses of the drop-in's IPAddressAllow= lines ([] when there is none)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out: list[str] = []
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "IPAddressAllow":
            out.extend(value.split())
    return out


def apply_runtime(addresses: list[str], unit: str = UNIT) -> str:
    """Allow `addresses` for the unit now (its start in progress included); "" or why not."""
    cmd = ["systemctl", "set-property", "--runtime", unit, f"IPAddressAllow={' '.join(addresses)}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"systemctl set-property: {e}"
    if r.returncode == 0:
        return ""
    return f"systemctl set-property: {r.stderr.strip() or f'exit {r.returncode}'}"


@dataclass
class Refresh:
    """What one refresh found and did (the status file's content)."""

    host: str
    at: float
    addresses: list[str]  # in the drop-in afterwards
    previous: list[str]
    found: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    changed: bool = False
    problem: str = ""
    note: str = ""
    unresolved: str = ""  # why the name did not resolve


def refresh(
    host: str,
    port: int,
    office: AddrSet,
    dropin: Path,
    *,
    resolver: Resolver = resolve,
    apply: Apply | None = apply_runtime,
) -> Refresh:
    """Resolve `host` again; rewrite `dropin` (and apply it) when the usable set changed."""
    previous = read_dropin(dropin)
    out = Refresh(host=host, at=round(time.time(), 3), addresses=previous, previous=previous)
    try:
        out.found = resolver(host, port)
    except OSError as e:
        out.unresolved = str(e)
        out.problem = f"{e}; the drop-in keeps {_list(previous)}"
        log.warning("hub addresses: %s", out.problem)
        return out
    kept, refused = screen(out.found, office)
    out.refused = [{"address": a, "why": why} for a, why in refused]
    for a, why in refused:
        log.warning("hub addresses: %s (%s) ignored: %s", a, host, why)
    if not kept:
        keeps = f"the drop-in keeps {_list(previous)}"
        if any("office" in why for _, why in refused):
            out.problem = f"{host} resolves to no usable address; {keeps}"
        else:
            out.note = f"{host} has no public address to allow; {keeps}"
        log.warning("hub addresses: %s", out.problem or out.note)
        return out
    if set(kept) == set(previous):
        out.note = f"{host} is still at {_list(kept)}"
        log.info("hub addresses: %s", out.note)
        return out
    try:
        write_dropin(dropin, kept, host)
    except OSError as e:
        out.problem = f"cannot write {dropin} ({e.strerror or e}); it keeps {_list(previous)}"
        log.error("hub addresses: %s", out.problem)
        return out
    out.addresses, out.changed = kept, True
    out.note = f"{host} moved: {_list(previous)} -> {_list(kept)} ({dropin} rewritten)"
    log.warning("hub addresses: %s", out.note)
    if apply is not None:
        why = apply(kept)
        if why:
            out.problem = f"not applied to the running unit ({why}): in force after a reload"
            log.warning("hub addresses: %s", out.problem)
    return out


def _list(addresses: Sequence[str]) -> str:
    return " ".join(addresses) if addresses else "none"


def write_status(state_dir: str | Path, r: Refresh) -> None:
    atomic_write(Path(state_dir) / STATUS_FILE, (json.dumps(asdict(r)) + "\n").encode(), mode=0o644)


def read_status(state_dir: str | Path) -> dict[str, Any]:
    """The latest refresh ({} when none ran)."""
    try:
        data = json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
