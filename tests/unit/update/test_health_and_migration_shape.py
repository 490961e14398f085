"""The health judgement's restart check and the migration's shape check (no files, no venvs)."""

from __future__ import annotations

import pytest

from appliance.update import health
from protocol import release as rel


def test_the_old_process_answering_after_a_restart_request_is_not_healthy() -> None:
    before = health.baseline(health.Sample("active", 0, 5, True, "111"),
                             health.Sample("active", 0, 5, True, "111"))  # fmt: skip
    old = health.Sample("active", 0, 5, True, "111")
    assert "has not restarted yet" in str(health.judge(before, old, old))
    new = health.Sample("active", 0, 5, True, "222")
    assert health.judge(before, new, new) is None
    # A probe that cannot tell starts apart (None) is not held to it.
    unknown = health.baseline(health.Sample("active"), health.Sample("active"))
    assert health.judge(unknown, old, old) is None
    assert health.Baseline.from_dict(before.to_dict()) == before


@pytest.mark.parametrize(
    ("mig", "reason"),
    [
        ([], "must be an object of id and steps"),
        ({"id": "a", "steps": [{"op": "set", "file": "x.toml", "key": "a..b", "value": 1}]},
         "is not a dotted key"),
        ({"id": "a", "steps": [{"op": "set", "file": "x.toml", "key": "a", "value": None}]},
         "TOML has no null"),
        ({"id": "a", "steps": [{"op": "delete", "file": "x.yaml", "key": "a"}]},
         "is not a *.toml or *.json"),
    ],
)  # fmt: skip
def test_malformed_migrations_are_named(mig: object, reason: str) -> None:
    with pytest.raises(rel.ReleaseError, match=None) as e:
        rel.check_migration(mig)
    assert reason in str(e.value)
    ok = {"id": "a", "steps": [{"op": "rename", "file": "remote.toml", "key": "a.b", "to": "a.c"}]}
    assert rel.check_migration(ok) == ok
