"""The Ray runtime under ``timm-tricks tune`` and ``timm-tricks ablate``: trials, the Tune run, the experiment.

Nothing here chooses configs: :mod:`timm_tricks.tune` picks the searcher and scheduler and writes the report,
:mod:`timm_tricks.ablate` builds the ladder's grid. This module holds what both run on:

- :class:`ClusterOptions`: where and on what the trials run (address, storage, resources, concurrency, retries).
- :func:`make_trial`: the trial function (public, for one's own ``ray.tune.Tuner``, docs/own_loop.md): it runs
  :class:`timm_tricks.train.Trainer` on recipe + overrides + the trial's values, reports each epoch with its
  checkpoint, and resumes from ``ray.tune.get_checkpoint()`` (a retry, a restored experiment, a PBT exploit).
  A trial of more than one worker is a Ray Train run (:func:`train_with_workers`).
- :func:`experiment_dir` and :func:`experiment_session`: the experiment folder, held to its first options
  (:func:`experiment_guard`), and the Ray session (:func:`timm_tricks.ray_cluster.ray_session`).
- :func:`fit`: the Tuner of one experiment, new or restored (what it prints: :mod:`timm_tricks.search_status`).

API notes for Ray 2.60 (checked against the installed source): function trainables report with
``ray.tune.report`` (``ray.train.report`` raises inside Tune), configs come from ``ray.tune`` (``RunConfig``,
``FailureConfig``, ``CheckpointConfig``), metric/mode are set only in ``TuneConfig``, PBT takes no searcher, and
``storage_path`` must be absolute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .config import load_config
from .errors import ConfigError
from .ray_cluster import ray_session
from .run_folder import write_atomic

if TYPE_CHECKING:
    from .train import TrainState

StepCallback = Callable[["TrainState"], None]
OPTIONS_FILE = "timm_tricks_options.json"


@dataclass(frozen=True)
class ClusterOptions:
    """Where and on what the trials of a search or an ablation run (the commands' shared Ray flags).

    Attributes:
        address: A Ray cluster to join (``auto`` or ``ray://host:port``); None starts Ray on this machine, on
            loopback with a fresh token (:func:`timm_tricks.ray_cluster.ray_session`).
        storage: Results folder (on a cluster, one every node mounts); None: the command's (``runs/tune``,
            ``runs/ablate``).
        gpus_per_trial, cpus_per_trial: Resources of one trial.
        workers_per_trial: Processes of one trial (default: one per GPU when ``gpus_per_trial`` > 1, else one);
            more than one makes each trial a Ray Train run.
        max_concurrent: Trials at once (default: as many as the resources allow).
        max_failures: Retries of a crashed trial, each from its last checkpoint (-1: without end, as in Tune).
        download: Let the trials download CIFAR / timm data sets on the nodes they run on.
    """

    address: str | None = None
    storage: str | Path | None = None
    gpus_per_trial: float = 0
    cpus_per_trial: float = 1
    workers_per_trial: int | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    download: bool = False

    def __post_init__(self) -> None:
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError("--max-concurrent must be at least 1")
        if self.gpus_per_trial < 0 or self.cpus_per_trial < 0:
            raise ConfigError("--gpus-per-trial and --cpus-per-trial cannot be negative")
        self.workers  # noqa: B018 (checks the worker count)

    @classmethod
    def from_args(cls, args: Any) -> ClusterOptions:
        """The options from an ``argparse`` namespace whose attributes carry the fields' names (the commands'
        ``--address``, ``--storage``, ``--gpus-per-trial`` ... flags)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})

    @property
    def workers(self) -> int:
        """Processes of one trial: as given, else one per GPU for a trial of more than one GPU, else one."""
        gpus, given = self.gpus_per_trial, self.workers_per_trial
        if given is not None:
            if given < 1:
                raise ConfigError("--workers-per-trial must be at least 1")
            if gpus and gpus % given:
                raise ConfigError(f"--gpus-per-trial {gpus:g} does not split over {given} workers")
            return given
        if gpus > 1 and gpus != int(gpus):
            raise ConfigError(f"--gpus-per-trial {gpus:g}: more than one GPU must be a whole number")
        return int(gpus) if gpus > 1 else 1

    @property
    def resources(self) -> dict[str, float]:
        """One trial's resources, as ``tune.with_resources`` takes them."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    def recorded(self) -> dict[str, Any]:
        """What of these options shapes the trials, for :func:`experiment_guard`."""
        return {"gpus_per_trial": self.gpus_per_trial, "cpus_per_trial": self.cpus_per_trial,
                "workers": self.workers}


def trial_config(recipe: str | Path, overrides: Sequence[str], updates: dict[str, Any],
                 values: dict[str, Any]) -> Any:
    """A trial's config: ``recipe``, then ``overrides``, ``updates`` and the trial's sampled (dotted) ``values``."""
    return load_config(recipe, list(overrides), updates, values)


def make_trial(recipe: str | Path | Mapping[str, str | Path], *, overrides: Sequence[str] = (),
               updates: dict[str, Any] | None = None, cluster: ClusterOptions | None = None,
               step_callback: StepCallback | None = None) -> Callable[[dict[str, Any]], None]:
    """The trial function: a Ray Tune function trainable that trains ``recipe`` with each trial's sampled values.

    Give it to a ``ray.tune.Tuner`` with a ``param_space`` of dotted config keys (``{"optim.lr":
    tune.loguniform(0.01, 1.0)}``, as in a search space). Each trial trains in ``<trial folder>/run`` inside the
    Tuner's ``storage_path`` (a local or mounted folder: the workers of a trial may be on several nodes), reports
    every epoch's metrics (the Trainer's, ``epoch`` counted from 1, and ``ramp_epochs`` for
    :class:`timm_tricks.asha.WarmupASHA`) with the epoch's checkpoint, and continues from the checkpoint Tune hands
    back on a retry, a restored experiment or a PBT exploit.

    Args:
        recipe: A recipe name or file; or recipes by name, of which the trial's ``rung`` value picks one (the
            ablation grid's).
        overrides: ``KEY=VALUE`` overrides of every trial, applied before the sampled values.
        updates: Nested config sections of every trial (as the commands' ``--model``, ``--epochs`` set them).
        cluster: Resources of one trial (carried by the trainable, as ``tune.with_resources`` does), its workers
            (more than one: a Ray Train run, :func:`train_with_workers`) and ``download``.
        step_callback: Called in every training process after each optimizer step with the run's
            :class:`timm_tricks.train.TrainState` (``global_step`` counts the steps). It is pickled to the trials'
            processes, so it must be importable there or defined in ``__main__`` (cloudpickle sends it by value).

    Returns:
        The trainable, named ``trial_fn`` (Tune names the trial folders after it).
    """
    from ray import tune

    cluster = cluster or ClusterOptions()
    spec = {"recipe": dict(recipe) if isinstance(recipe, Mapping) else str(recipe), "overrides": list(overrides),
            "updates": dict(updates or {}), "cluster": cluster}

    def trial_fn(config: dict[str, Any]) -> None:
        run_trial(config, spec, step_callback)

    # the trial itself only waits on its Ray Train workers when there are several (Ray refuses 0)
    return tune.with_resources(trial_fn, {"cpu": 0.01} if cluster.workers > 1 else cluster.resources)


def run_trial(config: dict[str, Any], spec: dict[str, Any], step_callback: StepCallback | None = None) -> None:
    """One Tune trial (the body of :func:`make_trial`'s trainable): ``spec`` holds its arguments."""
    from ray import tune

    from .asha import RAMP_KEY
    from .build import schedule_from_config
    from .train import Trainer

    config = dict(config)
    recipe = spec["recipe"]
    if isinstance(recipe, dict):
        if config.get("rung") not in recipe:
            raise ConfigError(f"the trial's 'rung' {config.get('rung')!r} is none of {', '.join(recipe)}")
        recipe = recipe[config.pop("rung")]
    cfg = trial_config(recipe, spec["overrides"], spec["updates"], config)
    cluster: ClusterOptions = spec["cluster"]
    run = _run_folder()
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
    if checkpoint is not None and (run / "config.yaml").is_file():  # the trial's config (PBT: mutated) continues
        write_atomic(run / "config.yaml", cfg.to_yaml().encode())

    ramp = schedule_from_config(cfg, steps_per_epoch=1).ramp_epochs  # what WarmupASHA waits for

    def report(epoch: int, metrics: dict[str, float], ckpt: Path | None) -> None:
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        values["epoch"] = epoch + 1
        values[RAMP_KEY] = ramp
        tune.report(values, checkpoint=tune.Checkpoint.from_directory(str(ckpt)) if ckpt else None)

    if cluster.workers > 1:
        train_with_workers(cfg, run, resume=checkpoint is not None, cluster=cluster, report=report,
                           step_callback=step_callback)
    else:
        Trainer(cfg, run, resume=checkpoint is not None, download=cluster.download, callback=report,
                step_callback=step_callback).fit()


def _run_folder() -> Path:
    """``<trial folder>/run`` in the experiment's storage.

    Not in the trial's staging folder (``get_trial_dir``, under /tmp/ray/session_*): a restored experiment gets
    new, empty staging folders; on the driver's node the staging folders sit inside the driver's, which Ray copies
    to storage whole at every experiment snapshot (one such copy failed on a half-written checkpoint); and the
    workers of a multi-worker trial may be on other nodes.
    """
    import pyarrow.fs
    from ray import tune

    storage = tune.get_context().get_storage()
    if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        raise ConfigError(f"the trials train in the experiment's folder, so the Tuner's storage_path must be a folder "
                          f"(local, or mounted on every node), not {storage.storage_filesystem.type_name} storage")
    return Path(storage.trial_fs_path) / "run"


def train_with_workers(cfg: Any, run: Path, *, resume: bool, cluster: ClusterOptions,
                       report: Callable[[int, dict[str, float], Path | None], None],
                       step_callback: StepCallback | None = None) -> None:
    """Train ``cfg`` in ``run`` as a Ray Train (V2) run of ``cluster.workers`` processes, accelerate inside each.

    Ray Train's ``TorchTrainer`` places the workers (one per GPU), sets the ``RANK`` / ``WORLD_SIZE`` /
    ``LOCAL_RANK`` environment and the process group, which accelerate takes over as under ``torchrun``. The main
    worker hands each epoch's metrics and checkpoint folder to this trial through a Ray queue and waits until the
    trial has reported them to Tune with the checkpoint (as ``tune.report`` holds a one-process trial), so
    retries, ``--resume``, ASHA and PBT work as for one-process trials (Ray's ``TuneReportCallback`` would pass
    only the checkpoint's path). Ray Train's own retries are off: Tune retries the trial from its checkpoint.
    ``run`` must be on storage every worker sees; the trial's resources are split evenly over the workers.
    """
    import threading

    from ray import train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    workers, resources = cluster.workers, cluster.resources
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    reported = Queue(maxsize=1, actor_options={"num_cpus": 0})
    per_worker = {"CPU": resources["cpu"] / workers, "GPU": resources["gpu"] / workers}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": cfg.to_yaml(), "run": str(run), "resume": resume, "download": cluster.download,
                           "queue": queue, "reported": reported, "step_callback": step_callback},
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
            callback=send, step_callback=loop_config["step_callback"]).fit()


