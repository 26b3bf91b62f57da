"""Seeds derived from (seed, epoch, step, process): the basis of exact resume.

Every random draw of a training step (data order, augmentation, mixup, dropout) comes from generators seeded by
these values, so a run resumed at step ``k`` draws exactly what the uninterrupted run drew, and no generator state
has to be saved in a checkpoint.
"""

from __future__ import annotations

import hashlib
import os
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


def use_deterministic_kernels() -> None:
    """Make the GPU compute the same bits each time (PyTorch's reproducibility notes, docs/notes/randomness.rst):
    cuDNN's deterministic convolutions without autotuning, cuBLAS with a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``
    ``:4096:8``, read when cuBLAS starts: at the process's first matrix product on the GPU, so a process that ran one
    before keeps its own) and ``torch.use_deterministic_algorithms``. An op with no deterministic CUDA kernel warns
    instead of stopping the run (``warn_only``): ``AdaptiveAvgPool2d``'s backward, in every ResNet here, is one; its
    1x1 output adds one value into each input gradient, so the sum has one order.

    Without this a resumed run on an H200 differed from the uninterrupted one in its weights' bytes
    (``tests/test_train.py::test_sigkill_mid_epoch_and_resume_is_bit_identical``, 2026-11-30, docs/benchmarks.md).
    On a CPU every kernel used here is deterministic already. The switches are torch's globals: they stay set for
    the rest of the process, for whatever else it runs."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def global_generators(device: torch.device) -> tuple[torch.Generator, ...] | None:
    """torch's global generators that a step's kernels draw from without a generator of their own (dropout,
    timm's drop path): the CPU's and ``device``'s own; None for a device other than the CPU or CUDA, which
    :func:`seed_global_torch` then seeds through ``torch.manual_seed``."""
    if device.type == "cpu":
        return (torch.default_generator,)
    if device.type == "cuda":
        torch.cuda.init()
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.default_generator, torch.cuda.default_generators[index]
    return None


def seed_global_torch(seed: int, generators: tuple[torch.Generator, ...] | None) -> None:
    """Seed ``generators`` (:func:`global_generators`) with ``seed``: on the host, no device sync (a CUDA
    generator's seed and offset go to each kernel as launch arguments). ``torch.manual_seed`` does the same for
    every device type torch knows and costs ~100 times more (~0.25 ms a call on a CPU build: it visits CUDA, MPS,
    XPU, MTIA and custom devices); :func:`seed_everything` also reseeds Python's and NumPy's generators (~0.4 ms)."""
    if generators is None:
        torch.manual_seed(seed)
        return
    for g in generators:
        g.manual_seed(seed)


def generator(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded by :func:`step_seed` of ``parts``."""
    return torch.Generator(device=device).manual_seed(step_seed(*parts))
