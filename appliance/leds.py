"""The three LEDs and the button: what the office owner glances at.

    green  health:   on = inspecting; blinking = starting or reloading; off = stopped
    amber  hub link: on = connected; blinking = trying (the reason is on the page and in the
                     status API), or the device certificate is close to its end and renewal
                     failed (appliance.hublink.renewal); off = no hub configured; a short
                     flash once a second ("wink") = not enrolled with the hub yet, or
                     enrolment failed (the page says why; see appliance.enrol)
    red    alerts:   blinking = a high-severity alert not yet acknowledged; on = a fault (traffic
                     passed uninspected: fail-open, or a component failed); off = all quiet

A short press of the button acknowledges alerts (as the hub's `ack-alerts` does). `identify`
blinks all three together so an installer can find the right box in a cupboard.

Off a Raspberry Pi there are no GPIO pins: gpiozero never falls back by itself, so we choose its
MockFactory explicitly and the state shows in the status API instead.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from gpiozero import LED, Button
from gpiozero.pins.mock import MockFactory

from appliance.component import DaemonView, Snapshot
from appliance.config import Config, LedsConfig
from appliance.enrol import state as enrol_state

log = logging.getLogger(__name__)

OFF, ON, BLINK, FAST, WINK = "off", "on", "blink", "fast", "wink"
_BLINK_TIMES = {BLINK: (0.5, 0.5), FAST: (0.15, 0.15), WINK: (0.1, 0.9)}
MODEL_FILE = Path("/proc/device-tree/model")
FAULT_HOLD = 600.0  # seconds the red LED stays on after a fail-open event


def on_raspberry_pi() -> bool:
    try:
        return "raspberry pi" in MODEL_FILE.read_text(errors="replace").lower()
    except OSError:
        return False


def pin_factory(real: bool | None = None) -> Any:
    """gpiozero's default factory on a Pi, its MockFactory anywhere else."""
    if real if real is not None else on_raspberry_pi():
        return None  # gpiozero picks lgpio/RPi.GPIO itself
    return MockFactory()


