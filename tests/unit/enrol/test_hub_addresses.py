"""The hub's addresses in the daemon unit's IPAddressAllow= drop-in, resolved again at each start
(`watchpost hub-addresses`, ExecStartPre= of watchpost.service): a hub that moves is followed;
whatever DNS says, the drop-in holds only public, non-office single addresses (never "any",
never empty), a failed or useless answer keeps it as it was, and the status says what happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import from_dict
from appliance.enrol import hubaddr
from appliance.hublink.link import HubLink
from appliance.packet.addrset import AddrSet

OFFICE = AddrSet(("10.0.0.0/8", "192.168.0.0/16", "fc00::/7", "198.51.100.0/28"))  # + public
HOST = "hub.example.org"


class Resolver:
    def __init__(self, answers: list[list[str] | OSError]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        a = self.answers.pop(0)
        if isinstance(a, OSError):
            raise a
        return a


def test_screen_keeps_public_single_addresses_only() -> None:
    found = [
        "203.0.113.10", "2001:db8::10", "10.1.2.3", "192.168.1.1", "127.0.0.1", "169.254.1.1",
        "0.0.0.0", "::", "::1", "fe80::1%eth0", "ff02::1", "224.0.0.1", "fd00::5", "100.64.0.1",
        "::ffff:10.0.0.1", "::ffff:203.0.113.11", "198.51.100.5", "203.0.113.10", "any",
        "0.0.0.0/0",
    ]  # fmt: skip
    kept, refused = hubaddr.screen(found, OFFICE)
    assert kept == ["203.0.113.10", "203.0.113.11", "2001:db8::10"]
    why = dict(refused)
    for a in ("10.1.2.3", "192.168.1.1", "127.0.0.1", "169.254.1.1", "0.0.0.0", "::", "::1",
              "fe80::1", "ff02::1", "224.0.0.1", "fd00::5", "100.64.0.1", "10.0.0.1"):  # fmt: skip
        assert why[a].startswith("not a public address"), a
    assert why["198.51.100.5"] == "an office address (inline.home_nets)"
    assert why["any"] == why["0.0.0.0/0"] == "not an address"
    many = [f"203.0.113.{i}" for i in range(1, 30)]
    kept, refused = hubaddr.screen(many, OFFICE)
    assert len(kept) == hubaddr.MAX_ADDRESSES and len(refused) == 29 - hubaddr.MAX_ADDRESSES
    with pytest.raises(ValueError, match="empty IPAddressAllow"):
        hubaddr.write_dropin(Path("/nonexistent/hub.conf"), [], HOST)


def test_a_hub_that_moves_is_followed_and_the_rest_keeps_the_drop_in(tmp_path: Path) -> None:
    dropin = tmp_path / "watchpost.service.d" / "hub.conf"
    hubaddr.write_dropin(dropin, ["203.0.113.10"], HOST)
    applied: list[list[str]] = []

    def apply(addresses: list[str]) -> str:
        applied.append(addresses)
        return ""

    def run(answer: list[str] | OSError) -> hubaddr.Refresh:
        return hubaddr.refresh(HOST, 8883, OFFICE, dropin, resolver=Resolver([answer]),
                               apply=apply)  # fmt: skip

    # The same set: nothing written, nothing applied.
    before = dropin.stat().st_mtime_ns
    r = run(["203.0.113.10"])
    assert (r.changed, r.problem, r.note) == (False, "", f"{HOST} is still at 203.0.113.10")
    assert dropin.stat().st_mtime_ns == before and applied == []
    # Moved (and a private address beside it, ignored): rewritten and applied to this start.
    r = run(["10.0.0.7", "198.18.0.50", "2001:db8::7"])
    assert r.changed and r.addresses == ["198.18.0.50", "2001:db8::7"]
    assert r.previous == ["203.0.113.10"] and r.refused[0]["address"] == "10.0.0.7"
    assert r.note == (f"{HOST} moved: 203.0.113.10 -> 198.18.0.50 2001:db8::7 ({dropin} rewritten)")
    assert "[Service]\nIPAddressAllow=198.18.0.50 2001:db8::7\n" in dropin.read_text()
    assert hubaddr.read_dropin(dropin) == ["198.18.0.50", "2001:db8::7"]
    assert applied == [["198.18.0.50", "2001:db8::7"]]
    text = dropin.read_text()
    # No answer, only office addresses, only non-public ones: the drop-in stays as it was.
    r = run(hubaddr.ResolveError("cannot resolve the hub's name 'hub.example.org' (timeout)"))
    assert r.problem == (
        "cannot resolve the hub's name 'hub.example.org' (timeout); the drop-in keeps "
        "198.18.0.50 2001:db8::7"
    )
    r = run(["198.51.100.3"])
    assert r.problem.startswith(f"{HOST} resolves to no usable address; the drop-in keeps")
    r = run(["192.168.1.9", "127.0.0.1"])
    assert r.problem == "" and r.note.startswith(f"{HOST} has no public address to allow")
    assert dropin.read_text() == text and not any(x.changed for x in (r,))
    assert len(applied) == 1
    # Applying may fail (no systemd): said, the drop-in is written all the same.
    r = hubaddr.refresh(HOST, 8883, OFFICE, dropin, resolver=Resolver([["203.0.113.99"]]),
                        apply=lambda a: "systemctl set-property: no bus")  # fmt: skip
    assert r.changed and hubaddr.read_dropin(dropin) == ["203.0.113.99"]
    assert r.problem == "not applied to the running unit (systemctl set-property: no bus): in " \
        "force after a reload"  # fmt: skip


def test_the_command_rewrites_the_drop_in_and_the_link_status_says_so(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dropin = tmp_path / "hub.conf"
    hubaddr.write_dropin(dropin, ["203.0.113.10"], "192.0.2.10")
    cfg = tmp_path / "watchpost.toml"
    cfg.write_text(
        f'[device]\nid = "dev1"\nsite = "leeds"\nstate_dir = "{state}"\n'
        '[hub]\nenabled = true\nhost = "192.0.2.10"\n'  # an address: no DNS needed
    )
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "hub-addresses", "--config", str(cfg),
         "--unit-dropin", str(dropin), "--no-apply"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "192.0.2.10 moved: 203.0.113.10 -> 192.0.2.10" in r.stderr
    assert hubaddr.read_dropin(dropin) == ["192.0.2.10"]
    status = json.loads((state / hubaddr.STATUS_FILE).read_text())
    assert status["changed"] and status["addresses"] == ["192.0.2.10"]
    config = from_dict({"device": {"id": "dev1", "state_dir": str(state)},
                        "hub": {"host": "192.0.2.10"}})  # fmt: skip
    assert HubLink(config).stats()["hub"]["addresses"]["previous"] == ["203.0.113.10"]
    # No hub: nothing to do, and still exit 0 (the daemon starts whatever happens here).
    cfg.write_text(f'[device]\nid = "dev1"\nstate_dir = "{state}"\n')
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "hub-addresses", "--config", str(cfg),
         "--unit-dropin", str(dropin), "--no-apply"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0 and "no hub configured" in r.stderr
    assert hubaddr.read_dropin(dropin) == ["192.0.2.10"]
