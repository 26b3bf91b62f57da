"""Images per second delivered by the project's ``folder:`` pipeline against timm's loader, on the same JPEG folder.

The script writes an ImageNet-like folder in a temporary directory (``--images`` training JPEGs of about 500x375,
quality 90, 10 classes: smooth colour fields with shapes and grain, about 100 KB each as ImageNet's are) and times
whole passes over it:

* **project**: ``timm_tricks.build.build_batches`` on ``folder:PATH`` (a ``FileBatches``): the DataLoader workers
  decode (``torchvision.io.decode_jpeg``), crop and flip each image to a uint8 224x224 tensor, and the float stage
  (``BotBatchStage``: colour, lighting, normalisation) runs on each batch: here, with no GPU, normalisation alone in
  the main process and colour and lighting in the workers (``FileBatches._in_workers``); the figure counts
  finished float32 batches.
* **timm**: ``timm.data.create_loader`` over ``timm.data.create_dataset("", root=PATH/train)`` with
  ``is_training=True`` (its ``create_transform``): ``RandomResizedCropAndInterpolation`` and the flip in the
  workers, uint8 tensors to its ``PrefetchLoader`` (``use_prefetcher=True``, timm's default), which normalises in the
  main process; persistent workers as the project's.

Rows: **like for like**: random-resized crop (scale 0.08-1, ratio 3/4-4/3, bilinear), flip 0.5 and normalisation
on both sides (``augment.color=null``, ``augment.pca_std=0``; timm ``color_jitter=None``); **Bag of Tricks**: the
project's full chain (HSV scaling and PCA lighting on the batch) against timm's closest chain (its default
``color_jitter=0.4``, per image; timm has no PCA lighting), and the project's previous per-image pipeline (the same
chain in the workers, ``bot_train_transform``, float32 from the workers) for reference.

The sides alternate pass by pass (the side that goes first alternates too) after a warm-up pass of each loader
(which also starts its persistent workers); the table gives the median images/s of ``--repeats`` passes and the
ratio of the medians. Everything runs on the CPU, in one process with its DataLoader workers. Beside the images/s
(wall clock, which on a shared machine depends on the share of the cores the run gets) the table gives the CPU
time each image costs, summed over the main process and the workers (psutil), which the other jobs on the machine
disturb much less.

    python benchmarks/data_throughput.py --images 2000 --repeats 5 --bot-repeats 3 --workers 1,2 [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import machine, publish  # noqa: E402  (benchmarks/ is the script's folder)

from timm_tricks.batches import FileBatches, Shard  # noqa: E402
from timm_tricks.build import build_batches  # noqa: E402
from timm_tricks.config import load_config  # noqa: E402
from timm_tricks.data import folder_datasets, parse_source  # noqa: E402

HEADING = "## File pipeline throughput against timm's loader (benchmarks/data_throughput.py)"
SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's defaults, on both sides


def imagenet_like(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """A photo-like RGB image: a smooth colour field, a few filled shapes, blur and grain."""
    field = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 150)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    arr = np.asarray(field.filter(ImageFilter.GaussianBlur(0.8))).astype(np.int16)
    arr += rng.normal(0, 14, arr.shape).astype(np.int16)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def write_folder(root: Path, images: int, classes: int = 10, val_per_class: int = 5, seed: int = 0) -> float:
    """``root/train/classK/*.jpg`` (``images`` in all) and ``root/val/...``; returns the mean JPEG size in KB."""
    rng = np.random.default_rng(seed)
    sizes = []
    for split, count in (("train", images), ("val", val_per_class * classes)):
        for k in range(count):
            folder = root / split / f"class{k % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
            w, h = w + int(rng.integers(-40, 41)), h + int(rng.integers(-40, 41))
            path = folder / f"{k:06d}.jpg"
            imagenet_like(rng, w, h).save(path, quality=90)
            sizes.append(path.stat().st_size)
            if (k + 1) % 500 == 0:
                print(f"  wrote {k + 1}/{count} {split} images", file=sys.stderr, flush=True)
    return float(np.mean(sizes)) / 1024


def project_passes(root: Path, batch: int, workers: int, chain: str) -> Callable[[int], int]:
    """A function running one pass (epoch ``e``) of the project's folder pipeline; returns the images it gave."""
    sets = [f"data.source=folder:{root}", f"data.image_size={SIZE}", f"data.batch_size={batch}",
            f"data.workers={workers}", f"augment.mean={list(IMAGENET_MEAN)}", f"augment.std={list(IMAGENET_STD)}"]
    if chain == "plain":
        sets += ["augment.color=null", "augment.pca_std=0"]
    cfg = load_config(None, sets)
    source = parse_source(cfg.data.source)

    def shard(n: int) -> Shard:
        return Shard(n, batch, 0, 1, 0)

    if chain == "per-image":  # the previous pipeline: the whole chain per image in the workers, float32 out
        from timm_tricks.augment import bot_eval_transform, bot_train_transform

        norm = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        train, val, n = folder_datasets(root, bot_train_transform(SIZE, **norm), bot_eval_transform(SIZE, **norm))
        batches = FileBatches(train, val, n, shard(len(train)), torch.device("cpu"), workers)
    else:
        batches = build_batches(cfg, source, shard, torch.device("cpu"))
    return lambda epoch: _count(images for images, _ in batches.train_batches(epoch))


def timm_passes(root: Path, batch: int, workers: int, chain: str) -> Callable[[int], int]:
    """A function running one pass of timm's ``create_loader`` on the same folder."""
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(root / "train"), is_training=True)
    loader = create_loader(dataset, input_size=(3, SIZE, SIZE), batch_size=batch, is_training=True,
                           color_jitter=None if chain == "plain" else 0.4, interpolation="bilinear",
                           mean=IMAGENET_MEAN, std=IMAGENET_STD, num_workers=workers, device=torch.device("cpu"),
                           use_prefetcher=True, persistent_workers=True)
    return lambda epoch: _count(images for images, _ in loader)


def _count(batches: Iterable[torch.Tensor]) -> int:
    n = 0
    for images in batches:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, SIZE, SIZE)
        n += images.shape[0]
    return n


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children (the DataLoader workers) so far."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def measure(sides: dict[str, Callable[[int], int]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Images/s and CPU milliseconds per image (all processes) of each side over ``repeats`` alternating passes,
    after one warm-up pass each."""
    for run in sides.values():
        run(0)
    out: dict[str, dict[str, list[float]]] = {name: {"rate": [], "cpu_ms": []} for name in sides}
    names = list(sides)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            c0, t0 = cpu_seconds(), time.perf_counter()
            n = sides[name](r + 1)
            t1, c1 = time.perf_counter(), cpu_seconds()
            out[name]["rate"].append(n / (t1 - t0))
            out[name]["cpu_ms"].append(1000 * (c1 - c0) / n)
            print(f"  pass {r + 1}/{repeats} {name}: {out[name]['rate'][-1]:.0f} img/s", file=sys.stderr, flush=True)
    return out


def _row(label: str, workers: int, m: dict[str, dict[str, list[float]]], other: str = "timm") -> str:
    p, t = statistics.median(m["project"]["rate"]), statistics.median(m[other]["rate"])
    pc, tc = statistics.median(m["project"]["cpu_ms"]), statistics.median(m[other]["cpu_ms"])

    def span(v: list[float]) -> str:
        return f"{min(v):.0f}-{max(v):.0f}"

    return (f"| {label} | {workers} | {p:.0f} | {t:.0f} | **{p / t:.2f}x** | {span(m['project']['rate'])} | "
            f"{span(m[other]['rate'])} | {pc:.2f} | {tc:.2f} | {tc / pc:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="training JPEGs to write (at least 2,000)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--bot-repeats", type=int, default=3, help="passes per side of the Bag of Tricks rows; 0 skips")
    parser.add_argument("--root", type=Path, help="use (or write) the folder here instead of a temporary one")
    parser.add_argument("--write-docs", action="store_true", help="replace this benchmark's section in docs")
    args = parser.parse_args()
    command = ("python benchmarks/data_throughput.py " + shlex.join(sys.argv[1:])).rstrip()
    where = machine()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "imagenet-like"
        kb = write_folder(root, args.images) if not (root / "train").is_dir() else float("nan")
        lines = [HEADING, "", f"Command: `{command}`", "", f"- Machine: {where}",
                 f"- Data: {args.images} training JPEGs of about 500x375 (quality 90, mean {kb:.0f} KB), 10 classes; "
                 f"{SIZE}x{SIZE} crops, batch {args.batch}, {args.repeats} alternating passes per side after a "
                 f"warm-up ({args.bot_repeats} for the Bag of Tricks rows), CPU only (the float stage: normalisation "
                 "in the main process, colour and lighting in the workers), torch threads in the main process: "
                 f"{torch.get_num_threads()}", "",
                 "| chain | workers | project img/s | other img/s | ratio | project range | other range | "
                 "project CPU ms/img | other CPU ms/img | CPU ratio |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for w in [int(v) for v in args.workers.split(",")]:
            rates = measure({"project": project_passes(root, args.batch, w, "plain"),
                             "timm": timm_passes(root, args.batch, w, "plain")}, args.repeats)
            lines.append(_row("like for like (crop, flip, normalise) vs timm", w, rates))
            print(lines[-1], flush=True)
        for w in ([int(v) for v in args.workers.split(",")] if args.bot_repeats else []):
            rates = measure({"project": project_passes(root, args.batch, w, "bot"),
                             "timm": timm_passes(root, args.batch, w, "bot"),
                             "before": project_passes(root, args.batch, w, "per-image")}, args.bot_repeats)
            lines.append(_row("Bag of Tricks (+ HSV, PCA) vs timm + jitter 0.4", w, rates))
            lines.append(_row("Bag of Tricks vs the project's per-image pipeline", w, rates, other="before"))
            print(*lines[-2:], sep="\n", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"1-minute load average at the end: {load:.2f}.", ""]
    publish(HEADING, "\n".join(lines), args.write_docs)


if __name__ == "__main__":
    main()
