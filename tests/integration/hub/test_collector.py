"""Collectors against a real mosquitto (TLS, provisioned certificates) and real devices' outboxes
(devproc: pipeline + SQLite outbox + HubLink), into SQLite and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hub.collector import Collector, CollectorSettings
from hub.collector.metrics import Metrics
from hub.store import open_store
from tests.integration.hublink.hubkit import (
    PKI,
    REPO,
    Broker,
    Client,
    device_config,
    wait_for,
)


def settings(broker: Broker, pki: PKI, client_id: str, **kw: Any) -> CollectorSettings:
    ident = pki.hub
    return CollectorSettings(
        host="127.0.0.1", port=broker.port, ca=str(ident.ca), cert=str(ident.cert),
        key=str(ident.key), client_id=client_id, registry=pki.ca_dir, **kw,
    )  # fmt: skip


def test_collector_stores_reports_quarantines_bad_messages_and_serves_metrics(
    broker: Broker, pki: PKI, devproc: Any, tmp_path: Path
) -> None:
    store = open_store(f"sqlite://{tmp_path / 'hub.sqlite'}")
    metrics = Metrics()
    col = Collector(settings(broker, pki, "hub-c1", upkeep_every=0.2, silent_after=600), store,
                    metrics)  # fmt: skip
    col.start()
    host, port = metrics.serve("127.0.0.1:0")
    dev = devproc(device_config(pki, broker, tmp_path / "state1"))
    dev.start()
    try:
        dev.alerts(5)
        wait_for(lambda: store.seqs("dev1") == [1, 2, 3, 4, 5], what="5 alerts stored")
        wait_for(lambda: (store.devices() or [{}])[0].get("state") == "ready", what="ready")
        wait_for(lambda: store.telemetry("dev1"), what="telemetry stored")
        # Bad input from a device's own identity: never crashes the collector.
        evil = Client(broker, pki.device("dev3").cert, pki.device("dev3").key, client_id="dev3")
        evil.publish("watchpost/v1/siteA/dev3/alerts", b"not json")
        evil.publish("watchpost/v1/siteA/dev3/alerts", json.dumps({"watchpost": {}}))
        evil.close()
        wait_for(lambda: len(store.quarantined()) == 2, what="two quarantined")
        assert {q["reason"].split(":")[0] for q in store.quarantined()} == {
            "not JSON",
            "wrong shape",
        }
        dev.alerts(2)
        wait_for(lambda: store.seqs("dev1") == list(range(1, 8)), what="still consuming")
        d = next(d for d in store.devices() if d["device"] == "dev1")
        assert (d["site"], d["mode"], d["outbox_depth"]) == ("siteA", "monitor", 0)
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
        assert "hub_alerts_stored_total 7.0" in body
        assert 'hub_bad_messages_total{reason="not JSON"} 1.0' in body
        assert 'hub_devices{state="ready"} 1.0' in body
        assert 'hub_device_outbox_depth{device="dev1",site="siteA"} 0.0' in body
    finally:
        dev.stop()
        col.stop()
        metrics.close()
    # The device went away cleanly: disconnected, and silent once the time has passed.
    wait_for(lambda: True)
    raised = col.upkeep(now=time.time() + 3600)
    assert [a["device"] for a in raised] == ["dev1"]
    store.close()


def _collector_proc(broker: Broker, pki: PKI, url: str, client_id: str, log: Path) -> Any:
    ident = pki.hub
    code = "from hub.cli import main; main()"
    args = [sys.executable, "-c", code, "--host", "127.0.0.1", "--port", str(broker.port),
            "--ca", str(ident.ca), "--cert", str(ident.cert), "--key", str(ident.key),
            "collect", "--store", url, "--client-id", client_id, "--registry", str(pki.ca_dir),
            "--batch", "200"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_two_collectors_kill9_and_broker_restart_every_alert_once_in_postgres(
    broker: Broker, pki: PKI, devproc: Any, tmp_path: Path, pg_url: str
) -> None:
    """Two collectors share the load; one is killed with SIGKILL mid-stream and the broker is
    restarted: every alert is in PostgreSQL exactly once and each device's seqs are 1..n."""
    store = open_store(pg_url)
    log = tmp_path / "collectors.log"
    c1 = _collector_proc(broker, pki, pg_url, "hub-c1", log)
    c2 = _collector_proc(broker, pki, pg_url, "hub-c2", log)
    devs = {}
    procs = [c1, c2]
    try:
        for name, site in (("dev1", "siteA"), ("dev2", "siteB"), ("dev3", "siteA")):
            devs[name] = devproc(device_config(pki, broker, tmp_path / name, name, site))
            devs[name].start()
        wait_for(lambda: len(store.devices()) == 3, what="three devices known", timeout=30)
        for d in devs.values():
            d.alerts(150)
        wait_for(lambda: store.alert_count() >= 100, what="first alerts stored")
        c1.send_signal(signal.SIGKILL)  # mid-stream: its unacknowledged batch is the broker's
        c1.wait()
        for d in devs.values():
            d.alerts(150)
        broker.stop()  # alerts stay in the outboxes and in the sessions' persisted queues
        for d in devs.values():
            d.alerts(100)
        broker.start()
        c1 = _collector_proc(broker, pki, pg_url, "hub-c1", log)  # same session
        procs.append(c1)
        for d in devs.values():
            d.alerts(100)
        try:
            wait_for(lambda: store.alert_count() >= 1500, what="all 1500 alerts", timeout=90)
        except BaseException:
            missing = {n: sorted(set(range(1, 501)) - set(store.seqs(n))) for n in devs}
            outbox = {n: d.stats().get("outbox_depth") for n, d in devs.items()}
            print(f"stored {store.alert_count()}, outboxes {outbox}, missing {missing}")
            print("quarantine", store.quarantined()[:5])
            raise
        time.sleep(1.0)  # anything extra (a duplicate) would show now
        assert store.alert_count() == 1500
        for name in devs:
            assert store.seqs(name) == list(range(1, 501)), name
        assert store.gaps() == []
        rows = store._query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM alerts")
        assert rows[0]["n"] == rows[0]["d"] == 1500
    finally:
        for d in devs.values():
            d.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        store.close()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    # Both surviving collectors stored a share; the killed one had stored the rest.
    stored = [int(n) for n in re.findall(r"stopped, (\d+) new alerts", text)]
    assert len(stored) == 2 and min(stored) > 0 and sum(stored) < 1500, stored
