"""The typed training config: load a recipe, apply override layers, validate, and derive the scaled values.

A recipe is a YAML file of nested sections matching :class:`Config` (see ``timm_tricks/recipes/``). A recipe may
name another one in ``base:``; it then only lists what it changes. Overrides come in layers applied in order:
``dotted.key=value`` strings whose values are parsed as YAML (``optim.lr=0.2``, ``schedule.milestones=[30,60]``,
``distill.teacher=null``), or dicts with dotted or nested keys.

The sections are schemas of :mod:`timm_tricks.schema`, whose engine checks every value's type, choices and bounds;
this module adds the rules that involve more than one key and the check of model and optimizer names against
timm's registries. Every user mistake (unknown recipe, unknown key, wrong type, value out of range) raises
:class:`ConfigError` with one message naming the bad input and the valid choices; the CLI turns it into exit
status 2. The module needs neither torch nor timm until names are checked.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .choices import (
    AUGMENT_PIPELINES,
    COLOR_MODES,
    INIT_SCHEMES,
    INTERPOLATIONS,
    METRICS,
    PRECISIONS,
    SCHEDULES,
    SMOOTHING_FORMS,
    TRACKERS,
)
from .errors import ConfigError as ConfigError  # re-exported: ``from timm_tricks.config import ConfigError``
from .schema import Layer, build, dotted_keys, merge, merge_layers, option, unknown
from .schema import parse_overrides as parse_overrides  # re-exported
from .shipped import RECIPES, read_yaml_mapping

RECIPE_DIR = RECIPES.folder


@dataclass
class ModelConfig:
    """The network, created through ``timm.create_model``."""

    name: str = option("resnet50d_tricks", doc="a timm or timm_tricks model name")
    num_classes: int | None = option(None, ge=1, doc="classes; null takes the data set's")
    pretrained: bool = option(False, doc="load pretrained weights (a local file via pretrained_file)")
    pretrained_file: str | None = option(None, doc="local weights file for pretrained=true")
    drop_rate: float | None = option(None, ge=0.0, lt=1.0, doc="dropout before the classifier; null keeps the model's")
    zero_gamma: bool | None = option(None, doc="zero-init the last BN gamma of each residual branch (BoT Sec. 3.1)")
    init: str | None = option(None, choices=(*INIT_SCHEMES, None),
                               doc="weight init of the models that take it (ResNet ladder, Wider ResNet)")
    kwargs: dict[str, Any] = option({}, doc="extra keyword arguments for timm.create_model")


@dataclass
class DataConfig:
    """Where the images come from and how many go in a batch."""

    source: str = option("digits", doc="digits, synthetic[:N], folder:PATH, cifar10[:ROOT], cifar100[:ROOT], timm:NAME")
    image_size: int = option(224, ge=8, le=1024, doc="training crop size (the recipes use 32 to 331)")
    batch_size: int = option(256, ge=1, doc="global batch: per-process batch x processes x accumulation steps")
    batch_size_per_device: int | None = option(None, ge=1, doc="if set, the global batch is this x processes")
    eval_batch_size: int | None = option(None, ge=1, doc="per-process evaluation batch; null = per-process train batch")
    workers: int = option(4, ge=0, doc="DataLoader workers for file data sets")


@dataclass
class AugmentConfig:
    """Training and evaluation transforms (timm_tricks.augment)."""

    train: str = option("bot", choices=AUGMENT_PIPELINES,
                    doc="bot: BoT Sec. 2.1 pipeline; batched: Myrtle on-device crop/flip/cutout; none")
    color: str | None = option("hsv", choices=(*COLOR_MODES, None), doc="BoT colour scaling in [0.6, 1.4]")
    pca_std: float = option(0.1, ge=0.0, doc="PCA lighting noise std (BoT Sec. 2.1: 0.1); 0 disables")
    mean: list[float] | None = option(None, doc="normalisation mean (R, G, B) on the 0-1 scale; null: the pretrained "
                                      "model's, else BoT Sec. 2.1's for file data and the data set's own "
                                      "statistics for in-memory data")
    std: list[float] | None = option(None, doc="normalisation std (R, G, B) on the 0-1 scale; set together with mean")
    crop_padding: int = option(4, ge=0, doc="batched: reflect padding before the random crop")
    flip: bool = option(True, doc="random horizontal flip")
    cutout: int = option(0, ge=0, doc="batched: cutout square size; 0 disables")
    eval_resize: int | None = option(None, ge=8, doc="evaluation: shorter side before the centre crop (256 for 224); "
                                     "null: image_size / 0.875, or the pretrained model's crop_pct")
    interpolation: str | None = option(None, choices=(*INTERPOLATIONS, None),
                                       doc="resize interpolation of file data; null: bilinear, or the pretrained "
                                           "model's")


@dataclass
class OptimConfig:
    """Optimizer (timm.optim.create_optimizer_v2) and parameter groups."""

    name: str = option("sgd", doc="timm optimizer name: sgd is Nesterov SGD, momentum is plain momentum SGD")
    lr: float = option(0.1, gt=0.0, doc="peak learning rate at base_batch_size")
    base_batch_size: int = option(256, ge=1, doc="batch that lr refers to (linear scaling rule)")
    linear_scaling: bool = option(False, doc="lr x global batch / base_batch_size (BoT Sec. 3.1)")
    momentum: float = option(0.9, ge=0.0, lt=1.0, doc="momentum of the SGD optimizers (sgd, momentum)")
    weight_decay: float = option(1e-4, ge=0.0, doc="L2 weight decay (see no_bias_decay for what it applies to)")
    no_bias_decay: bool = option(False, doc="no weight decay on biases and BN gamma/beta (BoT Sec. 3.1)")
    bn_bias_lr_mult: float = option(1.0, gt=0.0, doc="learning-rate multiplier of BN biases (Myrtle: 64)")
    bn_bias_wd_mult: float = option(1.0, ge=0.0, doc="weight-decay multiplier of BN biases (Myrtle: 1/64)")


@dataclass
class ScheduleConfig:
    """Per-iteration learning-rate schedule (timm_tricks.schedule)."""

    name: str = option("cosine", choices=SCHEDULES, doc="the learning rate's shape after the warmup")
    warmup_epochs: float = option(0.0, ge=0.0, doc="linear warmup from 0 (BoT Sec. 3.1)")
    milestones: list[float] = option([30, 60, 90], doc="step: epochs at which lr is multiplied by gamma")
    gamma: float = option(0.1, gt=0.0, le=1.0, doc="step: factor applied at each milestone")
    decay_rate: float = option(0.94, gt=0.0, le=1.0, doc="exponential: factor every decay_every epochs")
    decay_every: float = option(2.0, gt=0.0, doc="exponential: epochs between decays (a staircase)")
    min_lr: float = option(0.0, ge=0.0, doc="cosine floor / linear end value (absolute lr)")
    knots: list[list[float]] = option([], doc="piecewise: [epoch, multiplier of lr] pairs")
    rescale_epochs: bool = option(False, doc="scale warmup and knots by epochs / reference_epochs (Myrtle)")
    reference_epochs: float | None = option(None, gt=0.0, doc="epoch budget the warmup and knots were written for")


@dataclass
class LossConfig:
    """Classification loss: cross-entropy with optional label smoothing (BoT Sec. 5.2)."""

    label_smoothing: float = option(0.0, ge=0.0, lt=1.0, doc="eps of label smoothing (BoT Sec. 5.5: 0.1); 0 disables")
    smoothing_form: str = option("paper", choices=SMOOTHING_FORMS,
                             doc="paper: 1-eps and eps/(K-1); uniform: torch's eps/K everywhere")


@dataclass
class MixupConfig:
    """Mixup through timm's Mixup (BoT Sec. 5.4)."""

    alpha: float = option(0.0, ge=0.0, doc="Beta(alpha, alpha); 0 disables")
    off_epochs: int = option(0, ge=0, doc="switch mixup off for the last N epochs")


