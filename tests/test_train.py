"""The trainer on the CPU: outputs, exact resume after SIGKILL, protection of existing runs, non-finite stop."""

import csv
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

import timm_tricks  # noqa: F401
from timm_tricks.config import load_config
from timm_tricks.evaluate import topk_counts
from timm_tricks.seeding import step_seed
from timm_tricks.train import Trainer

FAST = ["model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=128", "train.epochs=2"]


def _run(args, env_extra=None, check=True):
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-m", "timm_tricks", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


KILL_AT_STEP = """
import os, signal, sys
from timm_tricks.config import load_config
from timm_tricks.train import Trainer

def kill(state):
    if state.global_step == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)

Trainer(load_config("digits", sys.argv[3:]), sys.argv[2], step_callback=kill).fit()
"""


def _kill_at_step(step, out, overrides):
    """Train ``digits`` with ``overrides`` into ``out`` in a process that SIGKILLs itself after optimizer step
    ``step`` (the Trainer's ``step_callback``)."""
    return subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(step), str(out), *overrides],
                          capture_output=True, text=True)


def _set(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_step_seed_is_stable_and_distinct():
    assert step_seed(0, 1, 2) == step_seed(0, 1, 2)
    assert len({step_seed(0, e, s) for e in range(5) for s in range(50)}) == 250


def test_topk_counts_formula():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, 4.0, -1.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    labels = torch.tensor([1, 5])
    loss, top1, top5, n = topk_counts(logits, labels).tolist()
    assert (top1, top5, n) == (0.0, 1.0, 2.0)  # 1 is the 3rd best of row 0; 5 is last of row 1
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item())


def test_fit_writes_the_run_and_weights_load_in_timm(tmp_path):
    out = tmp_path / "run"
    epochs_seen = []
    cfg = load_config("digits", FAST)
    metrics = Trainer(cfg, out, callback=lambda e, m, c: epochs_seen.append((e, c.name))).fit()
    assert epochs_seen == [(0, "ckpt-000000011"), (1, "ckpt-000000022")]  # 1438 // 128 = 11 steps an epoch
    assert metrics["eval_count"] == 359 and 0 <= metrics["eval_top1"] <= 100
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert set(rows[0]) == {"epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "seconds"}
    assert load_config(out / "config.yaml") == cfg
    weights = out / "model.safetensors"
    # timm drops a classifier whose size differs from the pretrained_cfg (1000), so the overlay names it
    for kwargs in (dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights), num_classes=10)),
                   dict(checkpoint_path=str(weights))):
        model = timm.create_model("resnet18d_tricks", num_classes=10, **kwargs)
        state = load_file(str(weights))
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))


