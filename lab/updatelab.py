"""A firmware update end to end in the lab: a release venv running inline on the lab's bridge,
the lab hub's real broker, the `update` job over MQTT, a fast ping through the bridge.

Two lab-only stand-ins, each run as its own process inside a lab namespace:

- ``supervise`` (in `app`) does for the daemon what systemd does on the device: runs
  ``<root>/current/bin/watchpost run`` with a notify socket, restarts it when asked (the
  updater's `FileProbe.restart` appends to ``<probe>.restarts``) or when it exits on its own,
  and writes what ``systemctl show`` and the page's ``/metrics`` would say into the probe file
  the updater reads (`appliance.update.health.FileProbe`): ``active_state`` (activating until
  READY=1, then active; failed after repeated exits), ``restarts``, ``packets``,
  ``hub_connected``, plus ``pid`` and ``version`` (of the release `current` points at).
- ``push`` (in `hub`) sends a release artifact as `update` chunks (the operator's `Requester`),
  first chunk 0 and then only the chunks its answer names as missing, prints every job answer
  as one JSON line, and after the switch (whose daemon never answers for the old one) waits for
  the device's retained status to show the job's final state.

`UpdateRun` puts them together for the test (tests/integration/update/test_lab_update.py) and
the bench (bench/update.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TERMINAL = ("succeeded", "failed", "rolled-back")
START_LIMIT = 3  # exits on its own in a row before the unit counts as failed


# --- supervise (in the app namespace) ----------------------------------------------------------


def _metrics(url: str) -> tuple[int | None, bool | None]:
    from appliance.update.health import _LOOPBACK_TLS, parse_metrics

    try:
        with urllib.request.urlopen(url, timeout=2, context=_LOOPBACK_TLS) as r:
            return parse_metrics(r.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None, None


def supervise(args: argparse.Namespace) -> None:
    root, probe = Path(args.root), Path(args.probe)
    requests = probe.with_name(probe.name + ".restarts")
    sock_path = probe.with_name("notify.sock")
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.1)
    state: dict[str, Any] = {"ready": False, "restarts": 0, "failed_in_row": 0, "failed": False}
    stop = threading.Event()
    proc: subprocess.Popen[bytes] | None = None
    log = open(args.log, "ab")  # noqa: SIM115 (open for the supervisor's life)

    def notices() -> None:
        while not stop.is_set():
            try:
                msg = sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            except OSError:
                return
            if "READY=1" in msg.split("\n"):
                state["ready"] = True

    threading.Thread(target=notices, daemon=True).start()
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "PYTHONUNBUFFERED": "1"}
    if args.updater_args:
        env["WATCHPOST_UPDATE_LAB_ARGS"] = args.updater_args

    def start() -> subprocess.Popen[bytes]:
        state["ready"] = False
        exe = root / "current" / "bin" / "watchpost"
        return subprocess.Popen([str(exe), "run", "--config", args.config], env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def halt(p: subprocess.Popen[bytes]) -> None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    seen_requests = len(requests.read_text().splitlines()) if requests.exists() else 0
    proc = start()
    metrics_at = 0.0
    packets: int | None = None
    hub: bool | None = None
    try:
        while not stop.is_set():
            asked = len(requests.read_text().splitlines()) if requests.exists() else 0
            if asked > seen_requests:  # `systemctl restart`: a fresh start, counters kept
                seen_requests = asked
                halt(proc)
                state["failed_in_row"], state["failed"] = 0, False
                proc = start()
            elif proc.poll() is not None and not state["failed"]:
                state["restarts"] += 1  # Restart=on-failure
                state["failed_in_row"] += 1
                if state["failed_in_row"] >= START_LIMIT:
                    state["failed"] = True
                else:
                    time.sleep(0.5)
                    proc = start()
            if state["ready"] and proc.poll() is None:
                state["failed_in_row"] = 0
            now = time.monotonic()
            if now - metrics_at >= 0.5:
                metrics_at = now
                packets, hub = _metrics(args.metrics_url) if proc.poll() is None else (None, None)
            alive = proc.poll() is None
            active = "failed" if state["failed"] else (
                "active" if alive and state["ready"] else "activating"
            )  # fmt: skip
            doc = {
                "active_state": active, "restarts": state["restarts"], "packets": packets,
                "hub_connected": hub, "pid": proc.pid if alive else None,
                "version": os.readlink(root / "current").rsplit("/", 1)[-1],
            }  # fmt: skip
            tmp = probe.with_name(probe.name + ".tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, probe)
            time.sleep(0.1)
    finally:
        halt(proc)
        stop.set()
        sock.close()


# --- push (in the hub namespace) ---------------------------------------------------------------


def push(args: argparse.Namespace) -> int:
    from hub.operator.commands import Requester
    from hub.operator.connection import Ctx
    from protocol import bundle
    from protocol import release as rel
    from protocol.topics import topic

    data = Path(args.artifact).read_bytes()
    names = ("host", "port", "ca", "cert", "key", "command_key", "site")
    ctx = Ctx(None, {n: getattr(args, n) for n in names})
    key = ctx.command_key()
    manifest = bundle.make_manifest(
        data, rel.artifact_name(args.version), args.version, key, kind=rel.KIND
    )
    chunks = bundle.chunk_args(args.job, manifest, data, args.chunk_size)
    conn = ctx.connect()
    status_topic = topic(args.site, args.device, "status")
    conn.subscribe([status_topic])
    req = Requester(ctx, conn, args.device, args.site)
    deadline = time.monotonic() + args.timeout
    status: dict[str, Any] = {}

    def out(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def wait_answer(eid: str) -> dict[str, Any] | None:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = conn.messages.get(timeout=remaining)
            except Exception:
                return None
            body = json.loads(msg.payload)
            if msg.topic == status_topic:
                status.update(body)
                continue
            if msg.topic != req.reply_to:
                continue
            job = body.get("job") or {}
            if body.get("id") == eid or job.get("state") in TERMINAL:
                return dict(body)
        return None

    try:
        todo = [0]
        sent = 0
        while todo:
            i = todo.pop(0)
            env = req.send("update", chunks[i], ttl=max(60, int(args.timeout)))
            sent += 1
            a = wait_answer(env["id"])
            if a is None:
                out({"event": "timeout", "sent": sent})
                return 3
            job = a.get("job") or {}
            if not a.get("ok") or job.get("state") in TERMINAL:
                out({"event": "answer", "answer": a})
                return 1
            if i == 0 or not todo:
                todo = [n for lo, hi in job.get("missing", []) for n in range(lo, hi + 1)]
                if i == 0:
                    out({"event": "first", "received": job.get("received"),
                         "count": job.get("count"), "missing": job.get("missing")})  # fmt: skip
        out({"event": "sent", "chunks": sent, "count": len(chunks)})
        # The updater's states come as answers while the old daemon runs; after the switch the
        # new daemon's retained status carries the job's final state.
        while time.monotonic() < deadline:
            job = status.get("update") or {}
            if job.get("id") == args.job and job.get("state") in TERMINAL:
                out({"event": "final", "job": job, "version": status.get("version")})
                return 0 if job["state"] == "succeeded" else 1
            try:
                msg = conn.messages.get(timeout=0.5)
            except Exception:
                continue
            body = json.loads(msg.payload)
            if msg.topic == status_topic:
                status.clear()
                status.update(body)
            elif msg.topic == req.reply_to:
                out({"event": "answer", "answer": body})
        out({"event": "timeout", "sent": sent})
        return 3
    finally:
        conn.close()


# --- the run, for the test and the bench -------------------------------------------------------

_PING = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class Ping:
    """`ping -i INTERVAL -c COUNT` from one lab host to another, stopped with SIGINT."""

    proc: subprocess.Popen[str]

    def finish(self, timeout: float = 10.0) -> tuple[int, int]:
        """(sent, lost) after stopping it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=timeout)
        m = _PING.search(out)
        if not m:
            raise RuntimeError(f"ping printed no summary: {out[-300:]}")
        sent, got = int(m.group(1)), int(m.group(2))
        return sent, sent - got