@dataclass
class DistillConfig:
    """Knowledge distillation from a teacher (BoT Sec. 5.3)."""

    teacher: str | None = option(None, doc="teacher model name; null disables distillation")
    checkpoint: str | None = option(None, doc="teacher weights file")
    temperature: float = option(20.0, gt=0.0, doc="BoT Sec. 5.5: T = 20")
    weight: float = option(1.0, ge=0.0, doc="weight of the T^2-scaled soft term; the hard term has weight 1")


@dataclass
class EmaConfig:
    """Exponential moving average of the weights and buffers (BN statistics too): timm ModelEmaV3.

    Every ``every_steps`` optimizer steps, ``ema <- decay * ema + (1 - decay) * model``: the effective decay per
    step is ``decay ** (1 / every_steps)``. Myrtle post 8 (cifar10-fast ``update_ema(momentum=0.99,
    update_freq=5)``, ``bag_of_tricks.ipynb`` cells 10 and 78-85) updates every 5 steps with
    ``rho = momentum ** update_freq = 0.99 ** 5``: 0.99 per step.
    """

    enabled: bool = option(False, doc="keep an EMA of the weights; each epoch also evaluates it (ema_* metrics)")
    decay: float = option(0.9998, gt=0.0, lt=1.0, doc="decay per update (every every_steps steps)")
    every_steps: int = option(1, ge=1, doc="optimizer steps between EMA updates (Myrtle: 5)")

    @property
    def decay_per_step(self) -> float:
        """The decay of one optimizer step that ``every_steps`` updates of ``decay`` amount to."""
        return self.decay ** (1.0 / self.every_steps)


