"""``timm-tricks ablate``: a ladder's rungs x K seeds as one Ray Tune grid, and the paper-style table of the result.

Every rung's config is written as a recipe file (``rungs/NN_<rung>.yaml``, trainable on its own with
``timm-tricks train --recipe``), the distilling rungs' teacher is trained first as its own Tune experiment
(``teacher/``) unless a checkpoint is given, and the grid (``grid/``) runs each rung with seeds ``0..K-1`` through
the same trial function as ``timm-tricks tune`` (:func:`timm_tricks.experiment.make_trial`): retries from
checkpoints, ``--resume`` after a killed driver, local or on a cluster. The result is ``ablation.md`` (rung, mean
and standard deviation of the final metric over the seeds, change against the rung before, time per run, the
paper's number), ``ablation.csv`` (one row per run) and ``ablation.png`` (a bar chart with one standard deviation
as error bars).
"""

from __future__ import annotations

import csv
import dataclasses
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, TrainingError
from .experiment import (
    ClusterOptions,
    StepCallback,
    TunerSettings,
    experiment_dir,
    experiment_session,
    fit,
    make_trial,
)
from .ladder import Ladder, PlannedRung, plan_ladder, teacher_config
from .search_status import SearchWatch, StatusOptions, error_summary, result_summary


@dataclass(frozen=True)
class AblationOptions:
    """The runs of an ablation besides the ladder, which experiment it is, and what it prints while it runs.

    Attributes:
        seeds: Runs per rung (``train.seed`` 0 to seeds - 1, the same seeds on every rung).
        teacher_checkpoint: Weights of the distilling rungs' teacher; None trains the ladder's teacher first.
        teacher_model: Replaces the model of the ladder's teacher (when it is trained here).
        name: Ablation name, the folder in the storage (default: the ladder's name).
        resume: Continue a killed ablation in ``storage/name``.
        status: What it prints while it runs (:class:`timm_tricks.search_status.StatusOptions`).
    """

    seeds: int = 1
    teacher_checkpoint: str | None = None
    teacher_model: str | None = None
    name: str | None = None
    resume: bool = False
    status: StatusOptions = StatusOptions()

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ConfigError("--seeds and --max-concurrent must be at least 1")
        if self.teacher_checkpoint is not None and not Path(self.teacher_checkpoint).is_file():
            raise ConfigError(f"--teacher-checkpoint {self.teacher_checkpoint!r} is not a file")


def _slug(index: int, name: str) -> str:
    return f"{index:02d}_" + (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "rung")


def run_ablation(ladder: Ladder, *, overrides: list[str] = (), updates: dict | None = None,
                 options: AblationOptions | None = None, cluster: ClusterOptions | None = None,
                 step_callback: StepCallback | None = None) -> Path:
    """Train every rung of ``ladder`` with ``options.seeds`` seeds and write the table; return the ablation folder.

    Args:
        ladder: The validated ladder.
        overrides, updates: The command's ``--set`` overrides and flags, applied to every rung after its changes.
        options: Seeds, the teacher, and the experiment's name (:class:`AblationOptions`).
        cluster: As for :func:`timm_tricks.tune.run_search` (storage default ``runs/ablate``); with no
            ``gpus_per_trial`` the rungs that need a GPU (FP16) are left out.
        step_callback: Called in every training process after each optimizer step
            (:func:`timm_tricks.experiment.make_trial`).
    """
    options, cluster, updates = options or AblationOptions(), cluster or ClusterOptions(), updates or {}
    name = options.name or ladder.name
    title = f"{ladder.name} ablation" + ("" if name == ladder.name else f" {name!r}")
    with SearchWatch(title, ladder.metric, ladder.mode, options.status) as watch:
        watch.phase("planning the rungs", f"{title}: planning the rungs")
        exp = _ablate(ladder, overrides, updates, options, cluster, step_callback, watch)
        watch.say(f"done: {exp / 'ablation.md'}")
    return exp


