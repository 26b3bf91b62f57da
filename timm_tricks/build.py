"""From a :class:`~timm_tricks.config.Config` to the parts of a run: the one layer that reads a config.

The trick modules below it take plain arguments (:mod:`timm_tricks.optim`, :mod:`timm_tricks.schedule`,
:mod:`timm_tricks.losses`, :mod:`timm_tricks.mixup`, :mod:`timm_tricks.batches`); the trainer, ``timm-tricks eval``
and ``timm-tricks lr-schedule`` build what they need here. The peak learning rate is worked out once by the caller
(``cfg.scaled_lr(processes)``: the linear scaling rule on the global batch, He et al., "Bag of Tricks", CVPR 2019,
Sec. 3.1) and that one number goes to the optimizer, the schedule and the logs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .batches import FileBatches, IterableBatches, Shard, TensorBatches
from .choices import INTERPOLATIONS
from .config import Config
from .data import Source, decode_image, folder_datasets, is_iterable_timm, load_tensor_data, timm_datasets
from .errors import ConfigError
from .losses import DistillationLoss, LabelSmoothingCrossEntropy
from .optim import create_optimizer
from .schedule import LRSchedule
from .schema import flatten
from .seeding import seed_everything

_LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError)  # timm loads weights_only=True


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


#: A recipe trick under timm's name for it: timm's ResNet zero-initialises the last BN gamma of each residual branch
#: as ``zero_init_last`` (``timm/models/resnet.py``), the trick Bag of Tricks Sec. 3.1 calls zero gamma.
TIMM_NAMES = {"zero_gamma": "zero_init_last"}


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """``timm.create_model`` of ``cfg.model`` with ``num_classes`` outputs, its weights seeded by ``train.seed``
    (the same initial weights on every process).

    A recipe trick the model does not take under the recipe's name goes by timm's name where timm has one
    (:data:`TIMM_NAMES`: ``zero_gamma`` -> ``zero_init_last``); otherwise it is one line naming the key.
    """
    kwargs = cfg.model_kwargs(num_classes)
    while True:
        seed_everything(cfg.train.seed)
        try:
            return timm.create_model(cfg.model.name, **kwargs)
        except TypeError as e:
            key = _unexpected_keyword(e)
            if key in TIMM_NAMES and TIMM_NAMES[key] not in kwargs:
                kwargs[TIMM_NAMES[key]] = kwargs.pop(key)
                continue
            raise ConfigError(_refused_option(cfg, key, e)) from None
        except _LOAD_ERRORS as e:
            raise ConfigError(f"cannot load the weights of model {cfg.model.name!r}: {_first_line(e)}") from None


def keep_ghost_batch_size(model: nn.Module, cfg: Config, world: int, synchronised: bool) -> None:
    """Set each ghost BN layer's ``num_splits`` so that its ghost batches hold as many images as the recipe's.

    A recipe's ``num_splits`` cuts the global batch: Myrtle's 16 splits of 512 are ghost batches of 32 images
    (Page, "How to train your ResNet 8", cell 55). A layer sees less than the global batch when the batch is spread
    over processes (unless ``train.sync_bn`` joins them, :mod:`timm_tricks.sync_bn`) or over accumulation steps; left
    at 16, its ghost batches would shrink in proportion (4 images a process on 8 GPUs). Here each layer gets
    ``splits x seen / global`` splits, ``seen`` being the images it normalises together; a batch that cannot be cut
    so is one line naming the sizes.
    """
    from .models import GhostBatchNorm2d

    layers = [m for m in model.modules() if isinstance(m, GhostBatchNorm2d) and m.num_splits > 1]
    if not layers:
        return
    total = cfg.global_batch_size(world)
    seen = cfg.per_device_batch_size(world) * (world if synchronised else 1)
    for layer in layers:
        splits = layer.num_splits
        if total % splits or (splits * seen) % total:
            ghost = f"{total // splits} images" if total % splits == 0 else f"{total}/{splits} images"
            raise ConfigError(f"ghost batch norm: {splits} splits of the global batch {total} are ghost batches of "
                              f"{ghost}, and each layer normalises {seen} images together ({world} process(es), "
                              f"{cfg.train.grad_accum_steps} accumulation step(s)"
                              f"{', synchronised' if synchronised else ''}), which must be a whole number of them: "
                              "change data.batch_size or model.kwargs.ghost_bn_splits")
        layer.num_splits = splits * seen // total


def _unexpected_keyword(e: TypeError) -> str | None:
    """The keyword a constructor refused (``... got an unexpected keyword argument 'x'``), or None."""
    text = str(e)
    return text.rsplit("'", 2)[-2] if "unexpected keyword argument '" in text else None


def _refused_option(cfg: Config, key: str | None, e: TypeError) -> str:
    name = cfg.model.name
    recipe_key = next((k for k, v in TIMM_NAMES.items() if v == key), key)
    if recipe_key in ("zero_gamma", "init", "drop_rate"):
        return (f"model {name!r} does not take model.{recipe_key} (a trick of the recipe); drop it with "
                f"--set model.{recipe_key}=null")
    if key in cfg.model.kwargs:
        return f"model {name!r} does not take model.kwargs.{key}; drop it from model.kwargs"
    return f"model {name!r} does not take one of its options: {e}"


def cpu_only_distributed() -> bool:
    """True in a multi-process launch (``WORLD_SIZE`` > 1, e.g. ``accelerate launch --multi_gpu`` or ``torchrun``)
    on a machine without CUDA: the processes then train on their CPUs over gloo. (``accelerate launch --cpu``
    starts a single process unless an MPI host file is given.)"""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def build_accelerator(cfg: Config, output_dir: Path) -> Any:
    """The ``accelerate.Accelerator`` of a run: the config's precision (:func:`check_precision`) and accumulation,
    the trackers of ``train.log_with`` (:func:`trackers`), CPUs over gloo in a launch without CUDA."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration

    check_precision(cfg.train.precision, PartialState(cpu=cpu_only_distributed()).device)
    return Accelerator(cpu=cpu_only_distributed(), mixed_precision=cfg.train.precision,
                       gradient_accumulation_steps=cfg.train.grad_accum_steps,
                       log_with=trackers(cfg, output_dir) or None,
                       project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir)))


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a ``train.precision`` the device would not train in: accelerate trains ``fp16`` on a CPU in fp32 and
    says nothing (it makes no GradScaler and autocasts to nothing there), and ``bf16`` needs a GPU that has it
    (``torch.cuda.is_bf16_supported``); a CPU autocasts to bf16."""
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU: on a CPU accelerate would train in fp32; use "
                          "train.precision=bf16 (CPU autocast) or no")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16: the GPU {torch.cuda.get_device_name(device)!r} has no bf16; use "
                          "train.precision=fp16 or no")


def warn_launcher_precision(precision: str, main: bool) -> None:
    """One line on stderr (main process) when ``accelerate launch`` asks for another mixed precision than the
    config's ``train.precision``, which wins."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched and launched != precision and main:
        print(f"timm-tricks: warning: the launcher asks for mixed precision {launched!r}, the recipe for "
              f"{precision!r}; training in {precision!r} (--set train.precision=... to change it)", file=sys.stderr)


