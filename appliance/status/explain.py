"""Plain-English "what happened" and "what to do" for each signature id (explain.toml)."""

from __future__ import annotations

import functools
import tomllib
from importlib import resources

GENERIC = {
    "happened": "The device saw traffic that matched one of its checks.",
    "todo": "Note the device and the time, and ask your IT supplier to look at this alert.",
}


@functools.cache
def texts() -> dict[int, dict[str, str]]:
    raw = tomllib.loads(resources.files(__package__).joinpath("explain.toml").read_text())
    return {int(sid): {"happened": v["happened"], "todo": v["todo"]} for sid, v in raw.items()}


def explain(sid: int) -> dict[str, str]:
    return texts().get(sid, GENERIC)
