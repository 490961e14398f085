"""A status page over a fake service: real Leds on gpiozero's MockFactory, a real EVE file."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from gpiozero.pins.mock import MockFactory
from werkzeug.security import generate_password_hash

from appliance.config import Config, DeviceConfig, InlineConfig, LogConfig, StatusConfig
from appliance.leds import Leds
from appliance.status.app import StatusPage

PASSWORD = "correct horse battery"
LAN = "198.18.0.11"  # an office computer


@pytest.fixture(scope="session")
def password_hash() -> str:
    # A cheap scrypt (N=1024) keeps the many logins fast; `watchpost passwd` uses werkzeug's
    # default cost (tested in test_passwd).
    return generate_password_hash(PASSWORD, method="scrypt:1024:8:1")


@dataclass
class FakeService:
    """What the page reads of `appliance.service.Service`: `running`, `components`, `stats()`
    (the service's own numbers plus each component's, as Service.stats merges them)."""

    numbers: dict[str, Any] = field(default_factory=dict)
    components: list[Any] = field(default_factory=list)
    running: bool = False
    calls: int = 0

    def stats(self) -> dict[str, Any]:
        self.calls += 1
        out = dict(self.numbers)
        for comp in self.components:
            fn = getattr(comp, "stats", None)
            if fn is not None:
                for k, v in fn().items():
                    out.setdefault(k, v)
        return out


def base_numbers() -> dict[str, Any]:
    return {
        "state": "running",
        "version": "0.1.0",
        "mode": "monitor",
        "uptime": 7260.0,
        "packets": 123456,
        "flows": 42,
        "alerts": 7,
        "fail_open_events": 0,
        "queue_depth": 3,
        "blocked_packets": 0,
        "intel_version": "2026-11-26.1",
        "intel_indicators": 1500,
        "hub": {
            "enabled": True,
            "connected": False,
            "state": "down",
            "problem": "hub certificate rejected: certificate has expired",
            "since": time.time() - 600,
            "host": "hub.example.net",
            "port": 8883,
        },
    }


def make_config(tmp_path: Path, password_hash: str, listen: str = "127.0.0.1:0") -> Config:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return Config(
        device=DeviceConfig(id="office-7", site="leeds", state_dir=str(state)),
        inline=InlineConfig(home_nets=("198.18.0.0/24",)),
        status=StatusConfig(listen=listen, password_hash=password_hash),
        log=LogConfig(eve=str(tmp_path / "eve.json"), file=""),
    )


@dataclass
class Rig:
    page: StatusPage
    service: FakeService
    leds: Leds
    client: FlaskClient
    config: Config

    def new_client(self, addr: str = LAN, **kw: Any) -> FlaskClient:
        c = self.page.app.test_client(**kw)
        c.environ_base["REMOTE_ADDR"] = addr
        return c


@pytest.fixture
def rig(tmp_path: Path, password_hash: str) -> Iterator[Rig]:
    cfg = make_config(tmp_path, password_hash)
    leds = Leds(cfg.leds, factory=MockFactory())
    service = FakeService(base_numbers(), [leds])
    page = StatusPage(cfg, wait=0.2)
    service.components.append(page)
    page.service = service  # what start(service) sets, without serving on a socket
    client = page.app.test_client()
    client.environ_base["REMOTE_ADDR"] = LAN
    r = Rig(page, service, leds, client, cfg)
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
