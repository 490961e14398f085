"""The network-namespace lab: an office, the appliance inline, a router and a small internet.

    pc1, pc2 ── sw ── office [app: br0 198.18.0.2] uplink ── rtr ── web, dns, evil, atk, hub

Every host is a network namespace named ``<prefix>-<host>``; links are veth pairs created with
both ends inside namespaces, so nothing appears in the root namespace, and the router has no
default route: lab traffic cannot reach the host's network or leave the machine. Addresses come
only from 198.18.0.0/15 and the documentation ranges. `down()` works from the prefix alone, so it
also removes what a crashed run left (namespaces, and every process still running inside them).

Used by `watchpost lab up|down|status|exec`, `watchpost demo`, the integration tests (through
tests/integration/conftest.py) and the inline benchmark.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class LabError(RuntimeError):
    """The lab cannot be built or used; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    netns: str
    address: str | None  # its IPv4 address (None for the switch)
    role: str


# name -> (address, role). Fixed: tests and docs of every component rely on them.
HOSTS: dict[str, tuple[str | None, str]] = {
    "app": ("198.18.0.2", "the appliance: bridge br0 (uplink + office), management address"),
    "sw": (None, "the office switch (plain bridge)"),
    "pc1": ("198.18.0.11", "office PC"),
    "pc2": ("198.18.0.12", "office PC that runs office servers"),
    "rtr": ("198.18.0.1", "office router and the internet (forwarding, no NAT)"),
    "web": ("203.0.113.10", "web/TLS/iperf3 server"),
    "dns": ("203.0.113.53", "the lab resolver"),
    "evil": ("203.0.113.66", "a host listed in the lab's threat intel"),
    "atk": ("198.51.100.23", "an attacker on the internet"),
    "hub": ("192.0.2.10", "the regional hub's broker"),
}
# Second addresses (servers answering for more than one name).
EXTRA_ADDRESSES: dict[str, tuple[str, ...]] = {"web": ("203.0.113.11",)}
OFFICE_NET = "198.18.0.0/24"
GATEWAY = "198.18.0.1"
# The router's internet-side addresses, one per range (all on its `inet` bridge).
INTERNET_GATEWAYS = {"203.0.113.0/24": "203.0.113.1", "198.51.100.0/24": "198.51.100.1",
                     "192.0.2.0/24": "192.0.2.1"}  # fmt: skip
INTERNET_HOSTS = ("web", "dns", "evil", "atk", "hub")
OFFICE_HOSTS = ("pc1", "pc2")

# What the lab resolver answers; anything else (under any domain) is NXDOMAIN.
LAB_NAMES: dict[str, str] = {
    "example.com": "203.0.113.10",
    "www.example.com": "203.0.113.10",
    "files.example.com": "203.0.113.10",
    # Listed by name in the demo intel; on `web`'s second address, so that its lookup does not
    # make every connection to www.example.com look like one to a listed domain.
    "login-update.example.org": "203.0.113.11",
    "c2.example.net": "203.0.113.66",
    "evil.example.net": "203.0.113.66",
    "dns.example.net": "203.0.113.53",
    "atk.example.net": "198.51.100.23",
    "hub.example.org": "192.0.2.10",
}

# The daemon's view of the lab (merge into a config's [inline]).
INLINE_CONFIG = {"bridge": "br0", "uplink": "uplink", "office": "office",
                 "home_nets": [OFFICE_NET]}  # fmt: skip

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


def _links() -> list[tuple[str, str, str, str]]:
    """(host a, interface in a, host b, interface in b) for every veth pair."""
    links = [("app", "uplink", "rtr", "lan"), ("app", "office", "sw", "app")]
    links += [("sw", h, h, "eth0") for h in OFFICE_HOSTS]
    links += [("rtr", h, h, "eth0") for h in INTERNET_HOSTS]
    return links


