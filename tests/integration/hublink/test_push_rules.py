"""`watchpost-hub push-rules` end to end over mosquitto (mutual TLS): the hub checks the rules,
the device's command handler verifies, checks and installs the bundle into its state dir, and an
engine with the rules detector alerts from the new rule; bad bundles are refused (at the hub,
and at the device when one gets past the hub) with the rules in force still alerting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hubkit import wait_for
from test_hub_commands import (  # the broker-backed appliance and operator CLI of that module
    Appliance,
    appliance,
    command_key,
    hub_cli,
    last_json,
    operator_env,
)

from appliance import config as config_mod
from appliance.detect.detectors.rules import RulesDetector, rules_dir_for
from hub.operator import rules as hub_rules
from protocol import bundle
from tests.helpers import Harness
from tests.unit.detect.rules.kit import T0, tcp_flow

__all__ = ["appliance", "command_key", "operator_env"]  # fixtures

LOCAL = 'alert tcp any any -> any any (msg:"local"; content:"LOCALWORD"; sid:1;)\n'
NEW = (
    "# pushed from the hub\n"
    'alert tcp any any -> any any (msg:"hub rule"; content:"HUBWORD"; sid:2; rev:1;)\n'
    'alert tcp any any -> any any (msg:"skipped"; flowbits:set,x; sid:3;)\n'
)
BAD = (
    'alert tcp any any -> any any (msg:"ok"; content:"OTHER"; sid:4;)\n'
    'alert tcp any any -> any any (msg:"bad"; content:"x" sid:5;)\n'
)


class Engine:
    """An engine with the device's config (same state dir) and a local rule file."""

    def __init__(self, a: Appliance, tmp: Path) -> None:
        local = tmp / "local.rules"
        local.write_text(LOCAL)
        data = a.device.config.to_dict()
        data["detect"] = {"rules": {"paths": [str(local)]}}
        self.h = Harness(config_mod.from_dict(data))
        self.det = next(d for d in self.h.engine.detectors if isinstance(d, RulesDetector))
        self.ts = T0
        self.port = 41000

    def sids(self, payload: bytes) -> list[int]:
        """Rule alerts for one new flow carrying `payload`, after a tick (which takes a rule
        set loaded in the background)."""
        self.ts += 1e5
        self.h.engine.tick(self.ts)
        self.det._wait_reload()
        self.h.engine.tick(self.ts + 1)
        before = len(self.h.alerts)
        self.port += 1
        self.h.feed(tcp_flow(payload, sport=self.port, ts=self.ts + 2), start=self.ts + 2)
        self.h.engine.tick(self.ts + 1e4)  # close the aggregation windows
        return sorted(
            a["alert"]["signature_id"]
            for a in self.h.alerts[before:]
            if a["watchpost"]["detector"] == "rules"
        )


def test_push_rules_installs_live_and_bad_bundles_change_nothing(
    appliance: Appliance, operator_env: dict[str, str], tmp_path: Path, monkeypatch: Any
) -> None:
    a = appliance
    a.start()
    wait_for(lambda: a.link is not None and a.link.state == "up", what="device link up")
    eng = Engine(a, tmp_path)
    assert eng.sids(b"HUBWORD LOCALWORD") == [1]

    new = tmp_path / "new.rules"
    new.write_text(NEW)
    r = hub_cli(operator_env, "--site", "siteA", "push-rules", str(new), "--device", "dev1")
    assert r.exit_code == 0, r.output
    final = last_json(r.stdout)
    assert final["job"]["state"] == "succeeded", final
    assert final["result"]["loaded"] == 1 and final["result"]["skipped"] == 1
    assert "1 rules to send, 1 skipped" in r.stderr
    installed = rules_dir_for(a.device.config) / "hub.rules"
    assert b"HUBWORD" in installed.read_bytes()
    assert bundle.installed(installed.parent)["hub.rules"]["version"]
    assert eng.sids(b"HUBWORD LOCALWORD") == [1, 2]  # the new rule alerts, live

    # A syntax error: the hub refuses with file:line, nothing is sent.
    bad = tmp_path / "bad.rules"
    bad.write_text(BAD)
    r = hub_cli(operator_env, "--site", "siteA", "push-rules", str(bad), "--device", "dev1")
    assert r.exit_code == 1 and f"{bad}:2: " in r.output, r.output
    # One that gets past the hub (a hub without the check): the device refuses it, naming the
    # line, and keeps the installed bundle; every device of the site is found by its status.
    monkeypatch.setattr(hub_rules, "check_files", lambda files: (bad.read_bytes(), _counts()))
    before = installed.read_bytes()
    r = hub_cli(operator_env, "push-rules", str(bad), "--site", "siteA")
    assert r.exit_code == 1, r.output
    final = last_json(r.stdout)
    assert final["device"] == "dev1" and final["job"]["state"] == "failed"
    assert "syntax errors" in final["error"] and "hub.rules:2: " in final["error"]
    assert installed.read_bytes() == before
    assert not [p for p in installed.parent.iterdir() if p.name.endswith(".part")]
    assert eng.sids(b"HUBWORD LOCALWORD OTHER") == [1, 2]  # the old rules still work


def _counts() -> dict[str, Any]:
    return {"loaded": 1, "skipped": 0, "by_reason": {}}


@pytest.mark.parametrize("args", [(), ("--device", "dev1", "--fleet")])
def test_push_rules_needs_one_target(tmp_path: Path, args: tuple[str, ...]) -> None:
    f = tmp_path / "x.rules"
    f.write_text(LOCAL)
    r = hub_cli({}, "push-rules", str(f), *args)
    assert r.exit_code == 2 and "--device D" in r.output
