"""First-run setup without a shell: a one-time setup code, then a password set on the page.

At first start (no password anywhere) the device makes a setup code, keeps only its scrypt hash
in the state directory (``status-setup.code``, 0600) and logs the code once; the image builder
prints it on the installer's sheet at enrolment (`ensure_setup_code` returns it to whoever made
it, once). Until a password exists the page asks for that code and a new password; the password's
hash then goes into ``status-password.hash`` in the state directory (the daemon may not write
``/etc/watchpost``) and the code file is removed: the code is spent.

``status.password_hash`` in the config (`watchpost passwd`) wins over the page-set one, so the
installer can always reset the password from a shell.

Enrolment makes its own code at first boot (`appliance.enrol.setupcode`, shown on the HDMI
console and printed on the installer's sheet); while that one waits, no second code is made and
the page takes it just the same; setting the password spends both.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from appliance.enrol import setupcode as enrol_code
from protocol.files import atomic_write

log = logging.getLogger(__name__)

CODE_FILE = "status-setup.code"
PASSWORD_FILE = "status-password.hash"
# No 0/O, 1/I/L: the code is read off a sheet of paper.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_GROUPS, GROUP_LEN = 3, 4  # "ABCD-EFGH-JKMN": 12 characters, ~59 bits
# scrypt for the code's hash: fixed, bounded parameters (16 MiB, a few tens of ms).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_CODE_INPUT = 64


def normalize(code: str) -> str:
    """What the owner typed, as the code is compared: upper case, no spaces or dashes."""
    return "".join(c for c in code.upper() if c.isalnum())[:MAX_CODE_INPUT]


def _hash(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        normalize(code).encode(),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=64 * 1024 * 1024,
        dklen=32,
    )


def new_code() -> str:
    groups = (
        "".join(secrets.choice(ALPHABET) for _ in range(GROUP_LEN)) for _ in range(CODE_GROUPS)
    )
    return "-".join(groups)


def ensure_setup_code(state_dir: str | os.PathLike[str]) -> str | None:
    """Make the one-time setup code if there is neither a page password nor a code yet.

    Returns the new code (only its hash is stored), or None when a code is already waiting or a
    password is set. Raises OSError when the state directory cannot hold the file."""
    d = Path(state_dir)
    if (d / PASSWORD_FILE).exists() or code_waiting(d):
        return None
    code = new_code()
    salt = secrets.token_bytes(16)
    d.mkdir(parents=True, exist_ok=True)
    text = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${_hash(code, salt).hex()}\n"
    atomic_write(d / CODE_FILE, text.encode(), mode=0o600)
    return code


def code_waiting(state_dir: str | os.PathLike[str]) -> bool:
    d = Path(state_dir)
    return (d / CODE_FILE).exists() or (d / enrol_code.FILE).exists()


def check_code(state_dir: str | os.PathLike[str], code: str) -> bool:
    """True when `code` is a waiting setup code, ours or enrolment's (constant-time compare;
    never raises)."""
    if (Path(state_dir) / enrol_code.FILE).exists() and enrol_code.check(
        Path(state_dir), code[:MAX_CODE_INPUT]
    ):
        return True
    try:
        text = (Path(state_dir) / CODE_FILE).read_text().strip()
        method, n, r, p, salt_hex, want_hex = text.split("$")
        if (method, int(n), int(r), int(p)) != ("scrypt", SCRYPT_N, SCRYPT_R, SCRYPT_P):
            log.warning("setup code file has unexpected parameters: refused")
            return False
        salt, want = bytes.fromhex(salt_hex), bytes.fromhex(want_hex)
    except (OSError, ValueError):
        return False
    if not normalize(code):
        return False
    return hmac.compare_digest(_hash(code, salt), want)


def page_password_hash(state_dir: str | os.PathLike[str]) -> str:
    """The password hash set on the page ("" when none)."""
    try:
        return (Path(state_dir) / PASSWORD_FILE).read_text().strip()
    except OSError:
        return ""


def save_password_hash(state_dir: str | os.PathLike[str], value: str) -> None:
    """Keep the page-set password's hash, then spend the setup code (in that order: a power cut
    between the two leaves a password and a code that is no longer asked for)."""
    d = Path(state_dir)
    atomic_write(d / PASSWORD_FILE, (value + "\n").encode(), mode=0o600)
    spend(d)


def spend(state_dir: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(state_dir) / CODE_FILE).unlink()
    enrol_code.consume(Path(state_dir))
