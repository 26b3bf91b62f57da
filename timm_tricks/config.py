"""The typed training config: load a recipe, apply overrides, validate, and derive the scaled values.

A recipe is a YAML file of nested sections matching :class:`Config` (see ``timm_tricks/recipes/``). A recipe may
name another one in ``base:``; it then only lists what it changes. Overrides are ``dotted.key=value`` strings
whose values are parsed as YAML (``optim.lr=0.2``, ``schedule.milestones=[30,60]``, ``distill.teacher=null``).

Every user mistake (unknown recipe, unknown key, wrong type, value out of range) raises :class:`ConfigError` with
one message naming the bad input and the valid choices; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPE_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A recipe, override or value the user gave is not valid; the message says which and what would be."""


def _f(default: Any = dataclasses.MISSING, *, choices: tuple | None = None, ge: float | None = None,
       gt: float | None = None, le: float | None = None, lt: float | None = None, doc: str = "") -> Any:
    """A dataclass field with validation metadata (choices and numeric bounds) and a one-line description."""
    meta = dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt, doc=doc)
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """The network, created through ``timm.create_model``."""

    name: str = _f("resnet50d_tricks", doc="a timm or timm_tricks model name")
    num_classes: int | None = _f(None, ge=1, doc="classes; null takes the data set's")
    pretrained: bool = _f(False, doc="load pretrained weights (a local file via pretrained_file)")
    pretrained_file: str | None = _f(None, doc="local weights file for pretrained=true")
    drop_rate: float | None = _f(None, ge=0.0, lt=1.0, doc="dropout before the classifier; null keeps the model's")
    zero_gamma: bool | None = _f(None, doc="zero-init the last BN gamma of each residual branch (BoT Sec. 3.1)")
    init: str | None = _f(None, choices=("kaiming", "xavier", None),
                          doc="weight init of the models that take it (ResNet ladder, Wider ResNet)")
    kwargs: dict[str, Any] = _f({}, doc="extra keyword arguments for timm.create_model")


@dataclass
class DataConfig:
    """Where the images come from and how many go in a batch."""

    source: str = _f("digits", doc="digits, synthetic[:N], folder:PATH, cifar10[:ROOT], cifar100[:ROOT], timm:NAME")
    image_size: int = _f(224, ge=8, doc="training crop size")
    batch_size: int = _f(256, ge=1, doc="global batch: per-process batch x processes x accumulation steps")
    batch_size_per_device: int | None = _f(None, ge=1, doc="if set, the global batch is this x processes")
    eval_batch_size: int | None = _f(None, ge=1, doc="per-process evaluation batch; null = per-process train batch")
    workers: int = _f(4, ge=0, doc="DataLoader workers for file data sets")


@dataclass
class AugmentConfig:
    """Training and evaluation transforms (timm_tricks.augment)."""

    train: str = _f("bot", choices=("bot", "batched", "none"),
                    doc="bot: BoT Sec. 2.1 pipeline; batched: Myrtle on-device crop/flip/cutout; none")
    color: str | None = _f("hsv", choices=("hsv", "jitter", None), doc="BoT colour scaling in [0.6, 1.4]")
    pca_std: float = _f(0.1, ge=0.0, doc="PCA lighting noise std (BoT Sec. 2.1: 0.1); 0 disables")
    mean: list[float] | None = _f(None, doc="normalisation mean (R, G, B) on the 0-1 scale; null: BoT Sec. 2.1's for "
                                        "file data, the data set's own statistics for in-memory data")
    std: list[float] | None = _f(None, doc="normalisation std (R, G, B) on the 0-1 scale; set together with mean")
    crop_padding: int = _f(4, ge=0, doc="batched: reflect padding before the random crop")
    flip: bool = _f(True, doc="random horizontal flip")
    cutout: int = _f(0, ge=0, doc="batched: cutout square size; 0 disables")
    eval_resize: int | None = _f(None, ge=8, doc="evaluation: shorter side before the centre crop (256 for 224)")


@dataclass
class OptimConfig:
    """Optimizer (timm.optim.create_optimizer_v2) and parameter groups."""

    name: str = _f("sgd", doc="timm optimizer name: sgd is Nesterov SGD, momentum is plain momentum SGD")
    lr: float = _f(0.1, gt=0.0, doc="peak learning rate at base_batch_size")
    base_batch_size: int = _f(256, ge=1, doc="batch that lr refers to (linear scaling rule)")
    linear_scaling: bool = _f(False, doc="lr x global batch / base_batch_size (BoT Sec. 3.1)")
    momentum: float = _f(0.9, ge=0.0, lt=1.0)
    weight_decay: float = _f(1e-4, ge=0.0)
    no_bias_decay: bool = _f(False, doc="no weight decay on biases and BN gamma/beta (BoT Sec. 3.1)")
    bn_bias_lr_mult: float = _f(1.0, gt=0.0, doc="learning-rate multiplier of BN biases (Myrtle: 64)")
    bn_bias_wd_mult: float = _f(1.0, ge=0.0, doc="weight-decay multiplier of BN biases (Myrtle: 1/64)")


