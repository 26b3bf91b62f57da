"""The ``timm-tricks`` command line: a thin layer over the config, schedule, trainer, search and ablation modules.

Errors a user can cause print one line, ``timm-tricks: error: ...``, and exit with status 2 (a run that stops on
a :class:`~timm_tricks.errors.TrainingError`: status 1). The module imports only light modules at the top, and
each subcommand imports torch, timm or Ray when it needs them, so ``--help``, ``recipes`` and ``ablate --list``
answer without loading them.
"""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .choices import SCHEDULERS, SEARCHERS, TRAIN_SET_SIZES
from .config import list_recipes, load_config, load_recipe_dict
from .errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, TrainingError, UserError, exit_status

STOPPED = {"train": "training", "ablate": "ablation", "tune": "search"}  # what "timm-tricks: ... stopped" names


def _source_kind(source: str) -> str:
    return source.split(":", 1)[0]


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise UserError("recipes show needs a recipe name or path; see 'timm-tricks recipes'")
        # The shipped recipes' model and optimizer names are checked by the test suite (test_config.py), so only a
        # recipe file of the user's needs timm's registries (and the seconds it takes to import timm).
        shipped = args.name in list_recipes()
        print(load_config(args.name, check_names=not shipped).to_yaml(), end="")
        return 0
    if args.action not in (None, "list"):
        raise UserError(f"unknown recipes action {args.action!r}; valid: list, show NAME")
    names = list_recipes()
    width = max(len(n) for n in names)
    for name in names:
        description = load_recipe_dict(name).get("description", "")
        print(f"{name:<{width}}  {description}")
    return 0


def flag_updates(args: argparse.Namespace) -> dict:
    """The config sections set by the shortcut flags --model, --data, --batch-size and --epochs (where given)."""
    updates: dict = {}
    if getattr(args, "model", None):
        updates["model"] = {"name": args.model}
    if getattr(args, "data", None):
        updates["data"] = {"source": args.data}
    if getattr(args, "batch_size", None) is not None:
        updates.setdefault("data", {}).update(batch_size=args.batch_size, batch_size_per_device=None)
    if getattr(args, "epochs", None) is not None:
        updates["train"] = {"epochs": args.epochs}
    return updates


#: The longest table ``lr-schedule`` writes: 20 times the longest shipped run (Xception: 100 epochs of 5,004 steps).
MAX_TABLE_STEPS = 10_000_000


def cmd_lr_schedule(args: argparse.Namespace) -> int:
    from .build import schedule_from_config, steps_per_epoch
    from .schedule import lr_table

    cfg = load_config(args.recipe, args.set, flag_updates(args))
    steps = args.steps_per_epoch
    if steps is None:
        kind = _source_kind(cfg.data.source)
        size = args.train_size or TRAIN_SET_SIZES.get(kind)
        if size is None:
            raise UserError(f"cannot tell the training-set size of data.source={cfg.data.source!r}; "
                            "pass --steps-per-epoch or --train-size")
        steps = steps_per_epoch(cfg, size)  # what the trainer takes: full batches only
    if steps < 1:
        raise UserError(f"--steps-per-epoch must be >= 1, got {steps}")
    if steps * cfg.train.epochs > MAX_TABLE_STEPS:
        raise UserError(f"{steps} steps per epoch x {cfg.train.epochs} epochs is more than the {MAX_TABLE_STEPS:,} "
                        "steps lr-schedule tabulates; check --steps-per-epoch")
    peak = cfg.scaled_lr()
    rows = lr_table(schedule_from_config(cfg, steps, peak), peak)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "epoch", "lr"])
    writer.writerows((s, f"{e:.6g}", f"{lr:.10g}") for s, e, lr in rows)
    if args.csv:
        _write_new(Path(args.csv), buf.getvalue())
        print(f"wrote {len(rows)} steps to {args.csv}", file=sys.stderr)
    if args.plot:
        _plot(rows, cfg.name, Path(args.plot))
        print(f"wrote {args.plot}", file=sys.stderr)
    if not args.csv and not args.plot:
        sys.stdout.write(buf.getvalue())
    return 0


