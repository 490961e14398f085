"""The `rules-update` job: a signed rules bundle (kind ``watchpost-rules``) over the intel
bundle transfer (`appliance.hublink.intel_transfer`), installed as
``<device.state_dir>/rules/<name>`` where the rules detector picks it up live.

Before the bundle is swapped in, its rules are parsed with the running config's variables and
classification (`appliance.detect.detectors.rules.check_text`): a bundle with a syntax error
(``name:line: why`` in the answer), one that is not UTF-8 text, or one for a device whose
``detect.rules.hub`` is off is refused and the rules in force stay as they were. The answer of a
succeeded job carries the loaded / skipped / disabled counts (skipped by reason).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.config import Config
from appliance.detect.detectors.rules import HUB_SUFFIX, check_text, hub_files, rules_dir_for
from appliance.detect.rules.ruleset import RulesError, read_text
from appliance.hublink.intel_transfer import TRANSFER_TIMEOUT_S, IntelTransfer
from protocol import bundle

LABEL = "rules-update"
MAX_ERRORS_SHOWN = 10

__all__ = ["LABEL", "make_transfer", "rules_dir_for"]


def check_bundle(config: Config, staged: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The counts of a staged rules bundle; BundleError (nothing installed) when it is bad."""
    name = manifest["name"]
    opts = config.detect.get("rules") or {}
    if not opts.get("hub", True):
        raise bundle.BundleError("detect.rules.hub is false on this device: rule bundles refused")
    if not name.endswith(HUB_SUFFIX):
        raise bundle.BundleError(f"a rules bundle's name must end in {HUB_SUFFIX!r}: {name!r}")
    try:
        text = read_text(staged)
    except RulesError as e:
        raise bundle.BundleError(str(e).replace(str(staged), name)) from None
    try:
        report = check_text(config, text, name)
    except RulesError as e:
        raise bundle.BundleError(str(e)) from None
    if report.error_count:
        shown = "; ".join(report.errors[:MAX_ERRORS_SHOWN])
        more = report.error_count - min(report.error_count, MAX_ERRORS_SHOWN)
        raise bundle.BundleError(
            f"{report.error_count} rule(s) with syntax errors, the rules in force stay: {shown}"
            + (f"; ... and {more} more" if more else "")
        )
    return {
        "loaded": report.loaded,
        "skipped": report.skipped_total,
        "skipped_by_reason": dict(report.skipped),
        "disabled": report.disabled,
    }


def make_transfer(
    keys: Sequence[Ed25519PublicKey],
    config: Callable[[], Config],
    counters: Counter[str],
    *,
    timeout: float = TRANSFER_TIMEOUT_S,
) -> IntelTransfer:
    """The rules-update job of a command handler (`config` gives the config in force)."""
    rules_dir = rules_dir_for(config())
    return IntelTransfer(
        keys,
        rules_dir,
        lambda: str(len(hub_files(rules_dir))),  # engines reload on their own (detect.rules tick)
        counters,
        timeout=timeout,
        kind=bundle.RULES_KIND,
        label=LABEL,
        check=lambda staged, manifest: check_bundle(config(), staged, manifest),
    )
