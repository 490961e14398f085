"""The MQTT topic layout: ``watchpost/v1/{site}/{device}/{sub}``, the same on device and hub."""

from __future__ import annotations

ROOT = "watchpost/v1"

# Sub-topics under a device's root and who writes them.
STATUS = "status"  # device, retained
ALERTS = "alerts"  # device, QoS 1
TELEMETRY = "telemetry"  # device
SUMMARY = "summary"  # device, daily
CMD = "cmd"  # operator
CMD_RES = "cmd/res"  # device
CONFIG_DESIRED = "config/desired"  # operator, retained
CONFIG_REPORTED = "config/reported"  # device, retained


def device_root(site: str, device: str) -> str:
    return f"{ROOT}/{site}/{device}"


def topic(site: str, device: str, sub: str) -> str:
    return f"{ROOT}/{site}/{device}/{sub}"


def split(name: str) -> tuple[str, str, str]:
    """(site, device, sub) of a device topic; ValueError for anything else."""
    parts = name.split("/", 4)
    if len(parts) < 5 or f"{parts[0]}/{parts[1]}" != ROOT or not parts[2] or not parts[3]:
        raise ValueError(f"not a watchpost device topic: {name!r}")
    return parts[2], parts[3], parts[4]
