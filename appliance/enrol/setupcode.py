"""The one-time status-page setup code made at first boot (no default password anywhere).

The code is shown on the HDMI console and in the log, and goes to the hub with the enrolment
request so the installer's sheet shows it; only its scrypt hash is kept, in
``<state_dir>/setup-code.json`` (0600). `check` compares a typed code; `consume` ends it once the
status page has a password.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from protocol.files import atomic_write

FILE = "setup-code.json"
# No 0/O, 1/I/L: read off a screen and typed by hand.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def _normal(code: str) -> str:
    return code.strip().upper().replace("-", "").replace(" ", "")


def make(state_dir: str | Path) -> str:
    """A new code (XXXX-XXXX, about 40 bits); replaces any earlier one."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(8))
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(raw.encode(), salt=salt, **_SCRYPT)
    body = {"salt": salt.hex(), "scrypt": digest.hex(), "created": round(time.time())}
    atomic_write(Path(state_dir) / FILE, (json.dumps(body) + "\n").encode(), mode=0o600)
    return f"{raw[:4]}-{raw[4:]}"


def check(state_dir: str | Path, code: str) -> bool:
    try:
        body = json.loads((Path(state_dir) / FILE).read_text())
        salt, want = bytes.fromhex(body["salt"]), bytes.fromhex(body["scrypt"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    raw = _normal(code)
    if len(raw) != 8:
        return False
    return hmac.compare_digest(hashlib.scrypt(raw.encode(), salt=salt, **_SCRYPT), want)


def consume(state_dir: str | Path) -> None:
    (Path(state_dir) / FILE).unlink(missing_ok=True)
