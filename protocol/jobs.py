"""States of a long-running job (intel or rule bundle transfer, firmware update) as answered on
``cmd/res`` and shown in status: one list, read by the device and by the operator tools.

A firmware update has more in-progress states (appliance/update/job.py: downloading, verifying,
installing, switching, checking) and one more end, `rolled-back`."""

from __future__ import annotations

QUEUED = "queued"
IN_PROGRESS = "in-progress"
SUCCEEDED = "succeeded"
FAILED = "failed"
REJECTED = "rejected"
ROLLED_BACK = "rolled-back"

STATES = (QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, ROLLED_BACK)
TERMINAL = (SUCCEEDED, FAILED, REJECTED, ROLLED_BACK)
