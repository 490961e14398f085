"""Fixtures for tests against the real kernel: one lab per test session, servers on lab hosts.

    def test_web(lab, serve):
        serve.http("web")                       # returns once it listens, stopped after the test
        out = lab.exec("pc1", "curl", "-s", "http://www.example.com/").stdout

The lab's prefix is unique per pytest process (``wpt<pid>``) because other runs use labs at the
same time; labs of pytest processes that died are removed at the start. Tests that change the
appliance namespace (a daemon, a ruleset) must undo it: the lab is shared by the whole session.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from lab.netns import HOSTS, Lab, LabError, stop

SESSION_PREFIX = "wpt"


def _dead_session_prefixes() -> set[str]:
    """Prefixes of test labs whose pytest process no longer exists (a crashed or killed run)."""
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    dead = set()
    pattern = re.compile(rf"^({SESSION_PREFIX}(\d+))-({'|'.join(HOSTS)})$")
    for line in res.stdout.splitlines():
        m = pattern.match(line.split()[0]) if line.strip() else None
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            dead.add(m.group(1))
    return dead


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The lab, built once per test session and removed at its end."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    for prefix in _dead_session_prefixes():
        Lab(prefix).down()
    lb = Lab(f"{SESSION_PREFIX}{os.getpid()}")
    try:
        lb.up()
    except LabError as e:
        pytest.fail(f"lab up failed: {e}")
    yield lb
    lb.down()


class Servers:
    """Servers started on lab hosts for one test; each call returns once the port listens."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: list[subprocess.Popen] = []

    def _keep(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def http(self, host: str = "web", port: int = 80) -> subprocess.Popen:
        return self._keep(self.lab.start_http(host, port))

    def iperf3(self, host: str = "web", port: int = 5201) -> subprocess.Popen:
        return self._keep(self.lab.start_iperf3(host, port))

    def sink(self, host: str = "web", port: int = 9000) -> subprocess.Popen:
        return self._keep(self.lab.start_sink(host, port))

    def ftp(self, host: str = "pc2", port: int = 21, **login: str) -> subprocess.Popen:
        return self._keep(self.lab.start_ftp(host, port, **login))

    def run(self, host: str, *cmd: str, port: int, proto: str = "tcp") -> subprocess.Popen:
        """Any server command, e.g. ``serve.run("web", "openssl", "s_server", ..., port=443)``."""
        return self._keep(self.lab.serve(host, *cmd, port=port, proto=proto))

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            stop(p)
        self.procs.clear()


@pytest.fixture
def serve(lab: Lab) -> Iterator[Servers]:
    s = Servers(lab)
    yield s
    s.stop_all()
