"""Firewall commands: block (never an address in never_block or one that cannot be blocked) and
unblock."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from appliance.hublink.command_api import (
    FAILED,
    INVALID,
    REFUSED,
    Arg,
    CommandFailed,
    Reply,
    check_args,
)
from appliance.packet.addrset import AddrSet

if TYPE_CHECKING:
    from appliance.hublink.commands import CommandHandler

MAX_BLOCK_TTL = 30 * 86400


def block(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    cfg = h.device.config
    args = check_args(
        "block",
        env["args"],
        {
            "address": Arg(str, True),
            "ttl": Arg(int, default=cfg.inline.block_ttl, lo=1, hi=MAX_BLOCK_TTL),
        },
    )
    addr = _address("block", args["address"])
    net = AddrSet(cfg.inline.never_block).covering(addr)
    if net is not None:
        raise CommandFailed(REFUSED, f"block: {addr} is in never_block ({net})")
    if addr.is_loopback or addr.is_multicast or addr.is_unspecified or addr.is_link_local:
        raise CommandFailed(REFUSED, f"block: {addr} is not an address that can be blocked")
    try:
        h.device.block(str(addr), args["ttl"])
    except (ValueError, OSError) as e:
        raise CommandFailed(FAILED, f"block: {e}") from None
    return {"address": str(addr), "ttl": args["ttl"]}


def unblock(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    args = check_args("unblock", env["args"], {"address": Arg(str, True)})
    addr = _address("unblock", args["address"])
    try:
        was = h.device.unblock(str(addr))
    except (ValueError, OSError) as e:
        raise CommandFailed(FAILED, f"unblock: {e}") from None
    return {"address": str(addr), "was_blocked": bool(was)}


def _address(cmd: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise CommandFailed(INVALID, f"{cmd}: {text!r} is not an IP address") from None
