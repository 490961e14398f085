"""Test-wide fixtures. Integration tests need root and the kernel features of docs/facts.md."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, netfilter)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
