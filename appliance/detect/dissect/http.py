"""HTTP/1.0 and 1.1 request heads: method, target, version, Host, User-Agent, Content-Type.

Reads the request line and the headers present in the first segment. Requests pipelined after
it in the same segment (a client sending several without waiting for the answers) are parsed
too when they are complete: `parse_requests` gives the first request with the later ones in its
`pipelined`, each with its `offset` in the segment. The walk from one request to the next skips
a body of known ``Content-Length`` and stops at a chunked body, at anything that is not a
complete request head, at MAX_HEAD bytes of the segment and after MAX_PIPELINED requests.

Header values other than
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
MAX_PIPELINED = 32  # requests parsed after the first one of a segment


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


def parse_requests(data: bytes) -> HttpRequest | None:
    """`parse_request` of the segment's first request, with every complete request pipelined
    after it (within the first MAX_HEAD bytes) in its `pipelined`."""
    first = parse_request(data)
    if first is None:
        return None
    limit = min(len(data), MAX_HEAD)
    pos = _next_request(data, 0, limit)
    if pos < 0:
        return first  # the common case: the segment ends with the head (or its body)
    more: list[HttpRequest] = []
    while pos >= 0 and len(more) < MAX_PIPELINED:
        end = _head_end(data, pos, limit)
        if end < 0:
            break  # cut short: the rest of this head is in the next segment
        req = parse_request(data[pos:end])
        if req is None:
            break  # not a request: a body we could not skip, or junk
        req.offset = pos
        more.append(req)
        pos = _next_request(data, pos, limit)
    first.pipelined = tuple(more)
    return first


def _head_end(data: bytes, start: int, limit: int) -> int:
    """Where the head starting at `start` ends (past its empty line), or -1 if not within
    `limit`. CRLF heads, and LF-only ones as `parse_request` reads them."""
    crlf = data.find(b"\r\n\r\n", start, limit)
    lf = data.find(b"\n\n", start, limit)
    if lf >= 0 and (crlf < 0 or lf < crlf + 2):
        return lf + 2
    return crlf + 4 if crlf >= 0 else -1


def _next_request(data: bytes, start: int, limit: int) -> int:
    """Where the request after the one at `start` begins (past its head and a Content-Length
    body), or -1 when nothing follows it within `limit` or where it ends is not known."""
    end = _head_end(data, start, limit)
    if end < 0 or end >= limit:
        return -1
    head = data[start:end].lower()
    if b"transfer-encoding:" in head:
        return -1  # a chunked body: where it ends is not worth finding here
    at = head.find(b"\ncontent-length:")
    if at < 0:
        return end
    value = head[at + 16 : head.find(b"\n", at + 1)].strip()
    if not value.isdigit():
        return -1
    nxt = end + int(value)
    return nxt if nxt < limit else -1
