"""Learning-rate schedules, computed per iteration.

Every schedule is a pure function of the step (:meth:`LRSchedule.factor`), so the learning rate at step ``k``
computed directly equals the one reached after ``k`` steps, and a resumed run needs only the step count.
:class:`TricksScheduler` plugs that function into timm's :class:`~timm.scheduler.scheduler.Scheduler` base class,
which applies each parameter group's ``lr_scale`` and gives ``state_dict``/``load_state_dict``.

Sources:
    * Linear warmup: Goyal et al. 2017, and He et al., "Bag of Tricks", CVPR 2019, Sec. 3.1: over the first
      ``m`` batches the learning rate at batch ``i`` (1-based) is ``i * eta / m``.
    * Cosine: Bag of Tricks Sec. 5.1, ``eta_t = 1/2 (1 + cos(t pi / T)) eta`` with ``T`` the number of batches
      after warmup.
    * Step: Bag of Tricks Sec. 2.1 baseline, divided by 10 at epochs 30, 60 and 90.
    * Exponential (staircase): Chollet, "Xception", CVPR 2017, Sec. 4.2, 0.94 every 2 epochs.
    * Linear to a floor: Mapillary inplace_abn ImageNet recipe, lr decreased linearly per step.
    * Piecewise linear: Page, "How to train your ResNet" (Myrtle.ai 2018), with the knots rescaled in proportion
      to the epoch budget.

The module takes plain arguments; :func:`timm_tricks.build.schedule_from_config` builds a config's schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from timm.scheduler.scheduler import Scheduler

from .choices import SCHEDULES


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate multiplier as a function of the (0-based) optimizer step.

    Args:
        name: One of :data:`SCHEDULES`.
        steps_per_epoch: Optimizer steps in one epoch.
        epochs: Epochs of the run; the schedule covers ``epochs * steps_per_epoch`` steps.
        warmup_epochs: Linear warmup length in epochs (may be fractional); 0 for none.
        milestones: ``step``: epochs at which the multiplier is multiplied by ``gamma``.
        gamma: ``step``: the factor applied at each milestone.
        decay_rate: ``exponential``: the factor applied every ``decay_every`` epochs.
        decay_every: ``exponential``: the staircase period in epochs.
        min_factor: ``cosine``: the floor, as a fraction of the peak; ``linear``: the end value.
        knots: ``piecewise``: ``(epoch, multiplier)`` pairs, interpolated linearly in fractional epochs and held
            constant after the last knot.
    """

    name: str
    steps_per_epoch: int
    epochs: float
    warmup_epochs: float = 0.0
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    decay_rate: float = 0.94
    decay_every: float = 2.0
    min_factor: float = 0.0
    knots: tuple[tuple[float, float], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; valid choices: {', '.join(SCHEDULES)}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.name == "piecewise" and len(self.knots) < 2:
            raise ValueError("a piecewise schedule needs at least two (epoch, multiplier) knots")
        xs = [k[0] for k in self.knots]
        if any(b < a for a, b in zip(xs, xs[1:], strict=False)):
            raise ValueError(f"piecewise knots must have non-decreasing epochs, got {xs}")

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run."""
        return max(1, round(self.epochs * self.steps_per_epoch))

    @property
    def warmup_steps(self) -> int:
        """Optimizer steps spent in linear warmup."""
        return round(self.warmup_epochs * self.steps_per_epoch)

    @property
    def ramp_epochs(self) -> float:
        """Epochs before the multiplier first reaches its peak: the warmup, or a piecewise schedule's rise.

        Until then a run's accuracy says little about its learning rate (ASHA waits this long, per trial).
        """
        rise = 0.0
        if self.name == "piecewise":
            top = max(k[1] for k in self.knots)
            # the first knot's value holds before it, so a schedule that starts at its top has no rise
            rise = 0.0 if self.knots[0][1] == top else next(k[0] for k in self.knots if k[1] == top)
        return max(self.warmup_epochs, rise)

    def factor(self, step: int) -> float:
        """The multiplier of the peak learning rate used by optimizer step ``step`` (0-based)."""
        m = self.warmup_steps
        if step < m:
            # Bag of Tricks Sec. 3.1: batch i (1-based) of m uses i * eta / m.
            return (step + 1) / m
        epoch = step / self.steps_per_epoch
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            passed = sum(1 for e in self.milestones if math.floor(epoch + 1e-9) >= e)
            return self.gamma**passed
        if self.name == "exponential":
            return self.decay_rate ** math.floor(math.floor(epoch + 1e-9) / self.decay_every)
        if self.name == "piecewise":
            return _interp(epoch, self.knots)
        # cosine and linear run over the steps after warmup: t in [0, T].
        t = step - m
        span = max(1, self.total_steps - m)
        frac = min(1.0, t / span)
        if self.name == "cosine":
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * frac))
        return 1.0 - (1.0 - self.min_factor) * frac  # linear

    def factors(self, steps: int | None = None) -> list[float]:
        """The multipliers of steps ``0 .. steps-1`` (default: the whole run)."""
        return [self.factor(s) for s in range(self.total_steps if steps is None else steps)]


def _interp(x: float, knots: Sequence[Sequence[float]]) -> float:
    """Linear interpolation through ``knots``, constant outside their range."""
    if x <= knots[0][0]:
        return float(knots[0][1])
    for (x0, y0), (x1, y1) in zip(knots, knots[1:], strict=False):
        if x <= x1:
            return float(y1) if x1 == x0 else float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    return float(knots[-1][1])


class TricksScheduler(Scheduler):
    """timm scheduler driving an optimizer's groups with an :class:`LRSchedule`, stepped per iteration.

    Call :meth:`step_update` with the number of optimizer steps done after each step (as timm's train loop
    does); the constructor already sets the learning rate of step 0. Groups carrying ``lr_scale`` (see
    :func:`timm_tricks.optim.param_groups`) get ``lr * lr_scale``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> None:
        self.schedule = schedule
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=False)
        self.step_update(0)

    def _get_lr(self, t: int) -> list[float]:
        f = self.schedule.factor(t)
        return [base * f for base in self.base_values]


def lr_table(schedule: LRSchedule, peak_lr: float) -> list[tuple[int, float, float]]:
    """``(step, epoch, lr)`` for every step of ``schedule`` at ``peak_lr``, read off a real optimizer driven by
    :class:`TricksScheduler` (the lr of parameter groups with multiplier 1)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak_lr)
    scheduler = TricksScheduler(optimizer, schedule)
    rows = []
    for step in range(schedule.total_steps):
        rows.append((step, step / schedule.steps_per_epoch, optimizer.param_groups[0]["lr"]))
        scheduler.step_update(step + 1)
    return rows
