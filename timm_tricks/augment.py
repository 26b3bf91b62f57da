"""Image augmentation: the Bag of Tricks train and eval pipelines, and the one import for every augmentation trick.

The pipelines (He et al., "Bag of Tricks", CVPR 2019, Sec. 2.1) are :func:`bot_train_transform` and
:func:`bot_eval_transform`, built from torchvision v2 transforms plus the colour tricks of :mod:`timm_tricks.color`
(PCA lighting, HSV scaling). The batched tensor augmentation of small images lives in
:mod:`timm_tricks.batch_augment`; both are re-exported here, so ``timm_tricks.augment.BatchAugment`` and
``timm_tricks.augment.pca_lighting`` keep working.

What torchvision already does (random resized crop, flip, resize, centre crop, normalise, colour jitter) is reused
from ``torchvision.transforms.v2``; only what it lacks is written here.

The trainer's file pipeline runs the same chain split in two: per image in the DataLoader workers only what must be
done per image (:func:`bot_crop_transform`, :func:`centre_crop_transform`: crop and flip, kept 8-bit), per batch on
the device in float the rest (:class:`BotBatchStage`: colour, PCA lighting, normalisation; :func:`jitter_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .batch_augment import (
    BatchAugment,
    crop_reflect,
    cutout,
    cutout_at,
    flip_images,
    random_crop_reflect,
    random_flip,
)
from .choices import COLOR_MODES, INTERPOLATIONS
from .color import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    PCALighting,
    RandomHSVScale,
    bot_color_jitter,
    estimate_pca,
    hsv_to_rgb,
    pca_lighting,
    rgb_to_hsv,
    scale_hsv,
    scale_hsv_batch,
)
from .draws import check_batch, normal, uniform

__all__ = [
    "IMAGENET_PCA_EIGVAL",
    "IMAGENET_PCA_EIGVEC",
    "BOT_MEAN",
    "BOT_STD",
    "pca_lighting",
    "PCALighting",
    "estimate_pca",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "scale_hsv",
    "RandomHSVScale",
    "bot_color_jitter",
    "bot_train_transform",
    "bot_eval_transform",
    "crop_reflect",
    "random_crop_reflect",
    "flip_images",
    "random_flip",
    "cutout_at",
    "cutout",
    "BatchAugment",
    "CropFlip",
    "bot_crop_transform",
    "centre_crop_transform",
    "jitter_batch",
    "BatchDraws",
    "BotBatchStage",
]


#: Per-channel (R, G, B) normalisation mean on the 0-255 scale (Bag of Tricks, He et al. 2019, Sec. 2.1).
BOT_MEAN: tuple[float, float, float] = (123.68, 116.779, 103.939)
#: Per-channel (R, G, B) normalisation std on the 0-255 scale (Bag of Tricks, He et al. 2019, Sec. 2.1).
BOT_STD: tuple[float, float, float] = (58.393, 57.12, 57.375)


# --------------------------------------------------------------------------------------------------------------------
# Bag of Tricks pipelines (He et al. 2019, Sec. 2.1)
# --------------------------------------------------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _mode(interpolation: str) -> v2.InterpolationMode:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    return v2.InterpolationMode(interpolation)


def _bot_normalize(mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> v2.Normalize:
    """Normalise 0-1 tensors with ``mean`` / ``std`` (0-1 scale), by default the paper's 0-255 statistics / 255."""
    if (mean is None) != (std is None):
        raise ValueError("mean and std go together: pass both or neither")
    if mean is None or std is None:
        return v2.Normalize(mean=[m / 255.0 for m in BOT_MEAN], std=[s / 255.0 for s in BOT_STD])
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(s) and s > 0 for s in std):
        raise ValueError(f"mean and std need three values each, std > 0; got mean={mean!r}, std={std!r}")
    return v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std])


def _check_color(color: str | None, pca_std: float | None) -> None:
    if pca_std is not None and not (math.isfinite(pca_std) and pca_std >= 0):
        raise ValueError(f"pca_std must be None or a finite number >= 0, got {pca_std}")
    if color not in (*COLOR_MODES, None):
        raise ValueError(f"color must be one of {', '.join(map(repr, COLOR_MODES))}, None, got {color!r}")


