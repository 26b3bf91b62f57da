"""Ray Tune searches on the CPU (embedded Ray, 2 CPUs, tiny trials)."""

import argparse
import ast
import csv
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from timm_tricks.config import ConfigError, load_config

TINY = ["model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=128", "train.keep_checkpoints=1"]


def _tune(args, tmp_path, check=True):
    env = dict(os.environ, HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "timm_tricks", "tune", *args], capture_output=True, text=True,
                          env=env, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_search_writes_report_and_a_trainable_best_recipe(tmp_path):
    storage = tmp_path / "results"
    space = tmp_path / "space.yaml"
    # after one epoch at these settings every trial is at chance top-1 (ties ASHA cannot cut), so it follows the loss
    space.write_text(yaml.safe_dump({"recipe": "digits", "metric": "eval_loss", "mode": "min", "space": {
        "optim.lr": {"loguniform": [0.01, 1.0]}, "schedule.warmup_epochs": {"choice": [0, 2]}}}))
    # one trial at a time: seeded TPE and deterministic training make ASHA's decisions reproducible
    proc = _tune(["--space", str(space), "--num-samples", "5", "--epochs", "3", "--storage", str(storage),
                  "--name", "s1", "--max-concurrent", "1", *[a for o in TINY for a in ("--set", o)]], tmp_path)
    exp = storage / "s1"
    rows = list(csv.DictReader(open(exp / "trials.csv")))
    assert len(rows) == 5
    assert all(r["status"] == ("completed" if r["epochs"] == "3" else f"stopped at epoch {r['epochs']}") for r in rows)
    epochs = {int(r["schedule.warmup_epochs"]): [] for r in rows}
    for r in rows:
        epochs[int(r["schedule.warmup_epochs"])].append(int(r["epochs"]))
    assert min(epochs[0]) < 3  # ASHA stopped a trial early at its first rung (epoch 1) ...
    assert epochs[2] and set(epochs[2]) == {3}  # ... but none still warming up (rungs: epochs 1 and 3)
    scores = [float(r["best_eval_loss"]) for r in rows]
    assert scores == sorted(scores)  # the best (lowest) first
    assert "| optim.lr |" in proc.stdout and (exp / "report.md").is_file()
    report = (exp / "report.md").read_text()
    assert report.startswith(f"# Search report: space `space` on recipe `digits`\n\nExperiment `{exp}`: 5 trial(s) (")
    assert "| stopped at epoch 1 |" in report and "| completed |" in report
    # what it printed while it ran: each trial's epochs, ASHA's stops with the rung, a status line
    err = proc.stderr
    for r in rows:
        n = r["trial"]
        for epoch in range(1, int(r["epochs"]) + 1):
            line = rf"^\[\d+:\d\d\] trial {n} epoch {epoch}/3 \([\d.]+ s\): eval_loss [\d.]+ \(best [\d.]+\)$"
            assert re.search(line, err, re.M), (n, epoch, err[-3000:])
        if r["epochs"] == "1":
            assert re.search(rf"^\[\d+:\d\d\] trial {n} stopped by ASHA after epoch 1/3 at its epoch-1 rung \(rungs "
                             rf"at epochs 1, 3\): eval_loss [\d.]+$", err, re.M), err[-3000:]
        else:
            assert re.search(rf"^\[\d+:\d\d\] trial {n} finished: 3 epoch\(s\): eval_loss [\d.]+$", err, re.M)
    assert re.search(r"^\[\d+:\d\d\] space search 's1': 0 running, 0 pending, \d stopped, \d finished; best eval_loss "
                     rf"{float(rows[0]['best_eval_loss']):.4g} \(trial {rows[0]['trial']}, epoch \d\)$", err, re.M)
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


