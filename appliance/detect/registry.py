"""The detectors by name, in the order their hooks run.

Importing this module hands every detector's declared options to the config layer
(`appliance.config.register_detector`), so ``[detect.<name>]`` tables are checked when a config
is read, without building a detector.
"""

from __future__ import annotations

from appliance import config as config_mod
from appliance.alerts.model import Signature
from appliance.detect.base import Detector, spec_of
from appliance.detect.detectors.beacon import BeaconDetector
from appliance.detect.detectors.bruteforce import BruteForceDetector
from appliance.detect.detectors.cleartext import CleartextDetector
from appliance.detect.detectors.dga import DgaDetector
from appliance.detect.detectors.dns_tunnel import DnsTunnelDetector
from appliance.detect.detectors.exposure import ExposureDetector
from appliance.detect.detectors.intel import IntelDetector
from appliance.detect.detectors.portscan import PortScanDetector
from appliance.detect.detectors.rules import RulesDetector
from appliance.detect.detectors.web import WebDetector

# The intel detector goes first so the others can see whether a flow is already known bad.
DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        IntelDetector,
        PortScanDetector,
        BruteForceDetector,
        ExposureDetector,
        DgaDetector,
        DnsTunnelDetector,
        WebDetector,
        BeaconDetector,
        CleartextDetector,
        RulesDetector,
    )
}

for _cls in DETECTORS.values():
    config_mod.register_detector(spec_of(_cls))  # also checks hook names and defaults


def detector_classes() -> list[type[Detector]]:
    """Every detector class, in hook order."""
    return list(DETECTORS.values())


def create_detectors() -> list[Detector]:
    return [cls() for cls in DETECTORS.values()]


def all_signatures() -> list[tuple[str, Signature]]:
    """(detector, signature) for every signature, sorted by id: the documented sid table."""
    sigs = [(cls.name, s) for cls in DETECTORS.values() for s in cls.signatures]
    return sorted(sigs, key=lambda p: p[1].sid)
