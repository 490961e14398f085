"""appliance.inline.ports against fake sysfs/udev trees laid out like a Raspberry Pi's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.config import Config, ConfigError, InlineConfig
from appliance.inline import ports
from appliance.inline.ports import PortError


class FakeSys:
    """A /sys with /sys/bus/{usb,platform,pci}, devices and /sys/class/net entries."""

    def __init__(self, root: Path) -> None:
        self.root = root / "sys"
        self.udev = root / "udev"
        self.udev.mkdir(parents=True)
        for bus in ("usb", "platform", "pci"):
            (self.root / "bus" / bus).mkdir(parents=True)
        self.next_index = 2

    def device(self, path: str, bus: str) -> Path:
        d = self.root / "devices" / path
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(self.root / "bus" / bus, d), d / "subsystem")
        return d

    def iface(self, name: str, device: Path | None = None, udev_bus: str | None = None) -> None:
        d = self.root / "class" / "net" / name
        d.mkdir(parents=True)
        (d / "ifindex").write_text(f"{self.next_index}\n")
        if device is not None:
            os.symlink(os.path.relpath(device, d), d / "device")
        if udev_bus is not None:
            (self.udev / f"n{self.next_index}").write_text(
                f"I:123\nE:ID_BUS={udev_bus}\nE:ID_NET_NAME_MAC=enx0\n" if udev_bus else "I:1\n"
            )
        self.next_index += 1

    def bridge(self, name: str, members: list[str]) -> None:
        self.iface(name)
        brif = self.root / "class" / "net" / name / "brif"
        brif.mkdir()
        for m in members:
            os.symlink(f"../../{m}/brport", brif / m)


@pytest.fixture
def pi4(tmp_path: Path) -> FakeSys:
    """Pi 4: eth0 on bcmgenet (platform), the USB3 NIC behind the VL805 PCIe/USB controller."""
    fs = FakeSys(tmp_path)
    soc = fs.device("platform/scb/fd580000.ethernet", "platform")
    fs.device("platform/scb/fd500000.pcie", "platform")
    fs.device("platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0", "pci")
    fs.device("platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0/usb2", "usb")
    fs.device("platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0/usb2/2-1", "usb")
    usbif = fs.device(
        "platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0/usb2/2-1/2-1:1.0", "usb"
    )
    fs.iface("eth0", soc)
    fs.iface("enx00e04c680001", usbif)
    fs.iface("wlan0", fs.device("platform/soc/fe300000.mmcnr/mmc_host/mmc1/mmc1:0001", "platform"))
    fs.bridge("br0", ["enx00e04c680001", "eth0"])
    return fs


def cfg(**inline: str) -> Config:
    return Config(inline=InlineConfig(**inline))


def test_sysfs_finds_usb_through_pcie(pi4: FakeSys) -> None:
    assert ports.sysfs_bus("enx00e04c680001", pi4.root) == "usb"
    assert ports.sysfs_bus("eth0", pi4.root) == "platform"
    assert ports.sysfs_bus("br0", pi4.root) == ""  # virtual: no device


def test_auto_ports_from_sysfs(pi4: FakeSys) -> None:
    assert ports.find_ports("br0", pi4.root, pi4.udev) == ("eth0", "enx00e04c680001")
    got = ports.resolve(cfg(uplink="auto", office="auto"), pi4.root, pi4.udev)
    assert (got.inline.uplink, got.inline.office) == ("eth0", "enx00e04c680001")
    assert got.inline.bridge == "br0" and got.inline.mode == "monitor"


def test_udev_database_wins_over_sysfs(tmp_path: Path) -> None:
    """ID_BUS from udev is what networkd matched: it decides even without a sysfs USB parent."""
    fs = FakeSys(tmp_path)
    fs.iface("eth0", fs.device("platform/1f00100000.ethernet", "platform"), udev_bus="")
    fs.iface("enxaa", fs.device("platform/odd-usb-nic", "platform"), udev_bus="usb")
    fs.bridge("br0", ["eth0", "enxaa"])
    assert ports.port_bus("enxaa", fs.root, fs.udev) == "usb"
    assert ports.port_bus("eth0", fs.root, fs.udev) == "platform"  # no ID_BUS line: sysfs
    assert ports.find_ports("br0", fs.root, fs.udev) == ("eth0", "enxaa")


def test_explicit_names_are_kept(pi4: FakeSys) -> None:
    c = cfg(uplink="eth0", office="eth1")
    assert ports.resolve(c, pi4.root, pi4.udev) is c
    # Only the "auto" side is looked up.
    got = ports.resolve(cfg(uplink="eth0", office="auto"), pi4.root, pi4.udev)
    assert (got.inline.uplink, got.inline.office) == ("eth0", "enx00e04c680001")


def test_same_port_twice_is_refused(pi4: FakeSys) -> None:
    with pytest.raises(PortError, match=r"^inline.office: is the same port as inline.uplink"):
        ports.resolve(cfg(uplink="enx00e04c680001", office="auto"), pi4.root, pi4.udev)


def test_no_usb_port(tmp_path: Path) -> None:
    fs = FakeSys(tmp_path)
    fs.iface("eth0", fs.device("platform/a.ethernet", "platform"))
    fs.iface("veth1")
    fs.bridge("br0", ["eth0", "veth1"])
    with pytest.raises(PortError) as e:
        ports.resolve(cfg(uplink="auto", office="auto"), fs.root, fs.udev)
    assert str(e.value) == (
        "inline.office: auto: needs exactly one USB port on br0, found 0 "
        "(ports: eth0 (platform), veth1 (virtual))"
    )


def test_two_usb_ports_or_one_port(pi4: FakeSys) -> None:
    second = pi4.device("platform/scb/usb3/3-1/3-1:1.0", "usb")
    pi4.iface("enx00e04c680002", second)
    os.symlink("../../enx00e04c680002/brport", pi4.root / "class/net/br0/brif/enx00e04c680002")
    with pytest.raises(PortError, match=r"^inline.office: auto: needs exactly one USB port"):
        ports.find_ports("br0", pi4.root, pi4.udev)
    for p in ("enx00e04c680002", "eth0"):
        (pi4.root / "class/net/br0/brif" / p).unlink()
    with pytest.raises(PortError, match=r"^inline.uplink: .* found 0 \(ports: enx00e04c680001"):
        ports.find_ports("br0", pi4.root, pi4.udev)


def test_missing_or_plain_bridge(pi4: FakeSys) -> None:
    with pytest.raises(PortError, match=r"^inline.bridge: no network interface 'br9'"):
        ports.find_ports("br9", pi4.root, pi4.udev)
    with pytest.raises(PortError, match=r"^inline.bridge: 'eth0' is not a bridge"):
        ports.find_ports("eth0", pi4.root, pi4.udev)


def test_load_resolves_auto(pi4: FakeSys, tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text('[inline]\nuplink = "auto"\noffice = "auto"\n')
    got = ports.load(f, pi4.root, pi4.udev)
    assert (got.inline.uplink, got.inline.office) == ("eth0", "enx00e04c680001")
    assert got.source == str(f)
    f.write_text('[inline]\nuplink = "auto"\nworkers = "two"\n')
    with pytest.raises(ConfigError, match=r"^inline.workers: expected an integer"):
        ports.load(f, pi4.root, pi4.udev)


def test_bridge_netfilter_problem(tmp_path: Path) -> None:
    assert "br_netfilter is not loaded" in (ports.bridge_netfilter_problem(tmp_path) or "")
    (tmp_path / "bridge-nf-call-iptables").write_text("0\n")
    assert (ports.bridge_netfilter_problem(tmp_path) or "").startswith(
        "net.bridge.bridge-nf-call-iptables is 0, not 1"
    )
    (tmp_path / "bridge-nf-call-iptables").write_text("1\n")
    assert ports.bridge_netfilter_problem(tmp_path) is None
