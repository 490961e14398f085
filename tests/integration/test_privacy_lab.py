"""With pseudonymisation on (and no key configured), nothing the hub receives in a lab run holds
an office address in any form: alerts from real traffic, status, telemetry, command answers
(`status`, `get-config`, `logs`). Everything the broker delivers is scanned."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.hub import start_lab_hub
from lab.netns import Lab, LabDaemon, lab_config

pytestmark = pytest.mark.root

# 198.18.0.0/24 (the lab office) in every form it could leak in.
OFFICE_FORMS = re.compile(
    r"198\.18\.\d{1,3}\.\d{1,3}"  # dotted, also in host:port, URLs, ::ffff:198.18.x.x
    r"|\d{1,3}\.\d{1,3}\.18\.198\.in-addr\.arpa"  # reverse DNS
    r"|::ffff:c612:[0-9a-f]{1,4}"  # IPv4-mapped, hex form
    r"|c6120[0-9a-f]{3}",  # the raw 32-bit value in hex
    re.IGNORECASE,
)


def test_no_office_address_form_reaches_the_hub(lab: Lab, tmp_path: Path, serve) -> None:  # type: ignore[no-untyped-def]
    hub = start_lab_hub(lab, tmp_path / "hub")
    lines: list[str] = []
    sub = lab.popen(
        "hub", "mosquitto_sub", "-h", hub.address, "-p", str(hub.port), "-V", "mqttv5",
        "--cafile", str(hub.ca), "--cert", str(hub.hub_cert), "--key", str(hub.hub_key),
        "-t", "watchpost/v1/#", "-v", "-q", "1",
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    threading.Thread(target=lambda: lines.extend(sub.stdout or ()), daemon=True).start()
    cfg = lab_config(
        tmp_path,
        privacy={"pseudonymize": True},
        hub={**hub.hub_table, "telemetry_interval": 5},
        alerts={"rate_per_minute": 10_000, "burst": 10_000},
    )
    daemon = LabDaemon(lab, cfg).start()
    try:
        serve.http("web")
        # Real traffic from office hosts that makes alerts naming them: a listed address, a
        # listed name looked up, a port scan of an office host, a cleartext login attempt.
        lab.exec("pc1", "curl", "-s", "-m", "2", "http://203.0.113.66/", check=False, timeout=10)
        lab.exec("pc1", "dig", "@203.0.113.53", "+tries=1", "+time=1", "c2.example.net",
                 check=False, timeout=10)  # fmt: skip
        lab.exec("pc1", "dig", "@203.0.113.53", "+tries=1", "+time=1", "-x", "198.18.0.12",
                 check=False, timeout=10)  # fmt: skip
        lab.exec("atk", "nmap", "-n", "-Pn", "-sS", "-p", "20-120", "--max-retries", "0",
                 "198.18.0.12", check=False, timeout=60)  # fmt: skip
        lab.exec("pc1", "curl", "-s", "-m", "2", "http://198.18.0.12:8080/", check=False,
                 timeout=10)  # fmt: skip
        # Command answers that could carry addresses: status, config, the daemon's own log.
        for cmd, args in (("status", []), ("get-config", []), ("logs", ['{"lines": 200}'])):
            lab.exec(
                "hub", sys.executable, "-m", "appliance", "hub", *hub.operator_args(),
                "send", hub.device_id, cmd, *args, "--timeout", "15", check=False, timeout=40,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = "".join(lines)
            if "/telemetry " in text and text.count("/alerts ") >= 3 and "/cmd/res" in text:
                break
            time.sleep(0.5)
    finally:
        daemon.stop()
        sub.terminate()
        hub.stop()
    text = "".join(lines)
    assert text.count("/alerts ") >= 3 and "/telemetry " in text and "/cmd/res" in text, text[
        -2000:
    ]
    assert "office-" in text  # office hosts are there, as tokens
    leaks = sorted({m.group(0) for m in OFFICE_FORMS.finditer(text)})
    assert not leaks, f"office addresses reached the hub: {leaks}"
    for line in lines:
        topic, _, payload = line.partition(" ")
        if topic.endswith("/alerts"):
            assert json.loads(payload)["src_ip"]  # a real alert, scanned whole
