"""The office owner's page in a real browser against the real daemon in the lab.

The namespace lab, the daemon inline (`watchpost run`), demo traffic (names announced over DHCP
and mDNS, a call to a listed host), and headless Chromium reaching the page from the host through
the demo's relay (connections opened inside the appliance namespace). One walk through the page
as a new owner: first-run setup with the code from the daemon's log, the alert raised by the lab
traffic shown with the device's name, its own page with what to do, acknowledging it (the red
light stops), charts with data, the weekly report printed, no console errors, axe-core finding no
serious or critical problem on any page. Screenshots at desktop (1280) and phone (390) width go to
``artifacts/e2e/`` (or ``$WATCHPOST_ARTIFACTS``). The page from the uplink side: no answer.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser import chromium, console_errors, needs_chromium

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("WATCHPOST_ARTIFACTS", Path(__file__).parents[2] / "artifacts"))

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    needs_chromium,
]

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from lab import demo  # noqa: E402
from lab.netns import Lab, LabDaemon, lab_config, stop  # noqa: E402

WAIT_S = 20.0  # upper bound for the page or the lab to react, never a timing assertion
PASSWORD = "green tea and biscuits"


class Site:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        cfg = lab_config(workdir, status={"listen": demo.PAGE_LISTEN})
        self.daemon = LabDaemon(lab, cfg).start()
        self.ctx = demo.DemoContext(lab=lab, workdir=workdir, deadline=float("inf"))
        self.relay = demo.open_page_relay(self.ctx, host_port=0)
        self.url = self.relay.url
        self.code = demo.setup_code([workdir / "watchpost.log", workdir / "daemon.log"])

    def close(self) -> None:
        self.relay.close()
        self.daemon.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    lab = Lab("wppage")
    lab.up()
    s = Site(lab, tmp_path_factory.mktemp("page-lab"))
    try:
        yield s
    finally:
        s.close()
        lab.down()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = chromium(tmp_path_factory.mktemp("chromium-page"))
    yield driver
    driver.quit()


def wait_for(driver: Any, condition: Any, timeout: float = WAIT_S) -> Any:
    return WebDriverWait(driver, timeout).until(condition)


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def axe_problems(driver: Any) -> list[str]:
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const brief = (v) => ({id: v.id, impact: v.impact, n: v.nodes.length,
                               where: v.nodes.slice(0, 2).map((n) => n.target.join(" "))});
        axe.run(document, {resultTypes: ["violations"]})
          .then((r) => done(JSON.stringify(r.violations.map(brief))))
          .catch((e) => done(JSON.stringify([{id: "axe-error", impact: "critical", n: 1,
                                              where: [String(e)]}])));
        """
    )
    return [
        f"{v['id']} ({v['impact']}, {v['n']}): {v['where']}"
        for v in json.loads(result)
        if v["impact"] in ("serious", "critical")
    ]


def shoot(driver: Any, name: str) -> None:
    """Full-page screenshots at desktop and phone width."""
    out = ARTIFACTS / "e2e"
    out.mkdir(parents=True, exist_ok=True)
    for width, label in ((1280, "desktop"), (390, "phone")):
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 500},
        )
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": min(height, 4000), "scale": 1},
            },
        )
        (out / f"{name}-{label}.png").write_bytes(base64.b64decode(shot["data"]))
        if width < 500:  # readable on a phone: nothing wider than the screen
            assert driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth"
            ), f"{name} is wider than a phone"
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def check_page(driver: Any, name: str) -> None:
    assert console_errors(driver) == [], name
    assert axe_problems(driver) == [], name
    shoot(driver, name)


def test_uplink_side_gets_no_answer_office_side_gets_https(site: Site) -> None:
    url = "https://198.18.0.2:8443/login"
    office = site.lab.exec(
        "pc1", "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", url, check=False
    )
    assert office.stdout == "303", office  # not set up yet: sent to /setup
    router = site.lab.exec("rtr", "curl", "-sk", "-m", "3", url, check=False)
    assert router.returncode in (7, 28), router  # no answer from the uplink side
    internet = site.lab.exec("atk", "curl", "-sk", "-m", "3", url, check=False)
    assert internet.returncode in (7, 28), internet
    plain = site.lab.exec("pc1", "curl", "-s", "-m", "5", "http://198.18.0.2:8443/", check=False)
    assert "Watchpost" not in plain.stdout  # HTTPS only
    rebound = site.lab.exec(
        "pc1", "curl", "-sk", "-m", "5", "-H", "Host: evil.example", url, check=False
    )
    assert "Host header refused" in rebound.stdout


