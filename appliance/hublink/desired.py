"""Desired config: the hub's retained ``config/desired`` and the device's ``config/reported``.

A desired config is an envelope signed ``"for": "desired"`` (refused on ``cmd``, and a command
envelope is refused here), carrying ``set-config`` with a partial TOML-shaped table. Its `seq`
is its version, which only grows: it is applied when above the applied version, the same version
(re-delivered on every reconnect) is left alone, an older one is refused as stale. It has its own
expiry (30 days by default, `protocol.envelope.DESIRED_TTL`), judged like a command's (the
synchronised clock, else the time floor). Every outcome is reported on ``config/reported``
(retained): the applied version and config, or the error.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from protocol import envelope as env_mod
from protocol.envelope import EnvelopeError

if TYPE_CHECKING:
    from appliance.hublink.command_api import Publish
    from appliance.hublink.commands import CommandHandler

log = logging.getLogger(__name__)


class DesiredConfig:
    """Follows ``config/desired`` for a `CommandHandler` (its keys, state and config)."""

    def __init__(self, handler: CommandHandler) -> None:
        self.handler = handler
        self.publish: Publish | None = None

    def handle(self, payload: bytes) -> None:
        """Apply a retained desired config when its version is newer; report the outcome."""
        if not payload:
            return  # the retained message was cleared
        h = self.handler
        state = h.state
        error = ""
        version = None
        try:
            env = env_mod.parse(payload)
            version = env["seq"]  # named in the report of a rejection
            h.authenticate(env, env_mod.FOR_DESIRED)
            if env["cmd"] != "set-config":
                raise EnvelopeError(
                    env_mod.MALFORMED,
                    f"malformed: config/desired must carry set-config, not {env['cmd']!r}",
                    env["id"],
                )
            if version < state.desired_version:
                raise EnvelopeError(
                    env_mod.STALE,
                    f"stale: version {version} is below the applied version "
                    f"{state.desired_version} (desired versions only grow)",
                    env["id"],
                )
            if version > state.desired_version:
                h.apply_changes(
                    env["args"],
                    commit=lambda: state.set_desired(version, h.clock(), env["issued_at"]),
                )
                h.counters["desired_applied"] += 1
                log.info("desired config version %d applied", version)
        except Exception as e:
            error = h.describe_failure(e)
        if error:
            h.counters["desired_rejected"] += 1
            log.warning("desired config rejected: %s", error)
        self.report(error=error, rejected_version=version if error else None)

    def reported(self, error: str = "", rejected_version: int | None = None) -> dict[str, Any]:
        h = self.handler
        cfg = h.device.config
        out: dict[str, Any] = {
            "device": cfg.device.id,
            "version": h.state.desired_version,
            "applied_at": h.state.desired_applied_at,
            "reported_at": int(h.clock()),
            "config": h.redacted(cfg),
        }
        if error:
            out["error"] = error
            if rejected_version is not None:
                out["rejected_version"] = rejected_version
        return out

    def report(self, error: str = "", rejected_version: int | None = None) -> None:
        """Publish `config/reported` (retained) if a link is attached."""
        if self.publish is None:
            return
        try:
            self.publish("config/reported", self.reported(error, rejected_version), True)
        except Exception:
            log.exception("could not publish config/reported")
