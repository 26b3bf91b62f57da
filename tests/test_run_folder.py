"""One run per folder: the claim and its lock, resume under the same config only, folders that are not runs, and a
failed start that leaves nothing behind."""

import os
import subprocess
import sys

import pytest

from timm_tricks.config import ConfigError, load_config
from timm_tricks.run_folder import RunFolder, write_atomic
from timm_tricks.train import Trainer

FAST = ["model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=128", "train.epochs=1"]
HOLD = """
import sys, time
from timm_tricks.run_folder import RunFolder
RunFolder(sys.argv[1], resume=False).claim("name: holder\\n")
print("claimed", flush=True)
time.sleep(120)
"""


def test_a_folder_in_use_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(ConfigError, match=f"in use by another run \\(process {holder.pid}\\)"):
            RunFolder(out, resume=True).claim("name: second\n")
        assert (out / "config.yaml").read_text() == "name: holder\n"  # untouched
    finally:
        holder.kill()
        holder.wait()
    folder = RunFolder(out, resume=True)  # the kernel dropped the lock with the process: a resume may claim it
    folder.claim("name: holder\n")
    folder.release()


@pytest.mark.slow
def test_two_runs_started_together_on_one_folder_one_is_refused(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "timm_tricks", "train", "--recipe", "digits", "--output", str(out),
            *[a for o in FAST for a in ("--set", o)]]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=900), p.stderr.read()) for p in procs)
    assert [r[0] for r in results] == [0, 2], results
    assert "in use by another run" in results[1][1] or "already holds a run" in results[1][1]
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 2  # one run's epoch, once


def test_resume_refuses_another_config_but_allows_more_epochs(tmp_path):
    out = tmp_path / "run"
    Trainer(load_config("digits", FAST), out).fit()
    config_before = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="another config .*data.batch_size: 128 in the run, 64 now.*optim.lr") as e:
        Trainer(load_config("digits", FAST + ["data.batch_size=64", "optim.lr=0.5"]), out, resume=True)
    assert "\n" not in str(e.value) and (out / "config.yaml").read_text() == config_before
    with pytest.raises(ConfigError, match="model.name: 'resnet18d_tricks' in the run, 'resnet9_tricks' now"):
        Trainer(load_config("digits", FAST[1:] + ["model.name=resnet9_tricks"]), out, resume=True)
    Trainer(load_config("digits", FAST[:-1] + ["train.epochs=2", "data.workers=0"]), out, resume=True).fit()
    assert [r.split(",")[0] for r in (out / "summary.csv").read_text().splitlines()] == ["epoch", "0", "1"]
    assert "epochs: 2" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("files", [{"model.safetensors": b"mine", "metrics.json": b"{}"},
                                   {"summary.csv": b"0,1.0,2.0\n"}])
def test_a_folder_with_files_of_another_kind_is_refused_untouched(tmp_path, files):
    out = tmp_path / "run"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    for resume, message in ((False, "already holds a run"), (True, "no config.yaml: it is not a run")):
        with pytest.raises(ConfigError, match=message):
            Trainer(load_config("digits", FAST), out, resume=resume)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == files


def test_a_start_that_fails_before_its_first_checkpoint_leaves_nothing_behind(tmp_path):
    new = tmp_path / "deep" / "run"
    with pytest.raises(ConfigError, match="has no train/ folder"):
        Trainer(load_config("digits", FAST + [f"data.source=folder:{tmp_path}/none"]), new)
    assert not (tmp_path / "deep").exists()
    mine = tmp_path / "mine"  # a folder the user made, with a file of theirs: kept as it was
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    trainer = Trainer(load_config("digits", FAST + ["optim.lr=1e30", "schedule.warmup_epochs=0",
                                                    "loss.label_smoothing=0"]), mine)
    with pytest.raises(Exception, match="non-finite loss"):
        trainer.fit()
    assert sorted(p.name for p in mine.iterdir() if p.name != ".lock") == ["notes.txt"]
    Trainer(load_config("digits", FAST), mine).fit()  # the same command again simply runs
    assert (mine / "model.safetensors").is_file()


def test_final_files_are_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        write_atomic(path, b"new weights")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    monkeypatch.undo()
    write_atomic(path, b"new weights")
    assert path.read_bytes() == b"new weights" and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
