"""The `watchpost` command line.

Every command exits non-zero with a one-line reason on bad input (``error: inline.workers:
expected an integer, got 'two'``); tracebacks are for bugs only.

The firmware's own commands are below or imported lazily (`replay` need not load Flask). Other
installed packages add command groups through the ``watchpost.commands`` entry point group: in a
development install the hub package adds ``hub`` and ``provision`` and the lab package ``lab``
and ``demo``; the firmware wheel a Pi runs has none of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import click

from appliance import __version__
from appliance.config import DEFAULT_PATH, Config, ConfigError, load, load_running

PLUGIN_GROUP = "watchpost.commands"


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def config_or_exit(path: str | Path | None, required: bool = True, running: bool = False) -> Config:
    """The config file at `path` (with `running`: plus the hub's overlay, as the daemon runs)."""
    import appliance.detect.registry  # noqa: F401  (the detectors' declared options)

    try:
        if path is None and not required:
            return Config()
        return (load_running if running else load)(path or DEFAULT_PATH)
    except ConfigError as e:
        fail(str(e))
        raise  # unreachable


F = TypeVar("F", bound=Callable[..., Any])


def config_option(help: str) -> Callable[[F], F]:
    """The ``--config`` option of commands that read the device config (default: the office's)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_PATH,
        show_default=True,
        help=help,
    )


class LazyGroup(click.Group):
    """Commands from `lazy` and from installed plugins are imported only when they run."""

    lazy: dict[str, str] = {
        "enrol": "appliance.enrol.cli:enrol",
        "hub-addresses": "appliance.enrol.cli:hub_addresses",
        "rules": "appliance.detect.rules.check:rules",
        "update": "appliance.update.cli:update",
    }

    def _entries(self) -> dict[str, str]:
        found = {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}
        return {**found, **self.lazy}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._entries()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        target = self._entries().get(cmd_name)
        if target is None:
            return None
        import importlib

        module, _, attr = target.partition(":")
        loaded: click.Command = getattr(importlib.import_module(module), attr)
        return loaded


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="watchpost")
def main() -> None:
    """Watchpost: an inline network watch for small offices."""


@main.command("run")
@config_option("Config file.")
def run(config_path: Path) -> None:
    """Run the daemon: inspect the bridge inline until SIGTERM (SIGHUP reloads)."""
    from appliance.service import run_daemon

    run_daemon(config_or_exit(config_path, running=True))


@main.command("passwd")
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
    from appliance.status.passwd import read_password, set_password

    if config_path is not None:
        config_or_exit(config_path)  # a broken file is reported before any prompt
    try:
        value = set_password(config_path, read_password())
    except ConfigError as e:
        fail(str(e))
        return
    if config_path is None:
        click.echo(value)
        return
    click.echo(
        f"status page password set in {config_path}; reload the daemon "
        "(systemctl reload watchpost) for it to take effect",
        err=True,
    )


@main.command("fault-leds")
@config_option("Config file (for the LED pins).")
def fault_leds(config_path: Path) -> None:
    """Blink the fault pattern until stopped (run by watchpost-fault.service while the daemon
    is down)."""
    import signal
    import threading

    from appliance.leds import show_fault

    try:
        config = load(config_path)
    except ConfigError:
        config = Config()  # a broken config must not hide the fault: the default pins
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    show_fault(config, stop)


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def check_config(path: Path) -> None:
    """Validate a config file; prints the first problem, naming its key. Its intel files are
    loaded too: bad lines are listed (file:line: why, with counts), a refused file is an error."""
    from appliance.detect import intel as intel_mod

    config = config_or_exit(path)
    store = intel_mod.load_files(config.intel.paths)
    for line in intel_mod.describe(store):
        click.echo(line, err=True)
    if store.broken:
        f = store.broken[0]
        fail(f"intel.paths: {f.path}: {f.broken}")
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
@click.option(
    "--progress", is_flag=True, help="A progress bar with packets/s on stderr (on a terminal)."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes to spread flows over (default: by file size, at most one per core); "
    "the output is the same as with one.",
)
def replay(pcap: Path, config_path: Path | None, progress: bool, workers: int | None) -> None:
    """Run the engine over a pcap/pcapng file; EVE-JSON alerts on stdout, one per line."""
    from appliance.alerts.pipeline import stdout_sink
    from appliance.replay import ProgressBar, ReplayError
    from appliance.replay import replay as run_replay

    config = config_or_exit(config_path, required=False)
    bar = ProgressBar() if progress else None
    try:
        result = run_replay(pcap, config, [stdout_sink], progress=bar, workers=workers)
    except ReplayError as e:
        if bar is not None:
            bar.finish()
        fail(str(e))
        return
    if bar is not None:
        bar.finish()
    cut = f", last record cut short at byte {result.truncated_at}" if result.truncated_at else ""
    for line in result.intel:
        click.echo(line, err=True)
    click.echo(
        f"replay: {result.packets} packets, {result.malformed} undecodable, "
        f"{result.alerts} alerts{cut}, {result.workers} worker"
        f"{'s' if result.workers > 1 else ''}",
        err=True,
    )


@main.command()
def signatures() -> None:
    """List every signature id with its detector, severity and text."""
    from appliance.detect.registry import all_signatures

    for detector, sig in all_signatures():
        click.echo(f"{sig.sid}\t{detector}\t{sig.severity}\t{sig.category}\t{sig.name}")