class Leds:
    """LED state machine driven by the daemon's stats snapshot once a second (a component)."""

    name = "LEDs"

    def __init__(self, config: LedsConfig, factory: Any = None) -> None:
        self.config = config
        self._factory = factory if factory is not None else pin_factory()
        self.mock = isinstance(self._factory, MockFactory)
        self.state = {"green": BLINK, "amber": OFF, "red": OFF}
        self.unacked_alerts = 0
        self.fault = ""
        self.enrol_problem: str | None = None
        # Where first-boot enrolment leaves its status (set by `component`; None: not looked at).
        self.state_dir: str | None = None
        self._identify_until = 0.0
        self._last_alerts: int | None = None
        self._last_fail_open: int | None = None
        self._fail_open_at = -1e18
        self._lock = threading.Lock()
        self._leds: dict[str, LED] = {}
        self._button: Button | None = None
        self._shown: dict[str, str] = {}
        if config.enabled:
            self._open()

    def _open(self) -> None:
        c = self.config
        for name in ("green", "amber", "red"):
            self._leds[name] = LED(getattr(c, name), pin_factory=self._factory)
        self._button = Button(c.button, pin_factory=self._factory, bounce_time=0.05)
        self._button.when_pressed = lambda: self.ack()
        self._render()

    # -- inputs ---------------------------------------------------------------------------------

    def ack(self) -> int:
        """Acknowledge alerts (button or `ack-alerts`); returns how many were outstanding."""
        with self._lock:
            n, self.unacked_alerts = self.unacked_alerts, 0
        self._render()
        return n

    def identify(self, seconds: float) -> None:
        """Blink everything fast for `seconds` (the hub's `identify` command)."""
        self._identify_until = time.monotonic() + max(0.0, min(seconds, 600.0))
        self._render()

    def update(self, stats: Snapshot) -> None:
        """Derive the LED states from the service's stats."""
        alerts = int(stats.get("alerts_high", 0) or 0)
        with self._lock:
            if self._last_alerts is not None and alerts > self._last_alerts:
                self.unacked_alerts += alerts - self._last_alerts
            self._last_alerts = alerts
        fail_open = int(stats.get("fail_open_events", 0) or 0)
        if self._last_fail_open is not None and fail_open > self._last_fail_open:
            self._fail_open_at = time.monotonic()
        self._last_fail_open = fail_open
        running = stats.get("running", True)
        hub = stats.get("hub") or {}
        self.fault = ""
        if time.monotonic() - self._fail_open_at < FAULT_HOLD:
            self.fault = "traffic passed uninspected recently (queue full: fail-open)"
        elif stats.get("bridge_netfilter"):
            self.fault = str(stats["bridge_netfilter"])  # bridged traffic bypasses inspection
        elif stats.get("component_errors"):
            self.fault = "a component failed"
        self.enrol_problem = enrol_state.problem(self.state_dir) if self.state_dir else None
        if self.enrol_problem and not hub.get("connected"):
            amber = WINK
        else:
            connected = hub.get("connected") and not hub.get("cert_problem")
            amber = OFF if not hub.get("enabled") else ON if connected else BLINK
        self.state = {
            "green": ON if running else OFF,
            "amber": amber,
            "red": ON if self.fault else BLINK if self.unacked_alerts else OFF,
        }
        self._render()

    # -- output ---------------------------------------------------------------------------------

    def shown(self) -> dict[str, str]:
        """What each LED shows now (for the status API and page)."""
        if time.monotonic() < self._identify_until:
            return {"green": FAST, "amber": FAST, "red": FAST}
        return dict(self.state)

    def _render(self) -> None:
        want = self.shown()
        if not self._leds or want == self._shown:
            return
        for name, mode in want.items():
            led = self._leds[name]
            if mode == ON:
                led.on()
            elif mode == OFF:
                led.off()
            else:
                on_t, off_t = _BLINK_TIMES[mode]
                led.blink(on_time=on_t, off_time=off_t, background=True)
        self._shown = want

    # -- component hooks (appliance.component.Component) -----------------------------------------

    def start(self, view: DaemonView) -> None:
        pass  # driven by the snapshot each tick hands it

    def tick(self, now: float, snapshot: Snapshot) -> None:
        self.update(snapshot)

    def configure(self, config: Config) -> None:
        if config.leds != self.config:
            self.close()
            self.config = config.leds
            self._shown = {}
            if config.leds.enabled:
                self._open()

    def stop(self) -> None:
        self.state = {"green": OFF, "amber": OFF, "red": OFF}
        self._identify_until = 0.0
        self._render()
        self.close()

    def close(self) -> None:
        for dev in [*self._leds.values(), self._button]:
            if dev is not None:
                dev.close()
        self._leds = {}
        self._button = None

    def stats(self) -> dict[str, Any]:
        return {
            "leds": self.shown(),
            "leds_mock": self.mock,
            "unacked_alerts": self.unacked_alerts,
            "fault": self.fault,
            "enrol_problem": self.enrol_problem or "",
        }


def component(config: Config) -> Leds | None:
    """The daemon's factory (appliance.service.wiring): None when LEDs are disabled."""
    if not config.leds.enabled:
        return None
    leds = Leds(config.leds)
    leds.state_dir = config.device.state_dir  # where first-boot enrolment leaves its status
    return leds


def show_fault(config: Config, stop: threading.Event, factory: Any = None) -> dict[str, Any]:
    """The fault pattern while the daemon is down (watchpost-fault.service): red blinking fast,
    green and amber off, until `stop` is set. Returns the LEDs' last state (for tests)."""
    pins = pin_factory() if factory is None else factory
    c = config.leds
    red = LED(c.red, pin_factory=pins)
    others = [LED(c.green, pin_factory=pins), LED(c.amber, pin_factory=pins)]
    try:
        for led in others:
            led.off()
        red.blink(on_time=0.15, off_time=0.15)
        stop.wait()
        return {"red": "blinking", "green": "off", "amber": "off"}
    finally:
        for led in (red, *others):
            led.close()
