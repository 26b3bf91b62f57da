"""Checkpoint files: the tensor-tree format against the optimizer's own state, integrity records, and resume that
falls back past a damaged newest checkpoint."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from timm_tricks.checkpoint import file_record, load_tree, save_tree, verify_checkpoint
from timm_tricks.config import load_config
from timm_tricks.train import Trainer


def test_an_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    """Adam's and SGD's state dicts (int-keyed state, tuples of betas, tensor steps, None, bools) come back equal,
    and the reloaded optimizer takes the same next step as the original."""
    for make in (lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.95)),
                 lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = make(model.parameters())
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(5, 4)).square().sum().backward()
            opt.step()
        save_tree(opt.state_dict(), tmp_path / "opt.safetensors")
        loaded = load_tree(tmp_path / "opt.safetensors")
        assert loaded["param_groups"] == opt.state_dict()["param_groups"]
        for k, v in opt.state_dict()["state"].items():
            assert loaded["state"][k].keys() == v.keys()
            assert all(torch.equal(loaded["state"][k][n], t) for n, t in v.items())
        twin = torch.nn.Linear(4, 3)
        twin.load_state_dict(model.state_dict())
        twin_opt = make(twin.parameters())
        twin_opt.load_state_dict(loaded)
        x = torch.randn(5, 4)
        for m, o in ((model, opt), (twin, twin_opt)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
        assert torch.equal(model.weight, twin.weight)


FAST = ["model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=128", "train.epochs=1",
        "ema.enabled=true", "train.checkpoint_every_steps=4", "train.keep_checkpoints=10"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "full"
    Trainer(load_config("digits", FAST), out).fit()
    return out


def _as_killed_after_step_9(full_run, out):
    """The full run's folder as a run killed after step 9 would have left it: checkpoints at steps 4 and 8, no
    final files."""
    shutil.copytree(full_run, out)
    for p in ("model.safetensors", "model_ema.safetensors", "metrics.json", "checkpoints/ckpt-000000011"):
        shutil.rmtree(out / p) if (out / p).is_dir() else (out / p).unlink()
    (out / "checkpoints" / "best.txt").unlink(missing_ok=True)
    return out / "checkpoints" / "ckpt-000000008"


def test_the_marker_records_the_size_and_hash_of_every_file(full_run):
    ckpt = full_run / "checkpoints" / "ckpt-000000008"
    files = json.loads((ckpt / "COMPLETE").read_text())["files"]
    # mid-epoch: no summary.csv yet (the epoch-end checkpoint carries one)
    assert sorted(files) == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    assert "summary.csv" in json.loads((full_run / "checkpoints" / "ckpt-000000011" / "COMPLETE").read_text())["files"]

    for name, record in files.items():
        data = (ckpt / name).read_bytes()
        assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} == file_record(ckpt / name)
    assert verify_checkpoint(ckpt) is None


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "ema.safetensors",
                                  "trainer_state.json"])
def test_a_truncated_file_in_the_newest_checkpoint_falls_back_to_the_one_before(full_run, tmp_path, name, capsys):
    out = tmp_path / "run"
    newest = _as_killed_after_step_9(full_run, out)
    data = (newest / name).read_bytes()
    (newest / name).write_bytes(data[: len(data) // 2])
    assert "bytes, not the" in verify_checkpoint(newest)
    Trainer(load_config("digits", FAST), out, resume=True).fit()
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "ckpt-000000008" in warnings[0] and name in warnings[0], err
    # resumed from step 4 and trained steps 5-11 again: the same final weights as the uninterrupted run
    for final in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(str(full_run / final)), load_file(str(out / final))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), final


def test_no_intact_checkpoint_is_one_line(full_run, tmp_path):
    from timm_tricks.checkpoint import CheckpointError

    out = tmp_path / "run"
    _as_killed_after_step_9(full_run, out)
    for ckpt in (out / "checkpoints").glob("ckpt-*"):
        (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no checkpoint in .* is intact .*model.safetensors has 0 bytes"):
        Trainer(load_config("digits", FAST), out, resume=True).fit()


def _fake_checkpoint(path, step, data=b"w"):
    """A checkpoint folder whose marker records its files (contents need not be loadable for adoption)."""
    path.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        (path / name).write_bytes(data + name.encode())
    files = {p.name: file_record(p) for p in path.iterdir()}
    (path / "COMPLETE").write_text(json.dumps({"global_step": step, "files": files}))
    return path


class _TuneCheckpoint:
    def __init__(self, path):
        self.path = str(path)

    def as_directory(self):
        import contextlib

        return contextlib.nullcontext(self.path)


def test_tune_adopts_only_a_whole_checkpoint_and_never_deletes_the_trials_own_first(tmp_path):
    """The driver was killed while Tune deleted an old trial checkpoint: the folder Tune's snapshot names holds
    only its marker. Adopting it fails, and the trial's own good checkpoint is left in place to resume from."""
    from timm_tricks.experiment import _adopt

    run = tmp_path / "trial" / "run"
    own = _fake_checkpoint(run / "checkpoints" / "ckpt-000000022", 22)
    (run / "config.yaml").write_text("name: trial\n")
    gone = _fake_checkpoint(tmp_path / "tune" / "checkpoint_000001", 11)
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        (gone / name).unlink()
    assert not _adopt(_TuneCheckpoint(gone), run / "checkpoints")
    assert verify_checkpoint(own) is None and (run / "config.yaml").exists()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    # a whole one (a PBT donor's) replaces the trial's checkpoints
    donor = _fake_checkpoint(tmp_path / "tune" / "checkpoint_000002", 33, data=b"donor")
    assert _adopt(_TuneCheckpoint(donor), run / "checkpoints")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt-000000033"]
    assert verify_checkpoint(run / "checkpoints" / "ckpt-000000033") is None
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
