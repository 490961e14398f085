"""The README documents every signature id and every detector option (they are contracts)."""

from pathlib import Path

from appliance.config import SECTIONS
from appliance.detect.base import declared_options
from appliance.detect.registry import all_signatures, create_detectors

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_signature_is_documented() -> None:
    missing = [s.sid for _, s in all_signatures() if f"| {s.sid} |" not in README]
    assert not missing


def test_every_detector_option_is_documented() -> None:
    for det in create_detectors():
        section = README.split(f"`[detect.{det.name}]`", 1)
        assert len(section) == 2, det.name
        table = section[1].split("**`[detect.", 1)[0]
        for name in declared_options(det):
            assert f"| `{name}` |" in table, f"detect.{det.name}.{name}"


def test_every_config_section_is_documented() -> None:
    for name in SECTIONS:
        assert f"`{name}." in README, name
