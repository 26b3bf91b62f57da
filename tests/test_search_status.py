"""What a search prints while it runs (timm_tricks.search_status), on stand-in trials without Ray, and the plots of
its report (timm_tricks.report_plots). tests/test_tune.py checks the same lines from real Ray runs."""

import io
import re
import time
from types import SimpleNamespace

import pytest

from timm_tricks.errors import ConfigError
from timm_tricks.search_status import SearchWatch, StatusOptions, error_summary, trial_number, trial_status


def _trial(number, status="RUNNING", epoch=0, config=None, failures=0, error_file=None, **extra):
    return SimpleNamespace(experiment_tag=f"{number}_optim.lr=0.1", trial_id=f"abc_{number:05d}", status=status,
                           config=config if config is not None else {"optim.lr": 0.1234567},
                           last_result={"epoch": epoch} if epoch else {}, num_failures=failures, max_failures=2,
                           error_file=error_file, path=f"/runs/s/trial_{number}", **extra)


def _lines(stream):
    return [re.sub(r"^\[\d+:\d\d\] ", "", line) for line in stream.getvalue().splitlines()]


def _watch(**kwargs):
    stream = io.StringIO()
    watch = SearchWatch("search s", "eval_top1", "max", stream=stream, budget=lambda config: 4, **kwargs)
    watch.rungs, watch.scheduler = (1, 3), "ASHA"
    return watch, stream


def test_the_status_options_refuse_what_cannot_work():
    with pytest.raises(ConfigError, match="--ray-verbose must be one of 0, 1, 2, 3, got 4"):
        StatusOptions(ray_verbose=4)
    with pytest.raises(ConfigError, match="--status-every must be a positive number of seconds, got 0"):
        StatusOptions(every=0)


def test_a_trials_status_tells_stopped_from_completed():
    assert trial_status(False, 4, 4) == "completed" and trial_status(False, 2, None) == "completed"
    assert trial_status(False, 1, 4) == "stopped at epoch 1" and trial_status(True, 4, 4) == "error"
    assert trial_status(False, 0, 4) == "stopped before its first epoch"
    assert trial_number("12_optim.lr=0.1", "abc") == "12" and trial_number(None, "abc_00003") == "abc_00003"


def test_a_line_for_each_event_and_the_status_counts_the_trials(tmp_path):
    watch, stream = _watch()
    watch.setup(total=5)
    one, two = _trial(1), _trial(2)
    watch.started(one)
    watch.reported(one, {"epoch": 1, "eval_top1": 41.25, "time_this_iter_s": 12.34})
    watch.reported(two, {"epoch": 1, "eval_top1": 10.0})
    two.status, two.last_result = "TERMINATED", {"epoch": 1, "eval_top1": 10.0}
    watch.completed(two)
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1 (occurred at 2026-01-01)\nray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
                     "Traceback ...\n  File x\nbuiltins.RuntimeError: boom at step 3\n\n")
    three = _trial(3, epoch=2, failures=1, error_file=str(error))
    watch.recovered(three)
    watch.started(three)
    three.num_failures, three.status = 3, "ERROR"
    watch.errored(three)
    four = _trial(4, status="TERMINATED", epoch=4)
    four.last_result["eval_top1"] = 97.5
    watch.completed(four)
    lost = tmp_path / "lost.txt"
    lost.write_text("Failure # 1 (occurred at 2026-01-01)\nThe actor died unexpectedly before finishing this task.\n"
                    "\tclass_name: ImplicitFunc\nThe actor is dead because its worker process has died.\n")
    watch.recovered(_trial(5, failures=1, error_file=str(lost)))
    watch.trials = [one, two, three, four]
    assert _lines(stream) == [
        "search s: 5 trial(s) to run",
        "trial 1 started: optim.lr=0.1235",
        "trial 1 epoch 1/4 (12.3 s): eval_top1 41.25 (best 41.25)",
        "trial 2 epoch 1/4: eval_top1 10 (best 41.25)",
        "trial 2 stopped by ASHA after epoch 1/4 at its epoch-1 rung (rungs at epochs 1, 3): eval_top1 10",
        "trial 3 crashed (RuntimeError: boom at step 3); retry 1 of 2 from its checkpoint of epoch 2",
        "trial 3 restarted (retry 1)",
        "trial 3 failed after 2 retries (RuntimeError: boom at step 3); log: /runs/s/trial_3/error.txt",
        "trial 4 finished: 4 epoch(s): eval_top1 97.5",
        "trial 5 crashed (The actor died unexpectedly before finishing this task.); retry 1 of 2 from the start",
    ]
    # one running, one not yet created (5 to run), one stopped by ASHA, one finished, one failed
    assert watch.status_line() == "search s: 1 running, 1 pending, 1 stopped, 1 finished, 1 failed; best eval_top1 " \
                                  "41.25 (trial 1, epoch 1)"


