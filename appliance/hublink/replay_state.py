"""What the device remembers about envelopes it accepted, so none can be used twice or late.

Persisted in ``{state_dir}/commands.json`` (atomically): the last accepted `seq` per device, the
recent envelope ids, the applied desired-config version, and the time floor: the latest
`issued_at` accepted so far (or the synchronised time at which an envelope was found expired).
Without a synchronised clock (a Pi has no RTC) expiry is judged against that floor, so an
envelope that expired before the latest one accepted (or one already refused as expired) is
refused even after a reboot into 1970.

The floor is capped, so that an envelope with an `issued_at` far ahead (2099, signed by a
careless hub account or a hub with a wrong clock) cannot lock out every later command:

- with a synchronised clock, an envelope issued more than `MAX_SKEW` seconds in the future is
  refused (code ``future``), and a floor found beyond that clock (raised earlier without one) is
  brought back to the clock;
- without one, accepting an envelope raises the floor to its `issued_at` but never beyond
  `FLOOR_STEP` past the time this process started from (the floor it loaded, or the local clock
  at start if later) plus the time it has run (monotonic); the envelope itself is accepted. The
  floor so stays within a minute of the device's own idea of the time, which (without an RTC)
  lags the real one: a command signed now, valid for `COMMAND_TTL`, is never locked out.

A command's seq is committed (and saved) BEFORE the command acts; a save that fails refuses the
command. A command refused after the commit is undone (its seq given back), so a refusal leaves
the file as it was.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import envelope as env_mod
from protocol import files
from protocol.envelope import EnvelopeError

log = logging.getLogger(__name__)

RECENT_IDS = 512
MAX_SKEW = env_mod.MAX_SKEW
# The most an unsynchronised floor may move past the device's own idea of the time (where this
# start began + the uptime). Below a command's lifetime (`COMMAND_TTL`), so whatever was accepted
# before, a command the hub signs now still expires after the floor.
FLOOR_STEP = 60

_TIME_ERROR = 5  # adjtimex() result while the kernel's STA_UNSYNC is set


def system_clock_synced() -> bool:
    """True once the clock has been synchronised (systemd-timesyncd flag or kernel NTP state).

    `adjtimex` with modes 0 only reads; its return value is TIME_ERROR while STA_UNSYNC is set,
    which both timesyncd and chrony clear once they have disciplined the clock.
    """
    if Path("/run/systemd/timesync/synchronized").exists():
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # larger than struct timex; modes = 0
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return False
    return bool(state >= 0 and state != _TIME_ERROR)


class CommandStateError(RuntimeError):
    """The persisted replay state cannot be read; commands are not safe to accept."""


@dataclass(frozen=True, slots=True)
class Undo:
    """What a commit changed, to give it back if the command is then refused."""

    device: str
    last_seq: int | None
    recent: tuple[str, ...]
    time_floor: int
    saved: bytes | None  # the file's content before (None: there was no file)


class ReplayState:
    """Last accepted seq per device, recent envelope ids, the applied desired version and the
    time floor (see the module doc)."""

    FORMAT = 1

    def __init__(
        self,
        path: str | os.PathLike[str],
        recent_max: int = RECENT_IDS,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.last_seq: dict[str, int] = {}
        self.recent: deque[str] = deque(maxlen=recent_max)
        self.desired_version = 0
        self.desired_applied_at = 0
        self.time_floor = 0
        self._saved: bytes | None = None  # what the file holds
        self._load()
        self._clock, self._monotonic = clock, monotonic
        self._start = max(self.time_floor, int(clock()))  # what the floor cap counts from
        self._start_mono = monotonic()

    def floor_cap(self) -> int:
        """The highest an envelope accepted now may raise the time floor (see the module doc)."""
        elapsed = max(0.0, self._monotonic() - self._start_mono)
        return int(max(self._start + elapsed, self._clock())) + FLOOR_STEP

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            raise CommandStateError(f"replay state {self.path}: {e.strerror or e}") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != self.FORMAT:
                raise ValueError("unknown format")
            last = data["last_seq"]
            recent = data["recent_ids"]
            if not isinstance(last, dict) or not all(
                isinstance(k, str) and type(v) is int for k, v in last.items()
            ):
                raise ValueError("bad last_seq")
            if not isinstance(recent, list) or not all(isinstance(i, str) for i in recent):
                raise ValueError("bad recent_ids")
            version = data.get("desired_version", 0)
            applied = data.get("desired_applied_at", 0)
            floor = data.get("time_floor", 0)
            if type(version) is not int or type(applied) is not int:
                raise ValueError("bad desired_version")
            if type(floor) is not int:
                raise ValueError("bad time_floor")
        except (ValueError, KeyError, TypeError) as e:
            raise CommandStateError(
                f"replay state {self.path} is unreadable ({e}); refusing commands rather than "
                "forgetting which were already accepted"
            ) from None
        self.last_seq = dict(last)
        self.recent.extend(recent)
        self.desired_version = version
        self.desired_applied_at = applied
        self.time_floor = floor
        self._saved = raw

    # -- checks ---------------------------------------------------------------------------------

    def check(self, device: str, seq: int, envelope_id: str) -> None:
        last = self.last_seq.get(device)
        if last is not None and seq <= last:
            raise EnvelopeError(
                env_mod.REPLAYED,
                f"replayed: seq {seq} is not above the last accepted seq {last}",
                envelope_id,
            )
        if envelope_id in self.recent:
            raise EnvelopeError(
                env_mod.REPLAYED, f"replayed: id {envelope_id} was already accepted", envelope_id
            )

    def check_expiry(self, env: Mapping[str, Any], now: float, synced: bool) -> None:
        """Refuse an expired envelope: by the clock once synchronised, else by the time floor.
        A refusal by the synchronised clock raises the floor to it (saved), so the same
        envelope stays expired after a reboot without a synchronised clock."""
        expires, eid = env["expires_at"], env["id"]
        if synced:
            t = int(now)
            if self.time_floor > t + MAX_SKEW:
                self._lower_floor(t)
            if env["issued_at"] > t + MAX_SKEW:
                raise EnvelopeError(
                    env_mod.FUTURE,
                    f"issued in the future: issued at {env['issued_at']}, the device clock "
                    f"(synchronised) says {t}, more than {MAX_SKEW} s earlier",
                    eid,
                )
            if t > expires:
                self._raise_floor(t)
                raise EnvelopeError(
                    env_mod.EXPIRED,
                    f"expired: expired at {expires}, the device clock says {t}",
                    eid,
                )
        elif self.time_floor > expires:
            raise EnvelopeError(
                env_mod.EXPIRED,
                f"expired: expired at {expires}, before {self.time_floor}, the latest time this "
                "device has seen (its clock is not synchronised)",
                eid,
            )

    def _raise_floor(self, t: int) -> None:
        if t > self.time_floor:
            self._move_floor(t)

    def _lower_floor(self, t: int) -> None:
        """A floor beyond the synchronised clock was raised without one: bring it back."""
        before = self.time_floor
        if self._move_floor(t):
            log.warning("time floor %d was beyond the synchronised clock: lowered to %d", before, t)

    def _move_floor(self, t: int) -> bool:
        """The floor at `t`, saved; on a failed save it stays where it was (False)."""
        before = self.time_floor
        self.time_floor = t
        try:
            self._save()
        except OSError as e:
            self.time_floor = before
            log.warning("cannot save the time floor to %s: %s", self.path, e)
            return False
        return True

    def _raised(self, issued_at: int) -> int:
        return max(self.time_floor, min(issued_at, self.floor_cap()))

    # -- changes --------------------------------------------------------------------------------

    def commit(self, device: str, seq: int, envelope_id: str, issued_at: int) -> Undo:
        """Record an envelope as used, on disk, before it acts. OSError (nothing changed, in
        memory either) when it cannot be saved: the command must then be refused."""
        undo = Undo(
            device, self.last_seq.get(device), tuple(self.recent), self.time_floor, self._saved
        )
        self.last_seq[device] = seq
        self.recent.append(envelope_id)
        self.time_floor = self._raised(issued_at)
        try:
            self._save()
        except OSError:
            self._restore(undo)
            raise
        return undo

    def undo(self, undo: Undo) -> None:
        """Give a committed envelope back (it was refused before it changed anything): the
        file holds what it held before."""
        self._restore(undo)
        try:
            if undo.saved is None:
                self.path.unlink(missing_ok=True)
            else:
                files.atomic_write(self.path, undo.saved, mode=0o600)
            self._saved = undo.saved
        except OSError as e:  # the seq stays used on disk: the safe direction
            log.warning("cannot save the replay state to %s: %s", self.path, e)

    def _restore(self, undo: Undo) -> None:
        if undo.last_seq is None:
            self.last_seq.pop(undo.device, None)
        else:
            self.last_seq[undo.device] = undo.last_seq
        self.recent.clear()
        self.recent.extend(undo.recent)
        self.time_floor = undo.time_floor

    def set_desired(self, version: int, now: float, issued_at: int = 0) -> None:
        """Record a desired version as applied (OSError, nothing changed, if it cannot be
        saved)."""
        before = (self.desired_version, self.desired_applied_at, self.time_floor)
        self.desired_version = version
        self.desired_applied_at = int(now)
        self.time_floor = self._raised(issued_at)
        try:
            self._save()
        except OSError:
            self.desired_version, self.desired_applied_at, self.time_floor = before
            raise

    def _save(self) -> None:
        data = {
            "format": self.FORMAT,
            "last_seq": self.last_seq,
            "recent_ids": list(self.recent),
            "desired_version": self.desired_version,
            "desired_applied_at": self.desired_applied_at,
            "time_floor": self.time_floor,
        }
        raw = json.dumps(data, sort_keys=True).encode()
        files.atomic_write(self.path, raw, mode=0o600)
        self._saved = raw
