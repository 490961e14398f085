"""The `watchpost` command line.

Every command exits non-zero with a one-line reason on bad input (``error: inline.workers:
expected an integer, got 'two'``); tracebacks are for bugs only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance import __version__
from appliance.config import DEFAULT_PATH, Config, ConfigError
from appliance.config import load as load_config


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def config_or_exit(path: str | Path | None, required: bool = True) -> Config:
    try:
        if path is None and not required:
            return Config()
        return load_config(path or DEFAULT_PATH)
    except ConfigError as e:
        fail(str(e))
        raise  # unreachable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="watchpost")
def main() -> None:
    """Watchpost: an inline network watch for small offices."""


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def check_config(path: Path) -> None:
    """Validate a config file; prints the first problem, naming its key."""
    config_or_exit(path)
    click.echo(f"{path}: ok")


@main.command()
@click.argument("pcap", type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Config file (default: built-in defaults).",
)
def replay(pcap: Path, config_path: Path | None) -> None:
    """Run the engine over a pcap/pcapng file; EVE-JSON alerts on stdout, one per line."""
    from appliance.alerts.pipeline import stdout_sink
    from appliance.replay import ReplayError
    from appliance.replay import replay as run_replay

    config = config_or_exit(config_path, required=False)
    try:
        result = run_replay(pcap, config, [stdout_sink])
    except ReplayError as e:
        fail(str(e))
        return
    click.echo(
        f"replay: {result.packets} packets, {result.malformed} undecodable, {result.alerts} alerts",
        err=True,
    )


@main.command()
def signatures() -> None:
    """List every signature id with its detector, severity and text."""
    from appliance.detect.registry import all_signatures

    for detector, sig in all_signatures():
        click.echo(f"{sig.sid}\t{detector}\t{sig.severity}\t{sig.category}\t{sig.name}")


def _register_groups() -> None:
    """Commands that live next to the code they drive (imported lazily by click)."""
    from appliance.hub.operator import hub
    from appliance.lab import demo, lab
    from appliance.provisioning import provision
    from appliance.service import run
    from appliance.status.passwd import passwd

    for command in (run, lab, demo, hub, provision, passwd):
        main.add_command(command)


_register_groups()
