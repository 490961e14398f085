"""What a remote command handler works with: the `Device` facade, argument checks, answer codes.

Shared by the dispatcher (`appliance.hublink.commands`) and the per-command handlers
(`appliance.hublink.handlers`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.config import Config

Reply = Callable[[dict[str, Any]], None]
# (subtopic, payload, retain); what it returns (published or not) is not used
Publish = Callable[[str, Mapping[str, Any], bool], object]
ClockSynced = Callable[[], bool]

# Answer codes for commands that got past the envelope checks.
INVALID = "invalid"  # bad args
REFUSED = "refused"  # the device (or a rule here) refused the action
FAILED = "failed"  # the action was tried and failed
BUSY = "busy"


class Device(Protocol):
    """What remote management may do to the appliance. Called from the handler's worker thread."""

    @property
    def config(self) -> Config:
        """The config in force (with `source` set to the file it is saved to)."""
        ...

    @property
    def log_file(self) -> str:
        """The daemon's own log file ("" when it logs to no file): all `logs` may read."""
        ...

    def apply_config(self, config: Config) -> None:
        """Apply a validated config live; raise ConfigError to refuse, leaving the old in force."""
        ...

    def block(self, address: str, ttl: int) -> None:
        """Block `address` for `ttl` seconds."""
        ...

    def unblock(self, address: str) -> bool:
        """Lift a block; False if it was not blocked."""
        ...

    def reload_intel(self) -> str:
        """Rebuild the intel store (config paths + `bundle.installed_paths`) and swap it in.

        Return the new store's version; raise to refuse, keeping the old store.
        """
        ...

    def ack_alerts(self, ids: Sequence[str] | None) -> int:
        """Acknowledge alerts (all when `ids` is None); return how many were acknowledged."""
        ...

    def identify(self, seconds: int) -> None:
        """Blink the LEDs for `seconds` so an installer can find this unit."""
        ...

    def restart(self) -> None:
        """Schedule a clean restart of the daemon; return at once."""
        ...

    def reboot(self) -> None:
        """Schedule a reboot of the machine; return at once."""
        ...

    def status(self) -> dict[str, Any]:
        """The status dict (as on the status page and the retained `status` topic)."""
        ...


class CommandFailed(Exception):
    """A verified command that could not be carried out; nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Arg:
    kind: type
    required: bool = False
    default: Any = None
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()


def check_args(cmd: str, args: Mapping[str, Any], spec: Mapping[str, Arg]) -> dict[str, Any]:
    """`args` checked against `spec` (defaults filled in); CommandFailed(INVALID) names the arg."""
    unknown = sorted(set(args) - set(spec))
    if unknown:
        known = ", ".join(sorted(spec)) or "none"
        raise CommandFailed(INVALID, f"{cmd}: unknown argument(s) {', '.join(unknown)} ({known})")
    out: dict[str, Any] = {}
    for name, a in spec.items():
        if name not in args:
            if a.required:
                raise CommandFailed(INVALID, f"{cmd}: args.{name} is required")
            out[name] = a.default
            continue
        v = args[name]
        ok = isinstance(v, a.kind) and not (a.kind is int and isinstance(v, bool))
        if not ok:
            raise CommandFailed(INVALID, f"{cmd}: args.{name} must be {a.kind.__name__}")
        if a.lo is not None and a.hi is not None and not a.lo <= v <= a.hi:
            raise CommandFailed(INVALID, f"{cmd}: args.{name} must be from {a.lo} to {a.hi}")
        if a.choices and v not in a.choices:
            raise CommandFailed(
                INVALID, f"{cmd}: args.{name} must be one of {', '.join(a.choices)}"
            )
        out[name] = v
    return out
