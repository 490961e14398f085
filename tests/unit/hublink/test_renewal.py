"""Certificate renewal, device side: every bad answer is refused with its reason and changes
nothing; the policy (when due, back-off, time-out, the warning) on a real CA's certificates."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.config import from_dict
from appliance.hublink import renewal as R
from hub import provisioning as prov

DAY = 86400


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rca") / "ca"
    prov.create_ca(d)
    prov.issue_device(d, "dev1", "siteA")
    prov.issue_device(d, "dev2", "siteA")
    return d


def answer(ca_dir: Path, key: ec.EllipticCurvePrivateKey, cn: str = "dev1", **kw: Any) -> bytes:
    pem = prov.renew_csr(ca_dir, R.make_csr(key, cn), cn, "siteA", **kw)
    return json.dumps({"ok": True, "cert": pem.decode()}).encode()


def test_bad_answers_are_refused_with_the_reason(ca_dir: Path, tmp_path: Path) -> None:
    cas = [prov.load_ca(ca_dir).cert]
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    good = R.check_issued(answer(ca_dir, key), cas, key, "dev1", now)
    assert good.subject.rfc4514_string() == "CN=dev1"
    other_ca = tmp_path / "other"
    prov.create_ca(other_ca)
    prov.issue_device(other_ca, "dev1", "siteA")
    cases = [
        (b"junk", "not JSON"),
        (b"[]", "not {"),
        (json.dumps({"ok": False, "error": "the device is revoked"}).encode(), "is revoked"),
        (json.dumps({"ok": True}).encode(), "no certificate"),
        (json.dumps({"ok": True, "cert": "-----BEGIN nothing"}).encode(), "not PEM"),
        (answer(other_ca, key), "not issued by the hub CA"),
        (answer(ca_dir, ec.generate_private_key(ec.SECP256R1())), "not for this device's new"),
        (answer(ca_dir, key, cn="dev2"), "is for 'dev2'"),
        (b"x" * (R.MAX_ANSWER + 1), "over"),
    ]
    for payload, words in cases:
        with pytest.raises(R.RenewalRefused, match=words):
            R.check_issued(payload, cas, key, "dev1", now)
    with pytest.raises(R.RenewalRefused, match="ended on"):
        R.check_issued(answer(ca_dir, key), cas, key, "dev1", now + dt.timedelta(days=400))


def test_due_back_off_time_out_and_warning(ca_dir: Path, tmp_path: Path) -> None:
    ident = ca_dir / "devices" / "dev1"
    cfg = from_dict({
        "device": {"id": "dev1", "site": "siteA", "state_dir": str(tmp_path / "state")},
        "hub": {"host": "192.0.2.1", "ca": str(ident / "ca.pem"), "cert": str(ident / "device.pem"),
                "key": str(ident / "device.key"), "renew_at_percent": 50},
    })  # fmt: skip
    cert = x509.load_pem_x509_certificate((ident / "device.pem").read_bytes())
    start = cert.not_valid_before_utc.timestamp()
    sent: list[tuple[str, bytes]] = []
    clock = [start + 100 * DAY]
    r = R.CertRenewal(cfg, lambda t, d: sent.append((t, d)) or True, clock=lambda: clock[0],
                      answer_timeout=60, backoff=(100, 400))  # fmt: skip
    r.tick(clock[0], True)
    assert not sent and r.stats()["state"] == "ok"
    clock[0] = start + 190 * DAY  # past 50 %: due, but only sent while connected
    r.tick(clock[0], False)
    assert not sent and r.stats()["state"] == "due"
    r.tick(clock[0], True)
    assert [t for t, _ in sent] == ["cert/csr"] and r.stats()["state"] == "waiting"
    key = serialization.load_pem_private_key(
        (tmp_path / "state/renewal/pending.key").read_bytes(), None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    # A retained answer to someone else's CSR is not the answer to ours: ignored.
    r.on_issued(answer(ca_dir, ec.generate_private_key(ec.SECP256R1())), retained=True)
    assert r.stats()["state"] == "waiting"
    clock[0] += 61
    r.tick(clock[0], True)
    s = r.stats()
    assert s["state"] == "failed" and "no answer from the hub within 60 s" in s["error"]
    assert s["timeouts"] == 1 and s["problem"] == ""  # not yet half-way through the window
    assert 80 <= s["next_try"] - clock[0] <= 100
    r.tick(clock[0] + 50, True)
    assert len(sent) == 1  # backing off
    clock[0] += 101
    r.tick(clock[0], True)
    assert len(sent) == 2 and r.stats()["state"] == "waiting"
    # The same key after a restart (an answer may come to the CSR already sent).
    r2 = R.CertRenewal(cfg, lambda t, d: True, clock=lambda: clock[0])
    assert r2._pending is not None and r2._pending.private_numbers() == key.private_numbers()
    r.on_issued(json.dumps({"ok": False, "error": "nope"}).encode(), retained=False)
    clock[0] = start + 300 * DAY  # past half of the renewal window, still failing
    s = r.stats()
    assert (
        s["state"] == "failed" and "renewal failed: answer refused: the hub refused" in s["problem"]
    )
    clock[0] = start + 400 * DAY
    assert "ended on" in r.stats()["problem"]
