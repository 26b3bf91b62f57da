"""Search spaces: YAML files that turn config keys into distributions for Ray Tune.

A space file names the recipe it searches, the metric and its mode, and maps dotted config keys to one
distribution each::

    recipe: bag_of_tricks
    metric: eval_top1
    mode: max
    space:
      optim.lr: {loguniform: [0.025, 0.4]}
      schedule.warmup_epochs: {randint: [0, 11]}     # 0..10, the upper bound excluded as in Ray Tune
      loss.label_smoothing: {uniform: [0.0, 0.2]}
      mixup.alpha: {choice: [0.0, 0.2, 0.4]}

Distributions: ``loguniform [low, high]``, ``uniform [low, high]``, ``quniform [low, high, q]``,
``randint [low, high)``, ``choice [values...]`` and ``grid [values...]``. Loading checks each key against the
config schema, each distribution's arguments, and that every value it can produce is valid for its key (a
``ConfigError`` names the space file, the key and the problem). Shipped spaces live in ``tune_spaces/``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, _check, _coerce, _unknown, all_keys, named_yaml, read_yaml_mapping

DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "randint", "choice", "grid")
METRICS = ("eval_top1", "eval_top5", "eval_loss", "train_loss")


def space_dir() -> Path:
    """The shipped spaces: ``timm_tricks/tune_spaces`` in a wheel, the top-level ``tune_spaces/`` in a checkout."""
    packaged = Path(__file__).parent / "tune_spaces"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "tune_spaces"


def list_spaces() -> list[str]:
    """Names of the shipped search spaces."""
    return sorted(p.stem for p in space_dir().glob("*.yaml"))


@dataclass(frozen=True)
class Dimension:
    """One searched key: its distribution name and arguments."""

    key: str
    kind: str
    args: tuple

    def values_to_check(self) -> list[Any]:
        """The values whose validity bounds every value the distribution can produce."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return [self.args[0], self.args[1]]


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, validated search space."""

    name: str
    recipe: str
    metric: str
    mode: str
    dimensions: tuple[Dimension, ...]

    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def to_tune(self) -> dict[str, Any]:
        """The space as Ray Tune distributions keyed by the dotted config keys."""
        from ray import tune

        make = {
            "loguniform": lambda a: tune.loguniform(a[0], a[1]),
            "uniform": lambda a: tune.uniform(a[0], a[1]),
            "quniform": lambda a: tune.quniform(a[0], a[1], a[2]),
            "randint": lambda a: tune.randint(a[0], a[1]),
            "choice": lambda a: tune.choice(list(a)),
            "grid": lambda a: tune.grid_search(list(a)),
        }
        return {d.key: make[d.kind](d.args) for d in self.dimensions}


def _field_meta(key: str) -> tuple[Any, dict[str, Any]]:
    """The type and validation metadata of a dotted config key."""
    cls: Any = Config
    *sections, leaf = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    field = {f.name: f for f in dataclasses.fields(cls)}[leaf]
    return typing.get_type_hints(cls)[leaf], dict(field.metadata)


def _check_dimension(where: str, key: str, spec: Any) -> Dimension:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: {key} must map to one distribution, e.g. {{loguniform: [0.01, 1.0]}}; "
                          f"got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: " + _unknown(f"distribution for {key}", str(kind), list(DISTRIBUTIONS)))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {key}: {kind} needs a list of arguments, got {args!r}")
    numeric = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if kind in ("loguniform", "uniform", "randint"):
        if len(args) != 2 or not numeric or not args[0] < args[1]:
            raise ConfigError(f"{where}: {key}: {kind} needs [low, high] with low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{where}: {key}: loguniform needs low > 0, got {args!r}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}: {key}: randint needs whole-number bounds, got {args!r}")
    if kind == "quniform" and (len(args) != 3 or not numeric or not args[0] < args[1] or args[2] <= 0):
        raise ConfigError(f"{where}: {key}: quniform needs [low, high, q] with low < high and q > 0, got {args!r}")
    dim = Dimension(key, kind, tuple(args))
    t, meta = _field_meta(key)
    for value in dim.values_to_check():
        try:
            _check(key, _coerce(key, value, t), meta)
        except ConfigError as e:
            raise ConfigError(f"{where}: {kind} {args!r} for {key} reaches a value the key does not accept: {e}") \
                from None
    return dim


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load and validate a shipped space by name, or a YAML file by path."""
    path = named_yaml(name_or_path, space_dir(), "search space")
    where = f"search space {str(path)!r}"
    data = read_yaml_mapping(path, "search space")
    if not isinstance(data.get("space"), dict) or not data["space"]:
        raise ConfigError(f"{where} needs a 'space:' mapping of config keys to distributions")
    unknown_top = set(data) - {"recipe", "metric", "mode", "space"}
    if unknown_top:
        raise ConfigError(f"{where}: unknown entries {sorted(unknown_top)}; valid: recipe, metric, mode, space")
    keys = all_keys()
    dims = []
    for key, spec in data["space"].items():
        if key not in keys:
            raise ConfigError(f"{where}: " + _unknown("config key", str(key), keys))
        dims.append(_check_dimension(where, key, spec))
    metric, mode = data.get("metric", "eval_top1"), data.get("mode", "max")
    if metric not in METRICS:
        raise ConfigError(f"{where}: " + _unknown("metric", str(metric), list(METRICS)))
    if mode not in ("max", "min"):
        raise ConfigError(f"{where}: mode must be max or min, got {mode!r}")
    return SearchSpace(path.stem, str(data.get("recipe") or ""), metric, mode, tuple(dims))


def nested(trial: dict[str, Any]) -> dict[str, Any]:
    """``{'optim.lr': 0.1}`` as ``{'optim': {'lr': 0.1}}``, ready for ``load_config(recipe, **nested(...))``."""
    out: dict[str, Any] = {}
    for key, value in trial.items():
        node = out
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return out
