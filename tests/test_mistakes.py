"""Every mistake a user can make is one line naming it, and exit status 2; nothing is left behind.

Each case runs the command line in this process (``timm_tricks.cli.main``) and checks the whole of stderr: one
line, ``timm-tricks: error: ...``, no traceback. The Ctrl-C case runs a real process and interrupts it.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from timm_tricks.cli import main


def _fails_in_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("timm-tricks: error: "), err
    assert message in err[0], err[0]
    return err[0]


def _train(tmp_path, *sets, recipe="digits", extra=()):
    return ["train", "--recipe", recipe, "--output", str(tmp_path / "run"), *extra,
            *[a for s in ("model.name=resnet18d_tricks", "data.image_size=16", *sets) for a in ("--set", s)]]


@pytest.mark.parametrize(("sets", "message"), [
    (["model.num_classes=5"], "model.num_classes=5 but data.source 'digits' has 10 classes"),
    (["model.kwargs={in_chans: 1}"], "takes 1-channel images but the data has 3 channels; check model.kwargs"),
    ([f"train.seed={1 << 64}"], f"train.seed={1 << 64} is out of range: must be <= {(1 << 63) - 1}"),
    (["optim.lr=.inf"], "optim.lr=inf must be a finite number"),
    (["schedule.min_lr=.nan"], "schedule.min_lr=nan must be a finite number"),
    (["data.image_size=4096"], "data.image_size=4096 is out of range: must be <= 1024"),
])
def test_a_value_that_cannot_train_is_refused_before_anything_is_written(tmp_path, capsys, sets, message):
    _fails_in_one_line(capsys, _train(tmp_path, *sets), message)
    assert not (tmp_path / "run").exists()


def test_a_distillation_teacher_from_another_architectures_weights(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", num_classes=10).state_dict(), str(weights))
    _fails_in_one_line(capsys, _train(tmp_path, "distill.teacher=resnet50d_tricks", f"distill.checkpoint={weights}"),
                       f"cannot load the teacher's weights {str(weights)!r}: RuntimeError")
    assert not (tmp_path / "run").exists()


def _cifar(root, labels=None, payload=None):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = payload if payload is not None else \
            {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": labels or [0, 1, 2, 3]}
        (base / name).write_bytes(pickle.dumps(obj, protocol=2))
    return base


@pytest.mark.parametrize(("kind", "message"), [
    ("labels", "has labels from 0 to 12; CIFAR-10 labels are 0 to 9"),
    ("count", "holds 4 images but 3 labels"),
    ("list", "is not in the CIFAR format"),
])
def test_cifar_files_with_bad_labels_or_not_cifar_at_all(tmp_path, capsys, kind, message):
    labels = {"labels": [0, 1, 2, 12], "count": [0, 1, 2]}.get(kind)
    _cifar(tmp_path / "cifar", labels=labels, payload=[1, 2, 3] if kind == "list" else None)
    _fails_in_one_line(capsys, _train(tmp_path, "data.batch_size=4", extra=("--data", f"cifar10:{tmp_path / 'cifar'}")),
                       message)


def _folder(root, classes, broken=False):
    for split in ("train", "val"):
        for i, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for k in range(8):
                Image.new("RGB", (20, 20), (30 * i, 20 * k, 90)).save(root / split / c / f"{k}.png")
    if broken:
        (root / "train" / classes[0] / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")


def test_a_corrupt_image_read_by_a_dataloader_worker_names_the_file(tmp_path, capsys):
    _folder(tmp_path / "images", ("cat", "dog"), broken=True)
    line = _fails_in_one_line(capsys, _train(tmp_path, "data.batch_size=17", "data.workers=1",
                                             extra=("--data", f"folder:{tmp_path / 'images'}")), "broken.jpg")
    assert "cannot read image" in line and "DataLoader worker" not in line


def test_a_folder_with_one_class(tmp_path, capsys):
    _folder(tmp_path / "images", ("cat",))
    _fails_in_one_line(capsys, _train(tmp_path, extra=("--data", f"folder:{tmp_path / 'images'}")),
                       "has 1 class (['cat']); a classifier needs at least two class folders")


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty"),
    ("a: " + "[" * 5000 + "]" * 5000, "is nested too deeply to read"),
])
def test_an_empty_or_bottomless_recipe_file(tmp_path, capsys, text, message):
    (tmp_path / "recipe.yaml").write_text(text)
    _fails_in_one_line(capsys, ["train", "--recipe", str(tmp_path / "recipe.yaml"), "--output", str(tmp_path / "run")],
                       message)


def test_an_output_folder_that_cannot_be_made(tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    argv = ["train", "--recipe", "digits", "--output", str(tmp_path / "file" / "run")]
    _fails_in_one_line(capsys, argv, f"--output {str(tmp_path / 'file' / 'run')!r} cannot be created")


def test_lr_schedule_refuses_a_table_of_a_billion_rows(capsys):
    _fails_in_one_line(capsys, ["lr-schedule", "--recipe", "digits", "--steps-per-epoch", "1000000000"],
                       "1000000000 steps per epoch x 15 epochs is more than the 10,000,000 steps")


def test_search_bounds_that_are_not_finite_leave_no_folder(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("recipe: digits\nspace:\n  optim.lr: {loguniform: [0.01, .inf]}\n")
    _fails_in_one_line(capsys, ["tune", "--space", str(tmp_path / "space.yaml"), "--storage", str(tmp_path / "st")],
                       "optim.lr=inf must be a finite number")
    assert not (tmp_path / "st").exists()


def test_eval_out_never_writes_over_a_runs_files(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(tmp_path, "train.epochs=1", "data.batch_size=256")) == 0
    before = (run / "config.yaml").read_bytes()
    capsys.readouterr()
    _fails_in_one_line(capsys, ["eval", "--checkpoint", str(run), "--out", str(run / "config.yaml")],
                       "it belongs to a run")
    assert (run / "config.yaml").read_bytes() == before


INTERRUPT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a pytest-xdist worker ignores SIGINT)
from timm_tricks.cli import main
import timm_tricks.train as train

def interrupt(state):
    if state.global_step == 3:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, after step 3's checkpoint

real = train.Trainer.__init__
train.Trainer.__init__ = lambda self, *a, **k: real(self, *a, **k, step_callback=interrupt)
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_keeps_the_checkpoint_and_names_the_command_that_continues(tmp_path):
    argv = _train(tmp_path, "train.epochs=1", "data.batch_size=128", "train.checkpoint_every_steps=2")
    proc = subprocess.run([sys.executable, "-c", INTERRUPT, *argv], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 130, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("timm-tricks: interrupted; the last checkpoint is kept; continue with: timm-tricks train ")
    assert last.endswith(" --resume") and "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*")] == ["ckpt-000000002"]
    resumed = last.split("continue with: timm-tricks ", 1)[1].split(" ")
    assert main(resumed) == 0 and (tmp_path / "run" / "metrics.json").exists()