# A search run through the Python API with a step callback that SIGKILLs the trial's process once (the marker
# file remembers), after a given optimizer step. Defined in the script's __main__, so cloudpickle sends the
# callback to the Ray workers by value.
KILLED_SEARCH = """
import os
import signal
import sys
from pathlib import Path

from timm_tricks.experiment import ClusterOptions
from timm_tricks.tune import SearchOptions, run_search
from timm_tricks.tune_space import load_space

space, storage, marker, kill_at, *overrides = sys.argv[1:]


def kill_once(state):
    if state.global_step == int(kill_at) and not os.path.exists(marker):
        Path(marker).write_text("killed\\n")
        os.kill(os.getpid(), signal.SIGKILL)


run_search(load_space(space), "digits", overrides=overrides, cluster=ClusterOptions(storage=storage),
           options=SearchOptions(num_samples=1, scheduler="fifo", name="retry"), step_callback=kill_once)
"""


@pytest.mark.slow
def test_a_killed_trial_is_retried_from_its_checkpoint(tmp_path):
    marker = tmp_path / "killed-once"
    storage = tmp_path / "results"
    space = tmp_path / "one.yaml"
    space.write_text("recipe: digits\nspace:\n  optim.lr: {choice: [0.1]}\n")
    script = tmp_path / "killed_search.py"
    script.write_text(KILLED_SEARCH)
    # 11 steps an epoch; the trial's process is SIGKILLed after step 17, inside epoch 2
    proc = subprocess.run([sys.executable, str(script), str(space), str(storage), str(marker), "17",
                           "train.epochs=3", *TINY], capture_output=True, text=True,
                          env=dict(os.environ, HOME=str(tmp_path)), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert marker.exists()
    (row,) = list(csv.DictReader(open(storage / "retry" / "trials.csv")))
    assert row["status"] == "completed" and row["epochs"] == "3"
    # the crash and the retry, each one line
    crashed = r"^\[\d+:\d\d\] trial 1 crashed \(The actor died unexpectedly before finishing this task.\); "
    assert re.search(crashed + r"retry 1 of 2 from its checkpoint of epoch 1$", proc.stderr, re.M), proc.stderr[-3000:]
    assert re.search(r"^\[\d+:\d\d\] trial 1 restarted \(retry 1\)$", proc.stderr, re.M)
    assert re.search(r"^\[\d+:\d\d\] trial 1 finished: 3 epoch\(s\)", proc.stderr, re.M)
    trial = storage / "retry" / row["path"].rsplit("/", 1)[-1]
    summary = list(csv.DictReader(open(trial / "run" / "summary.csv")))
    assert [r["epoch"] for r in summary] == ["0", "1", "2"]  # epoch 1 trained again from the epoch-0 checkpoint
    assert (trial / "error.txt").exists()


# A search whose one trial raises at its third optimizer step, every time: one retry, then it fails for good.
FAILING_SEARCH = """
import sys

from timm_tricks.experiment import ClusterOptions
from timm_tricks.tune import SearchOptions, run_search
from timm_tricks.tune_space import load_space

space, storage, *overrides = sys.argv[1:]


def fail(state):
    if state.global_step == 3:
        raise RuntimeError("boom at step 3")


run_search(load_space(space), "digits", overrides=overrides, cluster=ClusterOptions(storage=storage, max_failures=1),
           options=SearchOptions(num_samples=1, scheduler="fifo", name="fails"), step_callback=fail)
"""


@pytest.mark.slow
def test_a_trial_that_keeps_failing_is_retried_then_reported_as_an_error(tmp_path):
    storage = tmp_path / "results"
    space = tmp_path / "one.yaml"
    space.write_text("recipe: digits\nspace:\n  optim.lr: {choice: [0.1]}\n")
    script = tmp_path / "failing_search.py"
    script.write_text(FAILING_SEARCH)
    proc = subprocess.run([sys.executable, str(script), str(space), str(storage), "train.epochs=1", *TINY],
                          capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)), timeout=900)
    # its only trial failed: no best trial, a TrainingError (tests/test_trial_errors.py)
    assert proc.returncode == 1 and "TrainingError: all 1 trials failed (1 with: RuntimeError: boom at step 3)" \
        in proc.stderr, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert re.search(r"^\[\d+:\d\d\] trial 1 crashed \(RuntimeError: boom at step 3\); retry 1 of 1 from the start$",
                     proc.stderr, re.M), proc.stderr[-3000:]
    (line,) = re.findall(r"^\[\d+:\d\d\] trial 1 failed after 1 retry \(RuntimeError: boom at step 3\); log: (.+)$",
                         proc.stderr, re.M)
    assert line.startswith(str(storage / "fails" / "trial_fn_")) and line.endswith("/error.txt")
    assert "boom at step 3" in open(line).read()
    (row,) = list(csv.DictReader(open(storage / "fails" / "trials.csv")))
    assert (row["trial"], row["status"], row["epochs"], row["best_eval_top1"]) == ("1", "error", "0", "")
    assert not (storage / "fails" / "best_recipe.yaml").exists()  # no trial to recommend
    report = (storage / "fails" / "report.md").read_text()
    assert "1 trial(s) (1 failed)" in report and "| 1 | 0.1 |  | 0 | error |" in report


