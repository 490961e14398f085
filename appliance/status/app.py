"""The local status page: a daemon component serving a small Flask app over HTTPS.

Who reads it: the office owner (is all well? if not, what is wrong and what should I do, with
devices by name), and the installer checking it once. It belongs to the office side: it answers
on the office bridge port and loopback only (`appliance.status.guard`), over HTTPS with the
device's own certificate (`appliance.status.tls`), to requests whose Host header names the
device (DNS rebinding), and lets no one in without the password (`appliance.status.auth`). At
first start there is no password: the page asks for the one-time setup code
(`appliance.status.setup`) and then for a new password.

Threads: werkzeug's server runs in its own thread and a bounded number of request threads; they
never reach into the packet loop. The numbers are the daemon's per-tick stats snapshot, kept by
the component's `tick` (the daemon's main loop) when someone is looking, and a request waits at
most `wait` seconds for a fresh one. The same tick records the counters every 15 s for the
charts (`appliance.status.series`) and runs a mode change the owner asked for (the daemon view's
`apply_config` belongs to the main loop). The page reaches the daemon only through the
component contract's `DaemonView` (`appliance.component`). The alert index
(`appliance.status.index`) follows the EVE file when a page needs it; the device inventory
(`appliance.inventory`) reads the office port in its own thread.

The pages are in `appliance.status.pages`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from appliance.component import DaemonView, Snapshot
from appliance.config import Config, ConfigError
from appliance.inventory import Inventory
from appliance.status import guard, setup, tls
from appliance.status.auth import LoginLimiter, PasswordGate, Sessions, hash_problem, load_secret
from appliance.status.index import AlertIndex
from appliance.status.series import SeriesStore, counters_of

log = logging.getLogger(__name__)

NOT_SET_UP = "not set up yet: run watchpost passwd"
FRESH_S = 1.5  # a snapshot this young is served as is
INTEREST_S = 30.0  # after a request, keep taking snapshots this long (auto-refresh)
SAMPLE_S = 15.0  # seconds between chart samples (they add up in one-minute buckets)
MAX_THREADS = 32  # concurrent connections served; more get a 503 at once
REQUEST_TIMEOUT_S = 15  # a client that stops talking (or never finishes TLS) is dropped


class StatusPage:
    """Daemon component: ``start(view)`` serves the page, ``tick`` feeds it numbers,
    ``configure`` takes a new password or address, ``stop`` shuts it down."""

    name = "status page"

    def __init__(
        self,
        config: Config,
        *,
        wait: float = 2.0,
        refresh_s: int = 15,
        oui_path: str | None = None,
    ) -> None:
        self.config = config
        self.wait = wait
        self.refresh_s = refresh_s  # the page reloads itself this often
        self.view: DaemonView | None = None
        state = Path(config.device.state_dir)
        problem = hash_problem(config.status.password_hash)
        if problem:
            log.error("status.password_hash: %s; the page asks for setup", problem)
        secret, key_problem = load_secret(state)
        if key_problem:
            log.warning("status page: %s (logins end when the daemon stops)", key_problem)
        self.setup_code: str | None = None
        if not config.status.password_hash and not setup.page_password_hash(state):
            try:
                self.setup_code = setup.ensure_setup_code(state)
            except OSError as e:
                log.error("status page: cannot keep a setup code in %s: %s", state, e)
            if self.setup_code:
                log.warning(
                    "status page: not set up yet; one-time setup code %s (enter it on the page)",
                    self.setup_code,
                )
        self.fingerprint = ""
        self.ssl_context: ssl.SSLContext | None = None
        try:
            try:
                cert, key, self.fingerprint = tls.ensure_certificate(state, config.device.id)
            except OSError as e:
                log.error("status page: cannot keep its certificate in %s (%s): one for this "
                          "run only", state, e)  # fmt: skip
                tmp = tempfile.mkdtemp(prefix="watchpost-tls-")
                cert, key, self.fingerprint = tls.ensure_certificate(tmp, config.device.id)
            self.ssl_context = tls.server_context(cert, key)
        except (OSError, ValueError, ssl.SSLError) as e:
            log.error("status page: no HTTPS certificate (%s): the page stays off", e)
        self.sessions = Sessions(secret)
        self.limiter = LoginLimiter()
        self.gate = PasswordGate()
        self.counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self.index = AlertIndex(state, config.inline.home_nets)
        self.series = SeriesStore(state)
        kw = {"oui_path": oui_path} if oui_path else {}
        self.inventory = Inventory(state, config.inline.home_nets, **kw)
        self.guard_problem = ""
        self._guarded = False
        self._hash_cache: tuple[float, str] = (-1.0, "")
        from appliance.status.pages import create_app

        self.app = create_app(self, secret)
        self.server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._snap: Snapshot | None = None
        self._snap_at = -math.inf  # monotonic time of the snapshot
        self._min_at = -math.inf  # snapshots from before this are out of date (an action)
        self._want = False
        self._interest_until = -math.inf
        self._sampled_at = -math.inf
        self._skip = 0
        self._pending: list[Any] = []  # calls for the main loop (a mode change)

    # -- what the app asks --------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return Path(self.config.device.state_dir)

    @property
    def password_hash(self) -> str:
        """The config's hash (`watchpost passwd`) if set, else the one set on the page."""
        value = self.config.status.password_hash
        if value:
            return "" if hash_problem(value) else value
        path = self.state_dir / setup.PASSWORD_FILE
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return ""
        if mtime != self._hash_cache[0]:
            self._hash_cache = (mtime, setup.page_password_hash(self.state_dir))
        value = self._hash_cache[1]
        return "" if hash_problem(value) else value

    @property
    def needs_setup(self) -> bool:
        """No password yet and a setup code is waiting: the page asks for the code."""
        return not self.password_hash and setup.code_waiting(self.state_dir)

    @property
    def setup_problem(self) -> str:
        """Why nobody can log in ("" when a password is set). With a setup code waiting the
        page offers setup instead of this text."""
        value = self.config.status.password_hash
        if value:
            problem = hash_problem(value)
            return f"status.password_hash is {problem}: run watchpost passwd" if problem else ""
        if self.password_hash:
            return ""
        return NOT_SET_UP

    def count(self, what: str) -> None:
        with self._count_lock:
            self.counts[what] += 1

    def snapshot(self) -> tuple[Snapshot | None, float | None]:
        """(stats, age in seconds): fresh from the main loop if it answers within `wait`."""
        view = self.view
        if view is None:
            return None, None
        if not view.running:  # no main loop (yet): the daemon's latest snapshot
            try:
                return view.snapshot() or None, 0.0
            except Exception:
                log.exception("status page: the daemon's snapshot failed")
                return None, None
        with self._cond:
            asked = time.monotonic()
            self._interest_until = asked + INTEREST_S
            if self._snap_at < max(asked - FRESH_S, self._min_at):
                self._want = True
                self._cond.wait_for(lambda: self._snap_at >= asked, timeout=self.wait)
            if self._snap is None:
                return None, None
            return self._snap, max(0.0, time.monotonic() - self._snap_at)

    def invalidate(self) -> None:
        """After an action: the next page waits for numbers taken after it. The tick right
        after an action hands over a snapshot taken before the other components reacted (the
        LEDs recompute their lights in their own tick), so that one is passed over."""
        with self._cond:
            self._min_at = time.monotonic()
            self._skip = 1

    @property
    def has_leds(self) -> bool:
        return self.view is not None and self.view.has_leds

    def ack_leds(self) -> int:
        """Acknowledge on the LEDs (the red light stops blinking): how many were waiting."""
        if self.view is None or not self.view.has_leds:
            return 0
        n = self.view.ack_alerts(None)
        self.invalidate()
        return int(n or 0)

    def refresh_index(self) -> None:
        try:
            self.index.ingest(self.config.log.eve)
        except OSError as e:
            log.warning("status page: cannot read %s: %s", self.config.log.eve, e)

    def label(self, ip: str) -> str:
        name = self.inventory.store.name(ip) if ip else ""
        return f"{name} ({ip})" if name else ip

    def request_mode(self, mode: str) -> threading.Event:
        """Ask the main loop to switch inline.mode; the event is set when it has tried
        (`mode_result` then says what happened)."""
        done = threading.Event()
        with self._cond:
            self._pending.append((mode, done))
            self._want = True
        return done

    mode_result = ""

    def _apply_mode(self, mode: str) -> None:
        # Saved like the hub's changes: in the overlay under the state dir (/etc/watchpost is
        # read-only to the daemon), so the switch survives a restart.
        from appliance.config import remote_merged, save_remote

        view = self.view
        if view is None:
            self.mode_result = "the watch service is not running"
            return
        current = view.config
        if current.inline.mode == mode:
            self.mode_result = f"already in {mode} mode"
            return
        try:
            new = remote_merged(current, {"inline": {"mode": mode}})
            view.apply_config(new)
            save_remote(new)
            self.mode_result = ""
            log.warning("status page: the owner switched to %s mode", mode)
        except (ConfigError, OSError) as e:
            self.mode_result = f"refused: {e}"

    # -- component hooks ----------------------------------------------------------------------

    def start(self, view: DaemonView) -> None:
        self.view = view
        server = self._bind(self.config.status.listen)
        self._guard(server.server_address[1])
        self._run(server)
        office = self.config.inline.office
        if Path(f"/sys/class/net/{office}").exists():
            problem = self.inventory.start(office)
            if problem:
                log.warning("inventory: %s (devices are shown by address only)", problem)

    def _guard(self, port: int) -> None:
        """The page's input rules (office port and loopback only), when the bridge is here."""
        inl = self.config.inline
        if not Path(f"/sys/class/net/{inl.bridge}/bridge").exists():
            log.info("status page: no bridge %s here: its input rules are not applied", inl.bridge)
            return
        try:
            guard.apply(self.config, port)
            self._guarded = True
            self.guard_problem = ""
        except guard.GuardError as e:
            self.guard_problem = str(e)
            log.error("status page: %s", e)

    def tick(self, now: float, snapshot: Snapshot) -> None:
        with self._cond:
            pending, self._pending = self._pending, []
        for mode, done in pending:
            self._apply_mode(mode)
            done.set()
            self.invalidate()
        mono = time.monotonic()
        with self._cond:
            wanted = self._want or mono < self._interest_until
        if wanted:
            with self._cond:
                if self._skip:
                    self._skip -= 1
                    self._want = True
                else:
                    self._snap, self._snap_at, self._want = snapshot, time.monotonic(), False
                    self._cond.notify_all()
        if mono - self._sampled_at >= SAMPLE_S and snapshot:
            self._sampled_at = mono
            try:
                self.series.record(counters_of(snapshot), talkers=self.inventory.take_talkers())
            except Exception:
                log.exception("status page: chart sample failed")

    def configure(self, config: Config) -> None:
        """A new password ends every session (they are bound to the hash); a new address is
        bound before the old one is let go, so a busy one refuses the reload and changes
        nothing; an empty one stops serving."""
        problem = hash_problem(config.status.password_hash)
        if problem:
            raise ConfigError("status.password_hash", problem)
        listen = config.status.listen
        old_cfg = self.config
        if self.view is not None and listen != old_cfg.status.listen:
            old = self.server
            if listen:
                server = self._bind(listen)
                self.config = config
                self._guard(server.server_address[1])
                self._run(server)
            else:
                self.server = None
                log.info("status page off (status.listen is empty)")
            if old is not None:
                self._shutdown(old)
        elif self._guarded and config.status.allow_from != old_cfg.status.allow_from:
            self.config = config
            self._guard(self.address[1])
        self.config = config

    def stop(self) -> None:
        if self.server is not None:
            self._shutdown(self.server)
            self.server = None
        if self._guarded:
            with contextlib.suppress(guard.GuardError):
                guard.remove()
            self._guarded = False
        self.inventory.stop()
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._count_lock:
            counts = dict(self.counts)
        sniffer = self.inventory.sniffer
        return {
            "status_listen": self.config.status.listen,
            "status_serving": self.server is not None,
            "status_logins": counts.get("logins", 0),
            "status_login_failures": counts.get("login_failures", 0),
            "status_login_throttled": counts.get("login_throttled", 0),
            "status_login_busy": counts.get("login_busy", 0),
            "status_csrf_refused": counts.get("csrf_refused", 0),
            "status_host_refused": counts.get("host_refused", 0),
            "inventory_frames": getattr(sniffer, "frames", 0),
        }

    # -- serving ------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """Where the page listens (the port the kernel gave when ``status.listen`` says 0)."""
        if self.server is None:
            return ("", 0)
        host, port = self.server.server_address[:2]
        return (str(host), int(port))

    def _bind(self, listen: str) -> _Server:
        """Bind the socket ourselves: werkzeug's own bind calls sys.exit on failure, and a
        component must fail with a ConfigError instead, leaving the daemon running."""
        if self.ssl_context is None:
            raise ConfigError("status.listen", "no HTTPS certificate: the page stays off")
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as werkzeug decides
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            sock.listen(64)
            server = _Server(host, int(port), self.app, handler=_Handler, fd=sock.fileno())
            server.use_tls(self.ssl_context)
            return server
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise ConfigError("status.listen", f"cannot listen on {listen}: {reason}") from None
        finally:
            sock.close()  # the server works on its own duplicate of the socket

    def _run(self, server: _Server) -> None:
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="status-page"
        )
        thread.daemon = True
        thread.start()
        self.server, self._thread = server, thread
        log.info(
            "status page on https://%s:%d/ (certificate SHA-256 %s)", *self.address,
            self.fingerprint,
        )  # fmt: skip

    def _shutdown(self, server: _Server) -> None:
        server.shutdown()
        server.server_close()


def component(config: Config) -> StatusPage | None:
    """The daemon's factory (appliance.service.wiring): the page, or None when
    ``status.listen`` is empty."""
    if not config.status.listen:
        return None
    return StatusPage(config)


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s %s", self.address_string(), self.requestline, code)

    def handle(self) -> None:
        # The TLS handshake runs here, in the request's thread with its timeout, not in the
        # accepting thread (where one silent client would hold up everyone).
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            try:
                conn.do_handshake()
            except (OSError, ssl.SSLError) as e:
                log.debug("status page: TLS handshake with %s failed: %s", self.client_address, e)
                return
        super().handle()


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server with a cap on concurrent connections and TLS whose handshake
    happens in the request thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_THREADS)

    def use_tls(self, ctx: ssl.SSLContext) -> None:
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.ssl_context = ctx  # werkzeug then says wsgi.url_scheme = https

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.close()
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


__all__ = ["NOT_SET_UP", "StatusPage", "component"]
