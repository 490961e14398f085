"""Config: typed loading, errors naming the key, declared options, the hub's allow-list and the
remote overlay under the state directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

import appliance.detect.registry  # noqa: F401  (the detectors' declarations)
from appliance import config as config_mod
from appliance.config import (
    OPTIONS,
    Config,
    ConfigError,
    RemoteRefused,
    apply_remote,
    check_remote,
    from_dict,
    load,
    load_running,
    merged,
    remote_keys,
    remote_path,
    save,
)


def test_minimal_file_is_enough(tmp_path: Path) -> None:
    p = tmp_path / "w.toml"
    p.write_text(
        '[device]\nid = "d1"\n[inline]\nhome_nets = ["198.18.0.0/24"]\n[intel]\npaths = []\n'
    )
    c = load(p)
    assert c.device.id == "d1"
    assert c.inline.mode == "monitor"
    assert c.hub.enabled is False
    assert c.inline.home_nets == ("198.18.0.0/24",)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"inline": {"workers": "two"}}, "inline.workers"),
        ({"inline": {"bogus": 1}}, "inline.bogus"),
        ({"nosuch": {}}, "nosuch"),
        ({"inline": {"mode": "drop"}}, "inline.mode"),
        ({"inline": {"home_nets": ["10.0.0.0/8", "nonsense"]}}, "inline.home_nets[1]"),
        ({"inline": {"head_packets": 0}}, "inline.head_packets"),
        ({"hub": {"port": 8883}}, "hub.host"),
        ({"privacy": {"pseudonymize": True, "key": "short"}}, "privacy.key"),
        ({"device": {"id": "a/b"}}, "device.id"),
        ({"leds": {"enabled": "yes"}}, "leds.enabled"),
        ({"status": {"listen": "8080"}}, "status.listen"),
        ({"log": {"level": "loud"}}, "log.level"),
    ],
)
def test_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert e.value.key == key
    assert str(e.value).startswith(key + ":")


def test_ranges_live_with_the_declaration() -> None:
    workers = OPTIONS["inline"]["workers"]
    assert (workers.range, workers.remote, workers.remote_range) == ((1, 64), True, (1, 4))
    with pytest.raises(ConfigError, match="inline.workers: must be between 1 and 64, got 65"):
        from_dict({"inline": {"workers": 65}})
    assert from_dict({"inline": {"workers": 64}}).inline.workers == 64
    # a declaration that contradicts itself is refused when it is made
    with pytest.raises(ValueError, match="never remote"):
        config_mod.Option("x", str, "", "h", path=True, remote=True)
    with pytest.raises(ValueError, match="inside range"):
        config_mod.Option("x", int, 1, "h", range=(1, 5), remote=True, remote_range=(0, 9))


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[inline\nmode=")
    with pytest.raises(ConfigError, match="bad.toml"):
        load(bad)


def test_hub_table_enables_hub() -> None:
    c = from_dict({"hub": {"host": "hub.example"}})
    assert c.hub.enabled and c.hub.host == "hub.example"
    assert not from_dict({"hub": {"host": "h", "enabled": False}}).hub.enabled


def test_the_outbox_lives_in_the_state_dir_unless_set() -> None:
    cfg = from_dict({"device": {"state_dir": "/srv/wp"}, "hub": {"host": "hub.example"}})
    assert cfg.outbox_path == "/srv/wp/outbox.sqlite"
    cfg = from_dict({"hub": {"host": "hub.example", "outbox": "/srv/o.sqlite"}})
    assert cfg.outbox_path == "/srv/o.sqlite"
    assert Config().outbox_path == "/var/lib/watchpost/outbox.sqlite"


def test_merge_revalidates_and_save_roundtrips(tmp_path: Path) -> None:
    c = from_dict({"device": {"id": "d1"}}, source=str(tmp_path / "c.toml"))
    c2 = merged(c, {"inline": {"mode": "block"}})
    assert c2.inline.mode == "block" and c.inline.mode == "monitor"
    assert c2.changed_sections(c) == {"inline"}
    with pytest.raises(ConfigError, match="inline.queue"):
        merged(c, {"inline": {"queue": -1}})
    save(c2)
    again = load(tmp_path / "c.toml")
    assert again.inline.mode == "block" and again.device.id == "d1"


def test_detector_checks_run_when_the_config_is_read() -> None:
    cases = [
        ({"portscan": {"ports": -3}}, "detect.portscan.ports", "between 2 and 1024"),
        ({"nosuch": {}}, "detect.nosuch", "unknown detector"),
        ({"web": {"enabled": "no"}}, "detect.web.enabled", "true or false"),
        ({"web": {"checks": ["xss", "nope"]}}, "detect.web.checks[1]", "must be one of"),
        ({"exposure": {"ports": [22, 70000]}}, "detect.exposure.ports[1]", "65535"),
        ({"portscan": {"ignore": ["10.0.0.0/8", "x"]}}, "detect.portscan.ignore[1]", "address"),
        # between options: the detector's own check classmethod
        ({"portscan": {"probe_timeout": 90}}, "detect.portscan.probe_timeout", "shorter"),
        ({"beacon": {"burst": 20}}, "detect.beacon.burst", "below min_period"),
    ]
    for detect, key, words in cases:
        with pytest.raises(ConfigError) as e:
            from_dict({"detect": detect})
        assert e.value.key == key and words in str(e.value), (key, str(e.value))


def test_config_never_imports_the_detectors() -> None:
    """config is the bottom layer: reading a config builds no detector and imports none."""
    code = (
        "import sys, appliance.config as c\n"
        "c.from_dict({'inline': {'mode': 'block'}})\n"
        "bad = sorted(m for m in sys.modules if m.startswith('appliance.detect'))\n"
        "assert not bad, bad\n"
        "try:\n"
        "    c.from_dict({'detect': {'portscan': {}}})\n"
        "except c.ConfigError as e:\n"
        "    assert e.key == 'detect', e\n"
        "else:\n"
        "    raise SystemExit('detect tables accepted without declarations')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# --- the hub's changes -------------------------------------------------------------------------


def office(tmp_path: Path, **extra: Any) -> tuple[Path, Path]:
    """An office config file with its state dir in tmp_path; returns (file, state_dir)."""
    state = tmp_path / "state"
    data: dict[str, Any] = {
        "device": {"id": "d1", "site": "s1", "state_dir": str(state)},
        "inline": {"home_nets": ["198.18.0.0/24"], "never_block": ["198.18.0.1/32"]},
        "hub": {"host": "192.0.2.10"},
        "privacy": {"pseudonymize": True, "key": "k" * 32},
        "status": {"password_hash": "scrypt$16384$8$1$c2FsdA$aGFzaA"},
        **extra,
    }
    path = tmp_path / "etc" / "watchpost.toml"
    path.parent.mkdir()
    path.write_text(tomli_w.dumps(data))
    return path, state


HOSTILE = [
    # every path-valued key
    ({"device": {"state_dir": "/etc/watchpost"}}, "device.state_dir", "path"),
    ({"log": {"file": "/etc/shadow"}}, "log.file", "path"),
    ({"log": {"eve": "/etc/cron.d/x"}}, "log.eve", "path"),
    ({"intel": {"paths": ["/etc/shadow"]}}, "intel.paths", "path"),
    ({"hub": {"outbox": "/etc/watchpost/x"}}, "hub.outbox", "path"),
    ({"hub": {"ca": "/tmp/evil-ca.pem"}}, "hub.ca", "path"),
    ({"hub": {"cert": "/tmp/c.pem"}}, "hub.cert", "path"),
    ({"hub": {"key": "/tmp/k.pem"}}, "hub.key", "path"),
    ({"hub": {"command_pubkey": "/tmp/evil.pub"}}, "hub.command_pubkey", "who may command"),
    # the office's privacy promise
    ({"privacy": {"pseudonymize": False}}, "privacy.pseudonymize", "privacy promise"),
    ({"privacy": {"key": "x" * 32}}, "privacy.key", "secret"),
    ({"inline": {"home_nets": ["0.0.0.0/0"]}}, "inline.home_nets", "pseudonymisation"),
    # the test-only knob
    ({"inline": {"debug_delay_ms": 5000}}, "inline.debug_delay_ms", "test-only"),
    # status page secrets and reach
    (
        {"status": {"password_hash": "scrypt$16384$8$1$ZXZpbA$ZXZpbA"}},
        "status.password_hash",
        "secret",
    ),
    ({"status": {"listen": "0.0.0.0:80"}}, "status.listen", "status page"),
    # identity and the hub connection
    ({"device": {"id": "evil"}}, "device.id", "identity"),
    ({"hub": {"enabled": False}}, "hub.enabled", "cut the device off"),
    ({"hub": {"host": "203.0.113.66"}}, "hub.host", "another broker"),
    # values outside the production range (tighter than what the office may set)
    ({"inline": {"queue_maxlen": 16}}, "inline.queue_maxlen", "outside what the hub may set"),
    ({"inline": {"max_flows": 10_000_000}}, "inline.max_flows", "outside"),
    ({"inline": {"workers": 64}}, "inline.workers", "outside"),
    ({"inline": {"block_ttl": 30 * 86400}}, "inline.block_ttl", "outside"),
    ({"alerts": {"rate_per_minute": 100_000}}, "alerts.rate_per_minute", "outside"),
    ({"detect": {"beacon": {"max_tracked": 10_000_000}}}, "detect.beacon.max_tracked", "outside"),
]


@pytest.mark.parametrize(("changes", "key", "words"), HOSTILE, ids=[h[1] for h in HOSTILE])
def test_each_hostile_remote_key_is_refused_and_nothing_saved(
    tmp_path: Path, changes: dict[str, Any], key: str, words: str
) -> None:
    path, state = office(tmp_path)
    before = path.read_bytes()
    current = load_running(path)
    with pytest.raises(RemoteRefused) as e:
        check_remote(changes)
    assert e.value.key == key and words in str(e.value), str(e.value)
    # a harmless change next to it does not carry it through either
    harmless = {"inline": {"mode": "block"}, "detect": {"dga": {"enabled": False}}}
    both = {s: {**harmless.get(s, {}), **changes.get(s, {})} for s in {*harmless, *changes}}
    with pytest.raises(RemoteRefused):
        apply_remote(current, both, state)
    assert not remote_path(state).exists()
    assert path.read_bytes() == before
    assert load_running(path) == current


def test_malformed_remote_changes_are_invalid_not_refused() -> None:
    for changes, key in [
        ({"inline": {"workers": "two"}}, "inline.workers"),
        ({"inline": {"nope": 1}}, "inline.nope"),
        ({"inline": 5}, "inline"),
        ({"detect": {"nosuch": {}}}, "detect.nosuch"),
        ({"detect": {"web": {"checks": ["nope"]}}}, "detect.web.checks[0]"),
    ]:
        with pytest.raises(ConfigError) as e:
            check_remote(changes)
        assert not isinstance(e.value, RemoteRefused) and e.value.key == key


def test_allow_list_is_declared_next_to_each_option() -> None:
    keys = {k for k, _ in remote_keys()}
    assert {"inline.mode", "inline.never_block", "inline.block_ttl", "alerts.window"} <= keys
    assert {"hub.telemetry_interval", "detect.portscan.ports", "detect.web.enabled"} <= keys
    assert not {k for k in keys if k.startswith(("privacy.", "status.", "device.", "log."))}
    for key, opt in remote_keys():
        assert not (opt.path or opt.secret), key


def test_a_good_remote_change_lands_in_the_overlay_and_survives_a_reload(tmp_path: Path) -> None:
    path, state = office(tmp_path)
    before = path.read_bytes()
    current = load_running(path)
    new = apply_remote(
        current,
        {
            "inline": {"mode": "block", "never_block": ["203.0.113.53/32"]},
            "alerts": {"window": 60},
            "hub": {"telemetry_interval": 30},
            "detect": {"portscan": {"ports": 12}},
        },
        state,
    )
    assert path.read_bytes() == before  # the office's file is never written
    overlay = remote_path(state)
    assert overlay.exists() and "privacy" not in overlay.read_text()
    again = load_running(path)
    assert again == new
    assert again.inline.mode == "block" and again.alerts.window == 60.0
    assert again.hub.telemetry_interval == 30 and again.detect["portscan"]["ports"] == 12
    # never_block: the hub adds to the office's list, it cannot take the office's entries away
    assert again.inline.never_block == ("198.18.0.1/32", "203.0.113.53/32")
    assert again.remote["inline"]["never_block"] == ["203.0.113.53/32"]
    later = apply_remote(again, {"inline": {"never_block": []}}, state)
    assert later.inline.never_block == ("198.18.0.1/32",)
    assert load_running(path).inline.never_block == ("198.18.0.1/32",)
    # the office's file alone (check-config) knows nothing of the overlay
    assert load(path).inline.mode == "monitor"


def test_overlay_without_hub_table_does_not_switch_the_hub_on(tmp_path: Path) -> None:
    path, state = office(tmp_path)
    data = load(path).to_dict()
    del data["hub"]
    path.write_text(tomli_w.dumps({k: v for k, v in data.items() if k != "detect"}))
    current = load_running(path)
    assert not current.hub.enabled
    apply_remote(current, {"hub": {"telemetry_interval": 30}}, state)
    again = load_running(path)
    assert not again.hub.enabled and again.hub.telemetry_interval == 30


def test_get_config_sent_back_whole_is_accepted(tmp_path: Path) -> None:
    path, state = office(tmp_path)
    current = load_running(path)
    echo = current.to_dict()
    echo["alerts"]["burst"] = 10
    del echo["privacy"]["key"], echo["status"]["password_hash"]  # come back as <redacted>
    new = apply_remote(current, echo, state)
    assert new.alerts.burst == 10 and new.privacy.key == "k" * 32
    assert load_running(path).alerts.burst == 10
    # but a secret is never compared (no oracle): the current value itself is refused
    with pytest.raises(RemoteRefused, match="privacy.key"):
        check_remote({"privacy": {"key": "k" * 32}}, current)


def test_a_bad_or_stale_overlay_is_ignored_at_start(tmp_path: Path) -> None:
    path, state = office(tmp_path)
    state.mkdir()
    remote_path(state).write_text('[log]\nfile = "/etc/shadow"\n')
    assert load_running(path) == load(path)
    remote_path(state).write_text("[inline\n")
    assert load_running(path) == load(path)
    # a remote value that no longer fits the office's file: the office's file alone runs
    remote_path(state).write_text("[detect.beacon]\nmin_period = 1.0\n")
    office_file = load(path).to_dict()
    office_file["detect"] = {"beacon": {"burst": 5.0, "min_period": 10.0}}
    path.write_text(tomli_w.dumps(office_file))
    assert load_running(path).detect["beacon"]["min_period"] == 10.0


def test_save_refuses_to_write_the_overlay_into_the_office_file(tmp_path: Path) -> None:
    path, state = office(tmp_path)
    new = apply_remote(load_running(path), {"inline": {"mode": "block"}}, state)
    with pytest.raises(ConfigError, match="save_remote"):
        save(new)


def test_the_unit_keeps_the_office_config_read_only() -> None:
    unit = (Path(__file__).parents[2] / "systemd" / "watchpost.service").read_text()
    settings = [line.split("=", 1) for line in unit.splitlines() if "=" in line[:40]]
    writable = " ".join(v for k, v in settings if k == "ReadWritePaths")
    assert "/etc/watchpost" not in writable and "/var/lib/watchpost" in writable
    assert ("ReadOnlyPaths", "-/etc/watchpost") in [tuple(s) for s in settings]
    assert ("ProtectSystem", "strict") in [tuple(s) for s in settings]
