"""Each keyword of the subset, through the real engine: a packet crafted to match and one that
just misses (offset/depth/distance/within boundaries, nocase, negation, flow direction, dsize,
flags, thresholds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.detect.rules.kit import (
    ATK,
    EVIL,
    PC1,
    PC2,
    T0,
    WEB,
    Rules,
    dns_query,
    http_request,
    syn,
    tcp_flow,
    udp,
)


def one(tmp_path: Path, options: str, header: str = "tcp any any -> any any") -> Rules:
    return Rules(tmp_path, f'alert {header} (msg:"t"; {options} sid:1;)\n')


def hits(r: Rules, pkts: list) -> bool:
    return r.sids(pkts) == [1]


# -- content windows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match", "miss"),
    [
        # depth 6: "abc" must end by byte 6
        ('content:"abc"; depth:6;', b"xxxabc", b"xxxxabc"),
        # offset 3: "abc" must start at byte 3 or later
        ('content:"abc"; offset:3;', b"xxxabc", b"xxabcx"),
        # offset 2 + depth 3: exactly bytes 2..4
        ('content:"abc"; offset:2; depth:3;', b"xxabcxx", b"xxxabcx"),
        # distance 2: "def" starts at least 2 bytes after "abc" ends
        ('content:"abc"; content:"def"; distance:2;', b"abcXXdef", b"abcXdef"),
        # within 5: "def" ends within 5 bytes after "abc"
        ('content:"abc"; content:"def"; within:5;', b"abcXXdef", b"abcXXXdef"),
        # distance 1 + within 4: "def" wholly in bytes 1..4 after "abc"
        ('content:"abc"; content:"def"; distance:1; within:4;', b"abcXdef", b"abcdef"),
        # negative distance: "abc" may start before the end of "XYZ"
        ('content:"XYZ"; content:"abc"; distance:-6; within:3;', b"abcXYZ", b"abcQXYZ"),
        # contents without relative modifiers match in any order
        ('content:"def"; content:"abc";', b"abc-def", b"abc-de"),
        # distance:0 after a repeated first content: the second occurrence is tried too
        ('content:"ab"; content:"cd"; distance:0; within:2;', b"abXXabcd", b"abXXabXcd"),
        # hex bytes and text mixed
        ('content:"A|00 01|B";', b"zzA\x00\x01Bzz", b"zzA\x00\x02Bzz"),
    ],
)
def test_content_windows(tmp_path: Path, options: str, match: bytes, miss: bytes) -> None:
    r = one(tmp_path, options)
    assert hits(r, tcp_flow(match))
    assert not hits(r, tcp_flow(miss))


def test_nocase(tmp_path: Path) -> None:
    exact = one(tmp_path, 'content:"EvilThing";')
    loose = Rules(
        tmp_path, 'alert tcp any any -> any any (msg:"t"; content:"EvilThing"; nocase; sid:1;)\n'
    )
    assert hits(exact, tcp_flow(b"..EvilThing.."))
    assert not hits(exact, tcp_flow(b"..eviltHING.."))
    assert hits(loose, tcp_flow(b"..eviltHING.."))
    assert not hits(loose, tcp_flow(b"..evil-thing.."))


def test_negated_content(tmp_path: Path) -> None:
    r = one(tmp_path, 'content:"login"; content:!"safe";')
    assert hits(r, tcp_flow(b"login now"))
    assert not hits(r, tcp_flow(b"login now, safe"))


def test_negated_relative_content_only_looks_in_its_window(tmp_path: Path) -> None:
    r = one(tmp_path, 'content:"user="; content:!"admin"; distance:0; within:5;')
    assert hits(r, tcp_flow(b"user=guest admin"))  # admin outside the 5 bytes after user=
    assert not hits(r, tcp_flow(b"user=admin"))


def test_fast_pattern_does_not_change_what_matches(tmp_path: Path) -> None:
    r = one(tmp_path, 'content:"GET"; content:"/x.php"; fast_pattern; content:"id="; distance:0;')
    assert hits(r, tcp_flow(b"GET /x.php?id=1"))
    assert not hits(r, tcp_flow(b"GET /x.php?nope"))
    assert not hits(r, tcp_flow(b"PUT /x.php?id=1"))


# -- header ------------------------------------------------------------------------------------


def test_addresses_vars_negation_groups_ranges(tmp_path: Path) -> None:
    r = Rules(
        tmp_path,
        'alert tcp $HOME_NET any -> $EXTERNAL_NET any (msg:"out"; flags:S; sid:1;)\n'
        'alert tcp any any -> [203.0.113.0/24,!203.0.113.66] any (msg:"grp"; flags:S; sid:2;)\n'
        'alert tcp any any -> 203.0.113.60-203.0.113.70 any (msg:"range"; flags:S; sid:3;)\n'
        'alert tcp !$HOME_NET any -> any any (msg:"in"; flags:S; sid:4;)\n',
    )
    assert r.sids(syn(src=PC1, dst=WEB)) == [1, 2]
    assert r.sids(syn(src=PC1, dst=EVIL)) == [1, 3]
    assert r.sids(syn(src=ATK, dst=PC2)) == [4]
    assert r.sids(syn(src=PC1, dst=PC2)) == []


def test_home_net_follows_inline_home_nets_unless_set(tmp_path: Path) -> None:
    text = 'alert tcp $HOME_NET any -> any any (msg:"home"; flags:S; sid:1;)\n'
    assert Rules(tmp_path, text).sids(syn(src=PC1)) == [1]  # 198.18.0.0/24 in the config
    assert Rules(tmp_path, text).sids(syn(src=ATK)) == []
    own = Rules(tmp_path, text, vars=["HOME_NET=[198.51.100.0/24]"])
    assert own.sids(syn(src=ATK)) == [1]
    assert own.sids(syn(src=PC1)) == []


@pytest.mark.parametrize(
    ("ports", "match", "miss"),
    [
        ("22", 22, 23),
        ("[22,2222]", 2222, 2223),
        ("1024:", 1024, 1023),
        (":1023", 1023, 1024),
        ("8000:8010", 8010, 8011),
        ("!22", 23, 22),
        ("[1:100,!53]", 54, 53),
        ("$HTTP_PORTS", 80, 8080),
    ],
)
def test_ports(tmp_path: Path, ports: str, match: int, miss: int) -> None:
    r = one(tmp_path, "flags:S;", f"tcp any any -> any {ports}")
    assert hits(r, syn(dport=match))
    assert not hits(r, syn(dport=miss))


def test_bidirectional(tmp_path: Path) -> None:
    one_way = one(tmp_path, 'content:"ping";', f"udp {PC1} any -> {WEB} 9999")
    both = Rules(tmp_path, f'alert udp {PC1} any <> {WEB} 9999 (msg:"t"; content:"ping"; sid:1;)\n')
    back = [*udp(b"ping", 9999, src=WEB, dst=PC1)]
    back[0].payload.sport, back[0].payload.dport = 9999, 41000
    assert hits(one_way, udp(b"ping", 9999))
    assert not hits(one_way, back)
    assert hits(both, back)


def test_port_rules_through_the_engine(tmp_path: Path) -> None:
    """The port groups change which rules are looked at, not what matches: each rule alerts
    exactly on the packets its ports name (client payload, server banner, either way)."""
    r = Rules(
        tmp_path,
        'alert tcp any any -> any 80 (msg:"to 80"; content:"zap"; sid:1;)\n'
        'alert tcp any any -> any [8080,8000] (msg:"to 8080"; content:"zap"; sid:2;)\n'
        'alert tcp any any -> any any (msg:"any"; content:"zap"; sid:3;)\n'
        'alert tcp any 80 -> any any (msg:"from 80"; content:"zap"; sid:4;)\n'
        'alert tcp any any <> any 80 (msg:"either 80"; content:"zap"; sid:5;)\n'
        'alert tcp any any -> any !80 (msg:"not 80"; content:"zap"; sid:6;)\n'
        'alert tcp any any -> any 80 (msg:"syn to 80"; flags:S; sid:7;)\n',
    )
    assert r.sids(tcp_flow(b"zap", dport=80)) == [1, 3, 5, 7]
    assert r.sids(tcp_flow(b"zap", dport=8080)) == [2, 3, 6]
    assert r.sids(tcp_flow(b"zap", dport=443)) == [3, 6]
    assert r.sids(tcp_flow(banner=b"zap", dport=80)) == [3, 4, 5, 6, 7]  # 6: to the client port
    assert r.sids(tcp_flow(banner=b"zap", dport=443)) == [3, 6]


def test_protocols(tmp_path: Path) -> None:
    r = Rules(
        tmp_path,
        'alert udp any any -> any any (msg:"u"; content:"zap"; sid:1;)\n'
        'alert tcp any any -> any any (msg:"t"; content:"zap"; sid:2;)\n'
        'alert ip any any -> any any (msg:"i"; content:"zap"; sid:3;)\n',
    )
    assert r.sids(udp(b"zap", 9999)) == [1, 3]
    assert r.sids(tcp_flow(b"zap")) == [2, 3]


# -- flow, flags, dsize ------------------------------------------------------------------------


def test_flow_direction(tmp_path: Path) -> None:
    to_server = one(tmp_path, 'flow:to_server; content:"HELLO";')
    to_client = Rules(
        tmp_path,
        'alert tcp any any -> any any (msg:"t"; flow:to_client; content:"HELLO"; sid:1;)\n',
    )
    from_server = tcp_flow(banner=b"HELLO from the server")
    from_client = tcp_flow(b"HELLO from the client")
    assert hits(to_server, from_client)
    assert not hits(to_server, from_server)
    assert hits(to_client, from_server)
    assert not hits(to_client, from_client)


def test_flow_established(tmp_path: Path) -> None:
    est = one(tmp_path, 'flow:established,to_server; content:"DATA";')
    not_est = Rules(
        tmp_path,
        'alert tcp any any -> any any (msg:"t"; flow:not_established; content:"DATA"; sid:1;)\n',
    )
    assert hits(est, tcp_flow(b"DATA"))
    assert not hits(est, tcp_flow(b"DATA", handshake=False))  # mid-stream, no handshake seen
    assert hits(not_est, tcp_flow(b"DATA", handshake=False))
    assert not hits(not_est, tcp_flow(b"DATA"))


@pytest.mark.parametrize(
    ("flags", "match", "miss"),
    [
        ("S", "S", "SA"),  # exactly SYN
        ("SA", "SA", "S"),
        ("S,CE", "SEC", "SEA"),  # SYN, ECN bits ignored
        ("+S", "SA", "A"),  # SYN and anything
        ("*FR", "R", "SA"),  # any of FIN, RST
        ("!A", "S", "SA"),  # not ACK
        ("FPU", "FPU", "FP"),  # Xmas
        ("0", "", "S"),  # NULL
    ],
)
def test_flags(tmp_path: Path, flags: str, match: str, miss: str) -> None:
    r = one(tmp_path, f"flags:{flags};")
    assert hits(r, syn(flags=match))
    assert not hits(r, syn(flags=miss, sport=50001))


@pytest.mark.parametrize(
    ("dsize", "match", "miss"),
    [
        ("10", 10, 11),
        ("<10", 9, 10),
        (">10", 11, 10),
        ("<=10", 10, 11),
        (">=10", 10, 9),
        ("10<>20", 19, 20),
        ("10<>20", 11, 10),
        ("!0", 1, 0),
    ],
)
def test_dsize(tmp_path: Path, dsize: str, match: int, miss: int) -> None:
    r = one(tmp_path, f"dsize:{dsize};", "udp any any -> any 9999")
    assert hits(r, udp(b"x" * match, 9999))
    assert not hits(r, udp(b"x" * miss, 9999))


# -- sticky buffers ----------------------------------------------------------------------------


def test_http_buffers(tmp_path: Path) -> None:
    r = Rules(
        tmp_path,
        'alert http any any -> any any (msg:"m"; http.method; content:"PUT"; sid:1;)\n'
        'alert http any any -> any any (msg:"u"; http.uri; content:"/a b/c.php"; sid:2;)\n'
        'alert http any any -> any any (msg:"ur"; http.uri.raw; content:"/a%20b/"; sid:3;)\n'
        'alert http any any -> any any (msg:"h"; http.host; content:"evil.example"; depth:12; sid:4;)\n'  # noqa: E501
        'alert http any any -> any any (msg:"hr"; http.host.raw; content:"Evil.Example:8080"; sid:5;)\n'  # noqa: E501
        'alert http any any -> any any (msg:"ua"; http.user_agent; content:"sqlmap"; sid:6;)\n'
        'alert http any any -> any any (msg:"hd"; http.header; content:"x-api: 1|0d 0a|"; sid:7;)\n'
        'alert http any any -> any any (msg:"hdr"; http.header.raw; content:"x-api:1"; sid:8;)\n'
        'alert http any any -> any any (msg:"legacy"; content:"PUT"; http_method; content:"c.php"; http_uri; sid:9;)\n',  # noqa: E501
    )
    pkts = http_request(
        "/a%20b/c.php", method="PUT", host="Evil.Example:8080", ua="sqlmap/1.7",
        headers=("x-api:1",),
    )  # fmt: skip
    assert r.sids(pkts) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    plain = http_request("/a/c.php", host="good.example", ua="Mozilla/5.0")
    assert r.sids(plain) == []


def test_pipelined_requests_each_meet_the_http_rules(tmp_path: Path) -> None:
    """Three requests pipelined in one segment: a rule whose every buffer names the third
    matches it (and its alert carries the third's URL); a rule mixing the buffers of two
    requests matches none (each request has its own method/uri/host/user_agent/header)."""
    segment = (
        b"GET /first HTTP/1.1\r\nHost: a.example\r\nUser-Agent: agent-1\r\nX-Tag: one\r\n\r\n"
        b"GET /second HTTP/1.1\r\nHost: b.example\r\nUser-Agent: agent-2\r\n\r\n"
        b"PUT /third/up.php HTTP/1.1\r\nHost: C.Example:8080\r\nUser-Agent: agent-3\r\n"
        b"X-Tag: three\r\nContent-Length: 0\r\n\r\n"
    )
    r = Rules(
        tmp_path,
        'alert http any any -> any any (msg:"third"; flow:to_server; http.method; content:"PUT"; '
        'http.uri; content:"/third/"; http.host; content:"c.example"; http.user_agent; '
        'content:"agent-3"; http.header; content:"X-Tag: three|0d 0a|"; sid:1;)\n'
        'alert http any any -> any any (msg:"mixed"; http.uri; content:"/first"; '
        'http.user_agent; content:"agent-3"; sid:2;)\n'
        'alert http any any -> any any (msg:"header of another"; http.uri; content:"/second"; '
        'http.header; content:"X-Tag"; sid:3;)\n',
    )
    alerts = r.run(tcp_flow(segment, dport=80))
    assert [(a["alert"]["signature_id"], a["http"]["url"]) for a in alerts] == [
        (1, "/third/up.php")
    ]
    assert alerts[0]["http"]["hostname"] == "C.Example:8080"


def test_rules_sharing_chains_and_headers_each_get_their_own_answer(tmp_path: Path) -> None:
    """Equal chains of one buffer are matched once per packet and shared (and equal headers
    too): same contents in another buffer, with other modifiers, or negated stay apart."""
    r = Rules(
        tmp_path,
        'alert http any any -> any any (msg:"1"; http.uri; content:"/a"; http.user_agent; '
        'content:"x-agent"; sid:1;)\n'
        'alert http any any -> any any (msg:"2"; http.uri; content:"/a"; http.user_agent; '
        'content:"y-agent"; sid:2;)\n'
        'alert http any any -> any any (msg:"3"; http.host; content:"/a"; sid:3;)\n'
        'alert http any any -> any any (msg:"4"; http.uri; content:"/A"; nocase; sid:4;)\n'
        'alert http any any -> any any (msg:"5"; http.uri; content:"/A"; sid:5;)\n'
        'alert http any any -> any any (msg:"6"; http.uri; content:!"/a"; sid:6;)\n'
        'alert http any any -> any any (msg:"7"; http.uri; content:"/a"; offset:1; sid:7;)\n'
        'alert http any any -> any 8080 (msg:"8"; http.uri; content:"/a"; sid:8;)\n'
        'alert http any any -> any any (msg:"9"; http.uri; content:"/a"; sid:9;)\n',
    )
    from appliance.detect.rules import load_files
    from appliance.detect.rules.addresses import default_vars

    loaded = load_files([r.path], default_vars(["198.18.0.0/24"]))
    assert len(loaded) == 9 and loaded.report.error_count == 0
    assert loaded.rules[0].chains["http.uri"] is loaded.rules[8].chains["http.uri"]  # shared
    assert loaded.rules[0].chains["http.uri"] is not loaded.rules[6].chains["http.uri"]
    assert r.sids(http_request("/a/b", ua="x-agent/1")) == [1, 4, 9]
    assert r.sids(http_request("/a/b", ua="y-agent/1")) == [2, 4, 9]
    assert r.sids(http_request("/c", ua="x-agent/1")) == [6]


def test_http_header_never_holds_cookies(tmp_path: Path) -> None:
    r = one(tmp_path, 'http.header; content:"session=";', "http any any -> any any")
    assert not hits(r, http_request("/", headers=("Cookie: session=abc",)))
    assert hits(r, http_request("/", headers=("X-Note: session=abc",)))


def test_http_buffer_absent_never_matches(tmp_path: Path) -> None:
    r = one(tmp_path, 'http.user_agent; content:!"Mozilla";', "http any any -> any any")
    assert hits(r, http_request("/", ua="curl/8"))
    assert not hits(r, http_request("/", ua=None))  # no User-Agent: nothing to inspect


def test_tls_buffers(tmp_path: Path) -> None:
    from appliance.detect.dissect.tls import parse_client_hello
    from bench.engine import tls_client_hello

    hello = tls_client_hello("c2.wp-bad.example")
    rec = parse_client_hello(hello)
    assert rec is not None
    r = Rules(
        tmp_path,
        'alert tls any any -> any any (msg:"sni"; tls.sni; content:".wp-bad.example"; sid:1;)\n'
        f'alert tls any any -> any any (msg:"ja3"; ja3.hash; content:"{rec.ja3_hash}"; sid:2;)\n'
        f'alert tls any any -> any any (msg:"ja4"; ja4.hash; content:"{rec.ja4}"; sid:3;)\n'
        'alert tls any any -> any any (msg:"ja3s"; ja3.string; content:"771,"; depth:4; sid:4;)\n'
        'alert tls any any -> any any (msg:"other"; tls.sni; content:"good.example"; sid:5;)\n',
    )
    assert r.sids(tcp_flow(hello, dport=443)) == [1, 2, 3, 4]
    assert r.sids(tcp_flow(tls_client_hello("www.example.com"), dport=443)) == [2, 3, 4]


def test_dns_query(tmp_path: Path) -> None:
    r = Rules(
        tmp_path,
        'alert dns any any -> any any (msg:"q"; dns.query; content:"wp-c2.example"; nocase; sid:1;)\n'  # noqa: E501
        'alert udp any any -> any 53 (msg:"legacy"; dns_query; content:"wp-c2"; depth:5; sid:2;)\n',
    )
    assert r.sids(dns_query("WP-C2.example")) == [1, 2]
    assert r.sids(dns_query("www.wp-c2.example")) == [1]
    assert r.sids(dns_query("wp-c3.example")) == []


# -- pcre --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match", "miss"),
    [
        ('pcre:"/id=\\d{4}\\b/";', b"GET ?id=1234 ", b"GET ?id=123 "),
        ('pcre:"/EVIL/i";', b"an evil thing", b"an ev1l thing"),
        ('content:"key"; pcre:"/^=\\d+/R";', b"key=42", b"key =42"),
        ('content:"tok"; pcre:!"/tok-ok/";', b"tok-bad", b"tok-ok"),
        ('pcre:"/a.b/s";', b"a\nb", b"a\n\nb"),
        ('pcre:"/^two$/m";', b"one\ntwo\nthree", b"one\ntwo!"),
        ('pcre:"/x \\d  # digits/x";', b"x7", b"x 7"),
        ('pcre:"/GET/A";', b"GET /", b" GET /"),
        ('pcre:"/end\\Z/";', b"the end\n", b"the end.\n"),
    ],
)
def test_pcre(tmp_path: Path, options: str, match: bytes, miss: bytes) -> None:
    r = one(tmp_path, options)
    assert hits(r, tcp_flow(match))
    assert not hits(r, tcp_flow(miss))


def test_pcre_http_buffer_flags(tmp_path: Path) -> None:
    r = Rules(
        tmp_path,
        'alert http any any -> any any (msg:"U"; pcre:"/^\\/dl\\/[a-z]+\\.exe$/U"; sid:1;)\n'
        'alert http any any -> any any (msg:"V"; pcre:"/^curl\\//V"; sid:2;)\n'
        'alert http any any -> any any (msg:"W"; pcre:"/\\.example$/W"; sid:3;)\n'
        'alert http any any -> any any (msg:"M"; pcre:"/^POST$/M"; sid:4;)\n',
    )
    assert r.sids(http_request("/dl/setup.exe", ua="curl/8", host="a.example")) == [1, 2, 3]
    assert r.sids(
        http_request("/dl/setup.exe?x", method="POST", ua="Mozilla", host="a.example.com")
    ) == [4]


# -- threshold and detection_filter ------------------------------------------------------------


def syns(n: int, dport: int, src: str = ATK, step: float = 1.0) -> list:
    return [
        p for i in range(n) for p in syn(src=src, dport=dport, sport=50000 + i, ts=T0 + i * step)
    ]


@pytest.mark.parametrize(
    ("option", "n", "alerts", "fewer", "fewer_alerts"),
    [
        # limit 2: 2 of 5 alert; 3 matches still give 2
        ("threshold:type limit, track by_src, count 2, seconds 60;", 5, 2, 3, 2),
        # every 3rd: the 3rd and 6th of 7; 2 matches give none
        ("threshold:type threshold, track by_src, count 3, seconds 60;", 7, 2, 2, 0),
        # both 3: the 3rd only, once; 2 matches give none
        ("threshold:type both, track by_src, count 3, seconds 60;", 7, 1, 2, 0),
        # detection_filter 3: the 4th and 5th; 3 matches give none
        ("detection_filter:track by_src, count 3, seconds 60;", 5, 2, 3, 0),
    ],
)
def test_thresholds(
    tmp_path: Path, option: str, n: int, alerts: int, fewer: int, fewer_alerts: int
) -> None:
    r = one(tmp_path, f"flags:S; {option}")
    assert r.counts(syns(n, 22)) == {1: alerts}
    assert r.counts(syns(fewer, 22)).get(1, 0) == fewer_alerts


def test_threshold_window_restarts(tmp_path: Path) -> None:
    r = one(tmp_path, "flags:S; threshold:type limit, track by_src, count 1, seconds 10;")
    assert r.counts(syns(4, 22, step=4.0)) == {1: 2}  # t=0 and t=12 open windows


def test_threshold_tracks_by_source(tmp_path: Path) -> None:
    r = one(tmp_path, "flags:S; threshold:type limit, track by_src, count 1, seconds 60;")
    pkts = syns(3, 22, src=ATK) + syns(3, 22, src="198.51.100.24")
    assert r.counts(pkts) == {1: 2}
    by_rule = one(tmp_path, "flags:S; threshold:type limit, track by_rule, count 1, seconds 60;")
    assert by_rule.counts(pkts) == {1: 1}


# -- actions -------------------------------------------------------------------------------------


def test_pass_rule_silences_the_flow(tmp_path: Path) -> None:
    r = Rules(
        tmp_path,
        f'pass tcp {PC1} any -> any any (msg:"scanner"; flags:S; sid:1;)\n'
        'alert tcp any any -> any any (msg:"x"; content:"PROBE"; sid:2;)\n',
    )
    assert r.sids(tcp_flow(b"PROBE", src=PC2)) == [2]
    assert r.sids(tcp_flow(b"PROBE", src=PC1)) == []
