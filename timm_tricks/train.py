"""The accelerate trainer: one CPU, one GPU, many GPUs or many nodes, FP16 or bf16, with exact resume.

``Trainer(config, output_dir).fit()`` trains the recipe's model on its data with every trick the config switches
on, evaluates after each epoch, checkpoints, and returns the final metrics. The same code runs under
``accelerate launch``; the global batch (``data.batch_size``) is split over the processes and accumulation steps,
and the learning rate follows the linear scaling rule on that global batch.

Exact resume. Every random draw of a training step (data order, augmentation, mixup, dropout) comes from
generators seeded by ``(seed, epoch, step, process)`` (:mod:`timm_tricks.seeding`), so a run resumed at step ``k``
draws exactly what the uninterrupted run drew; the checkpoint (:mod:`timm_tricks.checkpoint`: model, optimizer,
EMA, loss scaler and step counters, as safetensors and JSON) holds the rest. Checkpoints are written to a
temporary folder and renamed into place, so a run killed mid-write never replaces the last good one.

The parts: the model, optimizer, schedule, loss and batch source come from :mod:`timm_tricks.build`; evaluation
is :mod:`timm_tricks.evaluate`, checkpoint files :mod:`timm_tricks.checkpoint`, the run folder
:mod:`timm_tricks.run_folder`.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .build import (
    build_accelerator,
    build_batches,
    build_ema,
    build_model,
    build_teacher,
    check_accelerator,
    check_input_channels,
    keep_ghost_batch_size,
    loss_from_config,
    optimizer_from_config,
    schedule_from_config,
    start_trackers,
    warn_launcher_precision,
    with_pretrained_transforms,
)
from .checkpoint import (
    CHECKPOINT_PREFIX,
    CheckpointError,
    list_checkpoints,
    newest_intact,
    prune_checkpoints,
    read_checkpoint,
    read_summary,
    write_checkpoint,
)
from .choices import is_better
from .config import Config
from .data import parse_source
from .errors import ConfigError, DataError, TrainingError
from .evaluate import evaluate_model, shard_for
from .mixup import create_mixup, set_mixup_epoch
from .progress import NO_STEP, NonFiniteWatch, Progress, append_summary, start_line
from .run_folder import RunFolder, write_atomic
from .schedule import TricksScheduler
from .seeding import global_generators, seed_global_torch, step_seed, use_deterministic_kernels
from .whitening import fit_input_whitening


@dataclass
class TrainState:
    """Counters that, with the accelerate state, say exactly where a run is."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in that epoch
    num_updates: int = 0  # optimizer steps taken (not skipped) so far: the schedule's position
    global_step: int = 0  # optimizer steps attempted so far
    best_top1: float = -1.0
    best_value: float | None = None  # the best train.best_metric so far
    epoch_loss_sum: float = 0.0  # this process's summed training loss of the epoch in progress
    epoch_loss_count: int = 0  # micro-batches in that sum (those of FP16-skipped steps are in neither)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


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
        cfg = with_pretrained_transforms(cfg)  # before config.yaml is written: it records what the run feeds
        self.cfg, self.output_dir, self.resume, self.callback = cfg, Path(output_dir), resume, callback
        self.step_callback = step_callback
        if accelerator is not None:
            check_accelerator(accelerator, cfg)
        self.accelerator = acc = accelerator or build_accelerator(cfg, self.output_dir)
        self.progress = Progress(acc.is_main_process, cfg.train.log_every_steps, cfg.train.log_every_seconds,
                                 cfg.global_batch_size(acc.num_processes))
        self.folder = RunFolder(self.output_dir, resume)
        self._claim_folder()
        self.progress.say(f"train: {cfg.name} into {str(self.output_dir)!r}: reading data {cfg.data.source}, "
                          f"building model {cfg.model.name}")
        try:
            self._setup(download)
        except BaseException:
            if acc.is_main_process:
                self.folder.abandon()
            raise

    def _setup(self, download: bool) -> None:
        cfg, acc = self.cfg, self.accelerator
        warn_launcher_precision(cfg.train.precision, acc.is_main_process)
        if cfg.train.deterministic:
            use_deterministic_kernels()
        self.device = acc.device
        self.world, self.rank = acc.num_processes, acc.process_index
        self.per_device_batch = cfg.per_device_batch_size(self.world)
        self.peak_lr = cfg.scaled_lr(self.world)  # the one peak: optimizer, schedule and logs
        self.source = parse_source(cfg.data.source)
        self.batches = build_batches(cfg, self.source, shard_for(cfg, acc), self.device, download)
        self.num_classes = cfg.model.num_classes or self.batches.num_classes
        if self.num_classes < (self.batches.num_classes or 0):
            raise ConfigError(f"model.num_classes={self.num_classes} but data.source {cfg.data.source!r} has "
                              f"{self.batches.num_classes} classes; set it to at least that, or to null")
        self._build_model()
        check_input_channels(self.accelerator.unwrap_model(self.model), self.batches.channels, cfg.model.name)
        self.state = TrainState()
        self.steps_per_epoch = self.batches.steps_per_epoch // cfg.train.grad_accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError("fewer batches per epoch than train.grad_accum_steps; lower data.batch_size")
        self.schedule = schedule_from_config(cfg, self.steps_per_epoch, self.peak_lr)
        self.scheduler = TricksScheduler(self.optimizer, self.schedule)
        self.mixup = create_mixup(cfg.mixup.alpha, self.num_classes)
        self.criterion = loss_from_config(cfg, self.num_classes, distill=self.teacher is not None)
        self.may_skip_steps = acc.scaler is not None  # only FP16's GradScaler skips steps: read it only then
        self.watch = NonFiniteWatch(self.device)

    # -- setup ------------------------------------------------------------------------------------------------------

    def _claim_folder(self) -> None:
        """Claim the output folder on the main process (:class:`timm_tricks.run_folder.RunFolder`); every process
        raises the same error if the claim is refused."""
        acc, refused = self.accelerator, [None]
        if acc.is_main_process:
            try:
                self.folder.claim(self.cfg.to_yaml())
            except ConfigError as e:
                refused = [str(e)]
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(refused)
        if refused[0]:
            raise ConfigError(refused[0])

    def _build_model(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        model = build_model(cfg, self.num_classes)
        if not (self.resume and list_checkpoints(self.output_dir / "checkpoints")):  # a resume loads the filter
            fit_input_whitening(model, self.batches)  # Myrtle post 8's patch whitening, if the model has one
        synchronised = cfg.train.sync_bn and self.world > 1
        if synchronised:
            from .sync_bn import convert_sync_batchnorm

            model = convert_sync_batchnorm(model, self.device)
        keep_ghost_batch_size(model, cfg, self.world, synchronised)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.ema = build_ema(cfg, model, self.device)
        self.model, self.optimizer = acc.prepare(model, optimizer_from_config(model, cfg, self.peak_lr))
        if cfg.train.compile:
            self.model = torch.compile(self.model)
        teacher = build_teacher(cfg, self.num_classes)
        if teacher is not None and cfg.train.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        self.teacher = teacher.to(self.device) if teacher is not None else None

    # -- one step ---------------------------------------------------------------------------------------------------

    def _forward_loss(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
        cfg = self.cfg
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets: torch.Tensor = labels
        if self.mixup is not None and self.mixup.mixup_enabled:
            images, targets = self.mixup(images, labels, seed=seed)
        with self.accelerator.autocast():
            logits = self.model(images)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(images)
                return self.criterion(logits, teacher_logits, targets)
            return self.criterion(logits, targets)

    def _train_epoch(self, epoch: int) -> float:
        """Train what is left of ``epoch``; return its mean training loss over all processes.

        No step waits for the device (issue 15 item 2): the loss sum and the non-finite check
        (:class:`~timm_tricks.progress.NonFiniteWatch`) stay on the device and are read when a progress line is
        due, before a checkpoint and at the end of the epoch (:meth:`_read`); FP16's skipped-step flag, a host
        read, is taken only when a GradScaler can skip. Each micro-batch seeds torch's global generators of the
        device (dropout, drop path: :func:`~timm_tricks.seeding.seed_global_torch`) and draws its mixup from a
        generator of the same step seed, so a resumed run draws what the uninterrupted run drew.
        """
        cfg, acc, st = self.cfg, self.accelerator, self.state
        self.model.train()
        set_mixup_epoch(self.mixup, epoch, cfg.train.epochs, cfg.mixup.off_epochs)
        accum, generators = cfg.train.grad_accum_steps, global_generators(self.device)
        loss_sum = torch.tensor(st.epoch_loss_sum, dtype=torch.float64, device=self.device)
        step_loss, step_micro = torch.zeros((), dtype=torch.float64, device=self.device), 0  # this step's so far
        batches = self.batches.train_batches(epoch, start_step=st.step_in_epoch * accum)
        self.progress.start_epoch(epoch, (st.step_in_epoch, self.steps_per_epoch), st.global_step,
                                  (st.epoch_loss_sum, st.epoch_loss_count))
        for micro, (images, labels) in enumerate(batches):
            seed = step_seed(cfg.train.seed, epoch, st.step_in_epoch * accum + micro % accum, self.rank, 3)
            seed_global_torch(seed, generators)
            with acc.accumulate(self.model):
                loss = self._forward_loss(images, labels, seed)
                acc.backward(loss)
                if acc.sync_gradients and cfg.train.clip_grad:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.train.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach().double()
            step_micro += 1
            if not acc.sync_gradients:
                continue
            if not (self.may_skip_steps and acc.optimizer_step_was_skipped):  # FP16 skipped an overflowing step
                loss_sum += step_loss  # a skipped step's loss (often inf) is left out of the epoch's mean
                st.epoch_loss_count += step_micro
                self.watch.record(loss, st.global_step)
                st.num_updates += 1
                self.scheduler.step_update(st.num_updates)
                if self.ema is not None and st.num_updates % cfg.ema.every_steps == 0:
                    self.ema.update(acc.unwrap_model(self.model), step=st.num_updates)
            step_loss.zero_()
            step_micro = 0
            st.global_step += 1
            st.step_in_epoch += 1
            every = cfg.train.checkpoint_every_steps
            save = every and st.global_step % every == 0 and st.step_in_epoch < self.steps_per_epoch
            due = self.progress.due(st.global_step, st.step_in_epoch)
            if due or save:  # a line due by time alone is the main process's: it reads, but stops no one
                st.epoch_loss_sum = self._read(loss_sum, epoch,
                                               together=bool(save) or self.progress.counted(st.global_step,
                                                                                            st.step_in_epoch))
            if due:
                self.progress.step_line(epoch, st.step_in_epoch, st.global_step,
                                        (st.epoch_loss_sum, st.epoch_loss_count), self._lr())
            if save:
                self.save_checkpoint()
            if self.step_callback is not None:
                self.step_callback(st)
            if st.step_in_epoch >= self.steps_per_epoch:
                break
        self._read(loss_sum, epoch, together=True)
        count = st.epoch_loss_count * self.world  # every process takes or skips the same steps
        mean = acc.reduce(loss_sum, reduction="sum").item() / count if count else float("nan")
        st.epoch_loss_sum, st.epoch_loss_count = 0.0, 0
        return mean

    def _read(self, loss_sum: torch.Tensor, epoch: int, together: bool) -> float:
        """The epoch's loss sum so far, read with the non-finite watch in one transfer. At a read that every process
        makes ``together`` (a line due by step count, a checkpoint, the epoch's end) the watch is the earliest of
        all processes', and a non-finite loss stops them all alike; a read of the main process alone (a line due by
        time) stops nothing, so that no process is left waiting for the others in a collective."""
        first_bad = self.watch.first
        if together and self.world > 1:
            first_bad = self.accelerator.gather(first_bad.view(1)).min()
        total, first = torch.stack([loss_sum, first_bad.double()]).tolist()
        if together and first < NO_STEP:
            self._stop_non_finite(epoch, int(first) - (self.state.global_step - self.state.step_in_epoch), int(first))
        return total

    def _lr(self) -> float:
        """The learning rate of the last step taken (groups without a multiplier): the schedule's, not a read."""
        return self.schedule.factor(max(self.state.num_updates - 1, 0)) * self.peak_lr

    def _stop_non_finite(self, epoch: int, step: int, global_step: int) -> None:
        last = list_checkpoints(self.output_dir / "checkpoints")
        kept = f"the last good checkpoint is {str(last[-1])!r}" if last else "no checkpoint was written yet"
        raise TrainingError(f"non-finite loss at epoch {epoch} step {step} (global step {global_step}); "
                            f"stopping; {kept}")

    # -- evaluation -------------------------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module | None = None, tta_flip: bool | None = None) -> dict[str, float]:
        """Top-1, top-5 and loss on the validation set, every sample counted exactly once over all processes."""
        what = "evaluating the EMA" if self.ema is not None and model is self.ema.module else "evaluating"
        model = model if model is not None else self.accelerator.unwrap_model(self.model)
        self.progress.start_eval()
        return evaluate_model(model, self.batches, self.accelerator,
                              batch_size=self.cfg.data.eval_batch_size or self.per_device_batch,
                              tta_flip=self.cfg.eval.tta_flip if tta_flip is None else tta_flip,
                              channels_last=self.cfg.train.channels_last,
                              on_batch=lambda images: self.progress.eval_tick(what, images))

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
        folder, acc = self.output_dir / "checkpoints", self.accelerator
        if not list_checkpoints(folder):
            return False
        warnings: list[str] = []
        ckpt = newest_intact(folder, warnings.append)
        if acc.is_main_process:
            for line in warnings:
                print(f"timm-tricks: warning: {line}", file=sys.stderr)
        if ckpt is None:
            raise CheckpointError(f"--resume: no checkpoint in {str(folder)!r} is intact ({warnings[0]})")
        state = read_checkpoint(ckpt, model=acc.unwrap_model(self.model), optimizer=self.optimizer, ema=self.ema)
        self.state.load_state_dict(state["counters"])
        sums = state.get("loss_sums") or [0.0]
        # a resume on another number of processes shares the epoch's loss so far out evenly
        self.state.epoch_loss_sum = sums[self.rank] if len(sums) == self.world else sum(sums) / self.world
        if acc.scaler is not None and state.get("scaler"):
            acc.scaler.load_state_dict(state["scaler"])
        self.scheduler.step_update(self.state.num_updates)
        self._restore_summary(ckpt, self.state.epoch)
        exact = self.cfg.train.deterministic or self.device.type == "cpu"
        self.progress.say(f"resumed from {ckpt} (epoch {self.state.epoch}, step {self.state.step_in_epoch})" +
                          ("" if exact else f"; on {self.device.type} the continuation matches an uninterrupted run "
                                            "only with train.deterministic=true"))
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
        acc = self.accelerator
        try:
            return self._fit()
        except BaseException:
            if acc.is_main_process:
                self.folder.abandon()  # before the first checkpoint: leave nothing that blocks a plain retry
            raise
        finally:
            self.folder.release()

    def _fit(self) -> dict[str, float]:
        cfg, acc, st = self.cfg, self.accelerator, self.state
        out = self.output_dir
        self.progress.say(start_line(cfg, acc.unwrap_model(self.model), self.batches, self.device, self.world,
                                     self.peak_lr, self.num_classes))
        if self.resume:
            self._load_latest()
        start_trackers(acc, cfg, out)
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
            metrics["lr"] = self._lr()
            metrics["seconds"] = time.perf_counter() - t0
            st.epoch, st.step_in_epoch = epoch + 1, 0
            improved = is_better(cfg.train.best_metric, metrics[cfg.train.best_metric], st.best_value)
            st.best_value = metrics[cfg.train.best_metric] if improved else st.best_value
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
        self.accelerator.log({k: v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))
        self.progress.end_epoch(m, self.cfg.train.epochs - int(m["epoch"]) - 1)
        if self.accelerator.is_main_process:
            append_summary(self.output_dir / "summary.csv", m)

    def _write_outputs(self, final: dict[str, float]) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        from safetensors.torch import save

        # final files through a temporary name and a rename (:func:`timm_tricks.run_folder.write_atomic`)
        models = {"model.safetensors": acc.unwrap_model(self.model)}
        if self.ema is not None:
            models["model_ema.safetensors"] = self.ema.module
        for name, model in models.items():
            state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
            write_atomic(self.output_dir / name, save(state))
        write_atomic(self.output_dir / "metrics.json", (json.dumps(final, indent=2) + "\n").encode())


__all__ = ["Trainer", "TrainState", "TrainingError", "DataError"]
