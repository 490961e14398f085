"""Write the config reference from the option declarations: docs/config.md and README's tables.

    python release/config_docs.py           rewrite docs/config.md and the README blocks
    python release/config_docs.py --check   exit 1 (naming the file) if either is out of date

Every key's type, default, range or choices and whether the hub may set it come from the one
declaration (`appliance.config.Option`), so the docs cannot drift (tests/unit/release checks).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance import config as config_mod  # noqa: E402
from appliance.config import OPTIONS, REMOTE_FILE, Option, type_label  # noqa: E402
from appliance.detect import registry  # noqa: E402

CONFIG_MD = REPO / "docs" / "config.md"
README = REPO / "README.md"
BLOCKS = ("config-keys", "detector-options")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else f"{value:.1f}"
    return str(value)


def _num(x: float) -> str:
    if not float(x).is_integer():
        return f"{x:g}"
    return f"{int(x):,}".replace(",", " ") if abs(x) >= 10_000 else str(int(x))


def _limits(opt: Option) -> str:
    each = "each " if opt.is_list else ""
    if opt.range is not None:
        return f"{each}{_num(opt.range[0])} to {_num(opt.range[1])}"
    if opt.choices is not None and "|" not in type_label(opt.type):
        return each + "one of " + ", ".join(f"`{c}`" for c in opt.choices)
    if opt.check is not None:
        doc = (opt.check.__doc__ or "").strip().splitlines()
        return each + (doc[0].split(" (")[0] if doc else "checked")
    return ""


def _hub(opt: Option) -> str:
    if opt.remote == "add":
        return "adds entries"
    if opt.remote:
        if opt.remote_range is not None:
            return f"yes, {_num(opt.remote_range[0])} to {_num(opt.remote_range[1])}"
        return "yes"
    if opt.path:
        return "no (path)"
    if opt.secret:
        return "no (secret)"
    return "no"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(key: str, opt: Option) -> str:
    default = opt.doc_default or _toml(opt.default)
    cells = [
        f"`{key}`",
        type_label(opt.type),
        f"`{default}`" if not opt.doc_default else default,
        _limits(opt),
        _hub(opt),
        opt.help,
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


HEADER = "| key | type | default | allowed | hub may set | meaning |\n|---|---|---|---|---|---|"


def config_table() -> str:
    rows = [
        _row(f"{section}.{key}", opt)
        for section, opts in OPTIONS.items()
        for key, opt in opts.items()
    ]
    return "\n".join([HEADER, *rows])


def detector_tables() -> str:
    parts = []
    for name in registry.DETECTORS:
        spec = config_mod.registered_detectors()[name]
        rows = [_row(key, opt) for key, opt in spec.options.items()]
        parts.append(f"**`[detect.{name}]`**\n\n" + "\n".join([HEADER, *rows]))
    return "\n\n".join(parts)


def block(name: str, body: str) -> str:
    begin = f"<!-- BEGIN generated {name}: release/config_docs.py -->"
    return f"{begin}\n{body}\n<!-- END generated {name} -->"


def _replace_blocks(text: str, blocks: dict[str, str], where: Path) -> str:
    for name, body in blocks.items():
        begin = f"<!-- BEGIN generated {name}: release/config_docs.py -->"
        end = f"<!-- END generated {name} -->"
        a, b = text.find(begin), text.find(end)
        if a < 0 or b < a:
            raise SystemExit(f"{where}: no generated block {name!r} (markers missing)")
        text = text[:a] + block(name, body) + text[b + len(end) :]
    return text


def config_md() -> str:
    remote = "\n".join(
        f"- `{key}`" for key, _opt in config_mod.remote_keys() if "detect." not in key
    )
    return f"""# Configuration reference

TOML. The daemon runs with two layers:

1. **The office's file**, `/etc/watchpost/watchpost.toml` (`watchpost run --config F`). Only
   the office (root on the device) writes it; the daemon's systemd unit has `/etc/watchpost`
   read-only.
2. **The hub's overlay**, `<device.state_dir>/{REMOTE_FILE}` (default
   `/var/lib/watchpost/{REMOTE_FILE}`), written atomically by the daemon when a signed
   `set-config` or `config/desired` from the hub is accepted. It holds only keys the hub may set
   (column "hub may set") and wins over the office's file for those keys; for
   `inline.never_block` it only adds entries to the office's list.

Precedence: built-in default < the office's file < the hub's overlay. `watchpost check-config F`
and `watchpost replay --config F` read the file alone. At start and on `systemctl reload`, an
overlay that no longer fits (unreadable, or refused together with the office's current file) is
ignored with a logged reason and the office's file runs alone. Delete the overlay to drop every
remote change.

Every key has a default. Unknown keys, wrong types, values outside "allowed" and bad entries are
refused with an error naming the key (`inline.workers: expected an integer, got 'two'`).

## What the hub may change

A remote change is refused, naming the key, and nothing is applied or saved when it touches a key
whose "hub may set" is "no" (paths, secrets, `privacy.*`, identity, the hub connection, the
status page, test knobs) or sets a value outside the range shown there (tighter production limits
than the office may use). A key the hub may not set is let through only when it carries the
current value unchanged (a `get-config` sent back whole); secrets come back as `<redacted>`.
Core keys the hub may set:

{remote}

and every detector option marked "yes" below.

## Keys

{block("config-keys", config_table())}

## Detector options

`[detect.<name>]`; each detector also has `enabled`.

{block("detector-options", detector_tables())}

This file is generated from the declarations (`appliance/config.py`, each detector's `load`) by
`python release/config_docs.py`; a test fails when it is out of date.
"""


def generated() -> dict[Path, str]:
    readme = _replace_blocks(
        README.read_text(encoding="utf-8"),
        {"config-keys": config_table(), "detector-options": detector_tables()},
        README,
    )
    return {CONFIG_MD: config_md(), README: readme}


def stale(files: dict[Path, str]) -> Iterable[Path]:
    for path, text in files.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            yield path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    files = generated()
    old = list(stale(files))
    if args.check:
        for path in old:
            print(f"{path.relative_to(REPO)}: out of date; run python release/config_docs.py")
        return 1 if old else 0
    for path in old:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
