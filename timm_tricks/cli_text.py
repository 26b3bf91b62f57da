"""The command line's own words: its description, each command's examples, and the ``lr-schedule`` summary.

Plain text only (no torch, timm or Ray), so ``timm-tricks --help`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

DESCRIPTION = """\
Train timm image classifiers with the tricks of "Bag of Tricks for Image Classification" (He et al., CVPR 2019),
Myrtle.ai's fast CIFAR ResNet and other papers, from YAML recipes that cite a source for every number; search
their hyperparameters with Ray Tune, and measure what each trick adds with an ablation ladder."""

EPILOG = """\
examples:
  timm-tricks recipes                                   the shipped recipes, one line each
  timm-tricks recipes show digits                       a recipe with its comments, then what it resolves to
  timm-tricks keys schedule                             every schedule key: type, default, range, meaning
  timm-tricks train --recipe digits --output runs/digits
  timm-tricks tune --space digits --num-samples 8 --epochs 6
  timm-tricks ablate --ladder bag_of_tricks --data folder:/data/imagenet --seeds 3 --gpus-per-trial 8

'timm-tricks COMMAND --help' explains a command. Bad input exits with status 2 and one line naming it;
a training run stopped by an error (a non-finite loss) exits with 1, Ctrl-C with 130."""

EXAMPLES = {
    "recipes": """\
examples:
  timm-tricks recipes                          one line per shipped recipe
  timm-tricks recipes show bag_of_tricks       the file with its comments, then the values that differ from the
                                               defaults (inherited from its base: recipes too)
  timm-tricks recipes show my_recipe.yaml --all   every resolved value of your own recipe file

Keys that do nothing in the recipe (schedule.milestones under a cosine schedule, augment.crop_padding under the
bot pipeline, ...) are left out and listed at the end.""",
    "keys": """\
examples:
  timm-tricks keys                  every key of every section
  timm-tricks keys schedule         the schedule section
  timm-tricks keys optim.lr         one key

Set a key in a recipe file, or for one run with --set KEY=VALUE (the value is YAML: --set
schedule.milestones=[30,60,90], --set distill.teacher=null).""",
    "lr-schedule": """\
examples:
  timm-tricks lr-schedule --recipe bag_of_tricks                      a summary, ImageNet's steps per epoch
  timm-tricks lr-schedule --recipe digits --plot lr.png               the summary, and a plot
  timm-tricks lr-schedule --recipe myrtle_resnet9 --epochs 24 --csv lr.csv   every step's lr in a CSV file

Without --steps-per-epoch the steps come from the data set's size (ImageNet-1k, CIFAR, digits) and the global
batch, full batches only, as the trainer takes them.""",
    "train": """\
examples:
  timm-tricks train --recipe digits --output runs/digits           a few minutes on a laptop CPU
  timm-tricks train --recipe digits --output runs/digits --resume  continue after a kill
  timm-tricks train --recipe bag_of_tricks --data folder:/data/imagenet --set distill.teacher=null --output runs/bot
  accelerate launch --multi_gpu -m timm_tricks train --recipe bag_of_tricks --data folder:/data/imagenet \\
      --output runs/bot                                           on every GPU of this machine""",
    "tune": """\
examples:
  timm-tricks tune --space digits --num-samples 8 --epochs 6        Optuna + ASHA on this machine's CPUs
  timm-tricks tune --space digits --scheduler pbt --num-samples 4 --epochs 10
  timm-tricks tune --space digits --num-samples 8 --epochs 6 --resume     after the driver was killed
  timm-tricks tune --space bag_of_tricks --data folder:/data/imagenet --gpus-per-trial 4 \\
      --address auto --storage /shared/tune --name bot                  on a Ray cluster

While it runs it prints a line when a trial starts, reports an epoch, is stopped (with ASHA's rung), crashes and
is retried, or fails, and a status of all trials every --status-every seconds; --quiet for none. At the end:
report.md, trials.csv, best_recipe.yaml and plots in STORAGE/NAME.""",
    "ablate": """\
examples:
  timm-tricks ablate --list
  timm-tricks ablate --ladder bag_of_tricks --data folder:/data/imagenet --seeds 3 --gpus-per-trial 8
  timm-tricks ablate --ladder bag_of_tricks --data digits --model resnet18d_tricks --teacher-model \\
      resnet18d_tricks --epochs 1 --batch-size 128 --set data.image_size=16     a minutes-long smoke run

It prints its progress as tune does; at the end: ablation.md, ablation.csv and ablation.png in STORAGE/NAME.""",
    "eval": """\
examples:
  timm-tricks eval --checkpoint runs/digits                   top-1, top-5 and loss on the run's own data
  timm-tricks eval --checkpoint runs/digits --tta             with flip test-time augmentation
  timm-tricks eval --checkpoint runs/bot/model.safetensors --data folder:/data/imagenet-v2 --out v2.json""",
}


# ----------------------------------------------------------------------------------------------------------------
# lr-schedule's summary

MAX_ROWS = 40  # epoch boundaries the summary shows at most (every k-th epoch beyond that)


def epoch_stride(epochs: int, max_rows: int = MAX_ROWS) -> int:
    """Show every k-th epoch, k from 1, 2, 5, 10, 20, 25, 50, 100, ..., the smallest that keeps the rows to
    ``max_rows``."""
    k = 1
    for k in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if math.ceil(epochs / k) <= max_rows:
            return k
    return k


def schedule_summary(title: str, schedule: Any, rows: Sequence[tuple[int, float, float]], peak: str) -> list[str]:
    """The lines ``lr-schedule`` prints without ``--csv``: the schedule in one line, the peak and where the warmup
    ends, and the learning rate at each epoch boundary (every k-th on long runs) and at the last step.

    Args:
        title: The recipe's name (and where its steps per epoch come from).
        schedule: The :class:`~timm_tricks.schedule.LRSchedule`.
        rows: ``(step, epoch, lr)`` of every step (:func:`timm_tricks.schedule.lr_table`).
        peak: The peak in words (``0.4 = optim.lr 0.1 x batch 1024 / 256``).
    """
    spe, total = schedule.steps_per_epoch, len(rows)
    top = max(range(total), key=lambda i: rows[i][2])
    lines = [f"{title}: {schedule.name} schedule, {schedule.epochs:g} epochs x {spe:,} steps = {total:,} steps",
             f"peak lr {peak}; first reached at step {top:,} (epoch {rows[top][1]:.3g})"]
    if schedule.warmup_steps:
        end = min(schedule.warmup_steps, total) - 1
        lines.append(f"warmup: linear from {rows[0][2]:.4g} over {schedule.warmup_epochs:g} epoch(s), ending at step "
                     f"{end:,} with lr {rows[end][2]:.4g}")
    else:
        lines.append("warmup: none")
    stride = epoch_stride(math.ceil(total / spe))
    every = "each epoch" if stride == 1 else f"every {stride} epochs"
    lines += [f"lr at the start of {every}:", f"{'epoch':>7} {'step':>12}  lr"]
    for epoch in range(0, math.ceil(total / spe), stride):
        step = epoch * spe
        lines.append(f"{epoch:>7} {step:>12,}  {rows[step][2]:.6g}")
    last = rows[-1]
    lines += [f"{last[1]:>7.2f} {last[0]:>12,}  {last[2]:.6g}  (the last step)",
              "every step's lr: --csv FILE; a plot: --plot FILE.png"]
    return lines