def _crop_and_flip(size: int, crop: tuple[tuple[float, float], tuple[float, float]], flip_p: float,
                   interpolation: str) -> list[Any]:
    """The random resized crop and the flip of :func:`bot_train_transform`, checked."""
    size = _check_positive_int(size, "size")
    scale, ratio = crop
    if not (len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0):
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale}")
    if not (len(ratio) == 2 and 0.0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio}")
    if not 0.0 <= flip_p <= 1.0:
        raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
    return [v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), interpolation=_mode(interpolation),
                                 antialias=True),
            v2.RandomHorizontalFlip(p=flip_p)]


def bot_train_transform(
    size: int = 224,
    pca_std: float | None = 0.1,
    color: str | None = "hsv",
    *,
    crop: tuple[tuple[float, float], tuple[float, float]] = ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)),
    flip_p: float = 0.5,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """The Bag of Tricks training augmentation (He et al. 2019, Sec. 2.1).

    Steps, with the paper's values as defaults: random resized crop to ``size`` with area fraction in [8%, 100%] and
    aspect ratio in [3/4, 4/3]; horizontal flip with probability 0.5; conversion to a float tensor on the 0-1 scale;
    colour scaling (``"hsv"``: :class:`RandomHSVScale` with U[0.6, 1.4], the paper's wording; ``"jitter"``:
    :func:`bot_color_jitter`, GluonCV's script; ``None``: none); PCA lighting noise with coefficient ~ N(0, 0.1)
    (:class:`PCALighting`); normalisation with mean (123.68, 116.779, 103.939) and std (58.393, 57.12, 57.375) on the
    0-255 scale (:data:`BOT_MEAN`, :data:`BOT_STD`, divided by 255 here).

    The colour step runs on the float tensor, after conversion, rather than on the 8-bit PIL image; this avoids a
    rounding step and is otherwise the same operation.

    Args:
        size: Output side length (224 in the paper).
        pca_std: Standard deviation of the PCA lighting coefficient (0.1 in the paper); 0 or None disables it.
        color: ``"hsv"``, ``"jitter"`` or None.
        crop: ``(scale, ratio)`` of the random resized crop: its area fraction range ((0.08, 1.0) in the paper) and
            aspect ratio range ((3/4, 4/3) in the paper).
        flip_p: Probability of the horizontal flip (0.5 in the paper).
        mean: Normalisation mean (R, G, B) on the 0-1 scale; None for the paper's. Give ``std`` with it.
        std: Normalisation std (R, G, B) on the 0-1 scale; None for the paper's.
        interpolation: Resize interpolation, ``bilinear`` (torchvision's default) or a pretrained model's.

    Returns:
        A ``torchvision.transforms.v2.Compose`` mapping a PIL image (or uint8 ``(3, H, W)`` tensor) to a plain float32
        ``(3, size, size)`` tensor.

    Raises:
        ValueError: If ``size`` is not a positive integer, ``pca_std`` is negative, ``color`` is not one of the
            choices, ``crop`` / ``flip_p`` are out of range, or ``mean`` / ``std`` are malformed.
    """
    _check_color(color, pca_std)
    steps: list[Any] = [*_crop_and_flip(size, crop, flip_p, interpolation), v2.ToImage(),
                        v2.ToDtype(torch.float32, scale=True)]
    if color == "hsv":
        steps.append(RandomHSVScale(0.6, 1.4))
    elif color == "jitter":
        steps.append(bot_color_jitter())
    if pca_std:
        steps.append(PCALighting(alpha_std=pca_std))
    steps += [_bot_normalize(mean, std), v2.ToPureTensor()]
    return v2.Compose(steps)


def _resize_and_centre(size: int, resize: int, interpolation: str) -> list[Any]:
    size = _check_positive_int(size, "size")
    resize = _check_positive_int(resize, "resize")
    if resize < size:
        raise ValueError(f"resize must be >= size ({size}) so the centre crop fits, got {resize}")
    return [v2.Resize(resize, interpolation=_mode(interpolation), antialias=True), v2.CenterCrop(size)]


def bot_eval_transform(
    size: int = 224,
    resize: int = 256,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """The Bag of Tricks validation transform (He et al. 2019, Sec. 2.1).

    Resize the shorter side to ``resize`` (256) keeping the aspect ratio, crop the central ``size`` x ``size`` (224)
    patch, convert to float on the 0-1 scale and normalise with :data:`BOT_MEAN` / :data:`BOT_STD` divided by 255
    (or with ``mean`` / ``std``).

    Args:
        size: Side length of the centre crop (224 in the paper).
        resize: Target length of the shorter side before cropping (256 in the paper); must be >= ``size``.
        mean: Normalisation mean (R, G, B) on the 0-1 scale; None for the paper's. Give ``std`` with it.
        std: Normalisation std (R, G, B) on the 0-1 scale; None for the paper's.
        interpolation: Resize interpolation, ``bilinear`` (torchvision's default) or a pretrained model's.

    Returns:
        A ``torchvision.transforms.v2.Compose`` mapping a PIL image (or uint8 ``(3, H, W)`` tensor) to a plain float32
        ``(3, size, size)`` tensor.

    Raises:
        ValueError: If ``size`` or ``resize`` is not a positive integer, ``resize < size``, or ``mean`` / ``std``
            are malformed.
    """
    return v2.Compose([
        *_resize_and_centre(size, resize, interpolation),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        _bot_normalize(mean, std),
        v2.ToPureTensor(),
    ])


# --------------------------------------------------------------------------------------------------------------------
# The same pipelines split in two: per image in the DataLoader workers (decode, crop, flip: uint8), per batch on
# the device (colour, lighting, normalisation: float)
# --------------------------------------------------------------------------------------------------------------------


def _resized_crop_channels_last(img: torch.Tensor, box: dict[str, int], size: list[int], mode: str) -> torch.Tensor:
    """``TF.resized_crop`` of a ``(3, H, W)`` tensor with antialias, bit for bit, kept in channels-last memory (the
    layout ``decode_image`` gives): torch's uint8 resize kernel reads and writes it directly, where torchvision's
    wrapper converts the result back to planes (about a third of the crop's time at 224 px)."""
    t, left, h, w = box["top"], box["left"], box["height"], box["width"]
    region = img[None, :, t:t + h, left:left + w].contiguous(memory_format=torch.channels_last)
    return torch.nn.functional.interpolate(region, size=list(size), mode=mode, antialias=True, align_corners=False)[0]


class CropFlip:
    """A random resized crop, then a horizontal flip with probability ``flip_p``, to a uint8 tensor: the first two
    steps of :func:`bot_train_transform` with exactly their draws (``v2.RandomResizedCrop.make_params``, then one
    ``torch.rand(1) < flip_p``), called directly rather than through ``v2.Compose``, whose per-call dispatch costs
    about a tenth of the crop at 224 px."""

    def __init__(self, crop: v2.RandomResizedCrop, flip_p: float) -> None:
        self.crop, self.flip_p = crop, flip_p

    def __call__(self, img: Any) -> torch.Tensor:
        c = self.crop
        box = c.make_params([img])
        if isinstance(img, torch.Tensor) and c.interpolation.value in ("bilinear", "bicubic"):
            out = _resized_crop_channels_last(img, box, c.size, c.interpolation.value)
        else:
            out = TF.resized_crop(img, **box, size=c.size, interpolation=c.interpolation, antialias=True)
        if torch.rand(1) < self.flip_p:  # v2's RandomHorizontalFlip draws the same number, always
            out = TF.horizontal_flip(out)
        return TF.pil_to_tensor(out) if isinstance(out, PIL.Image.Image) else out.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.crop}, flip_p={self.flip_p})"


