"""exposure in the lab: an office service on pc2 reached from the internet through the inline
appliance, attempts that do not complete, and replay of the captured traffic."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.detect.detectors import exposure
from lab.netns import Lab

from .behaviour_lab import Watch, start_watch, totals

pytestmark = pytest.mark.root

ATK, PC1, PC2, WEB = "198.51.100.23", "198.18.0.11", "198.18.0.12", "203.0.113.10"


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("exposure"))
    yield w
    w.daemon.stop()


def connect(watch: Watch, host: str, addr: str, port: int) -> None:
    """A plain TCP connection that completes its handshake, sends a line and closes (bash)."""
    watch.lab.exec(
        host, "bash", "-c", f"exec 3<>/dev/tcp/{addr}/{port}; echo hello >&3; exec 3>&-",
        check=False, timeout=10,
    )  # fmt: skip


def test_rdp_port_reached_from_the_internet(watch: Watch, serve) -> None:
    serve.sink("pc2", 3389)
    mark = watch.mark()
    with watch.capture("rdp") as pcap:
        for _ in range(3):
            connect(watch, "atk", PC2, 3389)
    alerts = watch.wait(mark, lambda a: sum(x["watchpost"]["count"] for x in a) >= 3, "exposure")
    assert {a["alert"]["signature_id"] for a in alerts} == {exposure.REMOTE.sid}
    first = alerts[0]
    assert first["src_ip"] == ATK and first["dest_ip"] == PC2 and first["dest_port"] == 3389
    assert first["watchpost"]["details"]["service"] == "Remote Desktop (RDP)"
    assert first["watchpost"]["direction"] == "inbound" and first["alert"]["severity"] == 1
    assert sum(a["watchpost"]["count"] for a in alerts) == 3
    replayed = watch.replay(pcap)
    assert sum(totals(replayed, "exposure").values()) == 3


def test_printer_port_reached_from_the_internet(watch: Watch, serve) -> None:
    serve.sink("pc2", 9100)
    mark = watch.mark()
    with watch.capture("printer") as pcap:
        connect(watch, "atk", PC2, 9100)
    alerts = watch.wait(mark, bool, "exposure")
    assert [a["alert"]["signature_id"] for a in alerts] == [exposure.PRINTER.sid]
    assert alerts[0]["watchpost"]["details"]["service"] == "printer (JetDirect)"
    assert totals(watch.replay(pcap), "exposure") == totals(alerts, "exposure")


def test_attempts_and_outbound_connections_are_not_exposure(watch: Watch, serve) -> None:
    serve.sink("web", 5900)
    mark = watch.mark()
    with watch.capture("no-exposure") as pcap:
        # Knocking: SYNs to a closed port, and SYNs answered by SYN-ACK but never completed.
        watch.lab.exec(
            "atk", "hping3", "-q", "-S", "-p", "445", "-c", "5", "-i", "u20000", PC2,
            check=False, timeout=15,
        )  # fmt: skip
        serve.sink("pc2", 5432)
        watch.lab.exec(
            "atk", "hping3", "-q", "-S", "-p", "5432", "-c", "5", "-i", "u20000", PC2,
            check=False, timeout=15,
        )  # fmt: skip
        # An office host using a VNC service on the internet: outbound, not an exposure.
        connect(watch, "pc1", WEB, 5900)
    assert watch.settle(mark, "exposure", quiet=3.0) == []
    assert totals(watch.replay(pcap), "exposure") == {}