def _ablate(ladder: Ladder, overrides: list[str], updates: dict, options: AblationOptions, cluster: ClusterOptions,
            step_callback: StepCallback | None, watch: SearchWatch) -> Path:
    """The body of :func:`run_ablation`, with its :class:`~timm_tricks.search_status.SearchWatch`."""
    gpu = cluster.gpus_per_trial > 0
    plan = plan_ladder(ladder, overrides=overrides, updates=updates, gpu=gpu)
    distilling = [p for p in plan if p.config is not None and p.config.distill.teacher is not None
                  and p.config.distill.checkpoint is None]
    teacher, teacher_checkpoint = None, options.teacher_checkpoint
    if distilling and teacher_checkpoint is None:
        teacher = teacher_config(ladder, overrides=overrides, updates=updates, gpu=gpu, model=options.teacher_model)
    exp = experiment_dir(cluster.storage or "runs/ablate", options.name or ladder.name, options.resume)
    recorded = dict(ladder=repr(ladder), overrides=list(overrides), updates=updates, seeds=options.seeds,
                    teacher_checkpoint=teacher_checkpoint, teacher_model=options.teacher_model)
    names = {_slug(i, p.rung.name): p.rung.name for i, p in enumerate(plan)}
    epochs = {_slug(i, p.rung.name): p.config.train.epochs for i, p in enumerate(plan) if p.config is not None}
    teacher_epochs = teacher.train.epochs if teacher is not None else None
    watch.budget = lambda config: epochs.get(config.get("rung"), teacher_epochs)
    watch.name = lambda trial: f"{names[trial.config['rung']]} (seed {trial.config.get('train.seed', 0)})" \
        if trial.config.get("rung") in names else "the teacher"
    ran = sum(p.config is not None for p in plan)
    watch.say(f"{watch.title}: {ran} of {len(plan)} rungs x {options.seeds} seed(s)"
              f"{', after its teacher' if teacher is not None else ''}, by {ladder.metric}; in {exp}")
    watch.phase("starting Ray", f"joining the Ray cluster at {cluster.address}" if cluster.address else
                "starting Ray on this machine")
    status = watch.callback()
    settings = TunerSettings(metric=ladder.metric, mode=ladder.mode, callbacks=[status] if status else (),
                             verbose=options.status.ray_verbose)
    rung_dir = exp / "rungs"
    with experiment_session(exp, recorded, cluster, options.resume):
        rung_dir.mkdir(exist_ok=True)
        if teacher is not None:
            teacher_file = rung_dir / "teacher.yaml"
            teacher_file.write_text(teacher.to_yaml())
            watch.say(f"training the teacher ({teacher.model.name}) of {len(distilling)} distilling rung(s) first")
            trial = make_trial(teacher_file, cluster=cluster, step_callback=step_callback)
            result = fit(exp / "teacher", trial, {}, cluster=cluster, settings=settings, resume=options.resume)[0]
            if result.error:
                raise TrainingError(f"the teacher run failed ({error_summary(str(result.error))}); its log: "
                                    f"{result.path}/error.txt")
            teacher_checkpoint = str(Path(result.path) / "run" / "model.safetensors")
            watch.say(f"the teacher is trained: {teacher_checkpoint}")
        rungs = {}
        for index, p in enumerate(plan):
            if p.config is None:
                continue
            cfg = p.config
            if p in distilling:
                cfg.distill.checkpoint = str(Path(teacher_checkpoint).resolve())
                if teacher is not None:
                    cfg.distill.teacher = teacher.model.name
            slug = _slug(index, p.rung.name)  # the grid's value: it names the trial folders
            path = rung_dir / f"{slug}.yaml"
            path.write_text(cfg.to_yaml())
            rungs[slug] = str(path)
        from ray import tune

        space = {"rung": tune.grid_search(list(rungs)), "train.seed": tune.grid_search(list(range(options.seeds)))}
        trial = make_trial(rungs, cluster=cluster, step_callback=step_callback)
        from .trial_errors import MistakeWatch, all_failed, error_line  # imports Ray

        mistakes = MistakeWatch(len(rungs) * options.seeds)  # a mistake every rung makes is not retried
        grid = dataclasses.replace(settings, callbacks=[mistakes, *settings.callbacks], stop=mistakes)
        results = fit(exp / "grid", trial, space, cluster=cluster, settings=grid, resume=options.resume)
        mistakes.raise_if_stopped()
        runs = [dict(run_row(r, ladder.metric, epochs.get(r.config["rung"])), rung=names[r.config["rung"]])
                for r in results]
    watch.phase("writing the report", "writing the table")
    write_ablation(ladder, plan, runs, exp)
    errors = [error_line(str(r.error)) for r in results if r.error is not None]
    if errors and len(errors) == len(runs):
        raise all_failed(errors, str(exp))
    return exp


