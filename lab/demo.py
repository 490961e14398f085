"""`watchpost demo`: the lab, the daemon inline, office traffic and attacks, alerts as they come.

The demo is a list of scenario steps (`STEPS`), each a small function of a `DemoContext`; later
features add a step (the hub broker, a status page check) without touching the rest. A step
whose tool is missing is skipped with a note; a step that fails is reported and the demo goes
on. Alerts are read from the daemon's EVE file (``log.eve``) and printed one line each. Ctrl-C,
SIGTERM or ``--duration`` end it: the daemon gets SIGTERM, then the lab is removed.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from lab.netns import DEMO_INTEL, Lab, LabDaemon, LabError, lab_config, require_root, stop


class DemoError(RuntimeError):
    """The demo cannot run; the message says why."""


class StepSkipped(Exception):
    """A step cannot run here (a tool is missing); not a failure."""


@dataclass
class DemoContext:
    lab: Lab
    workdir: Path
    deadline: float  # time.monotonic() when the demo must end (inf: until Ctrl-C)
    servers: list[subprocess.Popen] = field(default_factory=list)
    daemon: LabDaemon | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)  # laid over the lab config
    verbose: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, text: str, err: bool = False) -> None:
        with self._lock:
            click.echo(text, err=err)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, host: str, *cmd: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """A traffic command in a lab host; bounded by its timeout and the demo's end."""
        budget = max(1.0, min(timeout, self.left()))
        try:
            res = self.lab.exec(host, *cmd, check=False, timeout=budget)
        except LabError as e:  # timed out: say so, the demo goes on
            self.say(f"   {e}")
            return subprocess.CompletedProcess(cmd, -1, "", str(e))
        if res.returncode != 0 and self.verbose:
            why = (res.stderr or res.stdout).strip().splitlines()
            self.say(f"   {host}: {cmd[0]} exit {res.returncode}: {why[-1] if why else ''}")
        return res

    def serve(self, proc: subprocess.Popen) -> None:
        self.servers.append(proc)


@dataclass(frozen=True)
class Step:
    name: str
    says: str  # one line for the audience: what happens and what the appliance should see
    run: Callable[[DemoContext], None]
    needs: tuple[str, ...] = ()  # executables the step uses (skipped when one is missing)
    # "setup" steps run before the daemon starts (servers, a hub broker) and may add config
    # tables to `ctx.config` (e.g. ``ctx.config["hub"] = {...}``); "traffic" steps run after.
    phase: str = "traffic"


def need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists():
            raise StepSkipped(f"`{t}` is not installed")


# ---- the steps ---------------------------------------------------------------------------
def step_services(ctx: DemoContext) -> None:
    lab = ctx.lab
    ctx.serve(lab.start_http("web", 80))
    ctx.serve(lab.start_http("evil", 80))
    ctx.serve(lab.start_ftp("pc2", 21, "alice", "wonderland"))
    ctx.serve(lab.start_ftp("web", 21, "office", "summer2024"))
    if shutil.which("openssl"):
        key, cert = ctx.workdir / "web.key", ctx.workdir / "web.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=www.example.com", "-keyout", str(key),
             "-out", str(cert)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        ctx.serve(
            lab.serve(
                "web",
                "openssl",
                "s_server",
                "-quiet",
                "-accept",
                "443",
                "-cert",
                str(cert),
                "-key",
                str(key),
                "-www",
                port=443,
            )
        )


# Office devices announce their names the way real ones do: pc1 asks DHCP for its address with a
# host name (option 12), pc2 announces itself over mDNS. Broadcast/multicast: the appliance reads
# them from a packet socket, never the queue.
_ANNOUNCE = """
import sys
from scapy.all import BOOTP, DHCP, DNS, DNSRR, IP, UDP, Ether, get_if_hwaddr, sendp
kind, name, addr = sys.argv[1], sys.argv[2], sys.argv[3]
mac = get_if_hwaddr("eth0")
if kind == "dhcp":
    pkt = (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
           / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=7)
           / DHCP(options=[("message-type", "request"), ("requested_addr", addr),
                           ("hostname", name.encode()), "end"]))
else:
    pkt = (Ether(src=mac, dst="01:00:5e:00:00:fb") / IP(src=addr, dst="224.0.0.251", ttl=255)
           / UDP(sport=5353, dport=5353)
           / DNS(qr=1, aa=1, qd=None, an=DNSRR(rrname=name + ".local", type="A", rdata=addr,
                                               ttl=120)))
sendp(pkt, iface="eth0", count=2, inter=0.2, verbose=False)
"""
DEMO_NAMES = {"pc1": ("dhcp", "reception-pc"), "pc2": ("mdns", "office-printer")}


