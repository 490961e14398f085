"""The one check of a device certificate the hub issued for a key made on this device: at
enrolment (`appliance.enrol.device`, the bundle's CA) and at renewal (`appliance.hublink.renewal`,
the pinned ``hub.ca``). The checks are the same for both; what differs is how each caller says
what is wrong, so the texts and the exception are data (`CertErrors`).

In order: the PEM parses; it is directly issued by one of the trusted CAs (signature and issuer
name); its public key is the device's; it names exactly this device (one CN); it allows client
authentication (no extended key usage at all also does); it has not ended.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertErrors:
    """How one caller refuses a certificate: `refuse(text)` makes the exception, each text is a
    `str.format` template. Fields: ``{error}`` (what the parser or the signature check said),
    ``{got}`` (the certificate's CN, ``""`` when none), ``{device_id}``, ``{not_after}`` (the
    end, a datetime)."""

    refuse: Callable[[str], Exception]
    not_pem: str
    not_issued: str
    wrong_key: str
    wrong_device: str
    no_client_auth: str = "the certificate does not allow client authentication"
    ended: str = "the certificate ended on {not_after:%Y-%m-%d}"


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_device_cert(
    pem: str,
    cas: Sequence[x509.Certificate],
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
    now: dt.datetime,
    errors: CertErrors,
) -> x509.Certificate:
    """The certificate in `pem`, checked; otherwise ``errors.refuse(<the caller's text>)``."""

    def refuse(template: str, **fields: object) -> Exception:
        return errors.refuse(template.format(device_id=device_id, **fields))

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as e:
        raise refuse(errors.not_pem, error=e) from None
    problem: Exception = ValueError("no CA to check it against")
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)  # the issuer name first, then the signature
        except (ValueError, TypeError, InvalidSignature) as e:
            problem = e
            continue
        break
    else:
        raise refuse(errors.not_issued, error=problem)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise refuse(errors.wrong_key)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != device_id:
        raise refuse(errors.wrong_device, got=cns[0].value if cns else "")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise refuse(errors.no_client_auth)
    if cert.not_valid_after_utc <= now:
        raise refuse(errors.ended, not_after=cert.not_valid_after_utc)
    return cert
