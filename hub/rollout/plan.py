"""A rollout's plan: the failure threshold, the canaries and the waves (pure functions; bad input
raises `PlanError` naming the option and what is wrong)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Device job states on the hub side: the device's own (protocol: appliance/update/job.py states,
# answered on cmd/res) plus `pending` (not sent yet) and `timeout` (no final answer in time).
PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"
ROLLED_BACK = "rolled-back"
TIMEOUT = "timeout"
FAILURES = (FAILED, ROLLED_BACK, TIMEOUT)
DONE = (SUCCEEDED, *FAILURES)
DEVICE_STATES = (
    PENDING, "queued", "downloading", "verifying", "installing", "switching", "checking",
    SUCCEEDED, FAILED, ROLLED_BACK, TIMEOUT,
)  # fmt: skip

# Rollout states: running (a driver may work on it), paused (by an operator or by a failed wave;
# `resume` continues), stopped (ended by an operator; never resumed), done (every wave ran).
RUNNING, PAUSED, STOPPED, COMPLETE = "running", "paused", "stopped", "done"
# Wave states: `accepted` is a failed wave the operator resumed past.
W_PENDING, W_RUNNING, W_PASSED, W_FAILED, W_ACCEPTED = (
    "pending", "running", "passed", "failed", "accepted"
)  # fmt: skip
MAX_WAVE_SIZE = 10_000


@dataclass(frozen=True)
class Outcome:
    """How one device's job ended, as the hub saw it."""

    state: str  # succeeded | failed | rolled-back | timeout
    reason: str
    version: str | None
    answer: dict[str, Any] | None


class PlanError(ValueError):
    """Bad rollout input; the message names the option and what is wrong."""


@dataclass(frozen=True)
class Threshold:
    """Failures a wave may have before the rollout pauses: more than `value` devices (count) or
    more than `value` percent of the wave (percent)."""

    kind: str  # "count" | "percent"
    value: float

    def exceeded(self, failures: int, size: int) -> bool:
        if self.kind == "count":
            return failures > self.value
        return size > 0 and failures * 100.0 / size > self.value

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.kind == "percent" else f"{int(self.value)}"


def parse_threshold(text: str) -> Threshold:
    """``K`` (a wave may have K failures) or ``P%`` (a wave may have P percent failed)."""
    raw = text.strip()
    what = f"--fail-threshold {text!r}"
    if raw.endswith("%"):
        try:
            value = float(raw[:-1])
        except ValueError:
            raise PlanError(f"{what}: expected K (devices) or P% (percent of a wave)") from None
        if not 0 <= value < 100:
            raise PlanError(f"{what}: a percentage must be from 0 up to (not including) 100")
        return Threshold("percent", value)
    if not raw.isdigit():
        raise PlanError(f"{what}: expected K (devices) or P% (percent of a wave)")
    count = int(raw)
    if count >= MAX_WAVE_SIZE:
        raise PlanError(f"{what}: must be less than {MAX_WAVE_SIZE}")
    return Threshold("count", count)


def parse_canary(text: str, devices: Sequence[str]) -> list[str]:
    """``N`` (the first N targets, in order) or ``id,id,...`` (each must be a target)."""
    raw = text.strip()
    if raw.isdigit():
        n = int(raw)
        if n > len(devices):
            raise PlanError(f"--canary {n}: only {len(devices)} target devices")
        return list(devices[:n])
    ids = [p.strip() for p in raw.split(",") if p.strip()]
    if not ids:
        raise PlanError("--canary: expected a number or device ids separated by commas")
    unknown = [i for i in ids if i not in devices]
    if unknown:
        raise PlanError(f"--canary: not among the target devices: {', '.join(unknown)}")
    if len(set(ids)) != len(ids):
        raise PlanError("--canary: a device is named twice")
    return ids


def check_wave_size(size: int) -> int:
    if not 1 <= size <= MAX_WAVE_SIZE:
        raise PlanError(f"--wave-size {size}: must be from 1 to {MAX_WAVE_SIZE}")
    return size


def waves(devices: Sequence[str], canaries: Sequence[str], wave_size: int) -> list[list[str]]:
    """Wave 0 the canaries (when there are any), then the other devices in waves of
    `wave_size`, in the targets' order."""
    check_wave_size(wave_size)
    rest = [d for d in devices if d not in set(canaries)]
    out = [list(canaries)] if canaries else []
    out += [rest[i : i + wave_size] for i in range(0, len(rest), wave_size)]
    return out
