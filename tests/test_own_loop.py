"""docs/own_loop.md's examples run: the own loop, the own Accelerator, and the trial factory in an own Tuner."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "own_loop.md"


def _example(heading):
    """The first Python block under ``## heading`` in docs/own_loop.md."""
    section = DOC.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run(code, tmp_path, replace=()):
    """Run ``code`` as a script in ``tmp_path`` after the ``(old, new)`` text replacements, each of which must
    apply (so the test follows the documentation)."""
    for old, new in replace:
        assert old in code, f"docs/own_loop.md no longer has {old!r}"
        code = code.replace(old, new)
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, HOME=str(tmp_path)), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_the_own_loop_example_trains_with_the_recipes_optimizer_and_schedule(tmp_path):
    out = _run(_example("Your own loop"), tmp_path,  # 4 steps an epoch instead of 22, for time
               replace=[("steps_per_epoch = len(data.train_labels) // batch", "steps_per_epoch = 4")])
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 0", "epoch 1"]
    assert float(lines[-1].rsplit("lr ", 1)[1]) < 0.05  # the cosine has decayed from its peak (0.1)


def test_the_own_accelerator_example_calls_the_step_callback_after_every_step(tmp_path):
    out = _run(_example("Your own Accelerator, and a hook on every step"), tmp_path,  # 256 images, for time
               replace=[('"data.image_size=16"]', '"data.image_size=16", "data.source=synthetic:256"]')])
    assert out.splitlines()[-1].startswith("4 steps, top-1 ")  # 256 // 64 steps, one callback each
    assert (tmp_path / "runs" / "own_accelerator" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_trial_factory_runs_in_an_own_tuner(tmp_path):
    tiny = '["train.epochs=1", "model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=128"]'
    out = _run(_example("Your own Tuner"), tmp_path, replace=[
        ('overrides=["train.epochs=6"]', f"overrides={tiny}"), ("num_samples=4", "num_samples=1")])
    (trial,) = (tmp_path / "runs" / "own_tuner" / "lr_and_smoothing").glob("trial_fn_*")
    assert (trial / "run" / "config.yaml").is_file() and (trial / "run" / "model.safetensors").is_file()  # finished
    assert list(trial.glob("checkpoint_*"))  # Tune holds the epoch's checkpoint
    assert str(trial / "run" / "config.yaml") in out and "'optim.lr'" in out
