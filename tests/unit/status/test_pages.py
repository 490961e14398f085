"""The owner's pages: first-run setup, Host allow-list, alerts with filters and acknowledgement,
devices by name, charts, weekly report, settings, mode switch; bad input gets 400, never 500."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.alerts.model import eve_time
from appliance.status import setup
from appliance.status.app import StatusPage
from tests.unit.status.conftest import (
    LAN,
    OUI,
    FakeView,
    Rig,
    base_numbers,
    csrf_of,
    https,
    logged_in,
    make_config,
)

NEW_PASSWORD = "blue kettle on the stove"


def eve(
    i: int,
    ts: float,
    sid: int = 8104001,
    severity: int = 1,
    office: str = LAN,
    remote: str = "198.51.100.23",
    action: str = "allowed",
    detector: str = "exposure",
    inbound: bool = True,
) -> dict[str, Any]:
    src, dest = (remote, office) if inbound else (office, remote)
    return {
        "timestamp": eve_time(ts),
        "event_type": "alert",
        "src_ip": src,
        "src_port": 50000 + i,
        "dest_ip": dest,
        "dest_port": 3389,
        "proto": "TCP",
        "alert": {
            "action": action,
            "signature_id": sid,
            "signature": f"sig {sid}",
            "category": "Exposed service",
            "severity": severity,
        },
        "watchpost": {
            "id": f"e{i}",
            "count": 1,
            "direction": "inbound" if inbound else "outbound",
            "detector": detector,
        },
    }


def write_eve(rig: Rig, events: list[dict[str, Any]]) -> None:
    with Path(rig.config.log.eve).open("a") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


# -- first run ------------------------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[StatusPage, Any]:
    cfg = make_config(tmp_path, "")
    page = StatusPage(cfg, wait=0.1, oui_path=str(OUI))
    page.view = FakeView(cfg, base_numbers())
    c = https(page.app.test_client())
    c.environ_base["REMOTE_ADDR"] = LAN
    return page, c


def test_first_start_makes_a_setup_code_once(fresh: tuple[StatusPage, Any]) -> None:
    page, _ = fresh
    code = page.setup_code
    assert code and re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", code)
    stored = (page.state_dir / setup.CODE_FILE).read_text()
    assert code not in stored and setup.normalize(code) not in stored  # only its hash
    assert (page.state_dir / setup.CODE_FILE).stat().st_mode & 0o077 == 0
    assert setup.ensure_setup_code(page.state_dir) is None  # one code until it is spent
    again = StatusPage(page.config)
    assert again.setup_code is None
    assert setup.check_code(page.state_dir, code.lower().replace("-", " "))
    assert not setup.check_code(page.state_dir, "AAAA-BBBB-CCCC")


def test_setup_with_the_code_then_the_code_is_spent(fresh: tuple[StatusPage, Any]) -> None:
    page, c = fresh
    resp = c.get("/")
    assert resp.status_code == 303 and resp.headers["Location"] == "/setup"
    form = c.get("/setup").data.decode()
    assert "at least 10 characters" in form and 'name="code"' in form
    token = csrf_of(form)
    # A wrong code: refused, nothing set.
    resp = c.post(
        "/setup",
        data={
            "csrf": token,
            "code": "AAAA-BBBB-CCCC",
            "password": NEW_PASSWORD,
            "again": NEW_PASSWORD,
        },
    )
    assert resp.status_code == 401 and b"setup code is not right" in resp.data
    # The right code with a weak password: refused, the code stays.
    resp = c.post(
        "/setup",
        data={
            "csrf": token,
            "code": page.setup_code,
            "password": "password123",
            "again": "password123",
        },
    )
    assert resp.status_code == 400 and setup.code_waiting(page.state_dir)
    resp = c.post(
        "/setup",
        data={
            "csrf": token,
            "code": page.setup_code,
            "password": NEW_PASSWORD,
            "again": "other words here",
        },
    )
    assert resp.status_code == 400 and b"not the same" in resp.data
    # Without the CSRF token: refused.
    resp = c.post(
        "/setup", data={"code": page.setup_code, "password": NEW_PASSWORD, "again": NEW_PASSWORD}
    )
    assert resp.status_code == 403
    resp = c.post(
        "/setup",
        data={
            "csrf": token,
            "code": page.setup_code,
            "password": NEW_PASSWORD,
            "again": NEW_PASSWORD,
        },
    )
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    assert c.get("/").status_code == 200  # logged in by setting it
    assert not setup.code_waiting(page.state_dir)
    stored = (page.state_dir / setup.PASSWORD_FILE).read_text()
    assert stored.startswith("scrypt:32768:8:1$") and NEW_PASSWORD not in stored
    # The code is spent: setup is gone, the new password logs in.
    other = https(page.app.test_client())
    assert other.get("/setup").status_code == 303
    token = csrf_of(other.get("/login").data)
    assert other.post("/login", data={"csrf": token, "password": NEW_PASSWORD}).status_code == 303
    # `watchpost passwd` (the config) wins over the page-set password.
    assert setup.ensure_setup_code(page.state_dir) is None


def test_the_enrolment_code_works_on_the_page(tmp_path: Path) -> None:
    from appliance.enrol import setupcode

    state = tmp_path / "state"
    state.mkdir()
    code = setupcode.make(state)  # first boot: enrolment made the code on the installer's sheet
    cfg = make_config(tmp_path, "")
    page = StatusPage(cfg, wait=0.1, oui_path=str(OUI))
    assert page.setup_code is None  # no second code
    page.view = FakeView(cfg, base_numbers())
    c = https(page.app.test_client())
    token = csrf_of(c.get("/setup").data)
    data = {"csrf": token, "code": code, "password": NEW_PASSWORD, "again": NEW_PASSWORD}
    assert c.post("/setup", data=data).status_code == 303
    assert not (state / setupcode.FILE).exists() and not setup.code_waiting(state)


def test_setup_code_guessing_backs_off(fresh: tuple[StatusPage, Any]) -> None:
    page, c = fresh
    token = csrf_of(c.get("/setup").data)
    data = {
        "csrf": token,
        "code": "AAAA-BBBB-CCCC",
        "password": NEW_PASSWORD,
        "again": NEW_PASSWORD,
    }
    codes = [c.post("/setup", data=data).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    data["code"] = page.setup_code or ""
    assert c.post("/setup", data=data).status_code == 429  # even the right one waits


# -- Host header ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, ok",
    [
        ("localhost", True),
        ("198.18.0.2", True),
        ("198.18.0.2:8080", True),
        ("[fd00::2]:8080", True),
        ("office-7", True),
        ("office-7.local:8443", True),
        ("OFFICE-7.LOCAL", True),
        ("evil.example", False),
        ("198.18.0.2.evil.example", False),
        ("office-7.evil.example", False),
        ("", False),
    ],
)
def test_host_header_allow_list(rig: Rig, host: str, ok: bool) -> None:
    resp = rig.new_client().get("/login", headers={"Host": host})
    assert (resp.status_code != 400) == ok, host
    if not ok:
        assert b"Host header refused" in resp.data


# -- alerts ---------------------------------------------------------------------------------------


def test_alert_list_filters_paging_detail_and_ack(rig: Rig) -> None:
    now = time.time()
    events = [eve(i, now - 3600 + i, remote=f"198.51.100.{i % 40 + 1}") for i in range(60)]
    events.append(
        eve(
            100,
            now - 60,
            sid=8105001,
            severity=1,
            detector="dga",
            inbound=False,
            remote="203.0.113.53",
        )
    )
    events.append(eve(101, now - 9 * 86400, sid=8102001, severity=2, detector="portscan"))
    write_eve(rig, events)
    rig.page.inventory.store.learn(LAN, "00:1b:63:01:02:03", "reception-pc", "dhcp")
    token = logged_in(rig.client)
    page = rig.client.get("/alerts").data.decode()
    assert "41 alerts, page 1 of 2" in page  # 40 exposure groups + dga; the portscan is older
    assert '<strong>reception-pc</strong> <span class="addr">(198.18.0.11)</span>' in page
    assert "41 alerts" in rig.client.get("/alerts?page=2").data.decode()
    assert "1 alert." in rig.client.get("/alerts?detector=dga").data.decode()
    assert "42 alerts" in rig.client.get("/alerts?period=all").data.decode()
    assert "1 alert." in rig.client.get("/alerts?severity=medium&period=30d").data.decode()
    assert "0 alerts" in rig.client.get("/alerts?device=198.18.0.99").data.decode()
    # The detail page: what happened, what to do, the timeline.
    api = rig.client.get("/api/alerts?detector=dga").json
    assert api["total"] == 1 and api["alerts"][0]["device_name"] == "reception-pc"
    gid = api["alerts"][0]["id"]
    detail = rig.client.get(f"/alerts/{gid}").data.decode()
    assert "What to do" in detail and "disconnect it from the network" in detail
    assert 'id="times">1<' in detail and "let through" in detail
    assert rig.client.get("/alerts/999999").status_code == 404
    # Acknowledge one, then all that match a filter.
    resp = rig.client.post(
        "/alerts/ack", data={"csrf": token, "id": str(gid), "back": f"/alerts/{gid}"}
    )
    assert resp.status_code == 303 and resp.headers["Location"] == f"/alerts/{gid}"
    assert "Acknowledged. It comes back" in rig.client.get(f"/alerts/{gid}").data.decode()
    assert rig.client.get("/api/alerts?acked=yes").json["total"] == 1
    resp = rig.client.post("/alerts/ack", data={"csrf": token, "all": "1", "detector": "exposure"})
    assert resp.status_code == 303
    assert rig.client.get("/api/alerts?acked=no&period=all").json["total"] == 1  # the portscan
    # It comes back when it happens again.
    write_eve(
        rig,
        [
            eve(
                200,
                time.time(),
                sid=8105001,
                severity=1,
                detector="dga",
                inbound=False,
                remote="203.0.113.53",
            )
        ],
    )
    assert rig.client.get("/api/alerts?acked=no").json["total"] == 1


@pytest.mark.parametrize(
    "url, parameter",
    [
        ("/alerts?severity=urgent", "severity"),
        ("/alerts?period=1y", "period"),
        ("/alerts?device=not-an-ip", "device"),
        ("/alerts?page=0", "page"),
        ("/alerts?page=abc", "page"),
        ("/alerts?detector=%3Cscript%3E", "detector"),
        ("/alerts?sort=ts", "sort"),
        ("/alerts?page=1&page=2", "page"),
        ("/charts?span=1y", "span"),
        ("/report?weeks_ago=99", "weeks_ago"),
        ("/devices/not-an-ip", "ip"),
        ("/mode?to=off", "to"),
        ("/api/alerts?limit=0", "limit"),
        ("/api/alerts?acked=maybe", "acked"),
        ("/?x=1", "x"),
    ],
)
def test_bad_query_parameters_get_400_with_the_reason(rig: Rig, url: str, parameter: str) -> None:
    logged_in(rig.client)
    resp = rig.client.get(url)
    assert resp.status_code == 400, url
    assert parameter.encode() in resp.data
    if url.startswith("/api/"):
        assert resp.json["parameter"] == parameter


POSTS = [
    ("/alerts/ack", {"all": "1"}),
    ("/devices/198.18.0.11/name", {"name": "x"}),
    ("/mode", {"mode": "block", "confirm": "yes"}),
    ("/ack", {}),
    ("/identify", {"seconds": "5"}),
]


@pytest.mark.parametrize("path, form", POSTS)
def test_every_action_needs_login_and_csrf(rig: Rig, path: str, form: dict[str, str]) -> None:
    # No login (but a valid token for the anonymous session): sent to the login page.
    anon = rig.new_client()
    token = csrf_of(anon.get("/login").data)
    resp = anon.post(path, data={**form, "csrf": token})
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    # Logged in, without the token or with a wrong one: refused.
    token = logged_in(rig.client)
    assert rig.client.post(path, data=form).status_code == 403
    assert rig.client.post(path, data={**form, "csrf": token + "x"}).status_code == 403
    # From another origin: refused.
    resp = rig.client.post(
        path, data={**form, "csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert resp.status_code == 403
    assert rig.view.numbers["mode"] == "monitor" and rig.view.applied == []


def test_bad_form_values_get_400(rig: Rig) -> None:
    token = logged_in(rig.client)
    for data in ({"id": "abc"}, {"id": "1" * 20}, {}):
        assert rig.client.post("/alerts/ack", data={"csrf": token, **data}).status_code == 400
    resp = rig.client.post("/devices/198.18.0.11/name", data={"csrf": token, "name": "x" * 41})
    assert resp.status_code == 400
    resp = rig.client.post("/mode", data={"csrf": token, "mode": "block"})  # not confirmed
    assert resp.status_code == 400 and b"confirm" in resp.data


# -- devices --------------------------------------------------------------------------------------


def test_devices_by_name_and_rename(rig: Rig) -> None:
    store = rig.page.inventory.store
    store.learn(LAN, "00:1b:63:aa:bb:cc", "macbook", "mdns")
    store.learn(LAN, name="RECEPTION", source="netbios")  # a lower-ranked source: kept mdns
    store.learn("198.18.0.12", "3c:d9:2b:00:00:01", "", "arp")
    write_eve(rig, [eve(1, time.time())])
    token = logged_in(rig.client)
    page = rig.client.get("/devices").data.decode()
    assert "<strong>macbook</strong>" in page and "Apple, Inc." in page
    assert "Hewlett Packard" in page and "<strong>198.18.0.12</strong>" in page
    detail = rig.client.get(f"/devices/{LAN}").data.decode()
    assert "from mDNS" in detail and "sig 8104001" in detail
    resp = rig.client.post(
        f"/devices/{LAN}/name", data={"csrf": token, "name": "Anna's laptop <b>"}
    )
    assert resp.status_code == 303
    page = rig.client.get("/alerts").data.decode()
    assert "Anna&#39;s laptop &lt;b&gt;" in page and "<b>" not in page.split("<main>")[1][:0]
    rig.client.post(f"/devices/{LAN}/name", data={"csrf": token, "name": ""})
    assert "<strong>macbook</strong>" in rig.client.get("/devices").data.decode()


# -- charts, report, settings, mode ---------------------------------------------------------------


def test_charts_render_svg_with_data(rig: Rig) -> None:
    now = time.time()
    for k in range(30):
        rig.page.series.record(
            {"packets": 1000.0 * k, "judged": 10.0 * k}, now=now - 1800 + 60 * k, talkers={LAN: 3}
        )
    write_eve(rig, [eve(1, now - 100), eve(2, now - 200, sid=8102001, severity=2)])
    rig.page.inventory.store.learn(LAN, name="reception-pc", source="dhcp")
    logged_in(rig.client)
    for span in ("24h", "7d"):
        page = rig.client.get(f"/charts?span={span}").data.decode()
        assert page.count("<svg") == 4
        assert "Packets per second: peak 17 packets/s" in page or span == "7d"
        assert "Alerts by severity: 1 high, 1 medium, 0 low" in page
        assert "reception-pc (198.18.0.11) 90 connections" in page
        assert "<polyline" in page and 'class="sev1"' in page
    assert 'src="http' not in page and "cdn" not in page.lower()


def test_weekly_report_has_the_daily_summary_figures(rig: Rig, tmp_path: Path) -> None:
    from appliance.hublink.report import DailyReport

    now = time.time()
    events = [
        eve(
            i,
            now - 3600 * i,
            sid=8104001 + i % 3,
            severity=1 + i % 3,
            action="blocked" if i % 4 else "allowed",
        )
        for i in range(20)
    ]
    write_eve(rig, events)
    logged_in(rig.client)
    page = rig.client.get("/report").data.decode()
    daily = DailyReport(tmp_path / "daily.json")
    for e in reversed(events):  # in time order, as the daemon counts them
        daily.add(e)
    hub = daily.report()
    ours = rig.page.index.summary(now - 7 * 86400, now + 1)
    for key in (
        "alerts",
        "blocked",
        "allowed",
        "by_detector",
        "by_severity",
        "top_sources",
        "top_ports",
        "top_signatures",
    ):
        assert ours[key] == hub[key], key
    assert f"<strong>{hub['alerts']}</strong> suspicious events: {hub['blocked']} blocked" in page
    assert "Ask your IT supplier: which device offers remote access" in page
    assert "@media print" in rig.client.get("/static/style.css").data.decode()


def test_settings_never_show_secrets(tmp_path: Path, password_hash: str) -> None:
    cfg = make_config(tmp_path, password_hash)
    cfg = dataclasses.replace(
        cfg,
        privacy=dataclasses.replace(cfg.privacy, pseudonymize=True, key="k" * 32),
        detect={"web": {"scanner_agents": ["zgrab"], "api_key": "SECRET-VALUE"}},
    )
    page = StatusPage(cfg, wait=0.1, oui_path=str(OUI))
    page.view = FakeView(cfg, base_numbers())
    c = https(page.app.test_client())
    c.environ_base["REMOTE_ADDR"] = LAN
    logged_in(c)
    text = c.get("/settings").data.decode()
    assert "monitor mode" in text and "zgrab" in text and page.fingerprint in text
    for secret in ("k" * 32, "SECRET-VALUE", password_hash, "api_key"):
        assert secret not in text


def test_mode_switch_says_what_block_mode_does_and_applies_in_the_main_loop(rig: Rig) -> None:
    import threading

    rig.view.config = dataclasses.replace(
        rig.config, status=dataclasses.replace(rig.config.status, listen="127.0.0.1:8443")
    )
    token = logged_in(rig.client)
    form = rig.client.get("/mode").data.decode()
    assert "What block mode does not do" in form and "never blocks devices in your office" in form
    rig.view.running = True
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.02):
            rig.view.tick(time.monotonic())

    t = threading.Thread(target=loop)
    t.start()
    try:
        resp = rig.client.post("/mode", data={"csrf": token, "mode": "block", "confirm": "yes"})
        assert resp.status_code == 303
    finally:
        stop.set()
        t.join()
    assert [c.inline.mode for c in rig.view.applied] == ["block"]
    assert rig.view.applied_in is t  # in the daemon's main loop, not a request thread
    assert "Now in block mode." in rig.client.get("/").data.decode()
    # Saved in the overlay under the state dir (the office's /etc/watchpost is read-only).
    from appliance.config import remote_path

    overlay = remote_path(rig.config.device.state_dir).read_text()
    assert 'mode = "block"' in overlay


def test_the_status_view_shows_the_update_job(rig: Rig) -> None:
    logged_in(rig.client)
    rig.view.numbers["update"] = {"id": "u1", "state": "failed", "version": "0.2.0",
                                  "reason": "refused: bad signature"}  # fmt: skip
    rig.view.tick(time.time())  # the page keeps the latest tick's snapshot
    html = rig.client.get("/").data.decode()
    assert 'id="update" data-state="failed"' in html
    assert "Update to 0.2.0 not applied: refused: bad signature." in html
    api = rig.client.get("/api/status").get_json()
    assert api["update"]["state"] == "failed" and api["update"]["version"] == "0.2.0"


def test_metrics_from_the_device_itself_before_setup(fresh: tuple[StatusPage, Any]) -> None:
    """The updater's health check reads /metrics on loopback, also on a page nobody set up."""
    page, lan = fresh
    page.view.tick(time.time())  # type: ignore[union-attr]
    assert lan.get("/metrics").status_code == 503  # the office side: set the page up first
    local = https(page.app.test_client())
    local.environ_base["REMOTE_ADDR"] = "127.0.0.1"
    resp = local.get("/metrics")
    assert resp.status_code == 200 and "watchpost_packets_total 123456" in resp.data.decode()
