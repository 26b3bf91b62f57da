"""``timm:NAME[:ROOT]`` sources on small files the tests write: torchvision's (``torch/image_folder``,
``torch/mnist``, ``torch/cifar10`` read safely), Hugging Face's (``hfds/``, ``hfids/``), webdataset shards (``wds/``),
and the one-line refusal when a source's package is missing (``tfds/``: tensorflow is not installed here).

Streamed sources are checked for what :class:`timm_tricks.batches.IterableBatches` promises: equal steps on every
process, disjoint process shares, every validation sample once, and an epoch stream that depends on (seed, epoch)
alone, so a resume skips to the same batches.
"""

import io
import json
import os
import pickle
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from timm_tricks.batches import FileBatches, IterableBatches, Shard
from timm_tricks.build import build_batches
from timm_tricks.cli import main
from timm_tricks.config import load_config
from timm_tricks.data import CifarImages, DataError, parse_source, timm_datasets
from timm_tricks.train import Trainer

CPU = torch.device("cpu")
TINY = ["model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=8", "train.epochs=1", "data.workers=0",
        "augment.mean=[0.5, 0.5, 0.5]", "augment.std=[0.5, 0.5, 0.5]"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No hub at run time: Hugging Face's libraries offline, their cache under the test's folder."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def ident(img):
    """A sample as ``[id, draw]``: the id the test wrote in the red channel and one draw of torch's global RNG
    (the stand-in of a random augmentation)."""
    return torch.tensor([img.getpixel((0, 0))[0], int(torch.randint(0, 1 << 30, ()))])


# ------------------------------------------------------------------------------------------------------------------
# torchvision: torch/image_folder, torch/mnist, torch/cifar10


def _png_folder(root, splits=("train", "val"), classes=("cat", "dog"), per_class=3):
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (12 + k, 12), (100 * s + 10 * c + k, c, 0)).save(root / split / name / f"{k}.png")


def test_torch_image_folder_takes_root_and_finds_the_split_folders(tmp_path):
    _png_folder(tmp_path, splits=("train", "validation"))
    assert parse_source(f"timm:torch/image_folder:{tmp_path}").arg == f"torch/image_folder:{tmp_path}"
    train, val, n = timm_datasets(f"torch/image_folder:{tmp_path}", None, None)
    assert n == 2 and train.classes == ["cat", "dog"] and (len(train), len(val)) == (6, 6)
    img, label = train[4]
    assert (img.mode, img.size, img.getpixel((0, 0)), label) == ("RGB", (13, 12), (11, 1, 0), 1)
    assert val[0][0].getpixel((0, 0)) == (100, 0, 0)  # validation/ (timm's _search_split synonyms of val)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    train, _, _ = timm_datasets(f"torch/image_folder:{tmp_path}", None, None)
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        [train[i] for i in range(len(train))]


@pytest.mark.parametrize("name", ["torch/image_folder", ""])
def test_a_folder_without_split_folders_is_refused(tmp_path, name):
    _png_folder(tmp_path, splits=("all",))
    with pytest.raises(DataError, match="has no train/ and val/ folders .* would read the same images"):
        timm_datasets(f"{name}:{tmp_path / 'all'}", None, None)
    with pytest.raises(DataError, match="needs its ROOT folder: timm:torch/image_folder:ROOT"):
        timm_datasets("torch/image_folder", None, None)


def _idx(path, magic, array):
    path.write_bytes(np.array([magic, *array.shape], ">i4").tobytes() + array.astype(np.uint8).tobytes())


def test_torch_mnist_reads_its_raw_files_and_gives_rgb(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 5), ("t10k", 3)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", 2051, np.arange(n * 28 * 28).reshape(n, 28, 28) % 251)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, np.arange(n) % 10)
    train, val, n = timm_datasets(f"torch/mnist:{tmp_path}", None, None)
    assert n == 10 and (len(train), len(val)) == (5, 3)
    img, label = train[2]  # MNIST's grey image, converted to RGB for the 3-channel pipelines
    assert (img.mode, img.getpixel((1, 0)), label) == ("RGB", ((2 * 784 + 1) % 251,) * 3, 2)


