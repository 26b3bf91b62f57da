"""Random draws and argument checks shared by the augmentation modules (:mod:`timm_tricks.color`,
:mod:`timm_tricks.batch_augment`).

The rule: when a ``generator`` is given, the numbers are drawn on the generator's device and then moved to the
images' device with a non-blocking copy (a CPU generator therefore gives the same augmentation on CPU and CUDA);
when no generator is given they are drawn on the images' device from that device's default generator. Nothing is
read back from the device, so no draw forces a host-device sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def check_image_tensor(img: Any, name: str = "img", floating: bool = True) -> None:
    """Raise ValueError unless ``img`` is a ``CHW`` / ``NCHW`` tensor with 3 channels (float when ``floating``)."""
    if not isinstance(img, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (3, H, W) or (N, 3, H, W), got {type(img).__name__}")
    if img.ndim not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"{name} must have shape (3, H, W) or (N, 3, H, W), got {tuple(img.shape)}")
    if floating and not img.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (values on the 0-1 scale), got dtype {img.dtype}")


def check_batch(x: Any, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is an ``NCHW`` tensor (any channel count, any dtype)."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an (N, C, H, W) tensor, got {shape}")


def draw_device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    """The device random numbers are drawn on: the generator's if given, else the images'."""
    return generator.device if generator is not None else x.device


def uniform(shape: Sequence[int], x: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) float32 numbers of ``shape`` drawn per the module's rule, returned on ``x.device``."""
    u = torch.rand(tuple(shape), generator=generator, device=draw_device(x, generator))
    return u.to(x.device, non_blocking=True)


def normal(shape: Sequence[int], x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, 1) float32 numbers of ``shape`` drawn per the module's rule, returned on ``x.device``."""
    z = torch.randn(tuple(shape), generator=generator, device=draw_device(x, generator))
    return z.to(x.device, non_blocking=True)


def uniform_ints(high: int, shape: Sequence[int], x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Integers uniform in ``[0, high)`` (int64) of ``shape`` drawn per the module's rule, returned on ``x.device``."""
    k = torch.randint(0, high, tuple(shape), generator=generator, device=draw_device(x, generator))
    return k.to(x.device, non_blocking=True)
