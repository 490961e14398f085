"""`watchpost-hub`: the regional hub's command line (operator commands and provisioning).

In a development install the same groups are also ``watchpost hub`` and ``watchpost provision``
(entry points ``watchpost.commands``).
"""

from __future__ import annotations

from hub.enrol import enrol
from hub.operator import hub as main
from hub.provisioning import provision
from hub.release import release

main.add_command(provision)
main.add_command(enrol)
main.add_command(release)

__all__ = ["main"]
