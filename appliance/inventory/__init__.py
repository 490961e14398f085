"""A passive inventory of office devices: names and vendors, learnt without sending anything.

`Inventory` ties the packet-socket reader (`sniff`), the frame parsers (`learn`) and the device
list (`store`) together. It reads only the office port (``inline.office``), learns only office
addresses (``inline.home_nets``), and counts the TCP connections each device opens to the
internet for the page's top-talkers chart.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable

from appliance.inventory.learn import Seen, Syn, parse_frame
from appliance.inventory.store import DeviceStore

log = logging.getLogger(__name__)

MAX_TALKERS = 4096


class Inventory:
    def __init__(
        self, state_dir: str | os.PathLike[str], home_nets: Iterable[str], **store_kw: str
    ) -> None:
        self.store = DeviceStore(state_dir, **store_kw)
        self.nets = [ipaddress.ip_network(n, strict=False) for n in home_nets]
        self.sniffer: object | None = None
        self._talk: Counter[str] = Counter()
        self._lock = threading.Lock()

    def is_office(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in self.nets)

    def frame(self, frame: bytes, outgoing: bool = False) -> None:
        for item in parse_frame(frame):
            if isinstance(item, Syn):
                if not outgoing and self.is_office(item.src) and not self.is_office(item.dest):
                    with self._lock:
                        if item.src in self._talk or len(self._talk) < MAX_TALKERS:
                            self._talk[item.src] += 1
            elif isinstance(item, Seen) and self.is_office(item.ip):
                self.store.learn(item.ip, item.mac, item.name, item.source)

    def take_talkers(self) -> dict[str, int]:
        """Connections to the internet per office device since the last call."""
        with self._lock:
            out, self._talk = dict(self._talk), Counter()
        return out

    def start(self, interface: str) -> str:
        """Read `interface` in a thread; returns why it cannot ("" when it runs)."""
        from appliance.inventory.sniff import Sniffer

        try:
            sniffer = Sniffer(interface, self.frame)
        except OSError as e:
            return f"cannot read {interface}: {e.strerror or e}"
        sniffer.start()
        self.sniffer = sniffer
        log.info("inventory: learning device names on %s", interface)
        return ""

    def stop(self) -> None:
        sniffer = self.sniffer
        if sniffer is not None:
            sniffer.stop()  # type: ignore[attr-defined]
            self.sniffer = None

    def close(self) -> None:
        self.stop()
        self.store.close()
