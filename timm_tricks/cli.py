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
from typing import Any

from .choices import SCHEDULERS, SEARCHERS, TRAIN_SET_SIZES
from .cli_text import DESCRIPTION, EPILOG, EXAMPLES
from .config import list_recipes, load_config, load_recipe_dict
from .errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, TrainingError, UserError, exit_status
from .search_status import RAY_VERBOSITY, STATUS_EVERY, StatusOptions

STOPPED = {"train": "training", "ablate": "ablation", "tune": "search"}  # what "timm-tricks: ... stopped" names


def _source_kind(source: str) -> str:
    return source.split(":", 1)[0]


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise UserError("recipes show needs a recipe name or path; see 'timm-tricks recipes'")
        from .config_docs import show_recipe

        # The shipped recipes' model and optimizer names are checked by the test suite (test_config.py), so only a
        # recipe file of the user's needs timm's registries (and the seconds it takes to import timm).
        shipped = args.name in list_recipes()
        print(show_recipe(args.name, everything=args.all, check_names=not shipped), end="")
        return 0
    if args.action not in (None, "list"):
        raise UserError(f"unknown recipes action {args.action!r}; valid: list, show NAME")
    names = list_recipes()
    width = max(len(n) for n in names)
    for name in names:
        description = load_recipe_dict(name).get("description", "")
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .config_docs import format_keys

    print(format_keys(args.section), end="")
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
        note = f"{size:,} training images // batch {cfg.global_batch_size():,}"
    else:
        note = "--steps-per-epoch"
    if steps < 1:
        raise UserError(f"--steps-per-epoch must be >= 1, got {steps}")
    if steps * cfg.train.epochs > MAX_TABLE_STEPS:
        raise UserError(f"{steps} steps per epoch x {cfg.train.epochs} epochs is more than the {MAX_TABLE_STEPS:,} "
                        "steps lr-schedule tabulates; check --steps-per-epoch")
    peak = cfg.scaled_lr()
    schedule = schedule_from_config(cfg, steps, peak)
    rows = lr_table(schedule, peak)
    if args.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["step", "epoch", "lr"])
        writer.writerows((s, f"{e:.6g}", f"{lr:.10g}") for s, e, lr in rows)
        _write_new(Path(args.csv), buf.getvalue())
        print(f"wrote {len(rows)} steps to {args.csv}", file=sys.stderr)
    if args.plot:
        _plot(rows, cfg.name, Path(args.plot))
        print(f"wrote {args.plot}", file=sys.stderr)
    if not args.csv:
        from .cli_text import schedule_summary

        o = cfg.optim
        how = f" = optim.lr {o.lr:g} x batch {cfg.global_batch_size()} / {o.base_batch_size} (linear scaling)" \
            if o.linear_scaling else " (optim.lr)"
        print("\n".join(schedule_summary(f"{cfg.name} ({note})", schedule, rows, f"{peak:.6g}{how}")))
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
                            resume=args.resume, status=_status(args))
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
                                  teacher_model=args.teacher_model, name=args.name, resume=args.resume,
                                  status=_status(args))
        run_ablation(ladder, overrides=args.set, updates=flag_updates(args), options=options,
                     cluster=ClusterOptions.from_args(args))
    except TrainingError as e:
        print(f"timm-tricks: ablation stopped: {e}", file=sys.stderr)
        return 1
    return 0


def _cluster_options(p: argparse.ArgumentParser, storage: str) -> None:
    """The Ray and output options ``tune`` and ``ablate`` share."""
    p.add_argument("--gpus-per-trial", type=float, default=0, metavar="N", help="GPUs of one trial (default 0)")
    p.add_argument("--cpus-per-trial", type=float, default=1, metavar="N", help="CPUs of one trial (default 1)")
    p.add_argument("--workers-per-trial", type=int, metavar="N", help="processes of one trial, each a Ray Train worker "
                                                         "(default: one per GPU when a trial has more than one)")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="trials at once (default: what the resources allow)")
    p.add_argument("--address", help="join a Ray cluster: auto or ray://HOST:PORT (default: start Ray here)")
    p.add_argument("--storage", default=storage, metavar="DIR",
                   help=f"results folder, shared by all nodes on a cluster (default {storage})")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --storage/--name")
    p.add_argument("--max-failures", type=int, default=2, metavar="N", help="retries of a crashed trial (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (see 'timm-tricks keys')")
    p.add_argument("--download", action="store_true", help="let CIFAR / timm data sets download their files")
    p.add_argument("--quiet", action="store_true", help="print nothing while it runs (the report at the end still)")
    p.add_argument("--status-every", type=float, default=STATUS_EVERY, metavar="SECONDS",
                   help=f"seconds between status lines (default {STATUS_EVERY:g})")
    p.add_argument("--ray-verbose", type=int, default=0, choices=RAY_VERBOSITY, metavar="{0,1,2,3}",
                   help="Ray Tune's own output besides: 0 none (default), 1 the experiment, 2 a table of the "
                        "trials, 3 also each result")


def _status(args: argparse.Namespace) -> StatusOptions:
    return StatusOptions(quiet=args.quiet, every=args.status_every, ray_verbose=args.ray_verbose)


