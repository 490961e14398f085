"""A status page over the fake daemon view: real Leds on gpiozero's MockFactory, a real EVE
file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from gpiozero.pins.mock import MockFactory
from werkzeug.security import generate_password_hash

from appliance.config import Config
from appliance.leds import Leds
from appliance.status.app import StatusPage
from tests.fakes import FakeView
from tests.unit.status.fakes import PASSWORD, base_numbers, make_config

__all__ = ["PASSWORD", "FakeView", "base_numbers", "make_config"]

LAN = "198.18.0.11"  # an office computer
OUI = Path(__file__).parent / "oui-sample.txt"  # a few lines in the format of ieee-data's file


@pytest.fixture(scope="session")
def password_hash() -> str:
    # A cheap scrypt (N=1024) keeps the many logins fast; `watchpost passwd` uses werkzeug's
    # default cost (tested in test_passwd).
    return generate_password_hash(PASSWORD, method="scrypt:1024:8:1")


def https(client: FlaskClient) -> FlaskClient:
    """The page is served over HTTPS only (its cookies are Secure)."""
    client.environ_base["wsgi.url_scheme"] = "https"
    client.environ_base["HTTP_HOST"] = "localhost"
    return client


@dataclass
class Rig:
    page: StatusPage
    view: FakeView
    leds: Leds
    client: FlaskClient
    config: Config

    def new_client(self, addr: str = LAN, **kw: Any) -> FlaskClient:
        c = self.page.app.test_client(**kw)
        https(c)
        c.environ_base["REMOTE_ADDR"] = addr
        return c


@pytest.fixture
def rig(tmp_path: Path, password_hash: str) -> Iterator[Rig]:
    cfg = make_config(tmp_path, password_hash)
    leds = Leds(cfg.leds, factory=MockFactory())
    view = FakeView(cfg, base_numbers(), [leds], leds=leds)
    page = StatusPage(cfg, wait=0.2, oui_path=str(OUI))
    view.components.append(page)
    page.view = view  # what start(view) sets, without serving on a socket
    client = https(page.app.test_client())
    client.environ_base["REMOTE_ADDR"] = LAN
    r = Rig(page, view, leds, client, cfg)
    yield r
    page.stop()
    leds.close()


def csrf_of(html: bytes | str) -> str:
    text = html.decode() if isinstance(html, bytes) else html
    m = re.search(r'name="csrf" value="([^"]+)"', text)
    assert m, "no CSRF field in the page"
    return m.group(1)


def login(client: FlaskClient, password: str = PASSWORD) -> Any:
    token = csrf_of(client.get("/login").data)
    return client.post("/login", data={"csrf": token, "password": password})


def logged_in(client: FlaskClient) -> str:
    """Log in; returns the CSRF token of the status page."""
    resp = login(client)
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    return csrf_of(page.data)
