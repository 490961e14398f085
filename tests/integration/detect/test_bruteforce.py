"""bruteforce in the lab: repeated SSH logins against a real sshd, FTP logins from an office
host, and replay of the same traffic captured on the appliance's uplink port."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.detect.detectors import bruteforce
from lab.netns import Lab

from .behaviour_lab import Watch, ended, start_watch, totals

pytestmark = pytest.mark.root

ATK, PC1, PC2, WEB = "198.51.100.23", "198.18.0.11", "198.18.0.12", "203.0.113.10"

# An FTP client trying passwords (ftplib: a real FTP dialogue, one connection per attempt).
FTP_LOGINS = """
import ftplib, sys
host, tries = sys.argv[1], int(sys.argv[2])
for i in range(tries):
    f = ftplib.FTP(host, timeout=3)
    try:
        f.login("alice", f"guess{i}")
    except ftplib.error_perm:
        pass
    f.close()
"""


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("bruteforce"))
    yield w
    w.daemon.stop()


@pytest.fixture
def sshd(watch: Watch, serve, tmp_path: Path) -> None:
    """A real OpenSSH server on pc2 that accepts no password (every login fails)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists():
        pytest.skip("needs openssh-server (sshd)")
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=20
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
    serve.run(
        "pc2", sshd, "-D", "-e", "-f", "/dev/null", "-o", f"HostKey={key}",
        "-o", f"ListenAddress={PC2}", "-o", "PidFile=none", "-o", "UsePAM=no",
        "-o", "MaxAuthTries=1", "-o", "MaxStartups=100", port=22,
    )  # fmt: skip


def ssh_logins(watch: Watch, host: str, n: int) -> None:
    for _ in range(n):
        watch.lab.exec(
            host, "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3",
            "-o", "LogLevel=ERROR", f"admin@{PC2}", "true", check=False, timeout=10,
        )  # fmt: skip


def test_repeated_ssh_logins_from_the_internet(watch: Watch, sshd) -> None:
    mark = watch.mark()
    with watch.capture("ssh-brute") as pcap:
        ssh_logins(watch, "atk", 14)
    alerts = watch.wait(mark, ended(ATK, PC2), "bruteforce")
    assert alerts, f"no brute-force alert: {watch.daemon.log_tail()}"
    assert {a["alert"]["signature_id"] for a in alerts} == {bruteforce.INBOUND.sid}
    assert sum(a["watchpost"]["count"] for a in alerts) == 14
    d = alerts[-1]["watchpost"]["details"]
    assert d["service"] == "SSH" and d["attempts"] == 14 and d["direction"] == "inbound"
    assert alerts[0]["dest_port"] == 22
    assert totals(watch.replay(pcap), "bruteforce") == totals(alerts, "bruteforce")


def test_a_few_ssh_logins_are_fine(watch: Watch, sshd) -> None:
    mark = watch.mark()
    ssh_logins(watch, "atk", 3)
    assert watch.settle(mark, "bruteforce", quiet=3.0) == []


def test_office_host_guessing_ftp_passwords_on_the_internet(watch: Watch, serve) -> None:
    serve.ftp("web", 21)
    mark = watch.mark()
    with watch.capture("ftp-brute") as pcap:
        watch.lab.exec("pc1", "python3", "-c", FTP_LOGINS, WEB, "12", timeout=60)
    alerts = watch.wait(mark, ended(PC1, WEB), "bruteforce")
    assert {a["alert"]["signature_id"] for a in alerts} == {bruteforce.OUTBOUND.sid}
    assert sum(a["watchpost"]["count"] for a in alerts) == 12
    assert alerts[0]["watchpost"]["details"]["service"] == "FTP"
    assert alerts[0]["watchpost"]["direction"] == "outbound"
    assert totals(watch.replay(pcap), "bruteforce") == totals(alerts, "bruteforce")
