"""Train resnet18d for 3 epochs on a digits image folder with timm's train.py and with ``timm-tricks train``.

The folder holds scikit-learn's digits (the project's ``digits`` split: 1,438 training and 359 validation images,
8x8 upsampled to 32x32, as RGB PNGs in ``train/CLASS`` and ``val/CLASS``). Both sides train timm's own
``resnet18d`` from the same seed with the same settings: batch 64, 3 epochs, Nesterov SGD (lr 0.1, momentum 0.9,
weight decay 5e-4 on every parameter), a cosine schedule after 1 warmup epoch, label smoothing 0.1 (timm's form),
no augmentation (the digits are already centred; timm ``--no-aug``, the project ``augment.train=none``), the
ImageNet mean and std, 32x32 evaluation without resize (timm ``--crop-pct 1``, the project
``augment.eval_resize=32``), 2 DataLoader workers, float32. The table gives each side's wall time (the whole
command, start-up included) and its final validation top-1.

timm's side needs timm's ``train.py`` from its repository (``--timm-train PATH``): the pip package does not ship
it, and this project does not copy it. Without the path that side is skipped with a message. Where the two
scripts differ (timm steps its schedule per epoch unless ``--sched-on-updates``, which newer versions have;
``--device cpu`` on machines without CUDA) the flags are taken from its ``--help``.

    python benchmarks/train_vs_timm.py [--timm-train PATH/TO/pytorch-image-models/train.py] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import machine, publish  # noqa: E402  (benchmarks/ is the script's folder)
from timm_script import run_timm_train, supported_flags  # noqa: E402

HEADING = "## resnet18d on a digits folder: timm's train.py against timm-tricks train (benchmarks/train_vs_timm.py)"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EPOCHS, BATCH, WORKERS, SEED = 3, 64, 2, 0


def write_digits_folder(root: Path) -> tuple[int, int]:
    """The project's digits split as ``root/{train,val}/D/*.png`` (RGB, 32x32); returns the two sizes."""
    from PIL import Image

    from timm_tricks.data import load_digits

    data = load_digits(image_size=32)
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("val", data.val_images, data.val_labels)):
        for i, (img, label) in enumerate(zip(images, labels.tolist(), strict=True)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    return len(data.train_labels), len(data.val_labels)


def project_command(data: Path, out: Path) -> list[str]:
    sets = ["model.zero_gamma=null", "data.image_size=32", f"data.workers={WORKERS}", "augment.train=none",
            "augment.eval_resize=32", f"augment.mean={list(MEAN)}", f"augment.std={list(STD)}", "optim.name=sgd",
            "optim.lr=0.1", "optim.linear_scaling=false", "optim.momentum=0.9", "optim.weight_decay=5e-4",
            "optim.no_bias_decay=false", "schedule.name=cosine", "schedule.warmup_epochs=1", "schedule.min_lr=0",
            "loss.label_smoothing=0.1", "loss.smoothing_form=uniform", f"train.seed={SEED}", "train.precision='no'"]
    return [sys.executable, "-m", "timm_tricks", "train", "--recipe", "digits", "--model", "resnet18d", "--data",
            f"folder:{data}", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--output", str(out),
            *[a for s in sets for a in ("--set", s)]]


def run_project(data: Path, out: Path) -> dict:
    cmd = project_command(data, out)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"timm-tricks train failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "top1": metrics["eval_top1"], "command": cmd}


def timm_args(script: Path) -> list[str]:
    import torch

    flags = supported_flags(script)
    args = ["--model", "resnet18d", "--num-classes", "10", "--input-size", "3", "32", "32", "-b", str(BATCH),
            "--epochs", str(EPOCHS), "--opt", "sgd", "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "5e-4",
            "--sched", "cosine", "--warmup-epochs", "1", "--warmup-lr", "0", "--min-lr", "0", "--cooldown-epochs",
            "0", "--smoothing", "0.1", "--no-aug", "--crop-pct", "1.0", "--mean", *map(str, MEAN), "--std",
            *map(str, STD), "--workers", str(WORKERS), "--seed", str(SEED), "--log-interval", "10"]
    args += ["--sched-on-updates"] if "--sched-on-updates" in flags else []
    args += ["--device", "cpu"] if "--device" in flags and not torch.cuda.is_available() else []
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm-train", type=Path, help="timm's train.py (from its repository; not in the pip package)")
    parser.add_argument("--write-docs", action="store_true", help="replace this benchmark's section in docs")
    args = parser.parse_args()
    command = ("python benchmarks/train_vs_timm.py " + shlex.join(sys.argv[1:])).rstrip()
    where = machine()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        n_train, n_val = write_digits_folder(data)
        ours = run_project(data, Path(tmp) / "project")
        lines = [HEADING, "", f"Command: `{command}`", "", f"- Machine: {where}",
                 f"- Data: the digits as a folder ({n_train} training, {n_val} validation PNGs, 32x32); resnet18d, "
                 f"batch {BATCH}, {EPOCHS} epochs, Nesterov SGD lr 0.1, cosine after 1 warmup epoch, smoothing 0.1, "
                 f"no augmentation, {WORKERS} workers, float32, seed {SEED}", "",
                 "| side | wall time (s) | final top-1 (%) |", "|---|---:|---:|",
                 f"| `timm-tricks train` | {ours['wall_s']:.1f} | {ours['top1']:.2f} |"]
        note = ""
        if args.timm_train:
            got = run_timm_train(args.timm_train, data, Path(tmp) / "timm-out", timm_args(args.timm_train), 3600)
            if got["returncode"] == 0 and got["top1"] is not None:
                lines.append(f"| timm `train.py` | {got['wall_s']:.1f} | {got['top1']:.2f} |")
            else:
                lines.append("| timm `train.py` | - | - |")
                note = f"timm's train.py failed (exit {got['returncode']}): {got['tail']}"
            print("timm:", shlex.join(got["command"]), file=sys.stderr)
        else:
            lines.append("| timm `train.py` | not run | not run |")
            note = ("timm's side was skipped: no `--timm-train PATH` was given. timm's `train.py` is in its "
                    "repository (huggingface/pytorch-image-models), not in the `timm` pip package.")
            print(f"train_vs_timm: {note}", file=sys.stderr)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", *([note, ""] if note else []), f"1-minute load average at the end: {load:.2f}.", ""]
    publish(HEADING, "\n".join(lines), args.write_docs)


if __name__ == "__main__":
    main()
