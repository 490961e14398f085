"""The lab itself: connectivity through the appliance's bridge, isolation, idempotence, cleanup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lab.netns import HOSTS, LAB_NAMES, Lab, LabError

pytestmark = pytest.mark.root

LAB_RANGES = ("198.18.", "198.19.", "203.0.113.", "198.51.100.", "192.0.2.")


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _root_routes() -> set[str]:
    out = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True)
    return set(out.stdout.splitlines())


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-")]


def test_ping_through_the_bridge(lab: Lab) -> None:
    res = lab.exec("pc1", "ping", "-c", "3", "-i", "0.2", "-W", "2", lab.addr("web"))
    assert " 0% packet loss" in res.stdout
    # Inbound too: an internet host reaches an office host through the router and the bridge.
    res = lab.exec("atk", "ping", "-c", "1", "-W", "2", lab.addr("pc2"))
    assert " 0% packet loss" in res.stdout


def _rx_bytes(lab: Lab, host: str, dev: str) -> int:
    out = lab.exec(host, "ip", "-j", "-s", "link", "show", dev).stdout
    return json.loads(out)[0]["stats64"]["rx"]["bytes"]


def test_tcp_and_names_through_the_bridge(lab: Lab, serve) -> None:
    serve.http("web")
    before = (_rx_bytes(lab, "app", "office"), _rx_bytes(lab, "app", "uplink"))
    res = lab.exec("pc1", "curl", "-sS", "-m", "5", "http://www.example.com/hello")
    assert "lab page /hello" in res.stdout
    # The request and the answer crossed the appliance's bridge, one way on each port.
    after = (_rx_bytes(lab, "app", "office"), _rx_bytes(lab, "app", "uplink"))
    assert after[0] > before[0] and after[1] > before[1]


def test_resolver_answers_lab_names_and_nxdomain(lab: Lab) -> None:
    for name, addr in (("www.example.com", "203.0.113.10"), ("c2.example.net", "203.0.113.66")):
        assert LAB_NAMES[name] == addr
        res = lab.exec("pc2", "dig", "+short", "+time=2", "+tries=1", name)
        assert res.stdout.split() == [addr]
    # A name on web's second address: reachable like the first.
    res = lab.exec("pc2", "ping", "-c", "1", "-W", "2", "login-update.example.org")
    assert "from 203.0.113.11" in res.stdout
    res = lab.exec("pc2", "dig", "+time=2", "+tries=1", "no-such-host.example.com")
    assert "status: NXDOMAIN" in res.stdout
    res = lab.exec("pc2", "dig", "+time=2", "+tries=1", "qx7fz2k.com")
    assert "status: NXDOMAIN" in res.stdout


def test_appliance_namespace_settings(lab: Lab) -> None:
    got = lab.exec(
        "app",
        "sysctl",
        "-n",
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
        "net.netfilter.nf_conntrack_acct",
    ).stdout.split()
    assert got == ["1", "1", "1"]
    links = lab.exec("app", "ip", "-o", "link", "show", "master", "br0").stdout
    assert {"uplink", "office"} <= {
        ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines()
    }
    assert "198.18.0.2/24" in lab.exec("app", "ip", "-o", "addr", "show", "br0").stdout
    assert "default via 198.18.0.1" in lab.exec("app", "ip", "route").stdout
    assert lab.exec("rtr", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"


def test_isolated_from_the_host_network(lab: Lab) -> None:
    # The router knows only lab networks: anything else is unreachable, so nothing leaves.
    res = lab.exec("rtr", "ip", "route", "get", "1.1.1.1", check=False)
    assert res.returncode != 0 and "unreachable" in res.stderr.lower()
    res = lab.exec("pc1", "ping", "-c", "1", "-W", "1", "1.1.1.1", check=False)
    assert res.returncode != 0
    # No lab address outside the documented ranges anywhere in the lab.
    for host in HOSTS:
        out = lab.exec(host, "ip", "-4", "-o", "addr", "show").stdout
        for line in out.splitlines():
            addr = line.split()[3]
            assert addr.startswith(LAB_RANGES) or addr.startswith("127."), (host, addr)
        for route in lab.exec(host, "ip", "-4", "route", "show").stdout.splitlines():
            dest, *rest = route.split()
            assert dest.startswith(LAB_RANGES) or (
                dest == "default" and rest[1].startswith(LAB_RANGES)
            ), (host, route)


def test_up_twice_down_and_nothing_in_root_namespace() -> None:
    links, routes = _root_links(), _root_routes()
    lab = Lab(f"wpu{os.getpid()}")
    try:
        lab.up()
        ns_first = {h: lab.exec(h, "ip", "-o", "link", "show").stdout for h in ("app", "rtr")}
        lab.up()  # idempotent: the same lab, not a rebuilt one
        assert {h: lab.exec(h, "ip", "-o", "link", "show").stdout for h in ns_first} == ns_first
        assert lab.status()["up"]
        assert _root_links() == links
        new_routes = _root_routes() - routes
        assert not new_routes, new_routes
    finally:
        removed = lab.down()
    assert len(removed) == len(HOSTS)
    assert _namespaces(lab.prefix) == []
    assert not os.path.exists(f"/etc/netns/{lab.prefix}-pc1")
    assert lab.down() == []  # down of nothing is fine


def test_down_after_a_crash_kills_processes_and_removes_namespaces() -> None:
    prefix = f"wpc{os.getpid()}"
    # A crashed run: a lab built by another process, with a process left running inside it.
    code = (
        "import sys, subprocess; from lab.netns import Lab; lab = Lab(sys.argv[1]).up(); "
        "null = subprocess.DEVNULL; "
        "p = lab.popen('pc1', 'sleep', '300', stdout=null, stderr=null); "
        "print(p.pid, flush=True)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, prefix], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    lab = Lab(prefix)
    try:
        assert len(_namespaces(prefix)) == len(HOSTS)
        pids = lab.pids("pc1") + lab.pids("dns")
        assert len(pids) >= 2  # the sleep and the resolver
        # and a half-built one: an extra namespace of the prefix without its links.
        subprocess.run(["ip", "netns", "del", f"{prefix}-hub"], check=True)
    finally:
        lab.down()
    assert _namespaces(prefix) == []
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [p for p in pids if os.path.exists(f"/proc/{p}") and _not_zombie(p)]
    assert alive == []


def test_half_built_lab_is_rebuilt_by_up() -> None:
    prefix = f"wph{os.getpid()}"
    subprocess.run(["ip", "netns", "add", f"{prefix}-app"], check=True)
    lab = Lab(prefix)
    try:
        assert not lab.is_up()
        lab.up()
        assert lab.is_up()
        assert (
            " 0% packet loss"
            in lab.exec("pc2", "ping", "-c", "1", "-W", "2", "203.0.113.10").stdout
        )
    finally:
        lab.down()
    assert _namespaces(prefix) == []


def test_bad_prefix_and_unknown_host() -> None:
    with pytest.raises(LabError, match="prefix"):
        Lab("Bad-Prefix")
    with pytest.raises(LabError, match="no lab host"):
        Lab("wpx").exec("nosuch", "true")


def test_cli_status_and_exec(lab: Lab) -> None:
    def wp(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "appliance", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    res = wp("lab", "status", "--prefix", lab.prefix)
    assert res.returncode == 0, res.stderr
    assert "state: up" in res.stdout and f"{lab.prefix}-app" in res.stdout
    res = wp("lab", "exec", "--prefix", lab.prefix, "pc1", "ip", "-4", "-o", "addr", "show", "eth0")
    assert "198.18.0.11/24" in res.stdout
    res = wp("lab", "exec", "--prefix", "wpnone", "pc1", "true")
    assert res.returncode != 0 and "not up" in res.stderr


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
