"""Seeds derived from (seed, epoch, step, process): the basis of exact resume.

Every random draw of a training step (data order, augmentation, mixup, dropout) comes from generators seeded by
these values, so a run resumed at step ``k`` draws exactly what the uninterrupted run drew, and no generator state
has to be saved in a checkpoint.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def step_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, epoch, step, process), stable across runs and machines."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) with one value."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def generator(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded by :func:`step_seed` of ``parts``."""
    return torch.Generator(device=device).manual_seed(step_seed(*parts))
