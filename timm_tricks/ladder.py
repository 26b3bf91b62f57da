"""Ablation ladders: YAML files that list a paper's tricks as cumulative rungs on top of a recipe.

A ladder names the recipe of its first rung, the metric, and the rungs in order; each rung's ``set`` holds dotted
config keys and is added to everything above it::

    name: bag_of_tricks
    recipe: bag_of_tricks_baseline
    metric: eval_top1
    teacher: {rung: + label smoothing, set: {model.name: resnet152d_tricks}}   # for distilling rungs
    rungs:
      - name: baseline
        paper: 75.87
      - name: + zero gamma
        set: {model.zero_gamma: true}
      - name: + FP16
        needs_gpu: true
        set: {train.precision: fp16}

A rung with ``needs_gpu`` is left out, with its changes, when the trials have no GPU. :func:`plan_ladder` turns a
ladder and the command's options into one validated config per rung (the command's options win over the rungs'),
and marks a rung skipped when the options make it identical to the rung before it. Shipped ladders live in
``timm_tricks/ladders/``: ``bag_of_tricks`` (He et al., CVPR 2019, Tables 2 and 4-6) and ``myrtle_resnet9``
(Myrtle.ai, "How to train your ResNet 8").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    Config,
    ConfigError,
    _unknown,
    all_keys,
    deep_merge,
    load_config,
    named_yaml,
    parse_overrides,
    read_yaml_mapping,
)
from .tune_space import METRICS, nested

LADDER_DIR = Path(__file__).parent / "ladders"
TOP_KEYS = ("name", "description", "source", "recipe", "metric", "teacher", "rungs")
RUNG_KEYS = ("name", "set", "needs_gpu", "paper")


@dataclass(frozen=True)
class Rung:
    """One step of a ladder: its name, the config keys it changes, whether it needs a GPU, the paper's number."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    needs_gpu: bool = False
    paper: float | None = None


@dataclass(frozen=True)
class Ladder:
    """A validated ladder file."""

    name: str
    description: str
    recipe: str
    metric: str
    rungs: tuple[Rung, ...]
    teacher_rung: str | None = None
    teacher_changes: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        """Whether a higher metric is better (``max``: top-1, top-5) or a lower one (``min``: the losses)."""
        return "min" if self.metric.endswith("loss") else "max"


@dataclass
class PlannedRung:
    """A rung with the config it trains, or the reason it is skipped."""

    rung: Rung
    config: Config | None
    skipped: str | None = None


def list_ladders() -> list[str]:
    """Names of the shipped ladders."""
    return sorted(p.stem for p in LADDER_DIR.glob("*.yaml"))