#: The pip package of each tracker of ``train.log_with`` that this package has no extra for (the extras are named
#: after the tracker: ``pip install 'timm_tricks[mlflow]'``).
TRACKER_EXTRAS = ("mlflow", "wandb")


def trackers(cfg: Config, output_dir: Path) -> list[Any]:
    """The trackers of ``train.log_with`` for ``Accelerator(log_with=...)``; a tracker whose package is missing is
    one line naming what to install (accelerate itself would drop it and say nothing).

    Each tracker writes where it writes with accelerate's defaults, except that those that write local files write
    them inside the run folder (:data:`timm_tricks.run_folder.TRACKER_FOLDERS`): TensorBoard in ``tensorboard/``
    (as before trackers were a choice), wandb in ``wandb/`` (``wandb.init(dir=...)``), DVCLive in ``dvclive/``
    (``Live(dir=...)``), Aim's repo in ``.aim/`` (accelerate's logging dir). MLflow logs where
    ``MLFLOW_TRACKING_URI`` points (its own default otherwise). The project (wandb project, MLflow experiment) is
    the config's ``name``, the run the output folder's name (:func:`start_trackers`).
    """
    from accelerate.tracking import TensorBoardTracker

    names = installed_trackers(cfg.train.log_with)
    return [TensorBoardTracker("tensorboard", str(output_dir)) if n == "tensorboard" else n for n in names]


