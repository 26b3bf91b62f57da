"""Data sources on small files the tests make."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from timm_tricks.data import (
    DataError,
    channel_stats,
    folder_datasets,
    load_cifar,
    load_digits,
    load_synthetic,
    normalize,
    parse_source,
    stats_on,
    timm_datasets,
)


def test_parse_source():
    assert parse_source("digits").kind == "digits"
    assert parse_source("synthetic:64").arg == "64"
    assert parse_source("folder:/a/b:c").arg == "/a/b:c"
    assert parse_source("cifar10").arg is None and parse_source("cifar10").in_memory
    assert not parse_source("folder:/x").in_memory
    for bad, msg in [("imagenet", "unknown data source 'imagenet'"), ("cifar", "did you mean 'cifar10'"),
                     ("folder", "needs an argument"), ("synthetic:abc", "whole number"), ("digits:3", "no argument")]:
        with pytest.raises(DataError, match=msg):
            parse_source(bad)


def test_digits_split_and_shape():
    d = load_digits(image_size=32)
    assert d.train_images.shape == (1438, 3, 32, 32) and d.val_images.shape == (359, 3, 32, 32)
    assert d.train_images.dtype == torch.uint8 and d.num_classes == 10
    assert torch.equal(d.train_images[:, 0], d.train_images[:, 2])  # grey repeated over RGB
    assert set(d.val_labels.tolist()) == set(range(10))
    again = load_digits(image_size=32)
    assert torch.equal(again.val_labels, d.val_labels)  # fixed seeded split
    # statistics are those of the train split, on the 0-1 scale
    x = d.train_images.double() / 255
    assert d.mean[0] == pytest.approx(x[:, 0].mean().item()) and d.std[0] == pytest.approx(x[:, 0].std().item())


def test_normalize_formula():
    images = torch.tensor([[[[0, 255]], [[51, 102]], [[255, 0]]]], dtype=torch.uint8)
    out = normalize(images, (0.5, 0.2, 0.5), (0.5, 0.1, 0.25))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, 0.0, 2.0]))
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([1.0, 2.0, -2.0]))
    mean, std = channel_stats(torch.full((4, 3, 2, 2), 51, dtype=torch.uint8))
    assert mean == pytest.approx((0.2,) * 3)
    # the stats as tensors on the device, as a batch loop passes them: the same numbers
    data = load_synthetic(8, image_size=4)
    assert torch.equal(normalize(data.train_images, *stats_on(data, torch.device("cpu"))),
                       normalize(data.train_images, data.mean, data.std))


def test_in_memory_batches_copy_nothing_to_the_device_per_step(monkeypatch):
    # a host-to-device copy from pageable memory makes the host wait for a GPU: the mean and std go to the device
    # once, when the batches are built, and a step's batch is made from tensors already there
    from timm_tricks.batches import Shard, TensorBatches

    data = load_synthetic(64, image_size=8)
    batches = TensorBatches(data, Shard(size=64, batch=16, seed=0, rank=0, world=1), torch.device("cpu"))
    made = []  # tensors made from Python values during the epoch: on a GPU each is such a copy
    for name in ("tensor", "as_tensor"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda x, *a, _real=real, **k: (
            made.append(x) if not isinstance(x, torch.Tensor) else None) or _real(x, *a, **k))
    steps = list(batches.train_batches(0))
    assert len(steps) == 4 and made == []
    assert torch.equal(steps[0][0], normalize(data.train_images[batches.shard.order(0)[:16]], data.mean, data.std))


def test_synthetic():
    d = load_synthetic(40, image_size=16)
    assert d.train_images.shape == (40, 3, 16, 16) and d.val_images.shape == (10, 3, 16, 16)


def _write_cifar(root, num_classes, n_train_per_file, n_test):
    rng = np.random.default_rng(0)
    if num_classes == 10:
        base = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": n_train_per_file for i in range(1, 6)} | {"test_batch": n_test}
        key = "labels"
    else:
        base = root / "cifar-100-python"
        files = {"train": n_train_per_file, "test": n_test}
        key = "fine_labels"
    base.mkdir(parents=True)
    written = {}
    for name, n in files.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, n).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_reads_the_pickle_format(tmp_path, num_classes):
    written = _write_cifar(tmp_path, num_classes, 6, 4)
    d = load_cifar(tmp_path, num_classes)
    first = "data_batch_1" if num_classes == 10 else "train"
    test = "test_batch" if num_classes == 10 else "test"
    assert d.num_classes == num_classes
    assert d.train_images.shape == ((30 if num_classes == 10 else 6), 3, 32, 32)
    assert torch.equal(d.train_images[0].flatten(), torch.from_numpy(written[first][0][0]))  # CHW row order
    assert d.val_labels.tolist() == written[test][1]


def test_cifar_missing_files_name_the_folder_and_download(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_cifar(tmp_path / "nothing", 10)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar(tmp_path, 10)


def _make_folder(root, classes=("cat", "dog"), per_class=3, size=20):
    for split in ("train", "val"):
        for i, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (size + k, size), (40 * i, 10 * k, 200)).save(root / split / c / f"{k}.jpg")


def test_folder_layout(tmp_path):
    _make_folder(tmp_path)
    train, val, n = folder_datasets(tmp_path, None, None)
    assert n == 2 and len(train) == 6 and len(val) == 6
    img, label = train[4]
    assert img.size == (21, 20) and label == 1


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="has no train/ folder"):
        folder_datasets(tmp_path, None, None)
    _make_folder(tmp_path)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    train, _, _ = folder_datasets(tmp_path, None, None)
    with pytest.raises(DataError, match="broken.jpg"):
        [train[i] for i in range(len(train))]
    (tmp_path / "val" / "bird").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "bird" / "0.png")
    with pytest.raises(DataError, match="different classes"):
        folder_datasets(tmp_path, None, None)


def test_timm_passthrough_reads_a_folder(tmp_path):
    _make_folder(tmp_path)
    train, val, n = timm_datasets(f":{tmp_path}", None, None)
    assert len(train) == 6 and len(val) == 6 and n == 2
    with pytest.raises(DataError, match="timm data set 'nosuch/dataset'"):
        timm_datasets("nosuch/dataset", None, None)
