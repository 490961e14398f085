"""The operator tests answer with a real device-side command handler (the `rig` fixture)."""

from tests.unit.hublink.conftest import rig  # noqa: F401 (pytest fixture)
