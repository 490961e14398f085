"""appliance.enrol: the bundle's checks (every bad field named), token scrubbing, the setup code,
the status file and what the LEDs and the page make of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.config import LedsConfig
from appliance.enrol import bundle, setupcode, state
from appliance.leds import WINK, Leds
from appliance.status.present import overview
from hub import enrol as hub_enrol
from hub import provisioning as prov
from protocol.envelope import generate_keypair


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> str:
    ca_dir = tmp_path_factory.mktemp("ca")
    prov.create_ca(ca_dir)
    tok = hub_enrol.create_token(ca_dir, "wp-0042", "siteA")
    _priv, pub = generate_keypair()
    return hub_enrol.bundle_text(
        tok, "hub.example.org", (ca_dir / "ca.pem").read_text(), pub.decode()
    )


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / bundle.NAME
    p.write_text(text)
    return p


def test_good_bundle(tmp_path: Path, good: str) -> None:
    b = bundle.load(write(tmp_path, good))
    assert (b.device_id, b.site, b.hub_host, b.hub_port, b.enrol_port) == (
        "wp-0042",
        "siteA",
        "hub.example.org",
        8883,
        8884,
    )
    assert b.hub_ca.startswith("-----BEGIN CERTIFICATE-----")
    assert len(b.token) >= 32


def test_every_bad_field_is_named(tmp_path: Path, good: str) -> None:
    text = (
        good.replace('site = "siteA"', 'site = "site/A"')
        .replace("hub_port = 8883", 'hub_port = "x"')
        .replace('hub_host = "hub.example.org"', 'hub_host = "not a host"')
        .replace("BEGIN CERTIFICATE", "BEGIN JUNK")
    )
    text = "\n".join(line for line in text.splitlines() if not line.startswith("token ="))
    text += '\ncolour = "blue"\n'
    with pytest.raises(bundle.BundleError) as e:
        bundle.load(write(tmp_path, text))
    problems = e.value.problems
    for field in ("site", "hub_port", "hub_host", "hub_ca", "token", "colour"):
        assert any(p.startswith(f"watchpost-enrol.toml: {field}: ") for p in problems), field
    assert "watchpost-enrol.toml: token: missing" in problems
    assert "watchpost-enrol.toml: hub_port: expected an integer 1-65535, got 'x'" in problems


def test_partial_used_and_binary_bundles(tmp_path: Path, good: str) -> None:
    with pytest.raises(bundle.BundleError, match="not valid TOML .*cut short"):
        bundle.load(write(tmp_path, good[: len(good) // 2]))
    used = "\n".join(
        'token = ""' if line.startswith("token =") else line for line in good.splitlines()
    )
    with pytest.raises(bundle.BundleError, match="token: empty: this bundle was already used"):
        bundle.load(write(tmp_path, used))
    (tmp_path / bundle.NAME).write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(bundle.BundleError, match="not UTF-8"):
        bundle.load(tmp_path / bundle.NAME)
    with pytest.raises(bundle.BundleError, match="no enrolment bundle .* found: looked at"):
        bundle.find([tmp_path / "nope.toml"])


def test_candidates_cover_bookworm_trixie_and_cloud_init() -> None:
    got = [str(p) for p in bundle.candidates()]
    assert got == [
        "/boot/firmware/watchpost-enrol.toml",
        "/boot/watchpost-enrol.toml",
        "/run/watchpost/watchpost-enrol.toml",
    ]


def test_scrub_token(tmp_path: Path, good: str) -> None:
    b = bundle.load(write(tmp_path, good))
    user_data = tmp_path / "user-data"
    user_data.write_text(
        f'#cloud-config\nwrite_files:\n  - content: |\n      token = "{b.token}"\n'
    )
    other = tmp_path / "other.txt"
    other.write_text("nothing\n")
    changed = bundle.scrub_token([b.path, user_data, other, tmp_path / "missing"], b.token)
    assert changed == [b.path, user_data]
    assert b.token not in b.path.read_text() and 'token = ""' in b.path.read_text()
    assert b.token not in user_data.read_text()
    with pytest.raises(bundle.BundleError, match="token: empty"):
        bundle.load(b.path)


def test_setup_code(tmp_path: Path) -> None:
    code = setupcode.make(tmp_path)
    assert len(code) == 9 and code[4] == "-"
    stored = (tmp_path / setupcode.FILE).read_text()
    assert code.replace("-", "") not in stored  # only the hash is kept
    assert (tmp_path / setupcode.FILE).stat().st_mode & 0o777 == 0o600
    assert setupcode.check(tmp_path, code)
    assert setupcode.check(tmp_path, code.lower().replace("-", " "))
    assert not setupcode.check(tmp_path, "AAAA-AAAA")
    newer = setupcode.make(tmp_path)  # a new code replaces the old one
    assert setupcode.check(tmp_path, newer)
    assert newer == code or not setupcode.check(tmp_path, code)
    setupcode.consume(tmp_path)
    assert not setupcode.check(tmp_path, newer)


def test_status_leds_and_page(tmp_path: Path) -> None:
    leds = Leds(LedsConfig(), factory=MockFactory())
    leds.state_dir = str(tmp_path)
    hub = {"enabled": False, "connected": False}
    leds.update({"running": True, "hub": hub})
    assert leds.shown()["amber"] == "off"  # never asked to enrol: no problem
    state.write_status(tmp_path, "failed", "the hub at hub.example.org:8884 did not answer")
    leds.update({"running": True, "hub": hub})
    assert leds.shown() == {"green": "on", "amber": WINK, "red": "off"}
    stats = {"state": "running", "running": True, "hub": hub, **leds.stats()}
    view = overview(stats, 0.0, 1.0)
    assert view["health"] == "warn"
    assert view["headline"] == (
        "Watching your network, but not enrolled with the hub: the hub at "
        "hub.example.org:8884 did not answer."
    )
    assert view["leds_text"]["amber"] == "not enrolled with the hub (see below)"
    (tmp_path / state.STAMP).write_text("x\n")
    leds.update({"running": True, "hub": {"enabled": True, "connected": True}})
    assert leds.shown()["amber"] == "on" and leds.enrol_problem is None
    leds.close()
    assert json.loads((tmp_path / state.STATUS_FILE).read_text())["state"] == "failed"