def _adopt(checkpoint: Any, folder: Path) -> bool:
    """Make ``checkpoint`` (Tune's, for an exploit the donor trial's) the only checkpoint in ``folder``; False when
    it is gone or not whole (a driver killed while Tune deleted it leaves some files, or only the marker). It is
    copied and verified before anything of the trial's own is deleted."""
    from .checkpoint import CHECKPOINT_PREFIX, COMPLETE_MARKER, verify_checkpoint

    staging = folder.parent / ".adopting"
    try:
        with checkpoint.as_directory() as source:
            if verify_checkpoint(Path(source)) is not None:
                return False
            state = json.loads((Path(source) / COMPLETE_MARKER).read_text())
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging / f"{CHECKPOINT_PREFIX}{state['global_step']:09d}")
    except FileNotFoundError:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    if verify_checkpoint(next(staging.iterdir())) is not None:  # the copy itself was cut short
        shutil.rmtree(staging, ignore_errors=True)
        return False
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return True


# ------------------------------------------------------------------------------------------------------------------
# The experiment


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


@contextlib.contextmanager
def experiment_session(exp: Path, options: dict[str, Any], cluster: ClusterOptions, resume: bool) -> Iterator[None]:
    """The experiment ``exp`` held to ``options`` (with ``cluster``'s, :func:`experiment_guard`) and, inside it,
    the Ray session of ``cluster.address`` (:func:`timm_tricks.ray_cluster.ray_session`)."""
    with experiment_guard(exp, {**options, **cluster.recorded()}, resume), ray_session(cluster.address, exp):
        yield


