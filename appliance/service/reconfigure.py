"""Live reconfiguration (SIGHUP, the hub's set-config): all or nothing.

Everything that can refuse a new config is asked first (the bridge ports exist, the ruleset can
be built, every component's `configure`); a component that refuses gets the others put back.
Only then do the pipeline, engine, queues, ruleset and intel take it; if applying fails half-way
the previous config is applied again.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from appliance.alerts.pipeline import EveFile
from appliance.component import Component
from appliance.config import Config, ConfigError
from appliance.config import load_running as load_config
from appliance.hublink.device import intel_paths
from appliance.inline.firewall import FirewallError, RulesetSpec
from appliance.inline.ports import resolve as resolve_ports

if TYPE_CHECKING:
    from appliance.service.daemon import Service

log = logging.getLogger(__name__)

QUEUE_KEYS = ("queue", "workers", "queue_maxlen")  # changing one of these rebinds the queues


def reload(service: Service) -> bool:
    """Re-read the config file and intel; a bad config is refused and the old one kept."""
    cfg = service.config
    try:
        # inline.uplink/office = "auto" are found again (a USB NIC may have been replaced).
        new = resolve_ports(load_config(cfg.source)) if cfg.source else cfg
    except ConfigError as e:
        log.error("reload refused, keeping the running config: %s", e)
        service.counts["reloads_refused"] += 1
        return False
    try:
        apply_config(service, new)  # counts its own refusals
    except ConfigError as e:
        log.error("reload refused, keeping the running config: %s", e)
        return False
    log.info("reloaded %s", new.source or "(built-in config)")
    return True


def apply_config(service: Service, new: Config) -> None:
    """See `Service.apply_config`."""
    old = service.config
    try:
        check(service, new)
    except ConfigError:
        service.counts["reloads_refused"] += 1
        raise
    done: list[Component] = []
    for comp in service.components:
        try:
            comp.configure(new)
            done.append(comp)
        except Exception as e:
            if not isinstance(e, ConfigError):
                log.exception("component %s failed to take the new config", comp.name)
            configure_back(done, old)
            service.counts["reloads_refused"] += 1
            if isinstance(e, ConfigError):
                raise
            raise ConfigError("", f"{comp.name} failed to take the config: {e}") from None
    service.config = new
    try:
        _apply(service, old, new)
    except (OSError, FirewallError) as e:
        log.error("reload failed half-way (%s); going back to the previous config", e)
        service.config = old
        configure_back(done, old)
        try:
            _apply(service, new, old, force_queues=True)
        except (OSError, FirewallError) as e2:
            log.critical("cannot restore the previous config either: %s", e2)
        service.counts["reloads_refused"] += 1
        raise ConfigError("", f"applying it failed: {e}") from None
    service.counts["reloads"] += 1


def configure_back(components: list[Component], old: Config) -> None:
    for c in components:
        try:
            c.configure(old)
        except Exception:
            log.exception("component %s failed to go back", c.name)


def check(service: Service, new: Config) -> None:
    """Everything that can refuse `new`, checked before anything changes (ConfigError)."""
    for key in ("bridge", "office", "uplink"):
        name = getattr(new.inline, key)
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise ConfigError(f"inline.{key}", f"no network interface {name!r}") from None
    assert service.engine is not None
    try:
        RulesetSpec.from_config(new, service.firewall.native_queue(), service.engine.deep_ports())
    except FirewallError as e:
        raise ConfigError("", str(e)) from None


def _apply(service: Service, old: Config, new: Config, force_queues: bool = False) -> None:
    engine, pipeline, intel = service.engine, service.pipeline, service.intel
    assert engine is not None and pipeline is not None and intel is not None
    if new.log != old.log:
        service.setup_logging(new)
    if service.eve is not None:
        if new.log.eve != old.log.eve:
            fresh = EveFile(new.log.eve)
            pipeline.sinks = [fresh if s is service.eve else s for s in pipeline.sinks]
            service.eve.close()
            service.eve = fresh
        else:
            service.eve.reopen()  # after logrotate
    pipeline.configure(new)
    engine.configure(new)
    service.fresh_flows()  # judge every flow again under the new config
    service.firewall.config = new
    if force_queues or any(getattr(new.inline, k) != getattr(old.inline, k) for k in QUEUE_KEYS):
        log.info("queue settings changed: rebinding (traffic bypasses meanwhile)")
        service.close_queues()
        service.open_queues(new)
    elif service.queues is not None:
        service.queues.configure(new)
    service.apply_ruleset(new)
    intel.cache = new.intel.cache
    intel.reload(intel_paths(new))
