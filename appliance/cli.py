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


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (`replay` need not load Flask)."""

    lazy: dict[str, str] = {
        "run": "appliance.service:run",
        "lab": "appliance.lab:lab",
        "demo": "appliance.lab:demo",
        "hub": "appliance.hub.operator:hub",
        "provision": "appliance.provisioning:provision",
        "passwd": "appliance.status.passwd:passwd",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            import importlib

            module, _, attr = self.lazy[cmd_name].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
