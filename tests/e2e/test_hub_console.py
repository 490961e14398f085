"""The analyst console in headless Chromium, over TLS with its self-signed certificate: log in,
fleet, alert search, indicators, at desktop and phone width; screenshots kept in the test's
temp dir; no console errors. Skipped when Chromium, its driver or selenium is missing."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from hub import correlate
from hub.console import users
from hub.console.app import create_app
from hub.console.tls import ensure_cert
from tests.e2e.browser import chromium, console_errors, needs_chromium
from tests.unit.hub.offices import SCANNER, WEEK_START, filled_store

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = needs_chromium
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PW = "correct horse battery"


def test_console_pages_desktop_and_phone(tmp_path: Path) -> None:
    store = filled_store(tmp_path / "db")
    correlate.run(store, correlate.Policy(min_offices=3), WEEK_START + 3 * 86400)
    users.add(tmp_path / "users.json", "olga", PW, "operator")
    app = create_app(store, tmp_path / "users.json", tmp_path / "reports")
    cert, key = ensure_cert(tmp_path / "state")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    base = f"https://127.0.0.1:{server.server_address[1]}"
    driver = chromium(tmp_path / "profile")
    shots = tmp_path / "shots"
    shots.mkdir()
    try:
        driver.get(base + "/alerts")
        driver.find_element(By.NAME, "user").send_keys("olga")
        driver.find_element(By.NAME, "password").send_keys(PW)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        WebDriverWait(driver, 10).until(ec.presence_of_element_located((By.ID, "alerts")))
        assert driver.current_url.endswith("/alerts")
        for width, height, name in ((1280, 900, "desktop"), (390, 844, "phone")):
            driver.set_window_size(width, height)
            for page, element in (("/", "fleet"), ("/alerts", "alerts"),
                                  ("/indicators", "indicators")):  # fmt: skip
                driver.get(base + page)
                el = driver.find_element(By.ID, element)
                assert el.is_displayed()
                driver.save_screenshot(str(shots / f"{name}{page.replace('/', '-')}.png"))
            # Nothing sticks out sideways on the page itself (wide tables scroll in their box).
            assert driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1"
            )
        driver.get(base + "/indicators")
        assert SCANNER in driver.page_source
        driver.find_element(By.XPATH, "//button[text()='Approve']").click()
        WebDriverWait(driver, 10).until(ec.presence_of_element_located((By.ID, "indicators")))
        assert correlate.indicators(store)[0]["state"] == "approved"
        errors = console_errors(driver)
        assert not errors, errors
    finally:
        driver.quit()
        server.shutdown()
        store.close()
    print(f"screenshots in {shots}")
