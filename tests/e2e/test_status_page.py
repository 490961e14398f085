"""The status page in a real browser: headless Chromium against the real app on 127.0.0.1.

One browser for the module; the appliance is the real page, the real LEDs (gpiozero's mock
pins) and, for the hub test, the real hub link with certificates from the project's own
provisioning, all ticked by a thread standing in for the daemon's main loop (in the order of
appliance.service.wiring), over the fake daemon view (tests.fakes.FakeView). Skipped, with the
reason, when Chromium, its driver or selenium is missing.
"""

from __future__ import annotations

import dataclasses
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory
from werkzeug.security import generate_password_hash

from appliance.config import Config, from_dict
from appliance.hublink.link import HubLink
from appliance.leds import Leds
from appliance.status.app import StatusPage
from hub import provisioning as prov
from tests.e2e.browser import chromium, needs_chromium
from tests.fakes import FakeView
from tests.unit.status.fakes import PASSWORD, base_numbers, make_config

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
)
pytestmark = needs_chromium

from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 10.0  # an upper bound for the page to react, never a timing assertion
HASH = generate_password_hash(PASSWORD, method="scrypt:1024:8:1")


class Appliance:
    """The page served for real, over the fake daemon view whose main loop is a thread."""

    def __init__(self, tmp: Path, config: Config | None = None, link: Any = None) -> None:
        cfg = config or make_config(tmp, HASH)
        self.leds = Leds(cfg.leds, factory=MockFactory())
        self.service = FakeView(cfg, base_numbers(), leds=self.leds)
        self.service.numbers["alerts_high"] = 0
        if link is not None:
            del self.service.numbers["hub"]  # the link's own stats say it
        self.page = StatusPage(cfg)
        self.link = link
        self.service.components = [self.leds, self.page, *([link] if link else [])]
        for comp in self.service.components:
            comp.start(self.service)
        self.service.running = True
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._main_loop, name="fake-main-loop")
        self._loop.start()
        self.url = f"https://127.0.0.1:{self.page.address[1]}"

    def _main_loop(self) -> None:
        while not self._stop.wait(0.1):
            self.service.tick(time.monotonic())

    def raise_alerts(self, n: int) -> None:
        self.service.numbers["alerts_high"] += n

    def close(self) -> None:
        self._stop.set()
        self._loop.join()
        if self.link is not None:
            self.link.close()
        self.page.stop()
        self.leds.close()


