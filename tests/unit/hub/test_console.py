"""The analyst console with Flask's test client over a store of real alert records: login,
CSRF, roles, fleet, alert search (paging, 400 on bad parameters), device page, indicators,
report downloads; the daily EVE-JSON export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hub import correlate
from hub.cli import main
from hub.console import users
from hub.console.app import create_app
from hub.console.export import ExportError, export_day
from hub.store import Store
from tests.unit.hub.offices import OFFICES, SCANNER, WEEK_START, filled_store

PW = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = filled_store(tmp_path / "db")
    correlate.run(s, correlate.Policy(min_offices=3), WEEK_START + 3 * 86400)
    yield s
    s.close()


@pytest.fixture
def app(store: Store, tmp_path: Path) -> Any:
    path = tmp_path / "users.json"
    users.add(path, "alice", PW, "analyst")
    users.add(path, "olga", PW, "operator")
    reports = tmp_path / "reports"
    (reports / "office-a").mkdir(parents=True)
    (reports / "office-a" / "office-a-2027-W02.pdf").write_bytes(b"%PDF-1.4 test")
    return create_app(store, path, reports, secure_cookies=False)


def csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def login(app: Any, name: str) -> Any:
    c = app.test_client()
    token = csrf(c.get("/login").get_data(as_text=True))
    r = c.post("/login", data={"user": name, "password": PW, "csrf": token})
    assert r.status_code == 302, r.get_data(as_text=True)
    return c


def test_login_required_and_wrong_password(app: Any) -> None:
    c = app.test_client()
    r = c.get("/alerts?office=office-a")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    token = csrf(c.get("/login").get_data(as_text=True))
    r = c.post("/login", data={"user": "alice", "password": "nope", "csrf": token})
    assert r.status_code == 401 and "Wrong name or password" in r.get_data(as_text=True)
    r = c.post("/login", data={"user": "nobody", "password": PW, "csrf": token})
    assert r.status_code == 401


def test_every_post_needs_the_csrf_token(app: Any) -> None:
    c = app.test_client()
    c.get("/login")
    assert c.post("/login", data={"user": "alice", "password": PW}).status_code == 403
    c = login(app, "olga")
    r = c.post(f"/indicators/ip:{SCANNER}/approve", data={"csrf": "wrong"})
    assert r.status_code == 403 and "CSRF" in r.get_data(as_text=True)
    token = csrf(c.get("/indicators").get_data(as_text=True))
    r = c.post(f"/indicators/ip:{SCANNER}/approve", data={"csrf": token},
               headers={"Origin": "https://evil.example"})  # fmt: skip
    assert r.status_code == 403


def test_analyst_reads_operator_approves(app: Any, store: Store) -> None:
    a = login(app, "alice")
    page = a.get("/indicators").get_data(as_text=True)
    assert SCANNER in page and ">Approve<" not in page
    token = csrf(page)
    assert a.post(f"/indicators/ip:{SCANNER}/approve", data={"csrf": token}).status_code == 403
    o = login(app, "olga")
    page = o.get("/indicators").get_data(as_text=True)
    assert ">Approve<" in page
    r = o.post(f"/indicators/ip:{SCANNER}/approve", data={"csrf": csrf(page)})
    assert r.status_code == 302
    (ind,) = correlate.indicators(store)
    assert ind["state"] == "approved" and ind["decided_by"] == "olga"
    r = o.post("/indicators/ip:192.0.2.9/approve", data={"csrf": csrf(page)})
    assert r.status_code == 400 and "no indicator" in r.get_data(as_text=True)


def test_fleet_highlights_silent_devices(app: Any) -> None:
    html = login(app, "alice").get("/").get_data(as_text=True)
    for dev in OFFICES.values():
        assert dev in html
    # The store's devices were last seen in 2027's test week: older than silent_after from "now"
    # only if the clock is past it; the highlight follows last_seen either way.
    assert html.count('class="silent"') in (0, 3)


def test_alert_search_paging_and_filters(app: Any, store: Store) -> None:
    c = login(app, "alice")
    total = store.alert_count()
    seen: list[str] = []
    page = 1
    while True:
        html = c.get(f"/alerts?per=4&page={page}").get_data(as_text=True)
        assert f"{total} alerts" in html
        seen += re.findall(r"<td>(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)</td><td>", html)
        if 'id="next"' not in html:
            break
        page += 1
    assert len(seen) == total and page == (total + 3) // 4
    html = c.get(f"/alerts?source={SCANNER}&office=office-b").get_data(as_text=True)
    n = len(store.alerts(src_ip=SCANNER, site="office-b"))
    assert f"{n} alerts" in html and n > 0
    html = c.get("/alerts?severity=1&since=2027-01-13&until=2027-01-14").get_data(as_text=True)
    n = len(store.alerts(max_severity=1, since=WEEK_START + 2 * 86400,
                         until=WEEK_START + 3 * 86400))  # fmt: skip
    assert f"{n} alerts" in html


@pytest.mark.parametrize(
    ("query", "reason"),
    [("severity=9", "severity: expected 1..3"), ("signature=abc", "signature: expected a whole"),
     ("source=not-an-ip", "not an IP address"), ("since=yesterday", "since: expected a date"),
     ("since=2027-01-14&until=2027-01-13", "until: must be after since"),
     ("page=0", "page: expected"), ("per=1000", "per: expected"), ("color=red", "unknown")],
)  # fmt: skip
def test_bad_search_parameters_are_400_with_a_reason(app: Any, query: str, reason: str) -> None:
    r = login(app, "alice").get(f"/alerts?{query}")
    assert r.status_code == 400 and reason in r.get_data(as_text=True)


def test_device_page_and_reports(app: Any) -> None:
    c = login(app, "alice")
    html = c.get("/devices/dev-a1").get_data(as_text=True)
    assert "office-a" in html and "ready" in html and "Recent alerts" in html
    assert c.get("/devices/nope").status_code == 404
    assert "office-a-2027-W02.pdf" in c.get("/reports").get_data(as_text=True)
    r = c.get("/reports/office-a/office-a-2027-W02.pdf")
    assert r.status_code == 200 and r.data.startswith(b"%PDF")
    assert c.get("/reports/office-a/..%2fusers.json").status_code == 404
    assert c.get("/reports/x/y.pdf").status_code == 404


def test_pages_use_local_assets_only(app: Any) -> None:
    c = login(app, "alice")
    for url in ("/", "/alerts", "/indicators", "/reports", "/devices/dev-b1"):
        r = c.get(url)
        assert r.status_code == 200
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert not re.search(r'(src|href)="(https?:)?//', r.get_data(as_text=True)), url
    assert c.get("/static/console.css").status_code == 200


def test_accounts() -> None:
    with pytest.raises(users.UserError, match="role"):
        users.add(Path("/nonexistent/u.json"), "bob", PW, "admin")
    with pytest.raises(users.UserError, match="at least"):
        users.add(Path("/nonexistent/u.json"), "bob", "short", "analyst")
    with pytest.raises(users.UserError, match="user name"):
        users.add(Path("/nonexistent/u.json"), "Bob!", PW, "analyst")


def test_daily_export_is_one_eve_alert_per_line(store: Store, tmp_path: Path) -> None:
    path, n = export_day(store, "2027-01-13", tmp_path / "siem")
    lines = path.read_text().splitlines()
    assert path.name == "eve-2027-01-13.json" and len(lines) == n > 0
    day = store.alerts(since=WEEK_START + 2 * 86400, until=WEEK_START + 3 * 86400, limit=10**6)
    assert n == len(day)
    for line in lines:
        e = json.loads(line)
        assert e["event_type"] == "alert" and e["timestamp"].startswith("2027-01-13")
        assert {"src_ip", "dest_ip", "proto"} <= set(e) and e["alert"]["signature_id"]
        assert e["watchpost"]["device"] in OFFICES.values()
    assert export_day(store, "2027-01-20", tmp_path / "siem")[1] == 0
    with pytest.raises(ExportError, match="YYYY-MM-DD"):
        export_day(store, "13/01/2027", tmp_path)
    r = CliRunner().invoke(main, ["export", "--store", str(store.path), "--day", "2027-13-01",
                                  "--out", str(tmp_path)])  # fmt: skip
    assert r.exit_code != 0 and "day '2027-13-01'" in r.output
