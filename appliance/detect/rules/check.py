"""``watchpost rules check FILE...``: what a rule set would load, skip and refuse.

Prints the loaded / skipped / disabled counts, the skipped counts by reason and every syntax
error as ``file:line: why``. Exit 0 when no rule has a syntax error, 1 when some do, 2 when a
file is refused whole (unreadable, binary) or an option is bad.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.detect.rules.addresses import check_variables, default_vars
from appliance.detect.rules.ruleset import RulesError, load_files


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group("rules")
def rules() -> None:
    """Suricata-style rules: check rule files."""


@rules.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--home-net",
    "home_nets",
    multiple=True,
    help="An office range for $HOME_NET (repeatable; default: the config's inline.home_nets).",
)
@click.option("--var", "var_items", multiple=True, help="NAME=VALUE, e.g. HTTP_PORTS=[80,8080].")
@click.option(
    "--classification",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A classification.config (default: the shipped one).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Take home_nets (and rule variables, when the config has them) from this config.",
)
@click.option("-v", "--verbose", is_flag=True, help="Also list every skipped rule (file:line).")
def check(
    files: tuple[Path, ...],
    home_nets: tuple[str, ...],
    var_items: tuple[str, ...],
    classification: Path | None,
    config_path: Path | None,
    verbose: bool,
) -> None:
    """Load FILE... as the rules detector would; report what loads, what is skipped and why."""
    nets = list(home_nets)
    variables: dict[str, str] = {}
    if config_path is not None:
        from appliance.config import ConfigError
        from appliance.config import load as load_config

        try:
            cfg = load_config(config_path)
        except ConfigError as e:
            _fail(str(e))
            return
        if not nets:
            nets = list(cfg.inline.home_nets)
        opts = cfg.detect.get("rules", {})
        variables.update(opts.get("vars", {}) or {})
        if classification is None and opts.get("classification"):
            classification = Path(opts["classification"])
    if not nets:
        from appliance.config import Config

        nets = list(Config().inline.home_nets)
    merged = default_vars(nets)
    merged.update(variables)
    for item in var_items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            _fail(f"--var {item!r}: expected NAME=VALUE")
        merged[name.strip().lstrip("$")] = value.strip()
    problem = check_variables(merged)
    if problem:
        _fail(f"variables: {problem}")
    try:
        rs = load_files(files, merged, classification)
    except RulesError as e:
        _fail(str(e))
        return
    rep = rs.report
    total = rep.loaded + rep.skipped_total + rep.error_count
    click.echo(
        f"{total} rules in {len(rep.files)} file{'s' if len(rep.files) != 1 else ''}: "
        f"{rep.loaded} loaded, {rep.skipped_total} skipped, {rep.error_count} with syntax "
        f"errors; {rep.disabled} commented out"
    )
    if rep.loaded:
        hooks = ", ".join(f"{h} {n}" for h, n in sorted(rep.by_hook.items()))
        click.echo(
            f"loaded by where they run: {hooks}; {rep.prefiltered} prefiltered by content, "
            f"{rep.always} checked by protocol/port"
        )
    if rep.skipped:
        click.echo("skipped by reason:")
        for why, n in sorted(rep.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            click.echo(f"  {n:6d}  {why}")
    if verbose and rep.skipped_at:
        click.echo("skipped rules:")
        for line in rep.skipped_at:
            click.echo(f"  {line}")
    if rep.error_count:
        click.echo(f"syntax errors ({rep.error_count}):", err=True)
        for line in rep.errors:
            click.echo(f"  {line}", err=True)
        if rep.error_count > len(rep.errors):
            click.echo(f"  ... and {rep.error_count - len(rep.errors)} more", err=True)
        sys.exit(1)
