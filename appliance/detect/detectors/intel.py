"""`intel`: traffic to or from addresses the threat-intel lists name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.inline.decode import Packet
    from appliance.inline.flows import Flow

IP_HIT = Signature(8100001, "Threat intel: traffic with a listed address", "Threat intel", 1)


class IntelDetector(Detector):
    name = "intel"
    signatures = (IP_HIT,)

    def load(self, loader: Loader) -> None:
        loader.add_option("block", bool, True, "In block mode, drop traffic with listed hosts.")

    def configure(self, opts: Options, updated: set[str]) -> None:
        self.block = opts.block

    def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None:
        # Judge each flow once, on its first packet: later head packets add nothing.
        if flow.pkts_c + flow.pkts_s != 1:
            return
        intel = ctx.intel
        for addr in (pkt.dst, pkt.src):
            ind = intel.match_ip(addr)
            if ind is not None:
                listed = pkt.dst_ip if addr is pkt.dst else pkt.src_ip
                ctx.alert(
                    self.name,
                    IP_HIT,
                    pkt=pkt,
                    flow=flow,
                    details={
                        "indicator": ind.value,
                        "source": ind.source,
                        "category": ind.category,
                    },
                    block=listed if self.block else None,
                )
                return
