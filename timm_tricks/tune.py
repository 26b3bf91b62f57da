"""``timm-tricks tune``: a search over a space of config values with Ray Tune, and its report.

The search is what this module chooses: Optuna's TPE (seeded) suggests configs by default, or seeded random
sampling; ASHA (:class:`timm_tricks.asha.WarmupASHA`) stops weak trials, PBT mutates the learning rate, label
smoothing and mixup alpha from the best trials' checkpoints, FIFO trains every trial to the budget. The trials,
the Tune run, retries and ``--resume`` are the Ray runtime's (:mod:`timm_tricks.experiment`). The report is
``trials.csv``, ``report.md``, ``best_recipe.yaml`` and the plots.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .choices import SCHEDULERS, SEARCHERS
from .config import load_config
from .errors import ConfigError
from .experiment import (
    ClusterOptions,
    StepCallback,
    TunerSettings,
    experiment_dir,
    experiment_session,
    fit,
    make_trial,
    trial_config,
)
from .search_status import SearchWatch, StatusOptions, describe, result_summary
from .tune_space import SearchSpace

PBT_KEYS = ("optim.lr", "loss.label_smoothing", "mixup.alpha")  # what PBT mutates, when the space searches them


@dataclass(frozen=True)
class SearchOptions:
    """How a search picks and stops its trials, which experiment it is, and what it prints while it runs.

    Attributes:
        num_samples: Trials to run.
        scheduler: ``asha`` (default), ``pbt`` or ``fifo`` (every trial to the full budget).
        search: ``optuna`` (seeded TPE, default) or ``random``; PBT always samples at random.
        seed: Seed of the Optuna sampler, or of the random sampling.
        grace_period, reduction_factor: ASHA's epochs before the first cut, and 1 / the share it keeps at a cut.
        name: Experiment name, the folder in the storage (default: the space's name).
        resume: Continue a killed search in ``storage/name``.
        status: What it prints while it runs (:class:`timm_tricks.search_status.StatusOptions`).
    """

    num_samples: int = 8
    scheduler: str = "asha"
    search: str = "optuna"
    seed: int = 0
    grace_period: int = 1
    reduction_factor: float = 3
    name: str | None = None
    resume: bool = False
    status: StatusOptions = StatusOptions()

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError("--num-samples must be at least 1")
        if self.grace_period < 1 or self.reduction_factor <= 1:
            raise ConfigError("--grace-period must be at least 1 and --reduction-factor above 1")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; valid: {', '.join(SCHEDULERS)}")
        if self.search not in SEARCHERS:
            raise ConfigError(f"unknown search {self.search!r}; valid: {', '.join(SEARCHERS)}")


def _scheduler(name: str, space: SearchSpace, epochs: int, grace_period: int = 1, reduction_factor: float = 3) -> Any:
    """Ray's scheduler for ``name``, counting epochs (one report each).

    ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) keeps the best
    1/``reduction_factor`` of the trials at each rung (after ``grace_period``, then x ``reduction_factor`` epochs);
    the default 3 is the eta that Hyperband (Li et al., JMLR 2018) recommends. It judges no trial before its own
    warmup has ended (:class:`timm_tricks.asha.WarmupASHA`).
    """
    from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining

    from .asha import WarmupASHA

    if name == "asha":
        return WarmupASHA(time_attr="training_iteration", max_t=epochs, grace_period=grace_period,
                          reduction_factor=reduction_factor)
    if name == "pbt":
        mutations = {k: v for k, v in space.to_tune().items() if k in PBT_KEYS}
        if not mutations:
            raise ConfigError(f"--scheduler pbt mutates {', '.join(PBT_KEYS)}; search space {space.name!r} has none")
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=1,
                                       hyperparam_mutations=mutations, quantile_fraction=0.25,
                                       resample_probability=0.25)
    return FIFOScheduler()


SCHEDULER_NAMES = {"asha": "ASHA", "pbt": "PBT", "fifo": "FIFO (every trial to the budget)"}


def run_search(space: SearchSpace, recipe: str | Path, *, overrides: list[str] = (), updates: dict | None = None,
               options: SearchOptions | None = None, cluster: ClusterOptions | None = None,
               callbacks: list[Any] | None = None, step_callback: StepCallback | None = None) -> Path:
    """Run (or resume) a search and write its report; return the experiment folder (``storage/name``).

    While it runs it prints its progress to stderr (:class:`timm_tricks.search_status.SearchWatch`; quiet with
    ``options.status``); the report's table goes to stdout at the end.

    Args:
        space: The validated search space.
        recipe: The recipe every trial starts from.
        overrides, updates: Fixed config changes applied before the sampled values.
        options: Trials, searcher, scheduler, seed, the experiment's name and the output (:class:`SearchOptions`).
        cluster: Ray address, storage (default ``runs/tune``), resources per trial, concurrency, retries
            (:class:`timm_tricks.experiment.ClusterOptions`).
        callbacks: ``ray.tune.Callback`` objects for the driver (the benchmarks time trials with one).
        step_callback: Called in every training process after each optimizer step
            (:func:`timm_tricks.experiment.make_trial`).
    """
    options, cluster, updates = options or SearchOptions(), cluster or ClusterOptions(), updates or {}
    name = options.name or space.name
    title = f"{space.name} search" + ("" if name == space.name else f" {name!r}")  # not "search search"
    with SearchWatch(title, space.metric, space.mode, options.status) as watch:
        watch.phase("checking the space against the recipe", f"{title}: checking the space against recipe {recipe}")
        base_cfg = load_config(recipe, list(overrides), updates)  # fail early on a bad recipe or override
        from .build import installed_trackers  # torch and timm: not at import time

        installed_trackers(base_cfg.train.log_with)  # and on a tracker that is not installed
        if options.scheduler == "asha" and options.grace_period > base_cfg.train.epochs:
            raise ConfigError(f"--grace-period {options.grace_period} is longer than the {base_cfg.train.epochs} "
                              "epochs of a trial")
        for dim in space.dimensions:  # every value the space can sample must give a valid config with this recipe
            for value in dim.values_to_check():
                try:
                    trial_config(recipe, overrides, updates, {dim.key: value})
                except ConfigError as e:
                    raise ConfigError(f"search space {space.name!r}: {dim.key}={value!r} does not fit recipe "
                                      f"{str(recipe)!r}: {e}") from None
        exp = experiment_dir(cluster.storage or "runs/tune", name, options.resume)
        epochs = base_cfg.train.epochs
        watch.budget = lambda config: int(config.get("train.epochs", epochs))
        how = _how(options)
        watch.say(f"{title}: {options.num_samples} trial(s) of up to {epochs} epoch(s) of recipe {recipe}, "
                  f"{how}, by {space.metric} ({space.mode}); in {exp}")
        recorded = dict(space=space.name, dimensions={d.key: [d.kind, *d.args] for d in space.dimensions},
                        recipe=str(recipe), overrides=list(overrides), updates=updates,
                        num_samples=options.num_samples, scheduler=options.scheduler, search=options.search,
                        seed=options.seed, grace_period=options.grace_period,
                        reduction_factor=options.reduction_factor)
        watch.phase("starting Ray", f"joining the Ray cluster at {cluster.address}" if cluster.address else
                    "starting Ray on this machine")
        with experiment_session(exp, recorded, cluster, options.resume):
            searcher = None  # seeded random sampling (fit's default)
            if options.search == "optuna" and options.scheduler != "pbt":
                import optuna
                from ray.tune.search.optuna import OptunaSearch

                if not options.status.ray_verbose:  # its "A new study created" line; the watch says what runs
                    optuna.logging.set_verbosity(optuna.logging.WARNING)
                searcher = OptunaSearch(seed=options.seed)
            scheduler = _scheduler(options.scheduler, space, epochs, options.grace_period, options.reduction_factor)
            status = watch.callback(scheduler, SCHEDULER_NAMES[options.scheduler].split(" ")[0])
            from .trial_errors import MistakeWatch  # imports Ray

            mistakes = MistakeWatch(options.num_samples)
            settings = TunerSettings(metric=space.metric, mode=space.mode, num_samples=options.num_samples,
                                     search_alg=searcher, scheduler=scheduler, seed=options.seed,
                                     keep_checkpoints=3 if options.scheduler == "pbt" else 1,
                                     callbacks=[mistakes, *tracker_callbacks(base_cfg.train.log_with, exp.name),
                                                *(callbacks or ()), *([status] if status else [])],
                                     stop=mistakes, verbose=options.status.ray_verbose)
            trial = make_trial(recipe, overrides=overrides, updates=updates, cluster=cluster,
                               step_callback=step_callback)
            results = fit(exp, trial, space.to_tune(), cluster=cluster, settings=settings, resume=options.resume)
            mistakes.raise_if_stopped()
            watch.phase("writing the report", "writing the report")
            write_report(results, space, exp, epochs=epochs, recipe=str(recipe), how=how)
        watch.say(f"done: {exp / 'report.md'}")
    return exp


def _how(options: SearchOptions) -> str:
    """``Optuna TPE + ASHA``: the searcher and the scheduler, in words."""
    searcher = "random sampling" if options.search == "random" or options.scheduler == "pbt" else "Optuna TPE"
    return f"{searcher} + {SCHEDULER_NAMES[options.scheduler]}"


def tracker_callbacks(log_with: list[str], name: str) -> list[Any]:
    """Ray Tune's logger callbacks for the trackers of ``train.log_with`` that Ray has (TensorBoard, MLflow, wandb):
    the search's trials side by side in one place, besides each trial's own run logs. MLflow follows
    ``MLFLOW_TRACKING_URI``; wandb its own environment (``WANDB_MODE=offline`` for no network). A tracker that is
    not installed is one line (:func:`~timm_tricks.build.installed_trackers`), before any trial starts."""
    from ray.tune.logger import TBXLoggerCallback

    from .build import installed_trackers

    out: list[Any] = []
    for tracker in installed_trackers(log_with):
        if tracker == "tensorboard":
            out.append(TBXLoggerCallback())
        elif tracker == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            out.append(MLflowLoggerCallback(experiment_name=name))
        elif tracker == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            out.append(WandbLoggerCallback(project=name))
    return out


def trial_table(results: Any, space: SearchSpace, epochs: int | None = None) -> list[dict[str, Any]]:
    """One row per trial: its number, the searched values, the best metric over its epochs, epochs run, its
    status (``completed``, ``stopped at epoch N``, ``error``: against ``epochs``, or the trial's own
    ``train.epochs`` when the space searches it) and its folder; the best first."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        metric = space.metric
        best = None
        if df is not None and metric in df:
            series = df[metric].dropna()
            best = (series.max() if space.mode == "max" else series.min()) if len(series) else None
        config = r.config or {}
        budget = config.get("train.epochs", epochs)
        rows.append({"trial": _number(r), **{k: config.get(k) for k in space.keys()},
                     f"best_{metric}": None if best is None else float(best),
                     **result_summary(r, None if budget is None else int(budget))})
    key = f"best_{space.metric}"
    sign = -1 if space.mode == "max" else 1
    rows.sort(key=lambda row: (row[key] is None, sign * (row[key] or 0)))
    return rows


