"""The typed-field engine behind the config, the ladders and the search spaces.

A schema is a dataclass whose fields are made with :func:`option`: a default (none for a required entry), the
valid choices, numeric bounds and a one-line description. :func:`build` turns nested dicts (a parsed YAML file)
into an instance, checking every entry against its field's type and metadata; each mistake raises one
:class:`~timm_tricks.errors.ConfigError` naming the entry and what would be valid, with the closest valid names
(:func:`unknown`).

Settings arrive in layers (a recipe, ``key=value`` overrides, dotted or nested dicts); :func:`nest` is the one
dotted -> nested converter, :func:`merge` the one merge, and :func:`merge_layers` applies layers in order.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")
REQUIRED: Any = dataclasses.MISSING


def option(default: Any = REQUIRED, *, choices: tuple | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None, doc: str = "") -> Any:
    """A dataclass field with validation metadata (choices, numeric bounds) and a one-line description; without a
    ``default`` the entry is required. A list or dict default is copied for each instance."""
    meta = dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt, doc=doc)
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------------------------
# "did you mean"


def suggest(bad: str, pool: Iterable[str]) -> str:
    """``"; did you mean 'a' or 'b'?"`` with up to three names of ``pool`` close to ``bad`` (names with the same
    last dotted part first), or ``"."`` when none is close."""
    pool = list(dict.fromkeys(pool))
    section, _, leaf = bad.rpartition(".")
    same_leaf = [c for c in pool if c.rpartition(".")[2] == leaf and c != bad]

    def likeness(c: str) -> float:  # names in the same section are compared by their last part only
        sec, _, last = c.rpartition(".")
        return difflib.SequenceMatcher(None, *((leaf, last) if sec == section else (bad, c))).ratio()

    close = [c for c in pool if c not in same_leaf and likeness(c) >= 0.5]
    near = [c for c in close if c.rpartition(".")[0] == section] or close  # the same section's names, if any
    close = (same_leaf + sorted(near, key=likeness, reverse=True))[:3]
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."


def unknown(what: str, bad: str, valid: Iterable[str], candidates: Iterable[str] | None = None,
            valid_label: str = "Valid") -> str:
    """``unknown WHAT 'bad'; did you mean ...? Valid: ...``, suggesting from ``candidates`` (default ``valid``)."""
    valid = list(valid)
    return f"unknown {what} {bad!r}{suggest(bad, valid if candidates is None else candidates)} " \
           f"{valid_label}: {', '.join(valid)}"


# ----------------------------------------------------------------------------------------------------------------
# Layers: dotted <-> nested, merging


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in: nested mappings merge, everything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def nest(flat: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``{'optim.lr': 0.1, 'train': {'epochs': 3}}`` as ``{'optim': {'lr': 0.1}, 'train': {'epochs': 3}}``.

    Dotted keys at the top level are split; a later key wins over, or merges into, an earlier one. ``flat`` may
    also be ``(key, value)`` pairs.
    """
    out: dict[str, Any] = {}
    for key, value in flat.items() if isinstance(flat, Mapping) else flat:
        *sections, leaf = str(key).split(".")
        node = out
        for i, section in enumerate(sections):
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key!r} conflicts with the earlier value of {'.'.join(sections[:i + 1])!r}")
        node[leaf] = merge(node[leaf], value) if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping) \
            else value
    return out


def flatten(tree: Mapping[str, Any], sections: int = 1, prefix: str = "") -> dict[str, Any]:
    """The reverse of :func:`nest` for a config: ``{'optim': {'lr': 0.1}}`` as ``{'optim.lr': 0.1}``. Dicts deeper
    than ``sections`` levels (such as ``model.kwargs``) stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value and sections > 0:
            out.update(flatten(value, sections - 1, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``['optim.lr=0.2', 'mixup.alpha=0.2']`` as a nested dict; values are parsed as YAML."""
    pairs = []
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=0.2)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except RecursionError:
            raise ConfigError(f"override {key!r}: its value is nested too deeply to read") from None
        pairs.append((key, value))
    return nest(pairs)


Layer = Mapping[str, Any] | Iterable[str] | str | None


