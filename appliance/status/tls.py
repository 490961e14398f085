"""The page's own HTTPS certificate: self-signed, made once per device on first start.

The key (EC P-256, 0600) and certificate live in the state directory (``status-tls.key``,
``status-tls.pem``). There is no CA an office browser trusts for a box on the LAN, so the browser
warns once; the owner compares the SHA-256 fingerprint it shows with the one in the log and on the
page footer (and on the installer's sheet).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.files import atomic_write

log = logging.getLogger(__name__)

CERT_FILE = "status-tls.pem"
KEY_FILE = "status-tls.key"
VALID_DAYS = 3650


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as browsers show it (AB:CD:...)."""
    digest = cert.fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def _names(device_id: str) -> list[x509.GeneralName]:
    names: list[str] = []
    for n in (device_id, f"{device_id}.local", socket.gethostname(), "localhost"):
        if n and n not in names:
            names.append(n)
    out: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    out += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    return out


def ensure_certificate(state_dir: str | os.PathLike[str], device_id: str) -> tuple[Path, Path, str]:
    """(certificate path, key path, fingerprint); made the first time. Raises OSError or
    ValueError when the directory cannot hold them or they are damaged beyond use."""
    d = Path(state_dir)
    cert_path, key_path = d / CERT_FILE, d / KEY_FILE
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            return cert_path, key_path, fingerprint(cert)
        except ValueError:
            log.warning("status page certificate in %s is damaged: making a new one", d)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id[:64] or "watchpost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Watchpost status page"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(device_id)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    fp = fingerprint(cert)
    log.info("status page: made its HTTPS certificate, SHA-256 fingerprint %s", fp)
    return cert_path, key_path, fp


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx
