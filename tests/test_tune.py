"""Ray Tune searches on the CPU (embedded Ray, 2 CPUs, tiny trials)."""

import csv
import os
import subprocess
import sys

import pytest
import yaml

from timm_tricks.config import load_config

TINY = ["model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=128", "train.keep_checkpoints=1"]


def _tune(args, tmp_path, check=True):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HOME=str(tmp_path))  # keep Ray's files out of the real home
    proc = subprocess.run([sys.executable, "-m", "timm_tricks", "tune", *args], capture_output=True, text=True,
                          env=env, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_search_writes_report_and_a_trainable_best_recipe(tmp_path):
    storage = tmp_path / "results"
    proc = _tune(["--space", "digits", "--num-samples", "3", "--epochs", "3", "--storage", str(storage),
                  "--name", "s1", *[a for o in TINY for a in ("--set", o)]], tmp_path)
    exp = storage / "s1"
    rows = list(csv.DictReader(open(exp / "trials.csv")))
    assert len(rows) == 3 and all(r["status"] == "TERMINATED" for r in rows)
    scores = [float(r["best_eval_top1"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert "| optim.lr |" in proc.stdout and (exp / "report.md").is_file()
    best = load_config(exp / "best_recipe.yaml")
    assert best.optim.lr == pytest.approx(float(rows[0]["optim.lr"]))
    assert best.model.name == "resnet18d_tricks" and best.data.image_size == 16
    assert (exp / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (exp / "metric_vs_optim_lr.png").is_file()
    # the same name again is refused; the first search is untouched
    again = _tune(["--space", "digits", "--storage", str(storage), "--name", "s1"], tmp_path, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert yaml.safe_load((exp / "best_recipe.yaml").read_text())["name"] == "s1_best"


def test_space_values_that_do_not_fit_the_recipe_are_rejected(tmp_path):
    # digits' space draws up to 3 warmup epochs: a 2-epoch budget cannot hold them
    proc = _tune(["--space", "digits", "--epochs", "2", "--storage", str(tmp_path / "r")], tmp_path, check=False)
    assert proc.returncode == 2 and "schedule.warmup_epochs=3 does not fit recipe 'digits'" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_bad_space_is_rejected_before_ray_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: digits\nspace:\n  optim.lr: {uniform: [0.0, 1.0]}\n")
    proc = _tune(["--space", str(bad), "--storage", str(tmp_path / "r")], tmp_path, check=False)
    assert proc.returncode == 2 and "optim.lr=0.0 is out of range" in proc.stderr
    assert not (tmp_path / "r").exists()
