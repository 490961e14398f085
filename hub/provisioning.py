"""Certificates and broker configuration for the regional hub (`watchpost provision ...`).

One CA (the "device CA") signs everything the hub's broker trusts: a client certificate per
device (CN = device id, so mosquitto's ``use_identity_as_username`` makes the CN the username
its ACL matches), hub identity certificates (operator tools, SIEM forwarders), and the broker's
server certificate. Extended key usage keeps the roles apart: a device certificate cannot act as
a broker (clients check ``serverAuth``) and the broker certificate cannot log in as a device.

The CA directory holds ``ca.pem``, ``ca.key`` (0600) and ``registry.json``: every identity the
CA issued, with the device's site. The registry keeps device ids unique across sites and is what
the broker ACL is generated from, so a device can only write under its own site
(``watchpost/v1/<its site>/<its id>/...``), never under another site with the same id.

Keys are ECDSA P-256 (fast on a Pi, understood by every TLS stack the hub may run). Every key
file is written 0600, atomically.

Roles at the broker (issue: trust boundaries). Three kinds of identity besides the broker:

- **device** (``provision device``): writes its own reports, reads its own ``cmd`` and
  ``config/desired`` (and ``cert/issued``, renewal).
- **operator** (``provision hub NAME --role operator``): reads everything under the root, writes
  only ``cmd`` and ``config/desired`` of any device (and ``cert/issued``: it signs renewals).
- **consumer** (``--role consumer``): read-only ``alerts``, ``status``, ``telemetry``,
  ``summary``; a collector, a SIEM forwarder or an analyst. The collector runs as one.
- ``--role hub`` (the default, for existing set-ups and the lab) reads and writes everything.

Binding the MQTT client id to the certificate: mosquitto 2 runs no authentication plugin for
certificate identities (``use_identity_as_username``: "authentication assumed cleared"), so the
dynamic-security plugin's per-client client-id check never applies to them, and ACLs are only
consulted for publish/subscribe, after a session takeover has already happened. What mosquitto
does offer is the listener option ``use_username_as_clientid``: the broker replaces whatever
client id a client sends by its username, i.e. the certificate's CN. A stolen Pi can then only
ever be the session of its own CN: it cannot take over (knock offline) another device's or a
collector's persistent session. The price: one connection per identity at a time, so every
program that stays connected (each collector, each operator console) gets its own identity.
``provision broker-conf`` turns it on (``--no-bind-client-id`` to go without).

Revocation: ``provision revoke NAME`` puts the identity's certificate serial(s) on the CA's CRL
(``crl.pem``); ``broker-conf`` copies it next to the broker config (``crlfile``), and the broker
refuses the certificate at the TLS handshake once restarted. The CRL is re-signed by every
``broker-conf`` run and is valid for ``CRL_DAYS``: re-run it (and restart the broker) well within
that time, since an expired CRL makes the broker refuse every client.

Renewal: certificates are shorter-lived (devices 365 days by default) and renewed before they
expire by a CSR the device publishes on its ``cert/csr`` topic; the operator side checks it
against the topic and the registry (same CN, enrolled, not revoked) and answers on
``cert/issued`` (``renew_csr``; ``provision sign-csr`` does the same from files).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol import topics
from protocol.files import atomic_write

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# What a device may do under its own root (watchpost/v1/<site>/<id>/...): it writes its reports
# and answers, and reads its commands and desired config. `cmd/res/#` covers MQTT 5 response
# topics, which operators must therefore place under the device's own `cmd/res/`.
DEVICE_WRITES = (
    "status",
    "alerts",
    "telemetry",
    "summary",
    "cmd/res",
    "cmd/res/#",
    "config/reported",
    "cert/csr",  # renewal: the device asks with a CSR, the operator side answers (cert/issued)
)
DEVICE_READS = ("cmd", "config/desired", "cert/issued")
OPERATOR_WRITES = ("cmd", "config/desired", "cert/issued")
CONSUMER_READS = ("alerts", "status", "telemetry", "summary")
ROLES = ("hub", "operator", "consumer")
CRL_DAYS = 365
DEVICE_DAYS = 365


class ProvisionError(Exception):
    """A provisioning step that cannot be done; the message says what and why."""


def check_name(kind: str, value: str) -> str:
    """Ids and sites end up in topic paths and ACL lines: no wildcards, slashes or spaces."""
    if not _NAME_RE.match(value or ""):
        raise ProvisionError(f"{kind} must be 1-64 letters, digits, '-', '_' or '.', got {value!r}")
    return value


# -- files ---------------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """PKCS#8 PEM, mode 0600 from the first byte on disk (atomic_write chmods before rename)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, mode=0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise ProvisionError(f"{path}: no such file") from None
    except ValueError as e:
        raise ProvisionError(f"{path}: not a PEM certificate ({e})") from None


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise ProvisionError(f"{path}: no such file") from None
    except (ValueError, TypeError) as e:
        raise ProvisionError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{path}: expected an EC private key")
    return key