def step_names(ctx: DemoContext) -> None:
    for host, (kind, name) in DEMO_NAMES.items():
        ctx.run(host, sys.executable, "-c", _ANNOUNCE, kind, name, ctx.lab.addr(host))


PAGE_LISTEN = "0.0.0.0:8443"
PAGE_PORT = 8443


def open_page_relay(ctx: DemoContext, host_port: int = PAGE_PORT) -> Any:
    """The page, reachable from the host at https://127.0.0.1:<port> through a relay that opens
    its connections inside the appliance's namespace (the lab gets no route to the host)."""
    from lab.relay import Relay

    target = (ctx.lab.addr("app"), int(PAGE_LISTEN.rsplit(":", 1)[1]))
    try:
        relay = Relay(ctx.lab.ns("app"), target, port=host_port)
    except OSError:
        relay = Relay(ctx.lab.ns("app"), target, port=0)  # the usual port is taken
    ctx.notes["relay"] = relay
    return relay


def setup_code(log_paths: list[Path], timeout: float = 15.0) -> str:
    """The one-time setup code the daemon logged at first start ("" if none)."""
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in log_paths:
            try:
                m = re.search(r"one-time setup code ([A-Z2-9-]{14})", path.read_text())
            except OSError:
                continue
            if m:
                return m.group(1)
        time.sleep(0.2)
    return ""


def step_office(ctx: DemoContext) -> None:
    ctx.run("pc1", "dig", "+short", "+time=2", "+tries=1", "www.example.com")
    ctx.run("pc1", "curl", "-s", "-o", "/dev/null", "-m", "5", "http://www.example.com/")
    ctx.run("pc2", "ping", "-c", "3", "-i", "0.2", "-W", "1", "203.0.113.10")


def step_intel(ctx: DemoContext) -> None:
    ctx.run("pc1", "curl", "-s", "-o", "/dev/null", "-m", "5", "http://c2.example.net/gate.php")
    ctx.run("pc2", "ping", "-c", "2", "-i", "0.2", "-W", "1", "203.0.113.66")


def step_tls_sni(ctx: DemoContext) -> None:
    need("openssl", "curl")
    ctx.run("pc1", "curl", "-sk", "-o", "/dev/null", "-m", "5",
            "https://login-update.example.org/")  # fmt: skip


def step_scan_inbound(ctx: DemoContext) -> None:
    need("nmap")
    ctx.run("atk", "nmap", "-sS", "-Pn", "-n", "-T4", "--max-retries", "0",
            "--host-timeout", "20s", "-p", "1-1000", "198.18.0.12", timeout=30)  # fmt: skip


def step_scan_outbound(ctx: DemoContext) -> None:
    need("nmap")
    ctx.run("pc1", "nmap", "-sT", "-Pn", "-n", "-T4", "--max-retries", "0",
            "--host-timeout", "15s", "-p", "20-140", "203.0.113.10", timeout=20)  # fmt: skip


def step_syn_burst(ctx: DemoContext) -> None:
    need("hping3")
    ctx.run("atk", "hping3", "-q", "-S", "-p", "445", "-c", "100", "-i", "u5000",
            "198.18.0.12", timeout=15)  # fmt: skip


_FTP_LOGINS = """
import ftplib, sys
host, user, tries = sys.argv[1], sys.argv[2], int(sys.argv[3])
words = sys.argv[4].split(",")
for i in range(tries):
    try:
        f = ftplib.FTP(host, timeout=3)
        try:
            f.login(user, words[i % len(words)])
            print("login ok")
        except ftplib.error_perm:
            pass
        f.close()
    except OSError as e:
        print("ftp:", e)
        break
"""


def step_ftp_bruteforce(ctx: DemoContext) -> None:
    ctx.run("atk", "python3", "-c", _FTP_LOGINS, "198.18.0.12", "alice", "12",
            "123456,password,qwerty,letmein,admin,dragon")  # fmt: skip


