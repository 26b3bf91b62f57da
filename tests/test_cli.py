"""The command line as a user runs it: exit codes, output formats and files."""

import csv
import subprocess
import sys

import pytest

from timm_tricks.cli import main
from timm_tricks.config import list_recipes


def test_recipes_lists_every_recipe_one_line_each(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_recipes()


def test_recipes_show_prints_resolved_yaml(capsys):
    assert main(["recipes", "show", "bag_of_tricks"]) == 0
    out = capsys.readouterr().out
    assert "name: resnet50d_tricks" in out and "batch_size: 1024" in out and "milestones:" in out


def test_lr_schedule_csv_header_and_values(capsys):
    assert main(["lr-schedule", "--recipe", "bag_of_tricks", "--steps-per-epoch", "4", "--epochs", "10"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["step", "epoch", "lr"]
    assert len(rows) == 1 + 40
    # 5 warmup epochs x 4 steps: step 0 at 0.4/20, step 19 at the peak 0.4 (linear scaling of 0.1 at 1024).
    assert float(rows[1][2]) == pytest.approx(0.4 / 20)
    assert float(rows[20][2]) == pytest.approx(0.4)
    assert float(rows[1 + 39][1]) == pytest.approx(39 / 4)


def test_lr_schedule_batch_size_rescales_and_default_steps(capsys):
    assert main(["lr-schedule", "--recipe", "bag_of_tricks_baseline", "--batch-size", "512", "--epochs", "1",
                 "--set", "optim.linear_scaling=true"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 1 + 1_281_167 // 512  # ImageNet-1k train / batch: full batches only, as the trainer takes
    assert float(rows[1][2]) == pytest.approx(0.2)


def test_lr_schedule_writes_csv_and_png(tmp_path, capsys):
    out_csv, out_png = tmp_path / "lr.csv", tmp_path / "lr.png"
    assert main(["lr-schedule", "--recipe", "myrtle_resnet9", "--steps-per-epoch", "10", "--csv", str(out_csv),
                 "--plot", str(out_png)]) == 0
    assert out_csv.read_text().startswith("step,epoch,lr\n")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("argv, message", [
    (["lr-schedule", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["lr-schedule", "--recipe", "digits", "--set", "optim.lr=-1"], "optim.lr=-1.0 is out of range"),
    (["lr-schedule", "--recipe", "digits", "--csv", "/no/such/dir/x.csv", "--steps-per-epoch", "2"],
     "does not exist"),
    (["lr-schedule", "--recipe", "digits", "--set", "data.source=timmx:foo"], "--steps-per-epoch"),
    (["recipes", "show"], "needs a recipe name"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_and_module_entry_points():
    proc = subprocess.run([sys.executable, "-m", "timm_tricks", "lr-schedule", "--recipe", "bad_recipe"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown recipe 'bad_recipe'" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "timm_tricks", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2


@pytest.mark.parametrize("argv, message", [
    (["ablate"], "ablate needs --ladder"),
    (["ablate", "--ladder", "nope"], "unknown ladder 'nope'. Valid: bag_of_tricks, myrtle_resnet9"),
    (["ablate", "--ladder", "bag_of_tricks", "--seeds", "0"], "--seeds and --max-concurrent must be at least 1"),
    (["tune", "--space", "digits", "--max-concurrent", "0"], "--max-concurrent must be at least 1"),
    (["tune", "--space", "digits", "--storage", "s3://bucket/tune"], "cloud URIs are not supported"),
    (["tune", "--space", "digits", "--reduction-factor", "1"], "--reduction-factor above 1"),
    (["tune", "--space", "digits", "--gpus-per-trial", "3", "--workers-per-trial", "2"], "does not split"),
    (["tune", "--space", "digits", "--epochs", "4", "--grace-period", "5"], "longer than the 4 epochs"),
    (["tune", "--space", "digits", "--cpus-per-trial", "64"], "lower --cpus-per-trial"),
])
def test_search_and_ablation_mistakes_exit_2_before_ray_starts(tmp_path, capsys, argv, message):
    assert main([*argv, "--storage", str(tmp_path / "r")] if "--storage" not in argv and argv[1:] else argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_ablate_lists_the_shipped_ladders(capsys):
    assert main(["ablate", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["bag_of_tricks", "myrtle_resnet9"]
    assert "10 rungs" in lines[0]


def test_recipes_show_checks_the_names_of_a_users_recipe_file(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("base: digits\nmodel:\n  name: resnet18d_trick\n")
    assert main(["recipes", "show", str(path)]) == 2
    assert "unknown model.name 'resnet18d_trick'; did you mean 'resnet18d_tricks'" in capsys.readouterr().err


def test_a_stopped_run_exits_1_with_one_line(monkeypatch, capsys):
    from timm_tricks import train
    from timm_tricks.errors import TrainingError

    def fit(self):
        raise TrainingError("non-finite loss at epoch 0 step 3")

    monkeypatch.setattr(train.Trainer, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(train.Trainer, "fit", fit)
    assert main(["train", "--recipe", "digits", "--output", "unused"]) == 1
    assert capsys.readouterr().err == "timm-tricks: training stopped: non-finite loss at epoch 0 step 3\n"
