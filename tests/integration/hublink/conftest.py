"""Fixtures for the hub tests (defined in hubkit.py, which the tests also import helpers from)."""

from hubkit import broker, devproc, hub, pki  # noqa: F401 (pytest fixtures)
