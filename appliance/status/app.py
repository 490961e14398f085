"""The local status page: a daemon component serving a small Flask app on ``status.listen``.

Who reads it: the office owner glancing at it (is all well? if not, what is wrong, in words) and
the installer checking it once (hub link up? LEDs as expected?). It lets no one in without the
password (see `appliance.status.auth`): every page, the JSON API and the metrics need a login,
except /metrics asked from the device itself (loopback), which a local Prometheus agent or an
SSH tunnel can scrape without a browser session.

Threads: werkzeug's server runs in its own thread and a bounded number of request threads; they
never reach into the packet loop. The numbers are the daemon's per-tick stats snapshot, kept
by the component's `tick` (the daemon's main loop) when someone is looking, and a request waits
at most `wait` seconds for a fresh one; if the loop is stuck the page says so instead of hanging.
The LEDs' `ack`/`identify` are reached through the daemon view (they are made for calls from
other threads: the button calls them from gpiozero's).

Routes: ``/`` (status), ``/login``, ``/logout``, ``/ack``, ``/identify`` (POST, CSRF token),
``/api/status``, ``/api/alerts?limit=N``, ``/metrics``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    Response,
    flash,
    get_flashed_messages,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from appliance.component import DaemonView, Snapshot
from appliance.config import Config, ConfigError
from appliance.status import present
from appliance.status.alerts import MAX_LIMIT, recent_alerts
from appliance.status.auth import (
    SESSION_LIFETIME,
    LoginLimiter,
    Sessions,
    check_password,
    csrf_ok,
    csrf_token,
    hash_problem,
    load_secret,
)

log = logging.getLogger(__name__)

NOT_SET_UP = "not set up yet: run watchpost passwd"
PAGE_ALERTS = 20  # alerts on the page
DEFAULT_IDENTIFY_S = 60
MAX_IDENTIFY_S = 600
FRESH_S = 1.5  # a snapshot this young is served as is
INTEREST_S = 30.0  # after a request, keep taking snapshots this long (auto-refresh)
MAX_THREADS = 32  # concurrent connections served; more get a 503 at once
REQUEST_TIMEOUT_S = 15  # a client that stops talking is dropped
MAX_BODY = 16 * 1024

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not "no-referrer": with it Chromium sends "Origin: null" on our own form posts.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


# -- the component --------------------------------------------------------------------------------


class StatusPage:
    """Daemon component: ``start(view)`` serves the page, ``tick`` feeds it numbers,
    ``configure`` takes a new password or address, ``stop`` shuts it down."""

    name = "status page"

    def __init__(self, config: Config, *, wait: float = 2.0, refresh_s: int = 15) -> None:
        self.config = config
        self.wait = wait
        self.refresh_s = refresh_s  # the page reloads itself this often
        self.view: DaemonView | None = None
        problem = hash_problem(config.status.password_hash)
        if problem:
            log.error("status.password_hash: %s; the page asks for setup", problem)
        secret, key_problem = load_secret(config.device.state_dir)
        if key_problem:
            log.warning("status page: %s (logins end when the daemon stops)", key_problem)
        self.sessions = Sessions(secret)
        self.limiter = LoginLimiter()
        self.counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self.app = create_app(self, secret)
        self.server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._snap: Snapshot | None = None
        self._snap_at = -math.inf  # monotonic time of the snapshot
        self._min_at = -math.inf  # snapshots from before this are out of date (an action)
        self._want = False
        self._interest_until = -math.inf

    # -- what the app asks --------------------------------------------------------------------

    @property
    def password_hash(self) -> str:
        value = self.config.status.password_hash
        return "" if hash_problem(value) else value

    @property
    def setup_problem(self) -> str:
        value = self.config.status.password_hash
        if not value:
            return NOT_SET_UP
        problem = hash_problem(value)
        return f"status.password_hash is {problem}: run watchpost passwd" if problem else ""

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
        """After an action: the next page waits for numbers taken after it."""
        with self._cond:
            self._min_at = time.monotonic()

    @property
    def has_leds(self) -> bool:
        return self.view is not None and self.view.has_leds

    # -- component hooks ----------------------------------------------------------------------

    def start(self, view: DaemonView) -> None:
        self.view = view
        self._run(self._bind(self.config.status.listen))

    def tick(self, now: float, snapshot: Snapshot) -> None:
        with self._cond:
            wanted = self._want or time.monotonic() < self._interest_until
            if not wanted:
                return
            self._snap, self._snap_at, self._want = snapshot, time.monotonic(), False
            self._cond.notify_all()

    def configure(self, config: Config) -> None:
        """A new password ends every session (they are bound to the hash); a new address is
        bound before the old one is let go, so a busy one refuses the reload and changes
        nothing; an empty one stops serving."""
        problem = hash_problem(config.status.password_hash)
        if problem:
            raise ConfigError("status.password_hash", problem)
        listen = config.status.listen
        if self.view is not None and listen != self.config.status.listen:
            old = self.server
            if listen:
                self._run(self._bind(listen))
            else:
                self.server = None
                log.info("status page off (status.listen is empty)")
            if old is not None:
                self._shutdown(old)
        self.config = config

    def stop(self) -> None:
        if self.server is not None:
            self._shutdown(self.server)
            self.server = None
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._count_lock:
            counts = dict(self.counts)
        return {
            "status_listen": self.config.status.listen,
            "status_serving": self.server is not None,
            "status_logins": counts.get("logins", 0),
            "status_login_failures": counts.get("login_failures", 0),
            "status_login_throttled": counts.get("login_throttled", 0),
            "status_csrf_refused": counts.get("csrf_refused", 0),
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
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as werkzeug decides
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            sock.listen(64)
            return _Server(host, int(port), self.app, handler=_Handler, fd=sock.fileno())
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
        log.info("status page on http://%s:%d/", *self.address)

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


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server with a cap on concurrent connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_THREADS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            self.shutdown_request(request)
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


# -- the app --------------------------------------------------------------------------------------


class _SessionInterface(SecureCookieSessionInterface):
    """Secure cookies whenever the request came over TLS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def _is_api() -> bool:
    return request.path.startswith("/api/")


