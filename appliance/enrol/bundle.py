"""The enrolment bundle the installer puts on the SD card: finding, checking, scrubbing it.

``watchpost-enrol.toml`` (made by ``watchpost-hub enrol token``) is looked for on the boot
partition, which Raspberry Pi OS Bookworm mounts at ``/boot/firmware`` (older images: ``/boot``).
On Trixie images set up with cloud-init, the installer may instead put the same TOML into the boot
partition's ``user-data`` with ``write_files`` to ``/run/watchpost/watchpost-enrol.toml``
(docs/firmware.md); cloud-init writes it there before the enrolment unit runs. After a
successful enrolment the token is blanked (``token = ""``) in every file that holds it: the
bundle, the cloud-init copy and ``user-data`` on the FAT partition.

Every problem of a bundle is reported, each naming its field:
``watchpost-enrol.toml: hub_port: expected an integer 1-65535, got 'x'``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from protocol import enrol as wire
from protocol.envelope import KeyFileError, public_keys_from_pem
from protocol.files import atomic_write

NAME = "watchpost-enrol.toml"
BOOT_DIRS = ("/boot/firmware", "/boot")
CLOUD_INIT_COPY = "/run/watchpost/watchpost-enrol.toml"
USER_DATA = "user-data"
FIELDS = (
    "device_id",
    "site",
    "hub_host",
    "hub_port",
    "enrol_port",
    "hub_ca",
    "command_pubkey",
    "token",
    "expires",
)
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*$")


class BundleError(Exception):
    """A missing, unreadable or bad bundle; `problems` names every bad field."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Bundle:
    path: Path
    device_id: str
    site: str
    hub_host: str
    hub_port: int
    enrol_port: int
    hub_ca: str
    command_pubkey: str
    token: str


def candidates(
    boot_dirs: Iterable[str | Path] = BOOT_DIRS, extra: Iterable[str | Path] = ()
) -> list[Path]:
    """Where a bundle may be, in order: explicit paths, the boot partition, cloud-init's copy."""
    out = [Path(p) for p in extra]
    out += [Path(d) / NAME for d in boot_dirs]
    out.append(Path(CLOUD_INIT_COPY))
    return out


def find(paths: Sequence[Path]) -> Path:
    for p in paths:
        if p.is_file():
            return p
    raise BundleError(
        [f"no enrolment bundle ({NAME}) found: looked at {', '.join(str(p) for p in paths)}"]
    )


def _port(data: dict[str, Any], key: str, default: int, problems: list[str], label: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        problems.append(f"{label}: {key}: expected an integer 1-65535, got {value!r}")
        return default
    return value


def load(path: Path) -> Bundle:
    """Read and check a bundle; BundleError listing every problem, each naming its field."""
    label = path.name
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise BundleError([f"{path}: cannot read ({e.strerror or e})"]) from None
    except UnicodeDecodeError:
        raise BundleError([f"{path}: not UTF-8 text (a damaged or wrong file?)"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BundleError([f"{path}: not valid TOML ({e}): was it cut short?"]) from None
    problems: list[str] = []
    for key in sorted(set(data) - set(FIELDS)):
        problems.append(f"{label}: {key}: unknown field (known: {', '.join(FIELDS)})")
    for key in ("device_id", "site", "hub_host", "hub_ca", "command_pubkey", "token"):
        if key not in data:
            problems.append(f"{label}: {key}: missing")
        elif not isinstance(data[key], str):
            problems.append(f"{label}: {key}: expected a string, got {data[key]!r:.40}")

    def text_of(key: str) -> str:
        v = data.get(key)
        return v if isinstance(v, str) else ""

    device_id, site, host = text_of("device_id"), text_of("site"), text_of("hub_host")
    if (
        "device_id" in data
        and isinstance(data["device_id"], str)
        and not wire.valid_name(device_id)
    ):
        problems.append(
            f"{label}: device_id: must be 1-64 letters, digits, '-', '_' or '.', got {device_id!r}"
        )
    if "site" in data and isinstance(data["site"], str):
        if not wire.valid_name(site):
            problems.append(
                f"{label}: site: must be 1-64 letters, digits, '-', '_' or '.', got {site!r}"
            )
        elif site == wire.RESERVED_SITE:
            problems.append(f"{label}: site: {site!r} is reserved")
    if "hub_host" in data and isinstance(data["hub_host"], str) and not _valid_host(host):
        problems.append(f"{label}: hub_host: not a host name or IP address: {host!r}")
    hub_port = _port(data, "hub_port", 8883, problems, label)
    enrol_port = _port(data, "enrol_port", 8884, problems, label)
    ca = text_of("hub_ca")
    if ca:
        problem = _ca_problem(ca)
        if problem:
            problems.append(f"{label}: hub_ca: {problem}")
    pub = text_of("command_pubkey")
    if pub:
        try:
            public_keys_from_pem(pub.encode(), source="command_pubkey")
        except KeyFileError as e:
            problems.append(f"{label}: command_pubkey: {str(e).removeprefix('command_pubkey: ')}")
    token = text_of("token")
    if "token" in data and isinstance(data["token"], str):
        if token == "":
            problems.append(
                f"{label}: token: empty: this bundle was already used to enrol (ask the hub "
                "operator for a new one)"
            )
        elif not wire.valid_token(token):
            problems.append(f"{label}: token: malformed (32-128 letters, digits, '-' or '_')")
    if problems:
        raise BundleError(problems)
    return Bundle(path, device_id, site, host, hub_port, enrol_port, ca, pub, token)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.match(host))


def _ca_problem(pem: str) -> str:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as e:
        return f"not a PEM certificate ({e})"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "not a CA certificate (no basic constraints)"
    if not bc.ca:
        return "not a CA certificate"
    return ""


def scrub_token(paths: Iterable[Path], token: str) -> list[Path]:
    """Blank `token` in every file of `paths` that holds it (atomically, mode kept); returns
    the files changed. The token is a URL-safe string, so a plain replacement is exact."""
    changed = []
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if token.encode() not in data:
            continue
        new = data.replace(token.encode(), b"")
        mode = os.stat(p).st_mode & 0o777
        try:
            atomic_write(p, new, mode=mode)
        except PermissionError:
            # FAT refuses chmod: rewrite in place (the token goes either way).
            with open(p, "r+b") as f:
                f.write(new)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
        changed.append(p)
    return changed
