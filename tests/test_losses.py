"""Label smoothing, distillation, mixup and flip TTA against their formulas."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timm_tricks.losses import (
    DistillationLoss,
    LabelSmoothingCrossEntropy,
    distillation_soft_loss,
    smooth_targets,
    soft_target_cross_entropy,
)
from timm_tricks.mixup import create_mixup, mixup_active, set_mixup_epoch
from timm_tricks.tta import flip_tta


def test_paper_form_values():
    # Bag of Tricks Sec. 5.2: 1 - eps for the true class, eps / (K - 1) otherwise.
    q = smooth_targets(torch.tensor([2, 0]), num_classes=5, eps=0.1, form="paper")
    assert q[0, 2] == pytest.approx(0.9) and q[0, 0] == pytest.approx(0.1 / 4)
    assert torch.allclose(q.sum(1), torch.ones(2))


def test_uniform_form_matches_torch():
    logits = torch.randn(6, 7, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 3, 4, 6])
    ours = LabelSmoothingCrossEntropy(7, eps=0.2, form="uniform")(logits, target)
    torch_ref = F.cross_entropy(logits, target, label_smoothing=0.2)
    assert ours.item() == pytest.approx(torch_ref.item(), rel=1e-6)


def test_paper_form_loss_matches_hand_computation():
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([3, 0, 1])
    logp = F.log_softmax(logits, -1)
    hand = 0.0
    for i, t in enumerate(target.tolist()):
        hand += -(0.9 * logp[i, t] + sum(0.1 / 3 * logp[i, k] for k in range(4) if k != t))
    assert LabelSmoothingCrossEntropy(4, 0.1)(logits, target).item() == pytest.approx(hand.item() / 3, rel=1e-6)


def test_smoothing_commutes_with_mixing():
    a, b, lam, k = torch.tensor([1]), torch.tensor([3]), 0.3, 5
    mixed = lam * F.one_hot(a, k).float() + (1 - lam) * F.one_hot(b, k).float()
    for form in ("paper", "uniform"):
        lhs = smooth_targets(mixed, k, 0.1, form)
        rhs = lam * smooth_targets(a, k, 0.1, form) + (1 - lam) * smooth_targets(b, k, 0.1, form)
        assert torch.allclose(lhs, rhs, atol=1e-7)


def test_smoothing_zero_is_plain_cross_entropy():
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert LabelSmoothingCrossEntropy(3, 0.0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6)


def test_bad_smoothing_arguments():
    with pytest.raises(ValueError, match="unknown smoothing form 'papr'"):
        LabelSmoothingCrossEntropy(3, 0.1, "papr")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LabelSmoothingCrossEntropy(3, 1.0)


def test_distillation_soft_gradient_is_T_times_softmax_difference():
    # d/dz [T^2 CE(softmax(r/T), softmax(z/T))] = T (softmax(z/T) - softmax(r/T)) / N for a batch mean.
    T = 20.0
    z = torch.randn(2, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    r = torch.randn(2, 5, generator=torch.Generator().manual_seed(3), requires_grad=True)
    distillation_soft_loss(z, r, T).backward()
    expected = T * (F.softmax(z.detach() / T, -1) - F.softmax(r.detach() / T, -1)) / 2
    assert torch.allclose(z.grad, expected, atol=1e-6)
    assert r.grad is None  # the teacher gets no gradient


def test_distillation_loss_is_hard_plus_weighted_soft():
    z, r = torch.randn(4, 3), torch.randn(4, 3)
    target = torch.tensor([0, 1, 2, 0])
    base = LabelSmoothingCrossEntropy(3, 0.1)
    T = 20.0
    teacher = F.softmax(r / T, -1)
    soft = (-(teacher * F.log_softmax(z / T, -1)).sum(1)).mean()
    for weight in (1.0, 0.5):
        loss = DistillationLoss(base, temperature=T, weight=weight)(z, r, target)
        assert loss.item() == pytest.approx((base(z, target) + weight * T**2 * soft).item(), rel=1e-5)


def test_distillation_with_mixed_smoothed_targets():
    mixup = create_mixup(0.2, num_classes=3)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 1])
    x, soft = mixup(x, y)
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
    z, r = torch.randn(4, 3), torch.randn(4, 3)
    loss = DistillationLoss(LabelSmoothingCrossEntropy(3, 0.1), 20.0)(z, r, soft)
    expected_hard = soft_target_cross_entropy(z, smooth_targets(soft, 3, 0.1))
    assert loss.item() == pytest.approx((expected_hard + distillation_soft_loss(z, r, 20.0)).item(), rel=1e-6)


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
    mixup = create_mixup(0.2, num_classes=4)
    torch.manual_seed(1)
    np.random.seed(1)  # timm's Mixup draws lambda with NumPy
    x = torch.randn(6, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, soft = mixup(x.clone(), y)
    lam = soft[0, y[0]].item() if y[0] != y.flip(0)[0] else None
    assert lam is not None
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.allclose(soft, lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y.flip(0), 4).float(),
                          atol=1e-6)  # float32 targets: 1 - lam is exact only to float32's resolution


def test_mixup_off_for_last_epochs():
    assert create_mixup(0.0, 10) is None
    assert [mixup_active(e, 10, 2) for e in range(10)] == [True] * 8 + [False] * 2
    mixup = create_mixup(0.2, 3)
    set_mixup_epoch(mixup, 9, 10, 2)
    x = torch.randn(2, 1, 2, 2)
    mixed, soft = mixup(x.clone(), torch.tensor([0, 1]))
    assert torch.equal(mixed, x) and torch.equal(soft, F.one_hot(torch.tensor([0, 1]), 3).float())


def test_flip_tta_averages_image_and_mirror():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4)).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1))) / 2
        assert torch.allclose(flip_tta(model, x), expected, atol=1e-6)
        probs = (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2
        assert torch.allclose(flip_tta(model, x, "probs").exp(), probs, atol=1e-6)
    with pytest.raises(ValueError, match="logits, probs"):
        flip_tta(model, x, "mean")
