"""`watchpost enrol`: the first-boot enrolment (run once by watchpost-enrol.service), and
`watchpost hub-addresses`: the hub's addresses for the daemon unit, again at each start."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from appliance.cli import config_option
from appliance.config import ConfigError
from appliance.config import load as load_config
from appliance.enrol import bundle as bundle_mod
from appliance.enrol import hubaddr
from appliance.enrol.device import Paths
from appliance.enrol.device import enrol as run_enrol
from appliance.packet.addrset import AddrSet

# Where the daemon unit's IPAddressAllow= for the hub is written (enrol, hub-addresses).
DROPIN_OPTION = click.option(
    "--unit-dropin",
    type=click.Path(dir_okay=False, path_type=Path),
    default=hubaddr.DROPIN,
    show_default=True,
    help="The daemon unit's IPAddressAllow= drop-in for the hub.",
)


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
@DROPIN_OPTION
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


@click.command("hub-addresses")
@config_option("The device config (hub.host, hub.port, inline.home_nets, device.state_dir).")
@DROPIN_OPTION
@click.option(
    "--apply/--no-apply",
    default=True,
    show_default=True,
    help="Also allow a new set for the unit now (systemctl set-property --runtime).",
)
def hub_addresses(config_path: Path, unit_dropin: Path, apply: bool) -> None:
    """Resolve the hub's name again and rewrite the unit's drop-in when its public addresses
    changed (watchpost.service runs it before every start). Always exits 0: the daemon starts
    whatever happens here; what happened is in the log and <state_dir>/hub-addresses.json."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        config = load_config(config_path)
    except ConfigError as e:
        click.echo(f"hub addresses: cannot read the config: {e}", err=True)
        return
    if not config.hub.enabled or not config.hub.host:
        click.echo("hub addresses: no hub configured", err=True)
        return
    r = hubaddr.refresh(
        config.hub.host,
        config.hub.port,
        AddrSet(config.inline.home_nets),
        unit_dropin,
        apply=hubaddr.apply_runtime if apply else None,
    )
    try:
        hubaddr.write_status(config.device.state_dir, r)
    except OSError as e:
        click.echo(f"hub addresses: cannot write the status: {e}", err=True)
