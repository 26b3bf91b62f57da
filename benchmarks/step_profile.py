"""Where a training step's time goes: ``torch.profiler`` over one epoch of the Trainer's step loop and one of a
minimal loop, the same two that gpu_check.py's resnet9 row times (``resnet9_tricks``, batch 512, 32 px, fp16 on a
GPU; :func:`gpu_check.resnet9_sides`). For each side it prints the wall, CPU-operator and device time per step,
then its operators by self CPU time, so that the Trainer's extra host work shows by name.

    python benchmarks/step_profile.py [--dry-run] [--rows 25]

Without CUDA, or with ``--dry-run``, it runs gpu_check's CPU sizes (seconds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import CPU, GPU, resnet9_sides, sync  # noqa: E402  (benchmarks/ is the script's folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="gpu_check's CPU sizes (the default without CUDA)")
    parser.add_argument("--rows", type=int, default=25, help="operators listed per side")
    args = parser.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    device, s = (torch.device("cpu"), CPU) if dry else (torch.device("cuda"), GPU)
    activities = [ProfilerActivity.CPU] + ([] if dry else [ProfilerActivity.CUDA])
    with tempfile.TemporaryDirectory() as tmp:
        sides = resnet9_sides(s, device, Path(tmp))
        for run in sides.values():  # warm-up: cuDNN's choices, the allocator, the first scaler steps
            run()
        for name, run in sides.items():
            sync(device)
            with profile(activities=activities) as prof:
                t0 = time.perf_counter()
                run()
                sync(device)
                wall = time.perf_counter() - t0
            events = prof.key_averages()
            cpu = sum(e.self_cpu_time_total for e in events) / 1e3
            dev = sum(e.self_device_time_total for e in events if e.device_type != DeviceType.CPU) / 1e3  # kernels
            print(f"## {name}: {s.r9_steps} steps; per step {1e3 * wall / s.r9_steps:.2f} ms wall (profiled), "
                  f"{cpu / s.r9_steps:.2f} ms CPU in operators, {dev / s.r9_steps:.2f} ms on the device; "
                  f"{sum(e.count for e in events if e.key.startswith('cuda') and 'Synchronize' in e.key)} "
                  "synchronising CUDA calls")
            print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
