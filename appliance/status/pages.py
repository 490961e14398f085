"""The status page's Flask app: pages, actions, the JSON API and /metrics.

Pages (GET, login): ``/`` status, ``/alerts`` (filters: severity, detector, device, acked,
period; paging), ``/alerts/<id>`` (what happened, what to do, timeline), ``/devices``,
``/devices/<ip>``, ``/charts?span=24h|7d``, ``/report`` (the week, printable), ``/settings``
(read-only, no secrets), ``/mode`` (what block mode does, before switching).
Actions (POST, login + CSRF + same origin): ``/alerts/ack``, ``/devices/<ip>/name``, ``/mode``,
``/ack`` (LEDs), ``/identify``, ``/logout``; ``/login`` and ``/setup`` (CSRF, no login).
API: ``/api/status``, ``/api/alerts``, ``/metrics`` (loopback without login).

Every request must name the device in its Host header (an IP address, the device id, the
machine's host name, ``localhost``): a web page elsewhere cannot rebind its own name to the
device and read it. Unknown or malformed query parameters get 400 with the reason.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import TYPE_CHECKING, Any
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
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException

from appliance.status import charts, present, setup
from appliance.status.alerts import MAX_LIMIT, ago
from appliance.status.auth import (
    PASSWORD_RULES,
    SESSION_LIFETIME,
    check_password,
    csrf_ok,
    csrf_token,
    hash_password,
    password_problem,
)
from appliance.status.explain import explain
from appliance.status.index import PERIODS, Filters

if TYPE_CHECKING:
    from appliance.status.app import StatusPage

log = logging.getLogger(__name__)

PAGE_ALERTS = 8  # recent alerts on the status page
PER_PAGE = 25
MAX_PAGE = 10_000
DEFAULT_IDENTIFY_S = 60
MAX_IDENTIFY_S = 600
MAX_BODY = 16 * 1024
MAX_ACK_IDS = 200
SPANS = {"24h": (86400.0, 300.0, 3600.0), "7d": (7 * 86400.0, 3600.0, 6 * 3600.0)}

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
    "Strict-Transport-Security": "max-age=31536000",
}

BLOCK_DOES = (
    "Connections to addresses, names and web addresses on the threat lists are stopped by the "
    "device, and the addresses a listed name points to are blocked for a while.",
    "Each block is reported to the regional centre like any other alert.",
)
BLOCK_DOES_NOT = (
    "It does not stop attacks that are not on a list (scans, password guessing, exposed "
    "services): those are still only reported.",
    "It never blocks devices in your office, your router, your DNS servers or the regional hub.",
    "It is not a firewall or an antivirus: keep those.",
    "If the device fails, traffic keeps flowing without inspection: the office stays online.",
)


class BadParam(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _is_api() -> bool:
    return request.path.startswith("/api/")


def _json_error(status: int, message: str, parameter: str | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    resp = jsonify(body)
    resp.status_code = status
    return resp


def int_param(name: str, default: int, lo: int, hi: int, source: Any) -> int:
    """A whole number from the query or form, or BadParam naming the parameter."""
    raw = source.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not lo <= int(raw) <= hi:
        raise BadParam(name, f"{name}: expected a whole number from {lo} to {hi}, got {raw[:20]!r}")
    return int(raw)


def choice_param(name: str, allowed: tuple[str, ...], default: str, source: Any) -> str:
    raw = source.get(name)
    if raw is None or raw == "":
        return default
    if raw not in allowed:
        raise BadParam(name, f"{name}: expected one of {', '.join(allowed)}, got {raw[:20]!r}")
    return str(raw)


def address_param(name: str, source: Any) -> str:
    raw = source.get(name)
    if raw is None or raw == "":
        return ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise BadParam(name, f"{name}: expected an IP address, got {raw[:40]!r}") from None


def only_params(*allowed: str) -> None:
    for name in request.args:
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise BadParam(name, f"{name[:40]}: unknown parameter (known: {known})")
        if len(request.args.getlist(name)) > 1:
            raise BadParam(name, f"{name[:40]}: given more than once")


def is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def host_allowed(host: str, names: set[str]) -> bool:
    """An IP literal (rebinding needs a name the attacker controls) or one of our names."""
    h = host.strip().lower()
    if h.startswith("["):
        h = h[1 : h.find("]")] if "]" in h else ""
    elif h.count(":") == 1:
        h = h.rsplit(":", 1)[0]
    if not h:
        return False
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        pass
    return h.rstrip(".") in names


def _filters(source: Any, detectors: list[str]) -> Filters:
    detector = source.get("detector") or ""
    if detector and not (detector.replace("-", "").isalnum() and len(detector) <= 40):
        raise BadParam("detector", f"detector: not a detector name: {detector[:40]!r}")
    return Filters(
        severity=choice_param("severity", ("high", "medium", "low"), "", source),
        detector=detector,
        device=address_param("device", source),
        acked=choice_param("acked", ("yes", "no"), "", source),
        period=choice_param("period", tuple(PERIODS), "7d", source),
    )


FILTER_PARAMS = ("severity", "detector", "device", "acked", "period")


def create_app(page: StatusPage, secret: bytes) -> Flask:
    """The Flask app; `page` gives it the config, numbers, LEDs, index and login state."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME="watchpost_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=True,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=SESSION_LIFETIME),
        MAX_CONTENT_LENGTH=MAX_BODY,
        MAX_FORM_MEMORY_SIZE=MAX_BODY,
        SEND_FILE_MAX_AGE_DEFAULT=300,
        TEMPLATES_AUTO_RELOAD=False,
    )

    def names() -> set[str]:
        device = page.config.device.id.lower()
        host = socket.gethostname().lower()
        return {"localhost", device, f"{device}.local", host, f"{host}.local"}

    def logged_in() -> bool:
        return page.sessions.valid(session, page.password_hash)

    def device_label(ip: str) -> Markup:
        """Name first, address second, wherever an office address appears."""
        if not ip:
            return Markup('<span class="muted">unknown device</span>')
        name = page.inventory.store.name(ip)
        if name:
            return Markup(
                f'<span class="dev"><strong>{escape(name)}</strong> '
                f'<span class="addr">({escape(ip)})</span></span>'
            )
        return Markup(f'<span class="dev"><strong>{escape(ip)}</strong></span>')

    app.jinja_env.filters["device"] = device_label
    app.jinja_env.filters["clock"] = lambda ts: present.clock(float(ts)) if ts else "never"
    app.jinja_env.filters["ago"] = lambda ts: ago(time.time() - float(ts)) if ts else ""

    def setup_response() -> Response:
        if page.needs_setup and not _is_api() and request.path != "/metrics":
            return redirect(url_for("setup_form"), code=303)  # type: ignore[return-value]
        problem = "not set up yet: open the page and enter the setup code" if page.needs_setup \
            else page.setup_problem  # fmt: skip
        if _is_api() or request.path == "/metrics":
            return _json_error(503, problem)
        return Response(render_template("setup_needed.html", problem=problem), status=503)

    def error_page(status: int, message: str) -> Response:
        if _is_api():
            return _json_error(status, message)
        return Response(render_template("error.html", status=status, message=message), status)

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
            except BadParam as e:
                if _is_api():
                    return _json_error(400, str(e), e.parameter)
                return error_page(400, str(e))

        return inner

    def same_origin() -> bool:
        """What the browser says of where a form came from, when it says it, must be this page
        (defence in depth: the CSRF token is the check that counts)."""
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            return True
        return urlsplit(origin).netloc == request.host

    def action(*, login: bool = True, setup_ok: bool = False) -> Callable[..., Any]:
        """A state-changing POST: a valid CSRF token from the same origin, and (unless `login`
        is False) logged in."""

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            @wraps(fn)
            def inner(*args: Any, **kwargs: Any) -> Any:
                if page.setup_problem and not setup_ok:
                    return setup_response()
                token = request.form.get("csrf") or request.headers.get("X-CSRF-Token")
                if not same_origin() or not csrf_ok(session, token):
                    page.count("csrf_refused")
                    return error_page(
                        403,
                        "This form was out of date or did not come from this page. "
                        "Reload the page and try again.",
                    )
                if login and not logged_in():
                    return redirect(url_for("login"), code=303)
                try:
                    return fn(*args, **kwargs)
                except BadParam as e:
                    return error_page(400, str(e))

            return inner

        return wrap

    @app.context_processor
    def _context() -> dict[str, Any]:
        # Only a logged-in session gets a token here: making one for an anonymous request (a
        # cross-site post arrives without cookies) would set a new cookie over the real one.
        return {
            "csrf": csrf_token(session) if logged_in() else "",
            "device": page.config.device,
            "logged_in": logged_in,
            "fingerprint": page.fingerprint,
            "nav": request.endpoint,
        }

    @app.before_request
    def _host_check() -> Any:
        if not host_allowed(request.host, names()):
            page.count("host_refused")
            return Response(
                "This page answers only to the device's own name or address (Host header "
                "refused).\n",
                status=400,
                mimetype="text/plain",
            )
        return None

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

    # -- first run ------------------------------------------------------------------------------

    @app.get("/setup")
    def setup_form() -> Any:
        only_params()
        if not page.needs_setup:
            return redirect(url_for("login"), code=303)
        return render_template(
            "setup.html", csrf=csrf_token(session), error="", rules=PASSWORD_RULES
        )

    def admit(
        addr: str | None, error: Callable[[str, int], Response], throttled: str, busy: str
    ) -> Response | None:
        """The guessing guard of every secret check (setup code, password): the client's
        back-off, counted before any hashing, then one check at a time. None: go on (the caller
        then leaves `page.gate`); else the 429 answer, `throttled` with ``{s}`` the seconds."""
        wait = page.limiter.begin(addr)
        if wait:
            page.count("login_throttled")
            resp = error(throttled.format(s=math.ceil(wait)), 429)
            resp.headers["Retry-After"] = str(math.ceil(wait))
            return resp
        if not page.gate.try_enter():
            page.count("login_busy")
            return error(busy, 429)
        return None

    def setup_error(message: str, status: int) -> Response:
        return Response(
            render_template(
                "setup.html", csrf=csrf_token(session), error=message, rules=PASSWORD_RULES
            ),
            status=status,
        )

    @app.post("/setup")
    @action(login=False, setup_ok=True)
    def setup_submit() -> Any:
        if not page.needs_setup:
            return redirect(url_for("login"), code=303)
        code = request.form.get("code", "")[:100]
        password = request.form.get("password", "")
        again = request.form.get("again", "")
        problem = password_problem(password)
        if not problem and password != again:
            problem = "the two passwords are not the same"
        if not problem and setup.normalize(password) == setup.normalize(code):
            problem = "the password must not be the setup code"
        addr = request.remote_addr
        refused = admit(
            addr, setup_error, "Too many tries: wait {s} s and try again.",
            "Another attempt is being checked: try again in a moment.",
        )  # fmt: skip
        if refused is not None:
            return refused
        try:
            good = setup.check_code(page.state_dir, code)
            value = hash_password(password) if good and not problem else ""
        finally:
            page.gate.leave()
        if not good:
            page.count("login_failures")
            log.warning("status page: wrong setup code from %s", addr)
            return setup_error("That setup code is not right (see the installer's sheet).", 401)
        if problem:
            page.limiter.succeeded(addr)
            return setup_error(problem[0].upper() + problem[1:] + ".", 400)
        setup.save_password_hash(page.state_dir, value)
        page.limiter.succeeded(addr)
        page.sessions.login(session, page.password_hash)
        session.permanent = True
        page.count("logins")
        log.warning("status page: password set on the page from %s; setup code spent", addr)
        flash("Password set. The setup code is used up; keep the password somewhere safe.")
        return redirect(url_for("index"), code=303)

    # -- login ----------------------------------------------------------------------------------

    @app.get("/login")
    def login_form() -> Any:
        only_params()
        if page.setup_problem:
            return setup_response()
        if logged_in():
            return redirect(url_for("index"), code=303)
        return render_template("login.html", csrf=csrf_token(session), error="")

    def login_error(message: str, status: int) -> Response:
        return Response(
            render_template("login.html", csrf=csrf_token(session), error=message), status=status
        )

    @app.post("/login")
    @action(login=False)
    def login() -> Any:
        addr = request.remote_addr
        refused = admit(
            addr, login_error, "Too many wrong passwords: try again in {s} s.",
            "Another login is being checked: try again in a moment.",
        )  # fmt: skip
        if refused is not None:
            return refused
        try:
            password_hash = page.password_hash
            good = check_password(password_hash, request.form.get("password", ""))
        finally:
            page.gate.leave()
        if good:
            page.limiter.succeeded(addr)
            page.sessions.login(session, password_hash)
            session.permanent = True
            page.count("logins")
            log.info("status page: login from %s", addr)
            return redirect(url_for("index"), code=303)
        page.count("login_failures")
        log.warning("status page: wrong password from %s", addr)
        return login_error("Wrong password.", 401)

    @app.post("/logout")
    @action()
    def logout() -> Any:
        page.sessions.logout(session)
        return redirect(url_for("login"), code=303)

    # -- pages ----------------------------------------------------------------------------------

    @app.get("/")
    @view
    def index() -> Any:
        only_params()
        stats, age = page.snapshot()
        status = present.overview(stats, age, time.time())
        page.refresh_index()
        recent, _ = page.index.search(Filters(period="all"), 1, PAGE_ALERTS)
        return render_template(
            "status.html",
            s=status,
            counters=present.COUNTERS,
            alerts=recent,
            unacked_page=page.index.unacked(),
            has_leds=page.has_leds,
            csrf=csrf_token(session),
            messages=get_flashed_messages(),
            default_identify=DEFAULT_IDENTIFY_S,
            refresh_s=page.refresh_s,
            guard_problem=page.guard_problem,
        )

    @app.get("/alerts")
    @view
    def alerts() -> Any:
        only_params(*FILTER_PARAMS, "page")
        page.refresh_index()
        detectors = page.index.detectors()
        f = _filters(request.args, detectors)
        n = int_param("page", 1, 1, MAX_PAGE, request.args)
        rows, total = page.index.search(f, n, PER_PAGE)
        pages = max(1, math.ceil(total / PER_PAGE))
        devices = sorted(page.index.devices())
        query = {k: v for k, v in vars(f).items() if v and not (k == "period" and v == "7d")}
        return render_template(
            "alerts.html",
            alerts=rows,
            total=total,
            f=f,
            page_no=n,
            pages=pages,
            detectors=detectors,
            devices=devices,
            periods=tuple(PERIODS),
            query=query,
            csrf=csrf_token(session),
            messages=get_flashed_messages(),
        )

    @app.get("/alerts/<int:alert_id>")
    @view
    def alert(alert_id: int) -> Any:
        only_params()
        page.refresh_index()
        a = page.index.get(alert_id)
        if a is None:
            return error_page(404, "No such alert (it may be older than the index keeps).")
        return render_template(
            "alert.html",
            a=a,
            text=explain(int(a["sid"] or 0)),
            csrf=csrf_token(session),
            messages=get_flashed_messages(),
        )

    @app.post("/alerts/ack")
    @action()
    def alerts_ack() -> Any:
        form = request.form
        back = form.get("back", "")
        if form.get("all") == "1":
            f = _filters(form, page.index.detectors())
            n = page.index.ack_matching(f)
        else:
            raw = form.getlist("id")
            if not raw or len(raw) > MAX_ACK_IDS:
                raise BadParam("id", f"id: choose 1 to {MAX_ACK_IDS} alerts to acknowledge")
            ids = []
            for r in raw:
                if not (r.isascii() and r.isdigit() and len(r) <= 12):
                    raise BadParam("id", f"id: not an alert number: {r[:20]!r}")
                ids.append(int(r))
            n = page.index.ack(ids)
        if page.index.unacked() == 0:
            page.ack_leds()  # nothing left to look at: the red light stops blinking
        flash(f"Acknowledged {n} alert{'s' if n != 1 else ''}." if n else "Nothing to acknowledge.")
        if back.startswith("/alerts") and "//" not in back and "\\" not in back:
            return redirect(back, code=303)
        return redirect(url_for("alerts"), code=303)

    @app.get("/devices")
    @view
    def devices() -> Any:
        only_params()
        page.refresh_index()
        alert_counts = page.index.devices()
        known = page.inventory.store.all()
        seen = {d["ip"] for d in known}
        for ip in alert_counts:  # devices only alerts know of
            if ip not in seen and page.inventory.is_office(ip):
                known.append({"ip": ip, "shown": "", "vendor": "", "mac": "", "first": None,
                              "last": None, "learnt_from": ""})  # fmt: skip
        return render_template("devices.html", devices=known, alerts=alert_counts)

    @app.get("/devices/<ip>")
    @view
    def device(ip: str) -> Any:
        only_params()
        ip = address_param("ip", {"ip": ip})
        page.refresh_index()
        d = page.inventory.store.get(ip)
        rows, total = page.index.search(Filters(device=ip, period="all"), 1, 50)
        if d is None and not total:
            return error_page(404, "No device with that address has been seen.")
        return render_template(
            "device.html",
            d=d,
            ip=ip,
            alerts=rows,
            total=total,
            csrf=csrf_token(session),
            messages=get_flashed_messages(),
        )

    @app.post("/devices/<ip>/name")
    @action()
    def device_name(ip: str) -> Any:
        ip = address_param("ip", {"ip": ip})
        name = request.form.get("name", "")
        if len(name) > 40:
            raise BadParam("name", "name: at most 40 characters")
        if page.inventory.store.get(ip) is None:
            page.inventory.store.learn(ip, source="")
        page.inventory.store.rename(ip, name)
        flash(f"Renamed {ip} to {name.strip()}." if name.strip() else "Name reset.")
        return redirect(url_for("device", ip=ip), code=303)

    @app.get("/charts")
    @view
    def charts_page() -> Any:
        only_params("span")
        span_key = choice_param("span", tuple(SPANS), "24h", request.args)
        span, step, alert_step = SPANS[span_key]
        page.refresh_index()
        now = time.time()
        packets = page.series.rates("packets", span, step, now)
        judged = page.series.rates("judged", span, step, now)
        start = (now - span) // alert_step * alert_step
        buckets = page.index.severity_buckets(start, alert_step)
        sev: list[Any] = []
        t = start
        while t <= now:
            sev.append((t, buckets.get(int(t), {})))
            t += alert_step
        talkers = [(page.label(ip), n) for ip, n in page.series.top_talkers(span, 8, now)]
        return render_template(
            "charts.html",
            span=span_key,
            spans=tuple(SPANS),
            packets=charts.line(packets, "Packets per second", "packets/s"),
            judged=charts.line(judged, "Connections judged per second", "judged/s"),
            severity=charts.stacked(sev, "Alerts by severity", alert_step),
            talkers=charts.bars(talkers, "Connections to the internet by device", "connections"),
        )

    @app.get("/report")
    @view
    def report() -> Any:
        only_params("weeks_ago")
        weeks_ago = int_param("weeks_ago", 0, 0, 4, request.args)
        page.refresh_index()
        until = time.time() - weeks_ago * 7 * 86400
        since = until - 7 * 86400
        s = page.index.summary(since, until)
        top_sigs = []
        for item in s["top_signatures"]:
            sid_text, _, name = item["signature"].partition(" ")
            sid = int(sid_text) if sid_text.isdigit() else 0
            top_sigs.append({**item, "name": name, "todo": explain(sid)["todo"]})
        return render_template(
            "report.html", s=s, since=since, until=until, top_sigs=top_sigs,
            weeks_ago=weeks_ago,
        )  # fmt: skip

    @app.get("/settings")
    @view
    def settings() -> Any:
        only_params()
        cfg = page.config
        intel = page.view.intel_status() if page.view is not None else None
        detectors = {
            name: {k: v for k, v in opts.items() if not _secret(k)}
            for name, opts in sorted((getattr(cfg, "detect", None) or {}).items())
        }
        rows = [
            ("Mode", present.MODE_TEXT.get(cfg.inline.mode, cfg.inline.mode)),
            ("Device", f"{cfg.device.id} at site {cfg.device.site}"),
            ("Office networks", ", ".join(cfg.inline.home_nets)),
            ("Never blocked", ", ".join(cfg.inline.never_block) or "none"),
            ("Regional hub", f"{cfg.hub.host}:{cfg.hub.port}" if cfg.hub.enabled else "none"),
            ("Threat list version", (intel.version if intel else "") or "none loaded"),
            ("Threat list entries", f"{intel.indicators:,}" if intel else "0"),
            ("Threat list sources", ", ".join(intel.paths if intel else cfg.intel.paths)
             or "none"),
            ("Privacy", "office addresses replaced by tokens before they leave the device"
             if cfg.privacy.pseudonymize else "office addresses are sent to the hub"),
            ("Page reachable from", "the office port and the device itself"
             + (f", and {', '.join(cfg.status.allow_from)}" if cfg.status.allow_from else "")),
            ("Page certificate (SHA-256)", page.fingerprint),
        ]  # fmt: skip
        return render_template("settings.html", rows=rows, detectors=detectors)

    @app.get("/mode")
    @view
    def mode_form() -> Any:
        only_params("to")
        to = choice_param("to", ("monitor", "block"), "", request.args)
        current = page.config.inline.mode
        to = to or ("block" if current == "monitor" else "monitor")
        return render_template(
            "mode.html",
            current=current,
            to=to,
            does=BLOCK_DOES,
            does_not=BLOCK_DOES_NOT,
            can=page.view is not None,
            csrf=csrf_token(session),
        )

    @app.post("/mode")
    @action()
    def mode_submit() -> Any:
        to = choice_param("mode", ("monitor", "block"), "", request.form)
        if not to:
            raise BadParam("mode", "mode: expected monitor or block")
        if request.form.get("confirm") != "yes":
            raise BadParam("confirm", "confirm: tick the box to say you have read what it does")
        done = page.request_mode(to)
        if not done.wait(page.wait + 3.0):
            flash("The watch service did not answer; the mode is unchanged for now.")
        elif page.mode_result:
            flash(f"Mode not changed: {page.mode_result}.")
        else:
            flash(f"Now in {to} mode.")
        return redirect(url_for("index"), code=303)

    @app.post("/ack")
    @action()
    def ack() -> Any:
        n_page = page.index.ack_matching(Filters(period="all"))
        if not page.has_leds:
            flash(f"Acknowledged {n_page} alert{'s' if n_page != 1 else ''}.")
        else:
            n = page.ack_leds()
            flash(
                f"Acknowledged {n} alert{'s' if n != 1 else ''}: the red light stops blinking."
                if n or n_page
                else "No alerts were waiting."
            )
        return redirect(url_for("index"), code=303)

    @app.post("/identify")
    @action()
    def identify() -> Any:
        seconds = int_param("seconds", DEFAULT_IDENTIFY_S, 1, MAX_IDENTIFY_S, request.form)
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
        only_params()
        stats, age = page.snapshot()
        return jsonify(present.overview(stats, age, time.time()))

    @app.get("/api/alerts")
    @view
    def api_alerts() -> Any:
        only_params(*FILTER_PARAMS, "page", "limit")
        page.refresh_index()
        f = _filters(request.args, page.index.detectors())
        limit = int_param("limit", PER_PAGE, 1, MAX_LIMIT, request.args)
        n = int_param("page", 1, 1, MAX_PAGE, request.args)
        rows, total = page.index.search(f, n, limit)
        for r in rows:
            r["device_name"] = page.inventory.store.name(r["office"])
        return jsonify({"alerts": rows, "total": total, "page": n, "limit": limit})

    @app.get("/favicon.ico")
    def favicon() -> Any:
        return app.send_static_file("favicon.svg")

    @app.get("/metrics")
    def metrics() -> Any:
        # The device itself (loopback: the updater's health check, a local scraper) reads its
        # numbers also before anyone set the page up (a broken hash in the config still stops
        # everything); anyone else needs a login.
        early = not page.config.status.password_hash and is_loopback(request.remote_addr)
        if page.setup_problem and not early:
            return setup_response()
        if not (is_loopback(request.remote_addr) or logged_in()):
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


def _secret(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in ("key", "secret", "password", "token", "hash"))
