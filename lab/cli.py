"""The lab's command line: `watchpost lab up|down|status|exec` and `watchpost demo`.

Registered as ``watchpost`` plugins (entry points ``watchpost.commands``) and as the
`watchpost-lab` script; none of this is in the firmware wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click

from lab.demo import DemoError, run_demo
from lab.netns import Lab, LabError, require_root


# ---- command line -------------------------------------------------------------------------
def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


_prefix_option = click.option(
    "--prefix", default="wp", show_default=True, help="Namespace name prefix (<prefix>-<host>)."
)


@click.group("lab")
def lab() -> None:
    """The network-namespace lab (office, appliance, router, internet hosts)."""


@lab.command("up")
@_prefix_option
def lab_up(prefix: str) -> None:
    """Build the lab (does nothing if it is already up)."""
    try:
        lb = Lab(prefix).up()
        click.echo(lb.describe())
    except LabError as e:
        _fail(str(e))


@lab.command("down")
@_prefix_option
def lab_down(prefix: str) -> None:
    """Remove the lab, with every process inside it (also after a crash)."""
    try:
        removed = Lab(prefix).down()
    except LabError as e:
        _fail(str(e))
        return
    click.echo(f"lab {prefix}: removed {len(removed)} namespaces")


@lab.command("status")
@_prefix_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def lab_status(prefix: str, as_json: bool) -> None:
    """Show which lab namespaces exist and what runs in them."""
    try:
        lb = Lab(prefix)
        require_root()
        click.echo(json.dumps(lb.status(), indent=2) if as_json else lb.describe())
    except LabError as e:
        _fail(str(e))


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@_prefix_option
@click.argument("host")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(prefix: str, host: str, cmd: tuple[str, ...]) -> None:
    """Run CMD inside lab host HOST (e.g. `watchpost lab exec pc1 ping -c1 203.0.113.10`)."""
    try:
        lb = Lab(prefix)
        require_root()
        ns = lb.ns(host)
    except LabError as e:
        _fail(str(e))
        return
    if ns not in lb.existing_namespaces():
        _fail(f"lab {prefix} is not up (no namespace {ns}): run `watchpost lab up`")
    sys.exit(subprocess.call(["ip", "netns", "exec", ns, *cmd]))


@click.command("demo")
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help="Stop by itself after this many seconds (default: until Ctrl-C).")  # fmt: skip
@_prefix_option
@click.option("-v", "--verbose", is_flag=True, help="Also show traffic commands that failed.")
def demo(duration: float | None, prefix: str, verbose: bool) -> None:
    """Lab up, the daemon inline, office traffic and attacks; alerts printed as they come."""
    try:
        code = run_demo(prefix=prefix, duration=duration, verbose=verbose)
    except (LabError, DemoError) as e:
        _fail(str(e))
        return
    sys.exit(code)


@click.group("watchpost-lab", context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Watchpost's development lab: network namespaces, the demo."""


main.add_command(lab)
main.add_command(demo)