def _changes(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'set' must map dotted config keys to values, got {value!r}")
    keys = all_keys()
    for key in value:
        if key not in keys and not str(key).startswith("model.kwargs."):
            raise ConfigError(f"{where}: " + _unknown("config key", str(key), keys))
    return dict(value)


def load_ladder(name_or_path: str | Path) -> Ladder:
    """Load and validate a shipped ladder by name, or a YAML file by path."""
    path = named_yaml(name_or_path, LADDER_DIR, "ladder")
    where = f"ladder {str(path)!r}"
    data = read_yaml_mapping(path, "ladder")
    if not isinstance(data.get("rungs"), list) or not data["rungs"]:
        raise ConfigError(f"{where} needs a 'rungs:' list")
    if set(data) - set(TOP_KEYS):
        raise ConfigError(f"{where}: unknown entries {sorted(set(data) - set(TOP_KEYS))}; valid: {', '.join(TOP_KEYS)}")
    if not data.get("recipe"):
        raise ConfigError(f"{where} needs a 'recipe:' for its first rung")
    metric = data.get("metric", "eval_top1")
    if metric not in METRICS:
        raise ConfigError(f"{where}: " + _unknown("metric", str(metric), list(METRICS)))
    rungs = []
    for i, entry in enumerate(data["rungs"]):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ConfigError(f"{where}: rung {i + 1} needs a 'name'")
        rung_where = f"{where}, rung {entry['name']!r}"
        if set(entry) - set(RUNG_KEYS):
            raise ConfigError(f"{rung_where}: unknown entries {sorted(set(entry) - set(RUNG_KEYS))}; "
                              f"valid: {', '.join(RUNG_KEYS)}")
        paper = entry.get("paper")
        if paper is not None and not isinstance(paper, (int, float)):
            raise ConfigError(f"{rung_where}: 'paper' must be a number, got {paper!r}")
        rungs.append(Rung(str(entry["name"]), _changes(rung_where, entry.get("set")), bool(entry.get("needs_gpu")),
                          None if paper is None else float(paper)))
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: rung names must be unique")
    teacher = data.get("teacher") or {}
    if teacher and (not isinstance(teacher, dict) or teacher.get("rung") not in names):
        raise ConfigError(f"{where}: 'teacher' needs 'rung:' naming one of the rungs ({', '.join(names)})")
    return Ladder(str(data.get("name") or path.stem), str(data.get("description", "")), str(data["recipe"]),
                  metric, tuple(rungs), teacher.get("rung"), _changes(f"{where}, teacher", teacher.get("set")))


def _config(ladder: Ladder, changes: dict[str, Any], overrides: list[str], updates: dict[str, Any]) -> Config:
    """The recipe, then the rungs' changes, then the command's ``--set`` overrides, then its flags."""
    return load_config(ladder.recipe, [], **deep_merge(deep_merge(changes, parse_overrides(overrides)), updates))


def _cumulative(ladder: Ladder, gpu: bool) -> Iterator[tuple[Rung, dict[str, Any]]]:
    """Each rung with the changes of it and of every rung above it; a rung that needs a GPU adds nothing without."""
    changes: dict[str, Any] = {}
    for rung in ladder.rungs:
        if not (rung.needs_gpu and not gpu):
            changes = deep_merge(changes, nested(rung.changes))
        yield rung, changes


def plan_ladder(ladder: Ladder, *, overrides: list[str] = (), updates: dict[str, Any] | None = None,
                gpu: bool = False) -> list[PlannedRung]:
    """One validated config per rung (None for a skipped rung, with the reason)."""
    updates = updates or {}
    planned, previous = [], None
    for rung, changes in _cumulative(ladder, gpu):
        if rung.needs_gpu and not gpu:
            planned.append(PlannedRung(rung, None, "needs a GPU (--gpus-per-trial)"))
            continue
        try:
            cfg = _config(ladder, changes, list(overrides), updates)
        except ConfigError as e:
            raise ConfigError(f"ladder {ladder.name!r}, rung {rung.name!r}: {e}") from None
        if previous is not None and cfg == previous:
            planned.append(PlannedRung(rung, None, "no change: the command's options override it"))
            continue
        planned.append(PlannedRung(rung, cfg))
        previous = cfg
    return planned


def teacher_config(ladder: Ladder, *, overrides: list[str] = (), updates: dict[str, Any] | None = None,
                   gpu: bool = False, model: str | None = None) -> Config:
    """The teacher of the distilling rungs: the ladder's ``teacher.rung`` with ``teacher.set`` (``model`` replaces
    its model). The command's options apply as to every rung (``--set model.name=...`` too), except ``--model``,
    which names the student."""
    if ladder.teacher_rung is None:
        raise ConfigError(f"ladder {ladder.name!r} has a distilling rung but no 'teacher:'; pass --teacher-checkpoint")
    changes = next(c for rung, c in _cumulative(ladder, gpu) if rung.name == ladder.teacher_rung)
    changes = deep_merge(changes, nested(ladder.teacher_changes))
    student_flags = {k: v for k, v in (updates or {}).items() if k != "model"}
    if model:
        changes = deep_merge(changes, {"model": {"name": model}})
    cfg = _config(ladder, changes, list(overrides), student_flags)
    if cfg.distill.teacher is not None:
        raise ConfigError(f"ladder {ladder.name!r}: the teacher (rung {ladder.teacher_rung!r}) distils itself")
    return cfg
