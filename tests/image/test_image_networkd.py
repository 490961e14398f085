"""The shipped systemd-networkd/udev/modules files say what the issue asks, key by key, and
bridge-mac derives the same fixed MAC from the same board every time."""

from __future__ import annotations

import configparser
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.image.conftest import IMAGE_BUILD, OVERLAY, REPO

NETWORK = OVERLAY / "etc/systemd/network"
BRIDGE_MAC = OVERLAY / "usr/lib/watchpost/bridge-mac"

# The keys each section may use (systemd.netdev(5), systemd.network(5), systemd.link(5) of
# systemd 252, Bookworm); a misspelt key would be ignored by networkd with only a log line.
KNOWN = {
    "Match": {"Name", "Type", "Driver", "Property", "Path", "MACAddress", "Kind"},
    "NetDev": {"Name", "Kind", "Description", "MACAddress", "MTUBytes"},
    "Bridge": {"STP", "ForwardDelaySec", "HelloTimeSec", "MaxAgeSec", "Priority"},
    "Network": {"Bridge", "DHCP", "LinkLocalAddressing", "IPv6AcceptRA", "Description"},
    "DHCPv4": {"ClientIdentifier", "UseDNS", "UseNTP", "SendHostname"},
    "Link": {"RequiredForOnline", "NamePolicy", "MACAddressPolicy"},
}


