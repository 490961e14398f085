"""`python -m bench`: run every benchmark module, print ONE JSON object on stdout.

Progress goes to stderr. ``BENCH_QUICK=1`` selects each module's short version (the whole run
then stays within 60 s). A module that fails is reported under ``errors`` (with its message) and
the others still run; the exit code is then 1. ``python -m bench NAME ...`` runs only those
modules (``engine``, ``inline``, ...).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any

# Each module has `run(quick: bool) -> dict[str, float | int | str | ...]`.
MODULES: tuple[str, ...] = (
    "bench.engine",
    "bench.latency",
    "bench.intel",
    "bench.inline",
    "bench.kernelpath",
    "bench.dissect",
    "bench.hub",
    "bench.hub_ingest",
    "bench.detectors",
    "bench.hostile",
    "bench.rules",
    "bench.update",
)


def main(argv: list[str]) -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    wanted = {a if a.startswith("bench.") else f"bench.{a}" for a in argv}
    unknown = wanted - set(MODULES)
    if unknown:
        print(f"bench: unknown module(s) {', '.join(sorted(unknown))}; "
              f"known: {', '.join(MODULES)}", file=sys.stderr)  # fmt: skip
        return 2
    result: dict[str, Any] = {"quick": quick}
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in MODULES:
        if wanted and name not in wanted:
            continue
        t0 = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(name)
            figures = module.run(quick)
        except ModuleNotFoundError as e:
            if e.name != name:
                errors[name] = f"{type(e).__name__}: {e}"
            else:
                print(f"bench: {name} is not in this tree, skipped", file=sys.stderr)
            continue
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"bench: {name} failed: {errors[name]}", file=sys.stderr, flush=True)
            continue
        finally:
            timings[name] = round(time.monotonic() - t0, 1)
        clash = set(figures) & set(result)
        if clash:
            errors[name] = f"figures {sorted(clash)} already reported by another module"
            continue
        result.update(figures)
        print(f"bench: {name} done in {timings[name]} s", file=sys.stderr, flush=True)
    result["bench_seconds"] = timings
    if errors:
        result["errors"] = errors
    print(json.dumps(result, sort_keys=True))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
