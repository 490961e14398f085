"""push_chunks: a device that resumes a transfer is sent only the chunks it names as missing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from hub.operator.commands import push_chunks
from protocol import bundle


class ResumingDevice:
    """Stands in for the request channel: answers each chunk as a resumable update job does
    (`missing` as ranges, at most `limit` of them), having `have` chunks from before a cut."""

    def __init__(self, count: int, have: set[int], limit: int = bundle.MAX_RANGES) -> None:
        self.count, self.received, self.limit = count, set(have), limit
        self.sent: list[int] = []
        self._answers: list[dict[str, Any]] = []

    def send(self, cmd: str, args: dict[str, Any], ttl: int) -> dict[str, Any]:
        index = args["index"]
        self.sent.append(index)
        self.received.add(index)
        eid = f"e{len(self.sent)}"
        job: dict[str, Any] = {"id": args["job"], "received": len(self.received)}
        if len(self.received) == self.count:
            self._answers.append({"id": eid, "ok": True, "job": {**job, "state": "succeeded"}})
        else:
            missing = bundle.missing_ranges(self.received, self.count, self.limit)
            job.update(state="in-progress", count=self.count, missing=missing)
            self._answers.append({"id": eid, "ok": True, "job": job})
        return {"id": eid}

    def answers(self, deadline: float) -> Iterator[dict[str, Any]]:
        while self._answers:
            yield self._answers.pop(0)


def chunks(n: int) -> list[dict[str, Any]]:
    return [{"job": "j1", "index": i} for i in range(n)]


def quiet(line: str, job: dict[str, Any]) -> None:
    pass


def test_a_resumed_transfer_sends_chunk_0_then_only_the_missing_ones() -> None:
    dev = ResumingDevice(10, have={0, 1, 2, 5, 6})
    end = push_chunks(dev, "update", chunks(10), time.monotonic() + 5, 0, quiet)  # type: ignore[arg-type]
    assert end is not None and end["job"]["state"] == "succeeded"
    assert dev.sent == [0, 3, 4, 7, 8, 9]


def test_more_gaps_than_one_answer_names_are_asked_for_again() -> None:
    have = set(range(0, 40, 2))  # 20 gaps: 1, 3, 5, ...
    dev = ResumingDevice(40, have=have, limit=4)
    end = push_chunks(dev, "update", chunks(40), time.monotonic() + 5, 0, quiet)  # type: ignore[arg-type]
    assert end is not None and end["job"]["state"] == "succeeded"
    assert sorted(dev.sent) == [0, *range(1, 40, 2)] and len(dev.sent) == 21


def test_a_device_that_names_nothing_gets_every_chunk_in_order() -> None:
    dev = ResumingDevice(5, have=set(), limit=0)
    dev_answers = dev.send

    def send(cmd: str, args: dict[str, Any], ttl: int) -> dict[str, Any]:
        out = dev_answers(cmd, args, ttl)
        dev._answers[-1]["job"].pop("missing", None)  # an intel transfer names no ranges
        return out

    dev.send = send  # type: ignore[method-assign]
    end = push_chunks(dev, "intel-update", chunks(5), time.monotonic() + 5, 0, quiet)  # type: ignore[arg-type]
    assert end is not None and dev.sent == [0, 1, 2, 3, 4]
