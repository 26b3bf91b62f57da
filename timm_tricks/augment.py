"""Image augmentation: the Bag of Tricks train and eval pipelines, and the one import for every augmentation trick.

The pipelines (He et al., "Bag of Tricks", CVPR 2019, Sec. 2.1) are :func:`bot_train_transform` and
:func:`bot_eval_transform`, built from torchvision v2 transforms plus the colour tricks of :mod:`timm_tricks.color`
(PCA lighting, HSV scaling). The batched tensor augmentation of small images lives in
:mod:`timm_tricks.batch_augment`; both are re-exported here, so ``timm_tricks.augment.BatchAugment`` and
``timm_tricks.augment.pca_lighting`` keep working.

What torchvision already does (random resized crop, flip, resize, centre crop, normalise, colour jitter) is reused
from ``torchvision.transforms.v2``; only what it lacks is written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2

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
)

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
    size = _check_positive_int(size, "size")
    scale, ratio = crop
    if pca_std is not None and not (math.isfinite(pca_std) and pca_std >= 0):
        raise ValueError(f"pca_std must be None or a finite number >= 0, got {pca_std}")
    if color not in (*COLOR_MODES, None):
        raise ValueError(f"color must be one of {', '.join(map(repr, COLOR_MODES))}, None, got {color!r}")
    if not (len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0):
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale}")
    if not (len(ratio) == 2 and 0.0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio}")
    if not 0.0 <= flip_p <= 1.0:
        raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
    steps: list[Any] = [
        v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), interpolation=_mode(interpolation),
                             antialias=True),
        v2.RandomHorizontalFlip(p=flip_p),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if color == "hsv":
        steps.append(RandomHSVScale(0.6, 1.4))
    elif color == "jitter":
        steps.append(bot_color_jitter())
    if pca_std:
        steps.append(PCALighting(alpha_std=pca_std))
    steps += [_bot_normalize(mean, std), v2.ToPureTensor()]
    return v2.Compose(steps)


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
    size = _check_positive_int(size, "size")
    resize = _check_positive_int(resize, "resize")
    if resize < size:
        raise ValueError(f"resize must be >= size ({size}) so the centre crop fits, got {resize}")
    return v2.Compose([
        v2.Resize(resize, interpolation=_mode(interpolation), antialias=True),
        v2.CenterCrop(size),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        _bot_normalize(mean, std),
        v2.ToPureTensor(),
    ])
