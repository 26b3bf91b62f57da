"""Per-image colour tricks for ImageNet-style training: PCA lighting noise and HSV scaling.

* :func:`pca_lighting` / :class:`PCALighting` (AlexNet, Krizhevsky et al. 2012, Sec. 4.1) and :func:`estimate_pca`.
* :func:`scale_hsv` / :class:`RandomHSVScale` and :func:`bot_color_jitter` (Bag of Tricks, He et al. 2019,
  Sec. 2.1).

Each has a pure functional core taking an optional ``torch.Generator`` (draws follow :mod:`timm_tricks.draws`) and
a torchvision v2 transform class for composition. :func:`scale_hsv` given *tensor* factors reads one flag per call
to validate them; nothing else here reads a value back from the device.
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

from .draws import check_image_tensor, normal, uniform

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
    check_image_tensor(img)
    if alpha is None and not (alpha_std >= 0.0 and math.isfinite(alpha_std)):
        raise ValueError(f"alpha_std must be a finite number >= 0, got {alpha_std}")
    val, vec = _as_pca_tensors(eigval, eigvec, img)
    batch_shape = (img.shape[0], 3) if img.ndim == 4 else (3,)
    if alpha is None:
        if alpha_std == 0.0:
            return img.clone()
        a = normal(batch_shape, img, generator).to(img.dtype) * alpha_std
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
        check_image_tensor(batch, name=f"images[{i}]", floating=False)
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
    check_image_tensor(img)
    work = img if img.dtype in (torch.float32, torch.float64) else img.float()
    fh = _factor(hue_factor, "hue_factor", work)
    fs = _factor(saturation_factor, "saturation_factor", work)
    fv = _factor(brightness_factor, "brightness_factor", work)
    return _scale_hsv(work, fh, fs, fv).to(img.dtype)


def scale_hsv_batch(images: Tensor, factors: Tensor) -> Tensor:
    """:func:`scale_hsv` of a float ``(N, 3, H, W)`` batch with one drawn ``(hue, saturation, brightness)`` column
    of ``factors`` ``(3, N)`` per image, unchecked: no device read, for factors drawn in range (Bag of Tricks
    Sec. 2.1's U[0.6, 1.4]); image ``i`` equals ``scale_hsv(images[i], *factors[:, i])``."""
    f = factors.to(device=images.device, dtype=images.dtype).view(3, -1, 1, 1)
    return _scale_hsv(images, f[0], f[1], f[2])


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
        check_image_tensor(t)
        shape = (3, t.shape[0]) if t.ndim == 4 else (3,)
        work = t if t.dtype in (torch.float32, torch.float64) else t.float()
        f = (self.low + (self.high - self.low) * uniform(shape, t, self.generator)).to(work.dtype)
        f = f.view(3, -1, 1, 1) if t.ndim == 4 else f
        out = _scale_hsv(work, f[0], f[1], f[2]).to(t.dtype)  # drawn factors need no validation (and no device read)
        if self.p >= 1.0:
            return out
        keep = uniform(shape[1:], t, self.generator) >= self.p
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
