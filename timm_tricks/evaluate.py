"""Evaluation: top-1, top-5 and loss over every process's share of the validation set, of a model in training or
of a finished run's weights (``timm-tricks eval``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .batches import FileBatches, TensorBatches
from .build import build_batches, shard_of
from .config import Config
from .data import parse_source
from .errors import ConfigError
from .tta import flip_tta


def shard_for(cfg: Config, accelerator: Any) -> Any:
    """``size -> Shard`` of this process of ``accelerator``, at the config's per-device batch."""
    return shard_of(cfg, accelerator.process_index, accelerator.num_processes)


@torch.no_grad()
def evaluate_model(model: nn.Module, batches: TensorBatches | FileBatches, accelerator: Any, batch_size: int,
                   tta_flip: bool = False, channels_last: bool = False,
                   on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) of ``model`` on ``batches``' validation share of every process, summed
    over processes: each validation image is counted once, whatever the number of processes.

    The model runs unwrapped (no DDP), so processes with one batch more than others cannot deadlock.
    ``on_batch(images)`` is called after each batch with this process's images so far (the Trainer's progress).
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # loss sum, top1, top5, count
    done = 0
    for images, labels in batches.eval_batches(batch_size):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = flip_tta(model, images) if tta_flip else model(images)
        totals += topk_counts(logits.float(), labels)
        done += len(labels)
        if on_batch is not None:
            on_batch(done)
    model.train(was_training)
    totals = accelerator.reduce(totals, reduction="sum")
    n = max(totals[3].item(), 1.0)
    return {"eval_loss": totals[0].item() / n, "eval_top1": 100 * totals[1].item() / n,
            "eval_top5": 100 * totals[2].item() / n, "eval_count": int(totals[3].item())}


def evaluate_checkpoint(path: str | Path, data: str | None = None, tta_flip: bool = False,
                        download: bool = False) -> dict[str, float]:
    """Evaluate a finished run: ``path`` is its output folder or its ``model.safetensors`` (with the run's
    ``config.yaml`` beside it). ``data`` overrides the run's data source. ``tta_flip`` on a run trained without
    flips (``augment.flip: false``) says so on stderr: the mirror of a digit is not one, and flip TTA
    (:mod:`timm_tricks.tta`: Page, "How to train your ResNet 8", "Test-time augmentation") assumes classes that a
    mirror keeps, as the flip augmentation does."""
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
    if tta_flip and not cfg.augment.flip:
        print(f"timm-tricks: warning: --tta averages each image with its mirror, but {str(run)!r} trained without "
              "flips (augment.flip: false, e.g. digits or text, whose mirror is another class); the TTA score may be "
              "lower", file=sys.stderr)
    acc = Accelerator(mixed_precision=cfg.train.precision)
    batches = build_batches(cfg, parse_source(cfg.data.source), shard_for(cfg, acc), acc.device, download)
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
