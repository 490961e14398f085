"""HTTP/1 request dissection: curl's requests checked against tshark, credentials and cookies
never kept, and the request heads attacks and odd clients send."""

from __future__ import annotations

import base64
import shutil

import pytest

from appliance.detect.dissect import Dissectors
from appliance.detect.dissect.http import (
    MAX_HEAD,
    MAX_HEADERS,
    MAX_PIPELINED,
    parse_request,
    parse_requests,
)
from tests.unit.detect.dissect.build import client_payloads
from tests.unit.detect.dissect.capture import (
    HANDSHAKES,
    SECRET_COOKIE,
    SECRET_PASSWORD,
    SECRET_USER,
    tshark_fields,
)

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def _curl_requests() -> dict[int, bytes]:
    return client_payloads(HANDSHAKES, 80)


@needs_tshark
def test_curl_requests_agree_with_tshark() -> None:
    payloads = _curl_requests()
    fields = tshark_fields(
        HANDSHAKES,
        [
            "http.request.method",
            "http.request.uri",
            "http.request.version",
            "http.host",
            "http.user_agent",
            "http.content_type",
            "http.authorization",
        ],
        "http.request",
    )
    assert len(fields) == 2
    for frame, want in fields.items():
        req = parse_request(payloads[frame])
        assert req is not None
        assert req.method == want["http.request.method"][0]
        assert req.path == want["http.request.uri"][0]
        assert req.version == want["http.request.version"][0]
        assert req.host == want["http.host"][0]
        assert req.user_agent == want["http.user_agent"][0]
        assert req.content_type == (want["http.content_type"] or [""])[0]
        assert req.basic_auth == bool(want["http.authorization"])


def test_curl_requests() -> None:
    reqs = [parse_request(p) for p in _curl_requests().values()]
    get, post = reqs
    assert get is not None and post is not None
    assert (get.method, get.path, get.host) == ("GET", "/path/to?q=1&token=abc", "www.example.com")
    assert get.user_agent == "WatchpostTest/1.0 (dissect)" and get.basic_auth
    assert "authorization" in get.header_names
    assert (post.method, post.content_type, post.basic_auth) == ("POST", "application/json", False)
    assert "cookie" in post.header_names
    assert get.eve()["http"]["url"] == "/path/to?q=&token="


def test_no_credential_cookie_or_body_is_kept() -> None:
    token = base64.b64encode(f"{SECRET_USER}:{SECRET_PASSWORD}".encode()).decode()
    for payload in _curl_requests().values():
        req = parse_request(payload)
        assert req is not None
        for secret in (SECRET_PASSWORD, token, SECRET_COOKIE, "topsecret", '"a": 1'):
            assert secret not in repr(req)
            assert secret not in repr(req.eve())


@pytest.mark.parametrize(
    ("header", "basic"),
    [
        (b"Authorization: Basic YTpi", True),
        (b"authorization:basic YTpi", True),
        (b"AUTHORIZATION: BASIC YTpi", True),
        (b"Proxy-Authorization: Basic YTpi", True),
        (b"Authorization: Bearer eyJhbGciOi", False),
        (b"Authorization: Basically-not", False),
        (b"X-Authorization: Basic YTpi", False),
    ],
)
def test_basic_auth_detection(header: bytes, basic: bool) -> None:
    req = parse_request(b"GET / HTTP/1.1\r\nHost: a.example\r\n" + header + b"\r\n\r\n")
    assert req is not None and req.basic_auth is basic
    assert "YTpi" not in repr(req) and "eyJhbGciOi" not in repr(req)


def test_head_cut_by_the_segment_end() -> None:
    req = parse_request(b"GET /x HTTP/1.1\r\nHost: a.example\r\nUser-Agent: Mozil")
    assert req is not None
    assert req.host == "a.example" and req.user_agent == ""  # the cut line is not kept
    assert parse_request(b"GET /only-the-request-line HTTP/1.1\r\n") is not None
    assert parse_request(b"GET /no-line-end-yet HTTP/1.1") is not None


def test_odd_but_real_requests() -> None:
    lf_only = parse_request(b"GET / HTTP/1.0\nHost: legacy.example\nUser-Agent: x\n\n")
    assert (
        lf_only is not None and lf_only.version == "HTTP/1.0" and lf_only.host == "legacy.example"
    )
    spaced = parse_request(b"GET /a b/../../etc/passwd HTTP/1.1\r\nHost: h\r\n\r\n")
    assert spaced is not None and spaced.path == "/a b/../../etc/passwd"
    proxy = parse_request(
        b"CONNECT www.example.com:443 HTTP/1.1\r\nHost: www.example.com:443\r\n\r\n"
    )
    assert proxy is not None and proxy.method == "CONNECT" and proxy.path == "www.example.com:443"
    dav = parse_request(b"PROPFIND /share/ HTTP/1.1\r\nHost: nas\r\nDepth: 1\r\n\r\n")
    assert dav is not None and dav.header_names == ["host", "depth"]
    utf8 = parse_request("GET / HTTP/1.1\r\nUser-Agent: Bücher\xff\r\n\r\n".encode("latin-1"))
    assert utf8 is not None and utf8.user_agent == "B\\xfccher\\xff"


