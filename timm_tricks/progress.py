"""What a run prints as it goes: lines that reach any log (a terminal, ``timm-tricks train ... >log 2>&1``, a batch
scheduler's file, a Ray trial's log), on the main process, to stdout, each flushed at once (issue 14 item 1).

- **The start line**: the model and its parameter count, the data (source, train / validation images, classes),
  the processes and their device, the precision, the global batch, and the peak learning rate after the linear
  scaling rule (He et al., "Bag of Tricks", CVPR 2019, Sec. 3.1).
- **Step lines**: ``epoch E step S/N`` of the epoch, images per second over all processes, the mean training loss
  since the last line (this process's), the learning rate and the time the epoch's training still needs. One every
  ``train.log_every_steps`` optimizer steps, one at the last step of each epoch, and otherwise one before
  ``train.log_every_seconds`` pass without a line: a line is printed when the next step, if it took 1.5 times as
  long as the last one, would end past that time.
- **The epoch line**: losses, top-1 / top-5 (the EMA weights' top-1 too when ``ema.enabled``), the learning rate,
  the epoch's seconds and the run's ETA: the epochs left times this session's mean epoch.
- On a terminal (stderr a TTY), tqdm's bar as well; the lines then go through tqdm so the bar stays whole.

A training step leaves its values on the device: the epoch's loss sum and :class:`NonFiniteWatch`'s first step with
a non-finite loss. The trainer reads them, in one transfer, only when a line is due, before a checkpoint and at the
end of an epoch, so a step does not wait for the device (PyTorch's performance tuning guide, "Avoid unnecessary
CPU-GPU synchronization").
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

    from .config import Config

STEP_MARGIN = 1.5  # Progress.due: the next step may take this much longer than the last one
NO_STEP = 1 << 62  # NonFiniteWatch: no non-finite loss yet (exact as a float64)
SUMMARY_FIELDS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "seconds")
EMA_SUMMARY_FIELDS = ("ema_eval_loss", "ema_eval_top1", "ema_eval_top5")  # appended when ema.enabled


class NonFiniteWatch:
    """The first optimizer step whose loss was not finite, kept on the device: :meth:`record` adds no host sync,
    :attr:`first` is read with the other values of the step (:data:`NO_STEP` while every loss was finite)."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), NO_STEP, dtype=torch.int64, device=device)

    def record(self, loss: torch.Tensor, global_step: int) -> None:
        """Note ``global_step`` if ``loss`` is not finite and no earlier step was (the step number goes to the kernel
        as a scalar argument, not as a copy)."""
        bad = torch.where(torch.isfinite(loss.detach()).all(), NO_STEP, global_step)
        torch.minimum(self.first, bad, out=self.first)


def data_sizes(batches: Any) -> tuple[int, int | None]:
    """Training and validation images of a batch source (``timm_tricks.batches``); None where a stream does not
    say."""
    data = getattr(batches, "data", None)
    if data is not None:  # in memory
        return len(data.train_labels), len(data.val_labels)
    try:
        return batches.shard.size, len(batches.val)
    except TypeError:
        return batches.shard.size, None


def start_line(cfg: Config, model: nn.Module, batches: Any, device: torch.device, world: int, peak_lr: float,
               num_classes: int) -> str:
    """The run's first line: model and parameters, data, processes and device, precision, global batch, peak lr."""
    train, val = data_sizes(batches)
    where = f"{world} process{'es' if world > 1 else ''} on {device.type}"
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    batch, o = cfg.global_batch_size(world), cfg.optim
    scaled = f"optim.lr {o.lr:g} x {batch} / {o.base_batch_size}" if o.linear_scaling else "optim.lr, not scaled"
    parameters = sum(p.numel() for p in model.parameters())
    return (f"train: model {cfg.model.name} ({parameters / 1e6:.2f}M parameters); data {cfg.data.source}: {train} "
            f"train / {'?' if val is None else val} val images, {num_classes} classes; {where}; precision "
            f"{cfg.train.precision}; global batch {batch} ({batch // world} per process); peak lr {peak_lr:.5g} "
            f"({scaled})")


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    s = max(int(round(seconds)), 0)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def epoch_line(m: dict[str, float], eta: float) -> str:
    """The epoch line of metrics ``m`` (the trainer's, ``ema_*`` when the EMA is on) and the run's ETA."""
    ema = f" ema_top1 {m['ema_eval_top1']:.2f}" if "ema_eval_top1" in m else ""
    return (f"epoch {m['epoch']:>3}  train_loss {m['train_loss']:.4f}  eval_loss {m['eval_loss']:.4f}  "
            f"top1 {m['eval_top1']:.2f}  top5 {m['eval_top5']:.2f}{ema}  lr {m['lr']:.5g}  {m['seconds']:.1f}s  "
            f"eta {duration(eta)}")