@dataclass(frozen=True)
class TunerSettings:
    """What :func:`fit` sets on a new experiment besides the cluster (a restored one keeps its own).

    Attributes:
        metric, mode: The reported metric the searcher and scheduler follow, and ``max`` or ``min``.
        num_samples: Trials to run (each grid point that many times).
        search_alg: A Tune searcher; None draws the trials at random (and expands grids) with Ray's
            ``BasicVariantGenerator`` seeded with ``seed``, so the same seed gives the same trials whatever the
            scheduler.
        scheduler: A Tune scheduler (None: FIFO).
        keep_checkpoints: Tune's ``num_to_keep`` per trial. Tune snapshots the experiment each time a trial has
            saved that many checkpoints since the last snapshot (``_ExperimentCheckpointManager``), so one makes a
            snapshot after every reported epoch and ``--resume`` after a killed driver loses at most the epoch in
            flight. PBT needs more: an exploiting trial loads its donor's checkpoint after the donor may have saved
            again.
        callbacks, stop: ``ray.tune.Callback`` objects for the driver; its ``RunConfig(stop=...)`` (``MistakeWatch``).
        verbose: Ray Tune's own output, ``RunConfig(verbose=...)``: 0 (none) to 3.
    """

    metric: str
    mode: str
    num_samples: int = 1
    search_alg: Any = None
    scheduler: Any = None
    seed: int = 0
    keep_checkpoints: int = 1
    callbacks: Sequence[Any] = ()
    stop: Any = None
    verbose: int = 0


