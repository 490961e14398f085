"""ServiceDevice: remote commands mapped onto the daemon's view (the fake one)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Config, ConfigError, from_dict
from appliance.detect.intel import IntelManager
from appliance.hublink import device as dev_mod
from appliance.hublink.device import ServiceDevice, intel_paths
from tests.fakes import FakeView


class StubLeds:
    def __init__(self) -> None:
        self.identified: list[int] = []

    def ack(self) -> int:
        return 3

    def identify(self, seconds: float) -> None:
        self.identified.append(int(seconds))


def view(config: Config, **kw: Any) -> FakeView:
    """The daemon's view; its firewall refuses 198.18.0.1* (never_block)."""
    kw.setdefault("numbers", {"state": "running", "mode": config.inline.mode})
    return FakeView(config, never_block=("198.18.0.1",), **kw)


def cfg(tmp_path: Path, paths: list[str] | None = None) -> Config:
    return from_dict(
        {
            "device": {"id": "d", "state_dir": str(tmp_path / "state")},
            "intel": {"paths": paths or []},
        }
    )


def test_intel_paths_include_installed_bundles(tmp_path: Path) -> None:
    c = cfg(tmp_path, ["/etc/watchpost/local.list"])
    intel = tmp_path / "state" / "intel"
    intel.mkdir(parents=True)
    (intel / "hub.list").write_text("203.0.113.1\n")
    (intel / ".hub.list.prev").write_text("x")
    (intel / ".bundles.json").write_text("{}")
    assert intel_paths(c) == ["/etc/watchpost/local.list", str(intel / "hub.list")]


def test_apply_config_runs_in_the_main_loop_when_running(tmp_path: Path) -> None:
    svc = view(cfg(tmp_path), running=True)
    dev = ServiceDevice(svc)
    new = from_dict({"device": {"id": "d"}, "inline": {"workers": 2}})
    done = threading.Event()

    def worker() -> None:
        dev.apply_config(new)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    while not done.is_set():  # the "main loop"
        dev.tick(0.0)
        done.wait(0.01)
    t.join()
    assert svc.applied == [new] and svc.applied_in is threading.main_thread()


def test_apply_config_refusal_and_timeout(tmp_path: Path) -> None:
    svc = view(cfg(tmp_path), refuse_config="refused by a component")
    dev = ServiceDevice(svc, call_timeout=0.05)
    with pytest.raises(ConfigError, match="inline.workers: refused by a component"):
        dev.apply_config(from_dict({"device": {"id": "d"}, "inline": {"workers": 7}}))
    svc.refuse_config = ""
    svc.running = True
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            dev.apply_config(from_dict({"device": {"id": "d"}, "inline": {"workers": 2}}))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert isinstance(errors[0], TimeoutError) and "nothing was changed" in str(errors[0])
    dev.tick(0.0)  # the cancelled call is not run late
    assert svc.applied == []


def test_block_unblock(tmp_path: Path) -> None:
    svc = view(cfg(tmp_path))
    dev = ServiceDevice(svc)
    dev.block("203.0.113.9", 60)
    assert svc.blocked == {"203.0.113.9": 60}
    with pytest.raises(ValueError, match="never_block"):
        dev.block("198.18.0.1", 60)
    assert dev.unblock("203.0.113.9") and not dev.unblock("203.0.113.9")
    svc.firewall_error = "nft: Error: Could not process rule"
    with pytest.raises(OSError, match="Could not process"):
        dev.block("203.0.113.9", 60)
    with pytest.raises(OSError, match="Could not process"):
        dev.unblock("203.0.113.9")


def test_reload_intel_swaps_or_keeps_old(tmp_path: Path) -> None:
    local = tmp_path / "local.list"
    local.write_text("192.0.2.1\n")
    c = cfg(tmp_path, [str(local)])
    manager = IntelManager(c.intel.paths, cache=False)
    manager.load()
    svc = view(c, intel=manager)
    dev = ServiceDevice(svc)
    bundles = tmp_path / "state" / "intel"
    bundles.mkdir(parents=True)
    (bundles / "hub.list").write_text("evil.example.com\n")
    version = dev.reload_intel()
    assert version == manager.version != "empty"
    assert manager.store.match_domain("a.evil.example.com") is not None
    assert manager.paths == (str(local), str(bundles / "hub.list"))
    svc.intel = None
    with pytest.raises(ValueError, match="not running"):
        dev.reload_intel()


