"""Input patch whitening: a fixed convolution that decorrelates the pixels of small image patches.

Page, "How to train your ResNet 8: Bag of tricks" (Myrtle.ai 2019), section "Input patch whitening"; code
davidcpage/cifar10-fast, ``bag_of_tricks.ipynb`` cells 70 and 72 and ``torch_backend.py`` (``cov``, ``patches``,
``eigens``, ``whitening_filter``). The network's first layer becomes a 3x3 convolution with fixed weights and one
output channel per dimension of a 3x3 patch (3 x 3 x 3 = 27 for RGB): the eigenvectors of the patches' covariance,
each divided by ``sqrt(eigenvalue + eps)`` with ``eps = 1e-2``. Its outputs have a covariance close to the identity
("PCA whitening" of the patches); a learnable 1x1 convolution follows (see
:class:`timm_tricks.models.MyrtleResNet9`).

What the reference does, and this module with it:

* the patches are every 3x3 window (stride 1, no padding) of the first 10,000 training images, normalised as
  for training, without augmentation (cell 70 and ``new_dawn.py``: ``train_set['data'][:10000]``, the 4-pixel
  padding cropped off);
* the "covariance" is the second moment ``X^T X / (n - 1)`` of the patch vectors, not centred (``cov`` in
  ``torch_backend.py``): the inputs are normalised to zero mean per channel, so the two hardly differ;
* the eigenvectors are sorted by decreasing eigenvalue (``eigens``: ``flip(0)``);
* the filter convolves with zero padding 1, so the feature map keeps its size (``whitening_filter``).

For every ``eps`` the whitened patches have the diagonal covariance ``diag(lambda_i / (lambda_i + eps))``: the
identity, except in directions whose eigenvalue is not large against ``eps``.

Determinism: the second moment is summed in float64 on the images' device in a fixed order of images, and the
27 x 27 eigenproblem is solved in float64 on the CPU with each eigenvector's sign fixed (its largest component
positive), so every process that fits from the same images gets the same filter. The trainer's hook
:func:`fit_input_whitening` takes the same images on every process (the first images of the whole training set,
not of the process's shard); DDP also broadcasts buffers from process 0. Where eigenvalues repeat (grey images:
three equal channels leave 18 zero eigenvalues) the eigenvectors within them are any basis of their space, but
the whitening itself, ``W^T W = (Sigma + eps I)^-1``, is unique.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REFERENCE_EPS = 1e-2
"""Added to each eigenvalue before the square root (cifar10-fast ``whitening_block(..., eps=1e-2)``, cell 72)."""

REFERENCE_PATCH_SIZE = 3
"""Patch side (cell 70: ``patches(data, patch_size=(3, 3))``)."""

REFERENCE_IMAGES = 10_000
"""Training images the reference fits on (cell 70 and ``new_dawn.py``: ``train_set['data'][:10000]``)."""

FILE_IMAGES = 1_024
"""Images drawn for a file data set (declared: each 224 x 224 image has about 49,000 patches, so a thousand
images give 50 million patches for a 27 x 27 covariance; decoding 10,000 would slow every run's start)."""

_MAX_ROWS = 1 << 21  # patch rows per step of the float64 accumulation (bounds the unfolded patches' memory)
_CHUNK = 256  # images per batch handed out by :func:`training_images`


def patch_vectors(images: torch.Tensor, patch_size: int = REFERENCE_PATCH_SIZE) -> torch.Tensor:
    """Every ``patch_size`` x ``patch_size`` window of ``images`` (stride 1, no padding) as a row.

    Args:
        images: ``(N, C, H, W)``.
        patch_size: The window side ``k``.

    Returns:
        ``(N * (H - k + 1) * (W - k + 1), C * k * k)``; each row is ordered channel, row, column, the layout of a
        convolution weight ``(out, C, k, k)``.
    """
    if images.dim() != 4:
        raise ValueError(f"patch whitening expects (N, C, H, W) images, got shape {list(images.shape)}")
    n, c, h, w = images.shape
    if h < patch_size or w < patch_size:
        raise ValueError(f"images of {h}x{w} pixels hold no {patch_size}x{patch_size} patch")
    k = patch_size
    cols = F.unfold(images, kernel_size=k)  # (N, C*k*k, L), rows in (channel, row, column) order
    return cols.transpose(1, 2).reshape(-1, c * k * k)


def patch_moment(batches: torch.Tensor | Iterable[torch.Tensor],
                 patch_size: int = REFERENCE_PATCH_SIZE) -> tuple[torch.Tensor, int]:
    """The summed outer products ``sum_p x_p x_p^T`` of the patch vectors of ``batches``, and the patch count.

    Args:
        batches: One ``(N, C, H, W)`` tensor or an iterable of them (same ``C``).
        patch_size: The window side.

    Returns:
        ``(moment, count)``: ``moment`` is ``(C k k, C k k)`` float64 on the CPU.
    """
    chunks: Iterable[torch.Tensor] = (batches,) if isinstance(batches, torch.Tensor) else batches
    moment: torch.Tensor | None = None
    count = 0
    for batch in chunks:
        if batch.dim() != 4:
            raise ValueError(f"patch whitening expects (N, C, H, W) images, got shape {list(batch.shape)}")
        per_image = max(1, (batch.shape[2] - patch_size + 1) * (batch.shape[3] - patch_size + 1))
        step = max(1, _MAX_ROWS // per_image)
        for start in range(0, len(batch), step):
            x = patch_vectors(batch[start:start + step].detach().to(torch.float64), patch_size)
            part = x.T @ x
            moment = part if moment is None else moment + part
            count += x.shape[0]
    if moment is None or count < 2:
        raise ValueError("patch whitening needs at least two patches to fit")
    return moment.cpu(), count


def whitening_filter_from_moment(moment: torch.Tensor, count: int, channels: int,
                                 patch_size: int = REFERENCE_PATCH_SIZE,
                                 eps: float = REFERENCE_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The whitening filter of a patch second moment (:func:`patch_moment`).

    Returns:
        ``(weight, eigenvalues)``: ``weight`` is ``(C k k, C, k, k)`` float64, row ``i`` the ``i``-th eigenvector
        (by decreasing eigenvalue, largest component positive) divided by ``sqrt(lambda_i + eps)``;
        ``eigenvalues`` the matching ``lambda_i`` of ``moment / (count - 1)``.
    """
    cov = moment.to(torch.float64).cpu() / (count - 1)  # torch_backend.py ``cov``: X^T X / (n - 1)
    cov = (cov + cov.T) / 2  # exactly symmetric whatever the summation order
    lam, vec = torch.linalg.eigh(cov)  # ascending; columns are eigenvectors
    lam, vec = lam.flip(0), vec.flip(1).T  # decreasing, one eigenvector per row (``eigens``)
    rows = torch.arange(vec.shape[0])
    sign = torch.sign(vec[rows, vec.abs().argmax(dim=1)])
    vec = vec * sign[:, None]
    weight = vec / torch.sqrt(lam.clamp_min(0.0) + eps)[:, None]  # rounding noise below 0 counts as 0
    return weight.reshape(-1, channels, patch_size, patch_size), lam


def whitening_filter(images: torch.Tensor | Iterable[torch.Tensor], patch_size: int = REFERENCE_PATCH_SIZE,
                     eps: float = REFERENCE_EPS) -> torch.Tensor:
    """The fixed whitening convolution weight fitted to ``images`` (cifar10-fast ``whitening_filter(*eigens(
    patches(images)))``).

    Args:
        images: Normalised float ``(N, C, H, W)`` images, or an iterable of such batches.
        patch_size: The window side (3 in the reference).
        eps: Added to each eigenvalue (1e-2 in the reference).

    Returns:
        ``(C k k, C, k, k)`` float64 on the CPU.
    """
    moment, count = patch_moment(images, patch_size)
    channels = moment.shape[0] // (patch_size * patch_size)
    return whitening_filter_from_moment(moment, count, channels, patch_size, eps)[0]


def identity_patch_filter(channels: int, patch_size: int = REFERENCE_PATCH_SIZE) -> torch.Tensor:
    """The filter before fitting: output ``i`` copies the ``i``-th pixel of the patch (``(C k k, C, k, k)``, an
    identity matrix reshaped), so an unfitted whitening layer followed by the 1x1 conv is a plain k x k conv."""
    d = channels * patch_size * patch_size
    return torch.eye(d).reshape(d, channels, patch_size, patch_size)


class PatchWhitening(nn.Conv2d):
    """A fixed ``k x k`` convolution (zero padding ``k // 2``, no bias) with ``C k k`` outputs that whitens patches.

    cifar10-fast (cell 72) uses an ``nn.Conv2d(3, 27, 3, padding=1, bias=False)`` whose weight has
    ``requires_grad = False``. Here it is an ``nn.Conv2d`` whose ``weight`` is a buffer rather than a parameter:
    it is saved in the state dict and checkpoints (as ``<name>.weight``) and moves with the model, but gets no
    gradient, no optimizer state and no weight decay, is not counted among the parameters, and DDP re-broadcasts
    it from process 0 with the other buffers; an EMA of the model averages it as a constant. It starts as
    :func:`identity_patch_filter`; :meth:`fit` computes it from images.
    """

    def __init__(self, in_chans: int = 3, patch_size: int = REFERENCE_PATCH_SIZE, eps: float = REFERENCE_EPS) -> None:
        """Build the layer.

        Args:
            in_chans: Input channels ``C``.
            patch_size: The window side ``k`` (odd, so that the padding keeps the size).
            eps: Added to each eigenvalue when fitting.
        """
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and >= 1, got {patch_size}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(in_chans, in_chans * patch_size * patch_size, patch_size, padding=patch_size // 2,
                         bias=False)
        self.patch_size, self.eps = patch_size, float(eps)
        del self.weight  # the Parameter nn.Conv2d made; the same name as a buffer
        self.register_buffer("weight", identity_patch_filter(in_chans, patch_size))

    @torch.no_grad()
    def fit(self, images: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Set the filter from ``images`` (normalised float ``(N, C, H, W)``, or an iterable of batches) with
        :func:`whitening_filter`."""
        weight = whitening_filter(images, self.patch_size, self.eps)
        if weight.shape != self.weight.shape:
            raise ValueError(f"images with {weight.shape[1]} channels do not fit a whitening layer for "
                             f"{self.in_channels}")
        self.weight.copy_(weight.to(self.weight.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fixed, eps={self.eps}"


# ------------------------------------------------------------------------------------------------------------------
# The trainer's hook


def has_input_whitening(model: nn.Module) -> bool:
    """Whether ``model`` has a ``fit_whitening(images)`` method and a :class:`PatchWhitening` layer to fit."""
    return callable(getattr(model, "fit_whitening", None)) and any(
        isinstance(m, PatchWhitening) for m in model.modules())


def training_images(batches: Any, num_images: int | None = None) -> Iterator[torch.Tensor]:
    """The first training images of a batch source, normalised as for training, without augmentation where the
    source allows, the same on every process.

    * :class:`timm_tricks.batches.TensorBatches` (in-memory data, its ``data``): the first ``num_images`` (default
      10,000, the reference's) images of the whole training set in its stored order, normalised with the data
      set's statistics (as :meth:`~timm_tricks.batches.TensorBatches.train_batches` does before it augments).
    * :class:`timm_tricks.batches.FileBatches` (files): the first ``num_images`` (default :data:`FILE_IMAGES`)
      samples through the training transforms and the on-device stage (which normalises), its
      ``sample_images``; each sample's random draw is seeded by its index
      (:class:`~timm_tricks.batches.SeededDataset`), so every process sees the same images.

    Yields:
        Float ``(n, C, H, W)`` batches on the source's device.
    """
    # Batch sources are told apart by their attributes: importing timm_tricks.batches here would close an import
    # cycle (batches -> config -> models -> whitening).
    from .data import normalize

    data = getattr(batches, "data", None)
    if data is not None and hasattr(data, "train_images"):
        n = min(len(data.train_images), num_images or REFERENCE_IMAGES)
        for start in range(0, n, _CHUNK):
            yield normalize(data.train_images[start:min(n, start + _CHUNK)], data.mean, data.std)
        return
    if hasattr(batches, "sample_images"):  # FileBatches: its workers and its on-device stage
        yield from batches.sample_images(num_images or FILE_IMAGES)
        return
    train = getattr(batches, "train", None)
    if train is None:
        raise TypeError(f"cannot take training images from a {type(batches).__name__}")
    n = min(len(train), num_images or FILE_IMAGES)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train, range(n)), batch_size=batches.shard.batch,
                                         shuffle=False, num_workers=batches.workers)
    for images, _ in loader:
        yield images.to(batches.device)


def fit_input_whitening(model: nn.Module, batches: Any, num_images: int | None = None) -> bool:
    """Fit the input whitening of ``model`` (if it has one) from the training images of ``batches``.

    The trainer calls this once, before the first step of a new run; a resumed run loads the fitted filter from
    its checkpoint instead. The global random state is left as it was.

    Args:
        model: The network (before any wrapper); models without :func:`has_input_whitening` are left alone.
        batches: The trainer's batch source (:func:`training_images`).
        num_images: Images to fit on (default: 10,000 in memory, :data:`FILE_IMAGES` from files).

    Returns:
        Whether a whitening layer was fitted.
    """
    if not has_input_whitening(model):
        return False
    with _preserved_rng():  # a file data set's loader seeds and draws from the global generators
        model.fit_whitening(training_images(batches, num_images))
    return True


@contextmanager
def _preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) random states on exit."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


__all__ = [
    "FILE_IMAGES",
    "REFERENCE_EPS",
    "REFERENCE_IMAGES",
    "REFERENCE_PATCH_SIZE",
    "PatchWhitening",
    "fit_input_whitening",
    "has_input_whitening",
    "identity_patch_filter",
    "patch_moment",
    "patch_vectors",
    "training_images",
    "whitening_filter",
    "whitening_filter_from_moment",
]
