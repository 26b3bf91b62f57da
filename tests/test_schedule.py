"""LR schedules against the papers' formulas, and resumability."""

import math

import pytest
import torch

from timm_tricks.build import schedule_from_config
from timm_tricks.config import load_config
from timm_tricks.schedule import LRSchedule, TricksScheduler


def test_warmup_is_i_eta_over_m():
    # Bag of Tricks Sec. 3.1: batch i (1-based) of the first m uses i * eta / m.
    s = LRSchedule("cosine", steps_per_epoch=10, epochs=10, warmup_epochs=2)
    m = 20
    assert s.warmup_steps == m
    for i in range(1, m + 1):
        assert s.factor(i - 1) == pytest.approx(i / m, abs=0)


def test_cosine_matches_formula_after_warmup():
    # Sec. 5.1: eta_t = 1/2 (1 + cos(t pi / T)) eta, T = batches after warmup.
    s = LRSchedule("cosine", steps_per_epoch=7, epochs=12, warmup_epochs=3)
    m, total = 21, 84
    T = total - m
    for step in range(m, total):
        t = step - m
        assert s.factor(step) == pytest.approx(0.5 * (1 + math.cos(t * math.pi / T)), rel=1e-12)
    assert s.factor(m) == 1.0


def test_cosine_floor():
    s = LRSchedule("cosine", steps_per_epoch=1, epochs=10, min_factor=0.1)
    assert s.factor(0) == 1.0
    assert s.factor(5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert s.factor(10) == pytest.approx(0.1)


def test_step_divides_by_ten_at_milestones():
    # Bag of Tricks Sec. 2.1: lr 0.1 divided by 10 at epochs 30, 60, 90.
    s = LRSchedule("step", steps_per_epoch=5, epochs=120, milestones=(30, 60, 90), gamma=0.1)
    assert s.factor(30 * 5 - 1) == 1.0
    assert s.factor(30 * 5) == pytest.approx(0.1)
    assert s.factor(60 * 5 - 1) == pytest.approx(0.1)
    assert s.factor(60 * 5) == pytest.approx(0.01)
    assert s.factor(90 * 5) == pytest.approx(0.001)
    assert s.factor(120 * 5 - 1) == pytest.approx(0.001)


def test_exponential_staircase():
    # Xception Sec. 4.2: decay of rate 0.94 every 2 epochs.
    s = LRSchedule("exponential", steps_per_epoch=3, epochs=20, decay_rate=0.94, decay_every=2)
    for step in range(60):
        assert s.factor(step) == pytest.approx(0.94 ** ((step // 3) // 2))


def test_linear_to_floor():
    s = LRSchedule("linear", steps_per_epoch=10, epochs=9, min_factor=1e-5)
    assert s.factor(0) == 1.0
    assert s.factor(45) == pytest.approx(1 - (1 - 1e-5) * 0.5)
    assert s.factor(90) == pytest.approx(1e-5)


def test_piecewise_interpolates_in_fractional_epochs():
    s = LRSchedule("piecewise", steps_per_epoch=4, epochs=10, knots=((0, 0.0), (2, 1.0), (10, 0.1)))
    assert s.factor(0) == 0.0
    assert s.factor(4) == pytest.approx(0.5)  # epoch 1
    assert s.factor(8) == pytest.approx(1.0)  # epoch 2
    assert s.factor(6 * 4) == pytest.approx(1.0 + (0.1 - 1.0) * 4 / 8)
    assert s.factor(100) == pytest.approx(0.1)  # held after the last knot


def test_rescale_epochs_stretches_warmup_and_knots():
    # Myrtle: written for 10 epochs, run for 20 -> peak at epoch 4 instead of 2.
    cfg = load_config("myrtle_resnet9", ["train.epochs=20"])
    s = schedule_from_config(cfg, steps_per_epoch=10)
    assert s.knots == ((0.0, 0.0), (4.0, 1.0), (16.0, 0.1), (20.0, 0.1))  # cell 85's [0, 2, 8, 10] x 2
    assert s.factor(40) == pytest.approx(1.0)
    cfg = load_config("digits", ["train.epochs=30", "schedule.rescale_epochs=true", "schedule.reference_epochs=15"])
    assert schedule_from_config(cfg, 10).warmup_steps == 20  # 1 warmup epoch at 15 -> 2 at 30


def test_ramp_is_the_warmup_or_the_piecewise_rise():
    assert LRSchedule("cosine", steps_per_epoch=3, epochs=10, warmup_epochs=2.5).ramp_epochs == 2.5
    assert LRSchedule("step", steps_per_epoch=3, epochs=10, milestones=(5,)).ramp_epochs == 0.0
    # Myrtle's knots peak at epoch 2 of 10, 4 of 20 when rescaled
    assert schedule_from_config(load_config("myrtle_resnet9", ["train.epochs=20"]), 10).ramp_epochs == 4.0
    falling = LRSchedule("piecewise", steps_per_epoch=1, epochs=10, knots=((0, 1.0), (10, 0.0)), warmup_epochs=1)
    assert falling.ramp_epochs == 1.0
    held = LRSchedule("piecewise", steps_per_epoch=1, epochs=10, knots=((2, 1.0), (10, 0.0)))
    assert held.factor(0) == 1.0 and held.ramp_epochs == 0.0  # the first knot's value holds before it


def test_min_lr_is_absolute_after_linear_scaling():
    cfg = load_config("wider_resnet", ["schedule.min_lr=1e-6"])  # the recipe itself decays to 0 (inplace_abn)
    s = schedule_from_config(cfg, steps_per_epoch=100)
    assert s.min_factor == pytest.approx(1e-6 / 0.1)
    cfg = load_config("wider_resnet", ["schedule.min_lr=1e-6", "optim.linear_scaling=true", "data.batch_size=512"])
    assert schedule_from_config(cfg, steps_per_epoch=100).min_factor == pytest.approx(1e-6 / 0.2)


def _optimizer(lr=0.4):
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [p1]}, {"params": [p2], "lr_scale": 64.0}], lr=lr)


@pytest.mark.parametrize("name", ["cosine", "step", "exponential", "linear", "piecewise", "constant"])
def test_scheduler_lr_at_k_equals_after_k_steps(name):
    s = LRSchedule(name, steps_per_epoch=6, epochs=5, warmup_epochs=1 if name != "piecewise" else 0,
                   milestones=(2, 4), decay_every=1, knots=((0, 0.1), (1, 1.0), (5, 0.0)), min_factor=0.01)
    walked = TricksScheduler(opt := _optimizer(), s)
    for k in range(1, 25):
        walked.step_update(k)
        direct_opt = _optimizer()
        direct = TricksScheduler(direct_opt, s)
        direct.step_update(k)
        assert opt.param_groups[0]["lr"] == direct_opt.param_groups[0]["lr"] == 0.4 * s.factor(k)
        assert opt.param_groups[1]["lr"] == pytest.approx(64 * 0.4 * s.factor(k), rel=1e-12)


def test_scheduler_sets_step_zero_lr_at_construction_and_survives_state_dict():
    s = LRSchedule("cosine", steps_per_epoch=10, epochs=3, warmup_epochs=1)
    opt = _optimizer()
    sched = TricksScheduler(opt, s)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4 / 10)
    sched.step_update(17)
    state = sched.state_dict()
    opt2 = _optimizer()
    sched2 = TricksScheduler(opt2, s)
    sched2.load_state_dict(state)
    sched2.step_update(18)
    sched.step_update(18)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'.*cosine"):
        LRSchedule("cosin", steps_per_epoch=1, epochs=1)
    with pytest.raises(ValueError, match="two"):
        LRSchedule("piecewise", steps_per_epoch=1, epochs=1, knots=((0, 1),))