def bot_crop_transform(
    size: int = 224,
    *,
    crop: tuple[tuple[float, float], tuple[float, float]] = ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)),
    flip_p: float = 0.5,
    interpolation: str = "bilinear",
) -> CropFlip:
    """The per-image half of :func:`bot_train_transform` (He et al. 2019, Sec. 2.1): its random resized crop and
    horizontal flip, with the same arguments and the same draws from torch's global generator, so that under the
    same seed both crop the same box and flip alike. The image stays 8-bit; :class:`BotBatchStage` does the rest on
    the whole batch (timm's loader splits its pipeline the same way: ``use_prefetcher`` leaves uint8 tensors to its
    ``PrefetchLoader``, ``timm/data/loader.py``).

    Returns:
        A :class:`CropFlip` mapping a PIL image or a uint8 ``(3, H, W)`` tensor to a plain uint8 ``(3, size, size)``
        tensor. A tensor is cropped and resized by torch (bilinear with antialias, as PIL's filter; the two differ
        by rounding, at most a few levels of 255).
    """
    rrc, flip = _crop_and_flip(size, crop, flip_p, interpolation)
    return CropFlip(rrc, flip.p)


def centre_crop_transform(size: int = 224, resize: int = 256, *, interpolation: str = "bilinear") -> v2.Compose:
    """The per-image half of :func:`bot_eval_transform` (He et al. 2019, Sec. 2.1): resize the shorter side to
    ``resize``, crop the central ``size`` square, and keep the image 8-bit (a uint8 ``(3, size, size)`` tensor);
    :class:`BotBatchStage` normalises the batch."""
    return v2.Compose([*_resize_and_centre(size, resize, interpolation), v2.ToImage(), v2.ToPureTensor()])


