"""``timm-tricks tune``: a search over a space of config values with Ray Tune, and its report.

The search is what this module chooses: Optuna's TPE (seeded) suggests configs by default, or seeded random
sampling; ASHA (:class:`timm_tricks.asha.WarmupASHA`) stops weak trials, PBT mutates the learning rate, label
smoothing and mixup alpha from the best trials' checkpoints, FIFO trains every trial to the budget. The trials,
the Tune run, retries and ``--resume`` are the Ray runtime's (:mod:`timm_tricks.experiment`). The report is
``trials.csv``, ``report.md``, ``best_recipe.yaml`` and the plots.
"""

from __future__ import annotations

import csv
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
    result_summary,
    trial_config,
)
from .tune_space import SearchSpace

PBT_KEYS = ("optim.lr", "loss.label_smoothing", "mixup.alpha")  # what PBT mutates, when the space searches them


@dataclass(frozen=True)
class SearchOptions:
    """How a search picks and stops its trials, and which experiment it is.

    Attributes:
        num_samples: Trials to run.
        scheduler: ``asha`` (default), ``pbt`` or ``fifo`` (every trial to the full budget).
        search: ``optuna`` (seeded TPE, default) or ``random``; PBT always samples at random.
        seed: Seed of the Optuna sampler, or of the random sampling.
        grace_period, reduction_factor: ASHA's epochs before the first cut, and 1 / the share it keeps at a cut.
        name: Experiment name, the folder in the storage (default: the space's name).
        resume: Continue a killed search in ``storage/name``.
    """

    num_samples: int = 8
    scheduler: str = "asha"
    search: str = "optuna"
    seed: int = 0
    grace_period: int = 1
    reduction_factor: float = 3
    name: str | None = None
    resume: bool = False

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


def run_search(space: SearchSpace, recipe: str | Path, *, overrides: list[str] = (), updates: dict | None = None,
               options: SearchOptions | None = None, cluster: ClusterOptions | None = None,
               callbacks: list[Any] | None = None, step_callback: StepCallback | None = None) -> Path:
    """Run (or resume) a search and write its report; return the experiment folder (``storage/name``).

    Args:
        space: The validated search space.
        recipe: The recipe every trial starts from.
        overrides, updates: Fixed config changes applied before the sampled values.
        options: Trials, searcher, scheduler, seed, and the experiment's name (:class:`SearchOptions`).
        cluster: Ray address, storage (default ``runs/tune``), resources per trial, concurrency, retries
            (:class:`timm_tricks.experiment.ClusterOptions`).
        callbacks: ``ray.tune.Callback`` objects for the driver (the benchmarks time trials with one).
        step_callback: Called in every training process after each optimizer step
            (:func:`timm_tricks.experiment.make_trial`).
    """
    options, cluster, updates = options or SearchOptions(), cluster or ClusterOptions(), updates or {}
    base_cfg = load_config(recipe, list(overrides), updates)  # fail early on a bad recipe or override
    if options.scheduler == "asha" and options.grace_period > base_cfg.train.epochs:
        raise ConfigError(f"--grace-period {options.grace_period} is longer than the {base_cfg.train.epochs} epochs "
                          "of a trial")
    for dim in space.dimensions:  # every value the space can sample must give a valid config with this recipe
        for value in dim.values_to_check():
            try:
                trial_config(recipe, overrides, updates, {dim.key: value})
            except ConfigError as e:
                raise ConfigError(f"search space {space.name!r}: {dim.key}={value!r} does not fit recipe "
                                  f"{str(recipe)!r}: {e}") from None
    exp = experiment_dir(cluster.storage or "runs/tune", options.name or space.name, options.resume)
    recorded = dict(space=space.name, dimensions={d.key: [d.kind, *d.args] for d in space.dimensions},
                    recipe=str(recipe), overrides=list(overrides), updates=updates, num_samples=options.num_samples,
                    scheduler=options.scheduler, search=options.search, seed=options.seed,
                    grace_period=options.grace_period, reduction_factor=options.reduction_factor)
    with experiment_session(exp, recorded, cluster, options.resume):
        searcher = None  # seeded random sampling (fit's default)
        if options.search == "optuna" and options.scheduler != "pbt":
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(seed=options.seed)
        scheduler = _scheduler(options.scheduler, space, base_cfg.train.epochs, options.grace_period,
                               options.reduction_factor)
        from .trial_errors import MistakeWatch  # imports Ray

        watch = MistakeWatch(options.num_samples)
        settings = TunerSettings(metric=space.metric, mode=space.mode, num_samples=options.num_samples,
                                 search_alg=searcher, scheduler=scheduler, seed=options.seed,
                                 keep_checkpoints=3 if options.scheduler == "pbt" else 1,
                                 callbacks=[watch, *(callbacks or ())], stop=watch)
        trial = make_trial(recipe, overrides=overrides, updates=updates, cluster=cluster, step_callback=step_callback)
        results = fit(exp, trial, space.to_tune(), cluster=cluster, settings=settings, resume=options.resume)
        watch.raise_if_stopped()
        write_report(results, space, exp)
    return exp


