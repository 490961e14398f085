"""Job commands (they answer for themselves with job states): intel-update (chunked intel
bundle, `appliance.hublink.intel_transfer`), rules-update (a rule bundle over the same transfer,
`appliance.hublink.rules_job`) and update (a release, `appliance.hublink.update_job`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.hublink.command_api import INVALID, CommandFailed, Reply
from appliance.hublink.intel_transfer import BadChunk, IntelTransfer

if TYPE_CHECKING:
    from appliance.hublink.commands import CommandHandler


def intel_update(h: CommandHandler, env: dict[str, Any], reply: Reply) -> None:
    _chunked(h, h.intel, env, reply)


def rules_update(h: CommandHandler, env: dict[str, Any], reply: Reply) -> None:
    _chunked(h, h.rules, env, reply)


def _chunked(h: CommandHandler, job: IntelTransfer, env: dict[str, Any], reply: Reply) -> None:
    """A chunk of a bundle transfer: a refused chunk gives its seq back (the job answers for
    itself otherwise)."""
    undo = h.running_undo
    assert undo is not None
    try:
        job.handle(env, reply, h.clock(), refuse=lambda: h.state.undo(undo))
    except BadChunk as e:
        raise CommandFailed(INVALID, str(e)) from None


def update(h: CommandHandler, env: dict[str, Any], reply: Reply) -> None:
    h.update.handle(env, reply, h.clock())
