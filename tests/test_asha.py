"""WarmupASHA: Ray's ASHA decisions, except that no trial is judged before its own warmup has ended."""

from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from timm_tricks.asha import RAMP_KEY, WarmupASHA
from timm_tricks.tune import _scheduler
from timm_tricks.tune_space import load_space

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _schedulers(max_t=9):
    kw = dict(time_attr="training_iteration", metric="eval_top1", mode="max", max_t=max_t, grace_period=1,
              reduction_factor=3)
    return WarmupASHA(**kw), ASHAScheduler(**kw)


def _trials(scheduler, n):
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(n)]
    for t in trials:
        scheduler.on_trial_add(None, t)
    return trials


def _result(epoch, top1, ramp=None):
    result = {"training_iteration": epoch, "eval_top1": top1}
    if ramp is not None:
        result[RAMP_KEY] = ramp
    return result


def test_without_warmup_the_decisions_are_rays_asha():
    ours, rays = _schedulers()
    a, b = _trials(ours, 3), _trials(rays, 3)
    sequence = [(0, 1, 50.0), (1, 1, 80.0), (2, 1, 10.0), (1, 2, 85.0), (0, 2, 55.0), (1, 3, 90.0), (0, 3, 20.0),
                (1, 9, 95.0)]
    decisions = [(ours.on_trial_result(None, a[i], _result(e, v, ramp=0.0)),
                  rays.on_trial_result(None, b[i], _result(e, v))) for i, e, v in sequence]
    assert [d[0] for d in decisions] == [d[1] for d in decisions]
    # the sequence exercises both: trial 2 below rung 1's cutoff, trial 0 below rung 3's, trial 1 at max_t
    assert [d[0] for d in decisions] == [CONTINUE, CONTINUE, STOP, CONTINUE, CONTINUE, CONTINUE, STOP, STOP]


def test_a_trial_in_warmup_is_judged_at_its_first_result_after_warmup():
    ours, rays = _schedulers()
    fast, slow, rays_fast, rays_slow = *_trials(ours, 2), *_trials(rays, 2)
    assert ours.on_trial_result(None, fast, _result(1, 90.0, ramp=0.0)) == CONTINUE
    assert rays.on_trial_result(None, rays_fast, _result(1, 90.0)) == CONTINUE
    # a 1-epoch warmup: at chance after epoch 1, which Ray's ASHA cuts (below rung 1's cutoff of 90)
    assert rays.on_trial_result(None, rays_slow, _result(1, 10.0)) == STOP
    assert ours.on_trial_result(None, slow, _result(1, 10.0, ramp=1.0)) == CONTINUE
    # after its warmup it is judged at rung 1 against the others' values there, and recorded there
    assert ours.on_trial_result(None, slow, _result(2, 95.0, ramp=1.0)) == CONTINUE
    rung1 = dict(ours._brackets[0]._rungs)[1]
    assert rung1 == {"t0": 90.0, "t1": 95.0}
    # and judged again at rung 3 like any trial: below the cutoff there it stops
    assert ours.on_trial_result(None, fast, _result(3, 92.0, ramp=0.0)) == CONTINUE
    assert ours.on_trial_result(None, slow, _result(3, 91.0, ramp=1.0)) == STOP


def test_a_long_warmup_skips_the_rungs_inside_it_for_good():
    ours, _ = _schedulers(max_t=27)  # rungs at epochs 1, 3, 9 and 27
    good, late, poor = _trials(ours, 3)
    for epoch, value in [(1, 60.0), (2, 70.0), (3, 80.0)]:
        assert ours.on_trial_result(None, good, _result(epoch, value, ramp=0.0)) == CONTINUE
    rungs = dict(ours._brackets[0]._rungs)
    for epoch in (1, 2, 3):  # a 3-epoch warmup: no decision at rungs 1 and 3 while it lasts
        assert ours.on_trial_result(None, late, _result(epoch, 5.0, ramp=3.0)) == CONTINUE
        assert ours.on_trial_result(None, poor, _result(epoch, 5.0, ramp=3.0)) == CONTINUE
    # epoch 4: each is judged at rung 3 (the highest it has passed) against the good trial's 80 there
    assert ours.on_trial_result(None, late, _result(4, 85.0, ramp=3.0)) == CONTINUE
    assert ours.on_trial_result(None, poor, _result(4, 50.0, ramp=3.0)) == STOP
    assert rungs[3] == {"t0": 80.0, "t1": 85.0, "t2": 50.0}
    # the stopped trial's last result is not written into rung 1 when Tune completes it ...
    ours.on_trial_complete(None, poor, _result(4, 50.0, ramp=3.0))
    # ... nor are the survivor's later epochs (Ray's bracket would judge rung 1 at epoch 5, then stop nothing but
    # record 99 there, raising rung 1's cutoff for every later trial)
    for epoch in (5, 6, 7, 8):
        assert ours.on_trial_result(None, late, _result(epoch, 99.0, ramp=3.0)) == CONTINUE
    assert rungs[1] == {"t0": 60.0}
    # rung 9 judges it as any trial
    assert ours.on_trial_result(None, late, _result(9, 99.0, ramp=3.0)) == CONTINUE
    assert rungs[9] == {"t1": 99.0}


def test_rays_bracket_alone_would_fill_the_skipped_rungs_with_later_results():
    # what test_a_long_warmup_skips_the_rungs_inside_it_for_good guards against, shown on Ray's own scheduler
    _, rays = _schedulers()
    (trial,) = _trials(rays, 1)
    rays.on_trial_result(None, trial, _result(4, 85.0))  # first result at epoch 4: recorded at rung 3
    rays.on_trial_result(None, trial, _result(5, 99.0))
    assert dict(rays._brackets[0]._rungs)[1] == {"t0": 99.0}


def test_a_warmup_as_long_as_the_budget_still_ends_the_trial_at_max_t():
    ours, _ = _schedulers(max_t=3)
    (trial,) = _trials(ours, 1)
    assert ours.on_trial_result(None, trial, _result(3, 50.0, ramp=3.0)) == STOP
    ours.on_trial_complete(None, trial, _result(3, 50.0, ramp=3.0))
    assert not ours._trial_info and all(not recorded for _, recorded in ours._brackets[0]._rungs)


def test_tune_uses_the_warmup_aware_asha():
    scheduler = _scheduler("asha", load_space("digits"), epochs=9, grace_period=1, reduction_factor=3)
    assert isinstance(scheduler, WarmupASHA)
    assert [milestone for milestone, _ in scheduler._brackets[0]._rungs] == [9, 3, 1]
