"""Image augmentation tricks: the Bag of Tricks pipeline, PCA lighting, HSV scaling and batched tensor augmentation.

Three groups of components live here, each with a pure functional core (taking an optional ``torch.Generator``
for determinism) and, where torchvision-style composition needs it, a thin transform class:

* **Per-image colour tricks** for ImageNet-style training: :func:`pca_lighting` / :class:`PCALighting`
  (AlexNet, Krizhevsky et al. 2012, Sec. 4.1), :func:`estimate_pca`, and :func:`scale_hsv` /
  :class:`RandomHSVScale` (Bag of Tricks, He et al. 2019, Sec. 2.1).
* **The Bag of Tricks train and eval pipelines** (He et al. 2019, Sec. 2.1): :func:`bot_train_transform` and
  :func:`bot_eval_transform`, built from torchvision v2 transforms plus the two colour tricks above.
* **Batched tensor augmentation** for small images, applied to a whole ``NCHW`` batch on the batch's own device, in
  the manner of Myrtle.ai's "How to train your ResNet" (Page 2018-2019, post 8, "Preprocessing on the GPU"; code
  ``davidcpage/cifar10-fast``):
  :func:`random_crop_reflect`, :func:`random_flip`, :func:`cutout` and the :class:`BatchAugment` composition.

What torchvision already does (random resized crop, flip, resize, centre crop, normalise, colour jitter) is reused
from ``torchvision.transforms.v2``; only what it lacks is written here.

Random numbers (all functions in this module): when a ``generator`` is given, the numbers are drawn on the
generator's device and then moved to the images' device with a non-blocking copy (a CPU generator therefore gives the
same augmentation on CPU and CUDA); when no generator is given they are drawn on the images' device from that
device's default generator. The random transforms and the batched functions never read a value back from the
device, so they force no host-device sync; the one exception in the module is :func:`scale_hsv` given *tensor*
factors, which reads one flag per call to validate them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional import is_pure_tensor

from .choices import COLOR_MODES

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

# --------------------------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------------------------

#: Eigenvalues of the ImageNet RGB pixel PCA for images on the 0-1 scale, largest first. These are the values used by
#: fb.resnet.torch (``datasets/imagenet.lua``, whose comment says "Computed from random subset of ImageNet training
#: images") and by GluonCV / MXNet (which store them times 255: 55.46, 4.794, 1.148, for 0-255 images). Their
#: provenance beyond that comment is undocumented; see :func:`estimate_pca` for a caveat on their scale.
IMAGENET_PCA_EIGVAL: tuple[float, float, float] = (0.2175, 0.0188, 0.0045)

#: Eigenvectors matching :data:`IMAGENET_PCA_EIGVAL` (same sources). Row ``i`` is colour channel ``i`` (R, G, B);
#: column ``j`` is principal component ``j``, i.e. ``eigvec[:, j]`` is the unit RGB direction whose eigenvalue is
#: ``eigval[j]`` (the first column, roughly ``-(1, 1, 1)/sqrt(3)``, is the brightness direction).
IMAGENET_PCA_EIGVEC: tuple[tuple[float, float, float], ...] = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

#: Per-channel (R, G, B) normalisation mean on the 0-255 scale (Bag of Tricks, He et al. 2019, Sec. 2.1).
BOT_MEAN: tuple[float, float, float] = (123.68, 116.779, 103.939)
#: Per-channel (R, G, B) normalisation std on the 0-255 scale (Bag of Tricks, He et al. 2019, Sec. 2.1).
BOT_STD: tuple[float, float, float] = (58.393, 57.12, 57.375)


# --------------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------------


def _check_image_tensor(img: Any, name: str = "img", floating: bool = True) -> None:
    """Raise ValueError unless ``img`` is a ``CHW`` / ``NCHW`` tensor with 3 channels (float when ``floating``)."""
    if not isinstance(img, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (3, H, W) or (N, 3, H, W), got {type(img).__name__}")
    if img.ndim not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"{name} must have shape (3, H, W) or (N, 3, H, W), got {tuple(img.shape)}")
    if floating and not img.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (values on the 0-1 scale), got dtype {img.dtype}")


def _check_batch(x: Any, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is an ``NCHW`` tensor (any channel count, any dtype)."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an (N, C, H, W) tensor, got {shape}")


def _draw_device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    """The device random numbers are drawn on: the generator's if given, else the images'."""
    return generator.device if generator is not None else x.device


def _rand(shape: Sequence[int], x: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) float32 numbers of ``shape`` drawn per the module's rule, returned on ``x.device``."""
    u = torch.rand(tuple(shape), generator=generator, device=_draw_device(x, generator))
    return u.to(x.device, non_blocking=True)


def _randn(shape: Sequence[int], x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, 1) float32 numbers of ``shape`` drawn per the module's rule, returned on ``x.device``."""
    z = torch.randn(tuple(shape), generator=generator, device=_draw_device(x, generator))
    return z.to(x.device, non_blocking=True)


