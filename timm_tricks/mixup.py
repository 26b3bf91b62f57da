"""Mixup through timm's :class:`~timm.data.Mixup`, with the option to switch it off for the last epochs.

Bag of Tricks (He et al., CVPR 2019, Sec. 5.4) mixes pairs of examples, ``x = lam x_i + (1 - lam) x_j`` and the
same for the one-hot labels, with ``lam ~ Beta(alpha, alpha)``, alpha = 0.2, and trains 200 epochs instead of 120.
timm's training script adds switching mixup off for the final epochs (``--mixup-off-epoch``).

timm's Mixup can also smooth labels, but only in the uniform form; here it always returns unsmoothed mixed
one-hots, and :class:`timm_tricks.losses.LabelSmoothingCrossEntropy` smooths them in the form the config names.
"""

from __future__ import annotations

from timm.data import Mixup


def create_mixup(alpha: float, num_classes: int) -> Mixup | None:
    """timm's Mixup with ``Beta(alpha, alpha)`` mixing of the whole batch, or None when ``alpha`` is 0.

    The returned callable maps ``(images, labels)`` to ``(mixed images, (N, K) mixed one-hot targets)``; the
    batch size must be even (timm mixes each sample with the batch flipped).
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return None
    return Mixup(mixup_alpha=alpha, cutmix_alpha=0.0, prob=1.0, mode="batch", label_smoothing=0.0,
                 num_classes=num_classes)


def mixup_active(epoch: int, epochs: int, off_epochs: int = 0) -> bool:
    """Whether mixup is on in ``epoch`` (0-based) of ``epochs`` when it is switched off for the last ``off_epochs``."""
    return epoch < epochs - off_epochs


def set_mixup_epoch(mixup: Mixup | None, epoch: int, epochs: int, off_epochs: int = 0) -> None:
    """Switch ``mixup`` on or off for ``epoch`` (timm's ``mixup_enabled`` flag)."""
    if mixup is not None:
        mixup.mixup_enabled = mixup_active(epoch, epochs, off_epochs)