def _json_error(status: int, message: str, parameter: str | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    resp = jsonify(body)
    resp.status_code = status
    return resp


def _int_param(name: str, default: int, lo: int, hi: int, source: Any) -> int:
    """A whole number from the query or form, or ValueError naming the parameter."""
    raw = source.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not lo <= int(raw) <= hi:
        raise _BadParam(
            name, f"{name}: expected a whole number from {lo} to {hi}, got {raw[:20]!r}"
        )
    return int(raw)


class _BadParam(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _only_params(*allowed: str) -> None:
    for name in request.args:
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise _BadParam(name, f"{name[:40]}: unknown parameter (known: {known})")


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def create_app(page: StatusPage, secret: bytes) -> Flask:
    """The Flask app; `page` gives it the config, numbers, LEDs and login state."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME="watchpost_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=False,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=SESSION_LIFETIME),
        MAX_CONTENT_LENGTH=MAX_BODY,
        MAX_FORM_MEMORY_SIZE=MAX_BODY,
        SEND_FILE_MAX_AGE_DEFAULT=300,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.session_interface = _SessionInterface()

    def logged_in() -> bool:
        return page.sessions.valid(session, page.password_hash)

    def setup_response() -> Response:
        problem = page.setup_problem
        if _is_api() or request.path == "/metrics":
            return _json_error(503, problem)
        resp = Response(render_template("setup.html", problem=problem), status=503)
        return resp

    def view(fn: Callable[..., Any]) -> Callable[..., Any]:
        """A data page or API call: set up, logged in."""

        @wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            if page.setup_problem:
                return setup_response()
            if not logged_in():
                if _is_api():
                    return _json_error(401, "login required")
                return redirect(url_for("login"), code=303)
            try:
                return fn(*args, **kwargs)
            except _BadParam as e:
                if _is_api():
                    return _json_error(400, str(e), e.parameter)
                return error_page(400, str(e))

        return inner

    def same_origin() -> bool:
        """What the browser says of where a form came from, when it says it, must be this page
        (defence in depth: the CSRF token is the check that counts). Another port of the same
        address is "same-site" for the browser, so SameSite cookies alone do not stop it."""
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            return True
        return urlsplit(origin).netloc == request.host

    def action(fn: Callable[..., Any]) -> Callable[..., Any]:
        """A state-changing POST: set up, a valid CSRF token from the same origin, logged in."""

        @wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            if page.setup_problem:
                return setup_response()
            token = request.form.get("csrf") or request.headers.get("X-CSRF-Token")
            if not same_origin() or not csrf_ok(session, token):
                page.count("csrf_refused")
                return error_page(
                    403,
                    "This form was out of date or did not come from this page. "
                    "Reload the page and try again.",
                )
            if not logged_in() and fn.__name__ != "login":
                return redirect(url_for("login"), code=303)
            try:
                return fn(*args, **kwargs)
            except _BadParam as e:
                return error_page(400, str(e))

        return inner

    def error_page(status: int, message: str) -> Response:
        if _is_api():
            return _json_error(status, message)
        return Response(render_template("error.html", status=status, message=message), status)

    @app.context_processor
    def _context() -> dict[str, Any]:
        return {"device": page.config.device, "logged_in": logged_in}

    @app.after_request
    def _headers(resp: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(key, value)
        if request.endpoint != "static":
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        return error_page(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def _crash(e: Exception) -> Response:
        log.exception("status page: %s %s failed", request.method, request.path)
        return error_page(500, "Something went wrong on this page; inspection is not affected.")

    # -- pages ----------------------------------------------------------------------------------

    @app.get("/")
    @view
    def index() -> Any:
        _only_params()
        stats, age = page.snapshot()
        now = time.time()
        status = present.overview(stats, age, now)
        alerts, alerts_problem = _alerts(page, PAGE_ALERTS, now)
        return render_template(
            "status.html",
            s=status,
            counters=present.COUNTERS,
            alerts=alerts,
            alerts_problem=alerts_problem,
            has_leds=page.has_leds,
            csrf=csrf_token(session),
            messages=get_flashed_messages(),
            max_identify=MAX_IDENTIFY_S,
            default_identify=DEFAULT_IDENTIFY_S,
            refresh_s=page.refresh_s,
        )

    @app.get("/login")
    def login_form() -> Any:
        if page.setup_problem:
            return setup_response()
        if logged_in():
            return redirect(url_for("index"), code=303)
        return render_template("login.html", csrf=csrf_token(session), error="")

    @app.post("/login")
    @action
    def login() -> Any:
        addr = request.remote_addr
        wait = page.limiter.retry_after(addr)
        if wait:
            page.count("login_throttled")
            minutes = max(1, math.ceil(wait / 60))
            resp = Response(
                render_template(
                    "login.html",
                    csrf=csrf_token(session),
                    error=f"Too many wrong passwords: try again in {minutes} min.",
                ),
                status=429,
            )
            resp.headers["Retry-After"] = str(math.ceil(wait))
            return resp
        password = request.form.get("password", "")
        if check_password(page.password_hash, password):
            page.limiter.succeeded(addr)
            page.sessions.login(session, page.password_hash)
            session.permanent = True
            page.count("logins")
            log.info("status page: login from %s", addr)
            return redirect(url_for("index"), code=303)
        page.limiter.failed(addr)
        page.count("login_failures")
        log.warning("status page: wrong password from %s", addr)
        return Response(
            render_template("login.html", csrf=csrf_token(session), error="Wrong password."),
            status=401,
        )

    @app.post("/logout")
    @action
    def logout() -> Any:
        page.sessions.logout(session)
        return redirect(url_for("login"), code=303)

    @app.post("/ack")
    @action
    def ack() -> Any:
        if page.view is None or not page.has_leds:
            flash("This unit has no LEDs running; nothing to acknowledge.")
        else:
            n = page.view.ack_alerts(None)
            page.invalidate()
            flash(
                f"Acknowledged {n} alert{'s' if n != 1 else ''}: the red light stops blinking."
                if n
                else "No alerts were waiting."
            )
        return redirect(url_for("index"), code=303)

    @app.post("/identify")
    @action
    def identify() -> Any:
        seconds = _int_param("seconds", DEFAULT_IDENTIFY_S, 1, MAX_IDENTIFY_S, request.form)
        if page.view is None or not page.has_leds:
            flash("This unit has no LEDs running to blink.")
        else:
            page.view.identify(seconds)
            page.invalidate()
            flash(f"All three lights blink fast for {seconds} s.")
        return redirect(url_for("index"), code=303)

    # -- API ------------------------------------------------------------------------------------

    @app.get("/api/status")
    @view
    def api_status() -> Any:
        _only_params()
        stats, age = page.snapshot()
        return jsonify(present.overview(stats, age, time.time()))

    @app.get("/api/alerts")
    @view
    def api_alerts() -> Any:
        _only_params("limit")
        limit = _int_param("limit", PAGE_ALERTS, 1, MAX_LIMIT, request.args)
        alerts, problem = _alerts(page, limit, time.time())
        if problem:
            return _json_error(500, problem)
        return jsonify({"alerts": alerts, "limit": limit})

    @app.get("/metrics")
    def metrics() -> Any:
        if page.setup_problem:
            return setup_response()
        if not (_is_loopback(request.remote_addr) or logged_in()):
            return Response(
                "metrics: log in first, or scrape from the device itself (loopback)\n",
                status=401,
                mimetype="text/plain",
            )
        stats, age = page.snapshot()
        return Response(
            present.metrics(stats, age), mimetype="text/plain; version=0.0.4; charset=utf-8"
        )

    return app


def _alerts(page: StatusPage, limit: int, now: float) -> tuple[list[dict[str, Any]], str]:
    path = page.config.log.eve
    try:
        return recent_alerts(path, limit, page.config.inline.home_nets, now), ""
    except OSError as e:
        log.warning("status page: cannot read %s: %s", path, e)
        return [], f"cannot read the alert log {path}: {e.strerror or e}"