def installed_trackers(log_with: list[str]) -> list[str]:
    """The trackers of ``train.log_with`` (``none`` dropped), each installed: else one line naming what to install."""
    from accelerate.tracking import get_available_trackers

    names = [n for n in log_with if n != "none"]
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in available:
            extra = f"'timm_tricks[{name}]'" if name in TRACKER_EXTRAS else name  # the others: package = name
            raise ConfigError(f"train.log_with: {name} is not installed; pip install {extra}, or drop it from "
                              "train.log_with")
    return names


def start_trackers(acc: Any, cfg: Config, output_dir: Path) -> None:
    """Start the accelerator's trackers (:func:`trackers`) with the config as the flat dict of hyperparameters
    (``optim.lr``, ...: the scalars as they are, lists and mappings as text); a tracker that fails to start (no
    login, no server) is one line."""
    run, out = Path(output_dir).name, Path(output_dir)
    kwargs = {"wandb": {"dir": str(out), "name": run}, "mlflow": {"run_name": run},
              "dvclive": {"dir": str(out / "dvclive")}}
    config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(cfg.to_dict()).items()}
    try:
        acc.init_trackers(cfg.name, config=config, init_kwargs=kwargs)
    except Exception as e:  # each tracker's own errors (mlflow, wandb, ...): no common class
        names = ", ".join(str(getattr(t, "name", t)) for t in acc.log_with)
        raise ConfigError(f"train.log_with: a tracker ({names}) did not start: {_first_line(e)}") from None


def check_accelerator(acc: Any, cfg: Config) -> None:
    """A user's own Accelerator must accumulate and cast as the config says: the Trainer counts optimizer steps,
    and scales the learning rate, by ``train.grad_accum_steps``, and config.yaml records ``train.precision``."""
    have = {"train.grad_accum_steps": acc.gradient_accumulation_steps, "train.precision": acc.mixed_precision}
    want = {"train.grad_accum_steps": cfg.train.grad_accum_steps, "train.precision": cfg.train.precision}
    wrong = [f"{k}={want[k]!r} but the Accelerator has {have[k]!r}" for k in have if have[k] != want[k]]
    if wrong:
        raise ConfigError(f"the given Accelerator does not match the config: {'; '.join(wrong)}; build it with "
                          "Accelerator(mixed_precision=cfg.train.precision, "
                          "gradient_accumulation_steps=cfg.train.grad_accum_steps) or --set the keys to match")
    check_precision(acc.mixed_precision, acc.device)


def check_input_channels(model: nn.Module, channels: int, name: str) -> None:
    """Refuse a model whose first convolution takes another number of channels than the images have (say
    ``model.kwargs.in_chans: 1`` on RGB data), in one line instead of a shape error at the first step."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != channels:
        raise ConfigError(f"model {name!r} takes {first.in_channels}-channel images but the data has {channels} "
                          "channels; check model.kwargs (in_chans)")


def with_pretrained_transforms(cfg: Config) -> Config:
    """``cfg`` with the input statistics of its pretrained weights where the recipe leaves them open.

    A run that starts from pretrained weights (``model.pretrained``, with or without ``pretrained_file``) feeds the
    images the weights were trained on: ``augment.mean``/``std``, ``interpolation`` and ``eval_resize`` left at null
    take the model's timm ``pretrained_cfg`` (mean, std, interpolation, and ``floor(image_size / crop_pct)`` as
    timm's ``transforms_factory`` computes the eval resize). A key the recipe or the user sets wins. The trainer
    resolves this before it writes config.yaml, so the run's config records the values it trained with.
    """
    m, a = cfg.model, cfg.augment
    if not m.pretrained:
        return cfg
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(m.name)
    if pretrained is None:
        return cfg
    updates: dict[str, Any] = {}
    if a.mean is None and a.std is None and len(pretrained.mean or ()) == 3 and len(pretrained.std or ()) == 3:
        updates.update(mean=[float(v) for v in pretrained.mean], std=[float(v) for v in pretrained.std])
    if a.interpolation is None and pretrained.interpolation in INTERPOLATIONS:
        updates["interpolation"] = pretrained.interpolation
    if a.eval_resize is None and pretrained.crop_pct:
        updates["eval_resize"] = max(cfg.data.image_size, math.floor(cfg.data.image_size / pretrained.crop_pct))
    return dataclasses.replace(cfg, augment=dataclasses.replace(a, **updates)) if updates else cfg


def build_teacher(cfg: Config, num_classes: int) -> nn.Module | None:
    """The distillation teacher of ``cfg.distill`` with its weights, frozen in eval mode; None without one.

    Its weights come from ``distill.checkpoint`` through timm's loader (torch's ``weights_only=True``: a pickle
    payload is refused, never run)."""
    d = cfg.distill
    if not d.teacher:
        return None
    if not d.checkpoint:
        raise ConfigError("distill.teacher needs distill.checkpoint (the teacher's weights file)")
    if not Path(d.checkpoint).is_file():
        raise ConfigError(f"distill.checkpoint {d.checkpoint!r} does not exist")
    try:
        teacher = timm.create_model(d.teacher, num_classes=num_classes, checkpoint_path=d.checkpoint)
    except _LOAD_ERRORS as e:
        raise ConfigError(f"cannot load the teacher's weights {d.checkpoint!r}: {_first_line(e)}") from None
    return teacher.eval().requires_grad_(False)


def build_ema(cfg: Config, model: nn.Module, device: torch.device) -> Any:
    """timm's ``ModelEmaV3`` of ``model`` at ``ema.decay``, or None when ``ema.enabled`` is off."""
    if not cfg.ema.enabled:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema.decay, device=device)


