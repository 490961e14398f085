"""The console's TLS certificate: self-signed (ECDSA P-256, the host's name and 127.0.0.1),
made at first start in the state directory, reused afterwards."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.files import atomic_write


def ensure_cert(state: Path, days: int = 825) -> tuple[Path, Path]:
    cert, key = state / "console.pem", state / "console.key"
    if cert.exists() and key.exists():
        return cert, key
    k = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"watchpost console {host}")])
    now = dt.datetime.now(dt.UTC)
    sans = [x509.DNSName(host), x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]  # fmt: skip
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(k, hashes.SHA256())
    )
    key_pem = k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(key, key_pem, mode=0o600)
    atomic_write(cert, c.public_bytes(serialization.Encoding.PEM))
    return cert, key