def test_the_owner_walks_through_the_page(site: Site, browser: Any) -> None:
    assert site.code, "the daemon logged no setup code"
    # Demo-like traffic: names announced, then a call to a listed host from pc1.
    demo.step_names(site.ctx)
    deadline = time.monotonic() + WAIT_S
    store_path = site.workdir / "state" / "inventory.sqlite"
    while time.monotonic() < deadline and not store_path.exists():
        time.sleep(0.2)
    site.lab.exec(
        "pc1",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-m",
        "5",
        "http://c2.example.net/gate.php",
        check=False,
    )
    site.lab.exec(
        "pc1", "curl", "-s", "-o", "/dev/null", "-m", "5", "http://www.example.com/", check=False
    )
    # Someone on the internet reaches pc2's remote-desktop port (a high-severity alert).
    server = site.lab.start_http("pc2", 3389)
    try:
        for _ in range(2):
            site.lab.exec(
                "atk",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "5",
                "http://198.18.0.12:3389/",
                check=False,
            )
    finally:
        stop(server)

    # First run: the setup code, then a password.
    browser.get(site.url + "/")
    wait_for(browser, ec.presence_of_element_located((By.ID, "setup-form")))
    assert browser.current_url == site.url + "/setup"
    check_page(browser, "setup")
    browser.find_element(By.ID, "code").send_keys(site.code.lower())
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "again").send_keys(PASSWORD)
    browser.find_element(By.ID, "setup-button").click()
    wait_for(browser, ec.presence_of_element_located((By.ID, "headline")))
    assert "Password set" in browser.find_element(By.TAG_NAME, "main").text
    assert site.relay.url and text_of(browser, "fingerprint").count(":") == 31

    # The alert from the lab traffic, with the device's DHCP name.
    def named_alert(d: Any) -> bool:
        d.get(site.url + "/alerts")
        return "reception-pc" in text_of(d, "alert-list") and "Threat intel" in text_of(
            d, "alert-list"
        )

    wait_for(browser, named_alert)
    listing = text_of(browser, "alert-list")
    assert "reception-pc (198.18.0.11)" in listing
    check_page(browser, "alerts")
    browser.get(site.url + "/")
    wait_for(
        browser, lambda d: d.find_element(By.ID, "led-red").get_attribute("data-state") == "blink"
    )
    check_page(browser, "status")

    # Its own page says what to do; acknowledge it.
    browser.get(site.url + "/alerts?severity=high")
    link = browser.find_element(By.CSS_SELECTOR, "#alert-list li.alert .sig a")
    assert "Exposed service" in link.text
    link.click()
    wait_for(browser, ec.presence_of_element_located((By.ID, "todo")))
    assert "What to do" in text_of(browser, "todo") and "VPN" in text_of(browser, "todo")
    assert "office-printer (198.18.0.12)" in text_of(browser, "timeline")
    check_page(browser, "alert")
    for _ in range(5):  # every alert of the run (the listed call raises more than one)
        browser.get(site.url + "/alerts?acked=no")
        if "0 alerts" in text_of(browser, "count"):
            break
        browser.find_element(By.ID, "ack-matching").click()
        wait_for(browser, ec.presence_of_element_located((By.ID, "count")))
    assert "0 alerts" in text_of(browser, "count")
    browser.get(site.url + "/")
    wait_for(
        browser,
        lambda d: (
            (d.get(site.url + "/"), d.find_element(By.ID, "led-red").get_attribute("data-state"))[1]
            == "off"
        ),
    )

    # Devices by name (mDNS too), and renaming one.
    def both_named(d: Any) -> bool:
        d.get(site.url + "/devices")
        return "office-printer" in text_of(d, "device-list")

    wait_for(browser, both_named)
    check_page(browser, "devices")

    # Charts with data from the daemon's own store.
    def charted(d: Any) -> bool:
        d.get(site.url + "/charts")
        label = d.find_element(By.CSS_SELECTOR, "#chart-packets svg").get_attribute("aria-label")
        return "peak 0 " not in label and "no data" not in label

    wait_for(browser, charted, timeout=60)
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-packets polyline")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-severity rect.sev1")
    check_page(browser, "charts")

    # The weekly report prints.
    browser.get(site.url + "/report")
    assert "reception-pc" in text_of(browser, "report")
    check_page(browser, "report")
    pdf = browser.execute_cdp_cmd("Page.printToPDF", {"printBackground": False})
    assert base64.b64decode(pdf["data"])[:5] == b"%PDF-"
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    assert not browser.find_element(By.CSS_SELECTOR, "nav.tabs").is_displayed()
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})

    browser.get(site.url + "/settings")
    assert "monitor mode" in text_of(browser, "settings")
    check_page(browser, "settings")
    browser.get(site.url + "/mode")
    check_page(browser, "mode")