def test_a_status_line_comes_every_few_seconds_even_before_the_trials_and_quiet_prints_nothing():
    watch, stream = _watch(options=StatusOptions(every=0.3))
    with watch:
        watch.phase("starting Ray", "starting Ray on this machine")
        time.sleep(1.6)
    lines = _lines(stream)
    assert lines[0] == "starting Ray on this machine" and len(lines) >= 4
    assert all(re.fullmatch(r"search s: starting Ray \(\d s\)", line) for line in lines[1:]), lines
    quiet, stream = _watch(options=StatusOptions(quiet=True, every=0.1))
    with quiet:
        quiet.setup(total=2)
        quiet.started(_trial(1))
        time.sleep(0.4)
    assert stream.getvalue() == "" and quiet.callback() is None


def test_a_log_axis_labels_its_major_ticks_plainly_and_no_minor_ones():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from timm_tricks.report_plots import log_ticks, readable_log_axis

    assert (log_ticks(0.05, 0.2), log_ticks(0.01, 1.0), log_ticks(1e-5, 1.0)) == ((1, 2, 5), (1, 3), (1,))
    for low, high, expected in [(0.01, 1.0, ["0.01", "0.03", "0.1", "0.3", "1"]),
                                (0.05, 0.2, ["0.05", "0.1", "0.2"])]:
        fig, ax = plt.subplots()
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        readable_log_axis(ax.xaxis, low, high)
        fig.canvas.draw()
        shown = [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
        assert shown == expected
        assert all(t.get_text() == "" for t in ax.get_xticklabels(minor=True))
        plt.close(fig)


def test_the_learning_curves_name_each_trial_in_a_legend(tmp_path):
    from timm_tricks.report_plots import learning_curves

    labels = learning_curves([("1", "lr=0.1, alpha=0.2", "completed", [1, 2, 3], [50.0, 70.0, 80.0]),
                              ("2", "lr=0.9, alpha=0", "stopped at epoch 1", [1], [10.0])],
                             "eval_top1", tmp_path / "curves.png", title="curves")
    assert labels == ["trial 1: lr=0.1, alpha=0.2", "trial 2: lr=0.9, alpha=0 (stopped at epoch 1)"]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_metric_that_spans_more_than_50x_gets_a_log_axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from timm_tricks.report_plots import _log_if_spread

    fig, (loss, top1) = plt.subplots(1, 2)
    assert _log_if_spread(loss, [292.0, 0.45, 1.8, float("nan")]) and loss.get_yscale() == "log"
    assert not _log_if_spread(top1, [62.7, 99.7, 98.1]) and top1.get_yscale() == "linear"
    plt.close(fig)


def test_an_error_is_summarised_by_its_exception_line_not_rays_headers():
    # the text of a RayTaskError as ablate gets it, and an error.txt as Tune writes it
    ray_error = ("ray::ImplicitFunc.train() (pid=4242, ip=10.0.0.1, actor_id=ab12)\n"
                 "  File \"/x/timm_tricks/train.py\", line 3, in fit\n"
                 "    raise DataError(...)\n"
                 "timm_tricks.errors.DataError: folder data set '/nowhere' has no train/ folder\n")
    assert error_summary(ray_error) == "DataError: folder data set '/nowhere' has no train/ folder"
    assert error_summary("Failure # 1 (occurred at 2026-11-30)\nray::ImplicitFunc.train()\n"
                         "The actor died unexpectedly before finishing this task.\n") == (
        "The actor died unexpectedly before finishing this task.")
    assert error_summary("") == "no error message"
    assert error_summary("ValueError: " + "x" * 300) == "ValueError: " + "x" * 145 + "..."