@dataclass
class ScheduleConfig:
    """Per-iteration learning-rate schedule (timm_tricks.schedule)."""

    name: str = _f("cosine", choices=("constant", "cosine", "step", "exponential", "linear", "piecewise"))
    warmup_epochs: float = _f(0.0, ge=0.0, doc="linear warmup from 0 (BoT Sec. 3.1)")
    milestones: list[float] = _f([30, 60, 90], doc="step: epochs at which lr is multiplied by gamma")
    gamma: float = _f(0.1, gt=0.0, le=1.0)
    decay_rate: float = _f(0.94, gt=0.0, le=1.0, doc="exponential: factor every decay_every epochs")
    decay_every: float = _f(2.0, gt=0.0)
    min_lr: float = _f(0.0, ge=0.0, doc="cosine floor / linear end value (absolute lr)")
    knots: list[list[float]] = _f([], doc="piecewise: [epoch, multiplier of lr] pairs")
    rescale_epochs: bool = _f(False, doc="scale warmup and knots by epochs / reference_epochs (Myrtle)")
    reference_epochs: float | None = _f(None, gt=0.0, doc="epoch budget the warmup and knots were written for")


@dataclass
class LossConfig:
    """Classification loss: cross-entropy with optional label smoothing (BoT Sec. 5.2)."""

    label_smoothing: float = _f(0.0, ge=0.0, lt=1.0)
    smoothing_form: str = _f("paper", choices=("paper", "uniform"),
                             doc="paper: 1-eps and eps/(K-1); uniform: torch's eps/K everywhere")


@dataclass
class MixupConfig:
    """Mixup through timm's Mixup (BoT Sec. 5.4)."""

    alpha: float = _f(0.0, ge=0.0, doc="Beta(alpha, alpha); 0 disables")
    off_epochs: int = _f(0, ge=0, doc="switch mixup off for the last N epochs")


@dataclass
class DistillConfig:
    """Knowledge distillation from a teacher (BoT Sec. 5.3)."""

    teacher: str | None = _f(None, doc="teacher model name; null disables distillation")
    checkpoint: str | None = _f(None, doc="teacher weights file")
    temperature: float = _f(20.0, gt=0.0, doc="BoT Sec. 5.5: T = 20")
    weight: float = _f(1.0, ge=0.0, doc="weight of the T^2-scaled soft term; the hard term has weight 1")


@dataclass
class EmaConfig:
    """Exponential moving average of the weights (timm ModelEmaV3)."""

    enabled: bool = _f(False)
    decay: float = _f(0.9998, gt=0.0, lt=1.0)


@dataclass
class EvalConfig:
    """Evaluation options."""

    tta_flip: bool = _f(False, doc="average the logits of the image and its mirror (Myrtle)")


@dataclass
class TrainConfig:
    """Run-level switches read by the trainer."""

    epochs: int = _f(120, ge=1)
    precision: str = _f("no", choices=("no", "fp16", "bf16"), doc="mixed precision (BoT Sec. 3.2: FP16)")
    seed: int = _f(0, ge=0)
    grad_accum_steps: int = _f(1, ge=1)
    clip_grad: float | None = _f(None, gt=0.0)
    channels_last: bool = _f(False)
    compile: bool = _f(False)
    sync_bn: bool = _f(False)
    checkpoint_every_steps: int | None = _f(None, ge=1)
    keep_checkpoints: int = _f(2, ge=1)


