"""Per-command handlers and the dispatch table (data).

A handler is ``run(handler, env, reply) -> result | None``: `handler` is the
`appliance.hublink.commands.CommandHandler` (its device, replay state, clock, jobs), `env` the
verified envelope whose seq is already saved, `reply` the answer channel. It returns the result
dict of an ``ok`` answer, or None when it answered for itself (a job with states); it raises
`CommandFailed` to refuse (its seq is given back). An action to run after the answer (restart,
reboot, a `config/reported` refresh) goes through ``handler.defer(fn)``.

A new command is a function in a module here plus one line in `COMMANDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from appliance.hublink.handlers import config, firewall, info, jobs, unit

if TYPE_CHECKING:
    from appliance.hublink.command_api import Reply
    from appliance.hublink.commands import CommandHandler

Handler = Callable[["CommandHandler", dict[str, Any], "Reply"], "dict[str, Any] | None"]

COMMANDS: Mapping[str, Handler] = MappingProxyType(
    {
        "ping": info.ping,
        "status": info.status,
        "get-config": info.get_config,
        "set-config": config.set_config,
        "set-mode": config.set_mode,
        "intel-update": jobs.intel_update,
        "rules-update": jobs.rules_update,
        "update": jobs.update,
        "block": firewall.block,
        "unblock": firewall.unblock,
        "ack-alerts": unit.ack_alerts,
        "identify": unit.identify,
        "logs": info.logs,
        "restart": unit.restart,
        "reboot": unit.reboot,
    }
)
