"""`watchpost-hub push-update` and `watchpost-hub rollout start|run|status|list|pause|resume|stop`.

Exit codes as the other operator commands: 0 done (the update succeeded, the rollout is done),
1 a device failed or the rollout paused itself, 2 bad input, 3 no answer in time, 4 the
driver stopped on an error of the store or the broker (`rollout run ID` continues it; the unit
hub/systemd/watchpost-hub-rollout@.service does so by itself).
"""

from __future__ import annotations

import hashlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from hub.collector.command import DEFAULT_STORE
from hub.operator.connection import EXIT_ERROR, EXIT_TIMEOUT, Ctx, OperatorError, fail
from hub.operator.group import hub
from hub.rollout import plan
from hub.rollout import release as release_mod
from hub.rollout.driver import ASK_FOR_S, Driver
from hub.rollout.plan import PlanError
from hub.rollout.push import ReleasePusher, find_targets, print_answer
from hub.rollout.state import DRIVER_STALE_S, Rollout, RolloutError, Rollouts
from hub.store import Store, StoreError, open_store
from protocol import bundle, envelope
from protocol import release as rel

LEASE_POLL_S = 2.0
EXIT_CRASH = 4  # the driver stopped on an error of the store or the broker (not the rollout's)


def _store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store", "store_url", envvar="WATCHPOST_HUB_STORE", show_envvar=True,
        default=DEFAULT_STORE, show_default=True, help="The hub store (rollout state).",
    )(f)  # fmt: skip


def _transfer_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in (
        click.option("--chunk-size", default=bundle.DEFAULT_CHUNK_BYTES, show_default=True,
                     help="Bytes per chunk."),
        click.option("--retries", default=2, show_default=True, help="Resends of a refused chunk."),
        click.option("--parallel", default=16, show_default=True,
                     help="Devices of a wave updating at once."),
        click.option("--ask-for", type=float, default=ASK_FOR_S, show_default=True,
                     help="Rollouts: seconds to keep asking a device whose job state is unknown "
                     "(no final answer) for it, with back-off, before it counts as timed out."),
    ):  # fmt: skip
        f = opt(f)
    return f


def _open(url: str) -> Store:
    try:
        return open_store(url)
    except StoreError as e:
        fail(str(e))
        raise


def _load_release(path: Path, pubkey: str | None) -> release_mod.Release:
    if not pubkey:
        fail(
            "no release public key to check RELEASE's signature: pass --release-pubkey or set "
            "WATCHPOST_HUB_RELEASE_PUBKEY (the release-pubkey.pem devices hold)"
        )
    try:
        keys = envelope.public_keys_from_pem(
            Path(str(pubkey)).read_bytes(), f"release key {pubkey}"
        )
    except OSError as e:
        fail(f"release public key {pubkey}: {e.strerror or e}")
    except envelope.KeyFileError as e:
        fail(str(e))
    try:
        return release_mod.load(path, keys)
    except rel.ReleaseError as e:
        fail(str(e))
        raise


def _pubkey_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--release-pubkey", envvar="WATCHPOST_HUB_RELEASE_PUBKEY", show_envvar=True,
        help="The release public key (PEM) that RELEASE's manifest must verify with.",
    )(f)  # fmt: skip


def _pusher(obj: Ctx, release: release_mod.Release, chunk_size: int, retries: int) -> ReleasePusher:
    try:
        return ReleasePusher(obj, release, chunk_size=chunk_size, retries=retries)
    except bundle.BundleError as e:
        fail(str(e))
        raise
    except OperatorError as e:
        fail(str(e))
        raise


def _say(line: str) -> None:
    click.echo(line, err=True)


