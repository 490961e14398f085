"""Read-only commands: ping, status, get-config, logs (the daemon's own log only)."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Any

from appliance.hublink.command_api import FAILED, Arg, CommandFailed, Reply, check_args
from appliance.hublink.remote_config import redacted
from appliance.hublink.rules_job import rules_dir_for
from protocol import bundle

if TYPE_CHECKING:
    from appliance.hublink.commands import CommandHandler

MAX_LOG_LINES = 1000
MAX_LOG_BYTES = 32 * 1024


def ping(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    check_args("ping", env["args"], {})
    return {"pong": True, "time": int(h.clock()), "clock_synced": h.clock_synced()}


def status(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    check_args("status", env["args"], {})
    out = dict(h.device.status())
    out["commands"] = {
        **h.stats(),
        "last_seq": h.state.last_seq.get(env["device"], 0),
        "clock_synced": h.clock_synced(),
    }
    out["intel_bundles"] = bundle.installed(h.intel_dir)
    out["update"] = h.update.progress()  # live download counts, else the job file
    out["rules_bundles"] = bundle.installed(rules_dir_for(h.device.config))
    return out


def get_config(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    check_args("get-config", env["args"], {})
    return {"config": redacted(h.device.config), "desired_version": h.state.desired_version}


def logs(h: CommandHandler, env: dict[str, Any], reply: Reply) -> dict[str, Any]:
    args = check_args("logs", env["args"], {"lines": Arg(int, default=100, lo=1, hi=MAX_LOG_LINES)})
    path = h.device.log_file  # the daemon's own log, never a path from the args
    if not path:
        raise CommandFailed(FAILED, "logs: the daemon logs to no file (log.file is empty)")
    try:
        lines, truncated = tail_lines(path, args["lines"], MAX_LOG_BYTES)
    except OSError as e:
        raise CommandFailed(FAILED, f"logs: {path}: {e.strerror or e}") from None
    return {"file": path, "lines": lines, "truncated": truncated}


def tail_lines(path: str | os.PathLike[str], lines: int, max_bytes: int) -> tuple[list[str], bool]:
    """The last `lines` lines of a regular file (a symlink or a FIFO is refused), reading at
    most `max_bytes` from its end."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        f.seek(0, os.SEEK_END)
        size = f.tell()
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(size - start)
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line is probably cut
    return text[-lines:], start > 0 or len(text) > lines