def test_body_is_not_read_as_headers() -> None:
    req = parse_request(b"POST /f HTTP/1.1\r\nHost: h\r\n\r\nUser-Agent: from-the-body\r\n")
    assert req is not None and req.user_agent == "" and req.header_names == ["host"]
    lf = parse_request(b"POST /f HTTP/1.0\nHost: h\n\nUser-Agent: from-the-body\n")
    assert lf is not None and lf.user_agent == "" and lf.header_names == ["host"]


def test_header_count_is_bounded() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    req = parse_request(head + b"Host: late.example\r\n\r\n")
    assert req is not None and len(req.header_names) == MAX_HEADERS and req.host == ""


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"GET",
        b"get / HTTP/1.1\r\n\r\n",  # methods are case-sensitive
        b"FETCH / HTTP/1.1\r\n\r\n",  # not a known method
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 preface
        b"GET / HTTP/0.9\r\n\r\n",
        b"GET /\r\n",  # HTTP/0.9 style, no version
        b"GET  HTTP/1.1\r\n\r\n",  # empty target
        b"HTTP/1.1 200 OK\r\n\r\n",  # a response
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ],
)
def test_not_a_request(payload: bytes) -> None:
    assert parse_request(payload) is None


def test_dissectors_counts_http() -> None:
    d = Dissectors()
    assert d.http(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") is not None
    assert d.http(b"GET nothing") is None
    assert d.parsed["http"] == 1 and d.malformed["http"] == 1


# -- requests pipelined in one segment ---------------------------------------------------------

PIPELINED = (
    b"GET /one HTTP/1.1\r\nHost: a.example\r\nUser-Agent: agent-1\r\n\r\n"
    b"POST /two HTTP/1.1\r\nHost: b.example\r\nContent-Length: 20\r\n\r\n"
    b"GET /body HTTP/1.1\r\n"  # the body of /two (20 bytes): not a request of its own
    b"GET /three HTTP/1.1\r\nHost: c.example\r\nUser-Agent: agent-3\r\n\r\n"
)


def test_pipelined_requests_are_each_parsed_with_their_offset() -> None:
    req = parse_requests(PIPELINED)
    assert req is not None and (req.path, req.host, req.offset) == ("/one", "a.example", 0)
    got = [(r.method, r.path, r.host, r.user_agent) for r in req.pipelined]
    assert got == [("POST", "/two", "b.example", ""), ("GET", "/three", "c.example", "agent-3")]
    for r in req.pipelined:
        assert PIPELINED[r.offset :].startswith(f"{r.method} {r.path} ".encode())
        assert r.pipelined == ()
    # parse_request alone still reads only the first (the heads of the others are not headers)
    only = parse_request(PIPELINED)
    assert only is not None and only.header_names == ["host", "user-agent"]
    lf = parse_requests(b"GET /a HTTP/1.0\nHost: x\n\nGET /b HTTP/1.0\nHost: y\n\n")
    assert lf is not None and [(r.path, r.host) for r in lf.pipelined] == [("/b", "y")]


@pytest.mark.parametrize(
    ("tail", "paths"),
    [
        (b"GET /cut HTTP/1.1\r\nHost: c.exa", []),  # its head goes on in the next segment
        (b"\x16\x03\x01junk after the head", []),  # not a request
        (b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET /\r\n0\r\n\r\n"
         b"GET /after-chunked HTTP/1.1\r\n\r\n", ["/x"]),  # a chunked body ends the walk
        (b"GET /y HTTP/1.1\r\nContent-Length: 99\r\n\r\nshort", ["/y"]),  # body past the end
        (b"GET /z HTTP/1.1\r\nContent-Length: x1\r\n\r\nGET /w HTTP/1.1\r\n\r\n", ["/z"]),
    ],
)  # fmt: skip
def test_pipelining_stops_where_the_next_request_is_not_known(
    tail: bytes, paths: list[str]
) -> None:
    req = parse_requests(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" + tail)
    assert req is not None and [r.path for r in req.pipelined] == paths


def test_pipelining_is_bounded() -> None:
    one = b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n"
    many = parse_requests(one * (MAX_PIPELINED + 10))
    assert many is not None and len(many.pipelined) == MAX_PIPELINED
    # nothing starting past MAX_HEAD bytes of the segment
    padded = parse_requests(
        b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * MAX_HEAD + b"\r\n\r\n" + one
    )  # fmt: skip
    assert padded is not None and padded.pipelined == ()
    far = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % MAX_HEAD
    beyond = parse_requests(far + b"x" * MAX_HEAD + one)
    assert beyond is not None and beyond.pipelined == ()
    assert Dissectors().http(PIPELINED) is not None
    assert len(Dissectors().http(PIPELINED).pipelined) == 2  # type: ignore[union-attr]