def _drive(
    obj: Ctx,
    store: Store,
    rid: str,
    parallel: int,
    chunk_size: int,
    retries: int,
    ask_for: float,
    pusher: ReleasePusher | None = None,
    wait_lease: float = 0.0,
) -> None:
    """Run the driver on `rid` in this process; exit with the rollout's outcome. The release is
    the file the rollout was started with (checked then), unchanged (its sha256). A lease held
    by another driver is waited for up to `wait_lease` seconds (one that died goes stale)."""
    if ask_for < 0:
        fail(f"--ask-for {ask_for:g}: must be at least 0 seconds")
    rollouts = Rollouts(store)
    try:
        r = rollouts.get(rid)
    except RolloutError as e:
        fail(str(e))
    if r.state != plan.RUNNING:  # nothing to drive (a unit started again, say)
        _print_status(rollouts, r)
        if r.state == plan.COMPLETE:
            sys.exit(0)
        fail(f"rollout {rid} is {r.state}" + (f": {r.reason}" if r.reason else ""), EXIT_ERROR)
    _wait_for_lease(rollouts, rid, wait_lease)
    if pusher is None:
        path = Path(r.artifact)
        try:
            data = path.read_bytes()
        except OSError as e:
            fail(f"rollout {rid}: release {path}: {e.strerror or e}")
        if hashlib.sha256(data).hexdigest() != r.sha256:
            fail(f"rollout {rid}: release {path} has changed since the rollout started (sha256)")
        release = release_mod.Release(path, {"version": r.version}, data, r.sha256)
        pusher = _pusher(obj, release, chunk_size, retries)
    try:
        final = Driver(rollouts, rid, pusher, parallel=parallel, say=_say, ask_for=ask_for).run()
    except RolloutError as e:
        fail(str(e))
    except Exception as e:  # the store or the broker went away: say so; the lease tells the rest
        traceback.print_exc()
        fail(f"rollout {rid}: the driver stopped ({e}); `rollout run {rid}` continues it",
             EXIT_CRASH)  # fmt: skip
    finally:
        pusher.close()
    _print_status(rollouts, final)
    sys.exit(0 if final.state == plan.COMPLETE else EXIT_ERROR)


