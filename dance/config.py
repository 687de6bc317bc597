"""Typed config dataclasses for components, with one description per field.

Every component (policy, sampler, reward, advantage estimator, trainer) owns a dataclass whose
fields are declared with :func:`option`. The description and the allowed range live next to the
default, so the CLI (`dance plugins --options`), the validation and the docs read from one place.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any

from dance.errors import ConfigError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple[Any, ...] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    allow_nonfinite: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """Declare a config field with its description and allowed values.

    Numbers must be finite (no inf or nan, which would train garbage without any other error)
    unless ``allow_nonfinite`` says the field gives them a meaning."""
    meta = {
        "help": help,
        "choices": choices,
        "gt": gt,
        "ge": ge,
        "lt": lt,
        "le": le,
        "allow_nonfinite": allow_nonfinite,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class FieldInfo:
    name: str
    type: str
    default: Any
    help: str


def describe(config_class: type) -> list[FieldInfo]:
    """The fields of a config dataclass with their type, default and description."""
    hints = typing.get_type_hints(config_class)
    out = []
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(
            FieldInfo(f.name, _type_name(hints[f.name]), default, f.metadata.get("help", ""))
        )
    return out


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML/CLI value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(v, item_tp, where) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def validate(config: Any, prefix: str = "") -> None:
    """Check every field against the range and choices declared with :func:`option`."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        where = f"{prefix}{f.name}"
        meta = f.metadata
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{where} must be one of {allowed}, got {value!r}")
        if not meta.get("allow_nonfinite", False):
            _check_finite(value, where)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"{where} must be a number, got nan")
            if meta.get("gt") is not None and not value > meta["gt"]:
                raise ConfigError(f"{where} must be greater than {meta['gt']}, got {value}")
            if meta.get("ge") is not None and not value >= meta["ge"]:
                raise ConfigError(f"{where} must be at least {meta['ge']}, got {value}")
            if meta.get("lt") is not None and not value < meta["lt"]:
                raise ConfigError(f"{where} must be less than {meta['lt']}, got {value}")
            if meta.get("le") is not None and not value <= meta["le"]:
                raise ConfigError(f"{where} must be at most {meta['le']}, got {value}")
    check = getattr(config, "check", None)
    if callable(check):
        check()


def _check_finite(value: Any, where: str) -> None:
    """Raise unless every float in ``value`` (a number, or a list, tuple or table of them) is
    finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_finite(item, where)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")


def build(config_class: type, values: Mapping[str, Any] | None = None, prefix: str = "") -> Any:
    """Build and validate a config from a mapping, rejecting unknown keys with a suggestion."""
    values = dict(values or {})
    hints = typing.get_type_hints(config_class)
    names = [f.name for f in dataclasses.fields(config_class)]
    kwargs = {}
    for key, value in values.items():
        key_norm = key.replace("-", "_")
        if key_norm not in names:
            raise ConfigError(
                f"unknown config field '{prefix}{key}'.{did_you_mean(key_norm, names)}"
                f" Known fields: {', '.join(names) or 'none'}."
            )
        kwargs[key_norm] = _coerce(value, hints[key_norm], f"{prefix}{key}")
    try:
        config = config_class(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix.rstrip('.') or config_class.__name__}: {exc}") from None
    validate(config, prefix)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass, ready for TOML (tuples become lists, None is dropped)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def parse_value(text: str) -> Any:
    """Parse the value of a `key=value` override as TOML when it is valid TOML, else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
