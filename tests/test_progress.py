"""Progress that reaches any log (issue 14 items 1, 3, 4, 6) and a step with no host sync (issue 15 item 2): the
start, step and epoch lines, the trackers of train.log_with, precision a CPU cannot train in, the device-side
non-finite watch, seeded mixup and the global generators a step seeds."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import timm_tricks  # noqa: F401
from timm_tricks.build import check_precision, trackers
from timm_tricks.choices import TRACKERS
from timm_tricks.cli import main
from timm_tricks.config import ConfigError, load_config
from timm_tricks.errors import TrainingError
from timm_tricks.mixup import create_mixup
from timm_tricks.progress import NO_STEP, NonFiniteWatch, Progress, duration, epoch_line
from timm_tricks.run_folder import TRACKER_FOLDERS, RunFolder
from timm_tricks.seeding import global_generators, seed_global_torch
from timm_tricks.train import Trainer

FAST = ["model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=128", "train.epochs=1"]
STEP = re.compile(r"^epoch (\d+) step (\d+)/(\d+)  ([\d.]+) img/s  loss ([\d.]+)  lr ([\d.e-]+)  epoch eta \S+$")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_start_step_and_epoch_lines_of_a_run(tmp_path, capsys, monkeypatch):
    # 1438 // 128 = 11 steps; a line every 4 steps and at the epoch's last step; the clock never asks for one
    from accelerate import Accelerator

    cfg = load_config("digits", FAST + ["train.log_every_steps=4", "train.log_every_seconds=1e9", "ema.enabled=true"])
    trainer = Trainer(cfg, tmp_path / "run")
    reads, real_read = [], trainer._read
    monkeypatch.setattr(trainer, "_read", lambda *a, **k: reads.append(trainer.state.global_step) or real_read(*a, **k))
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped",
                        property(lambda self: pytest.fail("read without a GradScaler")))
    metrics = trainer.fit()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"train: digits into {str(tmp_path / 'run')!r}: reading data digits, building model " \
                       "resnet18d_tricks"
    assert lines[1] == ("train: model resnet18d_tricks (11.20M parameters); data digits: 1438 train / 359 val images, "
                        "10 classes; 1 process on cpu; precision no; global batch 128 (128 per process); peak lr 0.2 "
                        "(optim.lr 0.1 x 128 / 64)")
    steps = [STEP.match(line) for line in lines[2:5]]
    assert all(steps), lines[2:5]
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in steps] == [(0, 4, 11), (0, 8, 11), (0, 11, 11)]
    # each line's loss is the mean over its own steps: together they give the epoch's training loss
    losses = [float(m[5]) for m in steps]
    assert (4 * losses[0] + 4 * losses[1] + 3 * losses[2]) / 11 == pytest.approx(metrics["train_loss"], abs=2e-4)
    # the lr of the last step taken, as the schedule gives it (warmup over the one epoch: 0.2 x 4 / 11 at step 4)
    assert [float(m[6]) for m in steps] == pytest.approx([0.2 * 4 / 11, 0.2 * 8 / 11, 0.2], rel=1e-4)
    assert [float(m[6]) for m in steps] == pytest.approx([trainer.schedule.factor(s - 1) * 0.2 for s in (4, 8, 11)],
                                                         rel=1e-4)
    assert lines[5].startswith("epoch   0  train_loss ") and lines[5].endswith("eta 0s")
    assert f" ema_top1 {metrics['ema_eval_top1']:.2f}  lr " in lines[5]  # issue 14 item 4: the EMA's top-1
    assert reads == [4, 8, 11, 11]  # the host reads the device: at the lines, and once at the epoch's end
    assert trainer.may_skip_steps is False


def test_an_fp16_skipped_step_is_left_out_of_the_losses_and_the_schedule(tmp_path, capsys, monkeypatch):
    # a GradScaler skips the steps whose loss overflowed: steps 2 and 7 here, their loss inf. The epoch's
    # train_loss and each line's loss are the means over the 9 steps taken, the schedule moves 9 times, the
    # non-finite watch (which looks at the steps taken) does not stop the run
    from accelerate import Accelerator

    skip = {2, 7}
    cfg = load_config("digits", FAST + ["train.log_every_steps=4", "train.log_every_seconds=1e9"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.may_skip_steps = True
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped",
                        property(lambda self: trainer.state.global_step in skip))
    criterion, taken = trainer.criterion, {}

    def overflowing(logits, targets):
        loss = criterion(logits, targets)
        if trainer.state.global_step in skip:
            return loss + float("inf")  # the value overflows; the gradient is the clean loss's
        taken[trainer.state.global_step] = loss.item()
        return loss

    trainer.criterion = overflowing
    metrics = trainer.fit()
    assert sorted(taken) == [s for s in range(11) if s not in skip]
    assert trainer.state.num_updates == 9 and trainer.state.global_step == 11
    assert metrics["train_loss"] == pytest.approx(sum(taken.values()) / 9, rel=1e-6)
    lines = [STEP.match(line) for line in capsys.readouterr().out.splitlines()[2:5]]
    by_line = [[taken[s] for s in range(a, b) if s in taken] for a, b in ((0, 4), (4, 8), (8, 11))]
    assert [float(m[5]) for m in lines] == pytest.approx([sum(v) / len(v) for v in by_line], abs=1e-4)
    # the lr of the last step taken: the schedule stood still at the skipped steps (warmup, 9 updates by step 11)
    assert float(lines[2][6]) == pytest.approx(0.2 * 9 / 11, rel=1e-4)


def test_a_non_finite_loss_is_found_at_the_next_read_and_named_by_its_step(tmp_path, monkeypatch):
    # the loss of step 6 is NaN; the watch is read at step 8 (a line) and the run stops naming step 6; the
    # checkpoint of step 5 is the last, none is written after the bad step
    cfg = load_config("digits", FAST + ["train.log_every_steps=4", "train.log_every_seconds=1e9",
                                        "train.checkpoint_every_steps=5"])
    trainer = Trainer(cfg, tmp_path / "run")
    criterion, seen = trainer.criterion, []

    def poisoned(logits, targets):
        seen.append(trainer.state.global_step)
        loss = criterion(logits, targets)
        return loss * float("nan") if trainer.state.global_step == 6 else loss

    trainer.criterion = poisoned
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    assert str(e.value) == (f"non-finite loss at epoch 0 step 6 (global step 6); stopping; the last good checkpoint is "
                            f"{str(tmp_path / 'run' / 'checkpoints' / 'ckpt-000000005')!r}")
    assert seen == list(range(8))  # steps 6 and 7 ran before the read at step 8
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*")) == ["ckpt-000000005"]


def test_a_line_due_by_time_alone_reads_but_only_a_read_of_every_process_stops(tmp_path, monkeypatch):
    # a line at every step by time (the main process's alone: in a multi-process run the others would not stop
    # with it and would wait in their next all-reduce); step 6's NaN stops the run at step 10's checkpoint, which
    # every process makes, naming step 6; no checkpoint is written after the bad step
    cfg = load_config("digits", FAST + ["train.log_every_steps=100", "train.log_every_seconds=1e-9",
                                        "train.checkpoint_every_steps=5"])
    trainer = Trainer(cfg, tmp_path / "run")
    criterion, seen = trainer.criterion, []

    def poisoned(logits, targets):
        seen.append(trainer.state.global_step)
        loss = criterion(logits, targets)
        return loss * float("nan") if trainer.state.global_step == 6 else loss

    trainer.criterion = poisoned
    with pytest.raises(TrainingError, match=r"^non-finite loss at epoch 0 step 6 \(global step 6\); stopping; the "
                                            r"last good checkpoint is .*ckpt-000000005'$"):
        trainer.fit()
    assert seen == list(range(10))  # the lines of steps 7, 8 and 9 read the NaN and went on
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*")) == ["ckpt-000000005"]


def test_the_watch_keeps_the_first_non_finite_step():
    watch = NonFiniteWatch(torch.device("cpu"))
    for step, value in enumerate([1.0, 2.0, 0.5, float("nan"), 3.0, float("inf"), float("-inf")]):
        watch.record(torch.tensor(value), step)
        assert watch.first.item() == (NO_STEP if step < 3 else 3)
    assert float(NO_STEP) == NO_STEP  # read as a float64 with the loss sum, it stays exact


def test_lines_come_before_the_interval_passes_by_the_length_of_the_last_step():
    clock = Clock()
    progress = Progress(main=True, every_steps=1000, every_seconds=30.0, images_per_step=64, clock=clock)
    progress.start_epoch(0, (0, 100), 0, (0.0, 0))
    printed = []
    for step in range(1, 40):
        clock.now += 7.0  # each step takes 7 s: a line is due once 1.5 x 7 s more would pass 30 s
        if progress.due(step, step):
            progress.step_line(0, step, step, (2.0 * step, step), 0.1)
            printed.append(clock.now)
    assert printed[:3] == [21.0, 42.0, 63.0]
    assert max(b - a for a, b in zip([0.0] + printed, printed, strict=False)) <= 30.0
    quiet = Progress(main=False, every_steps=5, every_seconds=1e-9, images_per_step=64, clock=clock)
    quiet.start_epoch(0, (0, 12), 0, (0.0, 0))
    # another process: due by steps (the reads every process makes alike) and at the epoch's end, never by time
    assert [s for s in range(1, 13) if quiet.due(s, s)] == [5, 10, 12]


def test_step_line_rate_loss_and_epoch_eta(capsys):
    clock = Clock()
    progress = Progress(main=True, every_steps=10, every_seconds=30.0, images_per_step=256, clock=clock)
    progress.start_epoch(3, (0, 50), 150, (0.0, 0))
    clock.now = 8.0
    progress.step_line(3, 10, 160, (25.0, 20), 0.05)  # 10 steps x 256 images in 8 s; 20 micro-batches, sum 25
    assert capsys.readouterr().out == "epoch 3 step 10/50  320.0 img/s  loss 1.2500  lr 0.05  epoch eta 32s\n"
    m = {"epoch": 3, "train_loss": 1.25, "eval_loss": 1.5, "eval_top1": 60.0, "eval_top5": 90.0, "lr": 0.05,
         "seconds": 100.0}
    progress.end_epoch(m, epochs_left=36)
    assert capsys.readouterr().out == ("epoch   3  train_loss 1.2500  eval_loss 1.5000  top1 60.00  top5 90.00  "
                                       "lr 0.05  100.0s  eta 1h00m\n")
    assert [duration(s) for s in (0.4, 59, 61, 3599, 7260)] == ["0s", "59s", "1m01s", "59m59s", "2h01m"]
    assert "ema_top1 61.50" in epoch_line(m | {"ema_eval_top1": 61.5}, 0)


def test_log_with_names_accelerates_trackers_and_refuses_others_in_one_line(tmp_path):
    from accelerate.utils import LoggerType

    assert set(TRACKERS) == {t.value for t in LoggerType} - {"all"}
    for value, message in ((["tensorbord"], "unknown tracker in train.log_with 'tensorbord'; did you mean "
                                            "'tensorboard'? Valid: tensorboard, wandb, mlflow,"),
                           (["mlflow", "mlflow"], "names a tracker twice"),
                           (["none", "mlflow"], "none goes alone"),
                           ("mlflow", "train.log_with='mlflow' must be a list of str")):
        with pytest.raises(ConfigError, match=re.escape(message)) as e:
            load_config("digits", {"train.log_with": value})
        assert "\n" not in str(e.value)
    assert trackers(load_config("digits", ["train.log_with=[none]"]), tmp_path) == []
    assert trackers(load_config("digits", ["train.log_with=[]"]), tmp_path) == []
    [tensorboard] = trackers(load_config("digits"), tmp_path)  # the default
    assert (tensorboard.name, tensorboard.run_name, tensorboard.logging_dir_param) == ("tensorboard", "tensorboard",
                                                                                       str(tmp_path))
    with pytest.raises(ConfigError, match=r"^train.log_with: aim is not installed; pip install aim, or drop it"):
        trackers(load_config("digits", ["train.log_with=[aim]"]), tmp_path)


def test_an_unknown_tracker_exits_2_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "digits", "--output", str(out), "--set", "train.log_with=[wandbb]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("timm-tricks: error: unknown tracker in train.log_with 'wandbb'; "
                                               "did you mean 'wandb' or 'swanlab'? Valid: tensorboard,")
    assert not out.exists()


def test_tensorboard_and_mlflow_file_store_get_the_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store is opt-in
    out = tmp_path / "run"
    metrics = Trainer(load_config("digits", FAST + ["train.log_with=[tensorboard, mlflow]"]), out).fit()
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    [meta] = [p for p in store.glob("*/*/meta.yaml")]  # experiment/run/meta.yaml
    run = meta.parent
    assert (run / "tags" / "mlflow.runName").read_text() == "run"  # the output folder's name
    assert "name: digits" in (run.parent / "meta.yaml").read_text()  # the experiment: the config's name
    # the hyperparameters as a flat dict, the epoch metrics at step = epoch
    assert (run / "params" / "optim.lr").read_text() == "0.1"
    assert (run / "params" / "train.log_with").read_text() == "['tensorboard', 'mlflow']"
    [row] = (run / "metrics" / "eval_top1").read_text().splitlines()
    assert float(row.split()[1]) == pytest.approx(metrics["eval_top1"]) and row.split()[2] == "0"


def test_no_tracker_writes_no_tracker_folder(tmp_path):
    out = tmp_path / "run"
    Trainer(load_config("digits", FAST + ["train.log_with=[none]", "data.batch_size=512"]), out).fit()
    assert not [name for name in TRACKER_FOLDERS if (out / name).exists()]
    assert (out / "metrics.json").is_file()


def test_a_failed_start_removes_the_tracker_folders_it_made(tmp_path):
    # the folder is the user's (made before the claim): it stays, with what the user had in it; what the failed
    # start wrote (the trackers' folders, summary.csv, checkpoints/, config.yaml) goes
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    folder = RunFolder(out, resume=False)
    folder.claim("name: x\n")
    for name in TRACKER_FOLDERS:
        (out / name / "sub").mkdir(parents=True)
        (out / name / "sub" / "events").write_text("x")
    (out / "summary.csv").write_text("epoch\n")
    (out / "checkpoints").mkdir()
    folder.abandon()
    # (the lock file stays: removing a flock'ed file could let two later runs lock two different files)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]


def test_precision_a_cpu_cannot_train_in_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="^train.precision=fp16 needs a GPU: on a CPU accelerate would train in "
                                          "fp32; use train.precision=bf16"):
        check_precision("fp16", torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))  # CPU autocast
    check_precision("no", torch.device("cpu"))
    if torch.cuda.is_available():
        pytest.skip("the command below would train on this machine's GPU")
    out = tmp_path / "run"
    assert main(["train", "--recipe", "digits", "--output", str(out), "--set", "train.precision=fp16"]) == 2
    assert capsys.readouterr().err.startswith("timm-tricks: error: train.precision=fp16 needs a GPU")
    assert not out.exists()


def test_seeded_mixup_draws_from_its_own_generator():
    mixup = create_mixup(0.2, num_classes=4)
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1])
    state = np.random.get_state()[1].copy()
    mixed, soft = mixup(x.clone(), y, seed=1234)
    assert np.array_equal(np.random.get_state()[1], state)  # NumPy's global generator untouched
    rng = np.random.Generator(np.random.PCG64(1234))
    rng.random()  # timm's mixing decision (prob 1.0)
    lam = float(rng.beta(0.2, 0.2))  # timm's order: the mixing decision, then lambda
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.allclose(soft, lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y.flip(0), 4).float())
    again, _ = mixup(x.clone(), y, seed=1234)
    other, _ = mixup(x.clone(), y, seed=1235)
    assert torch.equal(again, mixed) and not torch.equal(other, mixed)


def test_a_step_seeds_the_devices_global_generator_as_torch_manual_seed_does():
    generators = global_generators(torch.device("cpu"))
    assert generators == (torch.default_generator,)
    torch.manual_seed(77)
    expected = F.dropout(torch.ones(64), 0.5)
    state = np.random.get_state()[1].copy()
    seed_global_torch(77, generators)
    assert torch.equal(F.dropout(torch.ones(64), 0.5), expected)
    assert np.array_equal(np.random.get_state()[1], state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_step_does_not_wait_for_the_device(tmp_path, monkeypatch):
    # torch warns at every synchronising call (torch.cuda.set_sync_debug_mode) from the end of the first step on,
    # except in the reads at the lines; none may come from the step's own code
    import warnings
    from pathlib import Path

    cfg = load_config("digits", FAST + ["train.log_every_steps=5", "train.log_every_seconds=1e9",
                                        "mixup.alpha=0.2", "ema.enabled=true", "train.clip_grad=1.0"])

    def arm(state):
        if state.step_in_epoch < 11:
            torch.cuda.set_sync_debug_mode("warn")

    trainer = Trainer(cfg, tmp_path / "run", step_callback=arm)
    real_read = trainer._read

    def read(*a, **k):
        torch.cuda.set_sync_debug_mode(0)
        return real_read(*a, **k)

    monkeypatch.setattr(trainer, "_read", read)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer._train_epoch(0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [(Path(w.filename).name, w.lineno) for w in caught if "synchroniz" in str(w.message)]
    print("synchronising calls:", syncs)
    ours = {"train.py", "progress.py", "mixup.py", "seeding.py", "build.py", "batches.py", "data.py"}
    assert [s for s in syncs if s[0] in ours] == []
    assert trainer.state.global_step == 11 and trainer.state.num_updates == 11


def test_a_long_evaluation_prints_a_line_before_the_interval_passes():
    # evaluation batches of 7 s each: a line is due once 1.5 x 7 s more would pass 30 s since the last line,
    # as for the step lines; what the line says is this process's images so far
    clock = Clock()
    progress = Progress(main=True, every_steps=1000, every_seconds=30.0, images_per_step=64, clock=clock)
    progress.say("epoch line")
    progress.start_eval()
    printed = []
    real_say = progress.say
    progress.say = lambda line: printed.append((clock.now, line)) or real_say(line)
    for batch in range(1, 20):
        clock.now += 7.0
        progress.eval_tick("evaluating", 100 * batch)
    assert [t for t, _ in printed[:3]] == [21.0, 42.0, 63.0]
    assert printed[0][1] == "evaluating: 300 images of this process so far"
    assert max(b - a for a, b in zip([0.0] + [t for t, _ in printed], [t for t, _ in printed], strict=False)) <= 30


def test_the_trainer_reports_its_evaluations_of_the_model_and_the_ema(tmp_path, capsys):
    # with a line due at every chance, each evaluation batch of 128 (359 validation digits) gives one
    cfg = load_config("digits", FAST + ["train.log_every_seconds=1e-9", "ema.enabled=true"])
    Trainer(cfg, tmp_path / "run").fit()
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("evaluating")]
    counts = ["128", "256", "359"]
    assert lines == [f"evaluating: {n} images of this process so far" for n in counts] + [
        f"evaluating the EMA: {n} images of this process so far" for n in counts]
