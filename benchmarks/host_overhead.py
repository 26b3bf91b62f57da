"""The Trainer's host work per step, measured where the model's own work is negligible: a 3->4 channel conv, BN and
a linear layer on 8x8 images, batch 8, trained by the Trainer and by a minimal loop (forward, cross-entropy,
backward, Nesterov SGD) over the same batches. On a GPU a small model's step is bound by this host work
(docs/benchmarks.md: ResNet-9 at batch 512 on an H200); on a CPU it can be measured without one.

Prints the median microseconds a step of each side (sides alternating), then the Trainer's Python functions by
cumulative time over one epoch (cProfile), so each piece of host work shows by name.

    OMP_NUM_THREADS=1 python benchmarks/host_overhead.py [--steps 400] [--rounds 5] [--rows 30]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from timm.models import register_model

import timm_tricks  # noqa: F401
from timm_tricks.config import load_config
from timm_tricks.train import Trainer


class Probe(nn.Module):
    """A network with almost no arithmetic: what is left of a step is the loop around it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


@register_model
def host_overhead_probe(pretrained: bool = False, num_classes: int = 10, **kwargs: object) -> Probe:
    return Probe(num_classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per side, after one warm-up each")
    parser.add_argument("--rows", type=int, default=30, help="functions listed from the profile")
    args = parser.parse_args(argv)
    cfg = load_config("digits", ["model.name=host_overhead_probe", f"data.source=synthetic:{args.steps * 8}",
                                 "data.image_size=8", "data.batch_size=8", "augment.train=none", "ema.enabled=false",
                                 "mixup.alpha=0", "loss.label_smoothing=0", "train.epochs=100",
                                 "train.log_with=[none]", "optim.no_bias_decay=false", "schedule.warmup_epochs=0"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        batches = list(trainer.batches.train_batches(0))
        torch.manual_seed(0)
        model = Probe(trainer.num_classes)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

        def loop() -> None:
            for images, labels in batches:
                nn.functional.cross_entropy(model(images), labels).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        epochs = [0]

        def trainer_loop() -> None:
            trainer.state.step_in_epoch = 0
            trainer._train_epoch(epochs[0])
            epochs[0] += 1

        sides = {"Trainer": trainer_loop, "minimal loop": loop}
        for run in sides.values():
            run()
        micros: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name in sides if r % 2 == 0 else reversed(list(sides)):
                t0 = time.perf_counter()
                sides[name]()
                micros[name].append((time.perf_counter() - t0) / args.steps * 1e6)
        medians = {name: statistics.median(v) for name, v in micros.items()}
        print(" | ".join(f"{name}: {m:.0f} us a step" for name, m in medians.items()),
              f"| Trainer - loop: {medians['Trainer'] - medians['minimal loop']:.0f} us a step")
        profiler = cProfile.Profile()
        profiler.enable()
        trainer_loop()
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(
            "accelerate|timm_tricks|torch/optim", args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
