"""HTTP/1.0 and 1.1 request heads: method, target, version, Host, User-Agent, Content-Type.

Reads the request line and the headers present in the first segment. Header values other than
Host, User-Agent and Content-Type are never decoded or kept: an Authorization (or
Proxy-Authorization) header only sets `basic_auth` when its scheme is Basic, and cookies and
bodies are not looked at beyond their header names.
"""

from __future__ import annotations

from appliance.detect.records import HttpRequest

METHODS = frozenset(
    {
        b"GET",
        b"POST",
        b"HEAD",
        b"PUT",
        b"DELETE",
        b"OPTIONS",
        b"PATCH",
        b"CONNECT",
        b"TRACE",
        # WebDAV (RFC 4918, 3253, 5323): seen against office NAS boxes and SharePoint
        b"PROPFIND",
        b"PROPPATCH",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"LOCK",
        b"UNLOCK",
        b"SEARCH",
        b"REPORT",
    }
)
VERSIONS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}

MAX_HEAD = 16384  # bytes of a segment searched for the request head
MAX_HEADERS = 100
MAX_VALUE = 1024  # characters kept of Host/User-Agent/Content-Type


def _text(value: bytes) -> str:
    return value.strip()[:MAX_VALUE].decode("utf-8", "backslashreplace")


def parse_request(data: bytes) -> HttpRequest | None:
    """The request head at the start of a TCP payload, or None if it does not start with a
    known method and an HTTP/1.x request line."""
    sp = data.find(b" ", 0, 10)
    if sp < 3 or data[:sp] not in METHODS:
        return None
    head = data[:MAX_HEAD]
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[:end]
    lines = head.split(b"\n", MAX_HEADERS + 1)
    line = lines[0].rstrip(b"\r")
    method, _, rest = line.partition(b" ")
    # The target is everything between the method and the last space: a target with raw
    # spaces is malformed, but attacks send them, and the detectors should see them.
    target, _, version = rest.rpartition(b" ")
    ver = VERSIONS.get(version)
    if ver is None or not target:
        return None
    if end < 0 and len(lines) > 1 and not head.endswith(b"\n"):
        lines.pop()  # the head goes on in the next segment: its last line is cut short
    req = HttpRequest(
        method=method.decode("ascii"),
        path=target.decode("utf-8", "backslashreplace"),
        version=ver,
    )
    names = req.header_names
    for raw in lines[1 : MAX_HEADERS + 1]:
        if raw == b"\r" or not raw:
            break  # the empty line ending the head (LF-only clients): the body follows
        name, colon, value = raw.partition(b":")
        if not colon or not name or name[0] in b" \t":
            continue  # a folded continuation or junk
        key = name.strip().lower()
        if b" " in key or b"\t" in key:
            continue
        names.append(key.decode("ascii", "backslashreplace"))
        if key == b"host":
            req.host = _text(value)
        elif key == b"user-agent":
            req.user_agent = _text(value)
        elif key == b"content-type":
            req.content_type = _text(value)
        elif key in (b"authorization", b"proxy-authorization"):
            scheme = value.split(None, 1)
            if scheme and scheme[0].lower() == b"basic":
                req.basic_auth = True
    return req
