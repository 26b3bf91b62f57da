"""A search's failed trials: a user's mistake stops the search at once, a search where all failed exits 1."""

import os
import subprocess
import sys

import pytest
import yaml

from timm_tricks.errors import ConfigError
from timm_tricks.trial_errors import MistakeWatch, all_failed, user_error

DATA_ERROR = ("Failure # 1 (occurred at 2026-11-30_13-40-00)\n"
              "ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n  File \"timm_tricks/data.py\", line 210\n"
              "timm_tricks.errors.DataError: folder data set '/nowhere' has no train/ folder\n")
CRASH = "Failure # 1 (occurred at 2026-11-30_13-40-00)\nray::ImplicitFunc.train()\nRuntimeError: CUDA error\n"


class FakeTrial:
    def __init__(self, trial_id, error):
        self.trial_id, self.error = trial_id, error

    def get_error(self):
        return self.error


def test_the_message_of_a_user_error_is_read_from_the_trials_traceback():
    assert user_error(DATA_ERROR) == "folder data set '/nowhere' has no train/ folder"
    assert user_error(CRASH) is None and user_error(None) is None


def test_the_search_stops_when_every_first_attempt_failed_with_the_same_mistake():
    watch = MistakeWatch(num_samples=4)
    watch.on_trial_recover(0, [], FakeTrial("a", DATA_ERROR))
    assert not watch.stop_all()  # one trial is not yet "every trial"
    watch.on_trial_recover(0, [], FakeTrial("a", CRASH))  # a's retry: only first attempts count
    watch.on_trial_recover(1, [], FakeTrial("b", DATA_ERROR))
    assert watch.stop_all()
    with pytest.raises(ConfigError, match="without retries: folder data set '/nowhere' has no train/ folder"):
        watch.raise_if_stopped()


@pytest.mark.parametrize("events", [
    [("a", DATA_ERROR), ("b", CRASH)],  # another cause in one trial: the search goes on (and retries)
    [("result", None), ("a", DATA_ERROR), ("b", DATA_ERROR)],  # a trial trained: the error may be the values'
])
def test_the_search_goes_on_when_the_failures_are_not_one_mistake(events):
    watch = MistakeWatch(num_samples=4)
    for trial_id, error in events:
        if trial_id == "result":
            watch("x", {"epoch": 1})
        else:
            watch.on_trial_error(0, [], FakeTrial(trial_id, error))
    assert not watch.stop_all()


def test_a_single_trial_search_stops_at_its_first_mistake():
    watch = MistakeWatch(num_samples=1)
    watch.on_trial_recover(0, [], FakeTrial("a", DATA_ERROR))
    assert watch.stop_all()


def test_all_failed_names_the_count_and_the_common_cause():
    e = all_failed(["RuntimeError: boom", "RuntimeError: boom", "ValueError: x"], "exp/report.md")
    assert str(e) == "all 3 trials failed (2 with: RuntimeError: boom); no best trial, see exp/report.md"


TINY = ["--set", "model.name=resnet18d_tricks", "--set", "data.image_size=16", "--set", "data.batch_size=128"]


@pytest.mark.slow
def test_a_mistake_in_every_trial_is_one_line_exit_2_and_not_retried(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"recipe": "digits", "space": {"optim.lr": {"choice": [0.1, 0.2]}}}))
    proc = subprocess.run([sys.executable, "-m", "timm_tricks", "tune", "--space", str(space), "--num-samples", "2",
                           "--epochs", "1", "--storage", str(tmp_path / "st"), "--name", "bad", "--data",
                           f"folder:{tmp_path / 'nowhere'}", "--max-failures", "3", *TINY],
                          capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)), timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "timm-tricks: error: every trial failed on its first attempt with the same error, so the search stopped "
        f"without retries: folder data set {str(tmp_path / 'nowhere')!r} has no train/ folder (expected "
        f"{tmp_path / 'nowhere'}/train/CLASS/*.jpg and {tmp_path / 'nowhere'}/val/CLASS/*.jpg)")
    attempts = proc.stderr.count("Trial task failed for trial")  # Ray logs each failed attempt
    assert 2 <= attempts <= 3  # each trial's first attempt (a retry may start before the stop): not 2 x (1 + 3)
    assert not (tmp_path / "st" / "bad").exists()  # a mistake leaves no folder that blocks the name


ALL_FAIL = """
import sys
from timm_tricks.experiment import ClusterOptions
from timm_tricks.tune import SearchOptions, run_search
from timm_tricks.tune_space import load_space

def boom(state):
    raise RuntimeError("boom")

run_search(load_space(sys.argv[1]), "digits", overrides=sys.argv[3:], options=SearchOptions(num_samples=2,
           scheduler="fifo", name="fails"), cluster=ClusterOptions(storage=sys.argv[2], max_failures=0),
           step_callback=boom)
"""


@pytest.mark.slow
def test_a_search_in_which_every_trial_failed_exits_1_without_a_best_recipe(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"recipe": "digits", "space": {"optim.lr": {"choice": [0.1, 0.2]}}}))
    script = tmp_path / "fails.py"
    script.write_text(ALL_FAIL)
    proc = subprocess.run([sys.executable, str(script), str(space), str(tmp_path / "st"), "train.epochs=1",
                           "model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=128"],
                          capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)), timeout=900)
    exp = tmp_path / "st" / "fails"
    assert proc.returncode == 1, proc.stderr[-3000:]  # a TrainingError: the CLI's status 1 (errors.exit_status)
    assert "TrainingError: all 2 trials failed (2 with: RuntimeError: boom); no best trial" in proc.stderr
    assert not (exp / "best_recipe.yaml").exists()
    assert "Every trial failed; there is no best trial." in (exp / "report.md").read_text()

