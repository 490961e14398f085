"""Signed commands: `keygen`, `send`, `push-intel` (chunked signed bundles) and `set-config`
(the retained, signed desired config)."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import click
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.operator.connection import (
    EXIT_ERROR,
    EXIT_TIMEOUT,
    Connection,
    Ctx,
    OperatorError,
    _json,
    collect_retained,
    fail,
    find_site,
    response_topic,
)
from hub.operator.group import hub
from protocol import bundle, jobs
from protocol import envelope as env_mod
from protocol.topics import topic


class Requester:
    """Sends signed envelopes to one device and collects the answers meant for this client."""

    def __init__(self, ctx: Ctx, conn: Connection, device: str, site: str) -> None:
        self.ctx, self.conn, self.device, self.site = ctx, conn, device, site
        self.key = ctx.command_key()
        self.reply_to = response_topic(site, device, conn.client_id)
        conn.subscribe([self.reply_to])

    def send(self, cmd: str, args: Mapping[str, Any], ttl: int) -> dict[str, Any]:
        env = env_mod.make(self.device, cmd, args, self.key, seq=self.ctx.next_seq(), ttl=ttl)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_to
        props.CorrelationData = env["id"].encode()
        self.conn.publish(
            topic(self.site, self.device, "cmd"), env_mod.encode(env), properties=props
        )
        return env

    def answers(self, deadline: float) -> Iterator[dict[str, Any]]:
        """Answers arriving on the response topic until `deadline` (monotonic)."""
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = self.conn.messages.get(timeout=remaining)
            except queue.Empty:
                return
            if msg.topic != self.reply_to:
                continue
            answer = _json(msg.payload)
            if not isinstance(answer, dict):
                continue
            corr = getattr(msg.properties, "CorrelationData", None)
            if corr is not None and answer.get("id") is None:
                answer["id"] = corr.decode(errors="replace")
            yield answer


@hub.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Directory for command.key (0600) and command.pub.",
)
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(out_dir: Path, force: bool) -> None:
    """Make the Ed25519 command key pair (private key 0600; the public key goes on devices)."""
    private, public = env_mod.generate_keypair()
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / "command.key", out_dir / "command.pub"
    for p in (priv_path, pub_path):
        if p.exists() and not force:
            fail(f"{p} exists (use --force to replace it)")
    for p, data, mode in ((priv_path, private, 0o600), (pub_path, public, 0o644)):
        tmp = p.with_name(f".{p.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    key = env_mod.public_keys_from_pem(public)[0]
    fingerprint = hashlib.sha256(key.public_bytes_raw()).hexdigest()[:16]
    click.echo(f"{priv_path} (private, keep it on the hub)")
    click.echo(f"{pub_path} (install as hub.command_pubkey on devices)")
    click.echo(f"fingerprint {fingerprint}")


def _parse_args_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as e:
            fail(f"ARGS file {text[1:]}: {e.strerror or e}")
    try:
        value = json.loads(text)
    except ValueError as e:
        fail(f"ARGS is not JSON: {e}")
    if not isinstance(value, dict):
        fail("ARGS must be a JSON object")
    return value


def _print_answer(answer: dict[str, Any]) -> None:
    click.echo(json.dumps(answer, sort_keys=True, ensure_ascii=False))


@hub.command()
@click.argument("device")
@click.argument("cmd")
@click.argument("args_json", required=False, metavar="[ARGS-JSON|@FILE]")
@click.option("--timeout", default=15.0, show_default=True, help="Seconds to wait for the answer.")
@click.option("--ttl", default=300, show_default=True, help="Seconds the command stays valid.")
@click.option("--wait-job/--no-wait-job", default=True, help="For job commands, wait for the end.")
@click.pass_obj
def send(
    obj: Ctx,
    device: str,
    cmd: str,
    args_json: str | None,
    timeout: float,
    ttl: int,
    wait_job: bool,
) -> None:
    """Sign CMD for DEVICE, publish it with a response topic, print the answer.

    Exit code 1 when the device answers with an error, 3 when no answer comes in time.
    """
    args = _parse_args_json(args_json)
    conn = obj.connect()
    try:
        site = find_site(obj, conn, device)
        req = Requester(obj, conn, device, site)
        env = req.send(cmd, args, ttl)
        deadline = time.monotonic() + timeout
        for answer in req.answers(deadline):
            if answer.get("id") != env["id"]:
                continue
            _print_answer(answer)
            job = answer.get("job")
            if wait_job and isinstance(job, dict) and job.get("state") not in jobs.TERMINAL:
                continue
            sys.exit(0 if answer.get("ok") is True else EXIT_ERROR)
        click.echo(f"error: no answer from {device} within {timeout:g} s", err=True)
        sys.exit(EXIT_TIMEOUT)
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()


@hub.command("push-intel")
@click.argument("device")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--version", "version", required=True, help="Bundle version (shown in status).")
@click.option("--name", default=None, help="File name on the device (default: FILE's name).")
@click.option("--chunk-size", default=bundle.DEFAULT_CHUNK_BYTES, show_default=True)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds for the whole job.")
@click.option("--retries", default=2, show_default=True, help="Resends of a refused chunk.")
@click.pass_obj
def push_intel(
    obj: Ctx,
    device: str,
    file: Path,
    version: str,
    name: str | None,
    chunk_size: int,
    timeout: float,
    retries: int,
) -> None:
    """Send an intel list to DEVICE as a signed bundle, in chunks; wait for the job to end."""
    data = file.read_bytes()
    key = obj.command_key()
    try:
        manifest = bundle.make_manifest(data, name or file.name, version, key)
        chunk_list = bundle.chunk_args(uuid.uuid4().hex[:16], manifest, data, chunk_size)
    except bundle.BundleError as e:
        fail(str(e))
    conn = obj.connect()
    try:
        site = find_site(obj, conn, device)
        req = Requester(obj, conn, device, site)
        deadline = time.monotonic() + timeout
        final = push_chunks(req, "intel-update", chunk_list, deadline, retries)
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()
    if final is None:
        click.echo(f"error: the job did not finish within {timeout:g} s", err=True)
        sys.exit(EXIT_TIMEOUT)
    _print_answer(final)
    sys.exit(0 if final["job"]["state"] == "succeeded" else EXIT_ERROR)


Progress = Callable[[str, dict[str, Any]], None]


def _echo(line: str, job: dict[str, Any]) -> None:
    click.echo(line, err=True)


def push_chunks(
    req: Requester,
    cmd: str,
    chunk_list: list[dict[str, Any]],
    deadline: float,
    retries: int,
    progress: Progress = _echo,
) -> dict[str, Any] | None:
    """Send a bundle's chunks as `cmd` envelopes (intel-update, update), one at a time, each
    waiting for its answer; then wait for the job's end. The terminal answer, or None when none
    came before `deadline`. `progress(line, job)` hears every answer that is not the end.

    A device that resumes a transfer (an update after a cut link or a reboot) names the chunks
    it still wants (`job.missing`, ranges) in the answer to the first chunk: only those are sent
    then, and again when they run out (an answer names at most `bundle.MAX_RANGES` ranges). A
    device that names none is sent every chunk in order."""
    count = len(chunk_list)
    todo = list(range(count))
    first = True
    while todo:
        i = todo.pop(0)
        args = chunk_list[i]
        for attempt in range(retries + 1):
            env = req.send(cmd, args, ttl=max(60, int(deadline - time.monotonic())))
            answer = None
            for a in req.answers(deadline):
                if a.get("id") == env["id"]:
                    answer = a
                    break
            if answer is None:
                return None
            job = answer.get("job")
            state = job.get("state") if isinstance(job, dict) else None
            if state in jobs.TERMINAL:
                return answer
            if answer.get("ok"):
                progress(f"chunk {args['index'] + 1}/{count}: {state}", job or {})
                wanted = _missing(job, count)
                if wanted is not None and (first or not todo):
                    todo = [n for n in wanted if n != i]
                first = False
                break
            # Refused before reaching the job (e.g. damaged in transit): send it again.
            progress(f"chunk {args['index']}: {answer.get('error')}", job or {})
            if attempt == retries:
                return {**answer, "job": {"state": "failed", "id": args["job"]}}
    # All chunks accepted: the last answer said in-progress; wait for the end.
    for a in req.answers(deadline):
        job = a.get("job")
        if isinstance(job, dict) and job.get("id") == chunk_list[0]["job"]:
            if job.get("state") in jobs.TERMINAL:
                return a
            progress(f"job: {job.get('state')} {job.get('step', '')}".rstrip(), job)
    return None


def _missing(job: Any, count: int) -> list[int] | None:
    """The chunk indexes a job answer names as still wanted, in order (None: it names none)."""
    ranges = job.get("missing") if isinstance(job, dict) else None
    if not isinstance(ranges, list):
        return None
    out: list[int] = []
    for r in ranges:
        if (
            isinstance(r, list)
            and len(r) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
            and 0 <= r[0] <= r[1] < count
        ):
            out.extend(range(r[0], r[1] + 1))
    return out


def _deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in changes.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


@hub.command("set-config")
@click.argument("device")
@click.argument("changes_json", required=False, metavar="[CHANGES-JSON|@FILE]")
@click.option(
    "--file",
    "toml_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Changes as a TOML file (partial watchpost.toml).",
)
@click.option("--replace", is_flag=True, help="Do not merge into the current desired config.")
@click.option("--clear", is_flag=True, help="Remove the retained desired config.")
@click.option("--wait/--no-wait", default=True, help="Wait for the device's config/reported.")
@click.option("--timeout", default=15.0, show_default=True)
@click.pass_obj
def set_config(
    obj: Ctx,
    device: str,
    changes_json: str | None,
    toml_file: Path | None,
    replace: bool,
    clear: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Publish DEVICE's desired config (retained, signed); applied on every (re)connect.

    The desired config is the whole overlay the hub wants on the device's own file, so new
    changes are merged into the current retained one (unless --replace).
    """
    changes = _parse_args_json(changes_json)
    if toml_file is not None:
        try:
            changes = _deep_merge(changes, tomllib.loads(toml_file.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as e:
            fail(f"{toml_file}: {e}")
    if not changes and not clear:
        fail("no changes given (CHANGES-JSON or --file)")
    key = None if clear else obj.command_key()
    conn = obj.connect()
    try:
        site = find_site(obj, conn, device)
        desired_topic = topic(site, device, "config/desired")
        if clear:
            conn.publish(desired_topic, b"", retain=True)
            click.echo(f"cleared {desired_topic}")
            return
        if not replace:
            current = _current_desired(conn, desired_topic, key)
            changes = _deep_merge(current, changes)
        seq = obj.next_seq()
        assert key is not None  # not --clear
        env = env_mod.make_desired(device, changes, key, version=seq)
        reported_topic = topic(site, device, "config/reported")
        if wait:
            conn.subscribe([reported_topic])
        conn.publish(desired_topic, env_mod.encode(env), retain=True)
        click.echo(f"desired config version {seq} published to {desired_topic}", err=True)
        if not wait:
            return
        code = _wait_reported(conn, reported_topic, seq, time.monotonic() + timeout)
        sys.exit(code)
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()


def _current_desired(conn: Connection, desired_topic: str, key: Any) -> dict[str, Any]:
    """The args of the retained desired envelope, if it verifies with our key."""
    msgs = collect_retained(
        conn, [desired_topic], wait=2.0, settle=0.5, enough=lambda m: m.topic == desired_topic
    )
    for msg in msgs:
        if msg.topic != desired_topic or not msg.payload:
            continue
        try:
            env = env_mod.parse(msg.payload)
            env_mod.verify(env, [key.public_key()])
        except env_mod.EnvelopeError as e:
            raise OperatorError(
                f"the retained desired config on {desired_topic} is not usable ({e}); use --replace"
            ) from None
        return dict(env["args"])
    return {}


def _wait_reported(conn: Connection, reported_topic: str, version: int, deadline: float) -> int:
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            msg = conn.messages.get(timeout=remaining)
        except queue.Empty:
            break
        if msg.topic != reported_topic:
            continue
        rep = _json(msg.payload)
        if not isinstance(rep, dict):
            continue
        if rep.get("version") == version:
            _print_answer(rep)
            return 0
        if rep.get("rejected_version") == version:
            _print_answer(rep)
            click.echo(f"error: the device rejected it: {rep.get('error')}", err=True)
            return EXIT_ERROR
    click.echo("error: the device has not reported this version yet", err=True)
    return EXIT_TIMEOUT
