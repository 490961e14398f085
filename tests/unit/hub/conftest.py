"""Fixtures: the operator tests answer with a real device-side command handler (`rig`); the store
tests run against SQLite and against a real PostgreSQL cluster of their own (`pg`)."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.postgres import PgCluster, PgClusterError
from tests.unit.hublink.conftest import rig  # noqa: F401 (pytest fixture)

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One PostgreSQL cluster (initdb as `postgres` in a temp dir, unix socket only) per run."""
    d = Path(tempfile.mkdtemp(prefix="wp-pg-"))
    cluster = PgCluster(d, fsync=False)  # tests do not cut power; the bench runs with fsync
    try:
        cluster.start()
    except PgClusterError as e:
        shutil.rmtree(d, ignore_errors=True)
        pytest.fail(f"cannot start a PostgreSQL cluster: {e}")
    yield cluster
    cluster.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pg_url(pg: PgCluster) -> str:
    """A fresh database in the session's cluster."""
    return pg.createdb(f"t{next(_names)}")
