"""hub.enrol: one-time tokens (hashed, single use, expiring), CSR signing, ACL and password file."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from hub import enrol
from hub import provisioning as prov
from protocol import enrol as wire


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    prov.create_ca(d)
    prov.issue_hub(d, "hub")
    return d


def csr_for(device: str, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[str, object]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def req(tok: enrol.Token, csr: str, **over: str) -> bytes:
    fields = {"device": tok.device, "site": tok.site, "token": tok.token, **over}
    return wire.request(fields["device"], fields["site"], fields["token"], csr, "ABCD-EFGH", "0.1")


def answer(ca_dir: Path, tid: str, payload: bytes, **kw: object) -> dict[str, object]:
    raw, _changed = enrol.handle_request(ca_dir, tid, payload, **kw)  # type: ignore[arg-type]
    return wire.parse_result(raw)


def test_token_is_stored_hashed(ca_dir: Path) -> None:
    tok = enrol.create_token(ca_dir, "wp-1", "siteA", hours=2)
    text = (ca_dir / "registry.json").read_text()
    assert tok.token not in text
    info = json.loads(text)["enrol"][tok.tid]
    assert info["state"] == "open" and info["device"] == "wp-1"
    assert info["passwd"].startswith("$7$101$")
    assert tok.tid == wire.token_id(tok.token)
    acl = prov.acl_text(prov.registry(ca_dir))
    assert f"user enrol-{tok.tid}\ntopic write watchpost/v1/enrol/{tok.tid}/request\n" in acl
    assert f"topic read watchpost/v1/enrol/{tok.tid}/result" in acl
    assert prov.enrol_passwd_text(prov.registry(ca_dir)) == f"enrol-{tok.tid}:{info['passwd']}\n"


def test_token_refusals(ca_dir: Path) -> None:
    enrol.create_token(ca_dir, "wp-1", "siteA")
    with pytest.raises(enrol.EnrolError, match="already has an open token"):
        enrol.create_token(ca_dir, "wp-1", "siteA")
    new = enrol.create_token(ca_dir, "wp-1", "siteA", replace=True)
    assert [t for t, i in prov.registry(ca_dir)["enrol"].items() if i["state"] == "open"] == [
        new.tid
    ]
    with pytest.raises(enrol.EnrolError, match="reserved"):
        enrol.create_token(ca_dir, "wp-2", "enrol")
    with pytest.raises(enrol.EnrolError, match="may not start with 'enrol-'"):
        enrol.create_token(ca_dir, "enrol-x", "siteA")
    with pytest.raises(enrol.EnrolError, match="device id must be"):
        enrol.create_token(ca_dir, "wp/2", "siteA")
    with pytest.raises(enrol.EnrolError, match="is a hub identity"):
        enrol.create_token(ca_dir, "hub", "siteA")
    prov.issue_device(ca_dir, "wp-3", "siteB")
    with pytest.raises(enrol.EnrolError, match="already enrolled at siteB"):
        enrol.create_token(ca_dir, "wp-3", "siteB")


def test_sign_then_single_use(ca_dir: Path) -> None:
    tok = enrol.create_token(ca_dir, "wp-1", "siteA")
    csr, key = csr_for("wp-1")
    got = answer(ca_dir, tok.tid, req(tok, csr))
    assert got["ok"] is True
    cert = x509.load_pem_x509_certificate(str(got["cert"]).encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "wp-1"
    assert cert.public_key() == key.public_key()  # type: ignore[attr-defined]
    # The same lifetime as every device certificate (renewed before it ends), not ten years.
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(life - dt.timedelta(days=prov.DEVICE_DAYS)) <= dt.timedelta(hours=1)
    assert prov.registry(ca_dir)["devices"]["wp-1"]["site"] == "siteA"
    sheet = json.loads((ca_dir / "enrolled/wp-1.json").read_text())
    assert sheet["setup_code"] == "ABCD-EFGH" and sheet["site"] == "siteA"
    # The same key again (the answer was lost): the same certificate, nothing new signed.
    again = answer(ca_dir, tok.tid, req(tok, csr))
    assert again["cert"] == got["cert"]
    # Another key with the same token: refused.
    other, _ = csr_for("wp-1")
    refused = answer(ca_dir, tok.tid, req(tok, other))
    assert refused == {
        "ok": False,
        "code": "used",
        "error": "the enrolment token was already used for another key",
    }
    # Once the device is seen with its own certificate the token is done for good.
    assert enrol.device_seen(ca_dir, "siteA", "wp-1") == tok.tid
    assert answer(ca_dir, tok.tid, req(tok, csr))["code"] == "used"
    assert f"enrol-{tok.tid}" not in prov.acl_text(prov.registry(ca_dir))
    assert prov.enrol_passwd_text(prov.registry(ca_dir)) == ""


def test_request_refusals(ca_dir: Path) -> None:
    tok = enrol.create_token(ca_dir, "wp-1", "siteA", hours=1)
    csr, _ = csr_for("wp-1")
    assert answer(ca_dir, "0" * 16, req(tok, csr))["code"] == "unknown-token"
    forged = enrol.Token("x" * 43, tok.tid, tok.device, tok.site, tok.expires)
    assert answer(ca_dir, tok.tid, req(forged, csr))["code"] == "wrong-token"
    mism = answer(ca_dir, tok.tid, req(tok, csr, device="wp-9"))
    assert mism["code"] == "mismatch"
    assert mism["error"] == "the token is for wp-1 at siteA, the request is for wp-9 at siteA"
    assert answer(ca_dir, tok.tid, req(tok, "junk"))["code"] == "bad-csr"
    assert answer(ca_dir, tok.tid, b"{not json")["code"] == "bad-request"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    assert answer(ca_dir, tok.tid, req(tok, csr), now=later)["code"] == "expired"
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wp-1")]))
        .sign(ed, None)
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    bad_key = answer(ca_dir, tok.tid, req(tok, ed_csr))
    assert bad_key["code"] == "refused" and "EC P-256" in str(bad_key["error"])
    assert "wp-1" not in prov.registry(ca_dir)["devices"]  # nothing was signed
    assert enrol.expire_tokens(ca_dir, now=later) == [tok.tid]


def test_a_request_carrying_a_private_key_is_refused(ca_dir: Path) -> None:
    tok = enrol.create_token(ca_dir, "wp-1", "siteA")
    csr, key = csr_for("wp-1")
    pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    got = answer(ca_dir, tok.tid, req(tok, csr + pem))
    assert got["code"] == "bad-request" and "private key" in str(got["error"])


def test_bundle_text(ca_dir: Path) -> None:
    import tomllib

    tok = enrol.create_token(ca_dir, "wp-1", "siteA")
    text = enrol.bundle_text(tok, "198.51.100.7", "CA-PEM\n", "PUB-PEM\n", 8883, 8884)
    data = tomllib.loads(text)
    assert data["token"] == tok.token and data["device_id"] == "wp-1"
    assert data["hub_host"] == "198.51.100.7" and data["enrol_port"] == 8884


def test_broker_conf_enrol_listener(ca_dir: Path, tmp_path: Path) -> None:
    s = prov.BrokerSettings(conf_dir=tmp_path / "b", port=8883, enrol_port=8884)
    conf = prov.mosquitto_conf(s)
    assert f"password_file {tmp_path / 'b' / 'enrol.passwd'}" in conf
    tail = conf.split("listener 8884")[1]
    assert "require_certificate false" in tail and "use_identity_as_username" not in tail
    assert "require_certificate true" not in tail
    with pytest.raises(prov.ProvisionError, match="enrol port"):
        prov.mosquitto_conf(prov.BrokerSettings(conf_dir=tmp_path, port=8883, enrol_port=8883))
    assert "password_file" not in prov.mosquitto_conf(prov.BrokerSettings(conf_dir=tmp_path))


def test_token_command_writes_the_bundle(ca_dir: Path, tmp_path: Path) -> None:
    import tomllib

    from click.testing import CliRunner

    from hub.cli import main
    from protocol.envelope import generate_keypair

    _priv, pub = generate_keypair()
    (tmp_path / "command.pub").write_bytes(pub)
    out = tmp_path / "office-17" / "watchpost-enrol.toml"
    args = ["enrol", "token", "--dir", str(ca_dir), "--device", "office-17", "--site", "leeds"]
    args += ["--hub-host", "hub.example.org", "--command-pubkey", str(tmp_path / "command.pub")]
    r = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("token ") and "for office-17 at leeds" in r.output
    assert out.stat().st_mode & 0o777 == 0o600
    data = tomllib.loads(out.read_text())
    assert data["hub_ca"] == (ca_dir / "ca.pem").read_text()
    assert data["command_pubkey"] == pub.decode()
    again = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "already has an open token" in again.output
    (tmp_path / "bad.pub").write_text("nope")
    bad = [*args[:-1], str(tmp_path / "bad.pub"), "--replace"]
    r = CliRunner().invoke(main, bad)
    assert r.exit_code == 2 and "not a PEM public key" in r.output


def test_enrol_topics() -> None:
    tid = wire.token_id("t" * 40)
    assert wire.split_topic(wire.request_topic(tid)) == (tid, "request")
    assert wire.split_topic(wire.result_topic(tid)) == (tid, "result")
    for bad in ("watchpost/v1/enrol/XYZ/request", f"watchpost/v1/enrol/{tid}/other", "a/b"):
        with pytest.raises(wire.EnrolProtocolError, match="not an enrolment topic"):
            wire.split_topic(bad)
