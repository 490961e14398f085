"""The `watchpost hub` / `watchpost-hub` click group; the commands register on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hub.operator.connection import Ctx, default_config_path


def _opt(name: str, envvar: str, **kw: Any) -> Any:
    return click.option(name, envvar=f"WATCHPOST_HUB_{envvar}", show_envvar=True, **kw)


@click.group("hub")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="WATCHPOST_HUB_CONFIG",
    show_envvar=True,
    help="Operator config file (TOML, [operator] table).",
)
@_opt("--host", "HOST", help="Broker host.")
@_opt("--port", "PORT", type=int, help="Broker port (default 8883).")
@_opt("--ca", "CA", help="CA certificate that signed the broker's certificate.")
@_opt("--cert", "CERT", help="Hub client certificate (PEM).")
@_opt("--key", "KEY", help="Hub client key (PEM).")
@_opt("--command-key", "COMMAND_KEY", help="Ed25519 command signing key (PKCS#8 PEM).")
@_opt("--site", "SITE", help="Site of the device(s).")
@_opt("--group", "GROUP", help="Shared-subscription group for `tail`.")
@click.pass_context
def hub(ctx: click.Context, config_path: Path | None, **overrides: Any) -> None:
    """Hub operator: devices, alerts, signed commands, intel and config over MQTT."""
    path = config_path or default_config_path()
    ctx.obj = Ctx(path, {k: v for k, v in overrides.items() if v is not None})
