"""ASHA that judges a trial only after its learning rate has ramped up.

ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) compares every trial at the
same rungs (after ``grace_period`` epochs, then x ``reduction_factor``). A search over warmup lengths breaks
that comparison: after one epoch a trial still in a 3-epoch warmup (Bag of Tricks Sec. 3.1) has trained at a
third of its peak rate or less, and a trial with a high peak rate can sit at chance until its warmup ends and
then overtake the rest. On the digits space (``tune_spaces/digits.yaml``: lr up to 1.0, 0-3 warmup epochs)
Ray's ASHA cut such trials at epoch 1, FIFO's best among them (docs/benchmarks.md).

:class:`WarmupASHA` lets a trial run untouched while ``training_iteration`` (epochs, one report each) is at most
its own ramp, which the trial reports as :data:`RAMP_KEY` (``LRSchedule.ramp_epochs``: the warmup, or a piecewise
schedule's rise). Its first result after the ramp is then judged by Ray's ASHA bracket at the highest rung it has
passed and not been recorded at, against the results other trials recorded there; every later rung is as in
ASHA. A trial without a ramp (or one that does not report :data:`RAMP_KEY`) gets exactly Ray's ASHA decisions.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

RAMP_KEY = "ramp_epochs"  # reported by every trial: epochs before its learning rate reaches its peak


class WarmupASHA(ASHAScheduler):
    """Ray's :class:`~ray.tune.schedulers.ASHAScheduler`, holding off on each trial until its warmup is over."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        t = result.get(self._time_attr)
        if t is not None and t < self._max_t and t <= result.get(RAMP_KEY, 0):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
