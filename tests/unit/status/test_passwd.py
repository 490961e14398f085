"""`watchpost passwd`: a hash on stdout, or written into the config file."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from appliance.cli import passwd
from appliance.config import load
from appliance.status.auth import check_password


def test_prints_a_hash_for_a_password_on_stdin() -> None:
    result = CliRunner().invoke(passwd, [], input="a long password\n")
    assert result.exit_code == 0, result.output
    value = result.stdout.strip()
    assert value.startswith("scrypt:") and check_password(value, "a long password")
    assert "a long password" not in result.output


def test_refuses_a_short_password() -> None:
    result = CliRunner().invoke(passwd, [], input="short\n")
    assert result.exit_code == 2
    assert "error: the password needs at least 10 characters" in result.output


def test_writes_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "watchpost.toml"
    path.write_text('[device]\nid = "office-7"\n\n[inline]\nhome_nets = ["198.18.0.0/24"]\n')
    result = CliRunner().invoke(passwd, ["--config", str(path)], input="a long password\n")
    assert result.exit_code == 0, result.output
    assert "password set in" in result.output
    cfg = load(path)
    assert check_password(cfg.status.password_hash, "a long password")
    assert cfg.device.id == "office-7" and cfg.inline.home_nets == ("198.18.0.0/24",)
    assert [p.name for p in tmp_path.iterdir()] == ["watchpost.toml"]  # no temporary left


def test_a_broken_config_is_named_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "watchpost.toml"
    path.write_text("[inline]\nworkers = 'two'\n")
    result = CliRunner().invoke(passwd, ["--config", str(path)], input="a long password\n")
    assert result.exit_code == 2
    assert "inline.workers" in result.output
    assert path.read_text() == "[inline]\nworkers = 'two'\n"
    missing = CliRunner().invoke(passwd, ["--config", str(tmp_path / "nope.toml")], input="x\n")
    assert missing.exit_code == 2 and "no such file" in missing.output
