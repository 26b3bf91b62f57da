"""The file pipeline split in two (timm_tricks.augment.bot_crop_transform in the DataLoader workers,
BotBatchStage on the device): the batched colour and lighting equal the per-image functions on the same draws, the
split pipeline crops, flips and normalises as the per-image one does under the same seed, and FileBatches keeps
resume exact with persistent workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from timm_tricks import augment as A
from timm_tricks.batches import FileBatches, Shard
from timm_tricks.build import build_batches
from timm_tricks.config import load_config
from timm_tricks.data import decode_image, folder_datasets, parse_source
from timm_tricks.errors import DataError
from timm_tricks.seeding import generator, seed_everything, step_seed


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (a bicubic blow-up of a 4x5 random one): resampling filters agree on it to a level."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def uint8_batch(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


BOT_MEAN01 = torch.tensor(A.BOT_MEAN).view(3, 1, 1) / 255
BOT_STD01 = torch.tensor(A.BOT_STD).view(3, 1, 1) / 255


# ---------------------------------------------------------------------------------------------------------------
# BotBatchStage against the per-image functions, on the same draws


def test_batched_hsv_and_lighting_equal_the_per_image_functions_on_the_same_draws():
    x = uint8_batch(6)
    stage = A.BotBatchStage(color="hsv", pca_std=0.1)
    draws = stage.draw(6, generator(0, 1, 2))
    assert draws.color.shape == (3, 6) and draws.alpha.shape == (6, 3) and draws.order is None
    out = stage.apply(x, draws)
    for i in range(6):
        img = x[i].float() / 255
        img = A.scale_hsv(img, *(float(f) for f in draws.color[:, i]))
        img = A.pca_lighting(img, alpha=draws.alpha[i])
        ref = (img - BOT_MEAN01) / BOT_STD01
        assert torch.allclose(out[i], ref, atol=1e-5), i
    assert torch.equal(stage.apply(x, draws), out)  # the same numbers, the same batch


def test_batched_jitter_equals_torchvisions_adjustments_in_each_images_order():
    x = uint8_batch(6, seed=1).float() / 255
    factors = torch.tensor([[0.6, 1.4, 1.0, 0.8, 1.2, 0.7], [1.3, 0.6, 1.1, 1.4, 0.9, 0.65],
                            [0.7, 1.2, 0.6, 1.0, 1.4, 1.1]])
    orders = torch.tensor([[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1]])
    out = A.jitter_batch(x, factors, orders)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in range(6):
        img = x[i]
        for op in orders[i].tolist():
            img = ops[op](img, float(factors[op, i]))
        assert torch.allclose(out[i], img, atol=1e-5), i


def test_the_stages_draws_follow_the_per_image_distributions():
    n = 20000
    hsv = A.BotBatchStage(color="hsv", pca_std=0.1).draw(n, generator(3))
    assert 0.6 <= hsv.color.min() and hsv.color.max() <= 1.4  # U[0.6, 1.4], BoT Sec. 2.1
    assert abs(hsv.color.mean().item() - 1.0) < 0.01 and abs(hsv.color.var().item() - 0.8 ** 2 / 12) < 0.003
    assert abs(hsv.alpha.std().item() - 0.1) < 0.003 and abs(hsv.alpha.mean().item()) < 0.003  # N(0, 0.1)
    jitter = A.BotBatchStage(color="jitter").draw(n, generator(4))
    assert torch.equal(jitter.order.sort(dim=1).values, torch.arange(3).expand(n, 3))  # a permutation per image
    firsts = torch.bincount(jitter.order[:, 0], minlength=3) / n
    assert torch.allclose(firsts, torch.full((3,), 1 / 3), atol=0.02)  # each op first a third of the time
    assert jitter.alpha is None and A.BotBatchStage().draw(5) == A.BatchDraws()


def test_normalisation_is_x_over_255_minus_mean_over_std():
    x = uint8_batch(4)
    expected = (x.float() / 255 - BOT_MEAN01) / BOT_STD01
    assert torch.allclose(A.BotBatchStage()(x), expected, atol=1e-5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    stage = A.BotBatchStage(mean, std)
    ref = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(stage(x), ref, atol=1e-5)
    assert torch.allclose(stage(x.float() / 255), ref, atol=1e-5)  # float input on the 0-1 scale
    assert torch.equal(A.BotBatchStage(mean, std)(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))[0, :, 0, 0],
                       ((1 - torch.tensor(mean)) / torch.tensor(std)).float())


def test_the_stage_refuses_what_the_per_image_pipeline_refuses():
    with pytest.raises(ValueError, match="color must be one of"):
        A.BotBatchStage(color="rgb")
    with pytest.raises(ValueError, match="pca_std"):
        A.BotBatchStage(pca_std=-1)
    with pytest.raises(ValueError, match="mean and std go together"):
        A.BotBatchStage(mean=(0.5,) * 3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        A.BotBatchStage()(torch.zeros(3, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------------------------
# The split pipeline against the per-image one


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_split_pipeline_crops_flips_and_normalises_as_the_per_image_one(seed):
    img = Image.fromarray(smooth_image(90, 120, seed))
    old = A.bot_train_transform(size=48, color=None, pca_std=0)
    new = A.bot_crop_transform(48)
    seed_everything(seed)
    ref = old(img)
    seed_everything(seed)
    crop = new(img)  # PIL in: the same PIL crop, kept 8-bit
    assert crop.dtype == torch.uint8 and crop.shape == (3, 48, 48)
    assert torch.allclose(A.BotBatchStage()(crop[None])[0], ref, atol=1e-5)
    seed_everything(seed)
    tensor_crop = new(TF.pil_to_tensor(img))  # tensor in (decode_image): the same box, torch's bilinear filter
    levels = (tensor_crop.float() - crop.float()).abs()
    assert levels.mean() < 0.5 and levels.max() <= 3


def test_the_eval_half_is_resize_and_centre_crop():
    img = Image.fromarray(smooth_image(60, 80))
    ref = A.bot_eval_transform(32, 40)(img)
    out = A.centre_crop_transform(32, 40)(img)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    assert torch.allclose(A.BotBatchStage()(out[None])[0], ref, atol=1e-5)
    with pytest.raises(ValueError, match="resize must be >= size"):
        A.centre_crop_transform(32, 20)


def test_decode_image_reads_jpegs_with_torch_and_the_rest_with_pil(tmp_path):
    arr = smooth_image(40, 50)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.jpg")
    jpg = decode_image(str(tmp_path / "a.jpg"))
    with Image.open(tmp_path / "a.jpg") as im:
        pil = TF.pil_to_tensor(im.convert("RGB"))
    assert jpg.shape == (3, 40, 50) and jpg.dtype == torch.uint8
    assert (jpg.int() - pil.int()).abs().max() <= 2  # libjpeg-turbo both, up to the chroma upsampling
    assert torch.equal(decode_image(str(tmp_path / "a.png")), torch.from_numpy(arr.copy()).permute(2, 0, 1))
    grey = decode_image(str(tmp_path / "grey.jpg"))
    assert grey.shape == (3, 40, 50) and torch.equal(grey[0], grey[2])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="cannot read image .*broken.jpg"):
        decode_image(str(tmp_path / "broken.jpg"))


# ---------------------------------------------------------------------------------------------------------------
# FileBatches: persistent workers, exact resume, the stage on each batch


def _folder(root, per_class=10):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog", "eel"):
            (root / split / c).mkdir(parents=True)
            for k in range(per_class):
                h, w = rng.integers(30, 60, 2)
                Image.fromarray(smooth_image(int(h), int(w), k)).save(root / split / c / f"{k}.jpg")


def _batches(root, workers, *overrides):
    cfg = load_config(None, [f"data.source=folder:{root}", "data.image_size=24", "data.batch_size=4",
                             f"data.workers={workers}", *overrides])
    return build_batches(cfg, parse_source(cfg.data.source), lambda n: Shard(n, 4, 0, 1, seed=5),
                         torch.device("cpu"))


@pytest.mark.parametrize("sets", [(), ("augment.color=null", "augment.pca_std=0")], ids=["bot", "plain"])
def test_folder_batches_are_the_same_with_any_workers_and_resume_exactly(tmp_path, sets):
    """On the CPU a colouring stage runs in the workers, normalisation alone in the main process: either way the
    batches are those of the main process alone, and a resumed epoch gives the same batches from its step on."""
    _folder(tmp_path)
    none, two = _batches(tmp_path, 0, *sets), _batches(tmp_path, 2, *sets)
    assert isinstance(two, FileBatches) and two.steps_per_epoch == 7
    assert two._in_workers("train") == (not sets) and not none._in_workers("train") and not two._in_workers("eval")
    full = list(none.train_batches(1))
    assert len(full) == 7 and full[0][0].dtype == torch.float32 and full[0][0].shape == (4, 3, 24, 24)
    for workers in (none, two):
        for k in (0, 3, 6):
            resumed = list(workers.train_batches(1, start_step=k))
            assert len(resumed) == 7 - k
            for (a, la), (b, lb) in zip(full[k:], resumed, strict=True):
                assert torch.equal(a, b) and torch.equal(la, lb)
    loader = two._loaders["train"][0]
    other = list(two.train_batches(2))
    assert two._loaders["train"][0] is loader and loader.persistent_workers  # the same workers every epoch
    assert not torch.equal(other[0][0], full[0][0])  # another epoch, other crops
    evals = list(two.eval_batches(7))
    assert [len(b[1]) for b in evals] == [7, 7, 7, 7, 2]
    assert torch.equal(torch.cat([b[0] for b in evals]), torch.cat([b[0] for b in none.eval_batches(30)]))


def test_folder_batches_are_the_old_pipelines_crops_with_the_stages_colour(tmp_path):
    """Each sample's crop and flip still come from (seed, epoch, index), as the per-image pipeline drew them; the
    colour and lighting of batch k from a generator of (seed, epoch, k, process)."""
    _folder(tmp_path, per_class=2)
    b = _batches(tmp_path, 0)
    assert repr(b.stages[0]).startswith("BotBatchStage(color='hsv', pca_std=0.1")
    plain = _batches(tmp_path, 0, "augment.color=null", "augment.pca_std=0")
    train, _, _ = folder_datasets(tmp_path, A.bot_crop_transform(24), None, loader=decode_image)
    order = plain.shard.order(0)[:4].tolist()
    crops = []
    for index in order:  # the per-image pipeline's seeding (SeededDataset)
        seed_everything(step_seed(5, 0, index, 2))
        crops.append(train[index][0])
    crops = torch.stack(crops)
    images, labels = next(plain.train_batches(0))
    assert labels.tolist() == [train.targets[i] for i in order]
    assert torch.allclose(images, A.BotBatchStage()(crops), atol=1e-5)
    coloured, _ = next(b.train_batches(0))
    stage = b.stages[0]
    assert torch.equal(coloured, stage.apply(crops, stage.draw(4, generator(5, 0, 0, 0, 6))))
    assert not torch.allclose(coloured, images, atol=1e-2)


def test_the_whitening_images_of_a_folder_are_normalised_and_the_same_each_time(tmp_path):
    _folder(tmp_path, per_class=3)
    b = _batches(tmp_path, 0)
    first = torch.cat(list(b.sample_images(6)))
    assert first.shape == (6, 3, 24, 24) and first.dtype == torch.float32
    assert torch.equal(first, torch.cat(list(b.sample_images(6))))
    # without colour and lighting: the first 6 samples cropped as the per-image pipeline draws them in epoch 0
    # (seeded by (seed, 0, index)), normalised with the BoT mean and std
    plain = _batches(tmp_path, 0, "augment.color=null", "augment.pca_std=0")
    train, _, _ = folder_datasets(tmp_path, A.bot_crop_transform(24), None, loader=decode_image)
    crops = []
    for index in range(6):
        seed_everything(step_seed(5, 0, index, 2))
        crops.append(train[index][0])
    plain_images = torch.cat(list(plain.sample_images(6)))
    assert torch.allclose(plain_images, A.BotBatchStage()(torch.stack(crops)), atol=1e-5)
    assert not torch.allclose(first, plain_images, atol=1e-2)  # with them: the stage's colour on top
