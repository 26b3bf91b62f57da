"""Ray Tune glue: run the Trainer inside Tune trials over a search space, and report the results.

Nothing here trains: each trial builds the config (recipe + overrides + the trial's sampled values), runs
:class:`timm_tricks.train.Trainer` with a per-epoch callback that calls ``ray.tune.report`` with the epoch's
checkpoint, and resumes from ``ray.tune.get_checkpoint()`` when Tune restarts it (a retried failure, a restored
experiment, or a PBT exploit). Optuna's TPE (seeded) searches by default and ASHA stops weak trials; PBT mutates
the learning rate, label smoothing and mixup alpha from the best trials' checkpoints.

API notes for Ray 2.60 (checked against the installed source): function trainables report with
``ray.tune.report`` (``ray.train.report`` raises inside Tune), configs come from ``ray.tune`` (``RunConfig``,
``FailureConfig``, ``CheckpointConfig``), metric/mode are set only in ``TuneConfig``, PBT takes no searcher, and
``storage_path`` must be absolute.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .choices import SCHEDULERS, SEARCHERS
from .config import load_config
from .errors import ConfigError
from .ray_cluster import ray_session
from .schedule import schedule_from_config
from .tune_space import SearchSpace

PBT_KEYS = ("optim.lr", "loss.label_smoothing", "mixup.alpha")  # what PBT mutates, when the space searches them
def trial_fn(config: dict[str, Any], base: dict[str, Any]) -> None:
    """One Tune trial: train ``base``'s recipe with the trial's sampled ``config`` values, reporting every epoch.

    A ``rung`` entry in ``config`` (the ablation grid's) picks the recipe file ``base["rungs"][rung]`` instead.
    """
    from ray import tune

    from .asha import RAMP_KEY
    from .train import Trainer

    config = dict(config)
    recipe = base["rungs"][config.pop("rung")] if "rung" in config else base["recipe"]
    cfg = load_config(recipe, base["overrides"], base["updates"], config)
    # The run folder lives in the experiment's storage, not in the trial's staging folder (``get_trial_dir``,
    # under /tmp/ray/session_*): a restored experiment gets new, empty staging folders; on the driver's node the
    # staging folders sit inside the driver's, which Ray copies to storage whole at every experiment snapshot
    # (one such copy failed on a half-written checkpoint); and the workers of a multi-worker trial may be on
    # other nodes.
    run = Path(base["exp"]) / Path(tune.get_context().get_trial_dir()).name / "run"
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        shutil.rmtree(run, ignore_errors=True)  # a retry before the first checkpoint starts over
    elif not _adopt(checkpoint, run / "checkpoints"):
        if Path(checkpoint.path).parent.name != run.parent.name:
            # a PBT donor's checkpoint pruned before this trial could load it: its own weights under the donor's
            # mutated config would be a different experiment, so the trial fails (and Tune retries it)
            raise RuntimeError(f"the checkpoint to exploit, {checkpoint.path}, no longer exists")
        # Tune's snapshot names a checkpoint of this trial it has since replaced (the driver died between the two):
        # the trial's own newest checkpoint in ``run`` is the one that replaced it.
        print(f"timm-tricks: checkpoint {checkpoint.path} is gone; resuming from {run / 'checkpoints'}")

    ramp = schedule_from_config(cfg, steps_per_epoch=1).ramp_epochs  # what WarmupASHA waits for

    def report(epoch: int, metrics: dict[str, float], ckpt: Path | None) -> None:
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        values["epoch"] = epoch + 1
        values[RAMP_KEY] = ramp
        tune.report(values, checkpoint=tune.Checkpoint.from_directory(str(ckpt)) if ckpt else None)

    workers = base.get("workers", 1)
    if workers > 1:
        train_with_workers(cfg, run, resume=checkpoint is not None, workers=workers,
                           resources=base.get("resources") or {}, download=base.get("download", False),
                           report=report)
    else:
        Trainer(cfg, run, resume=checkpoint is not None, download=base.get("download", False), callback=report).fit()


def train_with_workers(cfg: Any, run: Path, *, resume: bool, workers: int, resources: dict[str, float],
                       download: bool, report: Any) -> None:
    """Train ``cfg`` in ``run`` as a Ray Train (V2) run of ``workers`` processes, accelerate inside each.

    Ray Train's ``TorchTrainer`` places the workers (one per GPU), sets the ``RANK`` / ``WORLD_SIZE`` /
    ``LOCAL_RANK`` environment and the process group, which accelerate takes over as under ``torchrun``. The main
    worker hands each epoch's metrics and checkpoint folder to this trial through a Ray queue and waits until the
    trial has reported them to Tune with the checkpoint (as ``tune.report`` holds a one-process trial), so
    retries, ``--resume``, ASHA and PBT work as for one-process trials (Ray's ``TuneReportCallback`` would pass
    only the checkpoint's path). Ray Train's own retries are off: Tune retries the trial from its checkpoint.
    ``run`` must be on storage every worker sees.
    """
    import threading

    from ray import train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    reported = Queue(maxsize=1, actor_options={"num_cpus": 0})
    per_worker = {"CPU": resources.get("cpu", 1) / workers, "GPU": resources.get("gpu", 0) / workers}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": cfg.to_yaml(), "run": str(run), "resume": resume, "download": download,
                           "queue": queue, "reported": reported},
        scaling_config=train.ScalingConfig(num_workers=workers, use_gpu=per_worker["GPU"] > 0,
                                           resources_per_worker={k: v for k, v in per_worker.items() if v}),
        run_config=train.RunConfig(name="ray_train", storage_path=str(run.parent),
                                   failure_config=train.FailureConfig(max_failures=0)))
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # handed to the trial's thread below
            failure.append(e)
        finally:
            queue.put(None)

    thread = threading.Thread(target=fit, name="ray-train-run", daemon=True)
    thread.start()
    while (item := queue.get()) is not None:
        epoch, metrics, ckpt = item
        report(epoch, metrics, Path(ckpt) if ckpt else None)
        reported.put(epoch)  # the main worker may go on (and prune the checkpoint Tune has copied by now)
    thread.join()
    if failure:
        raise failure[0]


def _train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the Trainer on this worker's share; the main process sends each epoch to the trial."""
    from .config import from_dict
    from .train import Trainer

    queue, reported = loop_config["queue"], loop_config["reported"]
    cfg = from_dict(yaml.safe_load(loop_config["config"]))

    def send(epoch: int, metrics: dict[str, float], ckpt: Path | None) -> None:
        queue.put((epoch, metrics, str(ckpt) if ckpt else None))
        reported.get()  # held until Tune has the epoch, as a one-process trial is held by tune.report

    Trainer(cfg, Path(loop_config["run"]), resume=loop_config["resume"], download=loop_config["download"],
            callback=send).fit()


def _adopt(checkpoint: Any, folder: Path) -> bool:
    """Make ``checkpoint`` (Tune's, for an exploit the donor trial's) the only checkpoint in ``folder``, so the
    Trainer continues from it and from nothing newer of this trial's own; False when it no longer exists."""
    from .checkpoint import CHECKPOINT_PREFIX, COMPLETE_MARKER

    try:
        with checkpoint.as_directory() as source:
            state = json.loads((Path(source) / COMPLETE_MARKER).read_text())
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(source, folder / f"{CHECKPOINT_PREFIX}{state['global_step']:09d}")
    except FileNotFoundError:
        return False
    return True


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


def run_search(space: SearchSpace, recipe: str, *, overrides: list[str] = (), updates: dict | None = None,
               num_samples: int = 8, scheduler: str = "asha", search: str = "optuna", gpus_per_trial: float = 0,
               cpus_per_trial: float = 1, max_concurrent: int | None = None, address: str | None = None,
               storage: str | Path = "runs/tune", name: str | None = None, resume: bool = False,
               max_failures: int = 2, seed: int = 0, download: bool = False, workers_per_trial: int | None = None,
               callbacks: list[Any] | None = None, grace_period: int = 1, reduction_factor: float = 3) -> Path:
    """Run (or ``resume``) a search and write its report; return the experiment folder.

    Args:
        space: The validated search space.
        recipe: The recipe every trial starts from.
        overrides, updates: Fixed config changes applied before the sampled values.
        num_samples: Trials to run.
        scheduler: ``asha`` (default), ``pbt`` or ``fifo`` (every trial to the full budget).
        grace_period, reduction_factor: ASHA's epochs before the first cut, and 1 / the share it keeps at a cut.
        search: ``optuna`` (seeded TPE, default) or ``random``; PBT always samples at random.
        gpus_per_trial, cpus_per_trial: Resources of one trial.
        workers_per_trial: Processes of one trial (default: one per GPU when ``gpus_per_trial`` > 1, else one);
            more than one makes each trial a Ray Train run.
        max_concurrent: Trials at once (default: as many as the resources allow).
        address: A Ray cluster to join (``auto`` or ``ray://host:port``); None starts Ray on this machine.
        storage: Results folder (shared storage when joining a cluster).
        name: Experiment name (default: the space's name).
        resume: Continue a killed search in ``storage/name``.
        max_failures: Retries of a crashed trial, each from its last checkpoint.
        seed: Seed of the Optuna sampler, or of the random sampling.
        download: Let CIFAR / timm data sets download.
        callbacks: ``ray.tune.Callback`` objects for the driver (the benchmarks time trials with one).
    """
    if num_samples < 1 or (max_concurrent is not None and max_concurrent < 1):
        raise ConfigError("--num-samples and --max-concurrent must be at least 1")
    if grace_period < 1 or reduction_factor <= 1:
        raise ConfigError("--grace-period must be at least 1 and --reduction-factor above 1")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
    if search not in SEARCHERS:
        raise ConfigError(f"unknown search {search!r}; valid: {', '.join(SEARCHERS)}")
    updates = updates or {}
    base_cfg = load_config(recipe, overrides, updates)  # fail early on a bad recipe or override
    if scheduler == "asha" and grace_period > base_cfg.train.epochs:
        raise ConfigError(f"--grace-period {grace_period} is longer than the {base_cfg.train.epochs} epochs of a trial")
    for dim in space.dimensions:  # every value the space can sample must give a valid config with this recipe
        for value in dim.values_to_check():
            try:
                load_config(recipe, overrides, updates, {dim.key: value})
            except ConfigError as e:
                raise ConfigError(f"search space {space.name!r}: {dim.key}={value!r} does not fit recipe "
                                  f"{str(recipe)!r}: {e}") from None
    workers = trial_workers(gpus_per_trial, workers_per_trial)
    exp = experiment_dir(storage, name or space.name, resume)
    options = dict(space=space.name, dimensions={d.key: [d.kind, *d.args] for d in space.dimensions},
                   recipe=str(recipe), overrides=list(overrides),
                   updates=updates, num_samples=num_samples, scheduler=scheduler, search=search, seed=seed,
                   grace_period=grace_period, reduction_factor=reduction_factor, gpus_per_trial=gpus_per_trial,
                   cpus_per_trial=cpus_per_trial, workers=workers)
    with experiment_guard(exp, options, resume), ray_session(address, exp):
        base = dict(recipe=str(recipe), overrides=list(overrides), updates=updates, download=download)
        searcher = None  # seeded random sampling (fit's default)
        if search == "optuna" and scheduler != "pbt":
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(seed=seed)
        results = fit(exp, base, space.to_tune(), resume=resume, metric=space.metric, mode=space.mode,
                      num_samples=num_samples, search_alg=searcher, max_concurrent=max_concurrent,
                      scheduler=_scheduler(scheduler, space, base_cfg.train.epochs, grace_period, reduction_factor),
                      resources={"cpu": cpus_per_trial, "gpu": gpus_per_trial}, max_failures=max_failures,
                      workers=workers, keep_checkpoints=3 if scheduler == "pbt" else 1, local=address is None,
                      callbacks=callbacks, seed=seed)
        write_report(results, space, exp)
    return exp


def trial_workers(gpus_per_trial: float, workers_per_trial: int | None) -> int:
    """Processes of one trial: as given, else one per GPU for a trial of more than one GPU, else one."""
    if workers_per_trial is not None:
        if workers_per_trial < 1:
            raise ConfigError("--workers-per-trial must be at least 1")
        if gpus_per_trial and gpus_per_trial % workers_per_trial:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} does not split over {workers_per_trial} workers")
        return workers_per_trial
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g}: more than one GPU must be a whole number")
    return int(gpus_per_trial) if gpus_per_trial > 1 else 1


