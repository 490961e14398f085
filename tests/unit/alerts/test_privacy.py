"""Pseudonymisation hides office addresses in every form they can take in a record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.alerts.privacy import Pseudonymizer, key_for

HOME = ("198.18.0.0/15", "fd00::/8")


@pytest.fixture
def p() -> Pseudonymizer:
    return Pseudonymizer("k" * 32, HOME)


@pytest.mark.parametrize(
    "text",
    [
        "198.18.0.11",
        "198.18.0.11:3389",
        "http://198.18.0.11:8080/admin?x=1",
        "https://198.18.0.11/",
        "11.0.18.198.in-addr.arpa",
        "11.0.18.198.IN-ADDR.ARPA",
        "::ffff:198.18.0.11",
        "[::ffff:198.18.0.11]:443",
        "connection from 198.18.0.11 port 22 refused",
        "src=198.18.0.11,dst=203.0.113.10",
    ],
)
def test_every_form_of_an_office_v4_address_becomes_the_same_token(
    p: Pseudonymizer, text: str
) -> None:
    out = p.scrub(text)
    assert "198.18.0.11" not in out and "11.0.18.198" not in out and "ffff" not in out.lower()
    assert p.token("198.18.0.11") in out


@pytest.mark.parametrize(
    "text",
    [
        "fd00::11",
        "[fd00::11]:22",
        "http://[fd00::11]:8080/",
        "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
    ],
)
def test_office_v6_addresses_in_every_form(p: Pseudonymizer, text: str) -> None:
    out = p.scrub(text)
    assert "fd00" not in out.lower() and "d.f.ip6" not in out
    assert p.token("fd00::11") in out


def test_other_addresses_and_look_alikes_stay(p: Pseudonymizer) -> None:
    for text in (
        "203.0.113.10",
        "http://203.0.113.10:80/x",
        "10.113.0.203.in-addr.arpa",
        "version 1.2.3.4.5",
        "12:30:45",
        "www.example.com",
        "2001:db8::1",
        "::ffff:203.0.113.10",
    ):
        assert p.scrub(text) == text, text
    assert p.scrub("10.0.18.198.in-addr.arpa") == p.token("198.18.0.10")


def test_whole_records_including_keys_and_lists(p: Pseudonymizer) -> None:
    rec = {
        "src_ip": "198.18.0.11",
        "watchpost": {"details": {"ports": [22, 3389], "hosts": ["198.18.0.12:445"]}},
        "top_sources": {"198.18.0.11": 5, "203.0.113.66": 2},
        "log": ["2026-12-04 pc 198.18.0.11 blocked"],
    }
    text = json.dumps(p.apply(rec))
    assert "198.18." not in text
    assert "203.0.113.66" in text and "22" in text


def test_a_random_key_is_made_once_and_kept(tmp_path: Path) -> None:
    assert key_for("configured-key-0123456789", tmp_path) == "configured-key-0123456789"
    k1 = key_for("", tmp_path)
    assert len(k1) == 64 and key_for("", tmp_path) == k1
    assert (tmp_path / "privacy.key").stat().st_mode & 0o777 == 0o600


def test_pseudonymize_without_a_key_uses_the_kept_random_key(tmp_path: Path) -> None:
    from appliance.alerts.pipeline import AlertPipeline
    from tests.helpers import make_config

    cfg = make_config(device={"state_dir": str(tmp_path)}, privacy={"pseudonymize": True})
    pipeline = AlertPipeline(cfg, [])
    assert pipeline.pseudo is not None
    key = (tmp_path / "privacy.key").read_text().strip()
    assert pipeline.pseudo.token("198.18.0.11") == Pseudonymizer(key, HOME).token("198.18.0.11")


def test_outgoing_payloads_are_scrubbed_json_or_text(p: Pseudonymizer) -> None:
    body = json.dumps({"logs": ["pc 198.18.0.11:445 failed"], "n": 3}).encode()
    out = json.loads(p.scrub_payload(body))
    assert out["n"] == 3 and "198.18" not in out["logs"][0]
    assert b"198.18" not in p.scrub_payload(b"raw 198.18.0.11 text")
