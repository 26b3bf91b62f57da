"""Tests for timm_tricks.augment: values against formulas, independent references and exact equalities."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TVF
from torchvision import tv_tensors
from torchvision.transforms import v2

from timm_tricks import augment as A

# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=gen(seed))


def pil_image(h: int, w: int, seed: int = 0) -> PIL.Image.Image:
    arr = np.random.RandomState(seed).randint(0, 256, size=(h, w, 3), dtype=np.uint8)
    return PIL.Image.fromarray(arr, mode="RGB")


def hand_offset(alpha, eigval=A.IMAGENET_PCA_EIGVAL, eigvec=A.IMAGENET_PCA_EIGVEC) -> list[float]:
    """offset_i = sum_j eigvec[i][j] * alpha[j] * eigval[j], written out with Python floats."""
    return [sum(eigvec[i][j] * alpha[j] * eigval[j] for j in range(3)) for i in range(3)]


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


# --------------------------------------------------------------------------------------------------------------------
# PCA lighting
# --------------------------------------------------------------------------------------------------------------------


def test_pca_constants_are_the_published_values():
    assert A.IMAGENET_PCA_EIGVAL == (0.2175, 0.0188, 0.0045)
    assert A.IMAGENET_PCA_EIGVEC[0] == (-0.5675, 0.7192, 0.4009)
    assert A.IMAGENET_PCA_EIGVEC[1] == (-0.5808, -0.0045, -0.8140)
    assert A.IMAGENET_PCA_EIGVEC[2] == (-0.5836, -0.6948, 0.4203)
    vec = torch.tensor(A.IMAGENET_PCA_EIGVEC, dtype=torch.float64)
    # Columns are (nearly) orthonormal principal directions.
    assert torch.allclose(vec.T @ vec, torch.eye(3, dtype=torch.float64), atol=2e-3)


def test_pca_lighting_fixed_alpha_equals_hand_computation():
    img = rand_images((3, 5, 7))
    alpha = (0.05, -0.1, 0.2)
    out = A.pca_lighting(img, alpha=torch.tensor(alpha))
    off = hand_offset(alpha)
    for ch in range(3):
        assert torch.allclose(out[ch] - img[ch], torch.full((5, 7), off[ch]), atol=1e-6)
    assert out.dtype == img.dtype and out.shape == img.shape


def test_pca_lighting_batch_uses_one_alpha_per_image():
    img = rand_images((2, 3, 4, 4))
    alpha = torch.tensor([[0.1, 0.0, 0.0], [-0.3, 0.2, 0.1]])
    out = A.pca_lighting(img, alpha=alpha)
    for n in range(2):
        off = hand_offset(alpha[n].tolist())
        for ch in range(3):
            assert torch.allclose(out[n, ch] - img[n, ch], torch.full((4, 4), off[ch]), atol=1e-6)


def test_pca_lighting_one_hot_alpha_moves_along_that_eigenvector_column():
    img = torch.zeros(3, 2, 2, dtype=torch.float64)
    out = A.pca_lighting(img, alpha=torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    expected = torch.tensor([row[1] for row in A.IMAGENET_PCA_EIGVEC], dtype=torch.float64) * 0.0188
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-12)


def test_pca_lighting_alpha_std_zero_is_identity():
    img = rand_images((4, 3, 6, 6))
    assert torch.equal(A.pca_lighting(img, alpha_std=0.0), img)


def test_pca_lighting_random_alpha_is_seeded_and_per_image():
    img = torch.zeros(64, 3, 2, 2)
    out1 = A.pca_lighting(img, 0.1, generator=gen(1))
    out2 = A.pca_lighting(img, 0.1, generator=gen(1))
    assert torch.equal(out1, out2)
    offsets = out1[:, :, 0, 0].double()  # (N, 3)
    vec = torch.tensor(A.IMAGENET_PCA_EIGVEC, dtype=torch.float64)
    val = torch.tensor(A.IMAGENET_PCA_EIGVAL, dtype=torch.float64)
    alphas = torch.linalg.solve(vec, offsets.T).T / val  # recover alpha from offset = eigvec @ (alpha * eigval)
    assert len({tuple(a) for a in alphas.round(decimals=4).tolist()}) == 64
    assert 0.05 < alphas.std().item() < 0.15  # drawn from N(0, 0.1)


def test_pca_lighting_rejects_bad_arguments():
    img = rand_images((3, 4, 4))
    with pytest.raises(ValueError, match="alpha_std"):
        A.pca_lighting(img, alpha_std=-0.1)
    with pytest.raises(ValueError, match="shape"):
        A.pca_lighting(rand_images((4, 4, 4)))
    with pytest.raises(ValueError, match="floating"):
        A.pca_lighting(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="alpha must have shape"):
        A.pca_lighting(img, alpha=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eigvec"):
        A.pca_lighting(img, eigvec=torch.eye(2))


def test_pca_lighting_transform_handles_tensor_tv_image_and_pil():
    t = A.PCALighting(0.1, generator=gen(0))
    img = rand_images((3, 8, 8))
    out = t(img)
    assert type(out) is torch.Tensor and out.shape == img.shape and not torch.equal(out, img)
    tv = t(tv_tensors.Image(img))
    assert isinstance(tv, tv_tensors.Image)
    pil = t(pil_image(8, 8))
    assert isinstance(pil, PIL.Image.Image) and pil.size == (8, 8)
    with pytest.raises(ValueError, match="alpha_std"):
        A.PCALighting(-1.0)


def _orthogonal(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen(seed), dtype=torch.float64))
    return q


def test_estimate_pca_recovers_known_covariance():
    q = _orthogonal(3)
    true_val = torch.tensor([0.04, 0.01, 0.002], dtype=torch.float64)
    cov = q @ torch.diag(true_val) @ q.T
    n, h, w = 200, 16, 16
    z = torch.randn(n * h * w, 3, generator=gen(4), dtype=torch.float64)
    pix = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64) + z @ torch.linalg.cholesky(cov).T
    images = pix.view(n, h, w, 3).permute(0, 3, 1, 2).float()
    eigval, eigvec = A.estimate_pca(images)
    assert eigval.shape == (3,) and eigvec.shape == (3, 3)
    assert torch.all(eigval[:-1] >= eigval[1:])
    assert torch.allclose(eigval, true_val, rtol=0.03)
    for j in range(3):  # eigenvectors (columns) up to sign
        assert abs(float(eigvec[:, j] @ q[:, j])) > 0.999
    # The documented convention: cov @ eigvec[:, j] == eigval[j] * eigvec[:, j], against an independent covariance.
    emp = torch.from_numpy(np.cov(images.permute(1, 0, 2, 3).reshape(3, -1).double().numpy()))
    assert torch.allclose(emp @ eigvec, eigvec * eigval, atol=1e-9)


def test_estimate_pca_streams_batches_like_one_tensor():
    images = rand_images((12, 3, 5, 5))
    whole = A.estimate_pca(images)
    streamed = A.estimate_pca(iter([images[:5], images[5:9], images[9:]]))
    assert torch.allclose(whole[0], streamed[0], atol=1e-12)
    assert torch.allclose(whole[1].abs(), streamed[1].abs(), atol=1e-9)


def test_estimate_pca_output_feeds_pca_lighting():
    images = rand_images((4, 3, 8, 8))
    eigval, eigvec = A.estimate_pca(images)
    out = A.pca_lighting(images[0], eigval=eigval, eigvec=eigvec, alpha=torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(out - images[0], (eigval[0] * eigvec[:, 0]).float().view(3, 1, 1).expand(3, 8, 8),
                          atol=1e-6)


def test_estimate_pca_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        A.estimate_pca(torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match="at least 2 pixels"):
        A.estimate_pca([])


# --------------------------------------------------------------------------------------------------------------------
# HSV scaling
# --------------------------------------------------------------------------------------------------------------------


def _special_pixels() -> torch.Tensor:
    """A batch containing black, white, grays, primaries, secondaries and random colours."""
    pix = torch.tensor([[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                        [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 0.5, 0], [0.2, 0.2, 0.7], [1, 0, 0.001]])
    rand = torch.rand(52, 3, generator=gen(5))
    return torch.cat((pix, rand)).T.reshape(1, 3, 8, 8)


def test_rgb_to_hsv_matches_colorsys():
    img = _special_pixels()
    hsv = A.rgb_to_hsv(img)
    for r, g, b, h, s, v in zip(*img[0].reshape(3, -1).tolist(), *hsv[0].reshape(3, -1).tolist(), strict=True):
        eh, es, ev = colorsys.rgb_to_hsv(r, g, b)
        assert hue_distance(h, eh) < 1e-6 and abs(s - es) < 1e-6 and abs(v - ev) < 1e-6


def test_scale_hsv_all_ones_is_identity():
    for img in (_special_pixels(), rand_images((2, 3, 16, 16), seed=6), rand_images((3, 9, 9), seed=7)):
        assert (A.scale_hsv(img, 1.0, 1.0, 1.0) - img).abs().max() < 1e-5


def test_scale_hsv_brightness_multiplies_when_no_clipping():
    f = 1.4
    img = rand_images((2, 3, 10, 10), seed=8) / f  # max <= 1/f
    assert torch.allclose(A.scale_hsv(img, brightness_factor=f), img * f, atol=1e-5)
    # Above 1 the value channel clips: the brightest channel becomes 1.
    bright = torch.tensor([0.8, 0.4, 0.2]).view(3, 1, 1)
    assert torch.allclose(A.scale_hsv(bright, brightness_factor=2.0).flatten(), torch.tensor([1.0, 0.5, 0.25]),
                          atol=1e-6)


def test_scale_hsv_saturation_zero_gives_gray_at_the_max():
    img = rand_images((2, 3, 6, 6), seed=9)
    out = A.scale_hsv(img, saturation_factor=0.0)
    expected = img.amax(dim=1, keepdim=True).expand_as(img)
    assert torch.allclose(out, expected, atol=1e-6)


def test_scale_hsv_hue_factor_scales_hue_of_orange():
    orange = torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1)
    h0, s0, v0 = colorsys.rgb_to_hsv(1.0, 0.5, 0.0)
    assert abs(h0 - 1 / 12) < 1e-12
    for f in (0.6, 1.4, 3.0):
        h, s, v = colorsys.rgb_to_hsv(*A.scale_hsv(orange, hue_factor=f).flatten().tolist())
        assert hue_distance(h, (h0 * f) % 1.0) < 1e-6
        assert abs(s - s0) < 1e-6 and abs(v - v0) < 1e-6


def test_scale_hsv_per_image_factors_match_single_images():
    img = rand_images((3, 3, 5, 5), seed=10)
    fh, fs, fv = torch.tensor([0.6, 1.0, 1.4]), torch.tensor([1.3, 0.7, 1.0]), torch.tensor([0.9, 1.2, 0.6])
    out = A.scale_hsv(img, fh, fs, fv)
    for i in range(3):
        single = A.scale_hsv(img[i], float(fh[i]), float(fs[i]), float(fv[i]))
        assert torch.allclose(out[i], single, atol=1e-6)


def test_scale_hsv_rejects_bad_arguments():
    img = rand_images((3, 4, 4))
    with pytest.raises(ValueError, match="hue_factor"):
        A.scale_hsv(img, hue_factor=-0.1)
    with pytest.raises(ValueError, match="saturation_factor"):
        A.scale_hsv(img, saturation_factor=float("nan"))
    with pytest.raises(ValueError, match="brightness_factor"):
        A.scale_hsv(rand_images((2, 3, 4, 4)), brightness_factor=torch.ones(3))
    with pytest.raises(ValueError, match="floating"):
        A.scale_hsv(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_random_hsv_scale_draws_within_bounds_and_respects_p():
    img = rand_images((4, 3, 8, 8), seed=11)
    assert torch.equal(A.RandomHSVScale(p=0.0)(img), img)
    fixed = A.RandomHSVScale(0.5, 0.5, generator=gen(0))(img)  # low == high: every factor is 0.5
    assert torch.allclose(fixed, A.scale_hsv(img, 0.5, 0.5, 0.5), atol=1e-6)
    a = A.RandomHSVScale(generator=gen(2))(img)
    b = A.RandomHSVScale(generator=gen(2))(img)
    assert torch.equal(a, b) and not torch.allclose(a, img, atol=1e-3)
    # Brightness-only draws: the per-image ratio of maxima is a factor inside [0.6, 1.4].
    dim = img * 0.7
    out = A.RandomHSVScale(generator=gen(3))(dim)
    ratio = out.amax(dim=(1, 2, 3)) / dim.amax(dim=(1, 2, 3))
    assert torch.all((ratio > 0.6 - 1e-5) & (ratio < 1.4 + 1e-5))
    assert isinstance(A.RandomHSVScale()(pil_image(6, 6)), PIL.Image.Image)


def test_random_hsv_scale_rejects_bad_arguments():
    with pytest.raises(ValueError, match="low"):
        A.RandomHSVScale(1.4, 0.6)
    with pytest.raises(ValueError, match="low"):
        A.RandomHSVScale(-0.1, 1.0)
    with pytest.raises(ValueError, match="p must be"):
        A.RandomHSVScale(p=1.5)


def test_bot_color_jitter_is_gluoncv_04_jitter():
    t = A.bot_color_jitter()
    assert isinstance(t, v2.ColorJitter)
    for rng in (t.brightness, t.contrast, t.saturation):
        assert tuple(rng) == pytest.approx((0.6, 1.4))
    assert t.hue is None


# --------------------------------------------------------------------------------------------------------------------
# Bag of Tricks pipelines
# --------------------------------------------------------------------------------------------------------------------

MEAN = torch.tensor(A.BOT_MEAN).view(3, 1, 1)
STD = torch.tensor(A.BOT_STD).view(3, 1, 1)


def test_bot_constants_are_the_paper_values():
    assert A.BOT_MEAN == (123.68, 116.779, 103.939)
    assert A.BOT_STD == (58.393, 57.12, 57.375)


def test_bot_eval_transform_equals_manual_resize_crop_normalise():
    img = pil_image(300, 411, seed=1)
    out = A.bot_eval_transform()(img)
    ref = TVF.to_tensor(TVF.center_crop(TVF.resize(img, 256), 224))  # independent torchvision v1 reference
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 224, 224)
    assert torch.allclose(out, (ref * 255 - MEAN) / STD, atol=1e-5)


def test_bot_eval_transform_sizes_and_errors():
    assert A.bot_eval_transform(size=32, resize=40)(pil_image(50, 60)).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="resize"):
        A.bot_eval_transform(size=224, resize=200)
    with pytest.raises(ValueError, match="size"):
        A.bot_eval_transform(size=0)


@pytest.mark.parametrize("color", ["hsv", "jitter", None])
def test_bot_train_transform_output(color):
    torch.manual_seed(0)
    out = A.bot_train_transform(size=64, color=color)(pil_image(90, 120, seed=2))
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 64, 64)
    assert torch.isfinite(out).all()


def test_bot_train_transform_without_randomness_is_resize_and_normalise():
    img = pil_image(96, 96, seed=3)
    kw = dict(size=48, pca_std=0.0, color=None, crop=((1.0, 1.0), (1.0, 1.0)))
    ref = (TVF.to_tensor(TVF.resize(img, [48, 48])) * 255 - MEAN) / STD
    assert torch.allclose(A.bot_train_transform(**kw, flip_p=0.0)(img), ref, atol=1e-5)
    assert torch.allclose(A.bot_train_transform(**kw, flip_p=1.0)(img), ref.flip(-1), atol=1e-5)


def test_bot_train_transform_pca_noise_on_flat_image_is_one_lighting_offset():
    img = PIL.Image.new("RGB", (80, 60), (100, 150, 200))
    torch.manual_seed(1)
    out = A.bot_train_transform(size=32, color=None, pca_std=0.1)(img)
    x01 = (out * STD + MEAN) / 255  # undo the normalisation
    assert (x01 - x01.mean(dim=(1, 2), keepdim=True)).abs().max() < 1e-5  # one offset for the whole image
    offset = x01[:, 0, 0].double() - torch.tensor([100, 150, 200], dtype=torch.float64) / 255
    vec = torch.tensor(A.IMAGENET_PCA_EIGVEC, dtype=torch.float64)
    alpha = torch.linalg.solve(vec, offset) / torch.tensor(A.IMAGENET_PCA_EIGVAL, dtype=torch.float64)
    assert alpha.abs().max() < 0.6 and alpha.abs().max() > 0  # a draw from N(0, 0.1)


def test_bot_train_transform_rejects_bad_arguments():
    with pytest.raises(ValueError, match="color"):
        A.bot_train_transform(color="rgb")
    with pytest.raises(ValueError, match="pca_std"):
        A.bot_train_transform(pca_std=-0.1)
    with pytest.raises(ValueError, match="size"):
        A.bot_train_transform(size=-3)
    with pytest.raises(ValueError, match="scale"):
        A.bot_train_transform(crop=((0.5, 1.5), (0.75, 4 / 3)))


# --------------------------------------------------------------------------------------------------------------------
# Batched tensor augmentation
# --------------------------------------------------------------------------------------------------------------------


def find_offsets(out: torch.Tensor, x: torch.Tensor, p: int) -> list[tuple[int, int]]:
    """All (dy, dx) in [0, 2p]^2 whose window of the reflect-padded x equals out (both (C, H, W))."""
    padded = F.pad(x[None], (p, p, p, p), mode="reflect")[0]
    h, w = x.shape[-2:]
    return [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
            if torch.equal(padded[:, dy:dy + h, dx:dx + w], out)]


def test_random_crop_reflect_is_a_window_of_the_padded_image():
    x = rand_images((16, 3, 32, 32), seed=12)
    out = A.random_crop_reflect(x, padding=4, generator=gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    found = [find_offsets(out[i], x[i], 4) for i in range(16)]
    assert all(len(f) == 1 for f in found)  # random pixels: exactly one matching offset
    assert len({f[0] for f in found}) > 1  # offsets differ across images
    assert torch.equal(out, A.random_crop_reflect(x, 4, generator=gen(0)))
    assert not torch.equal(out, A.random_crop_reflect(x, 4, generator=gen(1)))


def test_crop_reflect_explicit_offsets_and_flip():
    x = rand_images((3, 2, 6, 5), seed=13)
    offsets = torch.tensor([[0, 0], [4, 1], [2, 4]])
    flip = torch.tensor([False, True, True])
    out = A.crop_reflect(x, offsets, padding=2)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 5])
    assert torch.equal(A.crop_reflect(x, offsets, padding=2, flip=flip), A.flip_images(out, flip))
    assert torch.equal(A.random_crop_reflect(x, padding=0), x)
    with pytest.raises(ValueError, match="padding"):
        A.random_crop_reflect(x, padding=5)
    with pytest.raises(ValueError, match="offsets"):
        A.crop_reflect(x, torch.zeros(2, 2), padding=1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        A.random_crop_reflect(x[0])


def test_random_flip_flips_exactly_the_selected_images():
    x = rand_images((32, 3, 4, 6), seed=14)
    mask = torch.arange(32) % 3 == 0
    out = A.flip_images(x, mask)
    for i in range(32):
        assert torch.equal(out[i], x[i].flip(-1) if mask[i] else x[i])
    out = A.random_flip(x, 0.5, generator=gen(0))
    selected = torch.rand(32, generator=gen(0)) < 0.5  # the documented draw: u[i] < p
    for i in range(32):
        assert torch.equal(out[i], x[i].flip(-1) if selected[i] else x[i])
    assert 0 < int(selected.sum()) < 32
    assert torch.equal(A.random_flip(x, 0.0), x)
    assert torch.equal(A.random_flip(x, 1.0), x.flip(-1))
    with pytest.raises(ValueError, match="p must be"):
        A.random_flip(x, 1.5)


def zero_boxes(out: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Per image: (rows, cols, y0, x0) of the bounding box of the zero pixels, checking channels agree."""
    boxes = []
    for img in out:
        zeros = img == 0
        assert all(torch.equal(zeros[0], zc) for zc in zeros)  # same square in every channel
        ys, xs = torch.nonzero(zeros[0], as_tuple=True)
        boxes.append((int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1), int(ys.min()), int(xs.min())))
    return boxes