def trial_table(results: Any, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per trial: the searched values, the best metric over its epochs, epochs run and status."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        metric = space.metric
        best = None
        if df is not None and metric in df:
            series = df[metric].dropna()
            best = (series.max() if space.mode == "max" else series.min()) if len(series) else None
        rows.append({**{k: r.config.get(k) for k in space.keys()}, f"best_{metric}": None if best is None else
                     float(best), **result_summary(r)})
    key = f"best_{space.metric}"
    sign = -1 if space.mode == "max" else 1
    rows.sort(key=lambda row: (row[key] is None, sign * (row[key] or 0)))
    return rows


def write_report(results: Any, space: SearchSpace, exp: Path) -> list[dict[str, Any]]:
    """``trials.csv``, ``report.md``, ``best_recipe.yaml`` and the plots in ``exp``; prints the table.

    The best trial is the best of those that did not fail. When every trial failed there is none: the report lists
    the errors, no ``best_recipe.yaml`` is written, and a TrainingError (exit 1) says so."""
    from .trial_errors import all_failed, error_line

    rows = trial_table(results, space)
    if not rows:
        raise ConfigError(f"search {str(exp)!r} has no trials")
    errors = [error_line(str(r.error)) for r in results if r.error is not None]
    rows.sort(key=lambda row: row["status"] == "ERROR")  # stable: the best trial that did not fail comes first
    columns = [c for c in rows[0] if c != "path"]
    with open(exp / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + ["path"])
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    table = "\n".join(lines)
    best = rows[0]
    best_config = Path(best["path"]) / "run" / "config.yaml"
    text = [f"# Search {exp.name}: {space.metric} ({space.mode}) over {', '.join(space.keys())}", "", table, ""]
    (exp / "best_recipe.yaml").unlink(missing_ok=True)  # a resumed search's old best is no longer the word
    if len(errors) == len(rows):
        text += ["Every trial failed; there is no best trial. Their errors:", ""] + [f"- {e}" for e in errors]
        (exp / "report.md").write_text("\n".join(text) + "\n")
        print("\n".join(text))
        raise all_failed(errors, str(exp / "report.md"))
    if best_config.is_file():
        recipe = yaml.safe_load(best_config.read_text())
        recipe["name"] = f"{exp.name}_best"
        recipe["description"] = f"best trial of search {exp.name}: {space.metric} {_fmt(best[f'best_{space.metric}'])}"
        (exp / "best_recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        text.append(f"Best trial's config: `{exp / 'best_recipe.yaml'}` (train it with "
                    f"`timm-tricks train --recipe {exp / 'best_recipe.yaml'} --output DIR`).")
    (exp / "report.md").write_text("\n".join(text) + "\n")
    _plots(results, space, rows, exp)
    print("\n".join(text))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _plots(results: Any, space: SearchSpace, rows: list[dict[str, Any]], exp: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"best_{space.metric}"
    for dim in space.keys():
        points = [(r[dim], r[key]) for r in rows if r[key] is not None and isinstance(r[dim], (int, float))]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter(*zip(*points, strict=True))
        if dim == "optim.lr":
            ax.set_xscale("log")
        ax.set_xlabel(dim)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(exp / f"metric_vs_{dim.replace('.', '_')}.png", dpi=90)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        df = r.metrics_dataframe
        if df is not None and space.metric in df and "epoch" in df:
            ax.plot(df["epoch"], df[space.metric], marker="o", alpha=0.7)
    ax.set_xlabel("epoch")
    ax.set_ylabel(space.metric)
    ax.set_title(f"learning curves of the trials of {exp.name}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(exp / "learning_curves.png", dpi=90)
    plt.close(fig)
