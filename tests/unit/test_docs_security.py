"""docs/security.md names a test for every attack: each test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "security.md").read_text()


def named_tests() -> list[tuple[str, str]]:
    """(file under tests/, test name or "") for every reference; `::name` continues a file."""
    out = []
    for row in DOC.splitlines():
        if not row.startswith("|"):
            continue
        current = ""
        for ref in re.findall(r"`([\w/]*\.py(?:::\w+)?|::\w+)`", row):
            path, _, name = ref.partition("::")
            if path:
                current = path
            out.append((current, name))
    return out


def test_every_test_the_security_table_names_exists() -> None:
    refs = named_tests()
    assert len(refs) > 40
    for path, name in refs:
        if path.startswith("bench/"):
            continue
        f = REPO / "tests" / path
        assert f.is_file() or f.is_dir(), path
        if name:
            assert re.search(rf"^def {name}\(", f.read_text(), re.M), f"{path}::{name}"