def _wait_for_lease(rollouts: Rollouts, rid: str, wait: float) -> None:
    """Until no other live driver holds the lease (at most `wait` seconds; `claim` refuses
    after that): a driver killed a moment ago is heard of for `DRIVER_STALE_S` more."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            held = rollouts.lease_holder(rid)
        except RolloutError:
            return  # claim says why
        if held is None:
            return
        _say(f"rollout {rid}: waiting for the lease of {held} to end")
        time.sleep(min(LEASE_POLL_S, max(0.0, deadline - time.monotonic())))


def _start(
    obj: Ctx,
    store_url: str,
    release_path: Path,
    pubkey: str | None,
    *,
    devices: tuple[str, ...],
    site: str | None,
    fleet: bool,
    canary: str,
    wave_size: int,
    fail_threshold: str,
    job_timeout: float,
    run: bool,
    parallel: int,
    chunk_size: int,
    retries: int,
    ask_for: float,
) -> None:
    if sum((bool(devices) and site is None, site is not None, fleet)) != 1:
        fail("give exactly one of --device ID (repeatable), --site SITE or --fleet")
    try:
        threshold = plan.parse_threshold(fail_threshold)
        plan.check_wave_size(wave_size)
    except PlanError as e:
        fail(str(e))
    if parallel < 1:
        fail(f"--parallel {parallel}: must be at least 1")
    release = _load_release(release_path, pubkey)
    conn = obj.connect()
    try:
        targets = find_targets(conn, devices=devices, site=site, fleet=fleet)
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()
    scope = "fleet" if fleet else f"site {site}" if site else f"devices {', '.join(devices)}"
    # Everything that could stop the driver is checked before the rollout is stored.
    pusher = _pusher(obj, release, chunk_size, retries) if run else None
    if pusher is None:
        obj.command_key()
    store = _open(store_url)
    try:
        try:
            canaries = plan.parse_canary(canary, [t.device for t in targets])
            rid = Rollouts(store).create(
                version=release.version, artifact=str(release_path.resolve()),
                sha256=release.sha256, scope=scope, targets=targets, canaries=canaries,
                wave_size=wave_size, threshold=threshold, job_timeout=job_timeout,
            )  # fmt: skip
        except PlanError as e:
            fail(str(e))
        click.echo(rid)
        _say(f"rollout {rid}: release {release.version} to {len(targets)} devices ({scope})")
        if run:
            _drive(obj, store, rid, parallel, chunk_size, retries, ask_for, pusher)
    finally:
        if pusher is not None:
            pusher.close()
        store.close()


@hub.command("push-update")
@click.argument("release_path", metavar="RELEASE", type=click.Path(path_type=Path))
@click.option("--device", "devices", multiple=True, help="A device (repeatable).")
@click.option("--site", default=None, help="Every device of SITE, as a staged rollout.")
@click.option("--fleet", is_flag=True, help="Every device, as a staged rollout.")
@_pubkey_option
@_store_option
@click.option("--canary", default="1", show_default=True, help="Rollouts: N or id,id,...")
@click.option("--wave-size", default=10, show_default=True, help="Rollouts: devices per wave.")
@click.option("--fail-threshold", default="0", show_default=True,
              help="Rollouts: failures a wave may have, K or P%.")  # fmt: skip
@click.option("--timeout", "job_timeout", default=900.0, show_default=True,
              help="Seconds for one device's job (download, install, health check).")  # fmt: skip
@_transfer_options
@click.pass_obj
def push_update(
    obj: Ctx,
    release_path: Path,
    devices: tuple[str, ...],
    site: str | None,
    fleet: bool,
    release_pubkey: str | None,
    store_url: str,
    canary: str,
    wave_size: int,
    fail_threshold: str,
    job_timeout: float,
    parallel: int,
    chunk_size: int,
    retries: int,
    ask_for: float,
) -> None:
    """Send the signed firmware RELEASE to one device (--device: wait for its job's end), or to
    a site or the fleet as a staged rollout (`rollout start` with these options)."""
    if len(devices) == 1 and site is None and not fleet:
        _push_one(obj, release_path, release_pubkey, devices[0], job_timeout, chunk_size, retries)
        return
    _start(obj, store_url, release_path, release_pubkey, devices=devices, site=site, fleet=fleet,
           canary=canary, wave_size=wave_size, fail_threshold=fail_threshold,
           job_timeout=job_timeout, run=True, parallel=parallel, chunk_size=chunk_size,
           retries=retries, ask_for=ask_for)  # fmt: skip


def _push_one(
    obj: Ctx,
    release_path: Path,
    pubkey: str | None,
    device: str,
    timeout: float,
    chunk_size: int,
    retries: int,
) -> None:
    release = _load_release(release_path, pubkey)
    conn = obj.connect()
    try:
        (target,) = find_targets(conn, devices=(device,), site=obj.settings.site or None)
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()
    pusher = _pusher(obj, release, chunk_size, retries)
    try:
        out = pusher.push(target.device, target.site, timeout, lambda line, job: _say(line))
    except OperatorError as e:
        fail(str(e))
    finally:
        pusher.close()
    if out.answer is not None:
        click.echo(print_answer(out.answer))
    if out.state == plan.TIMEOUT:
        click.echo(f"error: {device}: {out.reason}", err=True)
        sys.exit(EXIT_TIMEOUT)
    if out.state != plan.SUCCEEDED:
        click.echo(f"error: {device}: {out.state}: {out.reason}", err=True)
        sys.exit(EXIT_ERROR)
    _say(f"{device}: succeeded, version {out.version}")


@hub.group("rollout")
def rollout() -> None:
    """Staged firmware rollouts: canaries first, then waves; a failing wave pauses it."""


@rollout.command("start")
@click.argument("release_path", metavar="RELEASE", type=click.Path(path_type=Path))
@click.option("--device", "devices", multiple=True, help="A target device (repeatable).")
@click.option("--site", default=None, help="Every device of SITE.")
@click.option("--fleet", is_flag=True, help="Every device with a status on the broker.")
@click.option(
    "--canary",
    default="1",
    show_default=True,
    help="Canaries (wave 0): N first devices or id,id,...; any failure pauses.",
)
@click.option("--wave-size", type=int, default=10, show_default=True, help="Devices per wave.")
@click.option(
    "--fail-threshold",
    default="0",
    show_default=True,
    help="Failures (failed, rolled-back, timeout) a wave may have: K or P%.",
)
@click.option(
    "--job-timeout",
    default=900.0,
    show_default=True,
    help="Seconds for one device's job (download, install, health check).",
)
@click.option("--run/--no-run", default=True, help="Drive it in this process now.")
@_pubkey_option
@_store_option
@_transfer_options
@click.pass_obj
def rollout_start(obj: Ctx, release_path: Path, devices: tuple[str, ...], site: str | None,
                  fleet: bool, canary: str, wave_size: int, fail_threshold: str,
                  job_timeout: float, run: bool, release_pubkey: str | None, store_url: str,
                  parallel: int, chunk_size: int, retries: int,
                  ask_for: float) -> None:  # fmt: skip
    """Start a staged rollout of RELEASE; prints its id (then drives it unless --no-run)."""
    _start(obj, store_url, release_path, release_pubkey, devices=devices, site=site, fleet=fleet,
           canary=canary, wave_size=wave_size, fail_threshold=fail_threshold,
           job_timeout=job_timeout, run=run, parallel=parallel, chunk_size=chunk_size,
           retries=retries, ask_for=ask_for)  # fmt: skip


@rollout.command("run")
@click.argument("rid", metavar="ID")
@click.option("--wait-lease", type=float, default=0.0, show_default=True,
              help="Seconds to wait for another driver's lease to end (one that died is stale "
              f"after {DRIVER_STALE_S:g} s) before giving up.")  # fmt: skip
@_store_option
@_transfer_options
@click.pass_obj
def rollout_run(obj: Ctx, rid: str, wait_lease: float, store_url: str, parallel: int,
                chunk_size: int, retries: int, ask_for: float) -> None:  # fmt: skip
    """Drive a running rollout from where the store says it is (after a driver was stopped).
    Exit 0 done (also when it already was), 1 paused or stopped, 2 refused (another driver's
    lease, no broker, bad input), 4 the driver stopped on an error of the store or broker."""
    store = _open(store_url)
    try:
        _drive(obj, store, rid, parallel, chunk_size, retries, ask_for, wait_lease=wait_lease)
    finally:
        store.close()


@rollout.command("resume")
@click.argument("rid", metavar="ID")
@click.option("--retry-failed", is_flag=True, help="Send the release again to failed devices.")
@click.option("--run/--no-run", default=True, help="Drive it in this process now.")
@_store_option
@_transfer_options
@click.pass_obj
def rollout_resume(obj: Ctx, rid: str, retry_failed: bool, run: bool, store_url: str,
                   parallel: int, chunk_size: int, retries: int,
                   ask_for: float) -> None:  # fmt: skip
    """Resume a paused rollout (a failed wave is accepted, or retried with --retry-failed)."""
    store = _open(store_url)
    try:
        try:
            Rollouts(store).resume(rid, retry_failed=retry_failed)
        except RolloutError as e:
            fail(str(e))
        _say(f"rollout {rid}: resumed")
        if run:
            _drive(obj, store, rid, parallel, chunk_size, retries, ask_for)
    finally:
        store.close()


def _transition(store_url: str, rid: str, what: str) -> None:
    store = _open(store_url)
    try:
        rollouts = Rollouts(store)
        try:
            r = rollouts.pause(rid) if what == "pause" else rollouts.stop(rid)
        except RolloutError as e:
            fail(str(e))
        click.echo(f"rollout {rid}: {r.state} ({r.reason})")
    finally:
        store.close()


@rollout.command("pause")
@click.argument("rid", metavar="ID")
@_store_option
def rollout_pause(rid: str, store_url: str) -> None:
    """Pause: devices already updating finish, no new device starts (`resume` continues)."""
    _transition(store_url, rid, "pause")


@rollout.command("stop")
@click.argument("rid", metavar="ID")
@_store_option
def rollout_stop(rid: str, store_url: str) -> None:
    """Stop for good: devices already updating finish, the others are never sent the release."""
    _transition(store_url, rid, "stop")


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(t))) + "Z" if t else "-"


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _print_status(rollouts: Rollouts, r: Rollout) -> None:
    click.echo(f"rollout {r.id}: {r.state}" + (f" ({r.reason})" if r.reason else ""))
    click.echo(f"release {r.version} to {r.scope}; waves of {r.wave_size}, threshold "
               f"{r.threshold}; started {_when(r.created_at)}")  # fmt: skip
    waves = {int(w["wave"]): w for w in rollouts.waves(r.id)}
    rows = [("WAVE", "DEVICE", "SITE", "JOB", "VERSION", "UPDATED", "REASON")]
    for d in rollouts.devices(r.id):
        w = waves[int(d["wave"])]
        label = f"{d['wave']} canary" if w["canary"] else str(d["wave"])
        rows.append((
            f"{label} ({w['state']})", d["device"], d["site"], d["state"],
            str(d["version"] or "-"), _when(d["updated_at"]), d["reason"] or "",
        ))  # fmt: skip
    _table(rows)


@rollout.command("status")
@click.argument("rid", metavar="[ID]", required=False)
@click.option("--events", is_flag=True, help="Also the rollout's event log.")
@_store_option
def rollout_status(rid: str | None, events: bool, store_url: str) -> None:
    """Each device's job state and version (the latest rollout without ID)."""
    store = _open(store_url)
    try:
        rollouts = Rollouts(store)
        try:
            if rid is None:
                every = rollouts.rollouts()
                if not every:
                    fail("no rollouts in the store")
                rid = every[-1].id
            r = rollouts.get(rid)
        except RolloutError as e:
            fail(str(e))
        _print_status(rollouts, r)
        if events:
            for ev in rollouts.events(r.id):
                who = f" {ev['device']}" if ev["device"] else ""
                click.echo(f"{_when(ev['at'])}{who}: {ev['event']}")
    finally:
        store.close()


@rollout.command("list")
@_store_option
def rollout_list(store_url: str) -> None:
    """Every rollout: id, state, release, scope."""
    store = _open(store_url)
    try:
        rows = [("ID", "STATE", "RELEASE", "SCOPE", "STARTED")]
        for r in Rollouts(store).rollouts():
            rows.append((r.id, r.state, r.version, r.scope, _when(r.created_at)))
        _table(rows)
    finally:
        store.close()