def parse(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(
        strict=True, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";")
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read_string(path.read_text(), source=str(path))
    for section in cp.sections():
        assert section in KNOWN, f"{path.name}: unknown section [{section}]"
        unknown = set(cp[section]) - KNOWN[section]
        assert not unknown, f"{path.name} [{section}]: unknown keys {unknown}"
    return cp


def test_bridge_netdev() -> None:
    nd = parse(NETWORK / "10-watchpost-br0.netdev")
    assert dict(nd["NetDev"]) == {
        "Name": "br0",
        "Kind": "bridge",
        "Description": "Watchpost office bridge",
    }  # MACAddress= comes from the bridge-mac drop-in, not from the shipped file
    assert dict(nd["Bridge"]) == {"STP": "no", "ForwardDelaySec": "0"}


def test_ports_and_management_address() -> None:
    files = sorted(p.name for p in NETWORK.glob("*.network"))
    # networkd applies the first matching .network file: the USB (office) one must come first.
    assert files == [
        "20-watchpost-office.network",
        "30-watchpost-uplink.network",
        "40-watchpost-br0.network",
    ]
    office = parse(NETWORK / "20-watchpost-office.network")
    assert dict(office["Match"]) == {"Type": "ether", "Property": "ID_BUS=usb"}
    uplink = parse(NETWORK / "30-watchpost-uplink.network")
    assert uplink["Match"]["Driver"].split() == ["bcmgenet", "macb"]  # Pi 4/CM4, Pi 5
    for port in (office, uplink):
        assert port["Network"]["Bridge"] == "br0"
        assert port["Network"]["LinkLocalAddressing"] == "no"
        assert port["Link"]["RequiredForOnline"] == "no"
    br = parse(NETWORK / "40-watchpost-br0.network")
    assert dict(br["Match"]) == {"Name": "br0"}
    assert br["Network"]["DHCP"] == "yes"
    assert br["Network"]["LinkLocalAddressing"] == "yes"  # the fallback beside DHCP
    assert br["DHCPv4"]["ClientIdentifier"] == "mac"
    link = parse(NETWORK / "10-watchpost-office.link")
    assert dict(link["Match"]) == {"Type": "ether", "Property": "ID_BUS=usb"}


def test_br_netfilter_is_loaded_and_configured() -> None:
    modules = (OVERLAY / "etc/modules-load.d/watchpost.conf").read_text().split()
    assert "br_netfilter" in [m for m in modules if not m.startswith("#")]
    sysctl = (OVERLAY / "etc/sysctl.d/99-watchpost.conf").read_text()
    assert re.search(r"^net\.bridge\.bridge-nf-call-iptables = 1$", sysctl, re.M)
    rules = [
        line
        for line in (OVERLAY / "etc/udev/rules.d/99-watchpost-bridge.rules")
        .read_text()
        .splitlines()
        if line and not line.startswith("#")
    ]
    # The rule of sysctl.d(5)'s example: re-apply net.bridge.* whenever br_netfilter loads.
    assert rules == [
        'ACTION=="add", SUBSYSTEM=="module", KERNEL=="br_netfilter", '
        'RUN+="/usr/lib/systemd/systemd-sysctl --prefix=/net/bridge"'
    ]


def expected_mac(board_id: str) -> str:
    h = bytearray(hashlib.sha256(f"watchpost-br0:{board_id}".encode()).digest()[:6])
    h[0] = (h[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in h)


def run_bridge_mac(tmp: Path, serial: bytes | None, machine_id: str | None) -> str | None:
    env = {
        "PATH": "/usr/bin:/bin",
        "WATCHPOST_SERIAL_FILE": str(tmp / "serial-number"),
        "WATCHPOST_MACHINE_ID_FILE": str(tmp / "machine-id"),
        "WATCHPOST_NETWORK_DIR": str(tmp / "run"),
    }
    if serial is not None:
        (tmp / "serial-number").write_bytes(serial)
    if machine_id is not None:
        (tmp / "machine-id").write_text(machine_id)
    r = subprocess.run([str(BRIDGE_MAC)], env=env, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    dropin = tmp / "run/10-watchpost-br0.netdev.d/50-mac.conf"
    if not dropin.exists():
        assert "keeps networkd's own MAC" in r.stderr
        return None
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(dropin.read_text())
    assert list(cp["NetDev"]) == ["MACAddress"]
    return cp["NetDev"]["MACAddress"]


def test_bridge_mac_from_board_serial(tmp_path: Path) -> None:
    # The device tree's serial-number is NUL-terminated.
    mac = run_bridge_mac(tmp_path, b"10000000c0ffee01\0", "0123456789abcdef0123456789abcdef\n")
    assert mac == expected_mac("10000000c0ffee01")
    again = run_bridge_mac(tmp_path, None, None)  # same files, second boot
    assert again == mac
    other = tmp_path / "other"
    other.mkdir()
    assert run_bridge_mac(other, b"10000000c0ffee02\0", None) != mac
    assert int(mac.split(":")[0], 16) & 0x03 == 0x02


def test_bridge_mac_fallbacks(tmp_path: Path) -> None:
    mid = "0123456789abcdef0123456789abcdef"
    assert run_bridge_mac(tmp_path, None, mid + "\n") == expected_mac(mid)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_bridge_mac(empty, None, "uninitialized\n") is None


def test_bridge_mac_unit() -> None:
    unit = (REPO / "systemd/watchpost-bridge-mac.service").read_text()
    assert "Before=systemd-networkd.service" in unit
    assert "DefaultDependencies=no" in unit
    assert "ExecStart=/usr/lib/watchpost/bridge-mac" in unit
    assert "WantedBy=systemd-networkd.service" in unit


def scripts() -> list[Path]:
    out = []
    for p in sorted(IMAGE_BUILD.rglob("*")):
        if p.is_file() and (p.suffix == ".sh" or p.read_bytes()[:2] == b"#!"):
            out.append(p)
    return out


def test_every_script_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("no shellcheck (.ci/bootstrap installs it)")
    found = scripts()
    assert {p.name for p in found} >= {
        "customise.sh",
        "build-payload.sh",
        "00-run.sh",
        "bridge-mac",
    }
    r = subprocess.run(
        ["shellcheck", "--severity=style", *map(str, found)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout


def test_rpi_image_gen_layer_lists_the_same_packages() -> None:
    def listed(name: str) -> list[str]:
        lines = (IMAGE_BUILD / name).read_text().splitlines()
        return [w for line in lines for w in line.split("#")[0].split()]

    layer = (IMAGE_BUILD / "rpi-image-gen/layer/watchpost.yaml").read_text()
    block = layer.split("\n  packages:\n")[1].split("customize-hooks:")[0]
    in_layer = re.findall(r"^\s+- (\S+)$", block, re.M)
    assert in_layer == listed("packages.txt") + listed("packages-rpi.txt")
    assert 'chroot "$1" /tmp/watchpost-payload/customise.sh' in layer