def run_row(result: Any, metric: str, epochs: int | None = None) -> dict[str, Any]:
    """One grid run: its rung and seed, the metric after its last epoch, its training time and status (against
    the rung's ``epochs``)."""
    last = result.metrics or {}
    return {"rung": result.config["rung"], "seed": result.config["train.seed"],
            metric: last.get(metric) if not result.error else None, "seconds": last.get("time_total_s"),
            **result_summary(result, epochs)}


def summarize(plan: list[PlannedRung], runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per rung: mean and sample standard deviation of ``metric`` over its finished runs, the change of the mean
    against the previous rung that ran, and the mean time per run."""
    rows, previous = [], None
    for p in plan:
        mine = [r for r in runs if r["rung"] == p.rung.name]
        values = [r[metric] for r in mine if r[metric] is not None]
        times = [r["seconds"] for r in mine if r["seconds"] is not None]
        mean = statistics.fmean(values) if values else None
        rows.append({
            "rung": p.rung.name, "skipped": p.skipped, "mean": mean,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "delta": None if mean is None or previous is None else mean - previous,
            "seconds": statistics.fmean(times) if times else None,
            "runs": len(values), "failed": len(mine) - len(values), "paper": p.rung.paper,
            "paper_seconds": p.rung.paper_seconds,
        })
        previous = mean if mean is not None else previous
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def write_ablation(ladder: Ladder, plan: list[PlannedRung], runs: list[dict[str, Any]], exp: Path) -> None:
    """``ablation.md``, ``ablation.csv`` and ``ablation.png`` in ``exp``; prints the table."""
    metric = ladder.metric
    with open(exp / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["rung", "seed", metric, "epochs", "seconds", "status", "path"])
        writer.writeheader()
        writer.writerows(sorted(runs, key=lambda r: ([p.rung.name for p in plan].index(r["rung"]), r["seed"])))
    rows = summarize(plan, runs, metric)
    lines = [f"| rung | {metric} mean | std | change | time / run | runs | paper |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        paper = _num(row["paper"], ".2f") + (f" in {_time(row['paper_seconds'])}" if row["paper_seconds"] else "")
        if row["skipped"]:
            lines.append(f"| {row['rung']} | skipped: {row['skipped']} | | | | | {paper} |")
            continue
        runs_text = f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        lines.append(f"| {row['rung']} | {_num(row['mean'], '.2f')} | {_num(row['std'], '.2f')} | "
                     f"{_num(row['delta'], '+.2f')} | {_time(row['seconds'])} | {runs_text} | {paper} |")
    named = f" (`{exp.name}`)" if exp.name != ladder.name else ""
    text = [f"# Ablation of the `{ladder.name}` ladder{named}", "", ladder.description, "",
            f"{metric} after the last epoch, mean and sample standard deviation over the seeds; change against the "
            "rung above that ran; paper: the number (and training time) the source reports for that row, for "
            "orientation.", "",
            *lines, ""]
    (exp / "ablation.md").write_text("\n".join(text))
    from .report_plots import bar_chart

    bar_chart(rows, metric, exp / "ablation.png", title=f"{metric} per rung of the {ladder.name} ladder"
              + (f" ({exp.name})" if named else ""))
    print("\n".join(text))
