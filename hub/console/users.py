"""Console accounts: a JSON file of name -> {role, hash}; passwords hashed with scrypt.

Roles: ``analyst`` reads everything; ``operator`` also approves and rejects indicators.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from protocol.files import atomic_write

ROLES = ("analyst", "operator")
_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,31}$")
MIN_PASSWORD = 10
# A hash to compare against when the name is unknown (same cost, so timing says nothing).
_DUMMY = generate_password_hash("not-a-password", method="scrypt")


class UserError(Exception):
    pass


def load(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"accounts file {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"accounts file {path}: expected a JSON object")
    return data


def add(path: Path, name: str, password: str, role: str) -> None:
    if not _NAME.match(name):
        raise UserError(f"user name {name!r}: lower-case letters, digits, '.', '_', '-'")
    if role not in ROLES:
        raise UserError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    users = load(path)
    users[name] = {"role": role, "hash": generate_password_hash(password, method="scrypt")}
    atomic_write(path, json.dumps(users, indent=1, sort_keys=True).encode(), mode=0o600)


def check(users: dict[str, dict[str, str]], name: str, password: str) -> str | None:
    """The user's role when the password is right, else None."""
    u = users.get(name)
    if not isinstance(u, dict) or u.get("role") not in ROLES:
        check_password_hash(_DUMMY, password)
        return None
    return u["role"] if check_password_hash(u.get("hash", ""), password) else None
