"""The daemon's plumbing without a kernel: sd_notify, block requests, components, reload."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from appliance.alerts.pipeline import AlertPipeline
from appliance.component import Component
from appliance.config import ConfigError, from_dict, load
from appliance.detect.engine import Engine
from appliance.detect.intel import IntelManager, IntelStore
from appliance.inline.firewall import Counters, FirewallError
from appliance.service import BlockRequests, Notifier, Service, Wiring, wiring
from protocol import envelope

# -- sd_notify -----------------------------------------------------------------------------------


def listener(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    return s, path


def test_notify_sends_datagrams_to_the_socket(tmp_path: Path) -> None:
    s, path = listener(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path})
    n.ready("monitor mode")
    msg = s.recv(4096).decode().split("\n")
    assert msg[0] == "READY=1"
    assert "STATUS=monitor mode" in msg and f"MAINPID={os.getpid()}" in msg
    n.close()
    s.close()


def test_notify_to_an_abstract_socket() -> None:
    name = f"watchpost-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("STOPPING=1")
    assert s.recv(100) == b"STOPPING=1"
    s.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier({})
    assert n.notify("READY=1") is False
    assert n.watchdog_interval == 0.0


def test_watchdog_pings_at_most_every_third_of_the_interval(tmp_path: Path) -> None:
    s, path = listener(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert n.watchdog_interval == 3.0
    for t in (100.0, 100.5, 100.9, 101.0, 101.5, 102.1):
        n.ping(t)
    s.settimeout(0.2)
    got = []
    while True:
        try:
            got.append(s.recv(100))
        except TimeoutError:
            break
    assert got == [b"WATCHDOG=1"] * 3  # at 100.0, 101.0 and 102.1
    s.close()


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval == 0.0


# -- block requests --------------------------------------------------------------------------------


class FakeFirewall:
    def __init__(self, config: Any = None, fail: bool = False) -> None:
        self.config = config
        self.fail = fail
        self.blocks: list[tuple[str, int]] = []
        self.applied_configs: list[Any] = []
        self.applied = False
        self.removed = 0

    def block(self, addr: str, ttl: int) -> bool:
        if self.fail:
            raise FirewallError(f"cannot block {addr}: nft: Error")
        self.blocks.append((addr, ttl))
        return addr != "198.18.0.1"

    def native_queue(self) -> bool:
        return False

    def apply(
        self, config: Any, deep_ports: Any = None, queueing: bool = True, blocked: Any = None
    ) -> None:
        self.config = config
        self.applied_configs.append(config)
        self.applied = True

    def remove(self) -> None:
        self.removed += 1
        self.applied = False

    def blocked(self) -> dict[str, float | None]:
        return {}

    def never_block(self) -> list:
        return []

    def unblock(self, addr: str) -> bool:
        return False

    def counters(self) -> Counters:
        return Counters()


def test_block_requests_are_applied_once_per_half_ttl() -> None:
    fw = FakeFirewall()
    br = BlockRequests()
    for _ in range(3):
        br.block("203.0.113.66", 100)
    br.block("198.18.0.1", 100)  # refused by the firewall (never-block)
    br.flush(fw, now=1000.0)
    assert fw.blocks == [("203.0.113.66", 100), ("198.18.0.1", 100)]
    br.block("203.0.113.66", 100)
    br.flush(fw, now=1040.0)  # 60 s left of 100: no refresh
    br.block("203.0.113.66", 100)
    br.block("198.18.0.1", 100)
    br.flush(fw, now=1051.0)  # 49 s left: refresh; the refused one is asked again
    assert fw.blocks[2:] == [("203.0.113.66", 100), ("198.18.0.1", 100)]
    assert br.pending == []


def test_block_request_failures_are_counted_not_raised(caplog) -> None:
    br = BlockRequests()
    br.block("203.0.113.66", 100)
    with caplog.at_level(logging.ERROR):
        br.flush(FakeFirewall(fail=True), now=0.0)
    assert br.failed == 1
    assert "cannot block 203.0.113.66" in caplog.text


# -- components --------------------------------------------------------------------------------


class Comp:
    """A component with every hook (appliance.component.Component); records what it got."""

    name = "comp"

    def __init__(self, refuse: bool = False) -> None:
        self.configs: list[Any] = []
        self.refuse = refuse
        self.ticks: list[Any] = []
        self.view: Any = None

    def start(self, view: Any) -> None:
        self.view = view

    def tick(self, now: float, snapshot: Any) -> None:
        self.ticks.append(snapshot)

    def configure(self, config: Any) -> None:
        if self.refuse and config.inline.mode == "block":
            raise ConfigError("hub.host", "cannot reach it")
        self.configs.append(config)

    def stop(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}


def test_wiring_connects_the_components_explicitly(tmp_path: Path) -> None:
    pub = tmp_path / "command.pub"
    pub.write_bytes(envelope.generate_keypair()[1])
    cfg = from_dict(
        {
            "device": {"id": "t", "state_dir": str(tmp_path / "state")},
            "hub": {"host": "192.0.2.10", "command_pubkey": str(pub),
                    "outbox": str(tmp_path / "outbox.sqlite")},
            "status": {"listen": ""},
        }
    )  # fmt: skip
    wired = wiring.build(cfg)
    names = [c.name for c in wired.components]
    assert names == ["LEDs", "remote management", "hub link"]  # start order; no page
    leds, remote, link = wired.components
    assert wired.leds is leds
    assert wired.journal is link.outbox is not None  # the pipeline's journal: the link's outbox
    assert remote.link is link  # the command handler goes to this link
    for comp in wired.components:
        assert isinstance(comp, Component)
    link.outbox.close()
    leds.close()
    bare = wiring.build(from_dict({"device": {"id": "t"}, "leds": {"enabled": False}}))
    assert [c.name for c in bare.components] == ["status page"] and bare.journal is None
    assert bare.leds is None


def test_a_broken_component_factory_is_skipped_not_fatal(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(config: Any) -> Any:
        raise RuntimeError("a bug in a component")

    monkeypatch.setattr(wiring.page_mod, "component", broken)
    with caplog.at_level(logging.ERROR):
        wired = wiring.build(from_dict({"device": {"id": "t"}}))
    assert [c.name for c in wired.components] == ["LEDs"]
    assert "status page failed to build" in caplog.text
    wired.components[0].close()


# -- reload ------------------------------------------------------------------------------------


def write_config(path: Path, **inline: Any) -> Path:
    data = {
        "device": {"id": "t", "site": "s", "state_dir": str(path.parent / "state")},
        "inline": {"bridge": "lo", "uplink": "lo", "office": "lo", **inline},
        "log": {"eve": str(path.parent / "eve.json"), "file": ""},
    }
    path.write_text(tomli_w.dumps(data))
    return path


def built_service(path: Path, components: list[Any]) -> Service:
    """A Service wired like `start()` does, minus queues and kernel (unit tests)."""
    cfg = load(path)
    svc = Service(cfg, Wiring(components), firewall=FakeFirewall(cfg), notifier=Notifier({}))  # type: ignore[arg-type]
    svc.intel = IntelManager([])
    svc.pipeline = AlertPipeline(cfg, [])
    svc.engine = Engine(cfg, IntelStore(), svc.pipeline)
    return svc


def test_reload_with_a_bad_config_keeps_the_old_one(tmp_path: Path, caplog) -> None:
    path = write_config(tmp_path / "wp.toml")
    comp = Comp()
    svc = built_service(path, [comp])
    old = svc.config
    path.write_text(path.read_text() + "\n[inline2]\nx = 1\n")
    with caplog.at_level(logging.ERROR):
        assert svc.reload() is False
    assert svc.config is old
    assert comp.configs == []
    assert svc.counts["reloads_refused"] == 1
    line = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(line) == 1 and "inline2: unknown section" in line[0]


def test_reload_refused_by_a_component_rolls_the_others_back(tmp_path: Path) -> None:
    path = write_config(tmp_path / "wp.toml")
    first, refusing = Comp(), Comp(refuse=True)
    svc = built_service(path, [first, refusing])
    old = svc.config
    write_config(path, mode="block")
    assert svc.reload() is False
    assert svc.config is old
    # The first component took the new config, then was given the old one back.
    assert [c.inline.mode for c in first.configs] == ["block", "monitor"]
    assert svc.firewall.applied_configs == []  # type: ignore[attr-defined]


def test_apply_config_raises_config_error_and_changes_nothing(tmp_path: Path) -> None:
    path = write_config(tmp_path / "wp.toml")
    first, refusing = Comp(), Comp(refuse=True)
    svc = built_service(path, [first, refusing])
    old = svc.config
    write_config(path, mode="block")
    with pytest.raises(ConfigError, match="hub.host: cannot reach it"):
        svc.apply_config(load(path))
    assert svc.config is old
    assert first.configs[-1] is old
    write_config(path, uplink="nosuchport0")
    with pytest.raises(ConfigError, match="inline.uplink: no network interface"):
        svc.apply_config(load(path))
    assert svc.counts["reloads_refused"] == 2 and svc.counts["reloads"] == 0


def test_reload_refuses_a_missing_bridge_port(tmp_path: Path, caplog) -> None:
    path = write_config(tmp_path / "wp.toml")
    svc = built_service(path, [])
    write_config(path, office="nosuchport0")
    with caplog.at_level(logging.ERROR):
        assert svc.reload() is False
    assert "no network interface 'nosuchport0'" in caplog.text


def test_good_reload_reaches_engine_firewall_and_components(tmp_path: Path) -> None:
    path = write_config(tmp_path / "wp.toml")
    comp = Comp()
    svc = built_service(path, [comp])
    write_config(path, mode="block", head_packets=4)
    assert svc.reload() is True
    assert svc.config.inline.mode == "block"
    assert svc.engine is not None and svc.engine.config is svc.config
    assert svc.firewall.applied_configs[-1] is svc.config  # type: ignore[attr-defined]
    assert comp.configs[-1] is svc.config
    assert svc.counts["reloads"] == 1


def test_stats_merge_component_stats_without_overriding_core_keys(tmp_path: Path) -> None:
    class Stats(Comp):
        def stats(self) -> dict[str, Any]:
            return {"hub_connected": True, "packets": -1}

    class Broken(Comp):
        def stats(self) -> dict[str, Any]:
            raise RuntimeError("bug")

    svc = built_service(write_config(tmp_path / "wp.toml"), [Stats(), Broken()])
    out = svc.stats()
    assert out["hub_connected"] is True
    assert out["packets"] == 0
    assert out["component_errors"] == 1
    for key in ("decoded", "malformed", "flows", "alerts", "fail_open_events", "queue_depth",
                "hook_errors"):  # fmt: skip
        assert key in out


def test_stop_removes_the_ruleset_even_without_a_start(tmp_path: Path) -> None:
    svc = built_service(write_config(tmp_path / "wp.toml"), [])
    svc.stop()
    svc.stop()
    assert svc.firewall.removed == 1  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_default_gateways_and_the_hub_are_protected_from_blocks(tmp_path: Path) -> None:
    from appliance.service.protect import default_gateways, protected_addresses

    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "br0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\n"  # default via 198.18.0.1
        "br0\t000012C6\t00000000\t0001\t0\t0\t0\t0000FFFF\n"
    )
    assert default_gateways(str(route)) == ["198.18.0.1"]
    assert default_gateways(str(tmp_path / "missing")) == []
    cfg = from_dict({"hub": {"host": "127.0.0.1"}})
    assert ("127.0.0.1", "hub") in protected_addresses(cfg)


def test_one_snapshot_per_tick_reaches_every_component(tmp_path: Path) -> None:
    class Counting(Comp):
        def __init__(self) -> None:
            super().__init__()
            self.asked = 0

        def stats(self) -> dict[str, Any]:
            self.asked += 1
            return {"counting": self.asked}

    first, second = Counting(), Counting()
    svc = built_service(write_config(tmp_path / "wp.toml"), [first, second])
    svc.tick(1_800_000_000.0)
    assert first.asked == second.asked == 1  # each component's stats once per tick
    assert first.ticks[0] is second.ticks[0]  # the same snapshot for everyone
    snap = first.ticks[0]
    assert snap["counting"] == 1 and "packets" in snap and "fail_open_events" in snap
    assert svc.view.snapshot() == snap  # what the view shows between ticks
    with pytest.raises(TypeError):
        svc.view.snapshot()["packets"] = 5  # type: ignore[index]  # read-only


def test_the_view_reaches_the_leds_and_the_firewall(tmp_path: Path) -> None:
    class StubLeds:
        identified: list[float] = []

        def ack(self) -> int:
            return 4

        def identify(self, seconds: float) -> None:
            self.identified.append(seconds)

    svc = built_service(write_config(tmp_path / "wp.toml"), [])
    view = svc.view
    assert not view.has_leds and view.ack_alerts(None) == 0
    with pytest.raises(NotImplementedError, match="no LEDs"):
        view.identify(5)
    leds = StubLeds()
    svc.wiring.leds = leds  # type: ignore[union-attr,assignment]
    assert view.has_leds and view.ack_alerts(["a"]) == 4
    view.identify(7)
    assert leds.identified == [7]
    assert view.block("203.0.113.9", 60) and not view.block("198.18.0.1", 60)
    svc.firewall.fail = True  # type: ignore[attr-defined]
    with pytest.raises(OSError, match="nft: Error"):
        view.block("203.0.113.9", 60)
    assert view.intel_status().version == svc.intel.store.version  # type: ignore[union-attr]
    assert view.config is svc.config and view.running is False
    view.request_stop()
    assert svc._stop_requested


# -- stop order ----------------------------------------------------------------------------------


def test_stop_waits_for_a_rules_reload_the_final_tick_started(tmp_path: Path, monkeypatch) -> None:
    """The stop's flush tick may see new hub rule bundles and start their load in the
    background; stop returns only once that load is done, so nothing reads the state dir after
    it (a caller removing the dir next raced it: the soak's teardown)."""
    import threading
    import time

    from appliance.detect.detectors import rules as rules_mod

    local = tmp_path / "local.rules"
    local.write_text('alert tcp any any -> any any (msg:"l"; content:"LOCALWORD"; sid:1;)\n')
    path = write_config(tmp_path / "wp.toml")
    path.write_text(path.read_text() + f'\n[detect.rules]\npaths = ["{local}"]\n')
    svc = built_service(path, [])
    assert svc.engine is not None
    det = next(d for d in svc.engine.detectors if d.name == "rules")
    svc.engine.tick(1000.0)  # the first look at the (empty) hub folder: at once
    svc.engine.stats.packets = 1  # as after traffic: stop flushes with a tick
    hub = Path(svc.config.device.state_dir) / "rules"
    hub.mkdir(parents=True)
    (hub / "hub.rules").write_text(
        'alert tcp any any -> any any (msg:"h"; content:"HUBWORD"; sid:2;)\n'
    )
    real = rules_mod.load_files
    started = threading.Event()

    def slow_load(*args: Any, **kw: Any) -> Any:
        started.set()
        time.sleep(0.5)
        return real(*args, **kw)

    monkeypatch.setattr(rules_mod, "load_files", slow_load)
    svc.stop()
    assert started.is_set()  # the flush tick did start the hub bundles' load
    assert not any(t.name == "rules-reload" for t in threading.enumerate())
    assert det._loaded  # its result is in, nothing left running


def test_stop_waits_for_an_intel_reload(tmp_path: Path, monkeypatch) -> None:
    """An intel reload (SIGHUP, the hub's intel push) writes the cache under the state dir:
    stop returns only once it is done."""
    import threading
    import time

    path = write_config(tmp_path / "wp.toml")
    svc = built_service(path, [])
    assert svc.intel is not None
    real = svc.intel.load

    def slow_load() -> Any:
        time.sleep(0.5)
        return real()

    monkeypatch.setattr(svc.intel, "load", slow_load)
    thread = svc.intel.reload()
    svc.stop()
    assert not thread.is_alive()
    assert not any(t.name == "intel-load" for t in threading.enumerate())
