"""Build the shipped wheels, one per package.

    python release/build_wheels.py [--out DIR] [NAME...]

Each package's ``release/wheels/<name>/pyproject.toml`` is laid next to a copy of its source
folder in a staging directory and built there, so a wheel holds its own package and nothing else
(the firmware wheel has no hub or lab module). The version is the firmware's
(`appliance.__version__`), the same for every wheel.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Distribution folder under release/wheels/ -> the source packages it ships.
PACKAGES: dict[str, tuple[str, ...]] = {
    "protocol": ("protocol",),
    "firmware": ("appliance",),
    "hub": ("hub",),
    "lab": ("lab",),
}


def version() -> str:
    text = (REPO / "appliance" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not m:
        raise SystemExit("build: no __version__ in appliance/__init__.py")
    return m.group(1)


def build(name: str, out: Path) -> Path:
    """Stage and build one wheel into `out`; returns its path."""
    if name not in PACKAGES:
        raise SystemExit(f"build: unknown package {name!r} (known: {', '.join(PACKAGES)})")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"wp-wheel-{name}-") as tmp:
        stage = Path(tmp)
        text = (REPO / "release" / "wheels" / name / "pyproject.toml").read_text()
        (stage / "pyproject.toml").write_text(
            text.replace('"0.0.0"', f'"{version()}"').replace("==0.0.0", f"=={version()}")
        )
        for pkg in PACKAGES[name]:
            shutil.copytree(
                REPO / pkg, stage / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        before = set(out.glob("*.whl"))
        res = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--disable-pip-version-check", "-q", "-w", str(out), str(stage)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(f"build: {name} wheel failed:\n{res.stderr.strip()[-2000:]}")
    made = sorted(set(out.glob("*.whl")) - before) or sorted(
        out.glob(f"watchpost{'' if name == 'firmware' else '_' + name}-{version()}-*.whl")
    )
    return made[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=REPO / "dist", help="where the wheels go")
    ap.add_argument("names", nargs="*", default=list(PACKAGES), help="packages to build")
    args = ap.parse_args(argv)
    for name in args.names:
        print(build(name, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
