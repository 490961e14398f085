"""`make soak` in small (bench/soak.py): the fuzz phase on a few thousand packets, in this
process (no lab, no root): no exception escapes, the JSON has the judgement's keys, the plot is
written, and nothing is logged at WARNING or above (the rules detector's look at the hub's
bundles ran after the phase's temp dir was removed: the teardown race)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bench import soak

KEYS = {
    "fuzz_packets", "fuzz_packets_warmup", "fuzz_packets_after_warmup", "fuzz_warmup",
    "fuzz_warmup_end_t", "fuzz_max_flows", "fuzz_flows_evicted", "fuzz_state_at_warmup",
    "fuzz_state_at_end", "fuzz_state_still_growing", "fuzz_exceptions", "fuzz_hook_errors",
    "fuzz_rules_loaded", "fuzz_samples_after_warmup", "fuzz_rss_growth_after_warmup_mb",
    "fuzz_rss_growth_limit_mb", "fuzz_rss_flat", "rss_growth_after_warmup_mb", "rss_flat", "ok",
    "samples",
}  # fmt: skip


def test_short_fuzz_soak(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = soak.run(30.0, 5_000, tmp_path, phases=("fuzz",), max_flows=256)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert result["fuzz_exceptions"] == 0, result["fuzz_first_exception"]
    assert result["fuzz_hook_errors"] == 0, result["fuzz_hook_errors_by_hook"]
    assert result["fuzz_rules_loaded"] == 500
    assert 5_000 <= result["fuzz_packets"] <= 5_000 * soak.FUZZ_MAX_FACTOR
    # Each pass over the mix is new flows: the small flow table is at its bound.
    assert result["fuzz_max_flows"] == 256 and result["fuzz_flows_evicted"] > 0
    written = json.loads((tmp_path / "soak.json").read_text())
    assert set(written) >= KEYS, KEYS - set(written)
    assert written["fuzz_state_at_end"]["flows"] == 256
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Too short to judge flatness: said so, never called flat.
    if result["fuzz_warmup_end_t"] is None:
        assert result["rss_growth_after_warmup_mb"] is None and result["rss_flat"] is False


def test_rss_growth_is_judged_after_warm_up_only() -> None:
    rows = [{"t": float(t), "phase": "fuzz", "rss_mb": 50.0 + min(t, 10)} for t in range(40)]
    got = soak.judge_rss(rows, "fuzz", 10.0)  # grows to 60 during warm-up, then flat
    assert got["fuzz_rss_growth_after_warmup_mb"] == 0.0
    assert got["fuzz_samples_after_warmup"] == 30
    leak = [dict(r, rss_mb=50.0 + r["t"] * 0.5) for r in rows]
    assert soak.judge_rss(leak, "fuzz", 10.0)["fuzz_rss_growth_after_warmup_mb"] > 10
    assert soak.judge_rss(rows, "fuzz", None)["fuzz_rss_growth_after_warmup_mb"] is None