def step_ssh_bruteforce(ctx: DemoContext) -> None:
    need("sshd", "ssh", "ssh-keygen")
    key = ctx.workdir / "ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True, capture_output=True, timeout=20)  # fmt: skip
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    ctx.serve(
        ctx.lab.serve(
            "pc2",
            sshd,
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-o",
            f"HostKey={key}",
            "-o",
            "ListenAddress=198.18.0.12",
            "-o",
            "PidFile=none",
            "-o",
            "UsePAM=no",
            "-o",
            "MaxAuthTries=1",
            port=22,
        )
    )
    for _ in range(12):
        if ctx.left() < 2:
            break
        ctx.run("atk", "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3",
                "-o", "LogLevel=ERROR", "admin@198.18.0.12", "true", timeout=6)  # fmt: skip


def step_cleartext_ftp(ctx: DemoContext) -> None:
    ctx.run("pc1", "python3", "-c", _FTP_LOGINS, "203.0.113.10", "office", "1", "summer2024")


def step_dns_tunnel(ctx: DemoContext) -> None:
    need("dig")
    rng = random.Random(7)
    alphabet = string.ascii_lowercase + "234567"
    for i in range(12):
        label = "".join(rng.choice(alphabet) for _ in range(50))
        label2 = "".join(rng.choice(alphabet) for _ in range(40))
        ctx.run("pc2", "dig", "+short", "+time=1", "+tries=1", "TXT" if i % 2 else "A",
                f"{label}.{label2}.t.example.net", timeout=4)  # fmt: skip


def step_dga(ctx: DemoContext) -> None:
    need("dig")
    rng = random.Random(11)
    for _ in range(25):
        name = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(12, 18)))
        ctx.run("pc1", "dig", "+short", "+time=1", "+tries=1", f"{name}.com", timeout=4)


def _hub(ctx: DemoContext) -> Any:
    hub = ctx.notes.get("hub")
    if hub is None:
        raise StepSkipped("no hub broker in this demo")
    return hub


def _operator(ctx: DemoContext, *args: str) -> list[str]:
    return [sys.executable, "-m", "appliance", "hub", *_hub(ctx).operator_args(), *args]


def _hub_setup(ctx: DemoContext) -> None:
    from lab.hub import demo_setup

    demo_setup(ctx)