def _randint(high: int, shape: Sequence[int], x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Integers uniform in ``[0, high)`` (int64) of ``shape`` drawn per the module's rule, returned on ``x.device``."""
    k = torch.randint(0, high, tuple(shape), generator=generator, device=_draw_device(x, generator))
    return k.to(x.device, non_blocking=True)


def _as_pca_tensors(eigval: Sequence[float] | Tensor, eigvec: Sequence[Sequence[float]] | Tensor, ref: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """Validate and convert PCA constants to tensors on ``ref``'s device and dtype."""
    val = torch.as_tensor(eigval, dtype=ref.dtype, device=ref.device)
    vec = torch.as_tensor(eigvec, dtype=ref.dtype, device=ref.device)
    if val.shape != (3,):
        raise ValueError(f"eigval must have 3 entries (one per principal component), got shape {tuple(val.shape)}")
    if vec.shape != (3, 3):
        raise ValueError(f"eigvec must be 3x3 (rows R, G, B; columns components), got shape {tuple(vec.shape)}")
    return val, vec


def _pil_roundtrip(img: PIL.Image.Image, fn: Any) -> PIL.Image.Image:
    """Apply a float-tensor function to a PIL RGB image: to 0-1 float, ``fn``, clamp, round back to uint8 PIL."""
    t = TF.to_dtype(TF.pil_to_tensor(img.convert("RGB")), torch.float32, scale=True)
    out = fn(t).clamp(0.0, 1.0)
    return TF.to_pil_image(TF.to_dtype(out, torch.uint8, scale=True))


# --------------------------------------------------------------------------------------------------------------------
# PCA lighting noise (AlexNet, Krizhevsky et al. 2012, Sec. 4.1)
# --------------------------------------------------------------------------------------------------------------------


def pca_lighting(
    img: Tensor,
    alpha_std: float = 0.1,
    eigval: Sequence[float] | Tensor = IMAGENET_PCA_EIGVAL,
    eigvec: Sequence[Sequence[float]] | Tensor = IMAGENET_PCA_EIGVEC,
    generator: torch.Generator | None = None,
    alpha: Tensor | Sequence[float] | None = None,
) -> Tensor:
    """Add AlexNet-style PCA lighting noise to RGB images.

    AlexNet (Krizhevsky et al. 2012, Sec. 4.1) adds to every pixel of an image the same RGB offset
    ``[p1, p2, p3] @ [a1 * l1, a2 * l2, a3 * l3]``, where ``p_j`` / ``l_j`` are the eigenvectors / eigenvalues of the
    3x3 covariance of ImageNet RGB pixel values and ``a_j ~ N(0, 0.1)`` is drawn once per image. Bag of Tricks
    (He et al. 2019, Sec. 2.1) uses the same noise, "PCA noise with a coefficient sampled from a normal distribution
    N(0, 0.1)". Here, with ``eigvec`` rows = channels and columns = components, the offset is
    ``eigvec @ (alpha * eigval)``, exactly as fb.resnet.torch's ``Lighting`` transform computes it. The result is not
    clamped (the reference implementations do not clamp either).

    Args:
        img: Float RGB image ``(3, H, W)`` or batch ``(N, 3, H, W)`` on the 0-1 scale (the scale of the default
            constants).
        alpha_std: Standard deviation of the per-image coefficients ``alpha``; 0.1 in AlexNet Sec. 4.1 and Bag of
            Tricks Sec. 2.1. 0 returns the input unchanged. Must be >= 0.
        eigval: The 3 eigenvalues, same order as the columns of ``eigvec``. Default: :data:`IMAGENET_PCA_EIGVAL`.
        eigvec: 3x3 matrix, row ``i`` = channel (R, G, B), column ``j`` = component ``j``. Default:
            :data:`IMAGENET_PCA_EIGVEC`. :func:`estimate_pca` returns this convention.
        generator: Optional generator for ``alpha`` (see the module docstring for the device rule).
        alpha: Fixed coefficients instead of random ones: shape ``(3,)``, or ``(N, 3)`` for a batch (one row per
            image). When given, ``alpha_std`` and ``generator`` are ignored.

    Returns:
        A new tensor of the same shape, dtype and device: ``img + offset`` with one RGB offset per image.

    Raises:
        ValueError: If ``img`` is not a float ``(3, H, W)`` / ``(N, 3, H, W)`` tensor, ``alpha_std < 0``, or a
            constant or ``alpha`` has the wrong shape.
    """
    _check_image_tensor(img)
    if alpha is None and not (alpha_std >= 0.0 and math.isfinite(alpha_std)):
        raise ValueError(f"alpha_std must be a finite number >= 0, got {alpha_std}")
    val, vec = _as_pca_tensors(eigval, eigvec, img)
    batch_shape = (img.shape[0], 3) if img.ndim == 4 else (3,)
    if alpha is None:
        if alpha_std == 0.0:
            return img.clone()
        a = _randn(batch_shape, img, generator).to(img.dtype) * alpha_std
    else:
        a = torch.as_tensor(alpha, dtype=img.dtype, device=img.device)
        if a.shape != batch_shape:
            raise ValueError(f"alpha must have shape {batch_shape} for an image of shape {tuple(img.shape)}, "
                             f"got {tuple(a.shape)}")
    # offset[..., i] = sum_j eigvec[i, j] * alpha[..., j] * eigval[j]
    offset = (a * val) @ vec.T
    return img + offset[..., :, None, None]


class PCALighting(v2.Transform):
    """Transform form of :func:`pca_lighting` (AlexNet Sec. 4.1; Bag of Tricks Sec. 2.1, alpha ~ N(0, 0.1)).

    Works on float ``(3, H, W)`` / ``(N, 3, H, W)`` tensors and ``tv_tensors.Image`` (returned unclamped), and on PIL
    images (converted to 0-1 float, noised, clamped and rounded back to 8-bit). Composes with torchvision v2.

    Args:
        alpha_std: Standard deviation of the per-image coefficient; 0.1 per AlexNet Sec. 4.1. Must be >= 0.
        eigval: Eigenvalues (see :func:`pca_lighting`).
        eigvec: Eigenvectors, rows = channels, columns = components (see :func:`pca_lighting`).
        generator: Optional generator used for every call (deterministic sequences).

    Raises:
        ValueError: If ``alpha_std < 0`` or the constants have the wrong shape.
    """

    _transformed_types = (tv_tensors.Image, PIL.Image.Image, is_pure_tensor)

    def __init__(
        self,
        alpha_std: float = 0.1,
        eigval: Sequence[float] | Tensor = IMAGENET_PCA_EIGVAL,
        eigvec: Sequence[Sequence[float]] | Tensor = IMAGENET_PCA_EIGVEC,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not (alpha_std >= 0.0 and math.isfinite(alpha_std)):
            raise ValueError(f"alpha_std must be a finite number >= 0, got {alpha_std}")
        val, vec = _as_pca_tensors(eigval, eigvec, torch.empty(0))
        self.alpha_std = float(alpha_std)
        self.eigval = val
        self.eigvec = vec
        self.generator = generator

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            return _pil_roundtrip(inpt, self._noise)
        out = self._noise(inpt.as_subclass(Tensor))
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    def _noise(self, t: Tensor) -> Tensor:
        return pca_lighting(t, self.alpha_std, self.eigval, self.eigvec, generator=self.generator)

    def extra_repr(self) -> str:
        return f"alpha_std={self.alpha_std}"


def estimate_pca(images: Tensor | Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Principal components of the RGB pixel values of a set of images (AlexNet, Krizhevsky et al. 2012, Sec. 4.1).

    Every pixel of every image is one 3-vector sample; the function returns the eigen-decomposition of their 3x3
    covariance (unbiased, divided by ``n - 1``), accumulated in float64 so it can stream over a dataset.

    Convention (the same one :func:`pca_lighting` uses): ``eigval[j]`` is the ``j``-th largest eigenvalue and
    ``eigvec[:, j]`` (a **column**) is its unit eigenvector; row ``i`` of ``eigvec`` is channel ``i`` (R, G, B). So
    ``cov @ eigvec[:, j] == eigval[j] * eigvec[:, j]`` and ``cov == eigvec @ diag(eigval) @ eigvec.T``. Eigenvectors
    are defined up to sign (the sign does not matter for lighting noise, whose coefficients are symmetric).

    Note on scale: the values are variances in the units of the input (pass 0-1 images to match 0-1 constants). The
    published :data:`IMAGENET_PCA_EIGVAL` are not simply these eigenvalues for ImageNet on the 0-1 scale: their sum
    (0.241) exceeds the total RGB variance implied by the usual ImageNet std (0.229, 0.224, 0.225), which is
    0.153, and GluonCV rescales them to 0-255 linearly (x255, as one would a standard deviation, not x255**2). Their
    exact derivation is undocumented, so this function follows the paper's definition; ``eigval.sqrt()`` gives an
    amplitude that scales linearly with the pixel values, if that is what is wanted.

    Args:
        images: A float tensor ``(N, 3, H, W)`` (or a single ``(3, H, W)`` image), or an iterable of such tensors
            (e.g. batches from a DataLoader). Any real dtype; values are used as given.

    Returns:
        ``(eigval, eigvec)``: float64 CPU tensors of shapes ``(3,)`` (descending, clamped at 0) and ``(3, 3)``.

    Raises:
        ValueError: If an element is not a ``(3, H, W)`` / ``(N, 3, H, W)`` tensor, or fewer than 2 pixels are seen.
    """
    batches: Iterable[Tensor] = [images] if isinstance(images, Tensor) else images
    total = torch.zeros(3, dtype=torch.float64)
    outer = torch.zeros(3, 3, dtype=torch.float64)
    n = 0
    for i, batch in enumerate(batches):
        _check_image_tensor(batch, name=f"images[{i}]", floating=False)
        pix = batch.detach().to(torch.float64).movedim(-3, 0).reshape(3, -1)
        total += pix.sum(dim=1).cpu()
        outer += (pix @ pix.T).cpu()
        n += pix.shape[1]
    if n < 2:
        raise ValueError(f"estimate_pca needs at least 2 pixels, got {n}")
    mean = total / n
    cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(eigval, descending=True)
    return eigval[order].clamp(min=0.0), eigvec[:, order]


# --------------------------------------------------------------------------------------------------------------------
# HSV scaling (Bag of Tricks, He et al. 2019, Sec. 2.1)
# --------------------------------------------------------------------------------------------------------------------


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """Convert RGB to HSV, vectorised over any leading dimensions (channel dimension ``-3``).

    The standard hexcone model (same results as Python's ``colorsys.rgb_to_hsv``): ``V = max``,
    ``S = (max - min) / max`` (0 for black), ``H`` in ``[0, 1)`` (0 for grays).

    Args:
        rgb: Float tensor ``(..., 3, H, W)`` with values in ``[0, 1]``.

    Returns:
        Tensor of the same shape holding ``(H, S, V)`` along dimension ``-3``.
    """
    r, g, b = rgb.unbind(dim=-3)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    chroma = delta > 0
    safe = torch.where(chroma, delta, torch.ones_like(delta))
    # Hue sector by which channel holds the maximum (ties resolved R, then G, then B, as colorsys does).
    h = torch.where(
        maxc == r,
        (g - b) / safe,
        torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe),
    )
    h = torch.where(chroma, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Convert HSV (as produced by :func:`rgb_to_hsv`) back to RGB, vectorised.

    Uses the closed form ``f(n) = V - V * S * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 H) mod 6`` and
    ``n = 5, 3, 1`` for R, G, B, which equals the usual six-sector table without any branching.

    Args:
        hsv: Float tensor ``(..., 3, H, W)``; hue in turns (any real value, taken mod 1), S and V in ``[0, 1]``.

    Returns:
        RGB tensor of the same shape.
    """
    h, s, v = hsv.unbind(dim=-3)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(-3), 6.0)
    w = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    v = v.unsqueeze(-3)
    return v - v * s.unsqueeze(-3) * w


def _factor(f: float | Tensor, name: str, img: Tensor) -> Tensor:
    """Validate an HSV factor and shape it to broadcast against the ``(..., H, W)`` planes of ``img``."""
    if isinstance(f, Tensor):
        t = f.to(device=img.device, dtype=img.dtype)
        n = img.shape[0] if img.ndim == 4 else None
        if t.ndim == 1 and n is not None and t.shape[0] == n:
            t = t.view(n, 1, 1)
        elif t.ndim != 0:
            raise ValueError(f"{name} must be a number, a 0-d tensor, or (for an (N, 3, H, W) batch) a tensor of "
                             f"shape (N,), got shape {tuple(t.shape)} for images of shape {tuple(img.shape)}")
        if bool((~torch.isfinite(t) | (t < 0)).any()):  # one check per call, not per image
            raise ValueError(f"{name} must be finite and >= 0, got {f}")
        return t
    if not (math.isfinite(f) and f >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {f}")
    return torch.tensor(float(f), dtype=img.dtype, device=img.device)


def scale_hsv(
    img: Tensor,
    hue_factor: float | Tensor = 1.0,
    saturation_factor: float | Tensor = 1.0,
    brightness_factor: float | Tensor = 1.0,
) -> Tensor:
    """Scale hue, saturation and brightness multiplicatively, as Bag of Tricks Sec. 2.1 words it.

    He et al. (2019), Sec. 2.1: "Scale hue, saturation, and brightness with coefficients uniformly drawn from
    [0.6, 1.4]". This implements the sentence literally: RGB -> HSV, ``H <- (H * hue_factor) mod 1``,
    ``S <- min(S * saturation_factor, 1)``, ``V <- min(V * brightness_factor, 1)``, HSV -> RGB. Note that a
    multiplicative hue factor leaves red (``H = 0``) fixed and moves hues near 1 (magenta) the most; that follows from
    the paper's wording. (GluonCV's reference training script, ``train_imagenet.py``, does something else: it jitters
    brightness, contrast and saturation by 0.4, the equivalent of torchvision ``ColorJitter(0.4, 0.4, 0.4)``; see
    :func:`bot_color_jitter`.)

    Args:
        img: Float RGB image ``(3, H, W)`` or batch ``(N, 3, H, W)`` with values in ``[0, 1]``.
        hue_factor: Multiplier of the hue (in turns, result taken mod 1). A number, or a ``(N,)`` tensor giving one
            factor per image of a batch. Must be >= 0.
        saturation_factor: Multiplier of the saturation (clamped to 1). 0 gives gray. Same forms; >= 0.
        brightness_factor: Multiplier of the HSV value ``max(R, G, B)`` (clamped to 1). Same forms; >= 0.

    Returns:
        The scaled RGB tensor, same shape, dtype and device. Computed in at least float32.

    Raises:
        ValueError: If ``img`` is not a float ``(3, H, W)`` / ``(N, 3, H, W)`` tensor, or a factor is negative,
            non-finite or wrongly shaped.
    """
    _check_image_tensor(img)
    work = img if img.dtype in (torch.float32, torch.float64) else img.float()
    fh = _factor(hue_factor, "hue_factor", work)
    fs = _factor(saturation_factor, "saturation_factor", work)
    fv = _factor(brightness_factor, "brightness_factor", work)
    return _scale_hsv(work, fh, fs, fv).to(img.dtype)


def _scale_hsv(work: Tensor, fh: Tensor, fs: Tensor, fv: Tensor) -> Tensor:
    """Unchecked core of :func:`scale_hsv`: factors already validated and broadcastable against the HSV planes."""
    h, s, v = rgb_to_hsv(work).unbind(dim=-3)
    h = torch.remainder(h * fh, 1.0)
    s = torch.clamp(s * fs, max=1.0)
    v = torch.clamp(v * fv, max=1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=-3))


class RandomHSVScale(v2.Transform):
    """Scale hue, saturation and brightness by factors drawn from ``U[low, high]`` (Bag of Tricks Sec. 2.1).

    He et al. (2019), Sec. 2.1 draws the three coefficients uniformly from [0.6, 1.4]; here each of the three is drawn
    independently, and independently per image for a ``(N, 3, H, W)`` batch. With probability ``1 - p`` an image is
    returned unchanged (bit-exact). See :func:`scale_hsv` for the operation and for GluonCV's different choice.

    Works on float tensors / ``tv_tensors.Image`` (0-1 scale) and on PIL images (converted and rounded back).

    Args:
        low: Lower bound of the factors (0.6 per the paper). Must satisfy ``0 <= low <= high``.
        high: Upper bound of the factors (1.4 per the paper).
        p: Probability of applying the scaling to an image, in ``[0, 1]``.
        generator: Optional generator used for every call.

    Raises:
        ValueError: If the bounds or ``p`` are out of range.
    """

    _transformed_types = (tv_tensors.Image, PIL.Image.Image, is_pure_tensor)

    def __init__(self, low: float = 0.6, high: float = 1.4, p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
            raise ValueError(f"need 0 <= low <= high (finite), got low={low}, high={high}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.low, self.high, self.p = float(low), float(high), float(p)
        self.generator = generator

    def _scale(self, t: Tensor) -> Tensor:
        _check_image_tensor(t)
        shape = (3, t.shape[0]) if t.ndim == 4 else (3,)
        work = t if t.dtype in (torch.float32, torch.float64) else t.float()
        f = (self.low + (self.high - self.low) * _rand(shape, t, self.generator)).to(work.dtype)
        f = f.view(3, -1, 1, 1) if t.ndim == 4 else f
        out = _scale_hsv(work, f[0], f[1], f[2]).to(t.dtype)  # drawn factors need no validation (and no device read)
        if self.p >= 1.0:
            return out
        keep = _rand(shape[1:], t, self.generator) >= self.p
        return torch.where(keep.view(*keep.shape, *([1] * 3)), t, out)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            return _pil_roundtrip(inpt, self._scale)
        out = self._scale(inpt.as_subclass(Tensor))
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}, p={self.p}"


def bot_color_jitter() -> v2.ColorJitter:
    """The colour augmentation of GluonCV's reference ImageNet script, as a torchvision transform.

    GluonCV's ``scripts/classification/imagenet/train_imagenet.py`` (the code released with Bag of Tricks) uses
    ``RandomColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)`` rather than the paper's HSV scaling
    (He et al. 2019, Sec. 2.1); torchvision's ``ColorJitter(0.4, 0.4, 0.4)`` draws each factor from ``U[0.6, 1.4]`` and
    applies the three in random order, which is the equivalent. (fb.resnet.torch's ImageNet pipeline uses the same
    ``ColorJitter`` 0.4 followed by ``Lighting(0.1)``.)

    Returns:
        ``torchvision.transforms.v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)``.
    """
    return v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)


# --------------------------------------------------------------------------------------------------------------------
# Bag of Tricks pipelines (He et al. 2019, Sec. 2.1)
# --------------------------------------------------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


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
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    flip_p: float = 0.5,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
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
        scale: Area fraction range of the random crop ((0.08, 1.0) in the paper).
        ratio: Aspect ratio range of the random crop ((3/4, 4/3) in the paper).
        flip_p: Probability of the horizontal flip (0.5 in the paper).
        mean: Normalisation mean (R, G, B) on the 0-1 scale; None for the paper's. Give ``std`` with it.
        std: Normalisation std (R, G, B) on the 0-1 scale; None for the paper's.

    Returns:
        A ``torchvision.transforms.v2.Compose`` mapping a PIL image (or uint8 ``(3, H, W)`` tensor) to a plain float32
        ``(3, size, size)`` tensor.

    Raises:
        ValueError: If ``size`` is not a positive integer, ``pca_std`` is negative, ``color`` is not one of the
            choices, ``scale`` / ``ratio`` / ``flip_p`` are out of range, or ``mean`` / ``std`` are malformed.
    """
    size = _check_positive_int(size, "size")
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
        v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True),
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
        v2.Resize(resize, antialias=True),
        v2.CenterCrop(size),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        _bot_normalize(mean, std),
        v2.ToPureTensor(),
    ])


# --------------------------------------------------------------------------------------------------------------------
# Batched tensor augmentation (Myrtle.ai, Page 2019, post 8, "Preprocessing on the GPU")
# --------------------------------------------------------------------------------------------------------------------


def _reflect_index(idx: Tensor, n: int) -> Tensor:
    """Map indices in ``[-(n - 1), 2n - 2]`` into ``[0, n)`` by reflection without repeating the edge (``reflect``)."""
    idx = idx.abs()
    return torch.where(idx >= n, 2 * (n - 1) - idx, idx)


def _check_padding(padding: Any, h: int, w: int) -> None:
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= padding < min(h, w):
        raise ValueError(f"padding must be an integer in [0, {min(h, w) - 1}] for {h}x{w} images, got {padding!r}")


def _check_cutout_size(size: Any, h: int, w: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= min(h, w):
        raise ValueError(f"size must be an integer in [1, {min(h, w)}] for {h}x{w} images, got {size!r}")


def _source_index(x: Tensor, offsets: Tensor | None, padding: int, flip: Tensor | None) -> Tensor:
    """Flat source index ``(N, H, W)`` into each ``H * W`` plane for a reflect crop and an optional flip."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).expand(n, h)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if offsets is not None and padding:
        offsets = offsets.to(device=x.device, dtype=torch.long)
        rows = _reflect_index(offsets[:, 0:1] - padding + rows, h)  # source row of each output row
        cols = _reflect_index(offsets[:, 1:2] - padding + cols, w)  # source column of each output column
    if flip is not None:
        cols = torch.where(flip.to(device=x.device, dtype=torch.bool).view(n, 1), cols.flip(1), cols)
    return rows.reshape(n, h, 1) * w + cols.reshape(n, 1, w)


def _gather_planes(src: Tensor, index: Tensor, c: int) -> Tensor:
    """``out[n, c, k] = src[n, c, index[n, k]]`` for a flat ``(N, H, W)`` index shared by the channels."""
    n, h, w = index.shape
    return torch.gather(src, 2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def crop_reflect(x: Tensor, offsets: Tensor, padding: int = 4, flip: Tensor | None = None) -> Tensor:
    """Crop every image of a batch from its reflect-padded version at its own offset (the deterministic core).

    Equivalent to ``F.pad(x, (p, p, p, p), mode="reflect")`` followed by taking, for image ``i``, the ``H`` x ``W``
    window whose top-left corner is ``offsets[i] = (dy, dx)``, with ``0 <= dy, dx <= 2p``; and, for the images
    selected by ``flip``, mirroring the window left-right (``flip_images(crop_reflect(x, offsets, p), flip)``). It is
    done as one vectorised gather from the unpadded images with reflected (and, where flipped, reversed) source
    indices: the padded batch is never materialised and there is no Python loop over images.

    Args:
        x: Batch ``(N, C, H, W)``, any dtype, any device.
        offsets: Integer tensor ``(N, 2)`` of ``(dy, dx)`` window offsets in ``[0, 2 * padding]``. Values are not
            checked (that would need a device read); out-of-range values give wrong windows.
        padding: Reflect padding ``p`` on every side; ``0 <= p < min(H, W)`` (the limit of reflect padding).
        flip: Optional boolean tensor ``(N,)``; ``True`` also mirrors that image's window.

    Returns:
        A new contiguous batch with the same shape, dtype and device as ``x``.

    Raises:
        ValueError: If ``x`` is not 4-D, ``padding`` is out of range, or ``offsets`` / ``flip`` are wrongly shaped.
    """
    _check_batch(x)
    n, c, h, w = x.shape
    _check_padding(padding, h, w)
    if offsets.shape != (n, 2):
        raise ValueError(f"offsets must have shape ({n}, 2), got {tuple(offsets.shape)}")
    if flip is not None and flip.shape != (n,):
        raise ValueError(f"flip must have shape ({n},), got {tuple(flip.shape)}")
    return _gather_planes(x.reshape(n, c, h * w), _source_index(x, offsets, padding, flip), c)


def random_crop_reflect(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Random crop with reflect padding, every image of the batch at its own offset (Myrtle.ai, Page 2019, post 8).

    Myrtle.ai's CIFAR-10 pipeline pads 32x32 images by 4 pixels with reflection and takes a random 32x32 crop; here
    the whole ``NCHW`` batch is done at once on its device. Offsets ``(dy, dx)`` are uniform in ``[0, 2p]`` each,
    drawn per image as one ``(N, 2)`` integer tensor (see the module docstring for where), then applied with
    :func:`crop_reflect`.

    Args:
        x: Batch ``(N, C, H, W)``, any dtype, any device.
        padding: Reflect padding on every side (4 in the Myrtle.ai recipe); ``0 <= padding < min(H, W)``; 0 returns
            a copy.
        generator: Optional generator for the offsets.

    Returns:
        The augmented batch, same shape, dtype and device.

    Raises:
        ValueError: If ``x`` is not 4-D or ``padding`` is out of range.
    """
    _check_batch(x)
    n, _, h, w = x.shape
    _check_padding(padding, h, w)
    if padding == 0:
        return x.clone()
    return crop_reflect(x, _randint(2 * padding + 1, (n, 2), x, generator), padding)


def flip_images(x: Tensor, mask: Tensor) -> Tensor:
    """Flip left-right exactly the images of a batch selected by ``mask`` (the deterministic core).

    Args:
        x: Batch ``(N, C, H, W)``.
        mask: Boolean tensor ``(N,)``; ``True`` flips that image.

    Returns:
        A new batch with the selected images mirrored along the width.

    Raises:
        ValueError: If ``x`` is not 4-D or ``mask`` is not ``(N,)``.
    """
    _check_batch(x)
    if mask.shape != (x.shape[0],):
        raise ValueError(f"mask must have shape ({x.shape[0]},), got {tuple(mask.shape)}")
    return torch.where(mask.to(device=x.device, dtype=torch.bool).view(-1, 1, 1, 1), x.flip(-1), x)


def random_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Horizontal flip of each image of a batch with probability ``p``, independently (Myrtle.ai, Page 2019, post 8).

    The flip decision of image ``i`` is ``u[i] < p`` with ``u`` one ``(N,)`` draw from U[0, 1).

    Args:
        x: Batch ``(N, C, H, W)``, any dtype, any device.
        p: Flip probability per image, in ``[0, 1]`` (0.5 in the Myrtle.ai recipe).
        generator: Optional generator for the per-image draws.

    Returns:
        The augmented batch, same shape, dtype and device.

    Raises:
        ValueError: If ``x`` is not 4-D or ``p`` is outside ``[0, 1]``.
    """
    _check_batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return flip_images(x, _rand((x.shape[0],), x, generator) < p)


def _cutout_(x: Tensor, corners: Tensor, size: int) -> Tensor:
    """In-place cutout on a contiguous batch: only the ``size`` affected rows of each plane are read and written."""
    n, c, h, w = x.shape
    corners = corners.to(device=x.device, dtype=torch.long)
    y0 = corners[:, 0].clamp(0, h - size).view(n, 1, 1)
    x0 = corners[:, 1].clamp(0, w - size).view(n, 1)
    plane = torch.arange(n * c, device=x.device).view(n, c, 1) * h
    rows = (plane + y0 + torch.arange(size, device=x.device)).view(-1)  # (N * C * size,) row numbers
    dx = torch.arange(w, device=x.device) - x0
    hole = ((dx >= 0) & (dx < size)).view(n, 1, w)
    flat = x.view(n * c * h, w)
    band = flat.index_select(0, rows).view(n, c * size, w).masked_fill_(hole, 0)
    flat.index_copy_(0, rows, band.view(-1, w))
    return x


def cutout_at(x: Tensor, corners: Tensor, size: int = 8) -> Tensor:
    """Zero a ``size`` x ``size`` square in every image at its own top-left corner (the deterministic core).

    Only the ``size`` rows of each image plane that the square touches are gathered, masked and scattered back, with
    per-image row and column ranges built by broadcasting: no loop over images. All channels are zeroed.

    Args:
        x: Batch ``(N, C, H, W)``.
        corners: Integer tensor ``(N, 2)`` of ``(y0, x0)`` top-left corners; the square covers rows
            ``y0 .. y0 + size - 1`` and columns ``x0 .. x0 + size - 1``. Corners are clamped to
            ``[0, H - size] x [0, W - size]`` so the square always lies inside the image.
        size: Side of the square; ``1 <= size <= min(H, W)``.

    Returns:
        A new contiguous batch with the squares zeroed.

    Raises:
        ValueError: If ``x`` is not 4-D, ``size`` is out of range, or ``corners`` is not ``(N, 2)``.
    """
    _check_batch(x)
    n, _, h, w = x.shape
    _check_cutout_size(size, h, w)
    if corners.shape != (n, 2):
        raise ValueError(f"corners must have shape ({n}, 2), got {tuple(corners.shape)}")
    return _cutout_(x.clone(memory_format=torch.contiguous_format), corners, size)


def _draw_corners(x: Tensor, size: int, generator: torch.Generator | None) -> Tensor:
    """Top-left corners ``(N, 2)`` uniform over the positions that keep the square inside (rows drawn first)."""
    n, _, h, w = x.shape
    ys = _randint(h - size + 1, (n, 1), x, generator)
    xs = _randint(w - size + 1, (n, 1), x, generator)
    return torch.cat((ys, xs), dim=1)


def cutout(x: Tensor, size: int = 8, generator: torch.Generator | None = None) -> Tensor:
    """Cutout: zero one random ``size`` x ``size`` square per image, fully inside it (Myrtle.ai, Page 2019, post 8).

    Myrtle.ai's recipe adds 8x8 cutout to pad-crop and flip; as in its reference code (``davidcpage/cifar10-fast``)
    the square lies entirely inside the image, with its top-left corner uniform over the ``(H - size + 1) x
    (W - size + 1)`` valid positions, drawn per image. (DeVries and Taylor's original cutout lets the square overhang
    the border; this is the Myrtle.ai variant.)

    Args:
        x: Batch ``(N, C, H, W)``, any dtype, any device.
        size: Side of the square (8 in the Myrtle.ai recipe); ``1 <= size <= min(H, W)``.
        generator: Optional generator for the positions.

    Returns:
        The augmented batch, same shape, dtype and device.

    Raises:
        ValueError: If ``x`` is not 4-D or ``size`` is out of range.
    """
    _check_batch(x)
    _check_cutout_size(size, x.shape[2], x.shape[3])
    return cutout_at(x, _draw_corners(x, size, generator), size)


class BatchAugment:
    """Pad-crop, flip and cutout on a whole ``NCHW`` batch at once (Myrtle.ai, Page 2019, post 8).

    "How to train your ResNet" moves data augmentation onto the GPU and applies it to whole batches; the recipe is
    reflect-pad 4 and random 32x32 crop, horizontal flip with probability 0.5, and 8x8 cutout. A call gives exactly
    ``cutout(random_flip(random_crop_reflect(x, p, g), 0.5, g), s, g)`` (same random draws, in that order), but
    fuses the crop and the flip into one gather and zeroes the cutout in place on that fresh tensor, touching only
    the ``s`` affected rows of each plane. (Folding the cutout into the gather as well, by pointing the hole at an
    appended zero, measured slower on the CPU: it costs an extra copy of the batch.) The same code runs on CPU and
    CUDA, with random numbers drawn as the module docstring describes and no host-device sync.

    Args:
        crop_padding: Reflect padding for the random crop (4); 0 or None disables the crop.
        flip: Whether to flip each image with probability 0.5.
        cutout: Side of the cutout square (8); 0 or None disables cutout.
        generator: Default generator for every call (a call's own ``generator`` argument takes precedence).

    Raises:
        ValueError: If ``crop_padding`` or ``cutout`` is negative or not an integer.
    """

    def __init__(self, crop_padding: int | None = 4, flip: bool = True, cutout: int | None = 8,
                 generator: torch.Generator | None = None) -> None:
        for name, value in (("crop_padding", crop_padding), ("cutout", cutout)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an integer >= 0, got {value!r}")
        self.crop_padding = crop_padding or 0
        self.flip = bool(flip)
        self.cutout = cutout or 0
        self.generator = generator

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch ``(N, C, H, W)``.

        Args:
            x: The batch, any dtype, any device.
            generator: Generator for this call; defaults to the one given at construction (or the device default).

        Returns:
            A new contiguous batch of the same shape, dtype and device.

        Raises:
            ValueError: If ``x`` is not 4-D or is too small for the padding or the cutout size.
        """
        _check_batch(x)
        n, _, h, w = x.shape
        g = generator if generator is not None else self.generator
        p = self.crop_padding
        _check_padding(p, h, w)
        if self.cutout:
            _check_cutout_size(self.cutout, h, w)
        offsets = _randint(2 * p + 1, (n, 2), x, g) if p else None
        mask = _rand((n,), x, g) < 0.5 if self.flip else None
        if offsets is not None:
            out = crop_reflect(x, offsets, p, flip=mask)  # one gather for the crop and the flip
        elif mask is not None:
            out = flip_images(x, mask)
        else:
            out = x.clone(memory_format=torch.contiguous_format)
        if self.cutout:
            out = _cutout_(out.contiguous(), _draw_corners(x, self.cutout, g), self.cutout)  # in place, fresh tensor
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(crop_padding={self.crop_padding}, flip={self.flip}, cutout={self.cutout})"
