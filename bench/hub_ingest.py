"""Hub ingest: 1 000 simulated devices -> real mosquitto (TLS) -> collectors -> PostgreSQL.

Set-up, all on loopback: one CA, 1 000 device certificates (CN = device id, the per-site ACL),
the hub identity, mosquitto from hub.provisioning, a PostgreSQL cluster of the bench's own
(lab/postgres.py, fsync on, as a centre would run it).

The load generator is 1 000 MQTT 5 connections, one per device certificate, on one selector
loop; each device publishes its alerts (EVE-JSON, seq 1..n) with QoS 1, encoded once before the
clock (hub/collector/mqtt.py's `publish_packet`) and written as one TLS write per device per
round, so the generator costs next to no CPU. The collectors' sessions exist first (they
subscribe, then go away, as after a restart), so the broker queues every alert for them; then
the collectors start and the clock runs until the store holds every alert. That measures what
the collectors ingest, not how fast one process can publish (reported apart,
``hub_loadgen_alerts_per_s``).

- ``hub_ingest_alerts_per_s_1`` / ``_2``: one collector / two collectors in one shared
  subscription group (separate processes), goal >= 5 000/s with two on a 2-core machine.
- ``hub_ingest_cpu_us_per_alert_{collectors,broker,postgres}_N``: CPU time (user + system)
  per alert of each part between the first and the last stored alert; the collectors' start-up
  (imports, TLS handshake) is ``hub_ingest_collector_start_cpu_s_N`` apart.
- ``hub_ingest_live_alerts_per_s_2``: the devices publish their next alerts while both
  collectors run (broker, collectors, database and the generator share the machine), from the
  first write to the last stored alert; ``hub_ingest_live_cpu_us_per_alert_*_2`` by part.
- ``hub_ingest_lost``: alerts published (PUBACKed by the broker) but not in the store, plus
  seq holes, over both runs (must be 0); the two-collector run ends with a third round during
  which one collector is killed with SIGKILL and restarted with its session;
  ``hub_ingest_duplicates``: rows beyond one per id.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench.hub import mosquitto
from hub import provisioning as prov
from hub.collector.mqtt import Session, publish_packet, split_packets
from hub.store import open_store
from hub.tls import client_context
from lab.postgres import PgCluster

REPO = Path(__file__).resolve().parents[1]


def _enrol_many(ca_dir: Path, n: int, out: Path) -> list[tuple[str, str]]:
    """n device identities at 10 sites, registered in one write (issue_device rewrites the
    registry per device, fine for an operator, slow for 1 000)."""
    ca = prov.load_ca(ca_dir)
    reg = prov.registry(ca_dir)
    devices = []
    for i in range(n):
        name, site = f"bench{i:04d}", f"office{i % 10}"
        cert, key = prov._leaf(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, 30)
        (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (out / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        reg["devices"][name] = {"site": site, "serial": format(cert.serial_number, "x"),
                                "not_after": cert.not_valid_after_utc.isoformat()}  # fmt: skip
        devices.append((name, site))
    prov._save_registry(ca.dir, reg)
    return devices


class LoadGen:
    """Many device connections (hub/collector/mqtt.py sessions) on one selector loop."""

    def __init__(self, port: int, ca: Path, certs: Path, devices: list[tuple[str, str]]) -> None:
        self.sel = selectors.DefaultSelector()

        def connect(dev: tuple[str, str]) -> tuple[Session, str, str]:
            name, site = dev
            ctx = client_context(str(ca), str(certs / f"{name}.pem"), str(certs / f"{name}.key"))
            return Session("127.0.0.1", port, ctx, name, keepalive=120), name, site

        with ThreadPoolExecutor(8) as pool:  # handshakes overlap (the GIL is off in them)
            self.clients = list(pool.map(connect, devices))
        for c, _, _ in self.clients:
            self.sel.register(c.sock, selectors.EVENT_READ, c)
        self._mid = 0

    @property
    def acked(self) -> int:
        return sum(c.pubacks for c, _, _ in self.clients)

    def step(self, timeout: float = 0.01) -> None:
        for key, _ in self.sel.select(timeout):
            key.data.read()
        for c, _, _ in self.clients:
            if c.has_buffered():
                c.read()
            if c.want_write():
                c.flush()

    def run_until(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last_ka = 0.0
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"bench: timed out waiting for {what}")
            self.step()
            if time.monotonic() - last_ka > 1:
                for c, _, _ in self.clients:
                    c.keepalive_due()
                last_ka = time.monotonic()

    def encode(self, per_device: int, first_seq: int) -> list[bytes]:
        """Each device's `per_device` alerts as one run of PUBLISH packets (before the clock)."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")
        out = []
        for i, (_c, name, site) in enumerate(self.clients):
            packets = []
            for k in range(per_device):
                seq = first_seq + k
                eve = {
                    "timestamp": stamp, "event_type": "alert",
                    "src_ip": f"203.0.113.{(i + k) % 250 + 1}", "src_port": 40000 + k,
                    "dest_ip": f"198.18.{i // 250}.{i % 250 + 1}", "dest_port": 22,
                    "proto": "TCP",
                    "alert": {"action": "allowed", "signature_id": 8102001, "severity": 2,
                              "signature": "Port scan: bench", "category": "Port scan"},
                    "watchpost": {"id": f"{name}-{seq}", "device": name, "site": site,
                                  "seq": seq, "count": 1, "detector": "bench"},
                }  # fmt: skip
                self._mid = self._mid % 65535 + 1
                packets.append(publish_packet(f"watchpost/v1/{site}/{name}/alerts",
                                              json.dumps(eve, separators=(",", ":")).encode(),
                                              self._mid))  # fmt: skip
            out.append(b"".join(packets))
        return out

    def publish(self, encoded: list[bytes]) -> float:
        """Write each device's packets; seconds until the broker PUBACKed every alert."""
        target = self.acked + sum(_count_publishes(b) for b in encoded)
        t0 = time.perf_counter()
        for (c, _, _), data in zip(self.clients, encoded, strict=True):
            c.send(data)
        self.run_until(lambda: self.acked >= target, 300, "PUBACKs of the bench alerts")
        refused = sum(c.refused for c, _, _ in self.clients)
        if refused:
            raise RuntimeError(f"the broker refused {refused} bench alerts")
        return time.perf_counter() - t0

    def close(self) -> None:
        for c, _, _ in self.clients:
            c.close()


