"""The analyst console: a Flask app over the hub's store.

Pages: fleet (device states, silent devices highlighted), alert search (office, device,
signature, source, category, severity, time; paged; a bad parameter is a 400 naming it), one
device, correlation suggestions (operators approve or reject), report downloads. Login with
scrypt-hashed accounts (hub/console/users.py); every POST carries the session's CSRF token and
must come from the same origin; analysts read, operators may also decide indicators. Every asset
is served from the package (no CDN). `serve` runs it over TLS with a self-signed certificate.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import (
    Flask,
    abort,
    g,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    url_for,
)

from hub import correlate
from hub.console import queries, users
from hub.store import Store

SILENT_AFTER = 900.0
PER_PAGE = 50


class BadParam(Exception):
    pass


def _int(name: str, lo: int, hi: int) -> int | None:
    v = request.args.get(name, "").strip()
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        raise BadParam(f"{name}: expected a whole number, got {v[:40]!r}") from None
    if not lo <= n <= hi:
        raise BadParam(f"{name}: expected {lo}..{hi}, got {n}")
    return n


def _time(name: str) -> float | None:
    v = request.args.get(name, "").strip()
    if not v:
        return None
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        raise BadParam(
            f"{name}: expected a date or time (2027-01-13 or 2027-01-13T09:00)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _text(name: str, limit: int = 64) -> str | None:
    v = request.args.get(name, "").strip()
    if len(v) > limit:
        raise BadParam(f"{name}: longer than {limit} characters")
    return v or None


def parse_filter() -> tuple[queries.AlertFilter, int, int]:
    known = {"office", "device", "signature", "source", "category", "severity", "since",
             "until", "page", "per"}  # fmt: skip
    unknown = sorted(set(request.args) - known)
    if unknown:
        raise BadParam(f"unknown parameter {unknown[0]!r}")
    src = _text("source")
    if src is not None:
        try:
            src = str(ipaddress.ip_address(src))
        except ValueError:
            raise BadParam(f"source: {src!r} is not an IP address") from None
    f = queries.AlertFilter(
        site=_text("office"),
        device=_text("device"),
        signature_id=_int("signature", 1, 2**32),
        src_ip=src,
        category=_text("category"),
        max_severity=_int("severity", 1, 3),
        since=_time("since"),
        until=_time("until"),
    )
    if f.since is not None and f.until is not None and f.until <= f.since:
        raise BadParam("until: must be after since")
    page = _int("page", 1, 100000) or 1
    per = _int("per", 1, 200) or PER_PAGE
    return f, page, per


def create_app(
    store: Store,
    users_path: Path,
    reports_dir: Path | None = None,
    *,
    secret: bytes | None = None,
    silent_after: float = SILENT_AFTER,
    ttl: float = 7 * 86400.0,
    secure_cookies: bool = True,
) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret or secrets.token_bytes(32),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure_cookies,
        PERMANENT_SESSION_LIFETIME=8 * 3600,
        MAX_CONTENT_LENGTH=64 * 1024,
    )

    @app.template_filter("when")
    def when(ts: float | None) -> str:
        if ts is None:
            return "-"
        return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        return str(session["csrf"])

    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.before_request
    def guard() -> Any:
        g.user, g.role = session.get("user"), session.get("role")
        if request.method == "POST":
            origin = request.headers.get("Origin") or request.headers.get("Referer")
            if origin and urlsplit(origin).netloc != request.host:
                abort(403, "cross-origin request refused")
            sent = request.form.get("csrf", "")
            if not hmac.compare_digest(sent.encode(), str(session.get("csrf", "")).encode()):
                abort(403, "missing or wrong CSRF token (reload the page)")
        if request.endpoint in ("login", "static") or g.user:
            return None
        return redirect(url_for("login", next=request.full_path if request.args else request.path))

    @app.after_request
    def headers(resp: Any) -> Any:
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def operator_only(fn: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(fn)
        def inner(*a: Any, **kw: Any) -> Any:
            if g.role != "operator":
                abort(403, "operators only")
            return fn(*a, **kw)

        return inner

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    def error(e: Any) -> Any:
        return render_template("error.html", code=e.code, reason=e.description), e.code

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        error = ""
        if request.method == "POST":
            name = request.form.get("user", "")[:64]
            role = users.check(users.load(users_path), name, request.form.get("password", ""))
            if role:
                session.clear()
                session.update(user=name, role=role, csrf=secrets.token_urlsafe(32))
                session.permanent = True
                nxt = request.args.get("next", "/")
                return redirect(nxt if nxt.startswith("/") and not nxt.startswith("//") else "/")
            error = "Wrong name or password."
        return render_template("login.html", error=error), 401 if error else 200

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    def fleet() -> Any:
        now = time.time()
        devices = store.devices()
        for d in devices:
            last = d.get("last_seen") or 0
            d["silent"] = bool(d.get("silent_since")) or now - last > silent_after
            d["lost"] = d.get("state") in ("lost", "disconnected")
        open_alerts = store.hub_alerts(open_only=True)
        silent = sum(1 for d in devices if d["silent"] or d["lost"])
        return render_template("fleet.html", devices=devices, silent=silent, hub_alerts=open_alerts)

    @app.get("/alerts")
    def alerts() -> Any:
        try:
            f, page, per = parse_filter()
        except BadParam as e:
            abort(400, str(e))
        rows, total = queries.search_alerts(store, f, limit=per, offset=(page - 1) * per)
        args = {k: v for k, v in request.args.items() if v and k != "page"}
        pages = max(1, (total + per - 1) // per)

        def link(p: int) -> str:
            return url_for("alerts") + "?" + urlencode({**args, "page": p})

        return render_template(
            "alerts.html", rows=rows, total=total, page=page, pages=pages, link=link,
            args=request.args, sites=queries.sites(store), sigs=queries.signatures(store),
        )  # fmt: skip

    @app.get("/devices/<name>")
    def device(name: str) -> Any:
        d = queries.device(store, name)
        if d is None:
            abort(404, f"no device {name!r}")
        recent, total = queries.search_alerts(store, queries.AlertFilter(device=name), limit=20)
        samples = store.telemetry(name)
        return render_template(
            "device.html", d=d, recent=recent, total=total, gaps=store.gaps(name),
            telemetry=samples[-1] if samples else None,
        )  # fmt: skip

    @app.get("/indicators")
    def indicators() -> Any:
        return render_template("indicators.html", items=correlate.indicators(store))

    @app.post("/indicators/<path:ident>/<action>")
    @operator_only
    def decide(ident: str, action: str) -> Any:
        if action not in ("approve", "reject"):
            abort(404, f"no action {action!r}")
        try:
            correlate.decide(store, ident, action == "approve", g.user, ttl)
        except correlate.CorrelateError as e:
            abort(400, str(e))
        return redirect(url_for("indicators"))

    def report_files() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if reports_dir is None or not reports_dir.is_dir():
            return out
        for f in sorted(reports_dir.glob("*/*")):
            if f.suffix in (".pdf", ".html") and f.is_file():
                out.append({"site": f.parent.name, "name": f.name, "size": f.stat().st_size})
        return out

    @app.get("/reports")
    def reports() -> Any:
        return render_template("reports.html", files=report_files())

    @app.get("/reports/<site>/<name>")
    def report_file(site: str, name: str) -> Any:
        if reports_dir is None or not any(
            f["site"] == site and f["name"] == name for f in report_files()
        ):
            abort(404, "no such report")
        return send_from_directory(reports_dir / site, name, as_attachment=name.endswith(".pdf"))

    return app


def serve(app: Flask, host: str, port: int, state: Path) -> None:
    """Serve `app` over TLS (certificate made in `state` at first start)."""
    from werkzeug.serving import run_simple

    from hub.console.tls import ensure_cert

    cert, key = ensure_cert(state)
    run_simple(host, port, app, ssl_context=(str(cert), str(key)), threaded=True)
