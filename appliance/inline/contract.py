"""What the queue worker needs of an engine (the detect layer implements it; inline never
imports detect).

`PacketEngine` is the in-process shape: a decoded packet in, a verdict out, a tick, a new
config, forgetting flows. A worker process (``inline.workers`` > 1) builds its own engine with
an `EngineFactory` handed to it by the service (a picklable callable: the spawned process gets
it by reference) and tells it when the intel files changed (`WorkerEngine.load_intel`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from appliance.config import Config
from appliance.packet.decode import Packet


class PacketEngine(Protocol):
    def process(self, pkt: Packet) -> int:
        """Judge one packet; returns the flow's verdict (``appliance.packet.flows.VERDICT_*``)."""
        ...

    def tick(self, now: float) -> None: ...

    def configure(self, config: Config) -> None:
        """Apply a validated config; raises ConfigError (naming the key) and changes nothing."""
        ...

    def reset_flows(self) -> None:
        """Forget every flow so each is judged again under the new config or intel."""
        ...

    def counters(self) -> dict[str, int]:
        """``flows``, ``engine_packets``, ``hook_errors``."""
        ...


class WorkerEngine(PacketEngine, Protocol):
    def load_intel(self, paths: list[str]) -> None:
        """Replace the intel store by one loaded from `paths`."""
        ...


# An alert out of the engine (to the pipeline, or over the pipe to the main process).
AlertSink = Callable[[Any], None]


class EngineFactory(Protocol):
    def __call__(
        self, config: Config, intel_paths: list[str], sink: AlertSink, blocker: Any
    ) -> WorkerEngine:
        """`blocker` has ``block(addr, ttl)`` (the worker sends the request to the main process)."""
        ...