@pytest.mark.slow
def test_pbt_exploits_and_mutates(tmp_path):
    storage = tmp_path / "results"
    _tune(["--space", "digits", "--scheduler", "pbt", "--num-samples", "4", "--epochs", "3", "--storage", str(storage),
           "--name", "pbt", *[a for o in TINY for a in ("--set", o)]], tmp_path)
    exp = storage / "pbt"
    rows = list(csv.DictReader(open(exp / "trials.csv")))
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    policies = list(exp.glob("pbt_policy_*.txt"))
    assert policies, "no trial was perturbed"
    # each policy line records [old tag, new tag, old iteration, new iteration, old config, new config]
    changes = [json.loads(line) for p in policies for line in p.read_text().splitlines() if line.strip()]
    assert any(c[4] != c[5] for c in changes)  # explore changed a searched value
    mutated = {k for c in changes for k in c[5] if c[4].get(k) != c[5].get(k)}
    assert mutated <= {"optim.lr", "loss.label_smoothing", "mixup.alpha"}


def _snapshot_has(exp, tag_prefix, iteration):
    """True when the newest saved experiment state shows trial ``tag_prefix`` with ``iteration`` results."""
    for path in sorted(exp.glob("experiment_state-*.json")):
        try:
            state = json.loads(path.read_text())
        except (ValueError, OSError):  # being written
            continue
        for _, meta in state["trial_data"]:
            result = json.loads(meta).get("last_result") or {}
            if result.get("experiment_tag", "").startswith(tag_prefix) and \
                    result.get("training_iteration", 0) >= iteration:
                return True
    return False


