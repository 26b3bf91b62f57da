"""Ablation ladders: loading and planning (no Ray), the table's statistics, and a tiny ladder run end to end."""

import csv
import os
import re
import statistics
import subprocess
import sys

import pytest
import yaml

from timm_tricks.ablate import summarize
from timm_tricks.config import ConfigError, load_config
from timm_tricks.ladder import PlannedRung, Rung, list_ladders, load_ladder, plan_ladder, teacher_config


def test_shipped_ladders_plan_on_cpu_and_gpu():
    assert list_ladders() == ["bag_of_tricks", "myrtle_resnet9"]
    bot = load_ladder("bag_of_tricks")
    assert [r.name for r in bot.rungs] == [
        "baseline", "+ linear scaling and warmup", "+ zero gamma", "+ no bias decay", "+ FP16", "+ ResNet-D",
        "+ cosine", "+ label smoothing", "+ distillation", "+ mixup"]
    cpu = {p.rung.name: p for p in plan_ladder(bot, gpu=False)}
    gpu = {p.rung.name: p for p in plan_ladder(bot, gpu=True)}
    assert cpu["+ FP16"].config is None and "GPU" in cpu["+ FP16"].skipped
    assert cpu["+ mixup"].config.train.precision == "no"  # the skipped rung's change is not carried on
    assert gpu["+ FP16"].config.train.precision == "fp16" and gpu["+ mixup"].config.train.precision == "fp16"
    base, top = gpu["baseline"].config, gpu["+ mixup"].config
    # He et al. Sec. 2.1 baseline vs everything of Tables 4-6 at once
    assert (base.model.name, base.data.batch_size, base.scaled_lr(), base.schedule.name) == \
        ("resnet50a_tricks", 256, pytest.approx(0.1), "step")
    assert (top.model.name, top.data.batch_size, top.scaled_lr(), top.schedule.name, top.schedule.warmup_epochs) == \
        ("resnet50d_tricks", 1024, pytest.approx(0.4), "cosine", 5)
    assert (top.model.zero_gamma, top.optim.no_bias_decay, top.loss.label_smoothing, top.mixup.alpha,
            top.distill.teacher, top.distill.temperature, top.train.epochs) == \
        (True, True, 0.1, 0.2, "resnet152d_tricks", 20.0, 200)
    teacher = teacher_config(bot)
    assert (teacher.model.name, teacher.schedule.name, teacher.loss.label_smoothing, teacher.mixup.alpha,
            teacher.distill.teacher) == ("resnet152d_tricks", "cosine", 0.1, 0.0, None)
    myrtle = {p.rung.name: p.config for p in plan_ladder(load_ladder("myrtle_resnet9"))}
    assert myrtle["baseline"].model.kwargs["act"] == "relu" and not myrtle["baseline"].ema.enabled
    final = myrtle["+ flip TTA, no cutout"]
    assert final == load_config("myrtle_resnet9")  # the last rung is the shipped final recipe again


def test_options_that_undo_a_rung_skip_it():
    plan = plan_ladder(load_ladder("bag_of_tricks"), updates={"model": {"name": "resnet18d_tricks"}}, gpu=True)
    skipped = {p.rung.name: p.skipped for p in plan if p.skipped}
    assert list(skipped) == ["+ ResNet-D"] and "override" in skipped["+ ResNet-D"]
    assert all(p.config.model.name == "resnet18d_tricks" for p in plan if p.config is not None)


