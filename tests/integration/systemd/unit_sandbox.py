"""Run a command under the syscall filter of a systemd unit, as systemd would (no systemd here).

    /usr/bin/python3 unit_sandbox.py UNIT_FILE -- COMMAND...

Reads every ``SystemCallFilter=`` line of the unit (an allow-list, then ``~`` deny-lists, as
systemd merges them), expands the ``@groups`` with ``systemd-analyze syscall-filter``, applies
the result with libseccomp (Debian's python3-seccomp, hence the system Python), adds
``MemoryDenyWriteExecute=`` and ``NoNewPrivileges=`` when the unit sets them, then execs the
command: the daemon and every tool it starts (nft, iptables) run under the unit's filter.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import subprocess
import sys
from pathlib import Path

import seccomp  # type: ignore[import-not-found]


def groups() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.strip()
            out[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            out[current].append(line.strip())
    return out


def expand(names: list[str], table: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(table.get(name, []), table)
        else:
            out.add(name)
    return out


def unit_settings(path: str) -> tuple[list[list[str]], dict[str, str]]:
    filters, other = [], {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*([A-Za-z]+)=(.*)$", line)
        if not m:
            continue
        key, value = m.group(1), m.group(2).strip()
        if key == "SystemCallFilter":
            filters.append(value.split())
        else:
            other[key] = value
    return filters, other


def main() -> None:
    unit, sep, *cmd = sys.argv[1:]
    assert sep == "--" and cmd, __doc__
    filters, other = unit_settings(unit)
    table = groups()
    allowed: set[str] = set()
    for words in filters:
        if words and words[0].startswith("~"):
            allowed -= expand([words[0][1:], *words[1:]], table)
        else:
            allowed |= expand(words, table)
    errno_name = other.get("SystemCallErrorNumber", "EPERM")
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, errno_name)))
    mdwe = other.get("MemoryDenyWriteExecute") == "yes"
    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    for name in sorted(allowed):
        try:
            if mdwe and name in ("mmap", "mprotect", "pkey_mprotect"):
                # Allowed unless asked for writable and executable at once.
                for ok in (0, mmap.PROT_WRITE, mmap.PROT_EXEC):
                    f.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, wx, ok))
            else:
                f.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError, OSError):
            pass  # a name this architecture does not have
    f.load()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