@pytest.mark.slow
def test_a_search_whose_driver_is_killed_resumes_without_losing_or_repeating_trials(tmp_path):
    storage = tmp_path / "results"
    exp = storage / "dk"
    args = ["--space", "digits", "--num-samples", "3", "--epochs", "3", "--storage", str(storage), "--name", "dk",
            "--max-concurrent", "1", "--scheduler", "fifo", *[a for o in TINY for a in ("--set", o)]]
    env = dict(os.environ, HOME=str(tmp_path))
    driver = subprocess.Popen([sys.executable, "-m", "timm_tricks", "tune", *args], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not _snapshot_has(exp, "2_", 1):  # Tune has saved trial 2's first epoch and its checkpoint
            assert driver.poll() is None and time.monotonic() < deadline, "the search ended before the kill"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, as a lost head node would
        driver.wait()
    (first,) = exp.glob("trial_fn_*_1_*")
    finished = (first / "run" / "metrics.json").stat().st_mtime_ns
    assert not (exp / "trials.csv").exists()
    # The kill may land while Tune deletes an old checkpoint: leave trial 2's snapshot checkpoints as such a kill
    # does, holding only their COMPLETE marker. The resume must not adopt them, and continues from the trial's own.
    (second,) = exp.glob("trial_fn_*_2_*")
    half_deleted = [f for ckpt in second.glob("checkpoint_*") for f in ckpt.iterdir() if f.name != "COMPLETE"]
    assert half_deleted and (second / "run" / "checkpoints").is_dir()
    for f in half_deleted:
        f.unlink()

    epochs_4 = args[:5] + ["4"] + args[6:]  # --epochs 4 instead of 3
    other = _tune([*epochs_4, "--resume"], tmp_path, check=False)
    assert other.returncode == 2 and "these differ: updates" in other.stderr  # refused, nothing touched
    resumed = _tune([*args, "--resume"], tmp_path)
    rows = list(csv.DictReader(open(exp / "trials.csv")))
    assert len(rows) == 3 and all(r["status"] == "completed" and r["epochs"] == "3" for r in rows)
    # the restored experiment prints this run's status lines (not the first run's pickled callback's)
    assert re.search(r"^\[\d+:\d\d\] trial 3 epoch 3/3 ", resumed.stderr, re.M), resumed.stderr[-3000:]
    assert len({r["optim.lr"] for r in rows}) == 3
    assert len(list(exp.glob("trial_fn_*"))) == 3  # no trial started twice
    for trial in exp.glob("trial_fn_*"):
        summary = list(csv.DictReader(open(trial / "run" / "summary.csv")))
        assert [r["epoch"] for r in summary] == ["0", "1", "2"], trial.name  # each epoch trained once
    assert (first / "run" / "metrics.json").stat().st_mtime_ns == finished  # the finished trial did not run again


@pytest.mark.slow
def test_a_trial_with_two_workers_runs_as_a_ray_train_run(tmp_path):
    space = tmp_path / "one.yaml"
    space.write_text("recipe: digits\nspace:\n  optim.lr: {choice: [0.1]}\n")
    storage = tmp_path / "results"
    _tune(["--space", str(space), "--num-samples", "1", "--epochs", "2", "--scheduler", "fifo", "--storage",
           str(storage), "--name", "w2", "--workers-per-trial", "2", "--cpus-per-trial", "1",
           *[a for o in TINY for a in ("--set", o)]], tmp_path)
    (row,) = list(csv.DictReader(open(storage / "w2" / "trials.csv")))
    assert row["status"] == "completed" and row["epochs"] == "2"
    trial = storage / "w2" / row["path"].rsplit("/", 1)[-1]
    ckpt = max((trial / "run" / "checkpoints").glob("ckpt-*"))
    # two processes (the checkpoint keeps each one's running loss) at 64 images each: 1438 // 128 = 11 steps an epoch
    assert ckpt.name == "ckpt-000000022"
    assert len(json.loads((ckpt / "trainer_state.json").read_text())["loss_sums"]) == 2
    assert json.loads((trial / "run" / "metrics.json").read_text())["eval_count"] == 359
    assert (trial / "ray_train").is_dir() and list(trial.glob("checkpoint_*"))  # Tune holds the epoch's checkpoint


def test_shared_storage_is_read_from_the_mount_table(tmp_path):
    from timm_tricks.ray_cluster import is_shared_storage

    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nserver:/export /mnt/shared nfs4 rw 0 0\n"
                      "tmpfs /mnt/shared/scratch tmpfs rw 0 0\n")
    assert is_shared_storage("/mnt/shared/tune/exp", mounts=str(mounts))
    assert not is_shared_storage("/home/me/runs", mounts=str(mounts))
    assert not is_shared_storage("/mnt/shared/scratch/x", mounts=str(mounts))  # the longest mount point wins