def test_cutout_zeroes_one_full_square_per_image():
    x = torch.ones(20, 3, 32, 32)
    out = A.cutout(x, size=8, generator=gen(0))
    assert torch.equal((out == 0).sum(dim=(2, 3)), torch.full((20, 3), 64))  # exactly size*size per channel
    boxes = zero_boxes(out)
    assert all(b[:2] == (8, 8) for b in boxes)  # a full 8x8 square, so fully inside the image
    assert len({b[2:] for b in boxes}) > 1  # positions differ across images
    assert torch.equal(out, A.cutout(x, 8, generator=gen(0)))
    assert torch.equal(x, torch.ones(20, 3, 32, 32))  # input untouched


def test_cutout_at_exact_positions_and_clamping():
    x = torch.ones(3, 2, 10, 12)
    out = A.cutout_at(x, torch.tensor([[0, 0], [5, 7], [9, 11]]), size=3)
    expected = torch.ones(3, 2, 10, 12)
    expected[0, :, 0:3, 0:3] = 0
    expected[1, :, 5:8, 7:10] = 0
    expected[2, :, 7:10, 9:12] = 0  # corner clamped so the square stays inside
    assert torch.equal(out, expected)
    assert torch.equal(A.cutout(torch.ones(2, 1, 4, 4), size=4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="size"):
        A.cutout(x, size=11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_batch_augment_preserves_shape_dtype_device(dtype):
    x = (rand_images((10, 3, 32, 32), seed=15) * 200 + 1).to(dtype)
    out = A.BatchAugment()(x, generator=gen(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, (rand_images((10, 3, 32, 32), seed=15) * 200 + 1).to(dtype))  # input untouched
    assert torch.equal((out == 0).sum(dim=(1, 2, 3)), torch.full((10,), 3 * 64))  # one 8x8 hole, all channels


@pytest.mark.parametrize("kwargs", [{}, {"crop_padding": 0}, {"flip": False}, {"cutout": None},
                                    {"crop_padding": 2, "cutout": 5}, {"crop_padding": 0, "flip": False, "cutout": 0}])
def test_batch_augment_equals_composition_of_the_functions(kwargs):
    x = rand_images((12, 3, 16, 16), seed=16)
    out = A.BatchAugment(**kwargs, generator=gen(7))(x)
    g = gen(7)
    ref = x
    p, flip, size = kwargs.get("crop_padding", 4), kwargs.get("flip", True), kwargs.get("cutout", 8)
    if p:
        ref = A.random_crop_reflect(ref, p, generator=g)
    if flip:
        ref = A.random_flip(ref, 0.5, generator=g)
    if size:
        ref = A.cutout(ref, size, generator=g)
    assert torch.equal(out, ref)


def test_batch_augment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="crop_padding"):
        A.BatchAugment(crop_padding=-1)
    with pytest.raises(ValueError, match="cutout"):
        A.BatchAugment(cutout=2.5)
    with pytest.raises(ValueError, match="padding"):
        A.BatchAugment(crop_padding=4)(torch.zeros(2, 3, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_augment_cuda_matches_cpu_with_a_cpu_generator():
    x = rand_images((64, 3, 32, 32), seed=17)
    cpu = A.BatchAugment()(x, generator=gen(5))
    cuda = A.BatchAugment()(x.cuda(), generator=gen(5))
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)
    on_device = A.BatchAugment()(x.cuda(), generator=torch.Generator(device="cuda").manual_seed(5))
    assert on_device.device.type == "cuda" and on_device.shape == x.shape
    hsv = A.scale_hsv(x.cuda(), 1.2, 0.8, 0.9)
    assert torch.allclose(hsv.cpu(), A.scale_hsv(x, 1.2, 0.8, 0.9), atol=1e-5)


def test_math_sanity_of_reflect_index():
    # Reflect padding without edge repetition: -1 -> 1, n -> n - 2.
    from timm_tricks.batch_augment import _reflect_index

    idx = _reflect_index(torch.tensor([-2, -1, 0, 5, 6, 7]), 6)
    assert idx.tolist() == [2, 1, 0, 5, 4, 3]
    assert math.isclose(A.BOT_STD[0] / 255, 0.2289921568627451)
