"""The regional hub's broker in the lab (`watchpost demo`, integration tests).

Exactly the production set-up from hub.provisioning — one CA, the appliance's client
certificate (CN = its device id), a hub identity, mosquitto with a TLS listener, client
certificates required, the CN as username and the per-site ACL — started inside the lab's `hub`
namespace (192.0.2.10), so the appliance reaches it through the bridge's uplink side like a
real office reaches its hub over the internet.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub import provisioning as prov
from protocol import envelope
from protocol.files import atomic_write

HUB_HOST = "hub"  # the lab host that runs the broker


@dataclass
class LabHub:
    proc: subprocess.Popen
    address: str
    port: int
    ca_dir: Path
    conf_dir: Path
    device_id: str
    site: str
    # For the device's config: ``[hub]`` (host, port, ca, cert, key) — lay it over the lab config.
    hub_table: dict[str, Any] = field(default_factory=dict)
    # The hub identity (operator tools: `watchpost hub tail/send`).
    hub_cert: Path = Path()
    hub_key: Path = Path()
    ca: Path = Path()
    log: Path = Path()
    # The hub's Ed25519 command key (private, 0600); its public half is the device's
    # ``hub.command_pubkey`` in `hub_table`.
    command_key: Path = Path()
    # The hub's collector (consumer identity, SQLite store), running before the device connects.
    collector: subprocess.Popen | None = None
    store_url: str = ""

    def operator_args(self) -> list[str]:
        """Options for `watchpost hub ...` run inside a lab namespace (e.g. `hub` itself):
        ``lab.exec("hub", "watchpost", "hub", *h.operator_args(), "send", "lab-appliance",
        "ping")``."""
        return [
            "--host", self.address, "--port", str(self.port), "--ca", str(self.ca),
            "--cert", str(self.hub_cert), "--key", str(self.hub_key), "--site", self.site,
            "--command-key", str(self.command_key),
        ]  # fmt: skip

    def stored(self) -> tuple[int, list[int], list[dict[str, Any]]]:
        """(alerts stored, the device's seqs, open seq gaps) from the collector's store."""
        from hub.store import open_store

        store = open_store(self.store_url)
        try:
            return store.alert_count(), store.seqs(self.device_id), store.gaps(self.device_id)
        finally:
            store.close()

    def stop(self) -> None:
        if self.collector is not None and self.collector.poll() is None:
            self.collector.terminate()
            try:
                self.collector.wait(10)
            except subprocess.TimeoutExpired:
                self.collector.kill()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_lab_hub(
    lab: Any,
    workdir: str | Path,
    device_id: str = "lab-appliance",
    site: str = "lab",
    port: int = 8883,
    timeout: float = 15.0,
    collector: bool = True,
) -> LabHub:
    """Provision a CA, the appliance and a hub identity under `workdir`/hub, and run mosquitto in
    the lab's `hub` namespace; returns once it listens (and, with `collector`, once the hub's
    collector has subscribed, so it keeps every alert from seq 1). `lab` is an lab.netns.Lab."""
    root = Path(workdir) / "hub"
    ca_dir = root / "ca"
    if not (ca_dir / "ca.key").exists():
        prov.create_ca(ca_dir, name="Watchpost lab hub CA")
    reg = prov.registry(ca_dir)
    dev_dir = root / "device"
    if device_id not in reg["devices"]:
        prov.issue_device(ca_dir, device_id, site, out_dir=dev_dir)
    if "hub" not in reg["hubs"]:
        prov.issue_hub(ca_dir, "hub", out_dir=root / "identity")
    if collector and "collector" not in reg["hubs"]:
        prov.issue_hub(ca_dir, "collector", out_dir=root / "collector", role="consumer")
    command_key, command_pub = root / "command.key", root / "command.pub"
    if not command_key.exists():
        private, public = envelope.generate_keypair()
        atomic_write(command_key, private, mode=0o600)
        atomic_write(command_pub, public, mode=0o644)
    address = str(lab.hosts[HUB_HOST].address)
    settings = prov.BrokerSettings(
        conf_dir=root / "broker", port=port, bind=address, user="root", log_dest="stderr"
    )
    conf = prov.write_broker_conf(ca_dir, settings, [address, "hub.example.org"])
    log = root / "mosquitto.log"
    with open(log, "ab") as out:
        proc = lab.popen(HUB_HOST, "mosquitto", "-c", str(conf), stdout=out, stderr=out)
    deadline = time.monotonic() + timeout
    while True:
        res = lab.exec(HUB_HOST, "ss", "-Hltn", f"sport = :{port}", check=False)
        if res.returncode == 0 and res.stdout.strip():
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the lab hub's mosquitto did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    hub = LabHub(
        proc=proc,
        address=address,
        port=port,
        ca_dir=ca_dir,
        conf_dir=settings.conf_dir,
        device_id=device_id,
        site=site,
        hub_table={
            "host": address,
            "port": port,
            "ca": str(dev_dir / "ca.pem"),
            "cert": str(dev_dir / "device.pem"),
            "key": str(dev_dir / "device.key"),
            "command_pubkey": str(command_pub),
        },
        hub_cert=root / "identity" / "hub.pem",
        hub_key=root / "identity" / "hub.key",
        ca=ca_dir / "ca.pem",
        log=log,
        command_key=command_key,
    )
    if collector:
        try:
            _start_collector(lab, hub, root, timeout)
        except BaseException:
            hub.stop()
            raise
    return hub


def _start_collector(lab: Any, hub: LabHub, root: Path, timeout: float) -> None:
    """`watchpost-hub collect` in the `hub` namespace: consumer identity, SQLite store."""
    ident = root / "collector"
    hub.store_url = f"sqlite://{root / 'hub.sqlite'}"
    log = root / "collector.log"
    code = "from hub.cli import main; main()"
    with open(log, "ab") as out:
        hub.collector = lab.popen(
            HUB_HOST, sys.executable, "-c", code, "--host", hub.address, "--port",
            str(hub.port), "--ca", str(ident / "ca.pem"), "--cert", str(ident / "hub.pem"),
            "--key", str(ident / "hub.key"), "collect", "--store", hub.store_url,
            "--client-id", "collector", "--registry", str(hub.ca_dir), "--silent-after", "120",
            stdout=out, stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while b"collect: collector in group" not in log.read_bytes():
        if hub.collector.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the lab hub's collector did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def demo_setup(ctx: Any) -> None:
    """A `watchpost demo` "setup" step (lab.demo.Step(..., phase="setup")): the hub broker
    in the lab, and the daemon's ``[hub]`` table pointing at it. The broker is stopped with the
    demo's other servers; `ctx.notes["hub"]` holds the LabHub (operator identity, log)."""
    hub = start_lab_hub(ctx.lab, ctx.workdir)
    ctx.serve(hub.proc)
    if hub.collector is not None:
        ctx.serve(hub.collector)
    # The outbox (by default in the daemon's state dir, which is the demo's own) starts at
    # seq 1 in every demo.
    ctx.config["hub"] = dict(hub.hub_table)
    ctx.notes["hub"] = hub
    ctx.say(f"   hub broker at {hub.address}:{hub.port} (TLS, client certificates, per-site ACL)")
    ctx.say(f"   hub collector subscribed before the device connects, storing in {hub.store_url}")
