"""States of a long-running job (intel or rule bundle transfer, firmware update) as answered on
``cmd/res`` and shown in status: one list, read by the device and by the operator tools."""

from __future__ import annotations

QUEUED = "queued"
IN_PROGRESS = "in-progress"
SUCCEEDED = "succeeded"
FAILED = "failed"
REJECTED = "rejected"

STATES = (QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED)
TERMINAL = (SUCCEEDED, FAILED, REJECTED)