def _write_cifar(root, n_per_file=4, n_test=3, payload_in=None, marker=None):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_per_file
        data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()
        obj = {"data": data, "labels": labels}
        if name == payload_in:
            obj["data"] = _Payload(marker)
        (base / name).write_bytes(pickle.dumps(obj, protocol=2))
        written[name] = (data, labels)
    return written


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_torch_cifar10_is_read_by_the_safe_reader(tmp_path):
    written = _write_cifar(tmp_path)
    train, val, n = timm_datasets(f"torch/cifar10:{tmp_path}", None, None)
    assert isinstance(train, CifarImages) and n == 10 and (len(train), len(val)) == (20, 3)
    img, label = train[5]  # data_batch_2, row 1: CHW rows as torchvision's CIFAR10 gives them, HWC in the image
    data, labels = written["data_batch_2"]
    assert label == labels[1] and np.array_equal(np.asarray(img), data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert val[2][1] == written["test_batch"][1][2]


@pytest.mark.parametrize("where", ["data_batch_3", "test_batch"])
def test_a_pickle_payload_in_a_timm_cifar_file_never_runs(tmp_path, where):
    marker = tmp_path / "ran"
    _write_cifar(tmp_path / "data", payload_in=where, marker=marker)
    with pytest.raises(DataError, match=f"refused CIFAR file '.*{where}'") as e:
        timm_datasets(f"torch/cifar10:{tmp_path / 'data'}", None, None)
    assert "\n" not in str(e.value) and not marker.exists()


# ------------------------------------------------------------------------------------------------------------------
# Missing packages


@pytest.mark.parametrize(("name", "module", "package", "extra"), [
    ("wds/imagenet", "webdataset", "webdataset", "wds"),
    ("hfds/beans", "datasets", "datasets", "hfds"),
    ("HFIDS/beans", "datasets", "datasets", "hfds"),
    ("tfds/imagenet2012", "tensorflow", "tensorflow", "tfds"),
])
def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys, name, module, package,
                                                         extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as for a package that is not installed
    message = (f"data source 'timm:{name}:{tmp_path}' needs the package {package!r}, which is not installed: "
               f"pip install 'timm_tricks[{extra}]'")
    with pytest.raises(DataError) as e:
        timm_datasets(f"{name}:{tmp_path}", None, None)
    assert str(e.value) == message
    argv = ["train", "--recipe", "digits", "--output", str(tmp_path / "run"), "--data", f"timm:{name}:{tmp_path}"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"timm-tricks: error: {message}"]


# ------------------------------------------------------------------------------------------------------------------
# wds: timm's webdataset reader


def _png_bytes(i):
    b = io.BytesIO()
    Image.new("RGB", (8, 8), (i, i % 3, 0)).save(b, "PNG")
    return b.getvalue()


def _wds(root, train=(12, 12), val=(5, 3), classes=3, extra_member=None):
    """Shards in timm's webdataset layout: ``key.png`` + ``key.cls`` per sample and ``_info.json`` naming the
    ``train`` and ``validation`` splits. Train ids count from 0, validation ids from 100; the label is id % 3."""
    root.mkdir(parents=True, exist_ok=True)
    info, start = {"name": "tiny", "splits": {}}, {"train": 0, "validation": 100}
    for split, lengths in (("train", train), ("validation", val)):
        names, i = [], start[split]
        for k, length in enumerate(lengths):
            names.append(f"tiny-{split}-{k:06d}.tar")
            with tarfile.open(root / names[-1], "w") as tar:
                for _ in range(length):
                    members = [("png", _png_bytes(i)), ("cls", str(i % classes).encode())] + (extra_member or [])
                    for ext, data in members:
                        member = tarfile.TarInfo(f"{i:06d}.{ext}")
                        member.size = len(data)
                        tar.addfile(member, io.BytesIO(data))
                    i += 1
        info["splits"][split] = {"name": split, "num_samples": sum(lengths), "filenames": names,
                                 "shard_lengths": list(lengths)}
    (root / "_info.json").write_text(json.dumps(info))
    return root


def _wds_batches(root, rank=0, world=1, batch=4, workers=0, seed=3):
    train, val, n = timm_datasets(f"wds/tiny:{root}", ident, ident, seed=seed)
    assert n is None  # .cls labels: the reader knows no class names (model.num_classes says how many)
    return IterableBatches(train, val, 3, Shard(train.reader.num_samples, batch, rank, world, seed), CPU, workers)


def _epoch(batches, epoch, start_step=0):
    return [(x, y) for x, y in batches.train_batches(epoch, start_step)]


def _ids(epoch_batches):
    return [x[:, 0].tolist() for x, _ in epoch_batches]


def test_wds_one_process_sees_every_sample_once_an_epoch_in_a_fresh_order(tmp_path):
    b = _wds_batches(_wds(tmp_path))
    assert (b.steps_per_epoch, b.num_classes) == (6, 3)  # 24 // (4 x 1)
    e0, e1 = _epoch(b, 0), _epoch(b, 1)
    for e in (e0, e1):
        assert len(e) == 6 and sorted(sum(_ids(e), [])) == list(range(24))
        assert all(torch.equal(y, x[:, 0] % 3) for x, y in e)  # the .cls labels
    assert _ids(e0) != _ids(e1)
    assert sorted(sum((x[:, 0].tolist() for x, _ in b.eval_batches(3)), [])) == list(range(100, 108))


@pytest.mark.parametrize("workers", [0, 2])
def test_wds_epoch_stream_depends_on_seed_and_epoch_only_and_resume_skips_to_the_same_batches(tmp_path, workers):
    root = _wds(tmp_path)
    ran = _wds_batches(root, workers=workers)
    _epoch(ran, 0)
    after_epoch_0 = _epoch(ran, 1)
    fresh = _wds_batches(root, workers=workers)
    resumed = _epoch(fresh, 1, start_step=2)  # a new process resuming at epoch 1, step 2
    assert len(resumed) == 4
    pairs = zip(after_epoch_0[2:], resumed, strict=True)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)
    assert _ids(_epoch(_wds_batches(root, workers=workers, seed=4), 1)) != _ids(after_epoch_0)  # the seed counts


