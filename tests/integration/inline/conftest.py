"""Fixtures for the daemon against the real kernel (helpers in inlinekit.py).

Every test here leaves the lab's appliance namespace as it found it: no daemon, no ruleset.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from inlinekit import Daemons

from lab.netns import Lab


@pytest.fixture
def daemons(lab: Lab, tmp_path: Path) -> Iterator[Daemons]:
    ds = Daemons(lab, tmp_path)
    try:
        yield ds
    finally:
        ds.cleanup()