def ready(s: dict[str, Any]) -> bool:
    """The probe says: READY, on the hub, judging packets."""
    return bool(s.get("active_state") == "active" and s.get("hub_connected")
                and s.get("packets") is not None)  # fmt: skip


def start_ping(lab: Any, src: str, dst: str, interval: float = 0.01, count: int = 30_000,
               limit_s: int = 600) -> Ping:  # fmt: skip
    """A fast ping, bounded in count and time."""
    addr = lab.hosts[dst].address
    proc = lab.popen(src, "ping", "-n", "-q", "-i", str(interval), "-c", str(count),
                     "-w", str(limit_s), addr, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     text=True)  # fmt: skip
    return Ping(proc)


@dataclass
class UpdateRun:
    """A device root with the old release installed, run inline under `supervise`, reporting to
    the lab hub; `update(artifact, version)` pushes a new release and returns the final job."""

    lab: Any
    workdir: Path
    release_pub: Path
    root: Path = field(init=False)
    probe: Path = field(init=False)
    hub: Any = None
    supervisor: subprocess.Popen[bytes] | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.workdir / "opt"
        self.probe = self.workdir / "probe.json"

    def install_old(self, artifact: Path) -> str:
        """Install `artifact` as the running release (as the image would), offline."""
        from appliance.update import health
        from appliance.update.job import Updater
        from appliance.update.layout import Layout
        from protocol import envelope

        staged = self.workdir / "first.tar"
        staged.write_bytes(artifact.read_bytes())
        up = Updater(
            layout=Layout(self.root), state_dir=self.workdir / "install-state",
            keys=envelope.load_public_keys(self.release_pub), machine=os.uname().machine,
            probe=lambda: health.Sample("active"), restart=lambda: None, python=sys.executable,
            system_site_packages=False, deadline_s=5, interval_s=0.01,
        )  # fmt: skip
        job = up.apply(staged, "install")
        if job["state"] != "succeeded":
            raise RuntimeError(f"installing the first release failed: {job.get('reason')}")
        return str(job["version"])

    def start(self, hub: Any, **sections: Any) -> None:
        from lab.netns import lab_config

        self.hub = hub
        state = self.workdir / "state"
        cfg = lab_config(
            self.workdir,
            hub={**hub.hub_table, "outbox": str(state / "outbox.sqlite")},
            status={"listen": "127.0.0.1:8080"},
            **sections,
        )
        updater_args = shlex.join([
            "--root", str(self.root), "--release-key", str(self.release_pub),
            "--probe-file", str(self.probe), "--no-system-site-packages",
            "--deadline", "60", "--interval", "0.5",
        ])  # fmt: skip
        code = "from lab.updatelab import main; main()"
        with open(self.workdir / "supervise.log", "ab") as out:
            self.supervisor = self.lab.popen(
                "app", sys.executable, "-c", code, "supervise", "--root", str(self.root),
                "--config", str(cfg), "--probe", str(self.probe),
                "--log", str(self.workdir / "daemon.log"), "--updater-args", updater_args,
                stdout=out, stderr=out,
            )  # fmt: skip
        self.wait(ready, 90, "the daemon ready and on the hub")

    def sample(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.probe.read_text()))
        except (OSError, ValueError):
            return {}

    def wait(self, pred: Callable[[dict[str, Any]], Any], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not pred(self.sample()):
            if self.supervisor is not None and self.supervisor.poll() is not None:
                raise RuntimeError(f"the supervisor exited: {self.tail('supervise.log')}")
            if time.monotonic() > end:
                raise RuntimeError(f"timed out waiting for {what}: {self.sample()} "
                                   f"{self.tail('daemon.log')}")  # fmt: skip
            time.sleep(0.1)

    def tail(self, name: str, n: int = 8) -> str:
        try:
            return " | ".join((self.workdir / name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(none)"

    def update(self, artifact: Path, version: str, timeout: float = 300) -> dict[str, Any]:
        """Push `artifact` from the hub namespace; the final job (from the device's status)."""
        h = self.hub
        code = "from lab.updatelab import main; main()"
        job = uuid.uuid4().hex[:12]
        res = self.lab.exec(
            "hub", sys.executable, "-c", code, "push", "--host", h.address, "--port",
            str(h.port), "--ca", str(h.ca), "--cert", str(h.hub_cert), "--key", str(h.hub_key),
            "--command-key", str(h.command_key), "--site", h.site, "--device", h.device_id,
            "--artifact", str(artifact), "--version", version, "--job", job,
            "--timeout", str(timeout), check=False, timeout=timeout + 30,
        )  # fmt: skip
        self.lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        final = next((e for e in self.lines if e["event"] == "final"), None)
        if final is None:
            raise RuntimeError(f"the update did not finish: {self.lines[-3:]} {res.stderr[-500:]} "
                               f"{self.tail('daemon.log')}")  # fmt: skip
        return {**final["job"], "status_version": final.get("version")}

    def stop(self) -> None:
        if self.supervisor is not None and self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(30)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait()
        self.supervisor = None


REPO = Path(__file__).resolve().parents[1]


def bump(version: str) -> str:
    parts = version.split(".")
    return ".".join([*parts[:-1], str(int(parts[-1]) + 1)])


@dataclass(frozen=True)
class ReleasePair:
    """Two signed artifacts built from this tree: `old` as it is, `new` with the version bumped."""

    old: Path
    new: Path
    old_version: str
    new_version: str
    public_key: Path


def build_pair(workdir: Path) -> ReleasePair:
    """A release key and both artifacts (real wheels, `release/build_release.py`)."""
    import shutil

    from appliance import __version__
    from protocol import envelope

    workdir.mkdir(parents=True, exist_ok=True)
    priv, pub = envelope.generate_keypair()
    key, pubkey = workdir / "release-key.pem", workdir / "release-pubkey.pem"
    key.write_bytes(priv)
    key.chmod(0o600)
    pubkey.write_bytes(pub)
    stage = workdir / "stage"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("appliance", "protocol", "hub", "release"):
        shutil.copytree(REPO / name, stage / name, ignore=ignore, dirs_exist_ok=True)
    init = stage / "appliance" / "__init__.py"
    new_version = bump(__version__)
    init.write_text(
        re.sub(r'__version__ = "[^"]+"', f'__version__ = "{new_version}"', init.read_text())
    )
    out = []
    for tree, name in ((REPO, "old"), (stage, "new")):
        res = subprocess.run(
            [sys.executable, str(tree / "release" / "build_release.py"), "--key", str(key),
             "--out", str(workdir / name), "--machine", os.uname().machine,
             "--deps-cache", str(workdir / "deps")],
            capture_output=True, text=True, check=False, timeout=900,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"build_release ({name}) failed: {res.stderr[-500:]}")
        out.append(Path(res.stdout.split(" (")[0]))
    return ReleasePair(out[0], out[1], __version__, new_version, pubkey)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="lab.updatelab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("supervise")
    for opt in ("--root", "--config", "--probe", "--log"):
        s.add_argument(opt, required=True)
    s.add_argument("--updater-args", default="")
    s.add_argument("--metrics-url", default="https://127.0.0.1:8080/metrics")
    p = sub.add_parser("push")
    for opt in ("--host", "--ca", "--cert", "--key", "--command-key", "--site", "--device",
                "--artifact", "--version", "--job"):  # fmt: skip
        p.add_argument(opt, required=True)
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--chunk-size", type=int, default=40 * 1024)
    p.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    if args.what == "supervise":
        with contextlib.suppress(KeyboardInterrupt):
            supervise(args)
    else:
        sys.exit(push(args))


if __name__ == "__main__":
    main()
