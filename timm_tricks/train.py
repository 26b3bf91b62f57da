"""The accelerate trainer: one CPU, one GPU, many GPUs or many nodes, FP16 or bf16, with exact resume.

``Trainer(config, output_dir).fit()`` trains the recipe's model on its data with every trick the config switches
on, evaluates after each epoch, checkpoints, and returns the final metrics. The same code runs under
``accelerate launch``; the global batch (``data.batch_size``) is split over the processes and accumulation steps,
and the learning rate follows the linear scaling rule on that global batch.

Exact resume. Every random draw of a training step (data order, augmentation, mixup, dropout) comes from
generators seeded by ``(seed, epoch, step, process)``, so a run resumed at step ``k`` draws exactly what the
uninterrupted run drew; the checkpoint (accelerate's ``save_state``: model, optimizer, loss scaler, RNG states,
plus the EMA and the step counters) holds the rest. Checkpoints are written to a temporary folder and renamed into
place, so a run killed mid-write never replaces the last good one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import (
    CHECKPOINT_PREFIX,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    read_summary,
    write_checkpoint,
)
from .config import Config, ConfigError
from .data import (
    DataError,
    Source,
    TensorData,
    folder_datasets,
    load_tensor_data,
    normalize,
    parse_source,
    timm_datasets,
)
from .losses import DistillationLoss, LabelSmoothingCrossEntropy
from .mixup import create_mixup, set_mixup_epoch
from .optim import create_optimizer
from .schedule import TricksScheduler, schedule_from_config
from .tta import flip_tta

SUMMARY_FIELDS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "seconds")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the step and the checkpoint kept."""


def step_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, epoch, step, process), stable across runs and machines."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def cpu_only_distributed() -> bool:
    """True in a multi-process launch (``WORLD_SIZE`` > 1, e.g. ``accelerate launch --multi_gpu`` or ``torchrun``)
    on a machine without CUDA: the processes then train on their CPUs over gloo. (``accelerate launch --cpu``
    starts a single process unless an MPI host file is given.)"""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _kill_for_tests() -> None:
    """SIGKILL this process (``TIMM_TRICKS_KILL_AT_STEP``), once per marker file if ``TIMM_TRICKS_KILL_ONCE``
    names one: the resume and retry tests use it to die at a known step."""
    marker = os.environ.get("TIMM_TRICKS_KILL_ONCE")
    if marker:
        if Path(marker).exists():
            return
        Path(marker).write_text("killed\n")
    os.kill(os.getpid(), signal.SIGKILL)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) with one value."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """Counters that, with the accelerate state, say exactly where a run is."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in that epoch
    num_updates: int = 0  # optimizer steps taken (not skipped) so far: the schedule's position
    global_step: int = 0  # optimizer steps attempted so far
    best_top1: float = -1.0
    epoch_loss_sum: float = 0.0  # this process's summed training loss of the epoch in progress
    epoch_loss_count: int = 0

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


# ------------------------------------------------------------------------------------------------------------------
# Batches


