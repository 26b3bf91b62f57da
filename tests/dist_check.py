"""Run by tests/test_distributed.py under ``accelerate launch --cpu --num_processes N``: trains a small config
and writes what each process saw to ``OUT/rank<r>.json``."""

import hashlib
import json
import sys
from pathlib import Path

import torch

import timm_tricks  # noqa: F401
from timm_tricks.config import load_config
from timm_tricks.sync_bn import AllReduceBatchNorm2d
from timm_tricks.train import Trainer


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    trainer = Trainer(load_config("digits", overrides), out / "run")
    model = trainer.accelerator.unwrap_model(trainer.model)
    first_images, first_labels = next(trainer.batches.train_batches(0))
    info = {
        "rank": trainer.rank,
        "world": trainer.world,
        "initial_weights": digest(model.state_dict().values()),
        "first_batch_images": digest([first_images]),
        "first_batch_labels": first_labels.tolist(),
        "per_device_batch": trainer.per_device_batch,
        "sync_bn": any(isinstance(m, (torch.nn.SyncBatchNorm, AllReduceBatchNorm2d)) for m in model.modules()),
        "lr": trainer.optimizer.param_groups[0]["lr"],
    }
    info["metrics"] = trainer.fit()
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    torch.save(weights, out / f"rank{trainer.rank}_weights.pt")  # (as JSON lists, 11M floats took a minute)
    info["final_weights"] = digest(weights.values())
    (out / f"rank{trainer.rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
