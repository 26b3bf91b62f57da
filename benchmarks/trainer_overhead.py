"""Per-step cost of the Trainer against a minimal hand-written PyTorch loop, and the digits recipe end to end.

Part 1: the same model (resnet18d_tricks at 64x64, batch 64), the same in-memory synthetic batches, in one
process. The Trainer runs one epoch of ``--steps`` steps (batched data on the device, per-step seeding, accelerate
``accumulate``/``backward``, the schedule, the non-finite check); the minimal loop runs forward, cross-entropy,
backward and an SGD step over the same batches. The two alternate for ``--repeats`` rounds after a warm-up; the
script reports the median seconds per step of each and their ratio (target: the Trainer at most 5% slower).

Part 1b (``--resnet9``): the same comparison for Myrtle's ``resnet9_tricks`` (the ``myrtle_resnet9`` recipe's
model, whitening fitted by the Trainer) at batch 512 on 32x32 synthetic data (target: the Trainer within 1.03x of
the minimal loop). A step takes many seconds on a small CPU, so this row runs ``--r9-steps`` steps per round and
``--r9-repeats`` rounds, and reports the CPU time per step (all threads of the process, less disturbed by other
jobs on a shared machine) beside the wall time.

Part 2 (``--digits``): trains the ``digits`` recipe and reports its validation top-1 and wall time.

    python benchmarks/trainer_overhead.py --repeats 7 --steps 20 --digits [--resnet9] [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
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


#: The settings both sides share: no augmentation, no smoothing, no warmup, one parameter group, no EMA.
PLAIN = ["augment.train=none", "loss.label_smoothing=0", "schedule.warmup_epochs=0", "optim.no_bias_decay=false",
         "ema.enabled=false", "train.best_metric=eval_top1", "train.epochs=1000"]


def build_trainer(steps: int, batch: int, size: int, out: Path, model: str = "resnet18d_tricks") -> Trainer:
    recipe = "myrtle_resnet9" if model == "resnet9_tricks" else "digits"
    cfg = load_config(recipe, [
        f"model.name={model}", f"data.source=synthetic:{steps * batch}", f"data.image_size={size}",
        f"data.batch_size={batch}", "train.precision='no'", *PLAIN])
    return Trainer(cfg, out)


def minimal_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> None:
    model.train()
    for images, labels in batches:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure_overhead(steps: int, repeats: int, batch: int, size: int,
                     model: str = "resnet18d_tricks") -> dict[str, float]:
    """Seconds (wall and CPU) per step of the Trainer and of the minimal loop, rounds alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(steps, batch, size, Path(tmp) / "run", model)
        batches = list(trainer.batches.train_batches(0))
        torch.manual_seed(0)
        net = timm.create_model(model, **trainer.cfg.model_kwargs(trainer.num_classes))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        times: dict[str, list[float]] = {"trainer": [], "loop": [], "trainer_cpu": [], "loop_cpu": []}
        for r in range(repeats + 1):  # round 0 warms up both
            for side in ("trainer", "loop") if r % 2 == 0 else ("loop", "trainer"):
                c0, t0 = time.process_time(), time.perf_counter()
                if side == "trainer":
                    trainer.state.step_in_epoch = 0
                    trainer._train_epoch(r)
                else:
                    minimal_loop(net, optimizer, batches)
                if r:
                    times[side].append((time.perf_counter() - t0) / steps)
                    times[f"{side}_cpu"].append((time.process_time() - c0) / steps)
                print(f"  {model} round {r}/{repeats} {side}: {(time.perf_counter() - t0) / steps:.3f} s/step",
                      file=sys.stderr, flush=True)
    t, m = statistics.median(times["trainer"]), statistics.median(times["loop"])
    tc, mc = statistics.median(times["trainer_cpu"]), statistics.median(times["loop_cpu"])
    return {"trainer_s": t, "loop_s": m, "ratio": t / m, "trainer_min": min(times["trainer"]),
            "loop_min": min(times["loop"]), "trainer_cpu": tc, "loop_cpu": mc, "cpu_ratio": tc / mc}


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
    parser.add_argument("--resnet9", action="store_true", help="also the resnet9_tricks row (batch 512, 32x32)")
    parser.add_argument("--r9-steps", type=int, default=3)
    parser.add_argument("--r9-repeats", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true", help=f"replace the section in {DOCS}")
    args = parser.parse_args()
    where = machine()
    o = measure_overhead(args.steps, args.repeats, args.batch, args.size)
    lines = [
        HEADING, "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python "
        f"benchmarks/trainer_overhead.py {shlex.join(sys.argv[1:])}`", "",
        f"- Machine: {where}", "",
        f"resnet18d_tricks, {args.size}x{args.size}, batch {args.batch}, CPU, one process, {args.steps} steps per "
        f"round, {args.repeats} alternating rounds after a warm-up:", "",
        "| path | median s/step | best s/step |", "|---|---:|---:|",
        f"| Trainer | {o['trainer_s']:.4f} | {o['trainer_min']:.4f} |",
        f"| minimal loop | {o['loop_s']:.4f} | {o['loop_min']:.4f} |", "",
        f"Ratio of medians: **{o['ratio']:.3f}** (target <= 1.05).", "",
    ]
    if args.resnet9:
        r = measure_overhead(args.r9_steps, args.r9_repeats, 512, 32, "resnet9_tricks")
        lines += [f"resnet9_tricks (the `myrtle_resnet9` model), 32x32, batch 512, CPU, one process, {args.r9_steps} "
                  f"steps per round, {args.r9_repeats} alternating rounds after a warm-up "
                  f"(`--resnet9 --r9-steps {args.r9_steps} --r9-repeats {args.r9_repeats}`):", "",
                  "| path | median s/step | best s/step | median CPU s/step |", "|---|---:|---:|---:|",
                  f"| Trainer | {r['trainer_s']:.3f} | {r['trainer_min']:.3f} | {r['trainer_cpu']:.3f} |",
                  f"| minimal loop | {r['loop_s']:.3f} | {r['loop_min']:.3f} | {r['loop_cpu']:.3f} |", "",
                  f"Ratio of medians: **{r['ratio']:.3f}** wall, **{r['cpu_ratio']:.3f}** CPU time (target <= 1.03).",
                  f"1-minute load average after this row: {os.getloadavg()[0]:.2f}.", ""]
    if args.digits:
        d = run_digits()
        lines += [f"Digits recipe (`timm-tricks train --recipe digits`): final validation top-1 **{d['top1']:.2f}%** "
                  f"(best {d['best_top1']:.2f}%), wall time {d['wall_s']:.0f} s including start-up "
                  "(target: at least 99% top-1).", ""]
    text = "\n".join(lines)
    publish(HEADING, text, args.write_docs)


if __name__ == "__main__":
    main()