def _write_new(path: Path, text: str) -> None:
    """Write an output file the user named, never over a run's own files."""
    from .run_folder import RUN_FILES, write_atomic

    if not path.parent.is_dir():
        raise UserError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    if path.is_dir() or (path.exists() and (path.name in RUN_FILES or "checkpoints" in path.parts)):
        raise UserError(f"will not write over {str(path)!r}: it belongs to a run; choose another file name")

    write_atomic(path, text.encode())


def _plot(rows: list[tuple[int, float, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if path.suffix.lower() != ".png":
        raise UserError(f"--plot must name a .png file, got {str(path)!r}")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r[1] for r in rows], [r[2] for r in rows])
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{title}: per-step learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import Trainer

    cfg = load_config(args.recipe, args.set, flag_updates(args))
    metrics = Trainer(cfg, args.output, resume=args.resume, download=args.download).fit()
    import json

    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(metrics, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data, tta_flip=args.tta, download=args.download)
    text = json.dumps(metrics, indent=2)
    print(text)
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "eval.json"
    _write_new(out, text + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .experiment import ClusterOptions
    from .tune import SearchOptions, run_search
    from .tune_space import load_space

    space = load_space(args.space)
    recipe = args.recipe or space.recipe
    if not recipe:
        raise UserError(f"search space {args.space!r} names no recipe; pass --recipe")
    options = SearchOptions(num_samples=args.num_samples, scheduler=args.scheduler, search=args.search, seed=args.seed,
                            grace_period=args.grace_period, reduction_factor=args.reduction_factor, name=args.name,
                            resume=args.resume)
    run_search(space, recipe, overrides=args.set, updates=flag_updates(args), options=options,
               cluster=ClusterOptions.from_args(args))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from .ablate import AblationOptions, run_ablation
    from .experiment import ClusterOptions
    from .ladder import list_ladders, load_ladder

    if args.list:
        for name in list_ladders():
            ladder = load_ladder(name)
            print(f"{name:<16}  {len(ladder.rungs):>2} rungs  {ladder.description}")
        return 0
    if not args.ladder:
        raise UserError("ablate needs --ladder NAME|PATH (see 'timm-tricks ablate --list')")
    ladder = load_ladder(args.ladder)
    try:
        options = AblationOptions(seeds=args.seeds, teacher_checkpoint=args.teacher_checkpoint,
                                  teacher_model=args.teacher_model, name=args.name, resume=args.resume)
        run_ablation(ladder, overrides=args.set, updates=flag_updates(args), options=options,
                     cluster=ClusterOptions.from_args(args))
    except TrainingError as e:
        print(f"timm-tricks: ablation stopped: {e}", file=sys.stderr)
        return 1
    return 0


def _cluster_options(p: argparse.ArgumentParser, storage: str) -> None:
    """The Ray options ``tune`` and ``ablate`` share."""
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs of one trial (default 0)")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs of one trial (default 1)")
    p.add_argument("--workers-per-trial", type=int, help="processes of one trial, each a Ray Train worker "
                                                         "(default: one per GPU when a trial has more than one)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what the resources allow)")
    p.add_argument("--address", help="join a Ray cluster: auto or ray://HOST:PORT (default: start Ray here)")
    p.add_argument("--storage", default=storage, help=f"results folder, shared by all nodes on a cluster "
                                                      f"(default {storage})")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --storage/--name")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--download", action="store_true", help="let CIFAR / timm data sets download their files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timm-tricks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("recipes", help="list the shipped recipes, or show one resolved")
    p.add_argument("action", nargs="?", choices=["list", "show"], help="list (default) or show NAME")
    p.add_argument("name", nargs="?", help="recipe name or YAML path (with show)")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("lr-schedule", help="print or plot the per-step learning rate of a recipe")
    p.add_argument("--recipe", required=True, help="recipe name or YAML path")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch (default: from the data set size)")
    p.add_argument("--train-size", type=int, help="training images, to derive steps per epoch")
    p.add_argument("--batch-size", type=int, help="override the global batch size (data.batch_size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--csv", help="write the CSV here instead of printing it")
    p.add_argument("--plot", help="draw the schedule to this PNG file")
    p.set_defaults(func=cmd_lr_schedule)

    p = sub.add_parser("train", help="train a recipe (also under accelerate launch -m timm_tricks train)")
    p.add_argument("--recipe", required=True, help="recipe name or YAML path")
    p.add_argument("--model", help="override model.name (any timm or timm_tricks model)")
    p.add_argument("--data", help="override data.source: digits, synthetic[:N], folder:PATH, cifar10[:ROOT], "
                                  "cifar100[:ROOT], timm:NAME[:ROOT]")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--batch-size", type=int, help="override the global batch size (data.batch_size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--output", required=True, help="run folder: config, summary, metrics, weights, checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--download", action="store_true", help="let CIFAR / timm data sets download their files")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="search hyperparameters with Ray Tune (Optuna + ASHA by default)")
    p.add_argument("--space", required=True, help="search space name (tune_spaces/) or YAML path")
    p.add_argument("--recipe", help="recipe to start from (default: the space's)")
    p.add_argument("--model", help="override model.name")
    p.add_argument("--data", help="override data.source")
    p.add_argument("--epochs", type=int, help="override train.epochs (the budget of one trial)")
    p.add_argument("--num-samples", type=int, default=8, help="trials to run (default 8)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="asha")
    p.add_argument("--search", choices=SEARCHERS, default="optuna")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped (1); "
                                                                   "never before the trial's own warmup has ended")
    p.add_argument("--reduction-factor", type=float, default=3, help="ASHA: keep 1/this of the trials at a cut (3)")
    p.add_argument("--name", help="experiment name (default: the space's name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler or of the random sampling")
    _cluster_options(p, "runs/tune")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("ablate", help="train a ladder of tricks rung by rung with K seeds (a Ray Tune grid)")
    p.add_argument("--ladder", help="ladder name (timm_tricks/ladders/) or YAML path")
    p.add_argument("--list", action="store_true", help="list the shipped ladders")
    p.add_argument("--model", help="override model.name on every rung (the student's)")
    p.add_argument("--data", help="override data.source on every rung")
    p.add_argument("--epochs", type=int, help="override train.epochs on every rung")
    p.add_argument("--batch-size", type=int, help="override the global batch size on every rung")
    p.add_argument("--seeds", type=int, default=1, help="runs per rung, seeds 0..K-1 (default 1)")
    p.add_argument("--teacher-checkpoint", help="teacher weights for the distilling rungs (default: train the "
                                                "ladder's teacher first)")
    p.add_argument("--teacher-model", help="replace the model of the ladder's teacher")
    p.add_argument("--name", help="ablation name (default: the ladder's name)")
    _cluster_options(p, "runs/ablate")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("eval", help="evaluate a finished run's weights")
    p.add_argument("--checkpoint", required=True, help="a train --output folder or its model.safetensors")
    p.add_argument("--data", help="data source to evaluate on (default: the run's)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--out", help="where to write the metrics JSON (default: eval.json in the run folder)")
    p.add_argument("--download", action="store_true")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, TrainingError) as e:
        status = exit_status(e)
        what = "error" if status == EXIT_USER_ERROR else f"{STOPPED.get(args.command, args.command)} stopped"
        print(f"timm-tricks: {what}: {e}", file=sys.stderr)
        return status
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print(f"timm-tricks: interrupted; {_after_interrupt(args, argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _after_interrupt(args: argparse.Namespace, argv: Sequence[str] | None) -> str:
    """What an interrupted command kept, and the command that continues it."""
    words = list(sys.argv[1:] if argv is None else argv)
    again = "timm-tricks " + shlex.join(words + ([] if "--resume" in words else ["--resume"]))
    if args.command == "train":
        kept = any((Path(args.output) / "checkpoints").glob("ckpt-*"))
        return f"the last checkpoint is kept; continue with: {again}" if kept else \
            "no checkpoint was written yet; run the same command again to start over"
    if args.command in ("tune", "ablate"):
        return f"finished trials are kept; continue with: {again}"
    return "nothing was written"


if __name__ == "__main__":
    sys.exit(main())