def experiment_dir(storage: str | Path, name: str, resume: bool) -> Path:
    """``storage/name``, absolute (Ray requires it); it must be new unless ``resume``, and exist if ``resume``."""
    if "://" in str(storage):
        raise ConfigError(f"--storage {str(storage)!r}: give a folder (on a cluster, one every node mounts, such as "
                          "NFS or EFS); cloud URIs are not supported yet")
    exp = Path(storage).expanduser().resolve() / name
    if exp.exists() and not resume:
        raise ConfigError(f"{str(exp)!r} already exists; pass --resume to continue it or choose another --name")
    if resume and not exp.exists():
        raise ConfigError(f"nothing to resume in {str(exp)!r}")
    return exp


OPTIONS_FILE = "timm_tricks_options.json"


@contextlib.contextmanager
def experiment_guard(exp: Path, options: dict[str, Any], resume: bool) -> Iterator[None]:
    """Keep a search or an ablation to the options it started with, and leave no folder behind a refused start.

    The first run writes ``options`` (what shapes the trials: recipe, overrides, space or ladder, resources) to
    ``exp/timm_tricks_options.json``; ``--resume`` with other options is refused, naming them, since restored
    trials would otherwise continue their checkpoints under another config. A ConfigError raised inside the block
    (a check after Ray has started) removes ``exp``, and the folders above it, if this call created them.
    """
    path = exp / OPTIONS_FILE
    now = json.loads(json.dumps(options, sort_keys=True, default=str))
    if resume and path.exists():
        first = json.loads(path.read_text())
        differ = sorted(k for k in set(first) | set(now) if first.get(k) != now.get(k))
        if differ:
            details = "; ".join(f"{k}: {first.get(k)!r} then, {now.get(k)!r} now" for k in differ)
            raise ConfigError(f"--resume must repeat the options {str(exp)!r} started with; these differ: {details}")
    created = None if exp.exists() else exp  # the top-most folder this call creates
    while created is not None and not created.parent.exists():
        created = created.parent
    exp.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
    try:
        yield
    except ConfigError:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def fit(exp: Path, base: dict[str, Any], param_space: dict[str, Any], *, resume: bool, metric: str, mode: str,
        num_samples: int = 1, search_alg: Any = None, scheduler: Any = None, max_concurrent: int | None = None,
        resources: dict[str, float] | None = None, workers: int = 1, max_failures: int = 2,
        keep_checkpoints: int = 1, local: bool = True, callbacks: list[Any] | None = None, seed: int = 0) -> Any:
    """Run ``trial_fn`` over ``param_space`` as the Tune experiment ``exp`` (or restore it), return the ResultGrid.

    ``base`` holds what every trial shares (recipe, overrides, updates); the searcher, scheduler and
    concurrency are set only on a new experiment, a restored one keeps its own. Without a ``search_alg`` the
    trials are drawn at random (and grids expanded) by Ray's ``BasicVariantGenerator`` seeded with ``seed``, so
    the same seed gives the same trials whatever the scheduler.

    ``keep_checkpoints`` is Tune's ``num_to_keep`` per trial. Tune snapshots the experiment each time a trial has
    saved that many checkpoints since the last snapshot (``_ExperimentCheckpointManager``), so the default of one
    makes a snapshot after every reported epoch and ``--resume`` after a killed driver loses at most the epoch in
    flight. PBT needs more: an exploiting trial loads its donor's checkpoint after the donor may have saved again.

    With ``workers`` > 1 each trial is a Ray Train run of that many workers sharing ``resources``
    (:func:`train_with_workers`); the trial itself then only waits on them and takes almost nothing, so the trials
    at once default to as many as the cluster's GPUs (or CPUs) can hold. A ``local`` Ray (started here) must
    hold one trial's resources, or a ConfigError says so.
    """
    import ray
    from ray import tune

    resources = resources or {"cpu": 1}
    base = dict(base, exp=str(exp), workers=workers, resources=resources)
    trial_resources = resources
    total = ray.cluster_resources()
    for kind, extra in (("cpu", 0.01 if workers > 1 else 0.0), ("gpu", 0.0)):
        # (not on a cluster, which may still be adding nodes: Ray waits for them)
        if local and resources.get(kind, 0) + extra > total.get(kind.upper(), 0) + 1e-9:
            raise ConfigError(f"a trial asks for {resources.get(kind, 0) + extra:g} {kind.upper()}s but the Ray "
                              f"cluster has {total.get(kind.upper(), 0):g}: lower --{kind}s-per-trial")
    if workers > 1:
        trial_resources = {"cpu": 0.01}  # the trial only waits on its workers (Ray refuses 0)
        if max_concurrent is None:
            kind = "gpu" if resources.get("gpu") else "cpu"
            max_concurrent = max(1, int(total.get(kind.upper(), 0) // max(resources.get(kind, 1), 1e-9)))
    trainable = tune.with_parameters(tune.with_resources(trial_fn, trial_resources), base=base)
    if search_alg is None:  # (Tune ignores max_concurrent_trials for a generator: it takes the limit itself)
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(max_concurrent=max_concurrent or 0, random_state=seed)
        max_concurrent = None
    if resume and exp.exists():
        if not tune.Tuner.can_restore(str(exp)):
            raise ConfigError(f"nothing to resume in {str(exp)!r} (no tuner.pkl): choose another --name")
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True, param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=num_samples, search_alg=search_alg,
                                        max_concurrent_trials=max_concurrent, scheduler=scheduler),
            run_config=tune.RunConfig(name=exp.name, storage_path=str(exp.parent), verbose=0, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints)))
    return tuner.fit()


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


def result_summary(result: Any) -> dict[str, Any]:
    """Epochs a Tune result trained, its status and its folder."""
    return {"epochs": int((result.metrics or {}).get("epoch", 0)), "status": "ERROR" if result.error else
            "TERMINATED", "path": str(result.path)}


def write_report(results: Any, space: SearchSpace, exp: Path) -> list[dict[str, Any]]:
    """``trials.csv``, ``report.md``, ``best_recipe.yaml`` and the plots in ``exp``; prints the table."""
    rows = trial_table(results, space)
    if not rows:
        raise ConfigError(f"search {str(exp)!r} has no trials")
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
