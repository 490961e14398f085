"""First-boot enrolment on the wire, the same on device and hub.

A device that has no certificate yet proves it may enrol with the one-time token of its
enrolment bundle. It connects to the broker's enrolment listener (TLS, server certificate only)
with MQTT username ``enrol-<token id>`` and the token as password, where the token id is the
first 16 hex digits of SHA-256(token). The broker's ACL lets that username do two things only:

    write  watchpost/v1/enrol/<token id>/request    the device's CSR (its key never leaves it)
    read   watchpost/v1/enrol/<token id>/result     the hub's answer: the signed certificate

so a token can neither read another enrolment nor touch any device topic. The site name
``enrol`` is reserved so these topics never collide with ``watchpost/v1/<site>/<device>/...``.

Messages are JSON objects with ``"v": 1``. `parse_request` and `parse_result` refuse anything
else with a `EnrolProtocolError` that names the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from protocol import topics

VERSION = 1
ROOT = f"{topics.ROOT}/enrol"
RESERVED_SITE = "enrol"
USER_PREFIX = "enrol-"
MAX_MESSAGE = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_TOKEN_ID = re.compile(r"^[0-9a-f]{16}$")


class EnrolProtocolError(ValueError):
    """A malformed enrolment message; the text names the field."""


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def username(tid: str) -> str:
    return f"{USER_PREFIX}{tid}"


def request_topic(tid: str) -> str:
    return f"{ROOT}/{tid}/request"


def result_topic(tid: str) -> str:
    return f"{ROOT}/{tid}/result"


def split_topic(name: str) -> tuple[str, str]:
    """(token id, "request" | "result") of an enrolment topic; EnrolProtocolError otherwise."""
    prefix = ROOT + "/"
    if not name.startswith(prefix):
        raise EnrolProtocolError(f"not an enrolment topic: {name!r}")
    tid, _, kind = name[len(prefix) :].partition("/")
    if not _TOKEN_ID.match(tid) or kind not in ("request", "result"):
        raise EnrolProtocolError(f"not an enrolment topic: {name!r}")
    return tid, kind


def valid_name(value: object) -> bool:
    return isinstance(value, str) and bool(_NAME.match(value))


def valid_token(value: object) -> bool:
    return isinstance(value, str) and bool(_TOKEN.match(value))


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, **message}, sort_keys=True).encode()


def _decode(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_MESSAGE:
        raise EnrolProtocolError(f"{what}: larger than {MAX_MESSAGE} bytes")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise EnrolProtocolError(f"{what}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise EnrolProtocolError(f"{what}: expected a JSON object")
    if data.get("v") != VERSION:
        raise EnrolProtocolError(f"{what}.v: expected {VERSION}, got {data.get('v')!r}")
    return data


def _string(data: dict[str, Any], what: str, key: str, pattern: re.Pattern[str] | None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
        raise EnrolProtocolError(f"{what}.{key}: missing or malformed ({value!r:.60})")
    return value


def request(
    device: str, site: str, token: str, csr_pem: str, setup_code: str, firmware: str
) -> bytes:
    return encode(
        {
            "device": device,
            "site": site,
            "token": token,
            "csr": csr_pem,
            "setup_code": setup_code,
            "firmware": firmware,
        }
    )


def parse_request(payload: bytes) -> dict[str, str]:
    data = _decode(payload, "request")
    out = {
        "device": _string(data, "request", "device", _NAME),
        "site": _string(data, "request", "site", _NAME),
        "token": _string(data, "request", "token", _TOKEN),
        "csr": _string(data, "request", "csr", None),
        "setup_code": _string(data, "request", "setup_code", None),
        "firmware": str(data.get("firmware") or ""),
    }
    if "PRIVATE KEY" in payload.decode(errors="replace"):
        raise EnrolProtocolError("request: contains a private key (it must never leave the device)")
    return out


def result_ok(device: str, site: str, cert_pem: str, ca_pem: str) -> bytes:
    return encode({"ok": True, "device": device, "site": site, "cert": cert_pem, "ca": ca_pem})


def result_error(code: str, error: str) -> bytes:
    return encode({"ok": False, "code": code, "error": error})


def parse_result(payload: bytes) -> dict[str, Any]:
    data = _decode(payload, "result")
    if data.get("ok") is True:
        return {
            "ok": True,
            "device": _string(data, "result", "device", _NAME),
            "site": _string(data, "result", "site", _NAME),
            "cert": _string(data, "result", "cert", None),
            "ca": _string(data, "result", "ca", None),
        }
    if data.get("ok") is False:
        return {
            "ok": False,
            "code": str(data.get("code") or "error"),
            "error": _string(data, "result", "error", None),
        }
    raise EnrolProtocolError(f"result.ok: expected true or false, got {data.get('ok')!r}")