class TensorBatches:
    """Batches of an in-memory data set, sharded over processes, augmented on the device (Myrtle style).

    Epoch ``e`` visits a permutation seeded by ``(seed, e)``; process ``r`` of ``w`` takes positions ``r, r+w, ...``
    and drops the ragged tail so every process runs the same number of steps.
    """

    def __init__(self, data: TensorData, cfg: Config, per_device_batch: int, rank: int, world: int,
                 device: torch.device) -> None:
        from .augment import BatchAugment

        self.data, self.cfg, self.batch, self.rank, self.world = data.to(device), cfg, per_device_batch, rank, world
        self.device = device
        a = cfg.augment
        self.augment = BatchAugment(crop_padding=a.crop_padding, flip=a.flip, cutout=a.cutout or None) \
            if a.train == "batched" else None
        self.steps_per_epoch = len(data.train_labels) // (per_device_batch * world)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(data.train_labels)} training images give no full batch of "
                              f"{per_device_batch} x {world} process(es); lower data.batch_size")

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step_seed(self.cfg.train.seed, epoch))
        order = torch.randperm(len(self.data.train_labels), generator=g)
        return order[self.rank::self.world][: self.steps_per_epoch * self.batch]

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order(epoch).to(self.device)
        for step in range(start_step, self.steps_per_epoch):
            idx = order[step * self.batch:(step + 1) * self.batch]
            images = normalize(self.data.train_images[idx], self.data.mean, self.data.std)
            if self.augment is not None:
                g = torch.Generator().manual_seed(step_seed(self.cfg.train.seed, epoch, step, self.rank, 1))
                images = self.augment(images, generator=g)
            yield images, self.data.train_labels[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of the validation set: positions ``rank, rank + world, ...`` (all of them, once)."""
        idx_all = torch.arange(len(self.data.val_labels), device=self.device)[self.rank::self.world]
        for i in range(0, len(idx_all), batch_size):
            idx = idx_all[i:i + batch_size]
            yield normalize(self.data.val_images[idx], self.data.mean, self.data.std), self.data.val_labels[idx]

    @property
    def num_classes(self) -> int:
        return self.data.num_classes


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a file data set so each sample's random transform is seeded by ``(seed, epoch, index)``: the same
    augmentation whichever worker loads it, which makes mid-epoch resume exact for file data too."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        seed_everything(step_seed(self.seed, self.epoch, index, 2))
        return self.dataset[index]


class FileBatches:
    """Batches of a file data set through DataLoader workers, sharded and ordered like :class:`TensorBatches`."""

    def __init__(self, train: Any, val: Any, num_classes: int, cfg: Config, per_device_batch: int, rank: int,
                 world: int, device: torch.device) -> None:
        self.train, self.val = SeededDataset(train, cfg.train.seed), val
        self.cfg, self.batch, self.rank, self.world, self.device = cfg, per_device_batch, rank, world, device
        self.num_classes = num_classes
        self.steps_per_epoch = len(train) // (per_device_batch * world)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(train)} training images give no full batch of {per_device_batch} x {world} "
                              "process(es); lower data.batch_size")

    def _loader(self, dataset: Any, indices: list[int], batch_size: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
            num_workers=self.cfg.data.workers, pin_memory=self.device.type == "cuda", drop_last=False)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(step_seed(self.cfg.train.seed, epoch))
        order = torch.randperm(len(self.train), generator=g)[self.rank::self.world]
        order = order[start_step * self.batch: self.steps_per_epoch * self.batch].tolist()
        self.train.epoch = epoch
        for images, labels in self._loader(self.train, order, self.batch):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = list(range(len(self.val)))[self.rank::self.world]
        for images, labels in self._loader(self.val, indices, batch_size):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def build_batches(cfg: Config, source: Source, per_device_batch: int, rank: int, world: int,
                  device: torch.device, download: bool = False) -> TensorBatches | FileBatches:
    """The batch source of ``cfg.data.source``: in memory for small data sets, DataLoader workers for files."""
    if source.in_memory:
        data = load_tensor_data(source, image_size=cfg.data.image_size, download=download, seed=cfg.train.seed)
        return TensorBatches(data, cfg, per_device_batch, rank, world, device)
    from .augment import bot_eval_transform, bot_train_transform

    a, size = cfg.augment, cfg.data.image_size
    train_tf = bot_train_transform(size=size, pca_std=a.pca_std, color=a.color) if a.train == "bot" else \
        bot_eval_transform(size=size, resize=a.eval_resize or size)
    eval_tf = bot_eval_transform(size=size, resize=a.eval_resize or round(size / 0.875))
    if source.kind == "folder":
        train, val, n = folder_datasets(source.arg, train_tf, eval_tf)
    else:
        train, val, n = timm_datasets(source.arg, train_tf, eval_tf, download=download)
        n = n or cfg.model.num_classes
        if n is None:
            raise ConfigError(f"cannot tell the number of classes of {cfg.data.source!r}; set model.num_classes")
    return FileBatches(train, val, n, cfg, per_device_batch, rank, world, device)


# ------------------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Train a config with accelerate.

    Args:
        cfg: The resolved config.
        output_dir: Where ``config.yaml``, ``summary.csv``, ``metrics.json``, ``model.safetensors`` and
            ``checkpoints/`` go. It must not hold another run unless ``resume`` is set.
        resume: Continue from the newest complete checkpoint in ``output_dir/checkpoints``.
        download: Let CIFAR / timm data sets download their files.
        callback: Called on the main process after each epoch as ``callback(epoch, metrics, checkpoint_dir)``.
        step_callback: Called on every process after each optimizer step (after that step's checkpoint, if any)
            as ``step_callback(state)``, ``state`` the run's :class:`TrainState`.
        accelerator: An ``accelerate.Accelerator`` to use (default: one built from the config).
    """

    def __init__(self, cfg: Config, output_dir: str | Path, resume: bool = False, download: bool = False,
                 callback: Callable[[int, dict[str, float], Path | None], None] | None = None,
                 accelerator: Any = None, step_callback: Callable[[TrainState], None] | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg, self.output_dir, self.resume, self.callback = cfg, Path(output_dir), resume, callback
        self.step_callback = step_callback
        self._check_output_dir()
        self.accelerator = accelerator or Accelerator(
            cpu=cpu_only_distributed(),
            mixed_precision=cfg.train.precision,
            gradient_accumulation_steps=cfg.train.grad_accum_steps,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir)),
        )
        acc = self.accelerator
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
        if launched and launched != cfg.train.precision and acc.is_main_process:
            print(f"timm-tricks: warning: the launcher asks for mixed precision {launched!r}, the recipe for "
                  f"{cfg.train.precision!r}; training in {cfg.train.precision!r} (--set train.precision=... to "
                  "change it)", file=sys.stderr)
        self.device = acc.device
        self.world, self.rank = acc.num_processes, acc.process_index
        self.per_device_batch = cfg.per_device_batch_size(self.world)
        self.source = parse_source(cfg.data.source)
        self.batches = build_batches(cfg, self.source, self.per_device_batch, self.rank, self.world, self.device,
                                     download)
        self.num_classes = cfg.model.num_classes or self.batches.num_classes
        self._build_model()
        self.state = TrainState()
        self.steps_per_epoch = self.batches.steps_per_epoch // cfg.train.grad_accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError("fewer batches per epoch than train.grad_accum_steps; lower data.batch_size")
        self.schedule = schedule_from_config(cfg, self.steps_per_epoch, self.world)
        self.scheduler = TricksScheduler(self.optimizer, self.schedule)
        self.mixup = create_mixup(cfg.mixup.alpha, self.num_classes)
        base_loss = LabelSmoothingCrossEntropy(self.num_classes, cfg.loss.label_smoothing, cfg.loss.smoothing_form) \
            if self.num_classes > 1 else nn.CrossEntropyLoss()
        self.criterion = DistillationLoss(base_loss, cfg.distill.temperature, cfg.distill.weight) \
            if self.teacher is not None else base_loss

    # -- setup ------------------------------------------------------------------------------------------------------

    def _check_output_dir(self) -> None:
        out = self.output_dir
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output {str(out)!r} is a file, not a folder")
        has_run = (out / "config.yaml").exists() or (out / "checkpoints").exists()
        if has_run and not self.resume:
            raise ConfigError(f"--output {str(out)!r} already holds a run; pass --resume to continue it or choose "
                              "another folder (nothing was changed)")

    def _build_model(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        seed_everything(cfg.train.seed)  # the same initial weights on every process
        try:
            model = timm.create_model(cfg.model.name, **cfg.model_kwargs(self.num_classes))
        except TypeError as e:
            raise ConfigError(f"model {cfg.model.name!r} does not take one of its options: {e}") from None
        except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as e:  # weights_only=True
            raise ConfigError(f"cannot load the weights of model {cfg.model.name!r}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
        if cfg.train.sync_bn and self.world > 1:
            from .sync_bn import convert_sync_batchnorm

            model = convert_sync_batchnorm(model, self.device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.ema = None
        if cfg.ema.enabled:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=cfg.ema.decay, device=self.device)
        optimizer = create_optimizer(model, cfg, self.world)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if cfg.train.compile:
            self.model = torch.compile(self.model)
        self.teacher = None
        if cfg.distill.teacher:
            if not cfg.distill.checkpoint:
                raise ConfigError("distill.teacher needs distill.checkpoint (the teacher's weights file)")
            if not Path(cfg.distill.checkpoint).is_file():
                raise ConfigError(f"distill.checkpoint {cfg.distill.checkpoint!r} does not exist")
            try:  # timm loads weight files with torch's weights_only=True: a pickle payload is refused, unrun
                teacher = timm.create_model(cfg.distill.teacher, num_classes=self.num_classes,
                                            checkpoint_path=cfg.distill.checkpoint)
            except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as e:
                raise ConfigError(f"cannot load the teacher's weights {cfg.distill.checkpoint!r}: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
            if cfg.train.channels_last:
                teacher = teacher.to(memory_format=torch.channels_last)
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)

    # -- one step ---------------------------------------------------------------------------------------------------

    def _forward_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets: torch.Tensor = labels
        if self.mixup is not None and self.mixup.mixup_enabled:
            images, targets = self.mixup(images, labels)
        with self.accelerator.autocast():
            logits = self.model(images)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(images)
                return self.criterion(logits, teacher_logits, targets)
            return self.criterion(logits, targets)

    def _train_epoch(self, epoch: int) -> float:
        cfg, acc, st = self.cfg, self.accelerator, self.state
        self.model.train()
        set_mixup_epoch(self.mixup, epoch, cfg.train.epochs, cfg.mixup.off_epochs)
        accum = cfg.train.grad_accum_steps
        loss_sum = torch.tensor(st.epoch_loss_sum, dtype=torch.float64, device=self.device)
        kill_at = int(os.environ.get("TIMM_TRICKS_KILL_AT_STEP", "-1"))  # for the resume tests
        batches = self.batches.train_batches(epoch, start_step=st.step_in_epoch * accum)
        progress = self._progress(epoch)
        for micro, (images, labels) in enumerate(batches):
            step = st.step_in_epoch
            seed_everything(step_seed(cfg.train.seed, epoch, step * accum + micro % accum, self.rank, 3))
            with acc.accumulate(self.model):
                loss = self._forward_loss(images, labels)
                acc.backward(loss)
                if acc.sync_gradients and cfg.train.clip_grad:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.train.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().double()
            st.epoch_loss_count += 1
            if not acc.sync_gradients:
                continue
            skipped = acc.optimizer_step_was_skipped  # FP16 loss scaling skipped an overflowing step
            if not skipped and not torch.isfinite(loss.detach()).all():
                self._stop_non_finite(epoch, step)
            if not skipped:
                st.num_updates += 1
                self.scheduler.step_update(st.num_updates)
                if self.ema is not None:
                    self.ema.update(acc.unwrap_model(self.model), step=st.num_updates)
            st.global_step += 1
            st.step_in_epoch += 1
            if progress is not None:
                progress.update(1)
            every = cfg.train.checkpoint_every_steps
            if every and st.global_step % every == 0 and st.step_in_epoch < self.steps_per_epoch:
                st.epoch_loss_sum = loss_sum.item()
                self.save_checkpoint()
            if st.global_step == kill_at:
                _kill_for_tests()
            if self.step_callback is not None:
                self.step_callback(st)
            if st.step_in_epoch >= self.steps_per_epoch:
                break
        if progress is not None:
            progress.close()
        mean = acc.reduce(loss_sum, reduction="sum").item() / (max(st.epoch_loss_count, 1) * self.world)
        st.epoch_loss_sum, st.epoch_loss_count = 0.0, 0
        return mean

    def _progress(self, epoch: int) -> Any:
        if not (self.accelerator.is_main_process and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.steps_per_epoch, initial=self.state.step_in_epoch, desc=f"epoch {epoch}",
                    leave=False, dynamic_ncols=True)

    def _stop_non_finite(self, epoch: int, step: int) -> None:
        last = list_checkpoints(self.output_dir / "checkpoints")
        kept = f"the last good checkpoint is {str(last[-1])!r}" if last else "no checkpoint was written yet"
        raise TrainingError(f"non-finite loss at epoch {epoch} step {step} (global step {self.state.global_step}); "
                            f"stopping; {kept}")

    # -- evaluation -------------------------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module | None = None, tta_flip: bool | None = None) -> dict[str, float]:
        """Top-1, top-5 and loss on the validation set, every sample counted exactly once over all processes."""
        model = model if model is not None else self.accelerator.unwrap_model(self.model)
        return evaluate_model(model, self.batches, self.accelerator,
                              batch_size=self.cfg.data.eval_batch_size or self.per_device_batch,
                              tta_flip=self.cfg.eval.tta_flip if tta_flip is None else tta_flip,
                              channels_last=self.cfg.train.channels_last)

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write the full state atomically as ``checkpoints/ckpt-<global step>`` (:mod:`timm_tricks.checkpoint`);
        prune old ones."""
        acc = self.accelerator
        folder = self.output_dir / "checkpoints"
        final = folder / f"{CHECKPOINT_PREFIX}{self.state.global_step:09d}"
        tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{self.state.global_step:09d}"
        # every process's running loss of the epoch in progress (each logs the mean over all of them)
        loss_sums = acc.gather(torch.tensor([self.state.epoch_loss_sum], dtype=torch.float64, device=self.device))
        if acc.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            state = {"counters": self.state.state_dict(), "loss_sums": loss_sums.cpu().tolist(),
                     "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}
            write_checkpoint(tmp, final, model=acc.unwrap_model(self.model), optimizer=self.optimizer,
                             ema=self.ema, state=state, summary=self.output_dir / "summary.csv")
            best = self.output_dir / "checkpoints" / "best.txt"
            best_path = folder / best.read_text().strip() if best.exists() else None
            prune_checkpoints(folder, self.cfg.train.keep_checkpoints, best_path)
        acc.wait_for_everyone()
        return final

    def _mark_best(self, ckpt: Path) -> None:
        if self.accelerator.is_main_process:
            (self.output_dir / "checkpoints" / "best.txt").write_text(ckpt.name)

    def _load_latest(self) -> bool:
        ckpts = list_checkpoints(self.output_dir / "checkpoints")
        if not ckpts:
            return False
        acc = self.accelerator
        state = read_checkpoint(ckpts[-1], model=acc.unwrap_model(self.model), optimizer=self.optimizer,
                                ema=self.ema)
        self.state.load_state_dict(state["counters"])
        sums = state.get("loss_sums") or [0.0]
        # a resume on another number of processes shares the epoch's loss so far out evenly
        self.state.epoch_loss_sum = sums[self.rank] if len(sums) == self.world else sum(sums) / self.world
        if acc.scaler is not None and state.get("scaler"):
            acc.scaler.load_state_dict(state["scaler"])
        self.scheduler.step_update(self.state.num_updates)
        self._restore_summary(ckpts[-1], self.state.epoch)
        acc.print(f"resumed from {ckpts[-1]} (epoch {self.state.epoch}, step {self.state.step_in_epoch})")
        return True

    def _restore_summary(self, checkpoint: Path, epochs_done: int) -> None:
        """Make ``summary.csv`` hold exactly the epochs before ``checkpoint``: its own copy of them where it has one
        (a checkpoint moved to a new folder, such as a restored Ray Tune trial's), else the run folder's rows
        without the epochs the resumed run will train again."""
        path = self.output_dir / "summary.csv"
        source = checkpoint / "summary.csv" if (checkpoint / "summary.csv").exists() else path
        if not self.accelerator.is_main_process or not source.exists():
            return
        rows = read_summary(source)
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) < epochs_done]
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    # -- the loop ---------------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train ``train.epochs`` epochs (or what is left of them) and return the final metrics."""
        cfg, acc, st = self.cfg, self.accelerator, self.state
        out = self.output_dir
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(cfg.to_yaml())
        acc.wait_for_everyone()
        if self.resume:
            self._load_latest()
        acc.init_trackers("tensorboard", config=_flat_hparams(cfg))
        metrics: dict[str, float] = {}
        while st.epoch < cfg.train.epochs:
            epoch, t0 = st.epoch, time.perf_counter()
            train_loss = self._train_epoch(epoch)
            if self.world > 1 and not cfg.train.sync_bn:
                # Each process's BN running statistics saw only its shard: average them (timm's --dist-bn reduce)
                # so every process evaluates, checkpoints and saves the same model.
                from timm.utils import distribute_bn

                distribute_bn(self.model, self.world, reduce=True)
            metrics = {"epoch": epoch, "train_loss": train_loss, **self.evaluate()}
            if self.ema is not None:
                ema = self.evaluate(self.ema.module)
                metrics.update({f"ema_{k}": v for k, v in ema.items() if k != "eval_count"})
            metrics["lr"] = self.schedule.factor(max(st.num_updates - 1, 0)) * cfg.scaled_lr(self.world)
            metrics["seconds"] = time.perf_counter() - t0
            st.epoch, st.step_in_epoch = epoch + 1, 0
            improved = metrics["eval_top1"] > st.best_top1
            st.best_top1 = max(st.best_top1, metrics["eval_top1"])
            self._log_epoch(metrics)
            ckpt = self.save_checkpoint()
            if improved:
                self._mark_best(ckpt)
            if self.callback is not None and acc.is_main_process:
                self.callback(epoch, metrics, ckpt)
        if not metrics and (out / "metrics.json").exists():
            # Resumed after the last epoch (a restored search's finished trial): nothing trained, nothing rewritten.
            acc.end_training()
            return json.loads((out / "metrics.json").read_text())
        final = {k: v for k, v in metrics.items() if k != "epoch"}
        final["best_top1"] = st.best_top1
        self._write_outputs(final)
        acc.end_training()
        return final

    def _log_epoch(self, m: dict[str, float]) -> None:
        acc = self.accelerator
        acc.log({k: v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))
        ema = f" ema_top1 {m['ema_eval_top1']:.2f}" if "ema_eval_top1" in m else ""
        acc.print(f"epoch {m['epoch']:>3}  train_loss {m['train_loss']:.4f}  eval_loss {m['eval_loss']:.4f}  "
                  f"top1 {m['eval_top1']:.2f}  top5 {m['eval_top5']:.2f}{ema}  lr {m['lr']:.5g}  {m['seconds']:.1f}s")
        if acc.is_main_process:
            path = self.output_dir / "summary.csv"
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(SUMMARY_FIELDS)
                writer.writerow([m["epoch"]] + [f"{m[k]:.6g}" for k in SUMMARY_FIELDS[1:]])

    def _write_outputs(self, final: dict[str, float]) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        from safetensors.torch import save_file

        model = acc.unwrap_model(self.model)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(self.output_dir / "model.safetensors"))
        if self.ema is not None:
            ema_state = {k: v.detach().contiguous().cpu() for k, v in self.ema.module.state_dict().items()}
            save_file(ema_state, str(self.output_dir / "model_ema.safetensors"))
        (self.output_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")


@torch.no_grad()
def evaluate_model(model: nn.Module, batches: TensorBatches | FileBatches, accelerator: Any, batch_size: int,
                   tta_flip: bool = False, channels_last: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) of ``model`` on ``batches``' validation share of every process, summed
    over processes: each validation image is counted once, whatever the number of processes.

    The model runs unwrapped (no DDP), so processes with one batch more than others cannot deadlock.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # loss sum, top1, top5, count
    for images, labels in batches.eval_batches(batch_size):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = flip_tta(model, images) if tta_flip else model(images)
        totals += topk_counts(logits.float(), labels)
    model.train(was_training)
    totals = accelerator.reduce(totals, reduction="sum")
    n = max(totals[3].item(), 1.0)
    return {"eval_loss": totals[0].item() / n, "eval_top1": 100 * totals[1].item() / n,
            "eval_top5": 100 * totals[2].item() / n, "eval_count": int(totals[3].item())}


def evaluate_checkpoint(path: str | Path, data: str | None = None, tta_flip: bool = False,
                        download: bool = False) -> dict[str, float]:
    """Evaluate a finished run: ``path`` is its output folder or its ``model.safetensors`` (with the run's
    ``config.yaml`` beside it). ``data`` overrides the run's data source."""
    from accelerate import Accelerator
    from safetensors.torch import load_file

    from .config import load_config

    path = Path(path)
    run = path if path.is_dir() else path.parent
    weights = path if path.is_file() else run / "model.safetensors"
    if not (run / "config.yaml").is_file() or not weights.is_file():
        raise ConfigError(f"--checkpoint {str(path)!r} is not a finished run: it needs config.yaml and "
                          "model.safetensors (the --output folder of timm-tricks train)")
    overrides = [f"data.source={data}"] if data else []
    cfg = load_config(run / "config.yaml", overrides)
    acc = Accelerator(mixed_precision=cfg.train.precision)
    batches = build_batches(cfg, parse_source(cfg.data.source), cfg.per_device_batch_size(acc.num_processes),
                            acc.process_index, acc.num_processes, acc.device, download)
    kwargs = cfg.model_kwargs(batches.num_classes) | {"pretrained": False}
    kwargs.pop("pretrained_cfg_overlay", None)
    model = timm.create_model(cfg.model.name, **kwargs)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise ConfigError(f"weights {str(weights)!r} do not fit model {cfg.model.name!r}: {e}") from None
    model.to(acc.device)
    batch = cfg.data.eval_batch_size or cfg.per_device_batch_size(acc.num_processes)
    return evaluate_model(model, batches, acc, batch, tta_flip=tta_flip, channels_last=cfg.train.channels_last)


def topk_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[loss sum, top-1 correct, top-5 correct, count]`` of one batch, as float64."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    loss = F.cross_entropy(logits, labels, reduction="sum")
    return torch.stack([loss.double(), hit[:, 0].sum().double(), hit.any(1).sum().double(),
                        torch.tensor(len(labels), dtype=torch.float64, device=logits.device)])


def _flat_hparams(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            for k, v in values.items():
                out[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


__all__ = ["Trainer", "TrainState", "TrainingError", "DataError", "step_seed", "topk_counts"]
