"""Build a signed firmware release artifact (`make release`).

    python release/build_release.py --key release-key.pem [--out dist] [--min-from V]
        [--downgrade] [--machine M ...] [--deps-cache DIR] [--migration FILE.json]

The artifact (`dist/watchpost-<version>.tar`, format in `protocol.release`) holds, per machine,
the firmware and protocol wheels built from this tree (`release/build_wheels.py`) and every
dependency wheel pinned to the version this workspace runs (the closure of the firmware's
Requires-Dist, resolved against the installed distributions), so a device installs offline.
The build machine's own arch is built with `pip wheel`; another (`aarch64`, the Pi) is
downloaded as binary wheels with `pip download --platform manylinux2014_aarch64
--only-binary=:all:`. A machine some dependency has no such wheel for is left out, named on
stderr with the dependencies that lack one (`--require-all` makes that an error).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "release"))

import build_wheels  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402

from hub.release import write_artifact  # noqa: E402
from protocol import envelope  # noqa: E402

OURS = {"watchpost", "watchpost-protocol"}
PLATFORMS = {"aarch64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
PYTHON = "3.11"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> list[str]:
    """name==version for every dependency of the firmware and protocol wheels (transitively)."""
    todo: list[Requirement] = []
    for pkg in ("firmware", "protocol"):
        data = tomllib.loads((REPO / "release" / "wheels" / pkg / "pyproject.toml").read_text())
        todo += [Requirement(r) for r in data["project"]["dependencies"]]
    env = {"python_version": PYTHON, "extra": ""}
    seen: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name in OURS or name in seen:
            continue
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise SystemExit(f"release: dependency {req.name} is not installed here") from None
        seen[name] = dist.version
        todo += [Requirement(r) for r in (dist.requires or [])]
    return sorted(f"{n}=={v}" for n, v in seen.items())


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def deps(machine: str, reqs: list[str], cache: Path | None) -> tuple[list[Path], list[str]]:
    """(wheel paths, requirements without a wheel) for `machine`."""
    key = hashlib.sha256(f"{machine}{PYTHON}{reqs}".encode()).hexdigest()[:16]
    out = (cache or Path(tempfile.mkdtemp(prefix="wp-deps-"))) / f"{machine}-{key}"
    if (out / ".complete").is_file():
        return sorted(out.glob("*.whl")), []
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    req_file = out / "requirements.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    if machine == platform.machine():
        res = _pip("wheel", "--no-deps", "-w", str(out), "-r", str(req_file))
        if res.returncode != 0:
            raise SystemExit(f"release: pip wheel failed:\n{res.stderr.strip()[-1500:]}")
    else:
        plat = PLATFORMS.get(machine)
        if plat is None:
            raise SystemExit(f"release: unknown machine {machine} (known: {', '.join(PLATFORMS)})")
        common = ["download", "--no-deps", "--only-binary=:all:", "--platform", plat,
                  "--python-version", PYTHON, "--implementation", "cp", "-d", str(out)]  # fmt: skip
        res = _pip(*common, "-r", str(req_file))
        if res.returncode != 0:
            lacking = [r for r in reqs if _pip(*common, r).returncode != 0]
            return [], lacking or ["(pip download failed: " + res.stderr.strip()[-300:] + ")"]
    (out / ".complete").touch()
    return sorted(out.glob("*.whl")), []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--key", type=Path, required=True, help="the release private key (PEM)")
    ap.add_argument("--out", type=Path, default=REPO / "dist")
    ap.add_argument("--min-from", default="0.0.0", help="oldest version it may upgrade")
    ap.add_argument("--downgrade", action="store_true", help="sign it as a downgrade")
    default = f"{platform.machine()} and aarch64"
    ap.add_argument("--machine", action="append", default=None,
                    help=f"machines to carry wheels for (default: {default})")  # fmt: skip
    ap.add_argument("--require-all", action="store_true", help="fail if a machine lacks wheels")
    ap.add_argument("--deps-cache", type=Path, default=None, help="keep dependency wheels here")
    ap.add_argument("--migration", type=Path, default=None,
                    help="a config migration (JSON, docs/updates.md), signed in")  # fmt: skip
    args = ap.parse_args(argv)
    migration = None
    if args.migration is not None:
        from protocol.release import ReleaseError, check_migration

        try:
            migration = check_migration(json.loads(args.migration.read_text()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"release: --migration {args.migration}: {e}") from None
        except ReleaseError as e:
            raise SystemExit(f"release: --migration {args.migration}: {e}") from None
    try:
        key = envelope.load_private_key(args.key)
    except envelope.KeyFileError as e:
        raise SystemExit(
            f"release: {str(e).replace('command key', 'release key')} "
            "(make one with `watchpost-hub release keygen`)"
        ) from None
    machines = args.machine or sorted({platform.machine(), "aarch64"})
    version = build_wheels.version()
    reqs = pins()
    with tempfile.TemporaryDirectory(prefix="wp-release-") as tmp:
        ours = [build_wheels.build(n, Path(tmp) / "ours") for n in ("firmware", "protocol")]
        wheels: dict[str, list[Path]] = {}
        for m in machines:
            found, lacking = deps(m, reqs, args.deps_cache)
            if lacking:
                msg = f"release: {m} left out: no binary wheel of {', '.join(lacking)}"
                if args.require_all:
                    raise SystemExit(msg)
                print(msg, file=sys.stderr)
                continue
            wheels[m] = [*ours, *found]
        if not wheels:
            raise SystemExit("release: no machine has all its wheels")
        out = args.out / f"watchpost-{version}.tar"
        doc = write_artifact(
            out, version, wheels, key, min_from=args.min_from, downgrade=args.downgrade,
            migration=migration,
        )  # fmt: skip
    print(f"{out} ({', '.join(doc['machines'])}; {len(doc['files'])} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
