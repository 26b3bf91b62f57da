"""Throughput of batched tensor augmentation vs the same augmentation done per image with torchvision.

The augmentation is Myrtle.ai's CIFAR-10 recipe ("How to train your ResNet 8", Page 2019, on the GPU): reflect-pad 4
and random 32x32 crop, horizontal flip with probability 0.5, and one 8x8 cutout square fully inside the image.

* **batched**: :class:`timm_tricks.augment.BatchAugment` on whole ``(512, 3, 32, 32)`` uint8 batches on the
  device, then one conversion of the batch to float on the 0-1 scale.
* **per image**: ``torchvision.transforms`` (v1, the faster of v1 and v2 on small tensors) ``RandomCrop(32,
  padding=4, padding_mode="reflect")``, ``RandomHorizontalFlip()``, a per-image cutout (one random corner, slice
  assignment of zeros; faster than ``RandomErasing`` for the same square) and ``ConvertImageDtype(torch.float32)``,
  called image by image and stacked into batches of the same size, as a DataLoader's collate would.

Both paths start from the same uint8 images (CIFAR-10 is stored as uint8) already on the device, both produce the
same kind of batches (augmented float32 images on the 0-1 scale), and the two are timed alternately for
``--repeats`` rounds; the table reports the median images/s of each and the ratio of the medians.

Usage::

    python benchmarks/augment_throughput.py                       # 50,000 images, 5 repeats, CPU (+ CUDA if any)
    python benchmarks/augment_throughput.py --n 10000 --repeats 3 --device cpu
    python benchmarks/augment_throughput.py --write-docs          # also replace the section in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from docs_section import DOCS, cpu_model, publish  # noqa: E402  (benchmarks/ is the script's folder)

from timm_tricks.augment import BatchAugment  # noqa: E402

HEADING = "## Batched tensor augmentation (benchmarks/augment_throughput.py)"
SIZE, PADDING, CUTOUT = 32, 4, 8
DEFAULT_THREADS = torch.get_num_threads()


class PerImageCutout:
    """Zero one ``size`` x ``size`` square fully inside a ``(C, H, W)`` image (the per-image baseline's cutout)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        y0 = int(torch.randint(0, h - self.size + 1, (1,)))
        x0 = int(torch.randint(0, w - self.size + 1, (1,)))
        out = img.clone()
        out[:, y0:y0 + self.size, x0:x0 + self.size] = 0
        return out


def make_data(n: int, device: torch.device) -> torch.Tensor:
    """``n`` random 32x32 RGB uint8 images on ``device``."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_batched(data: torch.Tensor, batch_size: int) -> None:
    aug = BatchAugment(crop_padding=PADDING, flip=True, cutout=CUTOUT)
    for i in range(0, data.shape[0], batch_size):
        aug(data[i:i + batch_size]).float().div_(255.0)


def run_per_image(data: torch.Tensor, batch_size: int) -> None:
    tf = T.Compose([
        T.RandomCrop(SIZE, padding=PADDING, padding_mode="reflect"),
        T.RandomHorizontalFlip(),
        PerImageCutout(CUTOUT),
        T.ConvertImageDtype(torch.float32),
    ])
    for i in range(0, data.shape[0], batch_size):
        torch.stack([tf(img) for img in data[i:i + batch_size]])


def time_it(fn: Callable[[torch.Tensor, int], None], data: torch.Tensor, batch_size: int) -> float:
    """Images per second of one full pass of ``fn`` over ``data``."""
    _sync(data.device)
    start = time.perf_counter()
    fn(data, batch_size)
    _sync(data.device)
    return data.shape[0] / (time.perf_counter() - start)


def bench_device(device: torch.device, n: int, repeats: int, batch_size: int) -> dict[str, list[float]]:
    data = make_data(n, device)
    warm = data[: 2 * batch_size]
    run_batched(warm, batch_size)
    run_per_image(warm, batch_size)
    results: dict[str, list[float]] = {"batched": [], "per_image": []}
    for r in range(repeats):
        # Alternate which path goes first so drift in machine load hits both alike.
        order = ("batched", "per_image") if r % 2 == 0 else ("per_image", "batched")
        for name in order:
            fn = run_batched if name == "batched" else run_per_image
            results[name].append(time_it(fn, data, batch_size))
        print(f"[{device}] repeat {r + 1}/{repeats}: batched {results['batched'][-1]:,.0f} img/s, "
              f"per image {results['per_image'][-1]:,.0f} img/s", file=sys.stderr)
    return results


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_lines(devices: list[torch.device], load_start: float | None, load_end: float | None) -> list[str]:
    lines = [
        f"- CPU: {cpu_model()}; `nproc` = {os.cpu_count()}; torch default intra-op threads = {DEFAULT_THREADS}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}",
    ]
    if any(d.type == "cuda" for d in devices):
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    if load_start is not None and load_end is not None:
        lines.append(f"- 1-minute load average at the start / end of the run: {load_start:.2f} / {load_end:.2f}")
    return lines


def table(all_results: dict[str, dict[str, list[float]]]) -> list[str]:
    rows = [
        "| device, torch threads | batched, median img/s | per image, median img/s | ratio | batched range "
        "| per-image range |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for dev, res in all_results.items():
        b, p = statistics.median(res["batched"]), statistics.median(res["per_image"])
        rows.append(
            f"| {dev} | {b:,.0f} | {p:,.0f} | **{b / p:.1f}x** | {min(res['batched']):,.0f} - "
            f"{max(res['batched']):,.0f} | {min(res['per_image']):,.0f} - {max(res['per_image']):,.0f} |"
        )
    return rows


def section(command: str, args: argparse.Namespace, devices: list[torch.device],
            all_results: dict[str, dict[str, list[float]]], loads: tuple[float | None, float | None]) -> str:
    lines = [
        HEADING,
        "",
        "Myrtle.ai's CIFAR-10 augmentation (Page 2019, post 8 on the GPU: reflect-pad 4 + random 32x32 crop, flip 0.5,",
        "8x8 cutout) on random 32x32 uint8 images already on the device, producing float32 0-1 batches.",
        "**Batched**: `timm_tricks.augment.BatchAugment` on whole uint8 batches, then `.float().div_(255)`.",
        "**Per image**: torchvision v1 `RandomCrop(32, padding=4, padding_mode='reflect')` + `RandomHorizontalFlip()`",
        "+ a slice-assignment cutout + `ConvertImageDtype(torch.float32)`, image by image, stacked into batches of the",
        "same size. The two are timed alternately; the table gives the median over the repeats and the ratio of the",
        "medians (target: batched >= 20x per image on the CPU).",
        "",
        f"Command: `{command}` ({args.n:,} images, batch {args.batch_size}, {args.repeats} repeats)",
        "",
        *machine_lines(devices, *loads),
        "",
        *table(all_results),
        "",
        "Notes: the per-image path works on tiny tensors and is effectively single-threaded whatever the thread count;",
        "the batched path uses torch's intra-op threads, hence one row per thread count (the default row is the one",
        "to compare with the 20x target; the 1-thread row compares one core with one core). The batched crop and",
        "flip are one gather and the cutout touches only the affected rows, so the CPU cost is dominated by that",
        "gather. The machine may be shared with other jobs, so single repeats vary; quote the median of the alternated",
        "repeats.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="number of 32x32 images (default 50000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per path, alternated (default 5)")
    parser.add_argument("--batch-size", type=int, default=512, help="batch size of both paths (default 512)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU, plus CUDA when available (default)")
    parser.add_argument("--threads", type=str, default=None,
                        help="comma-separated torch intra-op thread counts to run both paths with, e.g. '1,2' "
                             "(default: torch's own default)")
    parser.add_argument("--write-docs", action="store_true", help=f"replace the section '{HEADING}' in {DOCS}")
    args = parser.parse_args(argv)
    try:
        args.threads = [DEFAULT_THREADS] if args.threads is None else [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads must be comma-separated positive integers, got {args.threads!r}")
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads must be comma-separated positive integers, got {args.threads}")
    for name in ("n", "repeats", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine (valid here: auto, cpu)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    command = "python benchmarks/augment_throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    load_start = _load()
    all_results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for d in devices:
            all_results[f"{d}, {threads}"] = bench_device(d, args.n, args.repeats, args.batch_size)
    torch.set_num_threads(DEFAULT_THREADS)
    text = section(command.strip(), args, devices, all_results, (load_start, _load()))
    publish(HEADING, text, args.write_docs)


if __name__ == "__main__":
    main()