def optimizer_from_config(model: nn.Module, cfg: Config, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optim`` over ``model``'s parameter groups at peak ``lr`` (default: the linearly
    scaled peak of one process, ``cfg.scaled_lr()``)."""
    o = cfg.optim
    return create_optimizer(model, o.name, cfg.scaled_lr() if lr is None else lr, o.weight_decay,
                            momentum=o.momentum, no_bias_decay=o.no_bias_decay, bn_bias_lr_mult=o.bn_bias_lr_mult,
                            bn_bias_wd_mult=o.bn_bias_wd_mult)


def schedule_from_config(cfg: Config, steps_per_epoch: int, peak_lr: float | None = None) -> LRSchedule:
    """The :class:`~timm_tricks.schedule.LRSchedule` of ``cfg.schedule`` for ``train.epochs`` epochs.

    ``schedule.min_lr`` is absolute, so it becomes a fraction of ``peak_lr`` (default: ``cfg.scaled_lr()``, the
    peak of one process). With ``schedule.rescale_epochs`` the warmup and the piecewise knots, written for
    ``reference_epochs``, are stretched in proportion to ``train.epochs`` (Myrtle's rule when the epoch budget
    changes).
    """
    s, epochs = cfg.schedule, cfg.train.epochs
    stretch = epochs / s.reference_epochs if s.rescale_epochs and s.reference_epochs else 1.0
    peak = cfg.scaled_lr() if peak_lr is None else peak_lr
    return LRSchedule(
        name=s.name, steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_epochs=s.warmup_epochs * stretch,
        milestones=tuple(s.milestones), gamma=s.gamma, decay_rate=s.decay_rate, decay_every=s.decay_every,
        min_factor=min(1.0, s.min_lr / peak), knots=tuple((k[0] * stretch, k[1]) for k in s.knots))


def loss_from_config(cfg: Config, num_classes: int, distill: bool = False) -> nn.Module:
    """The training loss: label smoothing (``loss``), wrapped in knowledge distillation when ``distill``."""
    base = LabelSmoothingCrossEntropy(num_classes, cfg.loss.label_smoothing, cfg.loss.smoothing_form) \
        if num_classes > 1 else nn.CrossEntropyLoss()
    return DistillationLoss(base, cfg.distill.temperature, cfg.distill.weight) if distill else base


def build_batches(cfg: Config, source: Source, shard_of: Any, device: torch.device,
                  download: bool = False) -> TensorBatches | FileBatches | IterableBatches:
    """The batch source of ``cfg.data.source``: in memory for small data sets, DataLoader workers for files, timm's
    own sharding for its streamed sources (``timm:hfids/``, ``wds/``, ``tfds/``: :class:`IterableBatches`).

    ``shard_of(size)`` gives the :class:`~timm_tricks.batches.Shard` of a training set of ``size`` samples for
    this process (for a stream, ``size`` is the split's sample count that timm's reader knows).
    """
    a, size = cfg.augment, cfg.data.image_size
    if source.in_memory:
        data = load_tensor_data(source, image_size=size, download=download, seed=cfg.train.seed)
        if a.mean is not None and a.std is not None:  # the recipe's statistics win
            data = dataclasses.replace(data, mean=tuple(a.mean), std=tuple(a.std))
        augment = None
        if a.train == "batched":
            from .augment import BatchAugment

            augment = BatchAugment(crop_padding=a.crop_padding, flip=a.flip, cutout=a.cutout or None)
        return TensorBatches(data, shard_of(len(data.train_labels)), device, augment)
    if source.kind == "folder" or not is_iterable_timm(source.arg or ""):
        return _file_batches(cfg, source, shard_of, device, download)
    from .augment import bot_eval_transform, bot_train_transform

    norm = dict(mean=a.mean, std=a.std, interpolation=a.interpolation or "bilinear")
    train_tf = bot_train_transform(size=size, pca_std=a.pca_std, color=a.color, **norm) if a.train == "bot" else \
        bot_eval_transform(size=size, resize=a.eval_resize or size, **norm)
    eval_tf = bot_eval_transform(size=size, resize=a.eval_resize or round(size / 0.875), **norm)
    train, val, n = timm_datasets(source.arg, train_tf, eval_tf, download=download, seed=cfg.train.seed)
    n = n or cfg.model.num_classes
    if n is None:
        raise ConfigError(f"cannot tell the number of classes of {cfg.data.source!r}; set model.num_classes")
    return IterableBatches(train, val, n, shard_of(train.reader.num_samples), device, cfg.data.workers)


def _file_batches(cfg: Config, source: Source, shard_of: Any, device: torch.device, download: bool) -> FileBatches:
    """A folder or a map-style timm data set, its pipeline split in two: the DataLoader workers decode, crop and
    flip each image (uint8), the device colours, lights and normalises each batch in float
    (:func:`~timm_tricks.augment.bot_crop_transform`, :class:`~timm_tricks.augment.BotBatchStage`)."""
    from .augment import BotBatchStage, bot_crop_transform, centre_crop_transform

    a, size = cfg.augment, cfg.data.image_size
    interpolation = a.interpolation or "bilinear"
    train_tf = bot_crop_transform(size, interpolation=interpolation) if a.train == "bot" else \
        centre_crop_transform(size, a.eval_resize or size, interpolation=interpolation)
    eval_tf = centre_crop_transform(size, a.eval_resize or round(size / 0.875), interpolation=interpolation)
    bot = a.train == "bot"
    stages = (BotBatchStage(a.mean, a.std, color=a.color if bot else None, pca_std=a.pca_std if bot else 0.0),
              BotBatchStage(a.mean, a.std))
    if source.kind == "folder":
        train, val, n = folder_datasets(source.arg, train_tf, eval_tf, loader=decode_image)
        return FileBatches(train, val, n, shard_of(len(train)), device, cfg.data.workers, stages)
    train, val, n = timm_datasets(source.arg, train_tf, eval_tf, download=download, seed=cfg.train.seed)
    n = n or cfg.model.num_classes
    if n is None:
        raise ConfigError(f"cannot tell the number of classes of {cfg.data.source!r}; set model.num_classes")
    return FileBatches(train, val, n, shard_of(len(train)), device, cfg.data.workers, stages)


def shard_of(cfg: Config, rank: int, world: int) -> Any:
    """``size -> Shard`` of process ``rank`` of ``world``, at the config's per-device batch."""
    batch = cfg.per_device_batch_size(world)
    return lambda size: Shard(size, batch, rank, world, cfg.train.seed)


def steps_per_epoch(cfg: Config, train_size: int, world: int = 1) -> int:
    """Optimizer steps per epoch of a run on ``train_size`` images over ``world`` processes: what the trainer
    takes (full per-device batches, the ragged tail dropped, then ``train.grad_accum_steps`` micro-batches per
    step)."""
    return shard_of(cfg, 0, world)(train_size).steps_per_epoch // cfg.train.grad_accum_steps
