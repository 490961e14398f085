"""The daemon, split by job: `daemon` (start order, main loop, signals, stop), `queues` (one
interface over in-process and worker-process NFQUEUE queues), `reconfigure` (live reload, all or
nothing), `metrics` (kernel counters, fail-open accounting, the per-tick snapshot), `notify`
(systemd), `blocks` (block requests from the packet path), `wiring` (which components run and how
they are connected) and `view` (what a component sees of the daemon)."""

from appliance.service.blocks import BlockRequests
from appliance.service.daemon import Service, ServiceError, run_daemon
from appliance.service.notify import Notifier
from appliance.service.wiring import Wiring

__all__ = ["BlockRequests", "Notifier", "Service", "ServiceError", "Wiring", "run_daemon"]