# -- the CA --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CA:
    dir: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.dir / "ca.pem"


def create_ca(
    ca_dir: str | os.PathLike[str],
    name: str = "Watchpost device CA",
    days: int = 20 * 365,
    force: bool = False,
) -> CA:
    """A new self-signed CA in `ca_dir`; refuses to overwrite one unless `force`."""
    d = Path(ca_dir)
    if (d / "ca.key").exists() and not force:
        raise ProvisionError(f"{d}: a CA already exists here (use --force to replace it)")
    if days < 1:
        raise ProvisionError(f"days must be at least 1, got {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    write_key(d / "ca.key", key)
    write_cert(d / "ca.pem", cert)
    _save_registry(d, {"devices": {}, "hubs": {}})
    return CA(d, cert, key)


def load_ca(ca_dir: str | os.PathLike[str]) -> CA:
    d = Path(ca_dir)
    if not (d / "ca.key").exists():
        raise ProvisionError(f"{d}: no CA here (run 'watchpost provision ca --dir {d}' first)")
    return CA(d, load_cert(d / "ca.pem"), load_key(d / "ca.key"))


def _load_registry(d: Path) -> dict[str, Any]:
    p = d / "registry.json"
    if not p.exists():
        return {"devices": {}, "hubs": {}}
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise ProvisionError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ProvisionError(f"{p}: expected a JSON object")
    data.setdefault("devices", {})
    data.setdefault("hubs", {})
    return data


def _save_registry(d: Path, data: dict[str, Any]) -> None:
    atomic_write(d / "registry.json", (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def registry(ca_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """{"devices": {id: {"site", "serial", "not_after"}}, "hubs": {name: {...}}}."""
    return _load_registry(Path(ca_dir))


def _leaf(
    ca: CA,
    common_name: str,
    usage: x509.ObjectIdentifier,
    days: int,
    sans: Sequence[x509.GeneralName] = (),
    not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf_cert(ca, common_name, usage, days, key.public_key(), sans, not_before)
    return cert, key


def _leaf_cert(
    ca: CA,
    common_name: str,
    usage: x509.ObjectIdentifier,
    days: int,
    public_key: ec.EllipticCurvePublicKey,
    sans: Sequence[x509.GeneralName] = (),
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """A leaf certificate for `public_key` (made here by `_leaf`, or on a device: `sign_csr`)."""
    if days < 1:
        raise ProvisionError(f"days must be at least 1, got {days}")
    start = not_before or (_now() - dt.timedelta(minutes=5))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    ca: Path
    not_after: dt.datetime


def issue_device(
    ca_dir: str | os.PathLike[str],
    device_id: str,
    site: str,
    out_dir: str | os.PathLike[str] | None = None,
    days: int = DEVICE_DAYS,
    renew: bool = False,
    not_before: dt.datetime | None = None,
) -> Issued:
    """A client certificate for one device, plus the CA the device pins, in `out_dir`.

    Device ids are unique across all sites: the broker identifies a device by its CN alone, so
    a second device with the same id at another site would share its identity. Re-issuing for
    the same id and site needs `renew`; moving an id to another site is refused.
    """
    ca = load_ca(ca_dir)
    reg = _load_registry(ca.dir)
    _check_device_slot(reg, device_id, site, renew)
    cert, key = _leaf(ca, device_id, ExtendedKeyUsageOID.CLIENT_AUTH, days, not_before=not_before)
    out = Path(out_dir) if out_dir else ca.dir / "devices" / device_id
    issued = _write_bundle(ca, out, "device", cert, key)
    _register_device(ca, reg, device_id, site, cert)
    return issued


def _check_device_slot(reg: dict[str, Any], device_id: str, site: str, renew: bool) -> None:
    check_name("device id", device_id)
    check_name("site", site)
    if device_id in reg["hubs"]:
        raise ProvisionError(f"device id {device_id!r} is already a hub identity")
    old = reg["devices"].get(device_id)
    if old is not None:
        if old.get("site") != site:
            raise ProvisionError(
                f"device id {device_id!r} is already enrolled at site {old.get('site')!r}; "
                "device ids must be unique across sites"
            )
        if not renew:
            raise ProvisionError(
                f"device {device_id!r} is already enrolled (use --renew for a new certificate)"
            )


def _register_device(
    ca: CA, reg: dict[str, Any], device_id: str, site: str, cert: x509.Certificate
) -> None:
    reg["devices"][device_id] = {
        "site": site,
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
    _save_registry(ca.dir, reg)


def sign_csr(
    ca_dir: str | os.PathLike[str],
    csr: x509.CertificateSigningRequest,
    device_id: str,
    site: str,
    days: int = DEVICE_DAYS,
    renew: bool = False,
) -> x509.Certificate:
    """A device certificate for the key of `csr`, made on the device (first-boot enrolment, see
    `hub.enrol`): the same checks, certificate profile, lifetime (`DEVICE_DAYS`, renewed by the
    device before it expires) and registry entry as `issue_device`, but the private key never
    exists here. Only the CSR's EC P-256 key and its self-signature
    are used; every other field of the CSR is ignored (CN = `device_id`, the caller's)."""
    if not csr.is_signature_valid:
        raise ProvisionError("the CSR's signature does not verify")
    public_key = csr.public_key()
    if (
        not isinstance(public_key, ec.EllipticCurvePublicKey)
        or public_key.curve.name != "secp256r1"
    ):
        raise ProvisionError("the CSR's key must be EC P-256")
    ca = load_ca(ca_dir)
    reg = _load_registry(ca.dir)
    _check_device_slot(reg, device_id, site, renew)
    cert = _leaf_cert(ca, device_id, ExtendedKeyUsageOID.CLIENT_AUTH, days, public_key)
    _register_device(ca, reg, device_id, site, cert)
    return cert


def issue_hub(
    ca_dir: str | os.PathLike[str],
    name: str = "hub",
    out_dir: str | os.PathLike[str] | None = None,
    days: int = 2 * 365,
    role: str = "hub",
) -> Issued:
    """A hub identity (CN = `name`) with a role: ``hub`` reads and writes every device's topics,
    ``operator`` reads everything and writes commands and desired configs, ``consumer`` only
    reads alerts, statuses, telemetry and summaries."""
    check_name("hub name", name)
    if role not in ROLES:
        raise ProvisionError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    ca = load_ca(ca_dir)
    reg = _load_registry(ca.dir)
    if name in reg["devices"]:
        raise ProvisionError(f"hub name {name!r} is already a device id")
    cert, key = _leaf(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, days)
    out = Path(out_dir) if out_dir else ca.dir / "hubs" / name
    issued = _write_bundle(ca, out, "hub", cert, key)
    reg["hubs"][name] = {
        "role": role,
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
    _save_registry(ca.dir, reg)
    return issued


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", host):
        raise ProvisionError(f"broker host must be a DNS name or an IP address, got {host!r}")
    return x509.DNSName(host)


def issue_broker(
    ca_dir: str | os.PathLike[str],
    hosts: Sequence[str],
    out_dir: str | os.PathLike[str],
    days: int = 5 * 365,
) -> Issued:
    """The broker's server certificate; `hosts` (names and addresses devices dial) become SANs,
    which is what the devices' hostname check matches."""
    if not hosts:
        raise ProvisionError("at least one broker host name or address is needed")
    ca = load_ca(ca_dir)
    sans = [_san(h) for h in hosts]
    cert, key = _leaf(ca, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, days, sans=sans)
    return _write_bundle(ca, Path(out_dir), "server", cert, key)


def _write_bundle(
    ca: CA, out: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    out.mkdir(parents=True, exist_ok=True)
    paths = Issued(
        out / f"{stem}.pem", out / f"{stem}.key", out / "ca.pem", cert.not_valid_after_utc
    )
    write_key(paths.key, key)
    write_cert(paths.cert, cert)
    atomic_write(paths.ca, ca.cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return paths


def broker_cert_hosts(path: Path) -> list[str]:
    """The SANs of an existing server certificate (to decide whether it must be re-issued)."""
    cert = load_cert(path)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return names + list(ext.get_values_for_type(x509.DNSName))


# -- revocation and renewal ----------------------------------------------------------------------


def revoke(ca_dir: str | os.PathLike[str], name: str) -> list[str]:
    """Put every certificate the CA issued to `name` (device or hub identity) on the CRL and
    drop it from the ACL; returns the serials revoked. Re-run broker-conf and restart the
    broker for it to take effect."""
    ca = load_ca(ca_dir)
    reg = _load_registry(ca.dir)
    info = reg["devices"].get(name) or reg["hubs"].get(name)
    if info is None:
        raise ProvisionError(f"{name!r} is neither an enrolled device nor a hub identity")
    serials = [info["serial"], *info.get("previous_serials", [])]
    revoked = reg.setdefault("revoked", {})
    now = _now().isoformat()
    for serial in serials:
        revoked.setdefault(serial, {"name": name, "at": now})
    names = set(reg.setdefault("revoked_names", []))
    names.add(name)
    reg["revoked_names"] = sorted(names)
    _save_registry(ca.dir, reg)
    atomic_write(ca.dir / "crl.pem", write_crl(ca.dir), mode=0o644)
    return serials


def write_crl(ca_dir: str | os.PathLike[str], days: int = CRL_DAYS) -> bytes:
    """The CA's CRL (PEM), freshly signed, listing every revoked serial."""
    ca = load_ca(ca_dir)
    reg = _load_registry(ca.dir)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
    )
    for serial, info in sorted(reg.get("revoked", {}).items()):
        at = dt.datetime.fromisoformat(info.get("at", now.isoformat()))
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(at)
            .build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def renew_csr(
    ca_dir: str | os.PathLike[str],
    csr_pem: bytes,
    device_id: str,
    site: str,
    days: int = DEVICE_DAYS,
) -> bytes:
    """A renewed device certificate (PEM) for a CSR that arrived on `device_id`'s own topic at
    `site`: the CSR must be validly self-signed, name exactly that CN, carry a P-256 key, and the
    device must be enrolled there and not revoked. The registry records the new serial (the old
    one stays valid until it expires, so the device can switch over without a gap)."""
    check_name("device id", device_id)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise ProvisionError(f"CSR from {device_id}: not a PEM certificate request ({e})") from None
    if not csr.is_signature_valid:
        raise ProvisionError(f"CSR from {device_id}: its signature does not verify")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != device_id:
        raise ProvisionError(f"CSR from {device_id}: subject CN must be exactly {device_id!r}")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ProvisionError(f"CSR from {device_id}: expected an EC P-256 key")
    ca = load_ca(ca_dir)
    reg = _load_registry(ca.dir)
    info = reg["devices"].get(device_id)
    if info is None or info.get("site") != site:
        raise ProvisionError(f"CSR from {device_id}: not enrolled at site {site!r}")
    if device_id in reg.get("revoked_names", []):
        raise ProvisionError(f"CSR from {device_id}: the device is revoked")
    cert = _leaf_cert(ca, device_id, ExtendedKeyUsageOID.CLIENT_AUTH, days, key)
    previous = [info["serial"], *info.get("previous_serials", [])][:4]
    info.update(
        serial=format(cert.serial_number, "x"),
        not_after=cert.not_valid_after_utc.isoformat(),
        previous_serials=previous,
    )
    _save_registry(ca.dir, reg)
    return cert.public_bytes(serialization.Encoding.PEM)


def needs_renewal(cert_path: str | os.PathLike[str], before_days: int = 30) -> bool:
    """True when the certificate expires within `before_days` (time to send a CSR)."""
    cert = load_cert(Path(cert_path))
    return cert.not_valid_after_utc - _now() < dt.timedelta(days=before_days)


# -- broker configuration ------------------------------------------------------------------------

ACL_MODES = ("sites", "pattern")


def acl_text(reg: dict[str, Any], mode: str = "sites") -> str:
    """The mosquitto ACL.

    ``sites`` (default): one block per enrolled device, naming its own site, so a device cannot
    write under another site even with a path that repeats its id; regenerate and reload the
    broker (SIGHUP) after enrolling devices. ``pattern``: ``%u`` patterns that need no reload;
    the site level is a wildcard, so a device could write under another site's path with its own
    id (the CA keeps ids unique, so it can never write as another device; the hub should take a
    device's site from the registry). Both give hub identities everything under the topic root.
    """
    if mode not in ACL_MODES:
        raise ProvisionError(f"ACL mode must be one of {', '.join(ACL_MODES)}, got {mode!r}")
    lines = [
        "# Watchpost broker ACL, generated by 'watchpost provision broker-conf'; do not edit.",
        f"# mode: {mode}. Anonymous clients get nothing (no topics before the first user line).",
        "",
    ]
    if mode == "pattern":
        lines.append(
            "# Each device (username = certificate CN = device id) gets only its own topics."
        )
        for sub in DEVICE_WRITES:
            lines.append(f"pattern write {topics.ROOT}/+/%u/{sub}")
        for sub in DEVICE_READS:
            lines.append(f"pattern read {topics.ROOT}/+/%u/{sub}")
        lines.append("")
    revoked = set(reg.get("revoked_names", []))
    for name, info in sorted(reg.get("hubs", {}).items()):
        if name in revoked:
            continue  # its certificate is on the CRL too; no rights either way
        role = info.get("role", "hub") if isinstance(info, dict) else "hub"
        lines.append(f"user {check_name('hub name', name)}")
        if role == "operator":
            lines.append(f"topic read {topics.ROOT}/#")
            lines += [f"topic write {topics.ROOT}/+/+/{sub}" for sub in OPERATOR_WRITES]
        elif role == "consumer":
            lines += [f"topic read {topics.ROOT}/+/+/{sub}" for sub in CONSUMER_READS]
        else:
            lines.append(f"topic readwrite {topics.ROOT}/#")
        lines.append("")
    # First-boot enrolment (hub.enrol): each open token's user may only send its CSR and read
    # the answer, under watchpost/v1/enrol/<token id>/.
    for tid, info in sorted(reg.get("enrol", {}).items()):
        if info.get("state") in ("open", "signed"):
            user = f"enrol-{tid}"
            check_name("enrolment user", user)
            lines += [
                f"user {user}",
                f"topic write {topics.ROOT}/enrol/{tid}/request",
                f"topic read {topics.ROOT}/enrol/{tid}/result",
                "",
            ]
    if mode == "sites":
        for dev, info in sorted(reg.get("devices", {}).items()):
            if dev in revoked:
                continue
            root = (
                f"{topics.ROOT}/{check_name('site', info['site'])}/{check_name('device id', dev)}"
            )
            lines.append(f"user {dev}")
            lines += [f"topic write {root}/{sub}" for sub in DEVICE_WRITES]
            lines += [f"topic read {root}/{sub}" for sub in DEVICE_READS]
            lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class BrokerSettings:
    """Where the generated broker files live and how the listener is set up."""

    conf_dir: Path
    port: int = 8883
    bind: str = ""
    user: str = "mosquitto"
    acl_mode: str = "sites"
    persistence_dir: Path | None = None  # default: <conf_dir>/data
    log_dest: str = "stderr"
    max_packet_size: int = 0  # 0: mosquitto's default (no limit below the protocol's)
    max_queued_messages: int = 100_000  # per client, for hub consumers with persistent sessions
    # First-boot enrolment listener (TLS server certificate only, the token as MQTT password;
    # see hub.enrol): 0 = none.
    enrol_port: int = 0
    # QoS 1 messages in flight to one client (MQTT 3 clients; MQTT 5 ones say Receive Maximum):
    # mosquitto's default of 20 would hold a collector to 20 messages per database commit.
    max_inflight_messages: int = 1000
    # use_username_as_clientid: the client id is the certificate CN (module docstring). Off by
    # default in this API (the lab and tests share one identity across connections); the
    # `broker-conf` command turns it on.
    bind_client_id: bool = False
    crl: bool = True  # crlfile (the CA's revocations); written by write_broker_conf


def mosquitto_conf(s: BrokerSettings) -> str:
    """A mosquitto 2.x config: one TLS listener, client certificates required, the certificate's
    CN as username, no anonymous access, ACL file, persistence (retained statuses and desired
    configs survive a broker restart)."""
    if not 0 < s.port < 65536:
        raise ProvisionError(f"port must be between 1 and 65535, got {s.port}")
    data = s.persistence_dir or s.conf_dir / "data"
    listen = f"listener {s.port} {s.bind}".rstrip()
    lines = [
        "# Watchpost hub broker, generated by 'watchpost provision broker-conf'.",
        f"user {s.user}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {s.conf_dir / 'acl'}",
        "persistence true",
        f"persistence_location {data}/",
        "autosave_interval 60",
        # A device's alert is deleted from its outbox once the broker acknowledges it, so the
        # broker must hold alerts for a hub consumer (persistent session) that is offline or
        # slow: mosquitto's default of 1000 queued messages per client would drop the rest.
        f"max_queued_messages {s.max_queued_messages}",
        f"max_inflight_messages {s.max_inflight_messages}",
        # Small packets (PUBACKs) go out at once: with Nagle, each would wait for the peer's
        # delayed ACK (~40 ms), which caps a QoS 1 stream at inflight/40 ms.
        "set_tcp_nodelay true",
        f"log_dest {s.log_dest}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "",
        listen,
        "protocol mqtt",
        f"cafile {s.conf_dir / 'ca.pem'}",
        f"certfile {s.conf_dir / 'server.pem'}",
        f"keyfile {s.conf_dir / 'server.key'}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    if s.bind_client_id:
        lines.append("use_username_as_clientid true")
    if s.crl:
        lines.append(f"crlfile {s.conf_dir / 'crl.pem'}")
    if s.max_packet_size:
        lines.insert(lines.index(""), f"max_packet_size {s.max_packet_size}")
    if s.enrol_port:
        if not 0 < s.enrol_port < 65536 or s.enrol_port == s.port:
            raise ProvisionError(f"enrol port must be 1-65535 and not {s.port}, got {s.enrol_port}")
        # Global (per_listener_settings false): only enrolment users are in it; the certificate
        # listener takes the username from the certificate instead.
        lines.insert(lines.index(""), f"password_file {s.conf_dir / 'enrol.passwd'}")
        lines += [
            "",
            f"listener {s.enrol_port} {s.bind}".rstrip(),
            "protocol mqtt",
            f"cafile {s.conf_dir / 'ca.pem'}",
            f"certfile {s.conf_dir / 'server.pem'}",
            f"keyfile {s.conf_dir / 'server.key'}",
            "tls_version tlsv1.2",
            "require_certificate false",
        ]
    return "\n".join(lines) + "\n"


def enrol_passwd_text(reg: dict[str, Any]) -> str:
    """mosquitto's password file for the open enrolment tokens (hashes made by hub.enrol)."""
    return "".join(
        f"enrol-{tid}:{info['passwd']}\n"
        for tid, info in sorted(reg.get("enrol", {}).items())
        if info.get("state") in ("open", "signed")
    )


def write_broker_conf(
    ca_dir: str | os.PathLike[str],
    settings: BrokerSettings,
    hosts: Sequence[str],
    renew_cert: bool = False,
    owner: str | None = None,
) -> Path:
    """Write mosquitto.conf, acl, ca.pem and (when missing, renewed or for other hosts) the
    server certificate into `settings.conf_dir`. Idempotent: re-run after enrolling devices to
    refresh the ACL, then send the broker SIGHUP. `owner` (usually the broker's `user`) gets the
    server key so the broker can read it after dropping root."""
    ca = load_ca(ca_dir)
    reg = _load_registry(ca.dir)
    acl = acl_text(reg, settings.acl_mode)
    conf = mosquitto_conf(settings)
    d = settings.conf_dir
    d.mkdir(parents=True, exist_ok=True)
    server = d / "server.pem"
    if renew_cert or not server.exists() or set(broker_cert_hosts(server)) != set(hosts):
        issue_broker(ca.dir, hosts, d)
    else:
        atomic_write(d / "ca.pem", ca.cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    data = settings.persistence_dir or d / "data"
    data.mkdir(parents=True, exist_ok=True)
    atomic_write(d / "acl", acl.encode(), mode=0o644)
    if settings.enrol_port:
        atomic_write(d / "enrol.passwd", enrol_passwd_text(reg).encode(), mode=0o640)
    if settings.crl:
        atomic_write(d / "crl.pem", write_crl(ca.dir), mode=0o644)
    atomic_write(d / "mosquitto.conf", conf.encode(), mode=0o644)
    if owner:
        try:
            shutil.chown(d / "server.key", user=owner)
            if settings.enrol_port:
                shutil.chown(d / "enrol.passwd", user=owner)
            shutil.chown(data, user=owner)
        except (LookupError, PermissionError) as e:
            raise ProvisionError(f"cannot give the broker files to user {owner!r}: {e}") from None
    return d / "mosquitto.conf"


def device_toml(
    device_id: str, site: str, host: str, port: int, etc: str = "/etc/watchpost"
) -> str:
    """The [device] and [hub] sections an enrolled device needs (paths as installed on it)."""
    return (
        f'[device]\nid = "{device_id}"\nsite = "{site}"\n\n'
        f'[hub]\nhost = "{host}"\nport = {port}\n'
        f'ca = "{etc}/hub-ca.pem"\ncert = "{etc}/device.pem"\nkey = "{etc}/device.key"\n'
    )


# -- CLI -----------------------------------------------------------------------------------------


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


_ca_dir_option = click.option(
    "--dir",
    "ca_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The CA directory (ca.pem, ca.key, registry.json).",
)


@click.group("provision")
def provision() -> None:
    """Hub side: the device CA, device and hub certificates, the broker config and ACL."""


@provision.command("ca")
@_ca_dir_option
@click.option("--name", default="Watchpost device CA", show_default=True)
@click.option("--days", default=20 * 365, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace an existing CA (re-enrol every device!).")
def ca_cmd(ca_dir: Path, name: str, days: int, force: bool) -> None:
    """Create the device CA."""
    try:
        ca = create_ca(ca_dir, name=name, days=days, force=force)
    except ProvisionError as e:
        _fail(str(e))
        return
    click.echo(f"CA {ca.cert_path} (key {ca.dir / 'ca.key'}, 0600)")


@provision.command("device")
@click.argument("device_id")
@_ca_dir_option
@click.option("--site", required=True, help="The office site the device belongs to.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write device.pem/device.key/ca.pem (default: <dir>/devices/<id>).",
)
@click.option("--days", default=DEVICE_DAYS, show_default=True, type=int)
@click.option("--renew", is_flag=True, help="Issue a new certificate for an enrolled device.")
@click.option("--hub-host", default="", help="Also write hub.toml for the device.")
@click.option("--hub-port", default=8883, show_default=True, type=int)
def device_cmd(
    device_id: str,
    ca_dir: Path,
    site: str,
    out: Path | None,
    days: int,
    renew: bool,
    hub_host: str,
    hub_port: int,
) -> None:
    """Enrol a device: a client certificate with CN = DEVICE_ID."""
    try:
        issued = issue_device(ca_dir, device_id, site, out, days=days, renew=renew)
    except ProvisionError as e:
        _fail(str(e))
        return
    if hub_host:
        atomic_write(
            issued.cert.parent / "hub.toml",
            device_toml(device_id, site, hub_host, hub_port).encode(),
        )
    click.echo(
        f"device {device_id} at {site}: {issued.cert} (key {issued.key}, 0600), "
        f"CA {issued.ca}, valid until {issued.not_after:%Y-%m-%d}. "
        "Re-run 'provision broker-conf' and reload the broker to update its ACL."
    )


@provision.command("hub")
@click.argument("name", default="hub")
@_ca_dir_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--days", default=2 * 365, show_default=True, type=int)
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="hub",
    show_default=True,
    help="operator: commands and desired configs; consumer: read-only reports.",
)
def hub_cmd(name: str, ca_dir: Path, out: Path | None, days: int, role: str) -> None:
    """A hub identity certificate (CN = NAME) with a role at the broker."""
    try:
        issued = issue_hub(ca_dir, name, out, days=days, role=role)
    except ProvisionError as e:
        _fail(str(e))
        return
    click.echo(
        f"hub identity {name} ({role}): {issued.cert} (key {issued.key}, 0600), CA {issued.ca}"
    )


@provision.command("revoke")
@click.argument("name")
@_ca_dir_option
def revoke_cmd(name: str, ca_dir: Path) -> None:
    """Revoke NAME (a device or hub identity): CRL + ACL. Then re-run broker-conf and restart
    the broker."""
    try:
        serials = revoke(ca_dir, name)
    except ProvisionError as e:
        _fail(str(e))
        return
    click.echo(
        f"revoked {name} (serials {', '.join(serials)}); CRL {Path(ca_dir) / 'crl.pem'}. "
        "Re-run 'provision broker-conf' and restart the broker."
    )


@provision.command("sign-csr")
@click.argument("csr", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_ca_dir_option
@click.option("--device", "device_id", required=True)
@click.option("--site", required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--days", default=DEVICE_DAYS, show_default=True, type=int)
def sign_csr_cmd(csr: Path, ca_dir: Path, device_id: str, site: str, out: Path, days: int) -> None:
    """Renew DEVICE's certificate from its CSR (what the renewal topic does, from files)."""
    try:
        pem = renew_csr(ca_dir, csr.read_bytes(), device_id, site, days=days)
    except ProvisionError as e:
        _fail(str(e))
        return
    atomic_write(out, pem, mode=0o644)
    click.echo(f"{out}: renewed certificate for {device_id}, valid {days} days")


@provision.command("broker-conf")
@_ca_dir_option
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Broker config directory (e.g. /etc/mosquitto/watchpost).",
)
@click.option("--host", "hosts", multiple=True, required=True, help="Name/address devices dial.")
@click.option("--port", default=8883, show_default=True, type=int)
@click.option("--bind", default="", help="Listen address (default: all).")
@click.option("--user", default="mosquitto", show_default=True, help="User the broker runs as.")
@click.option("--acl", "acl_mode", type=click.Choice(ACL_MODES), default="sites", show_default=True)
@click.option(
    "--enrol-port",
    default=0,
    type=int,
    help="Also a first-boot enrolment listener on this port (e.g. 8884; see 'enrol').",
)
@click.option("--renew-cert", is_flag=True, help="Issue a new server certificate.")
@click.option("--chown", is_flag=True, help="Give the server key and data dir to --user.")
@click.option(
    "--bind-client-id/--no-bind-client-id",
    default=True,
    show_default=True,
    help="Client id = certificate CN (use_username_as_clientid).",
)
def broker_conf_cmd(
    ca_dir: Path,
    out: Path,
    hosts: tuple[str, ...],
    port: int,
    bind: str,
    user: str,
    acl_mode: str,
    enrol_port: int,
    renew_cert: bool,
    chown: bool,
    bind_client_id: bool,
) -> None:
    """Write the mosquitto config, ACL, CRL and server certificate (re-run after enrolling or
    revoking)."""
    settings = BrokerSettings(
        conf_dir=out.absolute(),
        port=port,
        bind=bind,
        user=user,
        acl_mode=acl_mode,
        enrol_port=enrol_port,
        bind_client_id=bind_client_id,
    )
    try:
        conf = write_broker_conf(
            ca_dir, settings, list(hosts), renew_cert=renew_cert, owner=user if chown else None
        )
    except ProvisionError as e:
        _fail(str(e))
        return
    click.echo(f"{conf} (start: mosquitto -c {conf}; reload the ACL: kill -HUP <pid>)")
