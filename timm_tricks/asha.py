"""ASHA that judges a trial only after its learning rate has ramped up.

ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) compares every trial at the
same rungs (after ``grace_period`` epochs, then x ``reduction_factor``). A search over warmup lengths breaks
that comparison: after one epoch a trial still in a 3-epoch warmup (Bag of Tricks Sec. 3.1) has trained at a
third of its peak rate or less, and a trial with a high peak rate can sit at chance until its warmup ends and
then overtake the rest. On the digits space (``tune_spaces/digits.yaml``: lr up to 1.0, 0-3 warmup epochs)
Ray's ASHA cut such trials at epoch 1, FIFO's best among them (docs/benchmarks.md).

:class:`WarmupASHA` lets a trial run untouched while ``training_iteration`` (epochs, one report each) is at most
its own ramp, which the trial reports as :data:`RAMP_KEY` (``LRSchedule.ramp_epochs``: the warmup, or a piecewise
schedule's rise). From then on a trial is judged only at the highest rung it has reached, once per rung: its first
result after the ramp at the highest rung at or below that epoch (against the results the others recorded there,
and recorded there itself, from one or more epochs later than theirs), then at every higher rung as in ASHA. The
rungs inside its ramp are skipped for good; Ray's bracket alone would fill them in, one per epoch, with the
trial's later results (and again when the trial stops), raising their cutoffs for every trial after it. A trial
without a ramp (or one that does not report :data:`RAMP_KEY`) gets exactly Ray's ASHA decisions.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

RAMP_KEY = "ramp_epochs"  # reported by every trial: epochs before its learning rate reaches its peak


class WarmupASHA(ASHAScheduler):
    """Ray's :class:`~ray.tune.schedulers.ASHAScheduler`, holding off on each trial until its warmup is over."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        t = result.get(self._time_attr)
        if t is not None and t < self._max_t and (t <= result.get(RAMP_KEY, 0) or self._judged(trial, t)):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        # Tune calls this with the last result when a trial ends or is stopped; Ray's ASHA records it at a rung
        t = result.get(self._time_attr)
        if t is not None and (t <= result.get(RAMP_KEY, 0) or self._judged(trial, t)):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)

    def _judged(self, trial: Any, t: float) -> bool:
        """Whether ``trial`` is recorded at the highest rung at or below epoch ``t`` (Ray's rungs run high to low)."""
        bracket = self._trial_info.get(trial.trial_id)
        reached = [recorded for milestone, recorded in bracket._rungs if milestone <= t] if bracket else []
        return bool(reached) and trial.trial_id in reached[0]
