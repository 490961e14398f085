"""Lab pieces that need no kernel: the fixed plan, the daemon config it writes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from appliance.config import ConfigError, load
from lab.netns import EXTRA_ADDRESSES, HOSTS, LAB_NAMES, Lab, LabError, lab_config

ALLOWED = [ipaddress.ip_network(n) for n in
           ("198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]  # fmt: skip


def test_every_address_is_in_the_documented_ranges() -> None:
    addrs = [a for a, _role in HOSTS.values() if a] + list(LAB_NAMES.values())
    addrs += [a for extra in EXTRA_ADDRESSES.values() for a in extra]
    for a in addrs:
        assert any(ipaddress.ip_address(a) in n for n in ALLOWED), a


def test_namespaces_are_named_from_the_prefix() -> None:
    lab = Lab("wpz9")
    assert {h.netns for h in lab.hosts.values()} == {f"wpz9-{h}" for h in HOSTS}
    for bad in ("", "WP", "wp-1", "9wp", "a" * 13):
        with pytest.raises(LabError):
            Lab(bad)


def test_lab_config_loads_with_the_project_loader(tmp_path: Path) -> None:
    path = lab_config(tmp_path, mode="block", inline={"head_packets": 4})
    cfg = load(path)
    assert (cfg.inline.bridge, cfg.inline.uplink, cfg.inline.office) == ("br0", "uplink", "office")
    assert cfg.inline.mode == "block" and cfg.inline.head_packets == 4
    assert cfg.inline.home_nets == ("198.18.0.0/24",)
    assert "203.0.113.66" in Path(cfg.intel.paths[0]).read_text().split()
    assert cfg.log.eve == str(tmp_path / "eve.json")


def test_lab_config_refuses_a_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inline.head_packets"):
        lab_config(tmp_path / "x", inline={"head_packets": "many"})
    assert not (tmp_path / "x").exists()


def test_not_root_gets_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from appliance.cli import main

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        Lab("wpnoroot").up()
    for args in (["lab", "up"], ["lab", "down"], ["lab", "status"], ["demo", "--duration", "5"]):
        res = CliRunner().invoke(main, [*args, "--prefix", "wpnoroot"])
        assert res.exit_code == 2, (args, res.output)
        assert res.output.strip().splitlines() == [
            "error: the lab needs root (network namespaces and bridges): run it with sudo"
        ], args
