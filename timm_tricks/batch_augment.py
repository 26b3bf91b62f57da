"""Batched tensor augmentation for small images, applied to a whole ``NCHW`` batch on the batch's own device.

In the manner of Myrtle.ai's "How to train your ResNet" (Page 2018-2019, post 8, "Preprocessing on the GPU"; code
``davidcpage/cifar10-fast``): :func:`random_crop_reflect`, :func:`random_flip`, :func:`cutout` and the
:class:`BatchAugment` composition, each with a deterministic core (:func:`crop_reflect`, :func:`flip_images`,
:func:`cutout_at`) and draws that follow :mod:`timm_tricks.draws` (no host-device sync).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .draws import check_batch, uniform, uniform_ints

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
    check_batch(x)
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
    check_batch(x)
    n, _, h, w = x.shape
    _check_padding(padding, h, w)
    if padding == 0:
        return x.clone()
    return crop_reflect(x, uniform_ints(2 * padding + 1, (n, 2), x, generator), padding)


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
    check_batch(x)
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
    check_batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return flip_images(x, uniform((x.shape[0],), x, generator) < p)


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
    check_batch(x)
    n, _, h, w = x.shape
    _check_cutout_size(size, h, w)
    if corners.shape != (n, 2):
        raise ValueError(f"corners must have shape ({n}, 2), got {tuple(corners.shape)}")
    return _cutout_(x.clone(memory_format=torch.contiguous_format), corners, size)


def _draw_corners(x: Tensor, size: int, generator: torch.Generator | None) -> Tensor:
    """Top-left corners ``(N, 2)`` uniform over the positions that keep the square inside (rows drawn first)."""
    n, _, h, w = x.shape
    ys = uniform_ints(h - size + 1, (n, 1), x, generator)
    xs = uniform_ints(w - size + 1, (n, 1), x, generator)
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
    check_batch(x)
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
        check_batch(x)
        n, _, h, w = x.shape
        g = generator if generator is not None else self.generator
        p = self.crop_padding
        _check_padding(p, h, w)
        if self.cutout:
            _check_cutout_size(self.cutout, h, w)
        offsets = uniform_ints(2 * p + 1, (n, 2), x, g) if p else None
        mask = uniform((n,), x, g) < 0.5 if self.flip else None
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