def test_leds_ack_identify_restart_reboot_status(tmp_path: Path) -> None:
    leds = StubLeds()
    svc = view(cfg(tmp_path), leds=leds)
    later: list[tuple[float, Any]] = []
    dev = ServiceDevice(svc, timer=lambda d, fn: later.append((d, fn)), reboot_command=("true",))
    assert dev.ack_alerts(None) == 3
    dev.identify(10)
    assert leds.identified == [10]
    dev.restart()
    dev.reboot()
    assert [d for d, _ in later] == [2.0, 2.0] and svc.stops == 0  # nothing before the answer
    later[0][1]()
    later[1][1]()  # runs `true`
    assert svc.stops == 1
    assert dev.status() == {"state": "running", "mode": "monitor"}
    svc.leds = None
    with pytest.raises(NotImplementedError, match="no LEDs"):
        dev.identify(5)
    assert dev.ack_alerts(["x"]) == 0


def test_real_timer_runs_later() -> None:
    fired = threading.Event()
    dev_mod._start_timer(0.01, fired.set)
    assert fired.wait(5)


class FakeLink:
    def __init__(self) -> None:
        self.handler: Any = None

    def set_handler(self, handler: Any) -> None:
        self.handler = handler
        handler.attach(lambda sub, payload, retain: None)


def hub_cfg(tmp_path: Path, pubkey: Path) -> Config:
    return from_dict(
        {
            "device": {"id": "d", "state_dir": str(tmp_path / "state")},
            "hub": {"host": "192.0.2.10", "command_pubkey": str(pubkey)},
        }
    )


def test_remote_management_component_attaches_a_handler_to_the_link(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol import envelope as E

    key = Ed25519PrivateKey.generate()
    (tmp_path / "command.pub").write_bytes(E.public_pem(key))
    c = hub_cfg(tmp_path, tmp_path / "command.pub")
    link = FakeLink()
    assert dev_mod.component(cfg(tmp_path), link) is None  # no hub, no remote management
    rm = dev_mod.component(c, link)
    assert rm is not None
    svc = view(c, components=[rm])
    rm.start(svc)
    try:
        assert link.handler is rm.handler and rm.handler is not None
        done = threading.Event()
        answers: list[dict[str, Any]] = []

        def reply(a: dict[str, Any]) -> None:
            answers.append(a)
            done.set()

        link.handler.on_command(E.encode(E.make("d", "status", {}, key, seq=1)), reply)
        assert done.wait(5)
        assert answers[0]["ok"] is True and answers[0]["result"]["state"] == "running"
        assert rm.stats()["remote_management"]["commands_accepted"] == 1
        svc.tick(0.0)
    finally:
        rm.stop()


def test_remote_management_without_key_or_link(tmp_path: Path) -> None:
    c = hub_cfg(tmp_path, tmp_path / "missing.pub")
    rm = dev_mod.RemoteManagement(c, FakeLink())
    rm.start(view(c, components=[rm]))
    assert rm.stats() == {
        "remote_management": {
            "enabled": False,
            "problem": f"command public key {tmp_path / 'missing.pub'}: no such file",
        }
    }
    rm.tick(0.0, {})
    rm.stop()
    alone = dev_mod.RemoteManagement(c, None)
    alone.start(view(c, components=[alone]))
    assert "no hub link" in alone.stats()["remote_management"]["problem"]


def test_close_cancels_calls_waiting_for_the_main_loop(tmp_path: Path) -> None:
    svc = view(cfg(tmp_path), running=True)
    dev = ServiceDevice(svc)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            dev.apply_config(from_dict({"device": {"id": "d"}, "inline": {"workers": 2}}))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    while dev._calls.empty() and t.is_alive():
        t.join(0.01)
    dev.close()
    t.join(5)
    assert isinstance(errors[0], TimeoutError) and "stopping" in str(errors[0])
    assert svc.applied == []