def jitter_batch(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast, saturation)`` with its own factors and order per image of a
    float 0-1 batch ``(N, 3, H, W)`` (the per-image transform draws one set per call; :func:`bot_color_jitter`,
    GluonCV's choice for Bag of Tricks).

    ``factors`` ``(3, N)`` holds each image's brightness, contrast and saturation factors and ``order`` ``(N, 3)``
    the order it takes them in (0 brightness, 1 contrast, 2 saturation, torchvision's numbering). Each slot is one
    blend ``clamp(f * x + (1 - f) * target, 0, 1)`` towards black, the image's mean grey (ITU-R 601 luma, as
    torchvision) or its grey image, as ``torchvision.transforms.v2.functional.adjust_brightness`` /
    ``adjust_contrast`` / ``adjust_saturation`` compute them.
    """
    n = images.shape[0]
    order = order.to(images.device)
    factors = factors.to(device=images.device, dtype=images.dtype)
    x = images
    for slot in range(3):
        op = order[:, slot]
        f = factors.gather(0, op.view(1, n)).view(n, 1, 1, 1)
        r, g, b = x.unbind(dim=1)
        grey = (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)
        op = op.view(n, 1, 1, 1)
        target = torch.where(op == 1, grey.mean(dim=(1, 2, 3), keepdim=True), grey) * (op != 0)
        x = (x * f + target * (1.0 - f)).clamp_(0.0, 1.0)
    return x


@dataclass(frozen=True)
class BatchDraws:
    """The random numbers of one batch of :class:`BotBatchStage`: HSV factors ``(3, N)`` (hue, saturation,
    brightness) or jitter factors ``(3, N)`` (brightness, contrast, saturation) with ``order`` ``(N, 3)``, and the
    PCA lighting coefficients ``alpha`` ``(N, 3)``; None where the stage has no such step."""

    color: torch.Tensor | None = None
    order: torch.Tensor | None = None
    alpha: torch.Tensor | None = None

    def part(self, start: int, stop: int) -> BatchDraws:
        """The draws of images ``start`` to ``stop - 1``."""
        def cut(t: torch.Tensor | None, dim: int) -> torch.Tensor | None:
            return None if t is None else t.narrow(dim, start, stop - start)

        return BatchDraws(cut(self.color, 1), cut(self.order, 0), cut(self.alpha, 0))


class BotBatchStage:
    """The per-batch half of the Bag of Tricks pipeline (He et al. 2019, Sec. 2.1), on the device, in float: uint8
    ``(N, 3, H, W)`` to 0-1, colour (``"hsv"``: :func:`~timm_tricks.color.scale_hsv` with factors U[0.6, 1.4];
    ``"jitter"``: :func:`jitter_batch`, GluonCV's 0.4), PCA lighting with alpha ~ N(0, ``pca_std``)
    (:func:`~timm_tricks.color.pca_lighting`) and normalisation ``(x / 255 - mean) / std`` (by default
    :data:`BOT_MEAN` / :data:`BOT_STD` over 255). With neither colour nor lighting (evaluation) it is only the
    normalisation, one conversion and two in-place passes.

    Each image has its own draws, as the per-image transforms draw them, from one ``generator`` per batch (the
    trainer seeds it by ``(seed, epoch, step, process)``): drawn on the generator's device and copied to the
    batch's (:mod:`timm_tricks.draws`), so the same generator gives the same augmentation on CPU and CUDA and no
    draw reads the device. Image ``i`` of ``apply(x, d)`` equals the per-image functions on image ``i`` with the
    same numbers (``tests/test_pipeline.py``).
    """

    #: Images a CPU colours at a time: the float chain over a chunk stays in the caches (measured about 1.7x
    #: faster than over a batch of 64 at 224 px, benchmarks/data_throughput.py); the result is the same.
    cpu_chunk = 8

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 color: str | None = None, pca_std: float | None = 0.0) -> None:
        _check_color(color, pca_std)
        norm = _bot_normalize(mean, std)
        self.mean, self.std = tuple(norm.mean), tuple(norm.std)
        self.color, self.pca_std = color, float(pca_std or 0.0)
        self._constants: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    @property
    def colours(self) -> bool:
        """Whether the stage draws anything (colour or lighting), beyond normalising."""
        return self.color is not None or self.pca_std > 0

    def draw(self, n: int, generator: torch.Generator | None = None) -> BatchDraws:
        """The random numbers of a batch of ``n`` images, on the generator's device (CPU without one)."""
        ref = torch.empty(0, device=generator.device if generator is not None else "cpu")
        color = order = alpha = None
        if self.color is not None:
            color = 0.6 + 0.8 * uniform((3, n), ref, generator)
        if self.color == "jitter":
            order = uniform((n, 3), ref, generator).argsort(dim=1)
        if self.pca_std:
            alpha = normal((n, 3), ref, generator) * self.pca_std
        return BatchDraws(color, order, alpha)

    def apply(self, images: torch.Tensor, draws: BatchDraws) -> torch.Tensor:
        """The batch ``images`` (uint8, or float on the 0-1 scale) through the stage with the numbers ``draws``."""
        check_batch(images, "images")
        scale, shift, mean, std, eigval, eigvec = self._on(images.device)
        eight_bit, plain = not images.is_floating_point(), draws.color is None and draws.alpha is None
        n, c = images.shape[0], self.cpu_chunk
        if images.device.type == "cpu" and n > c and not plain:  # the same per-image operations, a cache-sized
            parts = [self.apply(images[i:i + c], draws.part(i, min(n, i + c))) for i in range(0, n, c)]  # chunk
            return torch.cat(parts)  # at a time
        x = images.float() if eight_bit else images.to(torch.float32, copy=True)
        if plain:
            return x.mul_(scale).add_(shift) if eight_bit else x.sub_(mean).div_(std)
        if eight_bit:
            x = x.div_(255.0)
        if draws.color is not None and draws.order is not None:
            x = jitter_batch(x, draws.color, draws.order)
        elif draws.color is not None:
            x = scale_hsv_batch(x, draws.color)
        if draws.alpha is not None:
            x = pca_lighting(x, alpha=draws.alpha.to(x.device, non_blocking=True), eigval=eigval, eigvec=eigvec)
        return x.sub_(mean).div_(std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``apply(images, draw(len(images), generator))``: a float32 batch, normalised, on ``images``' device."""
        return self.apply(images, self.draw(images.shape[0], generator))

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The stage's constants on ``device``, made once (a copy from host memory each call would cost a sync)."""
        if device not in self._constants:
            mean, std = torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1)
            made = (1.0 / (255.0 * std), -mean / std, mean, std, torch.tensor(IMAGENET_PCA_EIGVAL),
                    torch.tensor(IMAGENET_PCA_EIGVEC))
            self._constants[device] = tuple(t.to(device) for t in made)
        return self._constants[device]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(color={self.color!r}, pca_std={self.pca_std}, mean={self.mean}, std={self.std})"
