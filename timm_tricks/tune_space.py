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
``ConfigError`` names the space file, the key and the problem); the file's entries are a schema of
:mod:`timm_tricks.schema`, as the config's are. Shipped spaces live in ``tune_spaces/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .choices import DISTRIBUTIONS, METRICS, MODES
from .config import Config
from .errors import ConfigError
from .schema import build, dotted_keys, nest, option, unknown
from .shipped import SPACES

list_spaces = SPACES.names  # the shipped search spaces


@dataclass(kw_only=True)
class SpaceFile:
    """The entries of a search-space file."""

    recipe: str | None = option(None, doc="the recipe searched (the default of --recipe)")
    metric: str = option("eval_top1", choices=METRICS, doc="what the search optimises")
    mode: str = option("max", choices=MODES, doc="max: a higher metric is better")
    space: dict[str, Any] = option({}, doc="dotted config keys, each mapped to one distribution")


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


def _check_dimension(where: str, key: str, spec: Any) -> Dimension:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: {key} must map to one distribution, e.g. {{loguniform: [0.01, 1.0]}}; "
                          f"got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: " + unknown(f"distribution for {key}", str(kind), list(DISTRIBUTIONS)))
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
    for value in dim.values_to_check():
        try:
            build(Config, nest({key: value}), "config key")
        except ConfigError as e:
            raise ConfigError(f"{where}: {kind} {args!r} for {key} reaches a value the key does not accept: {e}") \
                from None
    return dim


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load and validate a shipped space by name, or a YAML file by path."""
    path, spec = SPACES.load(name_or_path, SpaceFile)
    where = f"search space {str(path)!r}"
    if not spec.space:
        raise ConfigError(f"{where} needs a 'space:' mapping of config keys to distributions")
    keys = dotted_keys(Config)
    dims = []
    for key, dist in spec.space.items():
        if key not in keys:
            raise ConfigError(f"{where}: " + unknown("config key", str(key), keys))
        dims.append(_check_dimension(where, key, dist))
    return SearchSpace(path.stem, spec.recipe or "", spec.metric, spec.mode, tuple(dims))