def fit(exp: Path, trial: Callable[[dict[str, Any]], None], param_space: dict[str, Any], *,
        cluster: ClusterOptions, settings: TunerSettings, resume: bool) -> Any:
    """Run ``trial`` (:func:`make_trial`'s) over ``param_space`` as the Tune experiment ``exp`` (or restore it),
    return the ResultGrid.

    With more than one worker per trial, each trial is a Ray Train run sharing the trial's resources
    (:func:`train_with_workers`); the trial itself then only waits on them and takes almost nothing, so the trials
    at once default to as many as the cluster's GPUs (or CPUs) can hold. A Ray started here (no
    ``cluster.address``) must hold one trial's resources, or a ConfigError says so; a cluster may still be adding
    nodes, and Ray waits for them.
    """
    import ray
    from ray import tune

    resources, workers, max_concurrent = cluster.resources, cluster.workers, cluster.max_concurrent
    total = ray.cluster_resources()
    for kind, extra in (("cpu", 0.01 if workers > 1 else 0.0), ("gpu", 0.0)):
        if cluster.address is None and resources[kind] + extra > total.get(kind.upper(), 0) + 1e-9:
            raise ConfigError(f"a trial asks for {resources[kind] + extra:g} {kind.upper()}s but the Ray "
                              f"cluster has {total.get(kind.upper(), 0):g}: lower --{kind}s-per-trial")
    if workers > 1 and max_concurrent is None:
        kind = "gpu" if resources["gpu"] else "cpu"
        max_concurrent = max(1, int(total.get(kind.upper(), 0) // max(resources[kind], 1e-9)))
    search_alg = settings.search_alg
    if search_alg is None:  # (Tune ignores max_concurrent_trials for a generator: it takes the limit itself)
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(max_concurrent=max_concurrent or 0, random_state=settings.seed)
        max_concurrent = None
    if resume and exp.exists():
        if not tune.Tuner.can_restore(str(exp)):
            raise ConfigError(f"nothing to resume in {str(exp)!r} (no tuner.pkl): choose another --name")
        tuner = tune.Tuner.restore(str(exp), trainable=trial, resume_errored=True, param_space=param_space)
        if tuner._local_tuner is not None:  # Tune restores the first run's RunConfig: this run's callbacks
            run = tuner._local_tuner.get_run_config()
            run.callbacks, run.stop, run.verbose = list(settings.callbacks) or None, settings.stop, settings.verbose
    else:
        tuner = tune.Tuner(
            trial,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=settings.metric, mode=settings.mode, num_samples=settings.num_samples,
                                        search_alg=search_alg, max_concurrent_trials=max_concurrent,
                                        scheduler=settings.scheduler),
            run_config=tune.RunConfig(name=exp.name, storage_path=str(exp.parent), verbose=settings.verbose,
                                      stop=settings.stop, callbacks=list(settings.callbacks) or None,
                                      failure_config=tune.FailureConfig(max_failures=cluster.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints)))
    return tuner.fit()