@dataclass
class EvalConfig:
    """Evaluation options."""

    tta_flip: bool = option(False, doc="average the logits of the image and its mirror (Myrtle)")


@dataclass
class TrainConfig:
    """Run-level switches read by the trainer."""

    epochs: int = option(120, ge=1, doc="epochs of the run; the schedule spans them")
    precision: str = option("no", choices=PRECISIONS, doc="mixed precision (BoT Sec. 3.2: FP16)")
    seed: int = option(0, ge=0, le=(1 << 63) - 1, doc="seeds every draw with (seed, epoch, step, process); 63 bits")
    grad_accum_steps: int = option(1, ge=1, doc="micro-batches per optimizer step (the global batch splits over them)")
    clip_grad: float | None = option(None, gt=0.0, doc="clip the gradient norm to this; null: no clipping")
    channels_last: bool = option(False, doc="channels-last memory layout (faster convolutions on recent GPUs)")
    compile: bool = option(False, doc="torch.compile the model")
    deterministic: bool = option(False, doc="deterministic GPU kernels (cuDNN, cuBLAS, torch): a resumed run matches "
                                 "the uninterrupted one bit for bit on a GPU too; slower")
    sync_bn: bool = option(False, doc="synchronise BN statistics over the processes of a multi-process run")
    checkpoint_every_steps: int | None = option(None, ge=1, doc="also checkpoint every N steps; null: each epoch's end")
    keep_checkpoints: int = option(2, ge=1, doc="newest checkpoints kept (the best one is kept besides)")
    best_metric: str = option("eval_top1", choices=METRICS,
                              doc="the epoch metric that picks checkpoints/best.txt (losses: lower is better)")
    log_every_steps: int = option(100, ge=1, doc="a progress line (and the non-finite loss check) every N steps")
    log_every_seconds: float = option(30.0, gt=0.0, doc="and a progress line at least this often (main process)")
    log_with: list[str] = option(["tensorboard"], doc="experiment trackers (accelerate's): tensorboard, wandb, "
                                 "mlflow, ...; [none] or [] for none")


