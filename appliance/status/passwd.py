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


@click.command("passwd")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the hash into this config file instead of printing it.",
)
def passwd(config_path: Path | None) -> None:
    """Set the status page password (read from a prompt, or one line on stdin).

    Prints the hash for status.password_hash, or with --config writes it into that file.
    """
    from appliance.cli import fail

    config = None
    if config_path is not None:
        try:
            config = load_config(config_path)  # a broken file is reported before any prompt
        except ConfigError as e:
            fail(str(e))
            return
    password = read_password()
    problem = password_problem(password)
    if problem:
        fail(problem)
        return
    value = hash_password(password)
    if config is None:
        click.echo(value)
        return
    try:
        save(merged(config, {"status": {"password_hash": value}}))
    except ConfigError as e:
        fail(str(e))
        return
    except OSError as e:
        fail(f"cannot write {config_path}: {e.strerror or e}")
        return
    click.echo(
        f"status page password set in {config_path}; reload the daemon "
        "(systemctl reload watchpost) for it to take effect",
        err=True,
    )
