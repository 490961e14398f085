"""`watchpost hub …` (also `watchpost-hub …`): the hub operator's side of remote management.

One module per job: ``connection`` (settings, the MQTT 5 client, retained reads), ``commands``
(keygen, send, push-intel, set-config), ``rules`` (push-rules), ``devices`` and ``tail``; the
collector's ``collect`` and ``fleet`` live in hub/collector/. Importing the package registers
every command on the ``hub`` group.
"""

from __future__ import annotations

from hub import renewal  # registers `renewals`
from hub.collector import command as collector_command  # registers `collect`, `fleet`
from hub.console import command as console_command  # console, export, report, indicators
from hub.operator import commands, devices, rules, tail
from hub.operator.connection import (
    EXIT_ERROR,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Connection,
    Ctx,
    OperatorError,
    Settings,
    collect_retained,
    load_settings,
)
from hub.operator.group import hub
from hub.operator.tail import Dedup, GapTracker
from hub.rollout import command as rollout_command  # push-update, rollout

__all__ = [
    "EXIT_ERROR",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "Connection",
    "Ctx",
    "Dedup",
    "GapTracker",
    "OperatorError",
    "Settings",
    "collect_retained",
    "collector_command",
    "commands",
    "console_command",
    "devices",
    "hub",
    "load_settings",
    "renewal",
    "rollout_command",
    "rules",
    "tail",
]
