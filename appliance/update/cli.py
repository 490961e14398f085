"""`watchpost update apply|boot-check|status`: the updater's own command line.

`apply` is started by the daemon's `update` command (outside the daemon's unit, since it
restarts it); `boot-check` is the oneshot `watchpost-update-check.service` before the daemon.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import click

from appliance.update import health
from appliance.update.job import JobStore, Updater, hook_from_env
from appliance.update.layout import Layout
from protocol import envelope

DEFAULT_ROOT = "/opt/watchpost"
DEFAULT_STATE = "/var/lib/watchpost"
DEFAULT_RELEASE_KEY = "/etc/watchpost/release-pubkey.pem"


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _common(f):
    f = click.option("--root", default=DEFAULT_ROOT, show_default=True, type=click.Path(),
                     help="holds releases/ and the current link")(f)  # fmt: skip
    f = click.option("--state-dir", default=DEFAULT_STATE, show_default=True, type=click.Path(),
                     help="the device's state dir (update/job.json)")(f)  # fmt: skip
    f = click.option("--release-key", default=DEFAULT_RELEASE_KEY, show_default=True,
                     type=click.Path(), help="the release public key(s), PEM")(f)  # fmt: skip
    f = click.option("--probe-file", type=click.Path(), default=None,
                     help="lab/test: health samples from this JSON file")(f)  # fmt: skip
    f = click.option("--deadline", type=float, default=health.DEFAULT_DEADLINE_S,
                     show_default=True, help="seconds to become healthy")(f)  # fmt: skip
    f = click.option("--interval", type=float, default=health.DEFAULT_INTERVAL_S,
                     show_default=True, help="seconds between health samples")(f)  # fmt: skip
    f = click.option("--metrics-url", default="https://127.0.0.1:8080/metrics", show_default=True,
                     help="the status page's /metrics (asked from loopback)")(f)  # fmt: skip
    f = click.option("--system-site-packages/--no-system-site-packages", default=True,
                     help="release venvs see the system's lgpio")(f)  # fmt: skip
    return f


def _updater(root: str, state_dir: str, release_key: str, probe_file: str | None,
             deadline: float, interval: float, metrics_url: str, system_site_packages: bool,
             need_key: bool = True) -> Updater:  # fmt: skip
    keys = []
    if need_key:
        try:
            keys = envelope.public_keys_from_pem(
                Path(release_key).read_bytes(), f"release key {release_key}"
            )
        except OSError as e:
            _fail(f"release key {release_key}: {e.strerror or e}")
        except envelope.KeyFileError as e:
            _fail(str(e))
    probe: health.FileProbe | health.SystemdProbe = (
        health.FileProbe(probe_file) if probe_file else health.SystemdProbe(metrics_url=metrics_url)
    )
    return Updater(
        layout=Layout(root), state_dir=Path(state_dir), keys=keys, machine=platform.machine(),
        probe=probe, restart=probe.restart, python=sys.executable,
        system_site_packages=system_site_packages, deadline_s=deadline, interval_s=interval,
        hook=hook_from_env(Path(state_dir)),
    )  # fmt: skip


@click.group("update")
def update() -> None:
    """Firmware updates: apply a signed release artifact, check at boot, show the job."""


@update.command("apply")
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--job", "job_id", default="manual", show_default=True, help="the job id")
@click.option("--version", "expect", default=None, help="refuse an artifact of another version")
@_common
def apply(artifact: Path, job_id: str, expect: str | None, **kw: object) -> None:
    """Verify, install, switch to and health-check ARTIFACT; roll back when unhealthy."""
    if not artifact.is_file():
        _fail(f"{artifact}: no such file")
    job = _updater(**kw).apply(artifact, job_id, expect)  # type: ignore[arg-type]
    click.echo(json.dumps({k: job.get(k) for k in ("id", "state", "version", "from", "reason")}))
    sys.exit(0 if job["state"] == "succeeded" else 1)


@update.command("boot-check")
@_common
def boot_check(**kw: object) -> None:
    """At boot, before the daemon: finish or revert a half-done update."""
    job = _updater(**kw, need_key=False).boot_check()  # type: ignore[arg-type]
    if job is None:
        click.echo("update: no job")
        return
    click.echo(json.dumps({k: job.get(k) for k in ("id", "state", "version", "from", "reason")}))


@update.command("status")
@click.option("--state-dir", default=DEFAULT_STATE, show_default=True, type=click.Path())
def status(state_dir: str) -> None:
    """The latest update job as JSON."""
    click.echo(json.dumps(JobStore(state_dir).load()))