def test_cluster_options_count_the_workers_of_a_trial_and_refuse_what_cannot_run():
    from timm_tricks.experiment import ClusterOptions

    def workers(gpus, given):
        return ClusterOptions(gpus_per_trial=gpus, workers_per_trial=given).workers

    assert (workers(0, None), workers(1, None), workers(4, None), workers(0, 2)) == (1, 1, 4, 2)
    for kwargs, message in [({"gpus_per_trial": 3, "workers_per_trial": 2}, "does not split"),
                            ({"gpus_per_trial": 1.5}, "must be a whole number"),
                            ({"workers_per_trial": 0}, "--workers-per-trial must be at least 1"),
                            ({"max_concurrent": 0}, "--max-concurrent must be at least 1")]:
        with pytest.raises(ConfigError, match=message):
            ClusterOptions(**kwargs)
    # the commands' flags carry the fields' names
    args = argparse.Namespace(address="auto", storage="/shared", gpus_per_trial=2.0, cpus_per_trial=8.0,
                              workers_per_trial=None, max_concurrent=3, max_failures=1, download=True, seed=7)
    cluster = ClusterOptions.from_args(args)
    assert cluster == ClusterOptions("auto", "/shared", 2.0, 8.0, None, 3, 1, True) and cluster.workers == 2
    assert cluster.recorded() == {"gpus_per_trial": 2.0, "cpus_per_trial": 8.0, "workers": 2}


def test_search_options_refuse_an_unknown_scheduler_or_an_empty_search():
    from timm_tricks.tune import SearchOptions

    for kwargs, message in [({"scheduler": "hyperband"}, "unknown scheduler 'hyperband'; valid: asha, pbt, fifo"),
                            ({"search": "grid"}, "unknown search 'grid'"), ({"num_samples": 0}, "--num-samples"),
                            ({"grace_period": 0}, "--grace-period must be at least 1")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            SearchOptions(**kwargs)


def test_the_trial_factory_gives_a_trainable_named_trial_fn_that_holds_one_trials_resources():
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    from timm_tricks.experiment import ClusterOptions, make_trial

    one = make_trial("digits", cluster=ClusterOptions(cpus_per_trial=2))
    assert one.__name__ == "trial_fn" and one._resources == PlacementGroupFactory([{"CPU": 2}])
    # a trial of several workers only waits on its Ray Train run, which holds the resources
    many = make_trial({"a": "digits"}, cluster=ClusterOptions(cpus_per_trial=2, workers_per_trial=2))
    assert many._resources == PlacementGroupFactory([{"CPU": 0.01}])


def test_no_function_of_the_ray_runtime_takes_more_than_8_parameters_and_no_module_is_over_450_lines():
    import timm_tricks.ablate
    import timm_tricks.experiment
    import timm_tricks.tune

    for module in (timm_tricks.experiment, timm_tricks.tune, timm_tricks.ablate):
        source = inspect.getsource(module)
        assert len(source.splitlines()) <= 450, module.__name__
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                count = len(a.posonlyargs + a.args + a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                count -= bool(a.args) and a.args[0].arg in ("self", "cls")
                assert count <= 8, f"{module.__name__}.{node.name} takes {count}"


def test_resume_keeps_the_first_runs_options_and_a_refused_start_leaves_nothing(tmp_path):
    from timm_tricks.experiment import OPTIONS_FILE, experiment_guard

    exp = tmp_path / "exp"
    first = {"recipe": "digits", "overrides": ["train.epochs=3"], "gpus_per_trial": 0}
    with experiment_guard(exp, first, resume=False):
        (exp / "trial").mkdir()
    assert json.loads((exp / OPTIONS_FILE).read_text()) == first
    with experiment_guard(exp, dict(first), resume=True):  # the same options resume
        pass
    with pytest.raises(ConfigError, match=r"these differ: overrides: \['train.epochs=3'\] then, \['train.epochs=5'\]"):
        with experiment_guard(exp, dict(first, overrides=["train.epochs=5"]), resume=True):
            pass
    assert (exp / "trial").is_dir()  # a refused resume touches nothing
    # a check that fails after the start (inside the block) removes a folder this call created, and only that
    with pytest.raises(ConfigError):
        with experiment_guard(tmp_path / "new", first, resume=False):
            raise ConfigError("a trial asks for 4 CPUs")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError):
        with experiment_guard(exp, first, resume=True):
            raise ConfigError("a trial asks for 4 CPUs")
    assert (exp / "trial").is_dir()
