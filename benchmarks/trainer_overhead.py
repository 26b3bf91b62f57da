"""Per-step cost of the Trainer against a minimal hand-written PyTorch loop, and the digits recipe end to end.

Part 1: the same model (resnet18d_tricks at 64x64, batch 64), the same in-memory synthetic batches, in one
process. The Trainer runs one epoch of ``--steps`` steps (batched data on the device, per-step seeding, accelerate
``accumulate``/``backward``, the schedule, the non-finite check); the minimal loop runs forward, cross-entropy,
backward and an SGD step over the same batches. The two alternate for ``--repeats`` rounds after a warm-up; the
script reports the median seconds per step of each and their ratio (target: the Trainer at most 5% slower).

Part 2 (``--digits``): trains the ``digits`` recipe and reports its validation top-1 and wall time.

    python benchmarks/trainer_overhead.py --repeats 7 --steps 20 --digits [--write-docs]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from docs_section import DOCS, machine, publish

import timm_tricks  # noqa: F401
from timm_tricks.config import load_config
from timm_tricks.train import Trainer

HEADING = "## Trainer overhead and the digits recipe (benchmarks/trainer_overhead.py)"


def build_trainer(steps: int, batch: int, size: int, out: Path) -> Trainer:
    cfg = load_config("digits", [
        "model.name=resnet18d_tricks", f"data.source=synthetic:{steps * batch}", f"data.image_size={size}",
        f"data.batch_size={batch}", "augment.train=none", "loss.label_smoothing=0", "schedule.warmup_epochs=0",
        "optim.no_bias_decay=false", "train.epochs=1000"])
    return Trainer(cfg, out)


def minimal_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> None:
    model.train()
    for images, labels in batches:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure_overhead(steps: int, repeats: int, batch: int, size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(steps, batch, size, Path(tmp) / "run")
        batches = list(trainer.batches.train_batches(0))
        torch.manual_seed(0)
        model = timm.create_model("resnet18d_tricks", num_classes=trainer.num_classes)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        trainer_times, loop_times = [], []
        for r in range(repeats + 1):  # round 0 warms up both
            trainer.state.step_in_epoch = 0
            t0 = time.perf_counter()
            trainer._train_epoch(r)
            t1 = time.perf_counter()
            minimal_loop(model, optimizer, batches)
            t2 = time.perf_counter()
            if r:
                trainer_times.append((t1 - t0) / steps)
                loop_times.append((t2 - t1) / steps)
    t, m = statistics.median(trainer_times), statistics.median(loop_times)
    return {"trainer_s": t, "loop_s": m, "ratio": t / m, "trainer_min": min(trainer_times),
            "loop_min": min(loop_times)}


def run_digits() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        metrics = Trainer(load_config("digits"), Path(tmp) / "run").fit()
        return {"top1": metrics["eval_top1"], "best_top1": metrics["best_top1"], "wall_s": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--digits", action="store_true", help="also train the digits recipe")
    parser.add_argument("--write-docs", action="store_true", help=f"replace the section in {DOCS}")
    args = parser.parse_args()
    where = machine()
    o = measure_overhead(args.steps, args.repeats, args.batch, args.size)
    lines = [
        HEADING, "",
        f"Command: `python benchmarks/trainer_overhead.py --steps {args.steps} --repeats {args.repeats}"
        f"{' --digits' if args.digits else ''} --write-docs`", "",
        f"- Machine: {where}", "",
        f"resnet18d_tricks, {args.size}x{args.size}, batch {args.batch}, CPU, one process, {args.steps} steps per "
        f"round, {args.repeats} alternating rounds after a warm-up:", "",
        "| path | median s/step | best s/step |", "|---|---:|---:|",
        f"| Trainer | {o['trainer_s']:.4f} | {o['trainer_min']:.4f} |",
        f"| minimal loop | {o['loop_s']:.4f} | {o['loop_min']:.4f} |", "",
        f"Ratio of medians: **{o['ratio']:.3f}** (target <= 1.05).", "",
    ]
    if args.digits:
        d = run_digits()
        lines += [f"Digits recipe (`timm-tricks train --recipe digits`): final validation top-1 **{d['top1']:.2f}%** "
                  f"(best {d['best_top1']:.2f}%), wall time {d['wall_s']:.0f} s including start-up "
                  "(target: at least 99% top-1).", ""]
    text = "\n".join(lines)
    publish(HEADING, text, args.write_docs)


if __name__ == "__main__":
    main()
