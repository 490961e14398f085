"""The list of detectors and validation of their ``[detect.<name>]`` config sections."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from appliance.alerts.model import Signature
from appliance.config import ConfigError
from appliance.detect.base import Detector, Options, validate_options

# Module and class of each detector, in the order hooks run. The intel detector goes first so the
# others can see whether a flow is already known bad.
DETECTORS: tuple[tuple[str, str], ...] = (
    ("appliance.detect.detectors.intel", "IntelDetector"),
    ("appliance.detect.detectors.portscan", "PortScanDetector"),
    ("appliance.detect.detectors.bruteforce", "BruteForceDetector"),
    ("appliance.detect.detectors.exposure", "ExposureDetector"),
    ("appliance.detect.detectors.dga", "DgaDetector"),
    ("appliance.detect.detectors.dns_tunnel", "DnsTunnelDetector"),
    ("appliance.detect.detectors.web", "WebDetector"),
    ("appliance.detect.detectors.beacon", "BeaconDetector"),
    ("appliance.detect.detectors.cleartext", "CleartextDetector"),
)


def detector_classes() -> list[type[Detector]]:
    """Every detector class, in hook order."""
    return [getattr(importlib.import_module(module), cls) for module, cls in DETECTORS]


def create_detectors() -> list[Detector]:
    return [cls() for cls in detector_classes()]


def validate_detect_section(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Validated option values for every detector (defaults where the config says nothing)."""
    detectors = {d.name: d for d in create_detectors()}
    for name in raw:
        if name not in detectors:
            raise ConfigError(
                f"detect.{name}", f"unknown detector (known: {', '.join(sorted(detectors))})"
            )
    out = {}
    for name, det in detectors.items():
        values = validate_options(det, raw.get(name, {}))
        # The detector's own checks (ranges, formats) run on a fresh instance, so a bad value is
        # refused when the config is read (check-config, reload, set-config), naming its key.
        det.configure(Options(name, values), set(values))
        out[name] = values
    return out


def all_signatures() -> list[tuple[str, Signature]]:
    """(detector, signature) for every signature, sorted by id: the documented sid table."""
    sigs = [(cls.name, s) for cls in detector_classes() for s in cls.signatures]
    return sorted(sigs, key=lambda p: p[1].sid)
