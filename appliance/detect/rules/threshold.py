"""``threshold`` and ``detection_filter``: how often a matching rule alerts.

Suricata's semantics, with fixed windows that start at the first match of a tracked key
(source, destination, both, or the rule) and last ``seconds``:

- ``type limit, count N``: the first N matches of a window alert, the rest do not;
- ``type threshold, count N``: every Nth match of a window alerts;
- ``type both, count N``: the Nth match of a window alerts, once;
- ``detection_filter, count N``: every match after the Nth of a window alerts.

State is bounded: at most MAX_ENTRIES keys are tracked, the least recently used forgotten.
"""

from __future__ import annotations

from collections import OrderedDict

from appliance.detect.rules.matcher import Rule, Threshold

MAX_ENTRIES = 65536


class Tracker:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        # key -> [window start, count in window]
        self._state: OrderedDict[tuple, list[float]] = OrderedDict()
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self._state)

    def allow(self, rule: Rule, src: bytes, dst: bytes, now: float) -> bool:
        """Whether this match of `rule` alerts (detection_filter first, then threshold)."""
        df = rule.detection_filter
        if df is not None and not self._check("d", df, rule, src, dst, now):
            return False
        th = rule.threshold
        return th is None or self._check("t", th, rule, src, dst, now)

    def _check(
        self, which: str, th: Threshold, rule: Rule, src: bytes, dst: bytes, now: float
    ) -> bool:
        track = th.track
        if track == "by_src":
            who: tuple = (src,)
        elif track == "by_dst":
            who = (dst,)
        elif track == "by_both":
            who = (src, dst)
        else:
            who = ()
        key = (which, rule.gid, rule.sid, *who)
        st = self._state.get(key)
        if st is None or now - st[0] >= th.seconds:
            st = [now, 0.0]
            self._state[key] = st
            if len(self._state) > self.max_entries:
                self._state.popitem(last=False)
                self.forgotten += 1
        else:
            self._state.move_to_end(key)
        st[1] += 1
        n = int(st[1])
        kind = th.kind
        if kind == "limit":
            return n <= th.count
        if kind == "threshold":
            if n >= th.count:
                st[1] = 0.0  # the count starts again within the same window
                return True
            return False
        if kind == "both":
            return n == th.count
        return n > th.count  # detection_filter
