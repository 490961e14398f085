"""Config commands: set-config (a partial TOML-shaped table) and set-mode (monitor/block)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.hublink.command_api import Arg, Reply, check_args
from appliance.hublink.remote_config import redacted

if TYPE_CHECKING:
    from appliance.hublink.commands import CommandHandler


def set_config(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    new, changed = h.apply_changes(env["args"])
    if changed:
        h.defer(h.desired.report)
    return {"changed": changed, "config": redacted(new)}


def set_mode(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    args = check_args(
        "set-mode", env["args"], {"mode": Arg(str, True, choices=("monitor", "block"))}
    )
    _new, changed = h.apply_changes({"inline": {"mode": args["mode"]}})
    if changed:
        h.defer(h.desired.report)
    return {"mode": args["mode"], "changed": changed}