def test_a_checkpoint_resumes_in_a_new_folder_with_its_history_and_a_finished_run_is_left_alone(tmp_path):
    import shutil

    out = tmp_path / "run"
    cfg = load_config("digits", FAST)
    Trainer(cfg, out).fit()
    before = (out / "metrics.json").read_bytes(), (out / "model.safetensors").stat().st_mtime_ns
    # resuming a finished run (a restored search's finished trial) trains nothing and rewrites nothing
    assert Trainer(cfg, out, resume=True).fit() == json.loads(before[0])
    assert ((out / "metrics.json").read_bytes(), (out / "model.safetensors").stat().st_mtime_ns) == before
    # the epoch-0 checkpoint alone, in a fresh folder (a restored Ray trial's new staging folder), continues the run
    moved = tmp_path / "moved"
    shutil.copytree(out / "checkpoints" / "ckpt-000000011", moved / "checkpoints" / "ckpt-000000011")
    Trainer(cfg, moved, resume=True).fit()
    original = list(csv.reader(open(out / "summary.csv")))
    resumed = list(csv.reader(open(moved / "summary.csv")))
    assert resumed[:2] == original[:2]  # the header and epoch 0 come from the checkpoint, not retrained
    assert [r[0] for r in resumed[1:]] == ["0", "1"]
    assert resumed[2][:-1] == original[2][:-1]  # epoch 1 retrained exactly (all but its wall time)
    assert (moved / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_existing_run_is_not_touched(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("precious: true\n")
    proc = _run(["train", "--recipe", "digits", "--output", str(out), *_set(FAST)], check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "config.yaml").read_text() == "precious: true\n"


@pytest.mark.slow
def test_sigkill_mid_epoch_and_resume_is_bit_identical(tmp_path):
    # 11 steps an epoch; checkpoints every 3 steps; killed after step 17 (inside epoch 2), the newest
    # checkpoint is step 15 and steps 16-17 are trained again. Where CUDA is, this runs on the GPU, where
    # train.deterministic is what makes it hold (without it an H200 gave other bytes)
    sets = FAST + ["train.checkpoint_every_steps=3", "mixup.alpha=0.2", "ema.enabled=true",
                   "train.keep_checkpoints=2", "train.deterministic=true"]
    args = ["train", "--recipe", "digits", *_set(sets)]
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run([*args, "--output", str(full)])
    proc = _kill_at_step(17, killed, sets)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (killed / "model.safetensors").exists()
    ckpts = sorted(p.name for p in (killed / "checkpoints").glob("ckpt-*"))
    assert ckpts[-1] == "ckpt-000000015"
    at_15 = load_file(str(killed / "checkpoints" / "ckpt-000000015" / "model.safetensors"))
    proc = _run([*args, "--output", str(killed), "--resume"])
    assert "resumed from" in proc.stdout and "ckpt-000000015" in proc.stdout and "deterministic" not in proc.stdout
    assert (full / "model.safetensors").read_bytes() == (killed / "model.safetensors").read_bytes()
    assert (full / "model_ema.safetensors").read_bytes() == (killed / "model_ema.safetensors").read_bytes()
    # the resumed run really continued from a checkpoint: the one at step 15 differs from the final weights
    final = load_file(str(killed / "model.safetensors"))
    assert any(not torch.equal(at_15[k], final[k]) for k in final)
    same = [r[:5] for r in csv.reader(open(full / "summary.csv"))]
    assert same == [r[:5] for r in csv.reader(open(killed / "summary.csv"))]


DETERMINISM_FLAGS = """
import os, sys, torch
from timm_tricks.config import load_config
from timm_tricks.train import Trainer

for name, sets in (("off", []), ("on", ["train.deterministic=true"])):
    Trainer(load_config("digits", sys.argv[2:] + sets), sys.argv[1] + "/" + name)
    print((torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
           os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
"""


def test_train_deterministic_switches_torch_to_deterministic_kernels(tmp_path):
    # in a fresh process (the switches are torch's globals): off leaves torch's defaults, on sets what PyTorch's
    # reproducibility notes name, with ops that have no deterministic CUDA kernel warning rather than failing
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run([sys.executable, "-c", DETERMINISM_FLAGS, str(tmp_path), *FAST], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    off, on = [line for line in done.stdout.splitlines() if line.startswith("(")]
    assert off == "(False, False, False, False, None)"
    assert on == "(True, True, True, False, ':4096:8')"


def test_a_resume_says_when_the_device_makes_it_inexact(tmp_path):
    # on a CPU every kernel is deterministic: no word; on a GPU without train.deterministic, one clause says so
    out = tmp_path / "run"
    _run(["train", "--recipe", "digits", "--output", str(out), *_set(FAST[:-1] + ["train.epochs=1"])])
    proc = _run(["train", "--recipe", "digits", "--output", str(out), "--resume", *_set(FAST)])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("resumed from"))
    note = "; on cuda the continuation matches an uninterrupted run only with train.deterministic=true"
    assert line.endswith(note) == torch.cuda.is_available(), line


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = _run(["train", "--recipe", "digits", "--output", str(out),
                 *_set(FAST + ["optim.lr=1e30", "schedule.warmup_epochs=0", "train.checkpoint_every_steps=1",
                               "loss.label_smoothing=0"])], check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "non-finite loss at epoch 0 step" in proc.stderr and "last good checkpoint" in proc.stderr
    assert list((out / "checkpoints").glob("ckpt-*"))
    assert not (out / "model.safetensors").exists()


def test_eval_command_matches_training_metrics(tmp_path):
    out = tmp_path / "run"
    metrics = Trainer(load_config("digits", FAST[:-1] + ["train.epochs=1"]), out).fit()
    proc = _run(["eval", "--checkpoint", str(out), "--out", str(tmp_path / "m.json")])
    ev = json.loads(proc.stdout)
    assert ev["eval_count"] == 359 and ev["eval_top1"] == pytest.approx(metrics["eval_top1"])
    assert json.loads((tmp_path / "m.json").read_text()) == ev
    tta = _run(["eval", "--checkpoint", str(out / "model.safetensors"), "--tta"])
    assert json.loads((out / "eval.json").read_text())["eval_count"] == 359
    # digits trains without flips (augment.flip: false): the mirror TTA says so in one line
    assert [line for line in tta.stderr.splitlines() if "warning" in line] == [
        f"timm-tricks: warning: --tta averages each image with its mirror, but {str(out)!r} trained without flips "
        "(augment.flip: false, e.g. digits or text, whose mirror is another class); the TTA score may be lower"]
    assert "warning" not in proc.stderr  # no --tta, no warning
    bad = _run(["eval", "--checkpoint", str(tmp_path)], check=False)
    assert bad.returncode == 2 and "not a finished run" in bad.stderr


def test_user_errors_in_train_exit_2(tmp_path):
    for extra, message in [(["--data", "imagenet"], "unknown data source 'imagenet'"),
                           (["--model", "resnet50e_tricks"], "unknown model.name"),
                           (["--data", f"folder:{tmp_path}/none"], "has no train/ folder"),
                           (["--set", "distill.teacher=resnet18d_tricks"], "needs distill.checkpoint")]:
        proc = _run(["train", "--recipe", "digits", "--output", str(tmp_path / "o"), *extra], check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "o" / "config.yaml").exists()


def test_distillation_from_a_trained_teacher(tmp_path):
    teacher_run = tmp_path / "teacher"
    Trainer(load_config("digits", FAST[:-1] + ["train.epochs=1"]), teacher_run).fit()
    cfg = load_config("digits", FAST[:-1] + ["train.epochs=1", "distill.teacher=resnet18d_tricks",
                                             f"distill.checkpoint={teacher_run / 'model.safetensors'}",
                                             "distill.temperature=4", "mixup.alpha=0.2"])
    trainer = Trainer(cfg, tmp_path / "student")
    assert trainer.criterion.__class__.__name__ == "DistillationLoss" and trainer.criterion.temperature == 4
    assert not trainer.teacher.training and not any(p.requires_grad for p in trainer.teacher.parameters())
    teacher_weights = load_file(str(teacher_run / "model.safetensors"))
    assert all(torch.equal(v, teacher_weights[k]) for k, v in trainer.teacher.state_dict().items())
    metrics = trainer.fit()
    assert metrics["eval_count"] == 359 and torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_bf16_autocast_on_cpu(tmp_path):
    # a process of its own: accelerate fixes the precision of its process-wide state at the first Accelerator
    _run(["train", "--recipe", "digits", "--output", str(tmp_path / "run"),
          *_set(FAST[:-1] + ["train.epochs=1", "train.precision=bf16"])])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_count"] == 359 and torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_grad_accumulation_splits_the_global_batch(tmp_path):
    cfg = load_config("digits", FAST[:-1] + ["train.epochs=1", "train.grad_accum_steps=2", "train.clip_grad=1.0",
                                             "train.channels_last=true"])
    trainer = Trainer(cfg, tmp_path)
    assert trainer.per_device_batch == 64 and trainer.steps_per_epoch == 11  # 1438 // 64 = 22 micro-batches
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.1 * 128 / 64)  # scaled on 128
    trainer.fit()
    assert trainer.state.num_updates == 11


def test_skipped_optimizer_steps_do_not_advance_the_schedule(tmp_path, monkeypatch):
    # FP16 loss scaling skips the steps whose gradients overflow; the schedule must count only real updates.
    from accelerate import Accelerator

    cfg = load_config("digits", FAST[:-1] + ["train.epochs=1", "schedule.warmup_epochs=1"])
    trainer = Trainer(cfg, tmp_path)
    assert trainer.may_skip_steps is False  # no GradScaler on a CPU: the flag is not even read
    trainer.may_skip_steps = True  # as under FP16 on a GPU
    calls = {"n": 0}

    def skipped(self):
        calls["n"] += 1
        return calls["n"] <= 3  # the first three steps are skipped

    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(skipped))
    trainer._train_epoch(0)
    assert trainer.state.global_step == 11 and trainer.state.num_updates == 8
    expected = trainer.schedule.factor(8) * cfg.scaled_lr()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_lr_schedule_prints_the_lr_the_trainer_uses_at_every_step(tmp_path, capsys):
    # digits: 1438 training images in batches of 64 give 22 full steps an epoch (the trainer drops the ragged tail)
    from timm_tricks.cli import main

    overrides = ["model.name=resnet18d_tricks", "data.image_size=16", "train.epochs=2", "schedule.warmup_epochs=1"]
    table = tmp_path / "lr.csv"
    assert main(["lr-schedule", "--recipe", "digits", "--csv", str(table), *_set(overrides)]) == 0
    printed = [float(r[2]) for r in csv.reader(table.read_text().splitlines()[1:])]
    used = []
    trainer = Trainer(load_config("digits", overrides), tmp_path / "run",
                      step_callback=lambda state: used.append(trainer.optimizer.param_groups[0]["lr"]))
    used.insert(0, trainer.optimizer.param_groups[0]["lr"])  # step 0's lr, set before the first step
    trainer.fit()
    assert trainer.steps_per_epoch == 22 and len(printed) == 44
    assert used[:-1] == pytest.approx(printed, rel=1e-9, abs=0)  # printed to 10 significant digits


def test_an_own_accelerator_that_accumulates_otherwise_is_refused_in_one_line(tmp_path):
    # It would have trained on half the images with half the updates: the Trainer counts steps by the config.
    from accelerate import Accelerator

    from timm_tricks.errors import ConfigError

    cfg = load_config("digits", ["train.grad_accum_steps=2"])
    with pytest.raises(ConfigError) as e:
        Trainer(cfg, tmp_path / "run", accelerator=Accelerator(gradient_accumulation_steps=1))
    assert str(e.value).startswith("the given Accelerator does not match the config: train.grad_accum_steps=2 but "
                                   "the Accelerator has 1;")
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()
