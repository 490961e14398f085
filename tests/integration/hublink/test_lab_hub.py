"""The demo's hub: the provisioned broker in the lab's `hub` namespace, the appliance reporting
to it from its management address through the bridge's uplink side."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hubkit import DevProc, wait_for

from appliance.config import from_dict
from lab.hub import start_lab_hub


@pytest.mark.root
def test_the_appliance_reports_to_the_lab_hub_through_its_uplink(lab: Any, tmp_path: Path) -> None:
    hub = start_lab_hub(lab, tmp_path)
    sub = dev = None
    lines: list[str] = []
    try:
        sub = lab.popen(
            "hub", "mosquitto_sub", "-h", hub.address, "-p", str(hub.port), "-V", "mqttv5",
            "--cafile", str(hub.ca), "--cert", str(hub.hub_cert), "--key", str(hub.hub_key),
            "-t", "watchpost/v1/#", "-v", "-q", "1",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

        def read() -> None:
            for line in sub.stdout:
                lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        state = tmp_path / "state"
        config = from_dict(
            {
                "device": {"id": hub.device_id, "site": hub.site, "state_dir": str(state)},
                "inline": {"home_nets": ["198.18.0.0/24"]},
                "alerts": {"rate_per_minute": 10_000, "burst": 10_000},
                "hub": {**hub.hub_table, "outbox": str(state / "outbox.sqlite")},
            }
        )
        path = tmp_path / "device.toml"
        path.write_text(tomli_w.dumps(config.to_dict()))
        dev = DevProc(path, wrap=("ip", "netns", "exec", lab.ns("app")))
        dev.start()
        dev.alerts(3)
        root = f"watchpost/v1/{hub.site}/{hub.device_id}"

        def on(sub_topic: str) -> list[dict[str, Any]]:
            out = []
            for line in list(lines):
                topic, _, payload = line.partition(" ")
                if topic == f"{root}/{sub_topic}":
                    out.append(json.loads(payload))
            return out

        wait_for(lambda: len(on("alerts")) >= 3, what="alerts at the lab hub")
        assert [a["watchpost"]["seq"] for a in on("alerts")] == [1, 2, 3]
        # The hub's collector was subscribed before the device connected: every seq from 1.
        wait_for(lambda: hub.stored()[1] == [1, 2, 3], what="the lab collector stored 1..3")
        assert hub.stored()[2] == []  # no gaps
        wait_for(lambda: any(s["state"] == "ready" for s in on("status")), what="status ready")
        # The broker saw the appliance connect from its management address (through the bridge).
        assert "198.18.0.2" in hub.log.read_text()
        # The operator CLI, with the hub identity, sees the device's retained status.
        res = lab.exec(
            "hub", sys.executable, "-m", "appliance", "hub", *hub.operator_args(),
            "devices", "--json", "--wait", "2", check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        devices = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        assert any(hub.device_id in json.dumps(d) and "ready" in json.dumps(d) for d in devices)
        # A signed command goes down and its answer comes back (this stand-in device has no
        # command handler, so the link itself answers, and `send` exits non-zero).
        res = lab.exec(
            "hub", sys.executable, "-m", "appliance", "hub", *hub.operator_args(),
            "send", hub.device_id, "ping", "--timeout", "10", check=False,
        )  # fmt: skip
        assert res.returncode != 0 and "no command handler" in res.stdout + res.stderr
        assert oct(hub.command_key.stat().st_mode & 0o777) == "0o600"
        assert Path(hub.hub_table["command_pubkey"]).read_bytes().startswith(b"-----BEGIN PUBLIC")
    finally:
        if dev is not None:
            dev.stop()
        if sub is not None:
            sub.kill()
            sub.wait()
        hub.stop()
