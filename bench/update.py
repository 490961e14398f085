"""A firmware update end to end in the lab, timed, with a fast ping through the bridge.

``python -m bench update``; also part of ``make bench`` (needs root). Two releases are built
from this tree (`lab.updatelab.build_pair`: real wheels, the second with the version bumped),
the first installed as a real venv and run inline under the lab's stand-in for systemd, the
second pushed from the lab hub's namespace over its real broker (`update` chunks, then the
updater: verify, venv install, switch, health check).

Figures:
- ``update_seconds``: from the first chunk sent to the new daemon's status saying `succeeded`
  (with ``update_download_seconds`` and the artifact's size next to it);
- ``update_ping_lost`` / ``update_ping_sent``: ``ping -i 0.01`` pc1 -> web during the whole
  update; next to ``baseline_ping_lost`` / ``baseline_ping_sent``: the same ping, as long, on
  the same daemon with no update, in the same run.

The build and the venv install dominate; BENCH_QUICK runs the same (there is no shorter honest
update), so this module takes about 2-4 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.hub import start_lab_hub
from lab.netns import Lab, LabError
from lab.updatelab import UpdateRun, build_pair, start_ping


def _log(msg: str) -> None:
    print(f"bench.update: {msg}", file=sys.stderr, flush=True)


def run(quick: bool) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("bench.update needs root (network namespaces, netfilter)")
    tmp = Path(tempfile.mkdtemp(prefix="watchpost-bench-update-"))
    lab = Lab(f"wpu{os.getpid() % 100000}")
    hub = None
    run_ = None
    try:
        t0 = time.monotonic()
        pair = build_pair(tmp / "releases")
        build_s = time.monotonic() - t0
        _log(f"releases {pair.old_version} and {pair.new_version} built in {build_s:.0f} s")
        lab.up()
        run_ = UpdateRun(lab, tmp / "device", pair.public_key)
        run_.workdir.mkdir(parents=True)
        run_.install_old(pair.old)
        hub = start_lab_hub(lab, tmp, collector=False)
        run_.start(hub)
        ping = start_ping(lab, "pc1", "web")
        t1 = time.monotonic()
        job = run_.update(pair.new, pair.new_version)
        update_s = time.monotonic() - t1
        sent, lost = ping.finish()
        if job["state"] != "succeeded":
            raise RuntimeError(f"the update did not succeed: {job}")
        _log(f"update in {update_s:.1f} s, ping {lost}/{sent} lost; baseline ping ...")
        # The same ping, as long, with no update (the new daemon running), same run.
        ping = start_ping(lab, "pc1", "web")
        time.sleep(update_s)
        base_sent, base_lost = ping.finish()
        sent_event = next((e for e in run_.lines if e["event"] == "sent"), {})
        return {
            "update_seconds": round(update_s, 1),
            "update_ping_sent": sent,
            "update_ping_lost": lost,
            "baseline_ping_sent": base_sent,
            "baseline_ping_lost": base_lost,
            "update_chunks": sent_event.get("count"),
            "update_artifact_mib": round(pair.new.stat().st_size / (1 << 20), 1),
            "update_release_build_seconds": round(build_s, 1),
            "update_loadavg": open("/proc/loadavg").read().split()[0],
        }
    except LabError as e:
        raise RuntimeError(str(e)) from None
    finally:
        if run_ is not None:
            run_.stop()
        if hub is not None:
            hub.stop()
        try:
            lab.down()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run(quick=os.environ.get("BENCH_QUICK") == "1"), indent=1))
