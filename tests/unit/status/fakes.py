"""Numbers and config shared by the status page's unit and e2e tests (the daemon itself is
`tests.fakes.FakeView`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.config import Config, DeviceConfig, InlineConfig, LogConfig, StatusConfig

PASSWORD = "correct horse battery"


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