def test_wds_processes_take_disjoint_shards_and_the_same_number_of_steps(tmp_path):
    root = _wds(tmp_path, train=(12, 12, 12), val=(5, 3))
    ranks = [_wds_batches(root, rank=r, world=2) for r in (0, 1)]
    assert [b.steps_per_epoch for b in ranks] == [4, 4]  # 36 // (4 x 2), though rank 0 holds 24 and rank 1 12
    seen = [sum(_ids(_epoch(b, 0)), []) for b in ranks]
    assert [len(s) for s in seen] == [16, 16]
    shards = [{i // 12 for i in s} for s in seen]  # timm deals whole shards, in an order shuffled by seed + epoch
    assert not set(seen[0]) & set(seen[1]) and sorted(map(len, shards)) == [1, 2] and shards[0] | shards[1] == {0, 1, 2}
    one = seen[0] if len(shards[0]) == 1 else seen[1]
    assert len(set(one)) == 12  # the process with one shard of 12 passes over it again for its 16
    evals = [sum((x[:, 0].tolist() for x, _ in b.eval_batches(2)), []) for b in ranks]
    # validation shards of 5 and 3: read whole by their process, every sample counted once (timm's with_epoch
    # would cut rank 0 to 4 and repeat one of rank 1's)
    assert sorted(evals[0]) == list(range(100, 105)) and sorted(evals[1]) == list(range(105, 108))


def test_wds_a_process_without_shards_is_one_line(tmp_path):
    b = _wds_batches(_wds(tmp_path, train=(12, 12)), rank=2, world=3)
    with pytest.raises(DataError, match="process 2 of 3 got no full batch of 4"):
        _epoch(b, 0)


def test_a_pickle_member_in_a_wds_shard_is_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    root = _wds(tmp_path / "d", train=(8,), val=(4,), extra_member=[("pyd", pickle.dumps(_Payload(marker)))])
    b = _wds_batches(root)
    assert len(_epoch(b, 0)) == 2 and len(list(b.eval_batches(4))) == 1
    assert not marker.exists()


def test_trainer_fits_a_wds_source_and_resumes_mid_epoch_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    root = _wds(tmp_path / "shards", train=(16, 16), val=(6,))
    cfg = load_config(None, TINY + [f"data.source=timm:wds/tiny:{root}", "model.num_classes=3",
                                    "train.checkpoint_every_steps=1"])
    metrics = Trainer(cfg, tmp_path / "full").fit()
    assert metrics["eval_count"] == 6 and 0 <= metrics["eval_top1"] <= 100

    class Stop(Exception):
        pass

    def stop(state):
        if state.global_step == 2:
            raise Stop

    with pytest.raises(Stop):
        Trainer(cfg, tmp_path / "cut", step_callback=stop).fit()
    resumed = Trainer(cfg, tmp_path / "cut", resume=True).fit()
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in metrics.items() if k != "seconds"}
    full, cut = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("full", "cut"))
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_trainer_fits_torch_image_folder(tmp_path):
    _png_folder(tmp_path / "data", per_class=8)
    cfg = load_config(None, TINY + [f"data.source=timm:torch/image_folder:{tmp_path / 'data'}"])
    batches = build_batches(cfg, parse_source(cfg.data.source), lambda n: Shard(n, 8, 0, 1, 0), CPU)
    assert isinstance(batches, FileBatches) and (batches.num_classes, batches.steps_per_epoch) == (2, 2)
    metrics = Trainer(cfg, tmp_path / "run").fit()
    assert metrics["eval_count"] == 16


