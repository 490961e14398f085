"""`watchpost-hub console serve|adduser` and `watchpost-hub export --day D --out DIR`; importing
this module also registers `report` and `indicators`."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from hub.collector.command import DEFAULT_STORE
from hub.console import users
from hub.console.export import ExportError, export_day
from hub.correlate import command as _correlate_command  # noqa: F401 (registers `indicators`)
from hub.operator.connection import fail
from hub.operator.group import hub
from hub.reports import command as _report_command  # noqa: F401 (registers `report`)
from hub.store import StoreError, open_store

DEFAULT_STATE = Path("/var/lib/watchpost-hub")

_store_opt = click.option(
    "--store", "store_url", envvar="WATCHPOST_HUB_STORE", default=DEFAULT_STORE,
    show_default=True, help="sqlite:///path or postgresql://... (env WATCHPOST_HUB_STORE)",
)  # fmt: skip
_state_opt = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_STATE,
    show_default=True, help="Accounts (console-users.json), TLS certificate, session key.",
)  # fmt: skip


@hub.group()
def console() -> None:
    """The analyst console (web, TLS)."""


@console.command()
@_store_opt
@_state_opt
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT")
@click.option("--reports", "reports_dir", type=click.Path(path_type=Path), default=None,
              help="The folder `watchpost-hub report --out` writes to.")  # fmt: skip
def serve(store_url: str, state_dir: Path, listen: str, reports_dir: Path | None) -> None:
    """Serve the console over HTTPS (a self-signed certificate is made at first start)."""
    from hub.console.app import create_app
    from hub.console.app import serve as run
    from protocol.files import atomic_write

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--listen {listen!r}: expected HOST:PORT")
    users_path = state_dir / "console-users.json"
    try:
        if not users.load(users_path):
            fail(f"no accounts in {users_path}: add one with `watchpost-hub console adduser`")
    except users.UserError as e:
        fail(str(e))
    key_file = state_dir / "console-session.key"
    if not key_file.exists():
        import secrets

        atomic_write(key_file, secrets.token_bytes(32), mode=0o600)
    try:
        store = open_store(store_url)
    except StoreError as e:
        fail(str(e))
    app = create_app(store, users_path, reports_dir, secret=key_file.read_bytes())
    click.echo(f"console on https://{host}:{port}/", err=True)
    run(app, host.strip("[]"), int(port), state_dir)


@console.command()
@_state_opt
@click.argument("name")
@click.option("--role", type=click.Choice(users.ROLES), default="analyst", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
def adduser(state_dir: Path, name: str, role: str, password_stdin: bool) -> None:
    """Add or replace console account NAME (password hashed with scrypt)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
    try:
        users.add(state_dir / "console-users.json", name, password, role)
    except users.UserError as e:
        fail(str(e))
    click.echo(f"{name} ({role}) saved in {state_dir / 'console-users.json'}")


@hub.command()
@_store_opt
@click.option("--day", required=True, help="UTC day YYYY-MM-DD.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def export(store_url: str, day: str, out: Path) -> None:
    """Write OUT/eve-DAY.json: that day's alerts, one EVE record per line (Filebeat/Vector)."""
    try:
        store = open_store(store_url)
    except StoreError as e:
        fail(str(e))
    try:
        path, n = export_day(store, day, out)
    except ExportError as e:
        fail(str(e))
    finally:
        store.close()
    click.echo(f"{path} ({n} alerts)")
