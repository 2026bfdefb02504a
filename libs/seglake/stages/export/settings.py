"""conf/destinations.yaml: the destinations of `seglake run export` and the policies they share.

Loaded and checked before anything is read or sent: a mistake is one :class:`DestinationConfigError`
sentence naming the file, the entry and the key (with a did-you-mean for a misspelt key).
``${VAR}`` / ``${VAR:-default}`` in values are read from the environment, as in base.yaml.
A disabled destination is parsed but its type's settings are not validated (so the shipped
file works on a laptop without a webhook or a CRM).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Any

from seglake.core.config import Config, ConfigError, _interpolate, _read_yaml
from seglake.stages.export.base import DestinationConfigError
from seglake.stages.segments.validation import did_you_mean

TYPES = ("webhook", "postgres", "files")
#: keys every destination may have; the rest belong to its type (validated by its class)
COMMON_KEYS = ("type", "enabled", "channel", "segments", "triggers", "since", "send_time")
SEND_TIMES = ("peak_hour", "immediate")
POLICY_KEYS = ("frequency_caps", "priority", "quiet_hours", "default_send_hour", "unsubscribed")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Cap:
    max_messages: int
    window_days: int


@dataclass(frozen=True)
class Policies:
    caps: dict[str, Cap] = field(default_factory=dict)
    priority: tuple[str, ...] = ()
    quiet_start: time | None = None
    quiet_end: time | None = None
    quiet_channels: tuple[str, ...] = ()
    default_send_hour: int = 10
    unsubscribed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DestinationSpec:
    name: str
    type: str
    enabled: bool
    channel: str
    segments: tuple[str, ...] | None      # None = all
    triggers: tuple[str, ...] | None      # None = all
    since: date | None
    send_time: str
    settings: dict[str, Any]              # the whole entry (the type's class validates its own keys)


@dataclass(frozen=True)
class ExportSettings:
    path: Path
    destinations: dict[str, DestinationSpec]
    policies: Policies

    def enabled(self, only: str | None = None) -> list[DestinationSpec]:
        """The enabled destinations (``only``: just that one, which must exist and be enabled)."""
        if only is not None:
            if only not in self.destinations:
                raise DestinationConfigError(f"{self.path}: no destination named '{only}'"
                                             f"{did_you_mean(only, self.destinations)}; "
                                             f"defined: {', '.join(self.destinations) or 'none'}")
            if not self.destinations[only].enabled:
                raise DestinationConfigError(f"{self.path}: destination '{only}' is disabled (enabled: false)")
            return [self.destinations[only]]
        return [d for d in self.destinations.values() if d.enabled]


def unknown_key(settings: dict, known, listed=None) -> str | None:
    """"unknown key 'k' (did you mean 'x'?)." for the first key of ``settings`` not in ``known``
    (without a close match: the ``listed`` keys, default ``known``), or None."""
    for key in settings:
        if key not in known:
            hint = did_you_mean(key, known) or f" (known keys: {', '.join(sorted(listed or known))})"
            return f"unknown key '{key}'{hint}."
    return None


def destinations_file(cfg: Config) -> Path:
    name = Path(str(cfg.get("export.destinations_file") or "destinations.yaml"))
    return name if name.is_absolute() else cfg.conf_file(str(name))


def load(cfg: Config, path: Path | None = None) -> ExportSettings:
    """Parse and check conf/destinations.yaml (or ``path``)."""
    path = path or destinations_file(cfg)
    try:
        raw = _interpolate(_read_yaml(path), path)
    except ConfigError as exc:
        raise DestinationConfigError(str(exc)) from None
    unknown = set(raw) - {"destinations", "policies"}
    if unknown:
        key = sorted(unknown)[0]
        raise DestinationConfigError(f"{path}: unknown top-level key '{key}'"
                                     f"{did_you_mean(key, ['destinations', 'policies'])}")
    entries = raw.get("destinations") or {}
    if not isinstance(entries, dict):
        raise DestinationConfigError(f"{path}: 'destinations' must be a mapping of name -> settings")
    specs = {name: _destination(path, name, entry) for name, entry in entries.items()}
    return ExportSettings(path, specs, _policies(path, raw.get("policies") or {}))


def _names(path: Path, where: str, value: Any) -> tuple[str, ...] | None:
    if value is None or value == "all":
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DestinationConfigError(f"{path}: {where} must be 'all' or a list of names, got {value!r}")
    return tuple(value)


def _destination(path: Path, name: str, entry: Any) -> DestinationSpec:
    where = f"destination '{name}'"
    if not isinstance(name, str) or not _NAME.match(name):
        raise DestinationConfigError(f"{path}: destination name {name!r} must be lowercase letters, digits, '_'")
    if not isinstance(entry, dict):
        raise DestinationConfigError(f"{path}: {where} must be a mapping of settings")
    kind = entry.get("type")
    if kind not in TYPES:
        raise DestinationConfigError(f"{path}: {where}: type must be one of {', '.join(TYPES)}, got {kind!r}"
                                     f"{did_you_mean(kind, TYPES) if kind else ''}")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise DestinationConfigError(f"{path}: {where}: enabled must be true or false, got {enabled!r}")
    send_time = entry.get("send_time", "immediate")
    if send_time not in SEND_TIMES:
        raise DestinationConfigError(f"{path}: {where}: send_time must be one of {', '.join(SEND_TIMES)}, "
                                     f"got {send_time!r}{did_you_mean(send_time, SEND_TIMES)}")
    since = entry.get("since")
    if since is not None and not isinstance(since, date):
        try:
            since = date.fromisoformat(str(since))
        except ValueError:
            raise DestinationConfigError(f"{path}: {where}: since must be a date YYYY-MM-DD, got {since!r}") from None
    channel = entry.get("channel") or kind
    if not isinstance(channel, str) or not _NAME.match(channel):
        raise DestinationConfigError(f"{path}: {where}: channel must be a lowercase name, got {channel!r}")
    return DestinationSpec(name, kind, enabled, channel, _names(path, f"{where}: segments", entry.get("segments", "all")),
                           _names(path, f"{where}: triggers", entry.get("triggers", "all")), since, send_time,
                           dict(entry))


def _clock(path: Path, key: str, value: Any) -> time:
    if isinstance(value, int) and 0 <= value < 24 * 60:   # YAML 1.1 reads 21:00 unquoted as 1260 (sexagesimal)
        return time(value // 60, value % 60)
    m = _HHMM.match(str(value))
    if not m:
        raise DestinationConfigError(f"{path}: policies: quiet_hours.{key} must be a time \"HH:MM\", got {value!r}")
    return time(int(m.group(1)), int(m.group(2)))


def _policies(path: Path, raw: Any) -> Policies:
    if not isinstance(raw, dict):
        raise DestinationConfigError(f"{path}: 'policies' must be a mapping")
    unknown = set(raw) - set(POLICY_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise DestinationConfigError(f"{path}: policies: unknown key '{key}'{did_you_mean(key, POLICY_KEYS)}")
    caps = {}
    for channel, cap in (raw.get("frequency_caps") or {}).items():
        if not isinstance(cap, dict) or set(cap) != {"max_messages", "window_days"}:
            raise DestinationConfigError(f"{path}: policies: frequency_caps.{channel} must be "
                                         f"{{max_messages: N, window_days: D}}, got {cap!r}")
        n, d = cap["max_messages"], cap["window_days"]
        if not (isinstance(n, int) and n >= 0 and isinstance(d, int) and d >= 1):
            raise DestinationConfigError(f"{path}: policies: frequency_caps.{channel} needs max_messages >= 0 "
                                         f"and window_days >= 1 (whole numbers), got {cap!r}")
        caps[channel] = Cap(n, d)
    priority = raw.get("priority") or []
    if not isinstance(priority, list) or not all(isinstance(p, str) for p in priority):
        raise DestinationConfigError(f"{path}: policies: priority must be a list of trigger/segment names")
    quiet = raw.get("quiet_hours") or {}
    start = end = None
    channels: tuple[str, ...] = ()
    if quiet:
        if not isinstance(quiet, dict) or not {"start", "end"} <= set(quiet) or set(quiet) - {"start", "end", "channels"}:
            raise DestinationConfigError(f"{path}: policies: quiet_hours must be "
                                         f"{{start: \"HH:MM\", end: \"HH:MM\", channels: [...]}}, got {quiet!r}")
        start, end = _clock(path, "start", quiet["start"]), _clock(path, "end", quiet["end"])
        channels = tuple(quiet.get("channels") or ())
    hour = raw.get("default_send_hour", 10)
    if not (isinstance(hour, int) and 0 <= hour <= 23):
        raise DestinationConfigError(f"{path}: policies: default_send_hour must be an hour 0-23, got {hour!r}")
    unsub = raw.get("unsubscribed") or {}
    if not isinstance(unsub, dict):
        raise DestinationConfigError(f"{path}: policies: unsubscribed must map channel -> list path")
    return Policies(caps, tuple(priority), start, end, channels, hour,
                    {c: str(p) for c, p in unsub.items() if p})
