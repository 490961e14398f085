"""Remote config changes (`set-config`, `set-mode`, `config/desired`): the allow-list check, the
live apply and the overlay save, all or nothing; and what of the config may leave the device."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from appliance import config as config_mod
from appliance.config import Config, ConfigError, RemoteRefused
from appliance.hublink.command_api import FAILED, INVALID, REFUSED, CommandFailed, Device

log = logging.getLogger(__name__)

REDACTED = "<redacted>"
# Secrets never leave the device; a set-config carrying REDACTED for one keeps the current value.
SECRET_KEYS = (("privacy", "key"), ("status", "password_hash"))


def redacted(config: Config) -> dict[str, Any]:
    """The TOML-shaped config with secrets replaced by REDACTED (what may leave the device)."""
    data = config.to_dict()
    for section, key in SECRET_KEYS:
        if data.get(section, {}).get(key):
            data[section][key] = REDACTED
    return data


def drop_redacted(changes: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in changes.items()}
    for section, key in SECRET_KEYS:
        sec = out.get(section)
        if isinstance(sec, dict) and sec.get(key) == REDACTED:
            del sec[key]
            if not sec:
                del out[section]
    return out


def apply_changes(
    device: Device, changes: Mapping[str, Any], commit: Callable[[], None] | None = None
) -> tuple[Config, bool]:
    """Check `changes` against the remote allow-list, validate the whole result, apply it
    live, save it as the overlay under the state dir; all or nothing. `commit` (the desired
    version's save) runs last; if it fails the change is undone."""
    current = device.config
    if not isinstance(changes, Mapping):
        raise CommandFailed(INVALID, "set-config: args must be a TOML-shaped table")
    changes = drop_redacted(changes)
    try:
        new = config_mod.remote_merged(current, changes)
    except RemoteRefused as e:
        raise CommandFailed(REFUSED, f"refused: {e}") from None
    except ConfigError as e:
        raise CommandFailed(INVALID, f"invalid config: {e}") from None
    if new == current:
        if commit is not None:
            _commit_or_fail(commit)
        return current, False
    try:
        device.apply_config(new)
    except ConfigError as e:
        raise CommandFailed(REFUSED, f"refused by the device: {e}") from None
    except Exception as e:
        _restore(device, current)
        raise CommandFailed(FAILED, f"applying the config failed, change undone: {e}") from e
    try:
        config_mod.save_remote(new)
    except (OSError, ConfigError) as e:
        _restore(device, current)
        raise CommandFailed(FAILED, f"could not save the config, change undone: {e}") from e
    if commit is not None:
        try:
            _commit_or_fail(commit)
        except CommandFailed:
            _restore(device, current)
            with contextlib.suppress(OSError, ConfigError):
                config_mod.save_remote(current)
            raise
    log.info("config changed: %s", ", ".join(sorted(new.changed_sections(current))))
    return new, True


def _commit_or_fail(commit: Callable[[], None]) -> None:
    try:
        commit()
    except OSError as e:
        raise CommandFailed(
            FAILED, f"cannot save the replay state ({e.strerror or e}); change undone"
        ) from None


def _restore(device: Device, previous: Config) -> None:
    try:
        device.apply_config(previous)
    except Exception:
        log.exception("could not restore the previous config after a failed change")