def _number(result: Any) -> str:
    """A result's trial number, as in its folder's name and in the status lines (from the folder's name when the
    trial failed before it reported)."""
    from .search_status import trial_number

    metrics = result.metrics or {}
    if metrics.get("experiment_tag"):
        return trial_number(metrics["experiment_tag"], "")
    name = Path(result.path).name  # trial_fn_<id>_<number>_<values>_<date>; ids: 8 hex, or 5 hex _ 5 digits
    match = re.match(r"trial_fn_[0-9a-f]{5,8}(?:_\d{5})?_(\d+)(?:_|$)", name)
    return match.group(1) if match else str(metrics.get("trial_id", name))


def write_report(results: Any, space: SearchSpace, exp: Path, *, epochs: int | None = None, recipe: str | None = None,
                 how: str = "") -> list[dict[str, Any]]:
    """``trials.csv``, ``report.md``, ``best_recipe.yaml`` and the plots in ``exp``; prints the report.

    ``epochs`` is a trial's budget (for the status column), ``recipe`` and ``how`` (the searcher and scheduler in
    words) go in the heading. The best trial is the best of those that did not fail. When every trial failed
    there is none: the report lists the errors, no ``best_recipe.yaml`` is written, and a TrainingError (exit 1)
    says so.
    """
    from .trial_errors import all_failed, error_line

    rows = trial_table(results, space, epochs)
    if not rows:
        raise ConfigError(f"search {str(exp)!r} has no trials")
    key = f"best_{space.metric}"
    errors = [error_line(str(r.error)) for r in results if r.error is not None]
    rows.sort(key=lambda row: row["status"] == "error")  # stable: the best trial that did not fail comes first
    columns = [c for c in rows[0] if c != "path"]
    with open(exp / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + ["path"])
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "".join("---:|" if c == key else "---|" for c in columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    statuses = [row["status"] for row in rows]
    stopped = sum(s.startswith("stopped") for s in statuses)
    counts = ", ".join(f"{n} {label}" for n, label in ((statuses.count("completed"), "completed"),
                                                        (stopped, "stopped early"),
                                                        (statuses.count("error"), "failed")) if n)
    on = f" on recipe `{recipe}`" if recipe else ""
    text = [f"# Search report: space `{space.name}`{on}", "",
            f"Experiment `{exp}`: {len(rows)} trial(s) ({counts}){', ' + how if how else ''}. Each trial is ranked "
            f"by its best {space.metric} ({space.mode}) over its epochs; searched: {', '.join(space.keys())}.", "",
            "\n".join(lines), ""]
    best = rows[0]
    best_config = Path(best["path"]) / "run" / "config.yaml"
    (exp / "best_recipe.yaml").unlink(missing_ok=True)  # a resumed search's old best is no longer the word
    if len(errors) == len(rows):
        text += ["Every trial failed; there is no best trial. Their errors:", ""] + [f"- {e}" for e in errors]
        (exp / "report.md").write_text("\n".join(text) + "\n")
        print("\n".join(text))
        raise all_failed(errors, str(exp / "report.md"))
    if best[key] is not None and best_config.is_file():
        recipe_data = yaml.safe_load(best_config.read_text())
        recipe_data["name"] = f"{exp.name}_best"
        recipe_data["description"] = (f"best trial ({best['trial']}) of search {exp.name} (space {space.name}): "
                                      f"{space.metric} {_fmt(best[key])}")
        (exp / "best_recipe.yaml").write_text(yaml.safe_dump(recipe_data, sort_keys=False))
        text += [f"Best: trial {best['trial']}, {space.metric} {_fmt(best[key])}. Its config: "
                 f"`{exp / 'best_recipe.yaml'}` (train it with `timm-tricks train --recipe "
                 f"{exp / 'best_recipe.yaml'} --output DIR`).", ""]
    plots = _plots(results, space, rows, exp)
    text += [f"![{title}]({name})" for name, title in plots]
    (exp / "report.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _plots(results: Any, space: SearchSpace, rows: list[dict[str, Any]], exp: Path) -> list[tuple[str, str]]:
    """The report's plots: the metric against each searched numeric key, and the learning curves; returns
    ``(file name, title)`` of each."""
    from .report_plots import learning_curves, metric_against

    key = f"best_{space.metric}"
    dims = {d.key: d for d in space.dimensions}
    kinds = {d.key: d.kind for d in space.dimensions}
    made = []
    for dim in space.keys():
        points = [(r[dim], r[key], r["trial"], r["status"]) for r in rows
                  if r[key] is not None and isinstance(r[dim], (int, float)) and not isinstance(r[dim], bool)]
        if not points:
            continue
        name = f"metric_vs_{dim.replace('.', '_')}.png"
        title = f"best {space.metric} of each trial against {dim}"
        metric_against(points, dim, f"best {space.metric} ({space.mode})", exp / name, title=title,
                       log=kinds.get(dim) == "loguniform", bounds=_bounds(dims[dim]),
                       ticks=_numbers(dims[dim].args) if kinds.get(dim) in ("choice", "grid") else None)
        made.append((name, title))
    status = {r["trial"]: r["status"] for r in rows}
    curves = []
    for r in results:
        df = r.metrics_dataframe
        if df is not None and space.metric in df and "epoch" in df:
            number = _number(r)
            curves.append((number, describe({k.rpartition(".")[2]: (r.config or {}).get(k) for k in space.keys()}),
                           status.get(number, ""), list(df["epoch"]), list(df[space.metric])))
    title = f"{space.metric} of each trial per epoch ({exp.name})"
    learning_curves(curves, space.metric, exp / "learning_curves.png", title=title)
    made.insert(0, ("learning_curves.png", title))
    return made


def _numbers(values: Any) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _bounds(dim: Any) -> tuple[float, float] | None:
    """The range a dimension searches (a ``randint``'s upper bound excluded), for the plots' axes."""
    numbers = _numbers(dim.values_to_check())
    return (min(numbers), max(numbers)) if len(numbers) >= 2 else None
