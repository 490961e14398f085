"""LED state machine on gpiozero's MockFactory: what the office owner would see."""

from __future__ import annotations

import time

from gpiozero.pins.mock import MockFactory

from appliance.config import LedsConfig
from appliance.leds import BLINK, FAST, OFF, ON, Leds


def make() -> tuple[Leds, MockFactory]:
    factory = MockFactory()
    return Leds(LedsConfig(), factory=factory), factory


def pin(factory: MockFactory, n: int) -> bool:
    return bool(factory.pin(n).state)


def test_health_link_and_alerts() -> None:
    leds, f = make()
    leds.update({"running": True, "hub": {"enabled": True, "connected": True}, "alerts_high": 0})
    assert leds.shown() == {"green": ON, "amber": ON, "red": OFF}
    assert pin(f, 17) and pin(f, 27) and not pin(f, 22)
    leds.update({"running": True, "hub": {"enabled": True, "connected": False}, "alerts_high": 2})
    assert leds.shown()["amber"] == BLINK and leds.shown()["red"] == BLINK
    assert leds.unacked_alerts == 2
    leds.update({"running": True, "hub": {"enabled": False}, "alerts_high": 2})
    assert leds.shown()["amber"] == OFF and leds.shown()["red"] == BLINK
    leds.close()


def test_button_acknowledges() -> None:
    leds, f = make()
    leds.update({"alerts_high": 0})
    leds.update({"alerts_high": 3})
    assert leds.shown()["red"] == BLINK
    f.pin(3).drive_low()  # press (the button pulls up; pressed = low)
    time.sleep(0.1)
    f.pin(3).drive_high()
    deadline = time.monotonic() + 2
    while leds.unacked_alerts and time.monotonic() < deadline:
        time.sleep(0.02)
    assert leds.unacked_alerts == 0
    leds.update({"alerts_high": 3})
    assert leds.shown()["red"] == OFF
    leds.close()


def test_fail_open_is_a_fault_and_identify_blinks_all() -> None:
    leds, _ = make()
    leds.update({"fail_open_events": 0})
    leds.update({"fail_open_events": 5})
    assert leds.shown()["red"] == ON and "fail-open" in leds.fault
    leds.identify(5)
    assert leds.shown() == {"green": FAST, "amber": FAST, "red": FAST}
    leds.identify(0)
    assert leds.shown()["red"] == ON
    assert leds.stats()["leds_mock"] is True
    leds.stop()
    assert leds.shown() == {"green": OFF, "amber": OFF, "red": OFF}


def test_the_fault_pattern_blinks_red_and_turns_the_others_off() -> None:
    import threading

    from gpiozero.pins.mock import MockFactory

    from appliance.config import Config
    from appliance.leds import show_fault

    pins = MockFactory()
    stop = threading.Event()
    seen: dict[str, object] = {}

    def watch() -> None:
        import time

        states = set()
        for _ in range(40):
            states.add(pins.pin(Config().leds.red).state)
            time.sleep(0.02)
        seen["red"] = states
        seen["green"] = pins.pin(Config().leds.green).state
        stop.set()

    t = threading.Thread(target=watch)
    t.start()
    assert show_fault(Config(), stop, factory=pins)["red"] == "blinking"
    t.join()
    assert seen["red"] == {0, 1} and seen["green"] == 0


def test_bridged_traffic_bypassing_netfilter_is_a_fault_on_the_leds_and_page() -> None:
    from gpiozero.pins.mock import MockFactory

    from appliance.config import Config
    from appliance.leds import Leds
    from appliance.status import present

    leds = Leds(Config().leds, factory=MockFactory())
    why = "net.bridge.bridge-nf-call-iptables is 0: bridged traffic bypasses inspection"
    leds.update({"running": True, "bridge_netfilter": why})
    assert leds.shown()["red"] == "on" and leds.fault == why
    page = present.overview({"state": "running", "running": True, **leds.stats()}, 0.0, 0.0)
    assert page["health"] == "bad" and why in page["headline"]
    leds.update({"running": True, "bridge_netfilter": ""})
    assert leds.shown()["red"] == "off" and not leds.fault
