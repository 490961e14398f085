"""`watchpost enrol`: the first-boot enrolment (run once by watchpost-enrol.service)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from appliance.cli import config_option
from appliance.enrol import bundle as bundle_mod
from appliance.enrol.device import Paths
from appliance.enrol.device import enrol as run_enrol


@click.command("enrol")
@config_option("The device config; [device] and [hub] are written into it.")
@click.option(
    "--bundle",
    "bundles",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="An enrolment bundle to use (default: the boot partition, then cloud-init's copy).",
)
@click.option(
    "--boot-dir",
    "boot_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Where the boot partition is mounted (default: {', '.join(bundle_mod.BOOT_DIRS)}).",
)
@click.option(
    "--etc",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the key and certificates go (default: the config's directory).",
)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option(
    "--console",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/dev/console"),
    show_default=True,
    help="Where the setup code is shown (the HDMI console).",
)
@click.option(
    "--unit-dropin",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/etc/systemd/system/watchpost.service.d/hub.conf"),
    show_default=True,
    help="Where the daemon unit's IPAddressAllow= for the hub is written.",
)
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
def enrol(
    config_path: Path,
    bundles: tuple[Path, ...],
    boot_dirs: tuple[Path, ...],
    etc: Path | None,
    state_dir: Path | None,
    console: Path,
    unit_dropin: Path,
    timeout: float,
) -> None:
    """Enrol with the regional hub using the bundle on the boot partition (first boot)."""
    logging.basicConfig(level=logging.INFO, format="enrol: %(message)s", stream=sys.stderr)
    paths = Paths(
        config=config_path,
        etc=etc or config_path.parent,
        state_dir=state_dir,
        console=console,
        unit_dropin=unit_dropin,
    )
    candidates = bundle_mod.candidates(boot_dirs or bundle_mod.BOOT_DIRS, bundles)
    if boot_dirs or bundles:  # tests and manual runs: no system-wide cloud-init copy
        candidates = [p for p in candidates if str(p) != bundle_mod.CLOUD_INIT_COPY]
    code, message = run_enrol(candidates, paths, timeout)
    if code:
        click.echo(f"error: not enrolled: {message}", err=True)
    else:
        click.echo(f"enrol: {message}", err=True)
    sys.exit(code)
