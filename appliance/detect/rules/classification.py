"""Classification files (``config classification: shortname,description,priority``).

A rule's ``classtype`` names a class; its priority becomes the alert severity and its
description the alert category. The shipped file (``classification.config`` next to this module)
has the class types Suricata and Emerging Threats rules use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).with_name("classification.config")
PREFIX = "config classification:"


@dataclass(frozen=True, slots=True)
class ClassType:
    name: str
    description: str
    priority: int

    @property
    def severity(self) -> int:
        """The alert severity: Suricata priorities 1-3 as they are, anything lower as 3."""
        return min(max(self.priority, 1), 3)


class ClassificationError(ValueError):
    """A bad line in a classification file (the message starts with file:line)."""


def parse(text: str, source: str = "<classification>") -> dict[str, ClassType]:
    out: dict[str, ClassType] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith(PREFIX):
            raise ClassificationError(
                f"{source}:{n}: expected '{PREFIX} name,description,priority'"
            )
        parts = [p.strip() for p in line[len(PREFIX) :].split(",")]
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise ClassificationError(f"{source}:{n}: expected name,description,priority")
        try:
            prio = int(parts[2])
        except ValueError:
            raise ClassificationError(
                f"{source}:{n}: priority {parts[2]!r} is not a number"
            ) from None
        if not 1 <= prio <= 255:
            raise ClassificationError(f"{source}:{n}: priority {prio} outside 1..255")
        out[parts[0]] = ClassType(parts[0], parts[1], prio)
    return out


def load(path: str | Path | None = None) -> dict[str, ClassType]:
    """The classes of `path` (default: the shipped file). Raises ClassificationError or OSError."""
    p = Path(path) if path else DEFAULT_PATH
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ClassificationError(f"{p}: not a UTF-8 text file") from None
    return parse(text, str(p))