# ------------------------------------------------------------------------------------------------------------------
# Hugging Face datasets: hfds (by index) and hfids (streamed), from a local image folder


def _hf_folder(root, per_class=4):
    _png_folder(root, splits=("train", "validation"), per_class=per_class)
    return root


def test_hfds_reads_a_local_image_folder_by_index(tmp_path):
    root = _hf_folder(tmp_path / "imgs")
    cfg = load_config(None, TINY + [f"data.source=timm:hfds/{root}:{tmp_path / 'cache'}"])
    batches = build_batches(cfg, parse_source(cfg.data.source), lambda n: Shard(n, 4, 0, 1, 0), CPU)
    assert isinstance(batches, FileBatches) and (batches.num_classes, batches.steps_per_epoch) == (2, 2)
    assert (len(batches.train), len(batches.val)) == (8, 8)
    x, y = next(iter(batches.eval_batches(8)))
    assert x.shape == (8, 3, 16, 16) and sorted(y.tolist()) == [0] * 4 + [1] * 4


def test_hfids_needs_split_sizes_then_streams_disjoint_shares(tmp_path):
    root = _hf_folder(tmp_path / "imgs", per_class=6)
    with pytest.raises(DataError, match="Dataset length is unknown.*pass --download to prepare it into ROOT"):
        timm_datasets(f"hfids/{root}:{tmp_path / 'cache'}", ident, ident)
    ranks = []
    for r in (0, 1):
        train, val, n = timm_datasets(f"hfids/{root}:{tmp_path / 'cache'}", ident, ident, download=True, seed=1)
        assert n == 2 and train.reader.num_samples == 12
        ranks.append(IterableBatches(train, val, n, Shard(12, 3, r, 2, 1), CPU, 0))
    assert [b.steps_per_epoch for b in ranks] == [2, 2]
    seen = [sum(_ids(_epoch(b, 0)), []) for b in ranks]
    assert [len(s) for s in seen] == [6, 6] and not set(seen[0]) & set(seen[1])
    ids = {c * 10 + k for c in range(2) for k in range(6)}  # red = 10 x class + k in the train split
    assert set(seen[0]) | set(seen[1]) == ids
    evals = [sum((x[:, 0].tolist() for x, _ in b.eval_batches(4)), []) for b in ranks]
    assert sorted(evals[0] + evals[1]) == sorted(100 + i for i in ids)  # every validation image once
    again = _epoch(ranks[0], 1)
    assert _ids(_epoch(ranks[0], 1, start_step=1)) == _ids(again)[1:]
