"""Which bridge port is which: the uplink (router side) and the office (switch side).

On the appliance, systemd-networkd builds ``br0`` from the on-board NIC (uplink) and the USB NIC
(office), matching the USB NIC by ``Property=ID_BUS=usb`` because its name is ``enx<MAC>`` and
differs on every unit. The daemon learns the two ports from the same fact instead of from
hand-edited names: with ``inline.uplink = "auto"`` / ``inline.office = "auto"`` it takes the
bridge's ports (``/sys/class/net/<bridge>/brif/``) and asks, for each, whether it sits on USB:

1. udev's database (``/run/udev/data/n<ifindex>``, the ``E:ID_BUS=`` line networkd matched), or,
   where udev has not recorded it,
2. sysfs: a port whose device (``/sys/class/net/<port>/device``) has a USB ancestor, that is a
   directory on the way up whose ``subsystem`` link points at ``bus/usb``.

The office port is the one USB port; the uplink is the other one. Explicit names in the config
are used as they are. Anything else (no bridge, one port, two USB ports) is a `PortError` that
says what was found.

`bridge_netfilter_problem` is the start-time check that bridged traffic really reaches netfilter
(``net.bridge.bridge-nf-call-iptables`` = 1): a problem string for the page and LEDs, or None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config, ConfigError
from appliance.config import load_running as load_config

AUTO = "auto"
SYS = Path("/sys")
UDEV_DATA = Path("/run/udev/data")
PROC_BRIDGE = Path("/proc/sys/net/bridge")


class PortError(ConfigError):
    """The bridge ports cannot be worked out; the message names the key and what was found."""


@dataclass(frozen=True, slots=True)
class Port:
    name: str
    bus: str  # "usb", "platform", "pci", ... or "" for a virtual interface (veth, tap)


def udev_bus(ifindex: int, udev_data: Path = UDEV_DATA) -> str | None:
    """ID_BUS as udev recorded it for network interface `ifindex`, None when udev has no entry."""
    try:
        text = (udev_data / f"n{ifindex}").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("E:ID_BUS="):
            return line.removeprefix("E:ID_BUS=").strip()
    return ""


def sysfs_bus(name: str, sys_root: Path = SYS) -> str:
    """The bus of interface `name` from sysfs: "usb" if any ancestor device is on USB, else the
    subsystem of its device ("platform", "pci", ...), "" without a device (virtual)."""
    dev = sys_root / "class" / "net" / name / "device"
    if not dev.exists():
        return ""
    current = dev.resolve()
    top = sys_root.resolve()
    first = ""
    while current != top and current != current.parent:
        sub = current / "subsystem"
        if sub.is_symlink() or sub.exists():
            bus = sub.resolve().name
            first = first or bus
            if bus == "usb":
                return "usb"
        current = current.parent
    return first


def port_bus(name: str, sys_root: Path = SYS, udev_data: Path = UDEV_DATA) -> str:
    """ID_BUS of interface `name`: udev's record first, sysfs where udev has none."""
    try:
        ifindex = int((sys_root / "class" / "net" / name / "ifindex").read_text().strip())
    except (OSError, ValueError):
        ifindex = -1
    if ifindex >= 0:
        bus = udev_bus(ifindex, udev_data)
        if bus:
            return bus
    return sysfs_bus(name, sys_root)


def bridge_ports(bridge: str, sys_root: Path = SYS, udev_data: Path = UDEV_DATA) -> list[Port]:
    """The ports of `bridge` with their buses, sorted by name; PortError without the bridge."""
    brif = sys_root / "class" / "net" / bridge / "brif"
    if not (sys_root / "class" / "net" / bridge).exists():
        raise PortError("inline.bridge", f"no network interface {bridge!r}")
    if not brif.is_dir():
        raise PortError("inline.bridge", f"{bridge!r} is not a bridge")
    return [Port(p.name, port_bus(p.name, sys_root, udev_data)) for p in sorted(brif.iterdir())]


def find_ports(bridge: str, sys_root: Path = SYS, udev_data: Path = UDEV_DATA) -> tuple[str, str]:
    """(uplink, office) of `bridge`: the office port is its one USB port, the uplink the other."""
    ports = bridge_ports(bridge, sys_root, udev_data)
    found = ", ".join(f"{p.name} ({p.bus or 'virtual'})" for p in ports) or "none"
    usb = [p for p in ports if p.bus == "usb"]
    other = [p for p in ports if p.bus != "usb"]
    if len(usb) != 1:
        raise PortError(
            "inline.office",
            f"auto: needs exactly one USB port on {bridge}, found {len(usb)} (ports: {found})",
        )
    if len(other) != 1:
        raise PortError(
            "inline.uplink",
            f"auto: needs exactly one non-USB port on {bridge}, found {len(other)} "
            f"(ports: {found})",
        )
    return other[0].name, usb[0].name


def resolve(config: Config, sys_root: Path = SYS, udev_data: Path = UDEV_DATA) -> Config:
    """`config` with ``inline.uplink``/``inline.office`` = "auto" replaced by the real ports."""
    inline = config.inline
    if AUTO not in (inline.uplink, inline.office):
        return config
    uplink, office = find_ports(inline.bridge, sys_root, udev_data)
    new = dataclasses.replace(
        inline,
        uplink=uplink if inline.uplink == AUTO else inline.uplink,
        office=office if inline.office == AUTO else inline.office,
    )
    if new.uplink == new.office:
        raise PortError("inline.office", f"is the same port as inline.uplink ({new.office})")
    return dataclasses.replace(config, inline=new)


def load(path: str | Path, sys_root: Path = SYS, udev_data: Path = UDEV_DATA) -> Config:
    """The config the daemon runs (the office's file with the hub's overlay), "auto" resolved."""
    return resolve(load_config(path), sys_root, udev_data)


def bridge_netfilter_problem(proc_bridge: Path = PROC_BRIDGE) -> str | None:
    """Why bridged IPv4 traffic would bypass netfilter (and inspection), or None when it won't."""
    knob = proc_bridge / "bridge-nf-call-iptables"
    try:
        value = knob.read_text().strip()
    except FileNotFoundError:
        return (
            "br_netfilter is not loaded: bridged traffic is not inspected "
            "(/etc/modules-load.d/watchpost.conf should load it at boot)"
        )
    except OSError as e:
        return f"cannot read {knob}: {e.strerror or e}"
    if value != "1":
        return (
            f"net.bridge.bridge-nf-call-iptables is {value}, not 1: bridged traffic is not "
            "inspected (the udev rule 99-watchpost-bridge.rules applies "
            "/etc/sysctl.d/99-watchpost.conf when br_netfilter loads)"
        )
    return None
