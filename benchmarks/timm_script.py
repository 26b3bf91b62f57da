"""Running timm's own ``train.py`` as a reference side (benchmarks/train_vs_timm.py, benchmarks/gpu_check.py).

The script lives in timm's repository (``pytorch-image-models/train.py``); the pip package does not ship it, and
this project does not copy it: the caller passes its path (``--timm-train PATH``). It runs as a subprocess; what
the two benchmarks read back is its log (the running images/s it prints every ``--log-interval`` steps) and the
``summary.csv`` it writes into ``--output``/``--experiment`` (one row per epoch, ``eval_top1`` among them).
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def timm_log_rate(log: str) -> float | None:
    """The last running-average images/s of timm train.py's log lines (``Time: 0.085s, 3012.34/s  (0.090s,
    2844.44/s)``: the figure in brackets), or None."""
    rates = re.findall(r"\(\s*[\d.]+s,\s*([\d.]+)/s\s*\)", log)
    return float(rates[-1]) if rates else None


def supported_flags(script: Path) -> set[str]:
    """The ``--flags`` timm's train.py at ``script`` lists in its ``--help`` (they differ between timm versions)."""
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", done.stdout))


def write_random_jpegs(root: Path, train: int, val: int, size: int, classes: int = 10) -> Path:
    """An image folder ``root/{train,val}/cK/*.jpg`` of random ``size`` squares (quality 90): speed tests only."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            (root / split / f"c{i % classes}").mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / split / f"c{i % classes}" / f"{i}.jpg", quality=90)
    return root


def run_timm_train(script: Path, data: Path, out: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """timm's train.py on the image folder ``data`` (``train/`` and ``val/``) with ``args``, its outputs in
    ``out/timm``: wall time, the exit status, the last logged images/s, the final ``eval_top1`` and the log's tail."""
    cmd = [sys.executable, str(script), str(data), "--output", str(out), "--experiment", "timm", *args]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "wall_s": time.perf_counter() - t0, "rate": None, "top1": None,
                "tail": f"stopped after {timeout:.0f} s", "command": cmd}
    wall = time.perf_counter() - t0
    log = done.stdout + done.stderr
    top1 = None
    summary = out / "timm" / "summary.csv"
    if summary.is_file():
        with open(summary, newline="") as f:
            rows = list(csv.DictReader(f))
        top1 = float(rows[-1]["eval_top1"]) if rows and rows[-1].get("eval_top1") else None
    return {"returncode": done.returncode, "wall_s": wall, "rate": timm_log_rate(log), "top1": top1,
            "tail": (log.strip().splitlines() or [""])[-1][:200], "command": cmd}
