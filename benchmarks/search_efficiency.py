"""ASHA against FIFO on the digits: the same trials, best top-1 and epochs trained; Ray's overhead per trial.

Both searches draw the same ``--num-samples`` configurations from ``tune_spaces/digits.yaml`` (seeded random
sampling, so the two schedulers judge identical trials), with an ``--epochs`` budget per trial. FIFO trains every
trial to the budget; ASHA (grace period and reduction factor as ``timm-tricks tune`` sets them: 1 epoch and 3, or
``--grace-periods`` / ``--reduction-factor``; no trial judged before its warmup has ended) stops the weak ones.
ASHA saves more the more trials it can compare: with 8 trials it let 3 through to the full budget (52% of FIFO's
epochs), with 16 it trained 37% (docs/benchmarks.md), hence 16 by default.
Target (issue 4): ASHA's best top-1 within 0.5 points of FIFO's, with at most 40% of FIFO's epochs.

Ray's overhead per trial is the trial's wall time, from Tune starting it to Tune recording it complete (a driver
callback), minus the time its epochs spent training and evaluating (the ``seconds`` each epoch reports): the
actor's start and imports, building the model and data, checkpoints and reporting.

    python benchmarks/search_efficiency.py [--num-samples 16] [--epochs 15] [--write-docs]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from docs_section import machine, publish
from ray.tune import Callback

from timm_tricks.config import ConfigError
from timm_tricks.experiment import ClusterOptions
from timm_tricks.tune import SearchOptions, run_search
from timm_tricks.tune_space import load_space

HEADING = "## Search efficiency: ASHA against FIFO (benchmarks/search_efficiency.py)"


class TrialClock(Callback):
    """Wall-clock start and end of every trial, as the Tune driver sees them."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001 (Tune's signature)
        self.start.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        self.end[trial.trial_id] = time.time()


def search(scheduler: str, args: argparse.Namespace, storage: Path, grace_period: int = 1) -> dict[str, float]:
    """One search; its best top-1, total epochs, wall time and the per-trial overheads."""
    clock = TrialClock()
    t0 = time.perf_counter()
    options = SearchOptions(num_samples=args.num_samples, scheduler=scheduler, search="random", seed=args.seed,
                            grace_period=grace_period, reduction_factor=args.reduction_factor,
                            name=f"{scheduler}{grace_period}")
    exp = run_search(load_space("digits"), "digits", overrides=[f"train.epochs={args.epochs}", *args.set],
                     options=options, cluster=ClusterOptions(storage=storage, max_concurrent=args.max_concurrent),
                     callbacks=[clock])
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader(open(exp / "trials.csv")))
    overheads = []
    for row in rows:
        trial = Path(row["path"])
        trial_id = json.loads((trial / "result.json").read_text().splitlines()[-1])["trial_id"]
        summary = list(csv.DictReader(open(trial / "run" / "summary.csv")))
        training = sum(float(r["seconds"]) for r in summary)
        if trial_id in clock.start and trial_id in clock.end:
            overheads.append(clock.end[trial_id] - clock.start[trial_id] - training)
    return {"best": max(float(r["best_eval_top1"]) for r in rows), "epochs": sum(int(r["epochs"]) for r in rows),
            "trials": len(rows), "wall": wall, "overhead_median": statistics.median(overheads),
            "overhead_max": max(overheads), "timed": len(overheads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=16, help="trials of each search (16)")
    parser.add_argument("--epochs", type=int, default=15, help="epoch budget of a trial (15, the digits recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--grace-periods", default="1", help="ASHA grace periods to run, comma-separated (1)")
    parser.add_argument("--reduction-factor", type=float, default=3, help="ASHA reduction factor (3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args()
    try:  # checked before FIFO's searches, which take minutes
        graces = [int(g) for g in args.grace_periods.split(",")]
    except ValueError:
        parser.error(f"--grace-periods {args.grace_periods!r}: give whole numbers of epochs, comma-separated")
    if not all(1 <= g <= args.epochs for g in graces):
        parser.error(f"--grace-periods {args.grace_periods}: each must be between 1 and --epochs ({args.epochs})")
    where = machine()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fifo = search("fifo", args, Path(tmp))
            ashas = {g: search("asha", args, Path(tmp), grace_period=g) for g in graces}
    except ConfigError as e:  # a bad --set, --epochs or --num-samples, as timm-tricks tune reports it
        print(f"search_efficiency.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    command = "python benchmarks/search_efficiency.py " + " ".join(sys.argv[1:])
    lines = [
        HEADING, "",
        f"Command: `{command.strip()}`", "",
        f"- Machine: {where}", "",
        f"{args.num_samples} trials of the `digits` recipe (ResNet-18-D, 32x32) drawn by seeded random sampling "
        f"(seed {args.seed}) from `tune_spaces/digits.yaml`, budget {args.epochs} epochs, {args.max_concurrent} "
        f"trials at once, one CPU each, embedded Ray; ASHA with reduction factor {args.reduction_factor:g}:", "",
        "| scheduler | best top-1 | FIFO's best minus this | epochs trained | share of FIFO's epochs | wall time "
        "| Ray overhead per trial, median (max) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in [("FIFO", fifo)] + [(f"ASHA, grace {g}", a) for g, a in ashas.items()]:
        lines.append(f"| {name} | {r['best']:.2f} | {fifo['best'] - r['best']:+.2f} | {r['epochs']} | "
                     f"{r['epochs'] / fifo['epochs']:.0%} | {r['wall']:.0f} s | "
                     f"{r['overhead_median']:.1f} s ({r['overhead_max']:.1f} s) |")
    lines += ["", "Target: ASHA within 0.5 points of FIFO's best with at most 40% of its epochs.", ""]
    text = "\n".join(lines)
    publish(HEADING, text, args.write_docs)


if __name__ == "__main__":
    main()
