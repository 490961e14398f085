"""Correlation over a store filled with real alert records of three offices: the scanner that
probed all three becomes a regional indicator; approval, policy, expiry, and the bundle that
the appliance's own intel loader reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.detect import intel as intel_mod
from hub import correlate
from hub.correlate import Policy
from hub.store import Store
from tests.unit.hub.offices import BRUTE, SCANNER, WEEK_START, filled_store

NOW = WEEK_START + 3 * 86400  # Thursday: the Wednesday attacks are inside a 24 h window


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = filled_store(tmp_path / "db")
    yield s
    s.close()


def test_scanner_seen_by_three_offices_is_suggested_with_evidence(store: Store) -> None:
    assert correlate.run(store, Policy(min_offices=3), NOW)["new"] == 1
    (ind,) = correlate.indicators(store)
    assert ind["id"] == f"ip:{SCANNER}" and ind["state"] == "suggested"
    assert ind["offices"] == 3
    assert sorted(ind["evidence"]) == ["office-a", "office-b", "office-c"]
    assert ind["evidence"]["office-b"]["devices"] == ["dev-b1"]
    assert ind["evidence"]["office-a"]["kinds"] == ["Port scan"]
    assert all(e["alerts"] > 0 for e in ind["evidence"].values())
    # A second pass refreshes, never duplicates.
    assert correlate.run(store, Policy(min_offices=3), NOW)["updated"] == 1
    assert len(correlate.indicators(store)) == 1


def test_one_office_or_outside_the_window_is_not_regional(store: Store) -> None:
    correlate.run(store, Policy(min_offices=2), NOW)
    ids = {i["id"] for i in correlate.indicators(store)}
    assert f"ip:{BRUTE}" not in ids  # office-a only
    assert f"ip:{SCANNER}" in ids
    other = filled_store(Path(store.path).parent.parent / "db2")
    assert correlate.run(other, Policy(min_offices=3), NOW + 2 * 86400)["new"] == 0
    other.close()


def test_approval_expiry_and_bundle(store: Store) -> None:
    correlate.run(store, Policy(min_offices=3), NOW)
    assert correlate.bundle_text(store, NOW)[0].count(b"\n") == 2  # header only
    ind = correlate.decide(store, f"ip:{SCANNER}", True, "alice", ttl=3600, now=NOW)
    assert ind["state"] == "approved" and ind["decided_by"] == "alice"
    data, version = correlate.bundle_text(store, NOW + 10)
    assert version.startswith("regional-") and SCANNER.encode() in data
    # The device's intel loader reads it, citing the regional source.
    path = Path(store.path).parent / "regional.txt"
    path.write_bytes(data)
    intel = intel_mod.load_files([str(path)])
    hit = intel.match_ip_text(SCANNER)
    assert hit is not None and hit.source == correlate.SOURCE
    assert correlate.expire(store, NOW + 3600) == 1
    assert correlate.indicators(store)[0]["state"] == "expired"
    assert SCANNER.encode() not in correlate.bundle_text(store, NOW + 3601)[0]
    with pytest.raises(correlate.CorrelateError, match="expired"):
        correlate.decide(store, f"ip:{SCANNER}", True, "alice", ttl=3600)


def test_auto_approval_and_reject(store: Store) -> None:
    res = correlate.run(store, Policy(min_offices=2, auto_approve=3), NOW)
    assert res["auto_approved"] == 1
    (ind,) = correlate.indicators(store, "approved")
    assert ind["decided_by"] == "policy" and ind["expires_at"] > NOW
    correlate.decide(store, ind["id"], False, "bob", ttl=1, now=NOW)
    assert correlate.indicators(store, "rejected")[0]["id"] == ind["id"]
    correlate.run(store, Policy(min_offices=2, auto_approve=3), NOW)
    assert correlate.indicators(store, "rejected")[0]["id"] == ind["id"]  # stays rejected
    with pytest.raises(correlate.CorrelateError, match="no indicator"):
        correlate.decide(store, "ip:192.0.2.1", True, "bob", ttl=1)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({"min_offices": 1}, "min_offices"), ({"window": 0}, "window"),
     ({"min_offices": 3, "auto_approve": 2}, "auto_approve")],
)  # fmt: skip
def test_bad_policy(kw: dict, msg: str) -> None:
    with pytest.raises(correlate.CorrelateError, match=msg):
        Policy(**kw)
