"""Typed configuration from plain dicts: dataclasses checked key by key, with did-you-mean.

A leaf of the package (it imports nothing from smartclip), so every config can use it: the
training config (``smartclip.train.config``), the data section (``smartclip.data.config``) and
the demo's (``smartclip.scenes.plan``).

- :func:`config_from_dict` builds a dataclass from a nested dict, converting values to the field
  types (``Optional``, ``Union``, ``Literal``, ``List``, ``Dict``, nested dataclasses) and raising
  :class:`ConfigError` that names the dotted key and what would be valid. An unknown key is
  answered with the close keys of its own section, or else with close keys anywhere in the
  config as full dotted paths (``train.lrr`` -> ``optim.clip.lr``).
- :func:`check_types` re-checks a config composed in code.
- :func:`apply_overrides` / :func:`set_dotted` set ``section.key`` values in a nested dict.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Dict, List, Literal, Sequence, Union

import yaml

__all__ = ["ConfigError", "config_from_dict", "config_to_dict", "check_types", "apply_overrides", "set_dotted",
           "parse_override", "dotted_keys", "non_negative"]


class ConfigError(ValueError):
    """A configuration that cannot run: names the key and what would be valid."""


# ------------------------------------------------------------------------ field types
def field_type(cls, f: dataclasses.Field):
    """The type of field ``f`` of dataclass ``cls``; ``metadata={"type": callable}`` names a
    type that is imported only when needed."""
    if "type" in f.metadata:
        return f.metadata["type"]()
    return typing.get_type_hints(cls)[f.name]


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin in (list, List):
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin in (dict, Dict):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {[f.name for f in dataclasses.fields(tp)]}"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


# --------------------------------------------------------------------------- coercion
def _coerce_union(value, tp, key: str, root):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key, root)
        except ConfigError:
            pass
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


def _coerce_literal(value, tp, key: str):
    choices = typing.get_args(tp)
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: {value!r} is not valid; choose one of {list(choices)}{hint}")
    return value


def _coerce_scalar(value, tp, key: str):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
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
        if number:
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if number:
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _coerce(value, tp, key: str, root=None):
    """``value`` converted to ``tp`` or a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        return _coerce_union(value, tp, key, root)
    if origin is Literal:
        return _coerce_literal(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        return config_from_dict(tp, value, prefix=key, root=root)
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]", root) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(value, tp, key)


# ------------------------------------------------------------------------ did you mean
def dotted_keys(cls, prefix: str = "") -> List[str]:
    """Every key of dataclass ``cls`` as a dotted path, sections and their keys alike."""
    out = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        out.append(path)
        try:
            tp = field_type(cls, f)
        except ConfigError:  # a lazily imported section that cannot load has no keys to offer
            continue
        if dataclasses.is_dataclass(tp):
            out += dotted_keys(tp, path)
    return out


def _elsewhere(root, key: str, prefix: str, limit: int = 3) -> List[str]:
    """Dotted paths, other than the keys of section ``prefix`` itself, whose last part is
    closest to ``key``."""
    scored = []
    for path in dotted_keys(root):
        section = path.rsplit(".", 1)[0] if "." in path else ""
        if section == prefix:
            continue
        score = difflib.SequenceMatcher(None, key, path.rsplit(".", 1)[-1]).ratio()
        if score >= 0.6:
            scored.append((score, path))
    if not scored:
        return []
    best = max(s for s, _ in scored)
    return [p for s, p in scored if s == best][:limit]


def _unknown_key(cls, key: str, prefix: str, root) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        hint = f" Did you mean {close[0]!r}?"
    else:
        others = _elsewhere(root if root is not None else cls, key, prefix)
        hint = f" Did you mean {' or '.join(repr(p) for p in others)}?" if others else ""
    where = f"in '{prefix}'" if prefix else "at the top level"
    return ConfigError(f"{full}: unknown key {where}.{hint} Valid keys: {names}")


# ---------------------------------------------------------------- dict <-> dataclass
def config_from_dict(cls, data: Dict[str, Any], prefix: str = "", root=None):
    """Build dataclass ``cls`` from a nested dict, checking keys and types. ``root``: the
    outermost config class, where a misplaced key's suggestions are looked for (``cls``)."""
    root = cls if root is None else root
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(cls, key, prefix, root)
        full = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(value, field_type(cls, fields[key]), full, root)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def check_types(obj, prefix: str = ""):
    """Re-check a config composed in code (``cfg.train.steps = "10"`` is caught here), nested
    sections included; values are converted in place as :func:`config_from_dict` would."""
    for f in dataclasses.fields(obj):
        full = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        tp = field_type(type(obj), f)
        if dataclasses.is_dataclass(tp) and isinstance(value, tp):
            check_types(value, full)
            continue
        setattr(obj, f.name, _coerce(value, tp, full))
    return obj


def config_to_dict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def non_negative(value, key: str):
    if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{key}: must be a finite number >= 0, got {value}")


# --------------------------------------------------------------------------- overrides
def parse_override(item: str):
    """``"key=value"`` -> ``(key, value)``, the value read as YAML (``key=`` is the empty string)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.steps=200")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""  # `key=` is the empty string; `key=null` is None
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(data: Dict[str, Any], key: str, value) -> Dict[str, Any]:
    """Set ``data[a][b][c] = value`` for ``key="a.b.c"``, creating sections on the way."""
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:i + 1])}: is a value ({child!r}), not a section; cannot set {key}")
        node = child
    node[parts[-1]] = value
    return data


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Set dotted ``key=value`` pairs in a nested dict (values parsed as YAML)."""
    for item in overrides:
        set_dotted(data, *parse_override(item))
    return data
