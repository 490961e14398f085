"""The status page through Flask's test client, over a fake service with real (mock-pin) LEDs."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from werkzeug.security import generate_password_hash

from appliance.alerts.model import eve_time
from appliance.config import ConfigError
from appliance.status.app import StatusPage, component
from appliance.status.auth import SECRET_FILE
from tests.unit.status.conftest import (
    LAN,
    PASSWORD,
    FakeView,
    Rig,
    base_numbers,
    csrf_of,
    https,
    logged_in,
    login,
    make_config,
)

DATA_GETS = ["/", "/api/status", "/api/alerts", "/api/alerts?limit=5", "/metrics"]
ACTIONS = ["/ack", "/identify", "/logout"]


def eve_alert(i: int, ts: float, **over: Any) -> dict[str, Any]:
    eve: dict[str, Any] = {
        "timestamp": eve_time(ts),
        "event_type": "alert",
        "src_ip": "198.18.0.11",
        "src_port": 40000 + i % 1000,
        "dest_ip": "203.0.113.66",
        "dest_port": 443,
        "proto": "TCP",
        "alert": {
            "action": "allowed",
            "signature_id": 9000000 + i,
            "signature": f"Connection to a listed threat #{i}",
            "category": "Known bad host",
            "severity": 1,
        },
        "tls": {"sni": "evil.example.com"},
        "watchpost": {"id": f"id-{i}", "count": 1, "direction": "outbound", "seq": i},
    }
    eve.update(over)
    return eve


# -- who gets in ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DATA_GETS)
def test_every_data_route_needs_a_login(rig: Rig, path: str) -> None:
    resp = rig.client.get(path)
    if path.startswith("/api/"):
        assert resp.status_code == 401 and resp.json == {"error": "login required"}
    elif path == "/metrics":
        assert resp.status_code == 401
    else:
        assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert b"123456" not in resp.data and b"certificate" not in resp.data
    assert rig.view.calls == 0  # nothing was even read


@pytest.mark.parametrize("path", ACTIONS)
def test_actions_need_a_login_even_with_a_valid_token(rig: Rig, path: str) -> None:
    rig.leds.update({"alerts_high": 0})
    rig.leds.update({"alerts_high": 2})
    token = csrf_of(rig.client.get("/login").data)  # an anonymous session's token
    resp = rig.client.post(path, data={"csrf": token})
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert rig.leds.unacked_alerts == 2
    assert rig.leds.shown()["green"] != "fast"


def test_the_login_page_tells_nothing_about_the_office(rig: Rig) -> None:
    text = rig.client.get("/login").data.decode()
    assert "office-7" not in text and "leeds" not in text and "hub.example.net" not in text
    assert 'type="password"' in text


def test_login_wrong_then_right(rig: Rig) -> None:
    resp = login(rig.client, "not the password")
    assert resp.status_code == 401 and b"Wrong password" in resp.data
    assert rig.client.get("/").status_code == 303
    resp = login(rig.client)
    assert resp.status_code == 303
    assert rig.client.get("/").status_code == 200
    assert rig.client.get("/login").status_code == 303  # already in: go to the page
    assert rig.page.stats()["status_logins"] == 1
    assert rig.page.stats()["status_login_failures"] == 1


def test_session_cookie_flags(rig: Rig) -> None:
    resp = login(rig.client)
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Expires=" in cookie
    assert "Secure" in cookie  # the page is HTTPS only


def test_the_cookie_does_not_reveal_the_hash(rig: Rig, password_hash: str) -> None:
    import base64
    import zlib

    cookie = login(rig.client).headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    payload = cookie.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    text = zlib.decompress(raw) if cookie.startswith(".") else raw
    assert password_hash.encode() not in text
    assert password_hash.split("$")[2].encode() not in text
    assert PASSWORD.encode() not in text


def test_logout_revokes_the_session_cookie(rig: Rig) -> None:
    token = logged_in(rig.client)
    stolen = rig.client.get_cookie("watchpost_session")
    assert stolen is not None
    resp = rig.client.post("/logout", data={"csrf": token})
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert rig.client.get("/").status_code == 303
    replay = rig.new_client()
    replay.set_cookie("watchpost_session", stolen.value)
    assert replay.get("/").status_code == 303
    assert replay.get("/api/status").status_code == 401


def test_a_new_password_ends_every_session(rig: Rig, tmp_path: Path) -> None:
    logged_in(rig.client)
    new_hash = generate_password_hash("another long password", method="scrypt:1024:8:1")
    cfg = dataclasses.replace(
        rig.config, status=dataclasses.replace(rig.config.status, password_hash=new_hash)
    )
    rig.page.configure(cfg)
    assert rig.client.get("/").status_code == 303
    assert login(rig.client).status_code == 401
    assert login(rig.client, "another long password").status_code == 303


def test_session_expires(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    logged_in(rig.client)
    start = time.time()
    monkeypatch.setattr(rig.page.sessions, "clock", lambda: start + 8 * 3600 + 1)
    assert rig.client.get("/").status_code == 303
    assert rig.client.get("/api/status").status_code == 401


def test_a_forged_cookie_is_refused(rig: Rig) -> None:
    forged = rig.new_client()
    # A session signed with another key (another device's, or made up).
    other = StatusPage(
        dataclasses.replace(
            rig.config, device=dataclasses.replace(rig.config.device, state_dir="/nonexistent/x")
        )
    )
    other.view = rig.view
    c = https(other.app.test_client())
    c.environ_base["REMOTE_ADDR"] = LAN
    logged_in(c)
    cookie = c.get_cookie("watchpost_session")
    assert cookie is not None
    forged.set_cookie("watchpost_session", cookie.value)
    assert forged.get("/").status_code == 303


# -- CSRF -----------------------------------------------------------------------------------------


def test_login_needs_the_csrf_token(rig: Rig) -> None:
    rig.client.get("/login")
    resp = rig.client.post("/login", data={"password": PASSWORD})
    assert resp.status_code == 403
    resp = rig.client.post("/login", data={"password": PASSWORD, "csrf": "x" * 43})
    assert resp.status_code == 403
    assert rig.client.get("/").status_code == 303
    assert rig.page.stats()["status_csrf_refused"] == 2


@pytest.mark.parametrize("path", ["/ack", "/identify", "/logout"])
def test_actions_refuse_missing_or_wrong_tokens(rig: Rig, path: str) -> None:
    token = logged_in(rig.client)
    rig.leds.update({"alerts_high": 0})
    rig.leds.update({"alerts_high": 4})
    other = rig.new_client()
    other_token = logged_in(other)  # a real token, of another session
    for data in (
        {},
        {"csrf": ""},
        {"csrf": token[:-1] + ("B" if token.endswith("A") else "A")},
        {"csrf": other_token},
    ):
        resp = rig.client.post(path, data=data)
        assert resp.status_code == 403, data
        assert b"Reload the page" in resp.data
    # The right token but from another site's page (the browser says where it came from).
    resp = rig.client.post(path, data={"csrf": token}, headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403
    resp = rig.client.post(path, data={"csrf": token}, headers={"Sec-Fetch-Site": "same-site"})
    assert resp.status_code == 403  # another port of this address
    assert rig.leds.unacked_alerts == 4
    assert rig.leds.shown()["green"] != "fast"
    assert rig.client.get("/").status_code == 200  # still logged in
    resp = rig.client.post(path, data={"csrf": token}, headers={"Origin": "http://localhost"})
    assert resp.status_code == 303


def test_acknowledge_and_identify(rig: Rig) -> None:
    token = logged_in(rig.client)
    rig.leds.update({"alerts_high": 0})
    rig.leds.update({"alerts_high": 3})
    page = rig.client.get("/").data.decode()
    assert 'id="led-red" data-state="blink"' in page
    assert "3 alerts not yet acknowledged" in page
    resp = rig.client.post("/ack", data={"csrf": token})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    assert rig.leds.unacked_alerts == 0
    rig.leds.update({"alerts_high": 3})  # the daemon's next tick
    page = rig.client.get("/").data.decode()
    assert "Acknowledged 3 alerts" in page
    assert 'id="led-red" data-state="off"' in page
    resp = rig.client.post("/identify", data={"csrf": token, "seconds": "30"})
    assert resp.status_code == 303
    page = rig.client.get("/").data.decode()
    assert "blink fast for 30 s" in page
    for led in ("green", "amber", "red"):
        assert f'id="led-{led}" data-state="fast"' in page
    rig.leds.identify(0)


def test_identify_seconds_is_checked(rig: Rig) -> None:
    token = logged_in(rig.client)
    for bad in ("0", "601", "abc", "-5", "1e3", "\uff19"):  # the last: a full-width nine
        resp = rig.client.post("/identify", data={"csrf": token, "seconds": bad})
        assert resp.status_code == 400, bad
        assert b"seconds" in resp.data
    assert rig.leds.shown()["green"] != "fast"


def test_no_leds_running(rig: Rig) -> None:
    rig.view.components.remove(rig.leds)
    rig.view.leds = None
    token = logged_in(rig.client)
    page = rig.client.get("/").data.decode()
    assert 'id="identify"' not in page
    rig.client.post("/identify", data={"csrf": token})
    assert "no LEDs running" in rig.client.get("/").data.decode()


# -- rate limit -----------------------------------------------------------------------------------


def test_wrong_passwords_are_rate_limited_per_client(rig: Rig) -> None:
    for _ in range(3):
        assert login(rig.client, "guess guess").status_code == 401
    resp = login(rig.client)  # even the right password is not tried now: back off first
    assert resp.status_code == 429
    assert int(resp.headers["Retry-After"]) > 0
    assert b"Too many wrong passwords" in resp.data
    assert rig.client.get("/").status_code == 303
    assert rig.page.stats()["status_login_throttled"] == 1
    # Another office computer is not locked out by the first one's guesses.
    other = rig.new_client("198.18.0.12")
    assert login(other).status_code == 303


def test_a_good_login_clears_the_count(rig: Rig) -> None:
    for _ in range(2):
        login(rig.client, "guess guess")
    assert login(rig.client).status_code == 303
    rig.client.post("/logout", data={"csrf": csrf_of(rig.client.get("/").data)})
    for _ in range(2):
        assert login(rig.client, "guess guess").status_code == 401
    assert login(rig.client).status_code == 303


# -- not set up -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password_hash", ["hunter2hunter2", "scrypt:32768:8:1$salt$zz", "scrypt:1048576:8:1$s$00"]
)
def test_an_unusable_password_hash_shows_only_how_to_set_up(
    tmp_path: Path, password_hash: str
) -> None:
    cfg = make_config(tmp_path, password_hash)
    page = StatusPage(cfg, wait=0.1)
    page.view = FakeView(cfg, base_numbers())
    assert page.setup_code is None  # the config has a hash (a broken one): no setup code
    c = https(page.app.test_client())
    c.environ_base["REMOTE_ADDR"] = LAN
    for path in ["/", "/login"]:
        resp = c.get(path)
        assert resp.status_code == 503
        text = resp.data.decode()
        assert "run watchpost passwd" in text
        assert "123456" not in text and "hub.example.net" not in text and "<form" not in text
    for path in ["/api/status", "/api/alerts"]:
        resp = c.get(path)
        assert resp.status_code == 503 and "watchpost passwd" in resp.json["error"]
    local = https(page.app.test_client())  # even from the device itself
    resp = local.get("/metrics")
    assert resp.status_code == 503 and b"123456" not in resp.data
    resp = c.post("/login", data={"password": password_hash})
    assert resp.status_code == 503
    assert page.view.calls == 0


def test_configure_refuses_a_plain_password(rig: Rig) -> None:
    cfg = dataclasses.replace(
        rig.config, status=dataclasses.replace(rig.config.status, password_hash="hunter2")
    )
    with pytest.raises(ConfigError) as e:
        rig.page.configure(cfg)
    assert e.value.key == "status.password_hash"
    assert rig.page.config is rig.config  # nothing changed
    assert login(rig.client).status_code == 303


# -- API ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("limit=1.5", "limit"),
        ("limit=9999999999", "limit"),
        ("lmit=5", "lmit"),
        ("limit=5&since=3", "since"),
    ],
)
def test_bad_api_parameters(rig: Rig, query: str, parameter: str) -> None:
    logged_in(rig.client)
    resp = rig.client.get(f"/api/alerts?{query}")
    assert resp.status_code == 400
    assert resp.json["parameter"] == parameter
    assert resp.json["error"].startswith(f"{parameter}:")


def test_status_api_takes_no_parameters(rig: Rig) -> None:
    logged_in(rig.client)
    resp = rig.client.get("/api/status?verbose=1")
    assert resp.status_code == 400 and resp.json["parameter"] == "verbose"
    assert rig.client.get("/?x=1").status_code == 400


def test_status_api(rig: Rig) -> None:
    logged_in(rig.client)
    rig.leds.update(rig.view.snapshot())
    body = rig.client.get("/api/status").json
    assert body["state"] == "running" and body["mode"] == "monitor"
    assert body["counters"]["packets"] == 123456 and body["counters"]["queue_depth"] == 3
    assert body["hub"]["connected"] is False
    assert body["hub"]["problem"] == "hub certificate rejected: certificate has expired"
    assert "certificate has expired" in body["hub"]["text"]
    assert body["leds"] == {"green": "on", "amber": "blink", "red": "off"}
    assert body["leds_text"]["amber"].startswith("trying to reach the hub")
    assert body["intel"] == {"version": "2026-11-26.1", "indicators": 1500}
    assert body["health"] == "warn"


def test_unknown_api_path_is_json(rig: Rig) -> None:
    logged_in(rig.client)
    resp = rig.client.get("/api/nope")
    assert resp.status_code == 404 and "error" in resp.json


# -- what the page shows --------------------------------------------------------------------------


def test_hub_down_reason_is_shown(rig: Rig) -> None:
    logged_in(rig.client)
    text = rig.client.get("/").data.decode()
    assert "Not connected to the hub (hub.example.net:8883) since" in text
    assert "hub certificate rejected: certificate has expired" in text
    assert "10 min ago" in text
    rig.view.numbers["hub"] = {
        "enabled": True,
        "connected": False,
        "state": "connecting",
        "problem": "cannot resolve hub host 'hub.example.net' (Name or service not known)",
        "since": time.time(),
        "host": "hub.example.net",
        "port": 8883,
    }
    text = rig.client.get("/").data.decode()
    assert "cannot resolve hub host &#39;hub.example.net&#39;" in text


def test_hub_up_and_no_hub(rig: Rig) -> None:
    logged_in(rig.client)
    rig.view.numbers["hub"] = dict(rig.view.numbers["hub"], connected=True, problem="")
    rig.leds.update(rig.view.snapshot())
    text = rig.client.get("/").data.decode()
    assert "All quiet: watching your network." in text
    assert "Connected to the hub (hub.example.net:8883)" in text
    assert 'id="led-amber" data-state="on"' in text
    rig.view.numbers["hub"] = {"enabled": False, "problem": "hub disabled in config"}
    rig.leds.update(rig.view.snapshot())
    text = rig.client.get("/").data.decode()
    assert "No hub configured" in text and 'id="led-amber" data-state="off"' in text


def test_led_fault_is_shown(rig: Rig) -> None:
    logged_in(rig.client)
    rig.leds.update({"running": True, "fail_open_events": 0})
    rig.leds.update({"running": True, "fail_open_events": 9})
    text = rig.client.get("/").data.decode()
    assert 'id="led-red" data-state="on"' in text
    assert "Attention: traffic passed uninspected recently" in text


def test_recent_alerts_from_a_large_eve_file(rig: Rig) -> None:
    logged_in(rig.client)
    start = time.time() - 3600
    block = b"".join(
        json.dumps(eve_alert(i, start)).encode() + b"\n" for i in range(1000)
    )  # ~0.5 MB
    path = Path(rig.config.log.eve)
    with path.open("wb") as f:
        for _ in range(60):  # ~30 MB of older alerts
            f.write(block)
        for i in range(30):
            f.write(json.dumps(eve_alert(100_000 + i, start + i)).encode() + b"\n")
        f.write(b'{"timestamp": "half a line being writ')
    assert path.stat().st_size > 25_000_000
    t0 = time.monotonic()
    body = rig.client.get("/api/alerts?limit=5").json
    assert time.monotonic() - t0 < 30  # only the file's end was read (bound, not a timing claim)
    assert body["limit"] == 5
    sigs = [a["signature"] for a in body["alerts"]]
    assert sigs == [f"Connection to a listed threat #{100_029 - i}" for i in range(5)]
    first = body["alerts"][0]
    assert first["office"] == "198.18.0.11" and first["remote"] == "203.0.113.66"
    assert first["direction"] == "outbound"
    assert first["name"] == "evil.example.com" and first["severity_text"] == "high"
    text = rig.client.get("/").data.decode()
    assert text.count('<li class="alert') == 8
    assert "Connection to a listed threat #100029" in text
    assert "Connection to a listed threat #100009" not in text


def test_alerts_are_plain_words_not_records(rig: Rig) -> None:
    logged_in(rig.client)
    eve = eve_alert(1, time.time())
    eve["alert"]["signature"] = "<script>alert(1)</script>"
    eve["http"] = {"hostname": "x.example", "url": "/login?password=", "http_user_agent": "curl"}
    eve["watchpost"]["details"] = {"user": "bob", "payload_hint": "SECRETPAYLOAD"}
    Path(rig.config.log.eve).write_text(json.dumps(eve) + "\n")
    text = rig.client.get("/").data.decode()
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "SECRETPAYLOAD" not in text and "bob" not in text
    api = rig.client.get("/api/alerts").json["alerts"][0]
    assert set(api) == {
        "id", "key", "sid", "signature", "category", "severity", "severity_text", "detector",
        "office", "remote", "remote_port", "proto", "direction", "name", "action", "first",
        "last", "count", "blocked", "allowed", "acked", "acknowledged", "device_name",
    }  # fmt: skip
    assert "SECRETPAYLOAD" not in json.dumps(api)


def test_no_eve_file_yet(rig: Rig) -> None:
    logged_in(rig.client)
    assert "No alerts recorded." in rig.client.get("/").data.decode()
    assert rig.client.get("/api/alerts").json == {"alerts": [], "total": 0, "page": 1, "limit": 25}


def test_unreadable_eve_path_is_said_not_crashed(rig: Rig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        rig.config, log=dataclasses.replace(rig.config.log, eve=str(tmp_path))
    )
    rig.page.config = cfg  # a directory: reading it fails
    logged_in(rig.client)
    resp = rig.client.get("/")
    assert resp.status_code == 200 and b"No alerts recorded" in resp.data
    assert rig.client.get("/api/alerts").status_code == 200


# -- numbers from the main loop -------------------------------------------------------------------


def test_numbers_are_taken_in_the_main_loop(rig: Rig) -> None:
    rig.view.running = True
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.02):
            rig.view.tick(time.monotonic())

    t = threading.Thread(target=loop)
    t.start()
    try:
        logged_in(rig.client)
        body = rig.client.get("/api/status").json
        assert body["counters"]["packets"] == 123456 and body["data_age_s"] < 1.5
        idle_calls = rig.view.calls
        assert idle_calls >= 1
    finally:
        stop.set()
        t.join()


def test_a_stuck_main_loop_is_reported_not_waited_for(rig: Rig) -> None:
    rig.view.running = True
    logged_in(rig.client)
    body = rig.client.get("/api/status").json  # no tick ever
    assert body["state"] == "unknown" and body["headline"] == "No data from the watch service yet."
    rig.view.tick(time.monotonic())  # one tick, then the loop hangs
    rig.page._snap_at -= 60  # as if that was a minute ago
    body = rig.client.get("/api/status").json
    assert body["health"] == "bad" and "has not reported for 6" in body["headline"]
    assert body["data_age_s"] >= 60


def test_ticks_keep_no_numbers_when_nobody_looks_but_sample_the_charts(rig: Rig) -> None:
    rig.view.running = True
    for i in range(5):
        rig.page.tick(time.monotonic(), {"packets": 100 * (i + 1)})
    assert rig.page._snap is None  # the page keeps no numbers when nobody looks
    assert rig.view.calls == 0
    assert rig.page.series.rows()["fine"] == 1  # one sample per SAMPLE_S: only the first


# -- headers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/login", "/api/status", "/api/alerts", "/nope", "/metrics"])
def test_security_headers(rig: Rig, path: str) -> None:
    if path != "/login":
        logged_in(rig.client)
    resp = rig.client.get(path)
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert resp.headers["Cache-Control"] == "no-store"


def test_no_inline_script_or_style_in_pages(rig: Rig) -> None:
    token = logged_in(rig.client)
    rig.client.post("/ack", data={"csrf": token})
    pages = [rig.client.get("/").data.decode(), rig.new_client().get("/login").data.decode()]
    for html in pages:
        assert "<script>" not in html and "style=" not in html and "<style" not in html
        assert " on" + "click=" not in html


def test_static_files_are_served_without_login(rig: Rig) -> None:
    for name in ("style.css", "refresh.js"):
        resp = rig.client.get(f"/static/{name}")
        assert resp.status_code == 200
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        resp.close()


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_from_loopback_or_logged_in(rig: Rig) -> None:
    local = rig.new_client("127.0.0.1")
    resp = local.get("/metrics")
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    text = resp.data.decode()
    assert "watchpost_packets_total 123456" in text
    assert "watchpost_hub_connected 0" in text
    assert "watchpost_up 1" in text
    assert rig.new_client("::1").get("/metrics").status_code == 200
    assert rig.client.get("/metrics").status_code == 401
    logged_in(rig.client)
    assert rig.client.get("/metrics").status_code == 200


# -- the component --------------------------------------------------------------------------------


def test_secret_key_is_kept_0600_and_survives_a_restart(rig: Rig) -> None:
    key = Path(rig.config.device.state_dir) / SECRET_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    logged_in(rig.client)
    cookie = rig.client.get_cookie("watchpost_session")
    assert cookie is not None
    again = StatusPage(rig.config)  # the daemon restarted
    again.view = rig.view
    c = https(again.app.test_client())
    c.environ_base["REMOTE_ADDR"] = LAN
    c.set_cookie("watchpost_session", cookie.value)
    assert c.get("/").status_code == 200


def test_build_and_listen_off(tmp_path: Path, password_hash: str) -> None:
    cfg = make_config(tmp_path, password_hash, listen="")
    assert component(cfg) is None
    page = component(make_config(tmp_path, password_hash))
    assert isinstance(page, StatusPage)


def _get(url: str) -> tuple[int, dict[str, str]]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the page's own self-signed certificate
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(url, timeout=5) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_serves_moves_and_stops(tmp_path: Path, password_hash: str) -> None:
    cfg = make_config(tmp_path, password_hash)
    page = StatusPage(cfg)
    page.start(FakeView(cfg, base_numbers()))
    try:
        host, port = page.address
        assert host == "127.0.0.1" and port > 0
        code, headers = _get(f"https://127.0.0.1:{port}/")
        assert code == 303 and headers["Location"] == "/login"
        assert page.stats()["status_serving"] is True
        moved = dataclasses.replace(cfg, status=dataclasses.replace(cfg.status, listen="[::1]:0"))
        page.configure(moved)
        new_port = page.address[1]
        assert _get(f"https://[::1]:{new_port}/login")[0] == 200
        with pytest.raises(urllib.error.URLError):
            _get(f"https://127.0.0.1:{port}/login")
        off = dataclasses.replace(cfg, status=dataclasses.replace(cfg.status, listen=""))
        page.configure(off)
        assert page.stats()["status_serving"] is False
        with pytest.raises(urllib.error.URLError):
            _get(f"https://[::1]:{new_port}/login")
        page.configure(cfg)  # and on again
        assert _get(f"https://127.0.0.1:{page.address[1]}/login")[0] == 200
    finally:
        page.stop()
    assert page.stats()["status_serving"] is False


def test_a_busy_address_is_refused_with_its_key(tmp_path: Path, password_hash: str) -> None:
    cfg = make_config(tmp_path, password_hash)
    first = StatusPage(cfg)
    first.start(FakeView(cfg))
    try:
        busy = f"127.0.0.1:{first.address[1]}"
        second = StatusPage(
            dataclasses.replace(cfg, status=dataclasses.replace(cfg.status, listen=busy))
        )
        with pytest.raises(ConfigError) as e:
            second.start(FakeView(cfg))
        assert e.value.key == "status.listen" and "cannot listen on" in str(e.value)
        # A reload asking for a busy address is refused; the page stays where it was.
        own = dataclasses.replace(cfg, status=dataclasses.replace(cfg.status, listen="[::1]:0"))
        second.configure(own)
        port = second.address[1]
        busy_cfg = dataclasses.replace(cfg, status=dataclasses.replace(cfg.status, listen=busy))
        with pytest.raises(ConfigError):
            second.configure(busy_cfg)
        assert second.config is own and _get(f"https://[::1]:{port}/login")[0] == 200
        second.stop()
    finally:
        first.stop()


def test_state_dir_not_writable_still_serves(tmp_path: Path, password_hash: str) -> None:
    if os.geteuid() == 0:
        state = "/proc/watchpost-no-such-dir"  # root writes anywhere else
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        state = str(ro)
    cfg = make_config(tmp_path, password_hash)
    cfg = dataclasses.replace(cfg, device=dataclasses.replace(cfg.device, state_dir=state))
    page = StatusPage(cfg)
    page.view = FakeView(cfg, base_numbers())
    c = https(page.app.test_client())
    c.environ_base["REMOTE_ADDR"] = LAN
    logged_in(c)


def test_oversized_posts_are_refused(rig: Rig) -> None:
    token = csrf_of(rig.client.get("/login").data)
    resp = rig.client.post("/login", data={"csrf": token, "password": "x" * 40_000})
    assert resp.status_code == 413
    resp = rig.client.post("/login", data={"csrf": token, "password": "x" * 5_000})
    assert resp.status_code == 401  # too long to be the password: refused without hashing
    assert rig.client.get("/").status_code == 303