def _add(sub: Any, name: str, short: str, description: str) -> argparse.ArgumentParser:
    """A subcommand with its description and examples (kept as written)."""
    return sub.add_parser(name, help=short, description=description, epilog=EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="timm-tricks", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"timm-tricks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "recipes", "list the shipped recipes, or show one", "List the shipped recipes, or show one: "
             "its file with the comments that cite each number, then the values it resolves to.")
    p.add_argument("action", nargs="?", choices=["list", "show"], help="list (default) or show NAME")
    p.add_argument("name", nargs="?", help="recipe name or YAML path (with show)")
    p.add_argument("--all", action="store_true", help="with show: every resolved value, not only those that differ "
                                                      "from the defaults")
    p.set_defaults(func=cmd_recipes)

    p = _add(sub, "keys", "list the config keys: type, default, range and meaning",
             "Every key a recipe or --set can set: its type, default, valid range or choices, and what it does.")
    p.add_argument("section", nargs="?", metavar="SECTION", help="a section (model, data, augment, optim, schedule, "
                                                                 "loss, mixup, distill, ema, eval, train) or a key")
    p.set_defaults(func=cmd_keys)

    p = _add(sub, "lr-schedule", "summarise, tabulate or plot the learning rate of a recipe",
             "The per-step learning rate a recipe trains with: a summary (the peak, the warmup, the rate at each "
             "epoch's start), the full table with --csv, a plot with --plot.")
    p.add_argument("--recipe", required=True, help="recipe name or YAML path")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch (default: from the data set size)")
    p.add_argument("--train-size", type=int, help="training images, to derive steps per epoch")
    p.add_argument("--batch-size", type=int, help="override the global batch size (data.batch_size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (see 'timm-tricks keys')")
    p.add_argument("--csv", metavar="FILE", help="write every step's lr to this CSV file (step, epoch, lr)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the schedule to this PNG file")
    p.set_defaults(func=cmd_lr_schedule)

    p = _add(sub, "train", "train a recipe (also under accelerate launch -m timm_tricks train)",
             "Train a recipe into a run folder: config, per-epoch summary, metrics, weights and checkpoints that "
             "resume bit for bit. Runs on one CPU or GPU, or on many under accelerate launch.")
    p.add_argument("--recipe", required=True, help="recipe name or YAML path")
    p.add_argument("--model", help="override model.name (any timm or timm_tricks model)")
    p.add_argument("--data", help="override data.source: digits, synthetic[:N], folder:PATH, cifar10[:ROOT], "
                                  "cifar100[:ROOT], timm:NAME[:ROOT]")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--batch-size", type=int, help="override the global batch size (data.batch_size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (see 'timm-tricks keys')")
    p.add_argument("--output", required=True, help="run folder: config, summary, metrics, weights, checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--download", action="store_true", help="let CIFAR / timm data sets download their files")
    p.set_defaults(func=cmd_train)

    p = _add(sub, "tune", "search hyperparameters with Ray Tune (Optuna + ASHA by default)",
             "Search a space of config values (tune_spaces/ or your YAML file) with Ray Tune: each trial trains the "
             "recipe with its sampled values, reports every epoch, and is retried from its checkpoint if it "
             "crashes.")
    p.add_argument("--space", required=True, help="search space name (tune_spaces/) or YAML path")
    p.add_argument("--recipe", help="recipe to start from (default: the space's)")
    p.add_argument("--model", help="override model.name")
    p.add_argument("--data", help="override data.source")
    p.add_argument("--epochs", type=int, help="override train.epochs (the budget of one trial)")
    p.add_argument("--num-samples", type=int, default=8, help="trials to run (default 8)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="asha",
                   help="asha: stop weak trials early (default); pbt: copy and perturb the best trials' weights and "
                        "values each epoch; fifo: every trial to the full budget")
    p.add_argument("--search", choices=SEARCHERS, default="optuna",
                   help="optuna: Optuna's TPE suggests each trial from the ones before (default); random: seeded "
                        "random draws (PBT always draws at random)")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped (1); "
                                                                   "never before the trial's own warmup has ended")
    p.add_argument("--reduction-factor", type=float, default=3, help="ASHA: keep 1/this of the trials at a cut (3)")
    p.add_argument("--name", help="experiment name (default: the space's name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler or of the random sampling")
    _cluster_options(p, "runs/tune")
    p.set_defaults(func=cmd_tune)

    p = _add(sub, "ablate", "train a ladder of tricks rung by rung with K seeds (a Ray Tune grid)",
             "Train each rung of an ablation ladder (each adds one trick to the rung before) with K seeds, and write "
             "the paper-style table: mean and spread per rung, the change against the rung above, the paper's "
             "number.")
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

    p = _add(sub, "eval", "evaluate a finished run's weights",
             "Evaluate a run's weights (top-1, top-5, loss) on its own validation data or another data source, and "
             "write the metrics as JSON.")
    p.add_argument("--checkpoint", required=True, help="a train --output folder or its model.safetensors")
    p.add_argument("--data", help="data source to evaluate on (default: the run's)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--out", help="where to write the metrics JSON (default: eval.json in the run folder)")
    p.add_argument("--download", action="store_true", help="let CIFAR / timm data sets download their files")
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
