"""Mixup through timm's :class:`~timm.data.Mixup`, with the option to switch it off for the last epochs.

Bag of Tricks (He et al., CVPR 2019, Sec. 5.4) mixes pairs of examples, ``x = lam x_i + (1 - lam) x_j`` and the
same for the one-hot labels, with ``lam ~ Beta(alpha, alpha)``, alpha = 0.2, and trains 200 epochs instead of 120.
timm's training script adds switching mixup off for the final epochs (``--mixup-off-epoch``).

timm's Mixup can also smooth labels, but only in the uniform form; here it always returns unsmoothed mixed
one-hots, and :class:`timm_tricks.losses.LabelSmoothingCrossEntropy` smooths them in the form the config names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from timm.data import Mixup


class SeededMixup(Mixup):
    """timm's :class:`~timm.data.Mixup` in batch mode whose draws come from a generator of the call's own.

    ``mixup(images, labels, seed=s)`` draws the mixing decision and ``lam ~ Beta(alpha, alpha)`` from a NumPy
    ``Generator(PCG64(s))``, in timm's order (``Mixup._params_per_batch``: ``rand() < prob``, then ``beta``), and
    mixes each sample with the batch flipped as timm does; without ``seed`` it draws from ``np.random`` as timm
    does. A trainer that seeds every step (:mod:`timm_tricks.seeding`) so gets the step's mixing without
    reseeding NumPy's global generator. (NumPy's, not a ``torch.Generator``: torch samples a Beta only from its
    global generator, ``torch.distributions.Beta``.)
    """

    _rng: Any = None

    def __call__(self, x: torch.Tensor, target: torch.Tensor, seed: int | None = None) -> Any:
        self._rng = np.random.Generator(np.random.PCG64(seed)) if seed is not None else None
        try:
            return super().__call__(x, target)
        finally:
            self._rng = None

    def _params_per_batch(self) -> tuple[float, bool]:
        if self._rng is None:
            return super()._params_per_batch()
        lam = 1.0
        if self.mixup_enabled and self._rng.random() < self.mix_prob:
            lam = float(self._rng.beta(self.mixup_alpha, self.mixup_alpha))
        return lam, False


def create_mixup(alpha: float, num_classes: int) -> SeededMixup | None:
    """timm's Mixup with ``Beta(alpha, alpha)`` mixing of the whole batch, or None when ``alpha`` is 0.

    The returned callable maps ``(images, labels)`` to ``(mixed images, (N, K) mixed one-hot targets)``; the
    batch size must be even (timm mixes each sample with the batch flipped). Pass ``seed=`` to draw from a
    generator of that seed (:class:`SeededMixup`).
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return None
    return SeededMixup(mixup_alpha=alpha, cutmix_alpha=0.0, prob=1.0, mode="batch", label_smoothing=0.0,
                       num_classes=num_classes)


def mixup_active(epoch: int, epochs: int, off_epochs: int = 0) -> bool:
    """Whether mixup is on in ``epoch`` (0-based) of ``epochs`` when it is switched off for the last ``off_epochs``."""
    return epoch < epochs - off_epochs


def set_mixup_epoch(mixup: Mixup | None, epoch: int, epochs: int, off_epochs: int = 0) -> None:
    """Switch ``mixup`` on or off for ``epoch`` (timm's ``mixup_enabled`` flag)."""
    if mixup is not None:
        mixup.mixup_enabled = mixup_active(epoch, epochs, off_epochs)
