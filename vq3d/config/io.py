"""Building a config: a preset, then YAML files, then `--set section.key=value` overrides, each
value checked against the schema's type (an unknown key or a wrong type raises `ConfigError`
naming the key); and a run's resolved config written beside it (`save_config`) and read back
(`from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from vq3d.config.presets import PRESETS
from vq3d.config.schema import Config, ConfigError
from vq3d.config.validate import validate


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert `value` to the annotated type `tp`, raising ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            if option is type(None) and value is None:
                return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] if not isinstance(value, str) else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
            return math.inf
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _set(obj: Any, path: list[str], value: Any, full_key: str) -> None:
    name = path[0]
    names = [f.name for f in dataclasses.fields(obj)]
    if name not in names:
        prefix = full_key[: len(full_key) - len(".".join(path))] or ""
        raise ConfigError(
            f"unknown config key '{full_key}': '{name}' is not one of "
            f"{', '.join(prefix + n for n in names)}"
        )
    hints = typing.get_type_hints(type(obj))
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"{full_key}: expected a mapping of fields, got {value!r}")
            for k, v in value.items():
                _set(current, [str(k)], v, f"{full_key}.{k}")
            return
        _set(current, path[1:], value, full_key)
        return
    if len(path) > 1:
        raise ConfigError(f"unknown config key '{full_key}': '{name}' has no sub-keys")
    setattr(obj, name, _coerce(full_key, value, hints[name]))


def apply_dict(cfg: Config, values: dict[str, Any]) -> Config:
    """Override `cfg` in place from a nested mapping (as read from YAML); returns `cfg`."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config file must hold a mapping, got {type(values).__name__}")
    for key, value in values.items():
        if key == "preset":
            continue
        _set(cfg, str(key).split("."), value, str(key))
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings; values are parsed as YAML scalars or lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {err}") from None
        _set(cfg, key.split("."), value, key)
    return cfg


def load_config(
    preset: str | None = None, files: list[str | Path] = (), overrides: list[str] = ()
) -> Config:
    """Build a config: preset (default: the one a file names, else `paper`), files, overrides."""
    file_values = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        file_values.append(values)
    if preset is None:
        named = [v.get("preset") for v in file_values if isinstance(v, dict) and "preset" in v]
        preset = named[-1] if named else "paper"
        if not named and file_values:  # every key the files leave out takes the paper's value
            warnings.warn(f"no preset given and {', '.join(str(f) for f in files)} names none: starting "
                          "from the paper preset (GPU sizes); add `preset: demo` to the file or pass --preset",
                          stacklevel=2)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]()
    for values in file_values:
        apply_dict(cfg, values)
    apply_overrides(cfg, list(overrides))
    return validate(cfg)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists, inf stays a float) for YAML/JSON."""
    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [convert(x) for x in v]
        return v

    return convert(cfg)


# Fields that earlier versions wrote into run configs and that are gone; none of them changed
# what a run did, so reading an old run's config drops them.
RETIRED_FIELDS: tuple[tuple[str, str], ...] = (("render", "train_render_size"),)


def from_dict(values: dict[str, Any]) -> Config:
    """Inverse of `to_dict` (a run's saved config). A field the dict lacks (one added after the
    run was written) keeps its dataclass default, which leaves a newer feature off, so an older
    run resumes as it was trained rather than with its preset's current values."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for section, name in RETIRED_FIELDS:
        if isinstance(values.get(section), dict):
            values[section].pop(name, None)
    preset = values.get("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    cfg = apply_dict(Config(preset=preset), values)
    missing = _missing_fields(Config(), values)
    if missing:
        warnings.warn(f"the saved config lacks {', '.join(missing)} (added after it was written): they take "
                      "the schema's defaults, which leave newer features off", stacklevel=2)
    return validate(cfg)


def _missing_fields(node: Any, values: Any, prefix: str = "") -> list[str]:
    """The "section.key" fields of the dataclass `node` that the mapping `values` does not hold."""
    if not isinstance(values, dict):
        return []
    missing = []
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        if f.name not in values:
            missing.append(key)
        elif dataclasses.is_dataclass(getattr(node, f.name)):
            missing += _missing_fields(getattr(node, f.name), values[f.name], key + ".")
    return missing


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from vq3d.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
