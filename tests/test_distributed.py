"""Two CPU processes (accelerate launch --cpu --num_processes 2, gloo): training, exact evaluation counts, the
same initial weights, per-process augmentation, and SyncBN equivalence with one process at twice the batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
TINY = ["model.name=resnet18d_tricks", "data.image_size=16", "train.epochs=1", "data.workers=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, processes: int, overrides: list[str]) -> list[dict]:
    # accelerate 1.x's --cpu launcher starts one process without an MPI host file; --multi_gpu starts them
    # through torchrun, and the trainer trains on the CPUs over gloo when there is no CUDA.
    mode = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(HERE / "dist_check.py"), str(out), *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


@pytest.mark.slow
def test_two_processes_train_with_exact_eval_counts(tmp_path):
    ranks = _launch(tmp_path, 2, TINY + ["data.batch_size=128", "augment.train=batched", "augment.cutout=4"])
    assert [r["world"] for r in ranks] == [2, 2] and [r["per_device_batch"] for r in ranks] == [64, 64]
    assert ranks[0]["initial_weights"] == ranks[1]["initial_weights"]
    assert ranks[0]["first_batch_images"] != ranks[1]["first_batch_images"]  # each process its own shard and draws
    assert ranks[0]["first_batch_labels"] != ranks[1]["first_batch_labels"]
    for r in ranks:
        assert r["metrics"]["eval_count"] == 359  # odd: one process evaluates 180 images, the other 179
    drop = {"seconds"}
    assert {k: v for k, v in ranks[0]["metrics"].items() if k not in drop} == {
        k: v for k, v in ranks[1]["metrics"].items() if k not in drop}
    assert ranks[0]["final_weights"] == ranks[1]["final_weights"]
    assert (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_sync_bn_two_processes_match_one_process_at_twice_the_batch(tmp_path):
    common = TINY + ["data.source=synthetic:256", "data.batch_size=64", "augment.train=none", "train.sync_bn=true",
                     "loss.label_smoothing=0", "optim.lr=0.05", "schedule.warmup_epochs=0", "schedule.name=constant"]
    two = _launch(tmp_path / "two", 2, common)
    one = _launch(tmp_path / "one", 1, common)
    assert two[0]["sync_bn"] and not one[0]["sync_bn"]
    assert two[0]["lr"] == one[0]["lr"]
    # the two shards of batch i together are exactly the single process's batch i
    assert sorted(two[0]["first_batch_labels"] + two[1]["first_batch_labels"]) == sorted(one[0]["first_batch_labels"])
    two_weights, one_weights = (torch.load(tmp_path / run / "rank0_weights.pt") for run in ("two", "one"))
    assert two_weights.keys() == one_weights.keys()
    diffs = [(two_weights[k] - v).abs().max().item() for k, v in one_weights.items()]
    assert max(diffs) < 1e-5, max(diffs)


@pytest.mark.slow
def test_cli_under_accelerate_launch_with_the_2cpu_config(tmp_path):
    root = HERE.parent
    overrides = TINY + ["data.batch_size_per_device=64"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "launch/accelerate/2cpu.yaml"), "--main_process_port", str(_free_port()),
           "-m", "timm_tricks", "train", "--recipe", "digits", "--output", str(tmp_path / "run"),
           *[a for o in overrides for a in ("--set", o)]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("epoch   0") == 1  # one log line: only the main process prints
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_count"] == 359
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*"))
    assert steps == ["ckpt-000000011"]  # 1438 // (64 x 2 processes) = 11 steps (one process would take 22)
