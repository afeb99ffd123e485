"""Configs as frozen dataclasses, loaded from YAML with dotted ``key=value`` overrides.

A model's config is a tree of frozen dataclasses whose leaves are ints, floats, bools, strings, tuples
or ``Optional`` of those. Unknown keys are rejected with the list of valid ones, values are type-checked,
and the resolved config is written into the run directory so a run can always be reproduced.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from dismax.errors import DismaxConfigError
from dismax.models import model_module
from dismax.runs import atomic_write_text


def from_dict(cls, data: dict | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict; missing keys take the dataclass defaults."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise DismaxConfigError(f"config section '{where or '<root>'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DismaxConfigError(
            f"unknown config key '{_join(where, unknown[0])}'; valid keys of "
            f"'{where or '<root>'}' are: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        key = _join(where, name)
        if name in data:
            values[name] = _coerce(hints[name], data[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise DismaxConfigError(f"config key '{key}' is required")
    return cls(**values)


def to_dict(config) -> dict:
    """The config as plain nested dicts/lists (YAML-serialisable)."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def parse_overrides(overrides: Iterable[str]) -> dict:
    """``["train.lr=1e-4", "model.name=x"]`` → nested dict; values are parsed as YAML scalars/lists."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise DismaxConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=10)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise DismaxConfigError(f"override '{item}': cannot parse value ({exc.problem})") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DismaxConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return nested


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: values of ``update`` win, sub-dicts are merged."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise DismaxConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DismaxConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DismaxConfigError(f"config file '{path}' must contain a mapping at the top level")
    return data


def load_config(path: str | Path, overrides: Iterable[str] = (), config_class=None):
    """Load a YAML config, apply dotted overrides and build its frozen dataclass.

    Without ``config_class`` the class is the one registered for ``model.name`` (see :mod:`dismax.models`).
    """
    data = merge(read_yaml(path), parse_overrides(overrides))
    if config_class is None:
        name = (data.get("model") or {}).get("name")
        config_class = model_module(name).Config
    return from_dict(config_class, data)


def save_config(config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(config), sort_keys=False))


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(hint, value, key: str):
    """Check ``value`` against type ``hint`` (with int→float widening, list→tuple); raise for people."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except DismaxConfigError as exc:
                errors.append(str(exc))
        raise DismaxConfigError(errors[0] if errors else f"config key '{key}' has invalid value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise DismaxConfigError(f"config key '{key}' must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise DismaxConfigError(f"config key '{key}' must be a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise DismaxConfigError(f"config key '{key}' must have {len(args)} entries, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise DismaxConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise DismaxConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads '5e-5' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DismaxConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DismaxConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise DismaxConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    return value
