"""The README documents every signature id and every option (they are contracts); the option
tables in README.md and docs/config.md are generated from the declarations and must be current."""

import importlib.util
from pathlib import Path

from appliance.config import OPTIONS, SECTIONS, registered_detectors
from appliance.detect.registry import all_signatures

REPO = Path(__file__).parents[2]
README = (REPO / "README.md").read_text()


def _docs_tool():
    spec = importlib.util.spec_from_file_location("config_docs", REPO / "release/config_docs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_signature_is_documented() -> None:
    missing = [s.sid for _, s in all_signatures() if f"| {s.sid} |" not in README]
    assert not missing


def test_generated_option_tables_are_current() -> None:
    tool = _docs_tool()
    stale = [str(p.relative_to(REPO)) for p in tool.stale(tool.generated())]
    assert not stale, f"{stale}: run python release/config_docs.py"


def test_every_option_is_in_the_tables_with_its_range_and_remote_flag() -> None:
    tool = _docs_tool()
    config_md = (REPO / "docs" / "config.md").read_text()
    for section, opts in OPTIONS.items():
        for key, opt in opts.items():
            row = tool._row(f"{section}.{key}", opt)
            assert row in README and row in config_md, row
    assert "| `inline.workers` | int | `1` | 1 to 64 | yes, 1 to 4 |" in README
    assert '| `privacy.key` | str | `""` |  | no (secret) |' in README
    for name, spec in registered_detectors().items():
        table = README.split(f"**`[detect.{name}]`**", 1)[1].split("**`[detect.", 1)[0]
        for key, opt in spec.options.items():
            assert tool._row(key, opt) in table, f"detect.{name}.{key}"
    assert "| `max_sources` | int | `4096` | 16 to 10 000 000 | yes, 16 to 100 000 |" in README


def test_every_config_section_is_documented() -> None:
    for name in SECTIONS:
        assert f"`{name}." in README, name
