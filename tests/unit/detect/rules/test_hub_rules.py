"""Rule bundles from the hub in <device.state_dir>/rules: loaded beside `paths`, picked up live
by the engine's tick (in the background after the first look), a failed load keeps the rules
in force, `hub = false` ignores them."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.detect.detectors.rules import RulesDetector, check_text, rules_dir_for
from tests.helpers import Harness, make_config
from tests.unit.detect.rules.kit import T0, tcp_flow

LOCAL = 'alert tcp any any -> any any (msg:"local"; content:"LOCALWORD"; sid:1;)\n'
HUB = 'alert tcp any any -> any any (msg:"hub"; content:"HUBWORD"; sid:2;)\n'


def _harness(tmp_path: Path, **opts: object) -> Harness:
    local = tmp_path / "local.rules"
    local.write_text(LOCAL)
    cfg = make_config(
        device={"state_dir": str(tmp_path / "state")},
        detect={"rules": {"paths": [str(local)], **opts}},
    )
    return Harness(cfg)


def _sids(h: Harness, payload: bytes, ts: float, sport: int) -> list[int]:
    before = len(h.alerts)
    h.feed(tcp_flow(payload, sport=sport, ts=ts), start=ts)
    h.engine.tick(ts + 1e6)  # close the aggregation windows
    return sorted(
        a["alert"]["signature_id"]
        for a in h.alerts[before:]
        if a["watchpost"]["detector"] == "rules"
    )


def _det(h: Harness) -> RulesDetector:
    return next(d for d in h.engine.detectors if isinstance(d, RulesDetector))


def _install(h: Harness, name: str, text: str) -> Path:
    d = rules_dir_for(h.config)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.part"
    tmp.write_text(text)
    os.replace(tmp, d / name)
    return d / name


def _reload(h: Harness, now: float) -> None:
    det = _det(h)
    h.engine.tick(now)  # sees the folder changed: loads in the background
    det._wait_reload()
    h.engine.tick(now + 1)  # takes the new set


def test_hub_bundles_are_loaded_at_start_and_live(tmp_path: Path) -> None:
    h = _harness(tmp_path)
    _install(h, "first.rules", HUB)
    # At start (the first tick, before the first packet) the installed bundle is in.
    assert _sids(h, b"x HUBWORD LOCALWORD", T0, 40001) == [1, 2]
    det = _det(h)
    _install(h, "first.rules", HUB.replace("HUBWORD", "NEWWORD").replace("sid:2", "sid:3"))
    _reload(h, T0 + 5e6)
    assert det.reloads >= 1
    assert _sids(h, b"x NEWWORD HUBWORD", T0 + 6e6, 40002) == [3]
    # A bundle removed is gone at the next look.
    (rules_dir_for(h.config) / "first.rules").unlink()
    _reload(h, T0 + 7e6)
    assert _sids(h, b"x NEWWORD LOCALWORD", T0 + 8e6, 40003) == [1]


def test_a_bundle_that_fails_to_load_keeps_the_rules_in_force(tmp_path: Path) -> None:
    h = _harness(tmp_path)
    _install(h, "good.rules", HUB)
    assert _sids(h, b"HUBWORD", T0, 40001) == [2]
    _install(h, "bad.rules", 'alert tcp any any -> any any (msg:"x"; sid:9;)\n\x00')
    _reload(h, T0 + 5e6)
    assert _det(h).reloads_failed == 1
    assert _sids(h, b"HUBWORD LOCALWORD", T0 + 6e6, 40002) == [1, 2]


def test_hub_false_ignores_the_folder(tmp_path: Path) -> None:
    h = _harness(tmp_path, hub=False)
    _install(h, "first.rules", HUB)
    assert _sids(h, b"HUBWORD LOCALWORD", T0, 40001) == [1]


def test_check_text_uses_the_configs_variables_and_names_lines(tmp_path: Path) -> None:
    cfg = make_config(detect={"rules": {"vars": ["WEB_PORTS=[80,8080]"]}})
    rep = check_text(
        cfg,
        'alert tcp any any -> any $WEB_PORTS (msg:"a"; content:"x"; sid:1;)\n'
        'alert tcp any any -> any any (msg:"b"; content:"x" sid:2;)\n'
        'alert tcp any any -> any any (msg:"c"; flowbits:set,x; sid:3;)\n',
        "hub.rules",
    )
    assert rep.loaded == 1 and rep.skipped_total == 1 and rep.error_count == 1
    assert rep.errors[0].startswith("hub.rules:2: ")