def _interfaces() -> dict[str, list[str]]:
    """Host -> the interfaces it must have (veths and bridges)."""
    out: dict[str, list[str]] = {h: [] for h in HOSTS}
    for a, ia, b, ib in _links():
        out[a].append(ia)
        out[b].append(ib)
    out["app"].append("br0")
    out["sw"].append("br0")
    out["rtr"].append("inet")
    return out


class Lab:
    """One lab instance; everything it makes is named from `prefix`, so instances can coexist."""

    def __init__(self, prefix: str = "wp", verbose: bool = False) -> None:
        if not _PREFIX_RE.match(prefix):
            raise LabError(
                f"lab prefix {prefix!r}: use 1-12 lower-case letters and digits, "
                "starting with a letter"
            )
        self.prefix = prefix
        self.verbose = verbose
        self.hosts: dict[str, Host] = {
            name: Host(name, f"{prefix}-{name}", addr, role) for name, (addr, role) in HOSTS.items()
        }

    # ---- naming and running -------------------------------------------------------------
    def ns(self, host: str) -> str:
        try:
            return self.hosts[host].netns
        except KeyError:
            raise LabError(f"no lab host {host!r} (hosts: {', '.join(self.hosts)})") from None

    def addr(self, host: str) -> str:
        a = self.hosts[host].address if host in self.hosts else None
        if a is None:
            raise LabError(f"lab host {host!r} has no address")
        return a

    def exec(
        self,
        host: str,
        *cmd: str,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside `host`'s namespace; output captured as text.

        With `check`, a non-zero exit raises LabError quoting the command and its stderr.
        """
        argv = ["ip", "netns", "exec", self.ns(host), *cmd]
        try:
            res = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env=dict(env) if env is not None else None,
                stdin=None if input is not None else subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"{host}: {' '.join(cmd)}: timed out after {timeout:g} s") from None
        except FileNotFoundError:
            raise LabError("the lab needs iproute2's `ip` command (apt install iproute2)") from None
        if check and res.returncode != 0:
            why = (res.stderr or res.stdout).strip().splitlines()
            raise LabError(
                f"{host}: {' '.join(cmd)}: exit {res.returncode}: {why[-1] if why else ''}"
            )
        return res

    def popen(self, host: str, *cmd: str, **kwargs: Any) -> subprocess.Popen:
        """Start `cmd` inside `host`'s namespace; `down()` kills it if the caller does not."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)  # Ctrl-C goes to us; we stop it in order
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *cmd], **kwargs)

    def _ip(self, host: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["ip", *(["-n", self.ns(host)] if host else []), *args]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(argv)}: {res.stderr.strip()}")
        return res

    # ---- state --------------------------------------------------------------------------
    def existing_namespaces(self) -> list[str]:
        """Lab namespaces of this prefix that exist now (exact names only: other labs are safe)."""
        res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
        present = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
        return [h.netns for h in self.hosts.values() if h.netns in present]

    def pids(self, host: str) -> list[int]:
        res = subprocess.run(
            ["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in res.stdout.split() if p.isdigit()]

    def is_up(self) -> bool:
        """Every namespace, interface and the resolver are there."""
        if len(self.existing_namespaces()) != len(self.hosts):
            return False
        for host, ifaces in _interfaces().items():
            res = self._ip(host, "-o", "link", "show", check=False)
            # Administratively up is what we set; carrier ("state UP") may lag a moment.
            admin_up = {
                m.group(1)
                for m in re.finditer(r"^\d+: ([^:@]+)[^<]*<([^>]*)>", res.stdout, re.M)
                if "UP" in m.group(2).split(",")
            }
            if not set(ifaces) <= admin_up:
                return False
        return self._listening("dns", 53, "udp")

    def status(self) -> dict[str, Any]:
        """What exists now: per host its namespace, address, and processes running inside."""
        present = set(self.existing_namespaces())
        hosts = {}
        for name, h in self.hosts.items():
            exists = h.netns in present
            hosts[name] = {
                "netns": h.netns,
                "address": h.address,
                "role": h.role,
                "exists": exists,
                "pids": self.pids(name) if exists else [],
            }
        return {
            "prefix": self.prefix,
            "up": bool(present) and self.is_up(),
            "partial": bool(present) and len(present) != len(self.hosts),
            "hosts": hosts,
        }

    # ---- up / down ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One up/down at a time per prefix (tests and a demo may race on the same lab)."""
        Path("/run/watchpost-lab").mkdir(parents=True, exist_ok=True)
        with open(f"/run/watchpost-lab/{self.prefix}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def up(self) -> Lab:
        """Build the lab (or leave a complete one as it is); a half-built one is rebuilt."""
        require_root()
        with self._locked():
            if self.is_up():
                return self
            if self.existing_namespaces():
                self._down()
            try:
                self._build()
            except BaseException:
                self._down()
                raise
        return self

    def down(self) -> list[str]:
        """Remove everything of this prefix, also what a crashed run left; returns namespaces."""
        require_root()
        with self._locked():
            return self._down()

    def _down(self) -> list[str]:
        present = self.existing_namespaces()
        by_ns = {h.netns: name for name, h in self.hosts.items()}
        # Kill every process inside first: a namespace with a process in it outlives `ip netns
        # del`, and so would its interfaces.
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            pids = [p for ns in present for p in self.pids(by_ns[ns])]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                pids = [p for ns in present for p in self.pids(by_ns[ns])]
                if pids:
                    time.sleep(0.05)
        for ns in present:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        for h in self.hosts.values():
            shutil.rmtree(f"/etc/netns/{h.netns}", ignore_errors=True)
        left = self.existing_namespaces()
        if left:
            raise LabError(f"could not remove namespaces: {', '.join(left)}")
        return present

    def _build(self) -> None:
        _kernel_ready()
        for h in self.hosts.values():
            res = subprocess.run(["ip", "netns", "add", h.netns], capture_output=True, text=True)
            if res.returncode != 0:
                raise LabError(
                    f"cannot create network namespace {h.netns}: {res.stderr.strip()} "
                    "(needs root and CONFIG_NET_NS; a restricted container cannot)"
                )
            self._ip(h.name, "link", "set", "lo", "up")
            # Lab processes resolve names through the lab resolver (ip netns exec binds this).
            etc = Path(f"/etc/netns/{h.netns}")
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(f"nameserver {self.addr('dns')}\noptions timeout:1\n")
        for a, ia, b, ib in _links():
            # Created inside `a` with its peer placed straight into `b`: never in the root ns.
            self._ip(a, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", self.ns(b))
        # The appliance: a transparent bridge with a management address.
        self._bridge("app", "br0", ["uplink", "office"])
        self._sysctl(
            "app",
            "net.bridge.bridge-nf-call-iptables=1",
            "net.bridge.bridge-nf-call-ip6tables=1",
            "net.netfilter.nf_conntrack_acct=1",
        )
        self._ip("app", "addr", "add", f"{self.addr('app')}/24", "dev", "br0")
        self._ip("app", "route", "add", "default", "via", GATEWAY)
        # The office switch.
        self._bridge("sw", "br0", ["app", *OFFICE_HOSTS])
        # The router: LAN towards the appliance's uplink, the internet on its `inet` bridge.
        self._ip("rtr", "addr", "add", f"{GATEWAY}/24", "dev", "lan")
        self._ip("rtr", "link", "set", "lan", "up")
        self._bridge("rtr", "inet", list(INTERNET_HOSTS))
        for net, gw in INTERNET_GATEWAYS.items():
            self._ip("rtr", "addr", "add", f"{gw}/{net.split('/')[1]}", "dev", "inet")
        self._sysctl("rtr", "net.ipv4.ip_forward=1")
        for name in (*OFFICE_HOSTS, *INTERNET_HOSTS):
            addr = self.addr(name)
            if name in OFFICE_HOSTS:
                prefix_len, gw = "24", GATEWAY
            else:
                net = next(n for n in INTERNET_GATEWAYS if _in_net(addr, n))
                prefix_len, gw = net.split("/")[1], INTERNET_GATEWAYS[net]
            self._ip(name, "addr", "add", f"{addr}/{prefix_len}", "dev", "eth0")
            for extra in EXTRA_ADDRESSES.get(name, ()):
                self._ip(name, "addr", "add", f"{extra}/{prefix_len}", "dev", "eth0")
            self._ip(name, "link", "set", "eth0", "up")
            self._ip(name, "route", "add", "default", "via", gw)
        self._start_resolver()

    def _bridge(self, host: str, name: str, ports: Sequence[str]) -> None:
        self._ip(host, "link", "add", name, "type", "bridge", "stp_state", "0",
                 "forward_delay", "0")  # fmt: skip
        for p in ports:
            self._ip(host, "link", "set", p, "master", name)
            self._ip(host, "link", "set", p, "up")
        self._ip(host, "link", "set", name, "up")

    def _sysctl(self, host: str, *settings: str) -> None:
        self.exec(host, "sysctl", "-q", "-w", *settings)

    def _start_resolver(self) -> None:
        records = [f"--record={n}={a}" for n, a in LAB_NAMES.items()]
        self.popen(
            "dns",
            sys.executable,
            "-m",
            "lab.tools",
            "dns",
            "--listen",
            self.addr("dns"),
            *records,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_listening("dns", 53, "udp")

    # ---- services on lab hosts ----------------------------------------------------------
    def _listening(self, host: str, port: int, proto: str = "tcp") -> bool:
        res = self.exec(host, "ss", "-Hln" + proto[0], check=False, timeout=10)
        local = [f[3] for f in (line.split() for line in res.stdout.splitlines()) if len(f) > 3]
        return any(a.rpartition(":")[2] == str(port) for a in local)

    def wait_listening(self, host: str, port: int, proto: str = "tcp", timeout: float = 15.0):
        """Wait (bounded) until something listens on `port` in `host`."""
        deadline = time.monotonic() + timeout
        while not self._listening(host, port, proto):
            if time.monotonic() > deadline:
                raise LabError(f"{host}: nothing listening on {proto}/{port} after {timeout:g} s")
            time.sleep(0.1)

    def serve(
        self, host: str, *cmd: str, port: int, proto: str = "tcp", timeout: float = 15.0
    ) -> subprocess.Popen:
        """Start a server in `host` and return once it listens on `port`."""
        import tempfile

        # Its output goes to an unlinked file, not a pipe nobody reads (a chatty server would
        # block on a full pipe); we read it only to explain a server that failed to start.
        with tempfile.TemporaryFile() as err:
            proc = self.popen(host, *cmd, stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.monotonic() + timeout
            while not self._listening(host, port, proto):
                if proc.poll() is not None:
                    err.seek(0)
                    why = err.read().decode(errors="replace").strip().splitlines()
                    raise LabError(
                        f"{host}: {' '.join(cmd)} exited {proc.returncode}: "
                        f"{why[-1] if why else 'no output'}"
                    )
                if time.monotonic() > deadline:
                    stop(proc)
                    raise LabError(
                        f"{host}: {' '.join(cmd)}: not listening on {port} in {timeout} s"
                    )
                time.sleep(0.1)
        return proc

    def _tool(self, host: str, kind: str, port: int, *args: str) -> subprocess.Popen:
        return self.serve(
            host,
            sys.executable,
            "-m",
            "lab.tools",
            kind,
            "--listen",
            self.addr(host),
            "--port",
            str(port),
            *args,
            port=port,
        )

    def start_http(self, host: str = "web", port: int = 80) -> subprocess.Popen:
        return self._tool(host, "http", port)

    def start_sink(self, host: str = "web", port: int = 9000, threads: int = 2):
        """Accept-and-close server (new connections per second)."""
        return self._tool(host, "sink", port, "--threads", str(threads))

    def start_ftp(
        self, host: str = "pc2", port: int = 21, user: str = "alice", password: str = "wonderland"
    ) -> subprocess.Popen:
        return self._tool(host, "ftp", port, "--user", user, "--password", password)

    def start_iperf3(self, host: str = "web", port: int = 5201) -> subprocess.Popen:
        _need("iperf3", "iperf3")
        return self.serve(host, "iperf3", "-s", "-B", self.addr(host), "-p", str(port), port=port)

    def set_offloads(self, enabled: bool) -> None:
        """Segmentation/receive offloads on every lab veth and bridge (off = 1500-byte frames
        through the bridge, as on a Pi's NIC)."""
        _need("ethtool", "ethtool")
        state = "on" if enabled else "off"
        for host, ifaces in _interfaces().items():
            script = " ; ".join(
                f"ethtool -K {i} tso {state} gso {state} gro {state} 2>/dev/null" for i in ifaces
            )
            self.exec(host, "sh", "-c", script + " ; true")

    # ---- what the outside world sees ----------------------------------------------------
    def describe(self) -> str:
        lines = [f"lab {self.prefix}:"]
        st = self.status()
        for name, h in st["hosts"].items():
            mark = "up  " if h["exists"] else "--  "
            lines.append(
                f"  {mark}{name:5} {h['netns']:16} {h['address'] or '':15} "
                f"{len(h['pids'])} proc  {h['role']}"
            )
        lines.append("  state: " + ("up" if st["up"] else "partial" if st["partial"] else "down"))
        return "\n".join(lines)


DEMO_INTEL = """\
# Watchpost lab intel: only lab addresses and names (never real ones).
203.0.113.66
c2.example.net
login-update.example.org
"""


def lab_config(
    directory: str | os.PathLike[str],
    mode: str = "monitor",
    intel: str = DEMO_INTEL,
    **sections: Mapping[str, Any],
) -> Path:
    """Write a daemon config for the lab (and its intel file) into `directory`; return its path.

    `sections` are TOML-shaped tables laid over the lab defaults, e.g.
    ``lab_config(tmp, inline={"head_packets": 4}, hub={...})``. The result is validated with the
    project's own config loader, so a bad override fails here, naming the key.
    """
    import tomli_w

    import appliance.detect.registry  # noqa: F401  (validates [detect.*] too)
    from appliance.config import from_dict

    d = Path(directory)
    intel_path = d / "intel.txt"
    data: dict[str, dict[str, Any]] = {
        "device": {"id": "lab-appliance", "site": "lab", "state_dir": str(d / "state")},
        "inline": {
            **INLINE_CONFIG,
            "mode": mode,
            "never_block": ["198.18.0.1/32", "203.0.113.53/32", "192.0.2.10/32"],
        },
        "intel": {"paths": [str(intel_path)]},
        "log": {"eve": str(d / "eve.json"), "file": str(d / "watchpost.log")},
    }
    for name, table in sections.items():
        data[name] = {**data.get(name, {}), **table}
    from_dict(data)  # raises ConfigError naming the key, before anything is written
    d.mkdir(parents=True, exist_ok=True)
    intel_path.write_text(intel)
    path = d / "watchpost.toml"
    path.write_text(tomli_w.dumps(data))
    return path


class LabDaemon:
    """`watchpost run --config F` inside the lab's appliance namespace (the CLI contract only).

    Ready means: the daemon said READY=1 on its systemd notify socket, or the kernel shows a
    bound queue in the appliance namespace. Its output goes to ``daemon.log`` next to the config.
    """

    def __init__(
        self, lab: Lab, config: str | os.PathLike[str], wrapper: Sequence[str] = ()
    ) -> None:
        self.lab = lab
        self.config = Path(config)
        # A command the daemon runs under (e.g. the unit's syscall filter, in tests).
        self.wrapper = list(wrapper)
        self.log = self.config.parent / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.notices: list[str] = []
        self._notify: Any = None

    def start(self, timeout: float = 30.0) -> LabDaemon:
        import socket
        import threading

        sock_path = self.config.parent / "notify.sock"
        sock_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(sock_path))
        self._notify.settimeout(0.2)
        ready = threading.Event()

        def drain() -> None:  # keep reading so a chatty daemon never blocks on the socket
            while self._notify is not None:
                try:
                    msg = self._notify.recv(4096).decode(errors="replace")
                except TimeoutError:
                    continue
                except OSError:
                    return
                self.notices.append(msg)
                if "READY=1" in msg.split("\n"):
                    ready.set()

        threading.Thread(target=drain, daemon=True, name="notify").start()
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:
            self.proc = self.lab.popen(
                "app",
                *self.wrapper,
                sys.executable,
                "-m",
                "appliance",
                "run",
                "--config",
                str(self.config),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while not (ready.is_set() or (self.queues() and self.queue_rule_packets() is not None)):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.close()
                raise LabError(f"the daemon exited with {code} at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise LabError(f"the daemon was not ready after {timeout:g} s: {self.log_tail()}")
            time.sleep(0.1)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a clean stop removes the daemon's ruleset), SIGKILL after `timeout`."""
        code = stop(self.proc, timeout) if self.proc is not None else None
        self.close()
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash would: the daemon's ruleset stays behind (bypass lets traffic on)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.close()

    def close(self) -> None:
        if self._notify is not None:
            sock, self._notify = self._notify, None
            sock.close()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no daemon output)"
        return " | ".join(text[-lines:]) or "(no daemon output)"

    # Kernel-side counters of the appliance namespace: what reached the queue and what did not.
    def queues(self) -> list[dict[str, int]]:
        """Bound NFQUEUE queues with their counters (/proc/net/netfilter/nfnetlink_queue)."""
        res = self.lab.exec("app", "cat", "/proc/net/netfilter/nfnetlink_queue", check=False)
        keys = ("queue", "portid", "waiting", "copy_mode", "copy_range", "queue_dropped",
                "user_dropped", "id_sequence")  # fmt: skip
        return [dict(zip(keys, map(int, line.split()[:8]), strict=True))
                for line in res.stdout.splitlines() if len(line.split()) >= 8]  # fmt: skip

    def queue_rule_packets(self) -> int | None:
        """Packets that hit a queue rule (iptables NFQUEUE rules, or nft `queue` rules with a
        counter); None when no queue rule exists."""
        total, found = 0, False
        for tool in ("iptables-save", "ip6tables-save"):
            res = self.lab.exec("app", tool, "-c", check=False)
            for line in res.stdout.splitlines():
                m = re.match(r"^\[(\d+):\d+\] .*-j NFQUEUE", line)
                if m:
                    total, found = total + int(m.group(1)), True
        if found:  # iptables-nft rules also show in `nft list ruleset`: count them once
            return total
        res = self.lab.exec("app", "nft", "list", "ruleset", check=False)
        for line in res.stdout.splitlines():
            if re.search(r"\bqueue (flags [\w,]+ )?(num|to)\b", line):
                m = re.search(r"counter packets (\d+)", line)
                found = True
                total += int(m.group(1)) if m else 0
        return total if found else None


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> int | None:
    """SIGTERM a process started with `popen` (its whole session), SIGKILL after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def _in_net(addr: str, net: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(addr) in ipaddress.ip_network(net)


def _need(binary: str, package: str) -> None:
    if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
        raise LabError(f"`{binary}` is missing: apt install {package} (or run `make setup`)")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces and bridges): run it with sudo")
    _need("ip", "iproute2")


def _kernel_ready() -> None:
    """br_netfilter (bridged traffic through netfilter) and conntrack accounting must exist."""
    for path, module in (
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "br_netfilter"),
        ("/proc/sys/net/netfilter/nf_conntrack_acct", "nf_conntrack"),
    ):
        if not Path(path).exists():
            subprocess.run(["modprobe", module], capture_output=True, check=False)
        if not Path(path).exists():
            raise LabError(f"the kernel lacks {module} ({path} missing): modprobe {module}")
