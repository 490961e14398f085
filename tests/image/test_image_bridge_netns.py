"""The shipped bridge settings give a working, immediately forwarding bridge.

systemd-networkd cannot run on this test machine (systemd is not PID 1 here), so the test does
what networkd would: it parses 10-watchpost-br0.netdev and the MAC drop-in that bridge-mac writes,
applies the same settings with iproute2 to a bridge in a network namespace of its own (ports are
veths to two more namespaces, addresses from 198.18.0.0/15 only), and checks them with
`ip -d link` and a ping through the bridge right after the links come up.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.conftest import OVERLAY
from tests.image.test_image_networkd import run_bridge_mac

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("needs_root")]


def ip(*args: str, ns: str | None = None) -> str:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
    return r.stdout


def read_netdev(*paths: Path) -> dict[str, dict[str, str]]:
    """A .netdev and its drop-ins, later files overriding earlier ones (as networkd merges)."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    for p in paths:
        cp.read_string(p.read_text(), source=str(p))
    return {s: dict(cp[s]) for s in cp.sections()}


def iproute2_args(netdev: dict[str, dict[str, str]]) -> list[str]:
    """The `ip link add` arguments for what the .netdev says (the keys we ship)."""
    nd, br = netdev["NetDev"], netdev.get("Bridge", {})
    assert nd["Kind"] == "bridge"
    args = ["link", "add", nd["Name"]]
    if "MACAddress" in nd:
        args += ["address", nd["MACAddress"]]
    args += ["type", "bridge"]
    if "STP" in br:
        args += ["stp_state", "1" if br["STP"] in ("yes", "true", "1", "on") else "0"]
    if "ForwardDelaySec" in br:
        args += ["forward_delay", str(int(float(br["ForwardDelaySec"]) * 100))]  # centiseconds
    return args


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str, str]]:
    tag = f"wpimg{os.getpid() % 100000}"
    names = (f"{tag}-br", f"{tag}-a", f"{tag}-b")
    for n in names:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
        ip("netns", "add", n)
    try:
        yield names
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_shipped_bridge_settings_forward_at_once(
    tmp_path: Path, namespaces: tuple[str, str, str]
) -> None:
    brns, a, b = namespaces
    mac = run_bridge_mac(tmp_path, b"10000000feedf00d\0", None)
    assert mac is not None
    netdev = read_netdev(
        OVERLAY / "etc/systemd/network/10-watchpost-br0.netdev",
        tmp_path / "run/10-watchpost-br0.netdev.d/50-mac.conf",
    )
    ip(*iproute2_args(netdev), ns=brns)
    for host, port in ((a, "uplink0"), (b, "office0")):
        ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host, ns=brns)
        ip("link", "set", port, "master", "br0", "up", ns=brns)
    ip("addr", "add", "198.18.250.1/24", "dev", "eth0", ns=a)
    ip("addr", "add", "198.18.250.2/24", "dev", "eth0", ns=b)
    for host in (a, b):
        ip("link", "set", "eth0", "up", ns=host)
    ip("link", "set", "br0", "up", ns=brns)

    info = json.loads(ip("-d", "-j", "link", "show", "br0", ns=brns))[0]
    assert info["address"] == mac
    data = info["linkinfo"]["info_data"]
    assert data["stp_state"] == 0
    assert data["forward_delay"] == 0
    for port in ("uplink0", "office0"):
        pinfo = json.loads(ip("-d", "-j", "link", "show", port, ns=brns))[0]
        assert pinfo["master"] == "br0"
        assert pinfo["linkinfo"]["info_slave_data"]["state"] == "forwarding"
    # No 30 s listening/learning: the first ping goes through.
    r = subprocess.run(
        ["ip", "netns", "exec", a, "ping", "-c", "1", "-W", "2", "198.18.250.2"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_default_bridge_would_wait(namespaces: tuple[str, str, str]) -> None:
    """The control: a bridge with STP on and the kernel's 15 s forward delay does not forward
    at once, so the check above can fail."""
    brns, a, _b = namespaces
    ip("link", "add", "br0", "type", "bridge", "stp_state", "1", "forward_delay", "1500", ns=brns)
    ip("link", "add", "p0", "type", "veth", "peer", "name", "eth0", "netns", a, ns=brns)
    ip("link", "set", "p0", "master", "br0", "up", ns=brns)
    ip("link", "set", "eth0", "up", ns=a)
    ip("link", "set", "br0", "up", ns=brns)
    pinfo = json.loads(ip("-d", "-j", "link", "show", "p0", ns=brns))[0]
    assert pinfo["linkinfo"]["info_slave_data"]["state"] in ("listening", "blocking")