@pytest.mark.parametrize("text, message", [
    ("recipe: digits\nrungs:\n  - name: a\n    set: {optim.lrr: 0.1}\n", "optim.lr"),
    ("recipe: digits\nrungs:\n  - name: a\n  - name: a\n", "unique"),
    ("recipe: digits\nteacher: {rung: nope}\nrungs:\n  - name: a\n", "'teacher' needs 'rung:'"),
    ("rungs:\n  - name: a\n", "needs a 'recipe:'"),
    ("recipe: digits\nrungs:\n  - name: a\n    sett: {}\n",
     "unknown ladder entry 'rungs[0].sett'; did you mean 'rungs[0].set'?"),
])
def test_bad_ladders_are_rejected_by_name(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_ladder(path)


def test_summary_statistics():
    plan = [PlannedRung(Rung("a"), object()), PlannedRung(Rung("b", needs_gpu=True), None, "needs a GPU"),
            PlannedRung(Rung("c", paper=77.0), object())]
    runs = [{"rung": "a", "eval_top1": 90.0, "seconds": 10.0}, {"rung": "a", "eval_top1": 92.0, "seconds": 12.0},
            {"rung": "c", "eval_top1": 95.0, "seconds": 20.0}, {"rung": "c", "eval_top1": 94.0, "seconds": 22.0},
            {"rung": "c", "eval_top1": None, "seconds": None}]
    a, b, c = summarize(plan, runs, "eval_top1")
    assert (a["mean"], a["std"], a["delta"], a["seconds"]) == (91.0, pytest.approx(2 ** 0.5), None, 11.0)
    assert b["mean"] is None and b["skipped"] == "needs a GPU"
    # the change is against the last rung that ran (a), skipping b
    assert (c["mean"], c["delta"], c["runs"], c["failed"], c["paper"]) == (94.5, 3.5, 2, 1, 77.0)


def _table(text):
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 7 and cells[0] != "rung":
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_bag_of_tricks_ladder_on_tiny_settings(tmp_path):
    storage = tmp_path / "results"
    args = ["ablate", "--ladder", "bag_of_tricks", "--data", "synthetic:256", "--model", "resnet18d_tricks",
            "--teacher-model", "resnet18d_tricks", "--epochs", "1", "--batch-size", "128", "--seeds", "2",
            "--storage", str(storage), "--name", "tiny", "--set", "data.image_size=16",
            "--set", "schedule.warmup_epochs=0", "--set", "train.keep_checkpoints=1", "--set", "augment.train=none"]
    env = dict(os.environ, HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "timm_tricks", *args], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    exp = storage / "tiny"
    runs = list(csv.DictReader(open(exp / "ablation.csv")))
    ran = ["baseline", "+ linear scaling and warmup", "+ zero gamma", "+ no bias decay", "+ cosine",
           "+ label smoothing", "+ distillation", "+ mixup"]
    assert [r["rung"] for r in runs] == [name for name in ran for _ in range(2)]
    assert all(r["status"] == "completed" and r["epochs"] == "1" for r in runs)
    assert (exp / "ablation.md").read_text().startswith("# Ablation of the `bag_of_tricks` ladder (`tiny`)\n")
    table = _table((exp / "ablation.md").read_text())
    assert list(table) == ran[:4] + ["+ FP16", "+ ResNet-D"] + ran[4:]
    assert table["+ FP16"][0] == "skipped: needs a GPU (--gpus-per-trial)"
    previous = None
    for name in ran:  # the table's numbers are the statistics of the runs in ablation.csv
        values = [float(r["eval_top1"]) for r in runs if r["rung"] == name]
        mean = statistics.fmean(values)
        assert table[name][0] == f"{mean:.2f}" and table[name][1] == f"{statistics.stdev(values):.2f}"
        assert table[name][2] == ("" if previous is None else f"{mean - previous:+.2f}")
        assert table[name][4] == "2"
        previous = mean
    assert table["baseline"][5] == "75.87" and table["+ mixup"][5] == "79.29"
    assert (exp / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    # each run trained its rung's recipe with its own seed
    for r in runs:
        cfg = load_config(os.path.join(r["path"], "run", "config.yaml"))
        assert cfg.train.seed in (0, 1) and cfg.model.name == "resnet18d_tricks"
    # the teacher was trained first, and the distilling rung learned from its weights
    (teacher_run,) = (exp / "teacher").glob("trial_fn_*/run")
    assert load_config(teacher_run / "config.yaml").loss.label_smoothing == 0.1
    distill = [r for r in runs if r["rung"] == "+ distillation"][0]
    cfg = yaml.safe_load(open(os.path.join(distill["path"], "run", "config.yaml")))
    assert cfg["distill"]["teacher"] == "resnet18d_tricks"
    assert cfg["distill"]["checkpoint"] == str(teacher_run / "model.safetensors")
    assert (teacher_run / "model.safetensors").is_file()
    # what it printed while it ran: the teacher, then each rung and seed by name
    err = proc.stderr
    assert re.search(r"^\[\d+:\d\d\] bag_of_tricks ablation 'tiny': 8 of 10 rungs x 2 seed\(s\), after its "
                     r"teacher, by eval_top1; in ", err, re.M), err[-3000:]
    assert re.search(r"^\[\d+:\d\d\] the teacher finished: 1 epoch\(s\): eval_top1 [\d.]+$", err, re.M)
    assert re.search(r"^\[\d+:\d\d\] bag_of_tricks ablation 'tiny': 16 trial\(s\) to run$", err, re.M)
    for name in ran:
        for seed in (0, 1):
            assert re.search(rf"^\[\d+:\d\d\] {re.escape(name)} \(seed {seed}\) finished: 1 epoch\(s\): eval_top1 "
                             r"[\d.]+$", err, re.M), (name, seed)
    # every rung is a recipe of its own
    assert load_config(exp / "rungs" / "09_mixup.yaml").mixup.alpha == 0.2
