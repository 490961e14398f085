"""Suricata-style rules on what reaches Python: flow heads and all DNS.

- `parser`: rule text -> `Rule` (or skipped with a reason, or a syntax error with file:line);
- `addresses`: header address/port lists with variables, negation, groups and ranges;
- `classification`: classtype -> severity and category (``classification.config`` shipped);
- `matcher`: a rule's checks (header, flow, flags, dsize, contents and pcre per buffer);
- `pcre`: pcre compiled to RE2 (linear time) over a capped buffer;
- `buffers`: the sticky buffers built from the packet and its dissected record;
- `prefilter`: port groups (Suricata's), and in each one Aho-Corasick automaton per buffer;
- `threshold`: threshold / detection_filter state;
- `ruleset`: loading files into a `RuleSet` with a `LoadReport`, and matching one packet;
- `check`: the ``watchpost rules check`` command.

See docs/rules.md for the keyword subset.
"""

from appliance.detect.rules.ruleset import LoadReport, RulesError, RuleSet, load_files

__all__ = ["LoadReport", "RuleSet", "RulesError", "load_files"]