@dataclass
class Config:
    """A whole training setup. ``name``, ``description`` and ``source`` document where the numbers come from."""

    name: str = _f("custom")
    description: str = _f("")
    source: str = _f("")
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
        from .optim import scale_lr

        if not self.optim.linear_scaling:
            return self.optim.lr
        return scale_lr(self.optim.lr, self.global_batch_size(num_processes), self.optim.base_batch_size)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def named_yaml(name_or_path: str | Path, folder: Path, what: str) -> Path:
    """A YAML file given by path (anything with a folder or a .yaml suffix), or by the name of a file in ``folder``;
    a ConfigError names a missing file or an unknown name with the closest valid ones."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if not candidate.is_file():
            raise ConfigError(f"{what} file {str(name_or_path)!r} does not exist")
        return candidate
    path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(_unknown(what, str(name_or_path), sorted(p.stem for p in folder.glob("*.yaml"))))
    return path


def recipe_path(name_or_path: str | Path) -> Path:
    """The file of a shipped recipe name, or the given path if it is a readable YAML file."""
    return named_yaml(name_or_path, RECIPE_DIR, "recipe")


def read_yaml_mapping(path: Path, what: str = "recipe") -> dict[str, Any]:
    """The mapping in YAML file ``path`` (empty for an empty file); a ConfigError names the ``what`` and the file
    when it cannot be read, is not YAML, or holds something else than a mapping."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must be a mapping, got {type(data).__name__}")
    return data


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
    base_ref = path.parent / base if base.endswith((".yaml", ".yml")) else base
    merged = deep_merge(load_recipe_dict(base_ref, (*_seen, path)), data)
    return merged


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in: nested mappings merge, everything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``['optim.lr=0.2', 'mixup.alpha=0.2']`` as a nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=0.2)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return out


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                **updates: Any) -> Config:
    """Load a recipe (name or path; None for the defaults), apply overrides and validate.

    Args:
        recipe: A shipped recipe name (see :func:`list_recipes`) or a YAML path.
        overrides: ``dotted.key=value`` strings applied after the recipe.
        **updates: Section dicts applied last (e.g. ``train={'epochs': 3}``), as the CLI flags do.

    Returns:
        The validated :class:`Config`.
    """
    data = load_recipe_dict(recipe) if recipe is not None else {}
    data = deep_merge(data, parse_overrides(overrides))
    data = deep_merge(data, {k: v for k, v in updates.items() if v is not None})
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested dicts (unknown keys are rejected by name)."""
    cfg = _build(Config, data, "")
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
            raise ConfigError(_unknown(key, name, ours, ours + timm.list_models()).replace(
                "Valid:", "Valid timm_tricks models (and any name in timm.list_models()):"))
    optimizers = list_optimizers()
    if cfg.optim.name.lower().split("_")[-1] not in optimizers:
        raise ConfigError(_unknown("optim.name", cfg.optim.name, optimizers))


def _check_consistency(cfg: Config) -> None:
    """Rules that involve more than one key."""
    _check_names(cfg)
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
    if cfg.mixup.off_epochs > cfg.train.epochs:
        raise ConfigError(f"mixup.off_epochs={cfg.mixup.off_epochs} exceeds train.epochs={cfg.train.epochs}")
    if cfg.schedule.warmup_epochs > cfg.train.epochs and not s.rescale_epochs:
        raise ConfigError(f"schedule.warmup_epochs={s.warmup_epochs} exceeds train.epochs={cfg.train.epochs}")
    _check_normalisation(cfg.augment)


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


def _unknown(what: str, bad: str, valid: list[str], candidates: list[str] | None = None) -> str:
    """``unknown WHAT 'bad'; did you mean ...? Valid: ...`` with the closest of ``candidates`` (default ``valid``)."""
    pool = candidates or valid
    same_leaf = [c for c in pool if c.rsplit(".", 1)[-1] == bad.rsplit(".", 1)[-1] and c != bad]
    close = (same_leaf + [c for c in difflib.get_close_matches(bad, pool, n=3, cutoff=0.5) if c not in same_leaf])[:3]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    return f"unknown {what} {bad!r}{hint} Valid: {', '.join(valid)}"


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config schema."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys.extend(all_keys(t, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            section = f"keys in {prefix.rstrip('.')}" if prefix else "sections"
            valid = [f"{prefix}{name}" for name in fields]
            raise ConfigError(_unknown("config key", f"{prefix}{key}", valid, all_keys()).replace(
                "Valid:", f"Valid {section}:"))
    kwargs = {}
    for name, value in data.items():
        f, t, full = fields[name], hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(t):
            kwargs[name] = _build(t, value, f"{full}.")
        else:
            kwargs[name] = _check(full, _coerce(full, value, t), f.metadata)
    return cls(**kwargs)


def _type_name(t: Any) -> str:
    return str(t).replace("typing.", "") if not isinstance(t, type) else t.__name__


def _coerce(key: str, value: Any, t: Any) -> Any:
    """``value`` converted to type ``t`` (int -> float only), or a ConfigError naming the key and the type."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} must be {_type_name(t)}")
    if t is Any:
        return value
    if origin is list:
        (item_t,) = typing.get_args(t)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list of {_type_name(item_t)}")
        return [_coerce(f"{key}[{i}]", v, item_t) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return dict(value)
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif t is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}={value!r} must be {_type_name(t)}")


def _check(key: str, value: Any, meta: typing.Mapping[str, Any]) -> Any:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{key}={value!r} is not a valid choice; valid: {shown}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for name, sym, holds in _BOUNDS:
            bound = meta.get(name)
            if bound is not None and not holds(value, bound):
                raise ConfigError(f"{key}={value!r} is out of range: must be {sym} {bound}")
    return value


_BOUNDS = (
    ("ge", ">=", lambda v, b: v >= b),
    ("gt", ">", lambda v, b: v > b),
    ("le", "<=", lambda v, b: v <= b),
    ("lt", "<", lambda v, b: v < b),
)
