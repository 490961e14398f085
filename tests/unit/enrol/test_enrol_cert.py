"""One certificate checker (appliance.enrol.certcheck) for enrolment and renewal: the same bad
certificates are refused by both, each caller in its own words and with its own exception (the
enrolment's EnrolFailure with the retry exit code, the renewal's RenewalRefused)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.enrol import device as enrol
from appliance.enrol.bundle import Bundle
from appliance.hublink import renewal

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "hub CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    key: ec.EllipticCurvePrivateKey,
    cn: str | None = "dev1",
    usage: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
    ends: dt.datetime = NOW + dt.timedelta(days=365),
) -> str:
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn) if cn else x509.Name([]))
        .issuer_name(ca[0].subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ends - dt.timedelta(days=400)).not_valid_after(ends)
    )  # fmt: skip
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca[1], hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


CA = make_ca()
OTHER_CA = make_ca()  # the same name, another key: only the signature tells them apart
KEY = ec.generate_private_key(ec.SECP256R1())
ELSE = ec.generate_private_key(ec.SECP256R1())

# (certificate, the enrolment's words, the renewal's words)
CASES = [
    ("-----BEGIN nothing", "the hub sent no valid certificate (", "the answer's certificate is "
     "not PEM ("),
    (leaf(OTHER_CA, KEY), "the certificate is not issued by the bundle's hub CA (",
     "the certificate is not issued by the hub CA this device trusts"),
    (leaf(make_ca("another CA"), KEY), "the certificate is not issued by the bundle's hub CA (",
     "the certificate is not issued by the hub CA this device trusts"),
    (leaf(CA, ELSE), "the certificate is not for this device's key",
     "the certificate is not for this device's new key"),
    (leaf(CA, KEY, cn="dev2"), "the certificate is not for device dev1",
     "the certificate is for 'dev2', not for this device 'dev1'"),
    (leaf(CA, KEY, cn=None), "the certificate is not for device dev1",
     "the certificate is for '', not for this device 'dev1'"),
    (leaf(CA, KEY, usage=ExtendedKeyUsageOID.SERVER_AUTH),
     "the certificate does not allow client authentication",
     "the certificate does not allow client authentication"),
    (leaf(CA, KEY, ends=NOW - dt.timedelta(days=1)),
     f"the certificate ended on {NOW - dt.timedelta(days=1):%Y-%m-%d}",
     f"the certificate ended on {NOW - dt.timedelta(days=1):%Y-%m-%d}"),
]  # fmt: skip


def bundle() -> Bundle:
    ca_pem = CA[0].public_bytes(serialization.Encoding.PEM).decode()
    return Bundle(Path("/boot/watchpost-enrol.toml"), "dev1", "leeds", "hub.example.org", 8883,
                  8884, ca_pem, "", "tok")  # fmt: skip


def test_a_good_certificate_passes_both() -> None:
    pem = leaf(CA, KEY)
    assert enrol.check_certificate({"cert": pem}, KEY, bundle()).subject == _name("dev1")
    answer = json.dumps({"ok": True, "cert": pem}).encode()
    assert renewal.check_issued(answer, [OTHER_CA[0], CA[0]], KEY, "dev1", NOW).subject == _name(
        "dev1"
    )
    # No extended key usage at all is accepted (it restricts nothing).
    assert enrol.check_certificate({"cert": leaf(CA, KEY, usage=None)}, KEY, bundle())


@pytest.mark.parametrize(("pem", "enrol_words", "renewal_words"), CASES)
def test_each_caller_refuses_in_its_own_words(
    pem: str, enrol_words: str, renewal_words: str
) -> None:
    with pytest.raises(enrol.EnrolFailure) as e:
        enrol.check_certificate({"cert": pem}, KEY, bundle())
    assert str(e.value).startswith(enrol_words), e.value
    assert e.value.code == enrol.EXIT_RETRY
    answer = json.dumps({"ok": True, "cert": pem}).encode()
    with pytest.raises(renewal.RenewalRefused) as r:
        renewal.check_issued(answer, [CA[0]], KEY, "dev1", NOW)
    assert str(r.value).startswith(renewal_words), r.value
    for got, words in ((e.value, enrol_words), (r.value, renewal_words)):
        if not words.endswith("("):  # the whole text, where no library message follows
            assert str(got) == words
