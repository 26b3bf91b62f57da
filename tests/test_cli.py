"""The command line as a user runs it: exit codes, output formats and files."""

import argparse
import csv
import math
import subprocess
import sys

import pytest
import yaml

from timm_tricks.cli import main
from timm_tricks.config import list_recipes


def test_recipes_lists_every_recipe_one_line_each(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_recipes()


def test_recipes_show_prints_the_file_with_its_comments_then_what_differs_from_the_defaults(capsys):
    assert main(["recipes", "show", "bag_of_tricks"]) == 0
    out = capsys.readouterr().out
    header = "# ---- the resolved values that differ from the defaults (--all for every value)\n"
    file_part, resolved = out.split(header, 1)
    assert file_part.startswith("# timm_tricks/recipes/bag_of_tricks.yaml\n# Bag of Tricks, all tricks")
    assert "temperature: 20            # Sec. 5.5: T = 20" in file_part  # the comments are kept
    shown = yaml.safe_load(resolved)
    # inherited from bag_of_tricks_efficient and bag_of_tricks_baseline; only what differs from the defaults
    assert shown["data"] == {"source": "folder:imagenet", "batch_size": 1024}
    assert shown["model"] == {"zero_gamma": True, "init": "xavier"} and shown["train"]["precision"] == "fp16"
    assert "name" not in shown and "milestones" not in out  # the step schedule's key does nothing under cosine
    assert "#   schedule.milestones, schedule.gamma: act only with schedule.name step" not in out  # at their defaults


def test_recipes_show_all_leaves_out_the_keys_that_do_nothing_and_says_so(capsys):
    assert main(["recipes", "show", "xception", "--all"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out.split("# ---- every resolved value", 1)[1])
    assert resolved["schedule"] == {"name": "exponential", "warmup_epochs": 0.0, "decay_rate": 0.94,
                                    "decay_every": 2.0, "rescale_epochs": False}
    assert set(resolved["augment"]) == {"train", "color", "pca_std", "mean", "std", "flip", "eval_resize",
                                        "interpolation"}  # bot on file data: no crop_padding, no cutout
    assert resolved["distill"] == {"teacher": None} and resolved["ema"] == {"enabled": False}
    assert "#   schedule.milestones, schedule.gamma: act only with schedule.name step\n" in out
    assert "#   augment.crop_padding, augment.cutout: act only with augment.train batched\n" in out


def test_the_relevance_rule_of_each_section():
    from timm_tricks.config import load_config
    from timm_tricks.config_docs import inert_keys

    digits = inert_keys(load_config("digits", check_names=False))  # batched pipeline, in-memory data, cosine
    assert {"augment.color", "augment.pca_std", "augment.eval_resize", "augment.interpolation",
            "schedule.milestones", "schedule.knots", "mixup.off_epochs", "ema.decay", "distill.weight"} <= set(digits)
    assert not {"augment.crop_padding", "augment.flip", "schedule.min_lr", "loss.smoothing_form",
                "optim.base_batch_size"} & set(digits)
    myrtle = inert_keys(load_config("myrtle_resnet9", check_names=False))  # piecewise, EMA on, rescaled knots
    assert "schedule.knots" not in myrtle and "schedule.reference_epochs" not in myrtle
    assert "ema.every_steps" not in myrtle and myrtle["schedule.min_lr"] == "act only with schedule.name cosine " \
                                                                           "or linear"
    step = inert_keys(load_config("bag_of_tricks_baseline", check_names=False))
    assert "schedule.milestones" not in step and step["schedule.decay_rate"] == "act only with schedule.name " \
                                                                               "exponential"
    assert step["loss.smoothing_form"] == "act only with loss.label_smoothing > 0"
    assert "augment.eval_resize" not in step and step["augment.cutout"] == "act only with augment.train batched"


def test_lr_schedule_csv_header_and_values(tmp_path, capsys):
    out = tmp_path / "lr.csv"
    assert main(["lr-schedule", "--recipe", "bag_of_tricks", "--steps-per-epoch", "4", "--epochs", "10",
                 "--csv", str(out)]) == 0
    assert capsys.readouterr().out == ""
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["step", "epoch", "lr"]
    assert len(rows) == 1 + 40
    # 5 warmup epochs x 4 steps: step 0 at 0.4/20, step 19 at the peak 0.4 (linear scaling of 0.1 at 1024).
    assert float(rows[1][2]) == pytest.approx(0.4 / 20)
    assert float(rows[20][2]) == pytest.approx(0.4)
    assert float(rows[1 + 39][1]) == pytest.approx(39 / 4)


def test_lr_schedule_prints_a_summary_without_csv(capsys):
    assert main(["lr-schedule", "--recipe", "bag_of_tricks", "--steps-per-epoch", "4", "--epochs", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "bag_of_tricks (--steps-per-epoch): cosine schedule, 10 epochs x 4 steps = 40 steps"
    assert lines[1] == "peak lr 0.4 = optim.lr 0.1 x batch 1024 / 256 (linear scaling); first reached at step 19 " \
                       "(epoch 4.75)"
    assert lines[2] == "warmup: linear from 0.02 over 5 epoch(s), ending at step 19 with lr 0.4"
    table = {int(line.split()[0]): line.split() for line in lines[5:15]}
    assert list(table) == list(range(10))  # one row per epoch boundary
    assert table[1] == ["1", "4", "0.1"] and table[5] == ["5", "20", "0.4"]
    # after the warmup, cosine over the 20 remaining steps: epoch 8 is step 32, t = 12 of 20
    assert float(table[8][2]) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 12 / 20)), rel=1e-5)
    assert lines[15].split()[:2] == ["9.75", "39"] and lines[-1].startswith("every step's lr: --csv FILE")
    assert len(lines) == 17


def test_lr_schedule_summary_of_a_long_run_shows_every_kth_epoch_and_the_steps_source(capsys):
    from timm_tricks.cli_text import epoch_stride

    assert [epoch_stride(n) for n in (15, 40, 41, 120, 200, 5000)] == [1, 1, 2, 5, 5, 200]
    assert main(["lr-schedule", "--recipe", "bag_of_tricks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "bag_of_tricks (1,281,167 training images // batch 1,024): cosine schedule, 200 epochs x " \
                       "1,251 steps = 250,200 steps"
    assert lines[3] == "lr at the start of every 5 epochs:" and len(lines) == 47  # 40 boundaries, not 250,200 steps


def test_lr_schedule_batch_size_rescales_and_default_steps(tmp_path):
    out = tmp_path / "lr.csv"
    assert main(["lr-schedule", "--recipe", "bag_of_tricks_baseline", "--batch-size", "512", "--epochs", "1",
                 "--set", "optim.linear_scaling=true", "--csv", str(out)]) == 0
    rows = list(csv.reader(out.read_text().splitlines()))
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
    (["tune", "--space", "digits", "--status-every", "0"], "--status-every must be a positive number of seconds"),
    # wandb is not in the dev extra: Ray's WandbLoggerCallback would have raised a RuntimeError in the driver
    (["tune", "--space", "digits", "--set", "train.log_with=[wandb]"],
     "train.log_with: wandb is not installed; pip install 'timm_tricks[wandb]', or drop it from train.log_with"),
    (["ablate", "--ladder", "bag_of_tricks", "--quiet", "--status-every", "-1"], "--status-every must be a positive"),
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


def test_version_and_a_description_of_what_the_tool_does(capsys):
    from timm_tricks import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"timm-tricks {__version__}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Train timm image classifiers with the tricks of \"Bag of Tricks" in out and "thin layer" not in out
    assert "examples:\n  timm-tricks recipes" in out


def test_every_flag_has_help_and_every_command_has_examples():
    from timm_tricks.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"recipes", "keys", "lr-schedule", "train", "tune", "ablate", "eval"}
    for name, parser in sub.choices.items():
        assert parser.description and parser.epilog.startswith("examples:\n  timm-tricks "), name
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    tune = sub.choices["tune"].format_help()
    assert "asha: stop weak trials early" in tune and "optuna: Optuna's TPE" in tune and "--ray-verbose" in tune


def test_keys_lists_every_key_with_type_default_range_and_doc(capsys):
    from timm_tricks.config import all_keys

    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    listed = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ") and
              not line.startswith("      ")]
    assert listed == all_keys()
    lines = out.splitlines()
    for key in all_keys():  # each key's description on the line after it
        (i,) = [n for n, line in enumerate(lines) if line.startswith(f"  {key}: ")]
        assert lines[i + 1].startswith("      ") and len(lines[i + 1].strip()) > 10, key
    assert "  optim.lr: float = 0.1, > 0\n      peak learning rate at base_batch_size\n" in out
    assert "  train.seed: int = 0, >= 0, <= 2^63 - 1\n" in out
    assert "  schedule.name: str = cosine, one of constant, cosine, step, exponential, linear, piecewise\n" in out


def test_keys_of_one_section_or_key(capsys):
    assert main(["keys", "mixup"]) == 0
    assert capsys.readouterr().out == ("mixup: Mixup through timm's Mixup (BoT Sec. 5.4).\n"
                                       "  mixup.alpha: float = 0, >= 0\n      Beta(alpha, alpha); 0 disables\n"
                                       "  mixup.off_epochs: int = 0, >= 0\n      switch mixup off for the last N "
                                       "epochs\n")
    assert main(["keys", "schedule.milestones"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["  schedule.milestones: list[float] = [30, 60, 90]",
                                                        "      step: epochs at which lr is multiplied by gamma"]
    assert main(["keys", "optm"]) == 2
    assert "unknown config section or key 'optm'; did you mean 'optim'?" in capsys.readouterr().err
