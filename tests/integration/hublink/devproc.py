"""A device without the packet path: alert pipeline + outbox + hub link, driven over stdin.

    python devproc.py CONFIG.toml
    stdin:  "alert N SEVERITY" | "stats" | "stop"
    stdout: one JSON object per line: {"event": "started"|"recorded"|"stats"|"stopped", ...}

The integration tests kill it with SIGKILL to show what survives a crash of the daemon.
"""

from __future__ import annotations

import itertools
import json
import logging
import select
import sys
import time
from typing import Any

from appliance.alerts.model import Alert, Signature
from appliance.alerts.pipeline import AlertPipeline
from appliance.config import load
from appliance.detect import registry as _registry  # noqa: F401 (detector declarations)
from appliance.hublink.link import HubLink

SIGS = {s: Signature(9_100_000 + s, f"test finding severity {s}", "Test", s) for s in (1, 2, 3)}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="devproc %(message)s")
    config = load(sys.argv[1])
    link = HubLink(config, backoff=(0.2, 1.0), refusal_pause=1.0)
    recorded = lambda e: emit(  # noqa: E731
        {"event": "recorded", "seq": e["watchpost"]["seq"], "id": e["watchpost"]["id"]}
    )
    pipeline = AlertPipeline(config, [recorded], journal=link.journal)
    link.start(None)
    emit({"event": "started", "pid": __import__("os").getpid()})
    counter = itertools.count()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.2)
        link.tick(time.time(), {})  # no daemon: an empty snapshot
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:
            break
        cmd, *args = line.split()
        if cmd == "alert":
            n, severity = int(args[0]), int(args[1])
            for _ in range(n):
                i = next(counter)
                pipeline(
                    Alert(
                        "test",
                        SIGS[severity],
                        time.time(),
                        f"198.51.100.{i % 250 + 1}",
                        f"198.18.0.{(i // 250) % 250 + 1}",
                        "TCP",
                        src_port=40000 + i % 20000,
                        dest_port=22,
                    )
                )
        elif cmd == "stats":
            emit({"event": "stats", "stats": link.stats()})
        elif cmd == "stop":
            break
    link.close()
    emit({"event": "stopped"})


if __name__ == "__main__":
    main()
