"""benchmarks/gpu_check.sh in its CPU dry run: the same code as on a GPU at tiny sizes, so `make test` keeps the
GPU check runnable; and its two pure helpers (the peak table, timm train.py's log)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_prints_one_table_with_every_row_and_the_overflow_step_skipped():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--peak-tflops", "0.1"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    # stdout is the table alone (the Trainer's own lines go to stderr): one header line, the rows, the time
    others = [x for x in done.stdout.splitlines() if x and not x.startswith(("|", "gpu_check: "))]
    assert len(others) == 1 and others[0].endswith(" s in all"), others
    checks = [r[0].lstrip("| ") for r in rows[1:]]
    assert checks == ["resnet18d_tricks img/s: Trainer vs timm-functions loop"] * 3 + [
        "resnet9_tricks steps/s: Trainer vs minimal loop", "FP16 overflow step", "timm train.py"]
    assert [r[1].split(", ")[2] for r in rows[1:4]] == ["compile off", "compile off", "compile on"]
    for row in rows[1:5]:  # images/s (steps/s) of both sides, their ratio, the MFU from the FLOP count
        assert float(row[2].replace(",", "")) > 0 and float(row[3].replace(",", "")) > 0 and float(row[4]) > 0
    assert all(r[5].endswith("%") and "/" in r[5] for r in rows[1:4])
    assert rows[5][-1].startswith("ok: skipped, schedule held, epoch loss finite")
    assert "updates [1, 1, 2, 3]" in rows[5][2]  # the second step (made inf) is no update
    assert rows[6][-1].startswith("skipped: no --timm-train")
    print(f"gpu_check --dry-run took {seconds:.0f} s")


def test_the_peak_table_and_timms_log():
    m = _module()  # also imports benchmarks/timm_script.py
    assert m.peak_for_name("NVIDIA H200") == 989.4 and m.peak_for_name("NVIDIA H100 PCIe") == 756.0
    assert m.peak_for_name("NVIDIA H100 80GB HBM3") == 989.4 and m.peak_for_name("NVIDIA A100-SXM4-80GB") == 312.0
    assert m.peak_for_name("NVIDIA H200 NVL") == 835.0 and m.peak_for_name("Some GPU") is None
    log = ("Train: 0 [   4/19 ( 26%)]  Loss: 6.93 (6.93)  Time: 0.085s, 3012.34/s  (0.099s, 2585.86/s)  LR: 1e-1\n"
           "Train: 0 [   8/19 ( 47%)]  Loss: 6.92 (6.93)  Time: 0.084s, 3047.61/s  (0.090s,  844.44/s)  LR: 1e-1\n")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from timm_script import timm_log_rate

    assert timm_log_rate(log) == 844.44 and timm_log_rate("no rates here") is None
