"""Fixtures for the hub's integration tests: the real mosquitto over TLS (hubkit) and a real
PostgreSQL cluster of the tests' own (tests/unit/hub/conftest.py)."""

from tests.integration.hublink.hubkit import broker, devproc, pki  # noqa: F401 (fixtures)
from tests.unit.hub.conftest import pg, pg_url  # noqa: F401 (fixtures)
