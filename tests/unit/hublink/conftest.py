"""The `rig` fixture: a CommandHandler over a FakeDevice and real files in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.hublink.commands import CommandHandler
from protocol import envelope as E
from tests.unit.hublink.rig import FakeDevice, Rig, write_config


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    state_dir = tmp_path / "state"
    intel_dir = state_dir / "intel"
    intel_dir.mkdir(parents=True)
    (intel_dir / "old.list").write_text("203.0.113.66\n")
    cfg = write_config(tmp_path / "watchpost.toml", state_dir, tmp_path / "watchpost.log")
    key = Ed25519PrivateKey.generate()
    (tmp_path / "command.pub").write_bytes(E.public_pem(key))
    device = FakeDevice(cfg, intel_dir)
    clock = [1_800_000_000.0]
    synced = [True]
    r = Rig(
        handler=None,  # type: ignore[arg-type]
        device=device,
        key=key,
        config_path=tmp_path / "watchpost.toml",
        state_path=state_dir / "commands.json",
        intel_dir=intel_dir,
        clock=clock,
        synced=synced,
    )
    r.handler = CommandHandler.from_config(
        device,
        clock=lambda: clock[0],
        clock_synced=lambda: synced[0],
        publish=lambda t, p, retain: r.published.append((t, p, retain)),
    )
    yield r
    r.handler.stop()
