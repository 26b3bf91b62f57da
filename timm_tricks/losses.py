"""Classification losses: label smoothing in the paper's and torch's forms, and knowledge distillation.

All losses accept either integer labels ``(N,)`` or soft targets ``(N, K)`` (mixup's mixed one-hots), so
smoothing, mixup and distillation compose in any combination.

Sources:
    * Label smoothing: Szegedy et al. 2016; He et al., "Bag of Tricks", CVPR 2019, Sec. 5.2, whose form gives the
      true class ``1 - eps`` and every other class ``eps / (K - 1)`` (eps = 0.1). PyTorch's
      ``CrossEntropyLoss(label_smoothing=eps)`` and timm's Mixup use the uniform form: ``eps / K`` added to every
      class, the true class ``1 - eps + eps / K``.
    * Distillation: Hinton et al. 2015; Bag of Tricks Sec. 5.3: ``l(p, softmax(z)) + T^2 l(softmax(r/T),
      softmax(z/T))`` with the teacher's logits ``r``, the student's ``z`` and T = 20.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .choices import SMOOTHING_FORMS


def smooth_targets(target: torch.Tensor, num_classes: int, eps: float, form: str = "paper") -> torch.Tensor:
    """Label-smoothed target distributions.

    Args:
        target: Integer labels ``(N,)`` or target distributions ``(N, K)`` (rows summing to 1).
        num_classes: ``K``.
        eps: Smoothing in ``[0, 1)``.
        form: ``paper`` (true class ``1 - eps``, others ``eps/(K-1)``) or ``uniform`` (``(1 - eps) q + eps/K``).

    Returns:
        ``(N, K)`` float distributions. For soft targets the smoothing is applied linearly, so smoothing a mixup
        of two one-hots equals the same mixup of the two smoothed one-hots.
    """
    if form not in SMOOTHING_FORMS:
        raise ValueError(f"unknown smoothing form {form!r}; valid choices: {', '.join(SMOOTHING_FORMS)}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label smoothing eps must be in [0, 1), got {eps}")
    if num_classes < 2:
        raise ValueError(f"label smoothing needs at least 2 classes, got {num_classes}")
    if target.ndim == 1:
        q = F.one_hot(target.long(), num_classes).float()
    else:
        q = target.float()
    if eps == 0.0:
        return q
    if form == "paper":
        return q * (1.0 - eps) + (1.0 - q) * (eps / (num_classes - 1))
    return q * (1.0 - eps) + eps / num_classes


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k q_k log softmax(z)_k`` for target distributions ``q``."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy against label-smoothed targets (integer labels or soft targets).

    Args:
        num_classes: ``K``.
        eps: Smoothing; Bag of Tricks Sec. 5.5 uses 0.1, Myrtle's final ResNet-9 recipe 0.2.
        form: ``paper`` (default) or ``uniform``; see :func:`smooth_targets`.
    """

    def __init__(self, num_classes: int, eps: float = 0.1, form: str = "paper") -> None:
        super().__init__()
        smooth_targets(torch.zeros(1, dtype=torch.long), num_classes, eps, form)  # validate early
        self.num_classes, self.eps, self.form = num_classes, eps, form

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(logits, smooth_targets(target, self.num_classes, self.eps, self.form))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, eps={self.eps}, form={self.form!r}"


def distillation_soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """``T^2`` times the cross-entropy between the softened teacher and student outputs (Hinton et al. 2015).

    The ``T^2`` factor keeps the soft term's gradient, ``T (softmax(z/T) - softmax(r/T))``, on the same scale as
    the hard term's when ``T`` changes. The teacher's logits carry no gradient.
    """
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return temperature**2 * soft_target_cross_entropy(student_logits / temperature, teacher)


class DistillationLoss(nn.Module):
    """Hard loss on the labels plus ``weight x T^2`` x the soft cross-entropy to the teacher (BoT Sec. 5.3).

    Args:
        base_loss: The hard loss on (possibly smoothed, possibly mixed) targets, e.g.
            :class:`LabelSmoothingCrossEntropy`.
        temperature: ``T``; the paper uses 20.
        weight: Weight of the soft term relative to the hard term (1 in the paper).
    """

    def __init__(self, base_loss: nn.Module, temperature: float = 20.0, weight: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        if weight < 0:
            raise ValueError(f"distillation weight must be >= 0, got {weight}")
        self.base_loss, self.temperature, self.weight = base_loss, temperature, weight

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        hard = self.base_loss(student_logits, target)
        return hard + self.weight * distillation_soft_loss(student_logits, teacher_logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, weight={self.weight}"
