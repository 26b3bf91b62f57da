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
        paper_seconds: 95760      # optional, the source's training time (BoT Table 3: 13.3 min x 120 epochs)
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

from .choices import METRICS, metric_mode
from .config import Config, load_config
from .errors import ConfigError
from .schema import Layer, build, nest, option
from .shipped import LADDERS

LADDER_DIR = LADDERS.folder
list_ladders = LADDERS.names  # the shipped ladders


@dataclass(kw_only=True)
class RungEntry:
    """A rung in a ladder file."""

    name: str = option(doc="the rung's name, unique in the ladder")
    set: dict[str, Any] = option({}, doc="dotted config keys and the values this rung gives them")
    needs_gpu: bool = option(False, doc="left out, with its changes, when the trials have no GPU")
    paper: float | None = option(None, doc="the number the source reports for this rung")
    paper_seconds: float | None = option(None, gt=0.0, doc="the training time the source reports, in seconds")


@dataclass(kw_only=True)
class TeacherEntry:
    """The ``teacher:`` of a ladder file: the rung whose config trains the teacher, and what it changes."""

    rung: str = option(doc="naming one of the rungs")
    set: dict[str, Any] = option({}, doc="dotted config keys, e.g. the teacher's model.name")


@dataclass(kw_only=True)
class LadderFile:
    """The entries of a ladder file."""

    recipe: str = option(doc="the recipe of the first rung")
    rungs: list[RungEntry] = option([], doc="the rungs in order, each adding to those above it")
    name: str | None = option(None, doc="default: the file's name")
    description: str = option("")
    source: str = option("")
    metric: str = option("eval_top1", choices=METRICS)
    teacher: TeacherEntry | None = option(None)


@dataclass(frozen=True)
class Rung:
    """One step of a ladder: its name, the config keys it changes, whether it needs a GPU, the paper's number and
    training time."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    needs_gpu: bool = False
    paper: float | None = None
    paper_seconds: float | None = None


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
        return metric_mode(self.metric)


@dataclass
class PlannedRung:
    """A rung with the config it trains, or the reason it is skipped."""

    rung: Rung
    config: Config | None
    skipped: str | None = None


def _changes(where: str, value: dict[str, Any]) -> dict[str, Any]:
    """A rung's ``set``, each key and value checked against the config schema."""
    try:
        build(Config, nest(value), "config key")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return dict(value)


def load_ladder(name_or_path: str | Path) -> Ladder:
    """Load and validate a shipped ladder by name, or a YAML file by path."""
    path, spec = LADDERS.load(name_or_path, LadderFile)
    where = f"ladder {str(path)!r}"
    if not spec.rungs:
        raise ConfigError(f"{where} needs a 'rungs:' list")
    rungs = tuple(Rung(r.name, _changes(f"{where}, rung {r.name!r}", r.set), r.needs_gpu, r.paper, r.paper_seconds)
                  for r in spec.rungs)
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: rung names must be unique")
    teacher = spec.teacher
    if teacher is not None and teacher.rung not in names:
        raise ConfigError(f"{where}: 'teacher' needs 'rung:' naming one of the rungs ({', '.join(names)})")
    return Ladder(spec.name or path.stem, spec.description, spec.recipe, spec.metric, rungs,
                  teacher.rung if teacher else None, _changes(f"{where}, teacher", teacher.set) if teacher else {})


def _config(ladder: Ladder, layers: list[Layer], overrides: Layer, updates: Layer) -> Config:
    """The recipe, then the rungs' changes, then the command's ``--set`` overrides, then its flags."""
    return load_config(ladder.recipe, *layers, overrides, updates)


def _cumulative(ladder: Ladder, gpu: bool) -> Iterator[tuple[Rung, list[dict[str, Any]]]]:
    """Each rung with the changes of it and of every rung above it, as layers in order; a rung that needs a GPU
    adds nothing without one."""
    layers: list[dict[str, Any]] = []
    for rung in ladder.rungs:
        if not (rung.needs_gpu and not gpu):
            layers = [*layers, rung.changes]
        yield rung, layers


def plan_ladder(ladder: Ladder, *, overrides: list[str] = (), updates: dict[str, Any] | None = None,
                gpu: bool = False) -> list[PlannedRung]:
    """One validated config per rung (None for a skipped rung, with the reason)."""
    updates = updates or {}
    planned, previous = [], None
    for rung, layers in _cumulative(ladder, gpu):
        if rung.needs_gpu and not gpu:
            planned.append(PlannedRung(rung, None, "needs a GPU (--gpus-per-trial)"))
            continue
        try:
            cfg = _config(ladder, layers, overrides, updates)
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
    layers = next(c for rung, c in _cumulative(ladder, gpu) if rung.name == ladder.teacher_rung)
    layers = [*layers, ladder.teacher_changes, {"model.name": model} if model else None]
    student_flags = {k: v for k, v in (updates or {}).items() if k != "model"}
    cfg = _config(ladder, layers, overrides, student_flags)
    if cfg.distill.teacher is not None:
        raise ConfigError(f"ladder {ladder.name!r}: the teacher (rung {ladder.teacher_rung!r}) distils itself")
    return cfg