@dataclass
class Config:
    """A whole training setup. ``name``, ``description`` and ``source`` document where the numbers come from."""

    name: str = option("custom", doc="the recipe's name")
    description: str = option("", doc="one line: what the recipe trains")
    source: str = option("", doc="where its numbers come from (paper, section, table)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts (YAML-ready)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML that :func:`load_config` reads back to an equal config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def global_batch_size(self, num_processes: int = 1) -> int:
        """Images per optimizer step over all processes."""
        if self.data.batch_size_per_device is not None:
            return self.data.batch_size_per_device * num_processes * self.train.grad_accum_steps
        return self.data.batch_size

    def per_device_batch_size(self, num_processes: int = 1) -> int:
        """Images per forward pass on one process; the global batch must split evenly."""
        if self.data.batch_size_per_device is not None:
            return self.data.batch_size_per_device
        parts = num_processes * self.train.grad_accum_steps
        if self.data.batch_size % parts:
            raise ConfigError(
                f"data.batch_size={self.data.batch_size} does not split over {num_processes} process(es) x "
                f"{self.train.grad_accum_steps} accumulation step(s); use a multiple of {parts}")
        return self.data.batch_size // parts

    def model_kwargs(self, num_classes: int) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model(self.model.name, **kwargs)``.

        Options left at null keep the model's own default, so ``zero_gamma`` and ``init`` reach only the models
        that take them (the ResNet ladder).
        """
        m = self.model
        kwargs: dict[str, Any] = dict(m.kwargs)
        kwargs["num_classes"] = m.num_classes or num_classes
        kwargs["pretrained"] = m.pretrained
        if m.pretrained_file:
            kwargs["pretrained_cfg_overlay"] = dict(file=m.pretrained_file)
        for key in ("drop_rate", "zero_gamma", "init"):
            if getattr(m, key) is not None:
                kwargs[key] = getattr(m, key)
        return kwargs

    def scaled_lr(self, num_processes: int = 1) -> float:
        """The peak learning rate after the linear scaling rule (BoT Sec. 3.1: 0.1 x b / 256)."""
        if not self.optim.linear_scaling:
            return self.optim.lr
        return scale_lr(self.optim.lr, self.global_batch_size(num_processes), self.optim.base_batch_size)


def scale_lr(base_lr: float, batch_size: int, base_batch_size: int = 256) -> float:
    """The linear scaling rule: ``base_lr x batch_size / base_batch_size`` (Goyal et al. 2017; He et al., "Bag of
    Tricks", CVPR 2019, Sec. 3.1: 0.1 x b / 256)."""
    return base_lr * batch_size / base_batch_size


# ----------------------------------------------------------------------------------------------------------------
# Loading


list_recipes = RECIPES.names  # the shipped recipe names


def all_keys() -> list[str]:
    """Every dotted key of the config schema."""
    return dotted_keys(Config)


def recipe_path(name_or_path: str | Path) -> Path:
    """The file of a shipped recipe name, or the given path if it is a readable YAML file."""
    return RECIPES.find(name_or_path)


def load_recipe_dict(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe as a nested dict with its ``base:`` chain merged in (the derived recipe wins)."""
    path = recipe_path(name_or_path).resolve()
    if path in _seen:
        chain = " -> ".join(p.stem for p in (*_seen, path))
        raise ConfigError(f"recipe base chain loops: {chain}")
    data = read_yaml_mapping(path)
    base = data.pop("base", None)
    data.setdefault("name", path.stem)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"'base' in recipe {str(path)!r} must be a recipe name or path, got {base!r}")
    return merge(load_recipe_dict(base_ref(path, base), (*_seen, path)), data)


def base_ref(path: Path, base: str) -> str | Path:
    """What ``base: BASE`` in the recipe at ``path`` names: a file beside it (``*.yaml``), else a recipe name."""
    return path.parent / base if base.endswith((".yaml", ".yml")) else base


def load_config(recipe: str | Path | None = None, *layers: Layer, check_names: bool = True) -> Config:
    """Load a recipe (name or path; None for the defaults), apply the override layers in order, and validate.

    Args:
        recipe: A shipped recipe name (see :func:`list_recipes`) or a YAML path.
        *layers: Overrides, each a list of ``dotted.key=value`` strings (values parsed as YAML) or a dict with
            dotted or nested keys (``{'optim.lr': 0.2}``, ``{'train': {'epochs': 3}}``); a later layer wins.
        check_names: Check the model, teacher and optimizer names against timm's registries (imports timm).

    Returns:
        The validated :class:`Config`.

    Example: ``load_config("bag_of_tricks", ["optim.lr=0.2"], {"train.epochs": 90})``.
    """
    data = load_recipe_dict(recipe) if recipe is not None else {}
    return from_dict(merge(data, merge_layers(*layers)), check_names=check_names)


def from_dict(data: dict[str, Any], check_names: bool = True) -> Config:
    """Build and validate a :class:`Config` from nested dicts (unknown keys are rejected by name)."""
    cfg = build(Config, data, "config key")
    if check_names:
        _check_names(cfg)
    _check_consistency(cfg)
    return cfg


def _check_names(cfg: Config) -> None:
    """The model, teacher and optimizer names must exist in timm's registries."""
    import timm
    from timm.optim import list_optimizers

    from . import models  # noqa: F401  (registers the *_tricks variants)

    for key, name in (("model.name", cfg.model.name), ("distill.teacher", cfg.distill.teacher)):
        if name is not None and not timm.is_model(name):
            ours = timm.list_models("*_tricks")
            raise ConfigError(unknown(key, name, ours, ours + timm.list_models(),
                                      "Valid timm_tricks models (and any name in timm.list_models())"))
    optimizers = list_optimizers()
    if cfg.optim.name.lower().split("_")[-1] not in optimizers:
        raise ConfigError(unknown("optim.name", cfg.optim.name, optimizers))


def _check_consistency(cfg: Config) -> None:
    """Rules that involve more than one key."""
    s = cfg.schedule
    for i, knot in enumerate(s.knots):
        if len(knot) != 2:
            raise ConfigError(f"schedule.knots[{i}]={knot!r} must be an [epoch, multiplier] pair")
    if s.name == "piecewise" and len(s.knots) < 2:
        raise ConfigError("schedule.name=piecewise needs schedule.knots with at least two [epoch, multiplier] pairs")
    xs = [k[0] for k in s.knots]
    if xs != sorted(xs):
        raise ConfigError(f"schedule.knots epochs must not decrease, got {xs}")
    if s.rescale_epochs and s.reference_epochs is None:
        raise ConfigError("schedule.rescale_epochs=true needs schedule.reference_epochs (the budget it was written "
                          "for)")
    if cfg.train.best_metric.startswith("ema_") and not cfg.ema.enabled:
        raise ConfigError(f"train.best_metric={cfg.train.best_metric} needs ema.enabled=true (or a metric without "
                          "ema_)")
    if cfg.mixup.off_epochs > cfg.train.epochs:
        raise ConfigError(f"mixup.off_epochs={cfg.mixup.off_epochs} exceeds train.epochs={cfg.train.epochs}")
    if cfg.schedule.warmup_epochs > cfg.train.epochs and not s.rescale_epochs:
        raise ConfigError(f"schedule.warmup_epochs={s.warmup_epochs} exceeds train.epochs={cfg.train.epochs}")
    _check_normalisation(cfg.augment)
    _check_trackers(cfg.train.log_with)


def _check_trackers(names: list[str]) -> None:
    """``train.log_with``: accelerate's tracker names (:data:`~timm_tricks.choices.TRACKERS`), each once, or
    ``none`` alone."""
    for name in names:
        if name not in (*TRACKERS, "none"):
            raise ConfigError(unknown("tracker in train.log_with", name, [*TRACKERS, "none"]))
    if len(set(names)) < len(names):
        raise ConfigError(f"train.log_with={names!r} names a tracker twice")
    if "none" in names and len(names) > 1:
        raise ConfigError(f"train.log_with={names!r}: none goes alone (or use [])")


def _check_normalisation(a: AugmentConfig) -> None:
    """``augment.mean`` / ``augment.std``: both or neither, three finite values each, on the 0-1 scale."""
    if (a.mean is None) != (a.std is None):
        raise ConfigError("augment.mean and augment.std go together: set both (0-1 scale) or neither")
    if a.mean is None or a.std is None:
        return
    for key, values, ok, rule in (("augment.mean", a.mean, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
                                  ("augment.std", a.std, lambda v: 0.0 < v <= 1.0, "in (0, 1]")):
        if len(values) != 3:
            raise ConfigError(f"{key}={values!r} needs one value per channel (R, G, B), got {len(values)}")
        if not all(math.isfinite(v) and ok(v) for v in values):
            raise ConfigError(f"{key}={values!r} must hold values {rule}: the 0-1 scale (divide 0-255 values by 255)")