def merge_layers(*layers: Layer) -> dict[str, Any]:
    """The layers merged in order into one nested dict (a later layer wins).

    A layer is ``key=value`` strings (a list of them, or one), or a mapping with dotted or nested keys; None is
    an empty layer.
    """
    out: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if isinstance(layer, Mapping):
            out = merge(out, nest(layer))
        elif isinstance(layer, str):
            out = merge(out, parse_overrides([layer]))
        elif isinstance(layer, Iterable):
            out = merge(out, parse_overrides(layer))
        else:
            raise ConfigError(f"a config layer is key=value strings or a mapping, got {layer!r}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Building and checking


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """``(dotted key, field, type)`` of every leaf of schema ``cls`` (nested schemas are walked)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.extend(leaf_fields(t, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", f, t))
    return out


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of schema ``cls`` (the leaves; nested schemas are walked)."""
    return [key for key, _, _ in leaf_fields(cls, prefix)]


def build(cls: type[T], data: Any, what: str = "key") -> T:
    """An instance of schema ``cls`` from nested dicts; every entry is converted to its field's type and checked
    against its choices and bounds, unknown and missing entries are named (``what``: the word for an entry in
    the messages, e.g. ``config key``)."""
    return _build(cls, data, "", what, dotted_keys(cls))


def _build(cls: type[T], data: Any, prefix: str, what: str, pool: list[str]) -> T:
    where = prefix.rstrip(".")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            valid = [f"{prefix}{name}" for name in fields]
            label = f"Valid keys in {where}" if where else "Valid keys"
            raise ConfigError(unknown(what, f"{prefix}{key}", valid, valid + pool, label))
    for name, f in fields.items():
        required = f.default is REQUIRED and f.default_factory is REQUIRED
        if required and name not in data:
            doc = f" ({f.metadata['doc']})" if f.metadata.get("doc") else ""
            raise ConfigError(f"{where + ' ' if where else ''}needs a '{name}:'{doc}")
    kwargs = {name: check(f"{prefix}{name}", _convert(f"{prefix}{name}", value, hints[name], what, pool),
                          fields[name].metadata) for name, value in data.items()}
    return cls(**kwargs)


def _type_name(t: Any) -> str:
    if dataclasses.is_dataclass(t):
        return "a mapping"
    return str(t).replace("typing.", "") if not isinstance(t, type) else t.__name__


def _convert(key: str, value: Any, t: Any, what: str, pool: list[str]) -> Any:
    """``value`` converted to type ``t`` (int -> float only; a schema from a mapping), or a ConfigError naming the
    key and the type."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(key, value, arg, what, pool)
            except ConfigError:
                if dataclasses.is_dataclass(arg) and isinstance(value, Mapping):
                    raise  # the mapping's own mistake says more than "must be X | None"
        raise ConfigError(f"{key}={value!r} must be {_type_name(t)}")
    if dataclasses.is_dataclass(t):
        return _build(t, value, f"{key}.", what, pool)
    if t is Any:
        return value
    if origin is list:
        (item_t,) = typing.get_args(t)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list of {_type_name(item_t)}")
        return [_convert(f"{key}[{i}]", v, item_t, what, pool) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return dict(value)
    converted = _scalar(value, t)
    if converted is None:
        raise ConfigError(f"{key}={value!r} must be {_type_name(t)}")
    return converted[0]


def _scalar(value: Any, t: Any) -> tuple[Any] | None:
    """``(value as t,)`` for bool, int (also a whole float), float (also an int, or a string YAML 1.1 did not read
    as a number, such as ``1e-4``) and str; None if it is not one."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is bool and isinstance(value, bool) or t is str and isinstance(value, str):
        return (value,)
    if t is int and is_number and (isinstance(value, int) or value.is_integer()):
        return (int(value),)
    if t is float and is_number:
        return (float(value),)
    if t is float and isinstance(value, str):
        try:
            return (float(value),)
        except ValueError:
            return None
    return None


_BOUNDS = (
    ("ge", ">=", lambda v, b: v >= b),
    ("gt", ">", lambda v, b: v > b),
    ("le", "<=", lambda v, b: v <= b),
    ("lt", "<", lambda v, b: v < b),
)


def check(key: str, value: Any, meta: Mapping[str, Any]) -> Any:
    """``value`` if it is one of ``meta``'s choices and within its bounds, else a ConfigError naming the key."""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        hint = suggest(str(value), [str(c) for c in choices if c is not None]).rstrip(".")
        raise ConfigError(f"{key}={value!r} is not a valid choice; valid: {shown}{hint}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for name, sym, holds in _BOUNDS:
            bound = meta.get(name)
            if bound is not None and not holds(value, bound):
                raise ConfigError(f"{key}={value!r} is out of range: must be {sym} {bound}")
    return value
