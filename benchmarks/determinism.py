"""What ``train.deterministic`` buys and costs on a GPU.

1. Bytes: the ``digits`` recipe (resnet18d_tricks, 32 px, batch 128, 2 epochs, mixup and EMA on) trained twice
   with the switch off and twice with it on, each run in a fresh process (cuBLAS reads its workspace setting when it
   starts); the SHA-256 of each run's ``model.safetensors``, and whether the two runs of a setting agree.
2. Speed: ``resnet50d_tricks`` training images/s (bf16, channels_last, batch 256, 224 px, gpu_check.py's settings)
   with the switch off and on, a fresh process per measurement, the two sides alternating, medians reported.

    python benchmarks/determinism.py [--dry-run] [--rounds 2]

Without CUDA, or with ``--dry-run``, the same runs at tiny sizes on the CPU, where every kernel used is
deterministic already (both settings should agree).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BYTES_SETS = ["model.name=resnet18d_tricks", "data.batch_size=128", "train.epochs=2", "mixup.alpha=0.2",
              "ema.enabled=true", "train.log_with=[none]"]


def child(args: list[str]) -> None:
    """One measurement in this fresh process: ``bytes OUT on|off DRY`` or ``speed on|off DRY``."""
    import torch

    sys.path.insert(0, str(HERE))
    from gpu_check import CPU, GPU, alternate, trainer_epoch, trainer_sets

    from timm_tricks.config import load_config
    from timm_tricks.train import Trainer

    mode, switch, dry = args[0], args[-2], args[-1] == "dry"
    flag = f"train.deterministic={'true' if switch == 'on' else 'false'}"
    if mode == "bytes":
        out = Path(args[1])
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer's lines stream; stdout is the result alone
            Trainer(load_config("digits", [*BYTES_SETS, f"data.image_size={16 if dry else 32}", flag]), out).fit()
        print("sha256", hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
        return
    s = CPU if dry else GPU
    precision = "no" if dry else "bf16"
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        trainer = Trainer(load_config(None, [*trainer_sets(s.model, s.image, s.batch, s.steps, precision, False),
                                             flag]), Path(tmp) / "run")
        rate = alternate({"trainer": trainer_epoch(trainer)}, 3 if not dry else 1)["trainer"]
    print("img/s", rate, "deterministic", torch.are_deterministic_algorithms_enabled())


def measure(args: list[str]) -> str:
    """Run :func:`child` in a new process; its last line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:  # its traceback went to stderr, above
        raise SystemExit(f"determinism: {' '.join(args)} failed")
    print(f"  {' '.join(args[:1] + args[-2:])}: {done.stdout.strip().splitlines()[-1]}", file=sys.stderr, flush=True)
    return done.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (the default without CUDA)")
    parser.add_argument("--rounds", type=int, default=2, help="speed measurements per side")
    args = parser.parse_args(argv)
    import torch

    dry = "dry" if args.dry_run or not torch.cuda.is_available() else "gpu"
    where = "CPU dry run" if dry == "dry" else torch.cuda.get_device_name()
    print(f"determinism: {where}; torch {torch.__version__}\n")
    print("| train.deterministic | run 1 model.safetensors | run 2 | same bytes |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for switch in ("off", "on"):
            shas = [measure(["bytes", str(Path(tmp) / f"{switch}{i}"), switch, dry]).split()[1] for i in (1, 2)]
            print(f"| {switch} | {shas[0][:16]} | {shas[1][:16]} | {'yes' if shas[0] == shas[1] else 'no'} |")
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for switch in ("off", "on") if r % 2 == 0 else ("on", "off"):
            rates[switch].append(float(measure(["speed", switch, dry]).split()[1]))
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"\n| train.deterministic | img/s (median of {args.rounds}) | each |\n|---|---:|---|")
    for switch, rate in (("off", off), ("on", on)):
        print(f"| {switch} | {rate:,.0f} | {', '.join(f'{v:,.0f}' for v in rates[switch])} |")
    print(f"\non / off = {on / off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