def _count_publishes(data: bytes) -> int:
    packets, _ = split_packets(bytearray(data))
    return len(packets)


def _collector(port: int, ident: Path, url: str, client_id: str, group: str, log: Any) -> Any:
    code = "from hub.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "--host", "127.0.0.1", "--port", str(port),
         "--ca", str(ident / "ca.pem"), "--cert", str(ident / "hub.pem"),
         "--key", str(ident / "hub.key"), "--group", group, "collect", "--store", url,
         "--client-id", client_id, "--batch", "2000"],
        stdout=log, stderr=log, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _pg_pids(pg: PgCluster) -> list[int]:
    """The cluster's postmaster and its children (backends, WAL writer, checkpointer)."""
    try:
        master = int((pg.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [master]
    for task in Path(f"/proc/{master}/task").glob("*/children"):
        pids += [int(c) for c in task.read_text().split()]
    return pids


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def _live(gen: LoadGen, store: Any, broker: Any, pg: PgCluster, pids: list[int],
          per_device: int, until: int) -> dict[str, Any]:  # fmt: skip
    """Each device's next `per_device` alerts (seq after the first round), written while the
    collectors run: alerts per second from the first write to the last stored alert, and the
    CPU per alert of every part (this process is the load generator)."""
    encoded = gen.encode(per_device, per_device + 1)
    n = sum(_count_publishes(b) for b in encoded)
    cpu0 = (_cpu(pids), _cpu([broker.pid]), _cpu(_pg_pids(pg)), time.process_time())
    t0 = time.perf_counter()
    gen.publish(encoded)
    deadline = time.monotonic() + 120
    while store.alert_count() < until:
        if time.monotonic() > deadline:
            raise RuntimeError("bench: the live round was not stored in 120 s")
        gen.step(0.02)
    took = time.perf_counter() - t0
    cpu1 = (_cpu(pids), _cpu([broker.pid]), _cpu(_pg_pids(pg)), time.process_time())
    out: dict[str, Any] = {"hub_ingest_live_alerts_per_s_2": round(n / took, 1)}
    for part, a, b in zip(("collectors", "broker", "postgres", "loadgen"), cpu0, cpu1,
                          strict=True):  # fmt: skip
        out[f"hub_ingest_live_cpu_us_per_alert_{part}_2"] = round((b - a) / n * 1e6, 1)
    return out


def _kill_round(gen: LoadGen, store: Any, victim: Any, per_device: int, total: int,
                restart: Any) -> Any:  # fmt: skip
    """The devices' third round; a third of the way in, `victim` is killed with SIGKILL and
    `restart()` brings it back (same client id: its session, its unacknowledged messages).
    Returns the new process once the store holds all three rounds."""
    encoded = gen.encode(per_device, 2 * per_device + 1)
    for (c, _, _), data in zip(gen.clients, encoded, strict=True):
        c.send(data)
    gen.run_until(lambda: store.alert_count() >= 2 * total + total // 3, 120, "kill round")
    victim.kill()
    victim.wait()
    proc = restart()
    gen.run_until(lambda: store.alert_count() >= 3 * total, 180, "the kill round stored")
    return proc


def run(quick: bool) -> dict[str, Any]:
    if shutil.which("mosquitto") is None:
        raise RuntimeError("mosquitto is not installed")
    n_dev = 1000
    per_device = 10 if quick else 40
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="wp-bench-ingest-"))
    tmp.chmod(0o711)  # the `postgres` user must reach its cluster directory inside
    pg = PgCluster(tmp / "pg")
    log = open(tmp / "collectors.log", "ab")  # noqa: SIM115 (closed below)
    try:
        ca = tmp / "ca"
        prov.create_ca(ca)
        prov.issue_hub(ca, "hub")
        certs = tmp / "certs"
        certs.mkdir()
        devices = _enrol_many(ca, n_dev, certs)
        with mosquitto(ca, tmp / "broker", log, log_dest="none") as (broker, port):
            pg.start()
            return _run(tmp, ca, certs, devices, broker, port, pg, log, per_device, quick)
    finally:
        pg.stop()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(
    tmp: Path, ca: Path, certs: Path, devices: list[tuple[str, str]], broker: Any, port: int,
    pg: PgCluster, log: Any, per_device: int, quick: bool,
) -> dict[str, Any]:  # fmt: skip
    ident = ca / "hubs" / "hub"
    n_dev = len(devices)
    t0 = time.perf_counter()
    gen = LoadGen(port, ca / "ca.pem", certs, devices)
    procs: list[Any] = []
    out: dict[str, Any] = {
        "hub_ingest_devices": n_dev,
        "hub_ingest_connect_s": round(time.perf_counter() - t0, 1),
    }
    lost = dups = 0
    try:
        for n_col in (1, 2):
            url = pg.createdb(f"ingest{n_col}")
            open_store(url).close()  # migrated before the clock starts
            group = f"bench{n_col}"
            ids = [f"hub-b{n_col}-{k}" for k in range(n_col)]
            # The sessions first (subscribe, go away): the broker queues for them.
            first = [_collector(port, ident, url, cid, group, log) for cid in ids]
            store = open_store(url)
            deadline = time.monotonic() + 30
            while b"collect: " + ids[-1].encode() not in (tmp / "collectors.log").read_bytes():
                if time.monotonic() > deadline:
                    raise RuntimeError("bench collectors did not start")
                time.sleep(0.1)
            _stop(first)
            # Each run has its own database and sessions: seqs 1..n again.
            pub_s = gen.publish(gen.encode(per_device, 1))
            total = per_device * n_dev
            out.setdefault("hub_loadgen_alerts_per_s", round(total / pub_s, 1))
            t_start = time.perf_counter()
            procs = [_collector(port, ident, url, cid, group, log) for cid in ids]
            pids = [p.pid for p in procs]
            deadline = time.monotonic() + (60 if quick else 180)
            # The clock starts at the first stored alert (the collectors' process start, imports
            # and TLS handshake are a one-time cost, reported apart) and stops at the last; the
            # CPU figures cover the same span.
            t_first, first_count = 0.0, 0
            cpu0: dict[str, float] = {}
            while time.monotonic() < deadline:
                n = store.alert_count()
                if n and not t_first:
                    t_first, first_count = time.perf_counter(), n
                    cpu0 = {"collectors": _cpu(pids), "broker": _cpu([broker.pid]),
                            "postgres": _cpu(_pg_pids(pg))}  # fmt: skip
                if n >= total:
                    break
                gen.step(0.05)
            t_last = time.perf_counter()
            cpu = {"collectors": _cpu(pids), "broker": _cpu([broker.pid]),
                   "postgres": _cpu(_pg_pids(pg))}  # fmt: skip
            out[f"hub_ingest_wall_s_{n_col}"] = round(t_last - t_start, 2)
            counted = max(1, total - first_count)
            for part, sec in cpu.items():
                used = sec - cpu0.get(part, 0.0)
                out[f"hub_ingest_cpu_us_per_alert_{part}_{n_col}"] = round(used / counted * 1e6, 1)
            out[f"hub_ingest_collector_start_cpu_s_{n_col}"] = round(
                cpu0.get("collectors", 0.0), 2)  # fmt: skip
            took = max(t_last - (t_first or t_start), 1e-6)
            out[f"hub_ingest_alerts_per_s_{n_col}"] = round((total - first_count) / took, 1)
            rounds = 1
            if n_col == 2:  # live: the devices publish while both collectors ingest
                out.update(_live(gen, store, broker, pg, pids, per_device, 2 * total))
                # Then a third round during which one collector is killed (SIGKILL) and
                # restarted with its session: still every alert once, seqs without a hole.
                again = functools.partial(_collector, port, ident, url, ids[0], group, log)
                procs.append(_kill_round(gen, store, procs[0], per_device, total, again))
                rounds = 3
            time.sleep(0.5)
            _stop(procs)
            count = store.alert_count()
            distinct = store._query("SELECT count(DISTINCT id) AS d FROM alerts")[0]["d"]
            per = {r["device"]: r["n"] for r in store._query(
                "SELECT device, count(DISTINCT seq) AS n FROM alerts GROUP BY device")}  # fmt: skip
            holes = sum(rounds * per_device - per.get(name, 0) for name, _ in devices)
            lost += max(rounds * total - distinct, holes)
            dups += count - distinct
            store.close()
    finally:
        _stop(procs)
        gen.close()
    out["hub_ingest_alerts"] = per_device * n_dev  # per run (the live round: as many again)
    out["hub_ingest_lost"] = lost
    out["hub_ingest_duplicates"] = dups
    out["hub_ingest_goal_per_s_2"] = 5000
    out["hub_ingest_load_avg"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    print(json.dumps(run(os.environ.get("BENCH_QUICK") == "1"), indent=1))
