"""Configuration: ``conf/base.yaml`` plus an environment overlay, validated in one place.

Rules:
- an overlay may only set keys that exist in base.yaml (an unknown key is an error);
- a value must have the type of the base value (int is accepted where base has a float;
  a base value of null accepts a string or null; an empty mapping ``{}`` in base accepts
  any mapping);
- ``${VAR}`` / ``${VAR:-default}`` in strings is read from the environment (secrets live
  there only); a missing variable without default is an error;
- ``paths.lakehouse`` is required.

Every error is one ``ConfigError`` sentence naming the key and the file.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENVIRONMENTS = ("local", "prod", "cluster")
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class ConfigError(ValueError):
    """A configuration problem, explained in one sentence."""


def default_conf_dir() -> Path:
    """``$SEGLAKE_CONF_DIR``, else ./conf when present, else the repository's conf/."""
    env = os.environ.get("SEGLAKE_CONF_DIR")
    if env:
        return Path(env)
    cwd = Path.cwd() / "conf"
    if (cwd / "base.yaml").exists():
        return cwd
    return Path(__file__).resolve().parents[3] / "conf"


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"{path}: configuration file not found.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}.")
    return data


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _compatible(base: Any, value: Any) -> bool:
    if base is None:
        return value is None or isinstance(value, str)
    if value is None:
        return False
    if isinstance(base, bool) or isinstance(value, bool):
        return isinstance(base, bool) and isinstance(value, bool)
    if isinstance(base, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(base))


def _merge(base: dict, overlay: dict, source: Path, prefix: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            close = difflib.get_close_matches(str(key), [str(k) for k in base], n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint}.")
        current = base[key]
        if isinstance(current, dict) and current and isinstance(value, dict):
            out[key] = _merge(current, value, source, dotted + ".")
        elif isinstance(current, dict) and not current:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{dotted}' must be a mapping, got {_type_name(value)} {value!r}.")
            out[key] = value
        else:
            if value is None and current is not None:
                raise ConfigError(f"{source}: key '{dotted}' is required and cannot be null.")
            if not _compatible(current, value):
                want = "string or null" if current is None else _type_name(current)
                article = "an" if want[0] in "aeiou" else "a"
                raise ConfigError(
                    f"{source}: key '{dotted}' must be {article} {want}, got {_type_name(value)} {value!r}."
                )
            out[key] = value
    return out


def _interpolate(node: Any, source: Path, prefix: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, source, f"{prefix}{k}.") for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, source, prefix) for v in node]
    if isinstance(node, str) and "${" in node:
        def repl(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{source}: key '{prefix.rstrip('.')}' needs the environment variable {name}, which is not set."
            )
        value = _ENV_PATTERN.sub(repl, node)
        return value if value != "" else None
    return node


@dataclass(frozen=True)
class Config:
    """Validated configuration. ``cfg["spark"]["master"]`` or ``cfg.get("spark.master")``."""

    data: dict
    env: str
    conf_dir: Path
    sources: tuple = field(default_factory=tuple)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def lakehouse(self) -> str:
        return str(self.data["paths"]["lakehouse"])

    def path(self, name: str) -> str:
        """A path under the lakehouse, or the configured override (``landing``, ``checkpoints``)."""
        configured = self.data["paths"].get(name)
        if configured:
            return str(configured)
        defaults = {"landing": "_input/landing", "checkpoints": "_checkpoints"}
        return join(self.lakehouse, defaults.get(name, name))

    def table_path(self, table: str) -> str:
        """``silver.events`` -> ``<lakehouse>/silver/events``."""
        layer, _, name = table.partition(".")
        if not name or layer not in ("bronze", "silver", "gold", "ops"):
            raise ValueError(f"table name must be '<bronze|silver|gold|ops>.<name>', got {table!r}")
        return join(self.lakehouse, layer, name)

    def conf_file(self, name: str) -> Path:
        return self.conf_dir / name

    def with_overrides(self, overrides: dict) -> "Config":
        """A copy with ``overrides`` (nested mapping) applied and validated like an overlay."""
        merged = _merge(self.data, overrides, Path("<overrides>"))
        return Config(merged, self.env, self.conf_dir, self.sources + ("<overrides>",))


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URIs (s3a://, abfss://, dbfs:/) alike."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def load_config(env: str = "local", conf_dir: str | Path | None = None,
                overrides: dict | None = None) -> Config:
    """Load ``base.yaml`` + ``<env>.yaml`` from ``conf_dir`` and validate them."""
    if env not in ENVIRONMENTS:
        raise ConfigError(f"unknown environment '{env}': choose one of {', '.join(ENVIRONMENTS)}.")
    conf = Path(conf_dir) if conf_dir else default_conf_dir()
    base_path = conf / "base.yaml"
    base = _read_yaml(base_path)
    overlay_path = conf / f"{env}.yaml"
    merged = _merge(base, _read_yaml(overlay_path), overlay_path)
    merged = _interpolate(merged, overlay_path)
    sources: tuple = (str(base_path), str(overlay_path))
    cfg = Config(merged, env, conf, sources)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    lake = cfg.get("paths.lakehouse")
    if not lake:
        raise ConfigError(f"{overlay_path}: key 'paths.lakehouse' is required (where the Delta tables live).")
    if "://" not in str(lake) and not str(lake).startswith("dbfs:"):
        merged["paths"]["lakehouse"] = str(Path(str(lake)).expanduser().resolve())
    return cfg