class Attacker(http.server.BaseHTTPRequestHandler):
    """Another site (same address, another port) with a form posting to the page's /ack."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><title>free prizes</title>"
            f'<form method="post" action="{self.target}/ack">'
            '<button id="go" type="submit">Claim</button></form>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = Appliance(tmp_path_factory.mktemp("appliance"))
    yield app
    app.close()


@pytest.fixture(scope="module")
def attacker(appliance: Appliance) -> Iterator[str]:
    handler = type("Handler", (Attacker,), {"target": appliance.url})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    t.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"), 390, 844)  # a phone
    yield driver
    driver.quit()


@pytest.fixture
def fresh(browser: Any, appliance: Appliance) -> Any:
    """A browser with no session on the page."""
    browser.get(appliance.url + "/login")
    browser.delete_all_cookies()
    return browser


def wait_for(driver: Any, condition: Any) -> Any:
    return WebDriverWait(driver, WAIT_S).until(condition)


def log_in(driver: Any, appliance: Appliance, password: str = PASSWORD) -> None:
    driver.get(appliance.url + "/")
    wait_for(driver, ec.presence_of_element_located((By.ID, "password")))
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def led(driver: Any, name: str) -> str:
    return str(driver.find_element(By.ID, f"led-{name}").get_attribute("data-state"))


def test_logged_out_visitors_land_on_the_login_form(fresh: Any, appliance: Appliance) -> None:
    fresh.get(appliance.url + "/")
    assert fresh.current_url == appliance.url + "/login"
    assert fresh.find_element(By.ID, "password").get_attribute("type") == "password"
    assert "123456" not in fresh.page_source
    log_in(fresh, appliance, "not the password")
    wait_for(fresh, ec.presence_of_element_located((By.ID, "login-error")))
    assert text_of(fresh, "login-error") == "Wrong password."


def test_log_in_and_see_status_hub_reason_and_leds(fresh: Any, appliance: Appliance) -> None:
    log_in(fresh, appliance)
    wait_for(fresh, ec.presence_of_element_located((By.ID, "headline")))
    assert fresh.current_url == appliance.url + "/"
    assert text_of(fresh, "headline") == "Watching your network, but not connected to the hub."
    assert "hub certificate rejected: certificate has expired" in text_of(fresh, "hub-text")
    assert "123,456" in text_of(fresh, "count-packets")
    assert led(fresh, "green") == "on" and led(fresh, "amber") == "blink"
    assert led(fresh, "red") == "off"
    assert "trying to reach the hub" in text_of(fresh, "led-amber")
    # The stylesheet applies (no CDN, same origin) and the page fits a phone's width.
    colour = fresh.find_element(By.CSS_SELECTOR, "#led-green .led").value_of_css_property(
        "background-color"
    )
    assert colour == "rgba(34, 177, 76, 1)"
    assert fresh.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    # Nothing on the page broke the Content-Security-Policy (no inline script or style).
    problems = [
        e["message"] for e in fresh.get_log("browser") if "Content Security Policy" in e["message"]
    ]
    assert problems == []


def test_acknowledge_alerts(fresh: Any, appliance: Appliance) -> None:
    log_in(fresh, appliance)
    appliance.raise_alerts(2)
    wait_for(fresh, lambda d: appliance.leds.unacked_alerts == 2)
    fresh.get(appliance.url + "/")
    assert led(fresh, "red") == "blink"
    assert text_of(fresh, "unacked") == "2 alerts not yet acknowledged."
    fresh.find_element(By.ID, "ack").click()
    wait_for(fresh, ec.text_to_be_present_in_element((By.TAG_NAME, "main"), "Acknowledged 2"))
    assert appliance.leds.unacked_alerts == 0
    assert led(fresh, "red") == "off"
    assert text_of(fresh, "unacked") == "No alerts waiting."


def test_a_post_without_the_csrf_token_is_refused(
    fresh: Any, appliance: Appliance, attacker: str
) -> None:
    log_in(fresh, appliance)
    appliance.raise_alerts(1)
    wait_for(fresh, lambda d: appliance.leds.unacked_alerts == 1)
    # Another site's form, submitted by the logged-in browser.
    fresh.get(attacker)
    fresh.find_element(By.ID, "go").click()
    wait_for(fresh, ec.presence_of_element_located((By.ID, "error")))
    assert "did not come from this page" in text_of(fresh, "error")
    # Our own form with its token taken out.
    fresh.get(appliance.url + "/")
    fresh.execute_script("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    fresh.find_element(By.ID, "ack").click()
    wait_for(fresh, ec.presence_of_element_located((By.ID, "error")))
    assert appliance.leds.unacked_alerts == 1
    fresh.get(appliance.url + "/")
    assert led(fresh, "red") == "blink"  # still logged in, nothing acknowledged
    appliance.leds.ack()


def test_log_out(fresh: Any, appliance: Appliance) -> None:
    log_in(fresh, appliance)
    wait_for(fresh, ec.presence_of_element_located((By.ID, "logout")))
    fresh.find_element(By.ID, "logout").click()
    wait_for(fresh, ec.url_to_be(appliance.url + "/login"))
    fresh.get(appliance.url + "/")
    assert fresh.current_url == appliance.url + "/login"
    fresh.get(appliance.url + "/api/status")
    assert "login required" in fresh.page_source


def test_the_page_refreshes_itself(fresh: Any, appliance: Appliance) -> None:
    appliance.page.refresh_s = 1
    log_in(fresh, appliance)
    wait_for(fresh, ec.presence_of_element_located((By.ID, "headline")))
    fresh.execute_script("document.body.dataset.marker = 'before'")
    appliance.service.numbers["packets"] = 999_999
    try:
        WebDriverWait(fresh, WAIT_S).until(
            lambda d: d.execute_script("return document.body.dataset.marker") is None
        )
    except TimeoutException:
        pytest.fail(f"the page did not reload itself within {WAIT_S:g} s")
    finally:
        appliance.page.refresh_s = 15
    wait_for(fresh, ec.text_to_be_present_in_element((By.ID, "count-packets"), "999,999"))


@pytest.fixture(scope="module")
def hub_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, int]]:
    """The real hub link, enrolled with a real device certificate, dialling a port where no
    broker listens."""
    tmp = tmp_path_factory.mktemp("hub-down")
    prov.create_ca(tmp / "ca")
    prov.issue_device(tmp / "ca", "office-7", "leeds")
    ident = tmp / "ca" / "devices" / "office-7"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nobody listens on it
    base = make_config(tmp, HASH)
    cfg = from_dict(
        {
            "device": {"id": "office-7", "site": "leeds", "state_dir": base.device.state_dir},
            "inline": {"home_nets": ["198.18.0.0/24"]},
            "status": {"password_hash": HASH},
            "log": {"eve": base.log.eve, "file": ""},
            "hub": {
                "host": "127.0.0.1",
                "port": port,
                "ca": str(ident / "ca.pem"),
                "cert": str(ident / "device.pem"),
                "key": str(ident / "device.key"),
                "outbox": str(tmp / "outbox.sqlite"),
            },
        }
    )
    # Any free port for the page (the config's own check wants a fixed one).
    cfg = dataclasses.replace(cfg, status=dataclasses.replace(cfg.status, listen="127.0.0.1:0"))
    app = Appliance(tmp, cfg, HubLink(cfg))
    yield app, port
    app.close()


def test_an_unreachable_hub_is_explained_and_inspection_goes_on(
    fresh: Any, hub_down: tuple[Appliance, int]
) -> None:
    appliance, port = hub_down
    log_in(fresh, appliance)
    reason = f"connection refused by 127.0.0.1:{port} (no broker listening?)"

    def explained(d: Any) -> bool:
        d.get(appliance.url + "/")
        return reason in text_of(d, "hub-text")

    wait_for(fresh, explained)
    assert f"Not connected to the hub (127.0.0.1:{port}) since" in text_of(fresh, "hub-text")
    assert reason in text_of(fresh, "summary")
    assert led(fresh, "amber") == "blink" and led(fresh, "green") == "on"
    assert "123,456" in text_of(fresh, "count-packets")  # the packet path is not held up
