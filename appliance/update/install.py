"""Install a release: a real venv in `releases/<version>.partial/`, filled by pip from the
artifact's wheels only (no index, no pip settings of the machine), checked to report its
version, then renamed to `releases/<version>/` and stamped `.complete`.

A venv writes its own path into its scripts' `#!` lines, so after the rename those lines are
rewritten from the partial path to the final one and the version is checked again from there.
A power cut at any point leaves a `.partial` folder or an unstamped release, both removed by
the next attempt (`Layout.prune` / `prepare`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from appliance.update.layout import COMPLETE, Layout

Hook = Callable[[str], None]
PIP_TIMEOUT_S = 900


class InstallError(RuntimeError):
    """The venv could not be built or does not run; the message says why."""


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no pip.conf of this machine: wheels only
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def _run(cmd: list[str], what: str, timeout: float = PIP_TIMEOUT_S) -> str:
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"{what}: {e}") from None
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise InstallError(f"{what} failed (exit {res.returncode}): {' / '.join(tail)}")
    return res.stdout.strip()


def reported_version(release: Path) -> str:
    out = _run([str(release / "bin" / "watchpost"), "--version"], "watchpost --version", 60)
    return out.rsplit(" ", 1)[-1]


def _rewrite_shebangs(bindir: Path, old: Path, new: Path) -> None:
    old_b, new_b = str(old).encode(), str(new).encode()
    for f in bindir.iterdir():
        if f.is_symlink() or not f.is_file():
            continue
        data = f.read_bytes()
        if data.startswith(b"#!") and old_b in data.split(b"\n", 1)[0]:
            first, _, rest = data.partition(b"\n")
            f.write_bytes(first.replace(old_b, new_b) + b"\n" + rest)
        elif f.name.startswith("activate") and old_b in data:
            f.write_bytes(data.replace(old_b, new_b))


def install(
    layout: Layout,
    version: str,
    wheels: Path,
    *,
    python: str = sys.executable,
    system_site_packages: bool = True,
    hook: Hook = lambda step: None,
) -> Path:
    """Build releases/<version> from `wheels`; returns its path (complete and checked)."""
    final = layout.release(version)
    partial = layout.partial(version)
    if layout.complete(version) and reported_version(final) == version:
        return final
    shutil.rmtree(partial, ignore_errors=True)
    if final.exists() and layout.current_version() != version:
        shutil.rmtree(final)  # unstamped: a power cut between the rename and the stamp
    layout.releases.mkdir(parents=True, exist_ok=True)
    # Each release has its own pip (ensurepip's bundled wheel, offline): the release that runs
    # the next update needs one, and the system's python3 has none on the image.
    cmd = [python, "-m", "venv"]
    if system_site_packages:
        cmd.append("--system-site-packages")
    _run([*cmd, str(partial)], "python -m venv")
    hook("installing.venv")
    _run(
        [
            str(partial / "bin" / "python"), "-m", "pip", "install", "--isolated", "--quiet",
            "--no-index", "--no-cache-dir", "--disable-pip-version-check",
            "--find-links", str(wheels), f"watchpost=={version}",
        ],
        "pip install from the release's wheels",
    )  # fmt: skip
    got = reported_version(partial)
    if got != version:
        raise InstallError(f"the installed watchpost reports version {got}, not {version}")
    hook("installing.built")
    os.rename(partial, final)
    _rewrite_shebangs(final / "bin", partial, final)
    got = reported_version(final)
    if got != version:
        raise InstallError(f"after the rename watchpost reports version {got}, not {version}")
    stamp = final / COMPLETE
    with open(stamp, "wb") as f:
        os.fsync(f.fileno())
    return final
