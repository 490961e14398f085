from pathlib import Path

import pytest

from appliance.config import ConfigError, from_dict, load, merged, save


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
    ],
)
def test_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert e.value.key == key
    assert str(e.value).startswith(key + ":")


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
    with pytest.raises(ConfigError) as e:
        from_dict({"detect": {"portscan": {"ports": -3}}})
    assert e.value.key == "detect.portscan.ports"
    with pytest.raises(ConfigError) as e:
        from_dict({"detect": {"nosuch": {}}})
    assert e.value.key == "detect.nosuch"
    with pytest.raises(ConfigError) as e:
        from_dict({"detect": {"web": {"enabled": "no"}}})
    assert e.value.key == "detect.web.enabled"
