"""Commands on the unit itself: ack-alerts, identify (blink the LEDs), restart, reboot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.hublink.command_api import INVALID, Arg, CommandFailed, Reply, check_args

if TYPE_CHECKING:
    from appliance.hublink.commands import CommandHandler

MAX_IDENTIFY_S = 600
MAX_ACK_IDS = 1000


def ack_alerts(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    args = check_args("ack-alerts", env["args"], {"ids": Arg(list)})
    ids = args["ids"]
    if ids is not None and (
        len(ids) > MAX_ACK_IDS or not all(isinstance(i, str) and 0 < len(i) <= 128 for i in ids)
    ):
        raise CommandFailed(
            INVALID, f"ack-alerts: args.ids must be up to {MAX_ACK_IDS} alert id strings"
        )
    count = h.device.ack_alerts(ids)
    return {"acknowledged": int(count)}


def identify(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    args = check_args(
        "identify", env["args"], {"seconds": Arg(int, default=30, lo=1, hi=MAX_IDENTIFY_S)}
    )
    h.device.identify(args["seconds"])
    return {"seconds": args["seconds"]}


def restart(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    check_args("restart", env["args"], {})
    h.defer(h.device.restart)
    return {"restarting": True}


def reboot(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    check_args("reboot", env["args"], {})
    h.defer(h.device.reboot)
    return {"rebooting": True}