def append_summary(path: Path, m: dict[str, float]) -> None:
    """Append epoch metrics ``m`` to ``summary.csv`` (its header first when the file is new; the EMA columns when
    ``m`` has them)."""
    import csv

    new = not path.exists()
    fields = SUMMARY_FIELDS + (EMA_SUMMARY_FIELDS if "ema_eval_top1" in m else ())
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(fields)
        writer.writerow([m["epoch"]] + [f"{m[k]:.6g}" for k in fields[1:]])


class Progress:
    """The lines of one run (see the module notes); everything prints only when ``main``.

    Args:
        main: This is the main process (the one that prints).
        every_steps: A step line every this many optimizer steps (``train.log_every_steps``).
        every_seconds: And at least this often (``train.log_every_seconds``).
        images_per_step: The global batch.
        clock: Seconds, monotonic (a test's own clock).
    """

    def __init__(self, main: bool, every_steps: int, every_seconds: float, images_per_step: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.main, self.every_steps, self.every_seconds = main, every_steps, every_seconds
        self.images_per_step, self.clock, self.steps_per_epoch = images_per_step, clock, 0
        self.bar: Any = None
        self.last_line = self.last_step = clock()
        self.rate_from = (self.last_line, 0)  # (time, global step) of the last step line or the epoch's start
        self.loss_from = (0.0, 0)  # (loss sum, micro-batches) of the epoch at the last step line
        self.epoch_seconds: list[float] = []

    def say(self, line: str) -> None:
        """Print ``line`` to stdout now (through the bar, if one is shown)."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(line, flush=True)
        self.last_line = self.clock()

    def start_epoch(self, epoch: int, steps: tuple[int, int], global_step: int, loss: tuple[float, int]) -> None:
        """Epoch ``epoch`` (re)starts at optimizer step ``steps[0]`` of its ``steps[1]`` (``global_step`` of the
        run) with ``loss`` = (its loss sum, micro-batches) so far; on a terminal its bar opens."""
        now, (step, self.steps_per_epoch) = self.clock(), steps
        self.rate_from, self.loss_from, self.last_step = (now, global_step), loss, now
        if self.main and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.steps_per_epoch, initial=step, desc=f"epoch {epoch}", leave=False,
                            dynamic_ncols=True)

    def due(self, global_step: int, step: int) -> bool:
        """Whether a step line is due after optimizer step ``global_step`` (``step`` of the epoch, both counted
        done): by steps on every process alike, by time on the main process only."""
        now, last_step = self.clock(), self.last_step
        self.last_step = now
        if self.bar is not None:
            self.bar.update(1)
        if self.counted(global_step, step):
            return True
        return self.main and now - self.last_line + STEP_MARGIN * (now - last_step) >= self.every_seconds

    def counted(self, global_step: int, step: int) -> bool:
        """Whether a line is due by the step count alone, which every process reaches together."""
        return global_step % self.every_steps == 0 or step >= self.steps_per_epoch

    def start_eval(self) -> None:
        """An evaluation starts: :meth:`eval_tick` times its batches from now."""
        self.last_step = self.clock()

    def eval_tick(self, what: str, images: int) -> None:
        """After an evaluation batch (``images`` of this process done so far): a line when the next batch could
        otherwise pass ``every_seconds`` since the last line (the margin of :meth:`due`), so that a long evaluation
        does not go quiet in a log. Main process only; nothing is read from the device."""
        now, last = self.clock(), self.last_step
        self.last_step = now
        if self.main and now - self.last_line + STEP_MARGIN * (now - last) >= self.every_seconds:
            self.say(f"{what}: {images:,} images of this process so far")

    def step_line(self, epoch: int, step: int, global_step: int, loss: tuple[float, int], lr: float) -> None:
        """Print the step line; ``loss`` is the epoch's (loss sum, micro-batches) now."""
        now = self.clock()
        seconds, steps = now - self.rate_from[0], global_step - self.rate_from[1]
        count = loss[1] - self.loss_from[1]
        mean = (loss[0] - self.loss_from[0]) / count if count else float("nan")
        rate = steps * self.images_per_step / seconds if seconds > 0 else float("nan")
        left = (self.steps_per_epoch - step) * seconds / steps if steps else 0.0
        self.rate_from, self.loss_from = (now, global_step), loss
        self.say(f"epoch {epoch} step {step}/{self.steps_per_epoch}  {rate:.1f} img/s  loss {mean:.4f}  "
                 f"lr {lr:.5g}  epoch eta {duration(left)}")

    def end_epoch(self, metrics: dict[str, float], epochs_left: int) -> None:
        """Close the bar; print the epoch line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.epoch_seconds.append(metrics["seconds"])
        self.say(epoch_line(metrics, epochs_left * sum(self.epoch_seconds) / len(self.epoch_seconds)))