def step_hub_tail(ctx: DemoContext) -> None:
    """The hub analyst's view: `watchpost hub tail` in the hub namespace, alerts as they land."""
    proc = ctx.lab.popen(
        "hub", *_operator(ctx, "tail", "--client-id", "demo-analyst"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ctx.serve(proc)
    received: list[dict[str, Any]] = []
    ctx.notes["hub_alerts"] = received

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                eve = json.loads(line)
            except ValueError:
                continue
            received.append(eve)
            if ctx.verbose:
                wp = eve.get("watchpost", {})
                ctx.say(f"   hub <- seq {wp.get('seq')} {eve['alert']['signature']}")

    threading.Thread(target=read, daemon=True, name="hub-tail").start()
    ctx.say("   the hub's analyst is tailing alerts over TLS (watchpost hub tail)")


def step_hub_commands(ctx: DemoContext) -> None:
    """The hub operator's view: who is online, and signed commands answered by the device."""
    res = ctx.run("hub", *_operator(ctx, "devices"), timeout=15)
    for line in res.stdout.strip().splitlines():
        ctx.say(f"   {line}")
    for cmd in (("ping",), ("status",), ("get-config",)):
        res = ctx.run("hub", *_operator(ctx, "send", "--timeout", "10", "lab-appliance", *cmd))
        answer = (res.stdout or res.stderr).strip()
        ctx.say(f"   hub send {' '.join(cmd)} -> exit {res.returncode}: {answer[:160]}")
    hub = _hub(ctx)
    deadline = time.monotonic() + 20  # alerts still in flight (outbox retries) may close a gap
    while True:
        if hub.store_url:  # the hub's collector, subscribed before the device connected
            count, seqs, _ = hub.stored()
        else:
            received = ctx.notes.get("hub_alerts", [])
            count = len(received)
            seqs = sorted({a.get("watchpost", {}).get("seq", 0) for a in received})
        gaps = [n for n in range(1, max(seqs, default=0) + 1) if n not in set(seqs)]
        if not gaps or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    ctx.say(
        f"   the hub has stored {count} alerts"
        + (f", sequence 1..{max(seqs)} without gaps" if seqs and not gaps else "")
        + (f", still missing seq {gaps[:10]}" if gaps else "")
    )


STEPS: list[Step] = [
    Step("hub", "the regional hub's broker at 192.0.2.10 (TLS, client certificates, per-site ACL)",
         _hub_setup, needs=("mosquitto",), phase="setup"),
    Step("hub-tail", "the hub analyst tails alerts (shared subscription, dedup by id)",
         step_hub_tail, needs=("mosquitto",)),
    Step("services", "lab servers: web, FTP, TLS on the internet side, FTP in the office",
         step_services, phase="setup"),
    Step("names", "pc1 asks DHCP with its name, pc2 announces itself over mDNS", step_names),
    Step("office", "ordinary office traffic: DNS, a web page, pings", step_office,
         ("dig", "curl", "ping")),
    Step("intel", "pc1 calls c2.example.net (203.0.113.66, listed in the intel file)",
         step_intel, ("curl", "ping")),
    Step("tls-sni", "pc1 opens TLS to login-update.example.org (a listed name)", step_tls_sni),
    Step("scan-in", "atk scans 1000 ports of pc2 (nmap SYN scan)", step_scan_inbound),
    Step("scan-out", "pc1 scans ports of a web server (a compromised office host?)",
         step_scan_outbound),
    Step("syn-burst", "atk sends 100 SYNs to pc2's SMB port (hping3)", step_syn_burst),
    Step("ftp-brute", "atk tries 12 FTP passwords against pc2", step_ftp_bruteforce),
    Step("ssh-brute", "atk tries 12 SSH logins against pc2", step_ssh_bruteforce),
    Step("cleartext", "pc1 logs in to an internet FTP server in the clear", step_cleartext_ftp),
    Step("dns-tunnel", "pc2 sends long encoded DNS labels (data leaving through DNS)",
         step_dns_tunnel),
    Step("dga", "pc1 looks up 25 random-looking domains (NXDOMAIN storm)", step_dga),
    Step("hub-commands", "the hub operator lists devices and sends signed commands",
         step_hub_commands, needs=("mosquitto",)),
]  # fmt: skip


def background(ctx: DemoContext) -> None:
    """Light office traffic while the demo keeps running."""
    ctx.run("pc1", "curl", "-s", "-o", "/dev/null", "-m", "3", "http://www.example.com/")
    ctx.run("pc2", "dig", "+short", "+time=1", "+tries=1", "files.example.com", timeout=3)


# ---- alerts ------------------------------------------------------------------------------
def format_alert(eve: dict[str, Any]) -> str:
    """One readable line per EVE alert."""
    a = eve.get("alert", {})
    wp = eve.get("watchpost", {})
    ts = str(eve.get("timestamp", ""))[11:19]

    def end(ip: str, port: Any) -> str:
        return f"{ip}:{port}" if port is not None else str(ip)

    line = (
        f"ALERT {ts} sev{a.get('severity', '?')} {wp.get('detector', '?'):<10} "
        f"{a.get('signature', '?')}  {end(eve.get('src_ip', '?'), eve.get('src_port'))} -> "
        f"{end(eve.get('dest_ip', '?'), eve.get('dest_port'))} {eve.get('proto', '')}"
    )
    extra = []
    if isinstance(eve.get("dns"), dict):
        dns = eve["dns"]
        extra.append(f"dns {dns.get('rrname') or (dns.get('queries') or [{}])[0].get('rrname')}")
    if isinstance(eve.get("tls"), dict) and eve["tls"].get("sni"):
        extra.append(f"sni {eve['tls']['sni']}")
    if isinstance(eve.get("http"), dict) and eve["http"].get("hostname"):
        extra.append(f"host {eve['http']['hostname']}")
    if (wp.get("count") or 1) > 1:
        extra.append(f"x{wp['count']}")
    return line + (f"  [{', '.join(extra)}]" if extra else "")


class EveTail(threading.Thread):
    """Follows the daemon's EVE file and hands each alert to `on_alert`."""

    def __init__(self, path: Path, on_alert: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(daemon=True, name="eve-tail")
        self.path = path
        self.on_alert = on_alert
        self.done = threading.Event()
        self.alerts: list[dict[str, Any]] = []
        self._pos = 0
        self._partial = ""

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.poll()
        self.poll()

    def poll(self) -> None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self._pos)
                chunk = f.read(1 << 20)
                self._pos = f.tell()
        except FileNotFoundError:
            return
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            try:
                eve = json.loads(line)
            except ValueError:
                continue
            if eve.get("event_type") == "alert":
                self.alerts.append(eve)
                self.on_alert(eve)

    def stop(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join(5)


# ---- the run -----------------------------------------------------------------------------
def run_demo(
    prefix: str = "wp",
    duration: float | None = None,
    steps: list[Step] | None = None,
    workdir: str | None = None,
    verbose: bool = False,
) -> int:
    """Run the demo; returns the exit code. Everything is torn down on every way out."""
    require_root()
    start = time.monotonic()
    deadline = start + duration if duration else float("inf")
    lab = Lab(prefix)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="watchpost-demo-"))
    ctx = DemoContext(lab=lab, workdir=tmp, deadline=deadline, verbose=verbose)
    tail: EveTail | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    code = 0
    try:
        ctx.say(f"demo: building lab {prefix} ...")
        lab.up()
        plan = steps if steps is not None else STEPS
        for step in plan:
            if step.phase == "setup":
                _run_step(ctx, step)
        ctx.config.setdefault("status", {}).setdefault("listen", PAGE_LISTEN)
        config = lab_config(tmp, "monitor", DEMO_INTEL, **ctx.config)
        ctx.say(f"demo: config {config}, EVE alerts in {tmp / 'eve.json'}")
        tail = EveTail(tmp / "eve.json", lambda eve: ctx.say(format_alert(eve)))
        tail.start()
        ctx.daemon = LabDaemon(lab, config).start()
        relay = open_page_relay(ctx)
        first_code = setup_code([tmp / "watchpost.log", tmp / "daemon.log"])
        ctx.say(f"demo: the office owner's page is at {relay.url}/ (self-signed certificate)")
        ctx.say(
            f"demo: first visit: enter the setup code {first_code}, then choose a password"
            if first_code
            else "demo: the page already has a password"
        )
        ctx.say("demo: daemon inline (monitor mode); traffic starts")
        for step in plan:
            if step.phase == "setup":
                continue
            if ctx.left() <= 0:
                ctx.say(f"demo: time is up, skipping {step.name} and the rest")
                break
            _run_step(ctx, step)
            if not ctx.daemon.alive():
                raise DemoError(f"the daemon died during {step.name}: {ctx.daemon.log_tail()}")
        ctx.say("demo: all steps done; light office traffic until the end (Ctrl-C stops)")
        while ctx.left() > 0:
            background(ctx)
            if not ctx.daemon.alive():
                raise DemoError(f"the daemon died: {ctx.daemon.log_tail()}")
            time.sleep(min(2.0, max(0.0, ctx.left())))
    except KeyboardInterrupt:
        ctx.say("\ndemo: interrupted, tearing down")
    except DemoError as e:
        ctx.say(f"error: {e}", err=True)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        code = _teardown(ctx, tail) or code
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


def _run_step(ctx: DemoContext, step: Step) -> None:
    ctx.say(f"-- {step.name}: {step.says}")
    try:
        need(*step.needs)
        step.run(ctx)
    except StepSkipped as e:
        ctx.say(f"   skipped: {e}")
    except Exception as e:  # a broken step is reported; the demo goes on
        ctx.say(f"   step {step.name} failed: {e}")


def _teardown(ctx: DemoContext, tail: EveTail | None) -> int:
    code = 0
    # Ctrl-C during teardown must not leave a half-removed lab: ignore it until done.
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        relay = ctx.notes.get("relay")
        if relay is not None:
            relay.close()
        if ctx.daemon is not None:
            rc = ctx.daemon.stop()
            ctx.say(f"demo: daemon stopped (exit {rc})")
        for p in ctx.servers:
            stop(p, 3)
        if tail is not None:
            time.sleep(0.3)
            tail.stop()
            by = Counter(str(a.get("watchpost", {}).get("detector", "?")) for a in tail.alerts)
            summary = ", ".join(f"{d} {n}" for d, n in by.most_common()) or "none"
            ctx.say(f"demo: {len(tail.alerts)} alerts ({summary})")
        try:
            ctx.lab.down()
            ctx.say(f"demo: lab {ctx.lab.prefix} removed")
        except LabError as e:
            ctx.say(f"error: lab down: {e}", err=True)
            code = 1
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return code


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(run_demo())
