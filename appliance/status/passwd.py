"""`watchpost passwd`: set the status page's password.

The config keeps only a scrypt hash (``status.password_hash``). Without ``--config`` the hash is
printed, for an image build or a provisioning script; with it, the hash is written into that
file atomically (a power cut leaves the old file or the new one), and the running daemon takes
it on its next reload (SIGHUP), which also ends every session opened with the old password.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.config import ConfigError, merged, save
from appliance.config import load as load_config
from appliance.status.auth import hash_password, password_problem


def read_password() -> str:
    """From a prompt (asked twice) on a terminal, else the first line of stdin."""
    if sys.stdin is not None and sys.stdin.isatty():
        return str(
            click.prompt(
                "New status page password",
                hide_input=True,
                confirmation_prompt="Again, to be sure",
                err=True,
            )
        )
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.removesuffix("\n").removesuffix("\r")


def set_password(config_path: Path | None, password: str) -> str:
    """Check `password`, hash it and, with `config_path`, write the hash into that file.

    Returns the hash; raises ConfigError with the one-line reason (a weak password, a broken
    config file, a file that cannot be written).
    """
    config = load_config(config_path) if config_path is not None else None
    problem = password_problem(password)
    if problem:
        raise ConfigError("", problem)
    value = hash_password(password)
    if config is not None:
        try:
            save(merged(config, {"status": {"password_hash": value}}))
        except OSError as e:
            raise ConfigError("", f"cannot write {config_path}: {e.strerror or e}") from None
    return value
