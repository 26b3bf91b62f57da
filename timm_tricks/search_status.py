"""What ``timm-tricks tune`` and ``timm-tricks ablate`` print while they run, and the status of each trial after.

A :class:`SearchWatch` wraps a whole search or ablation. It prints, to stderr, one line per event, each stamped with
the time since the command's search began (``[m:ss]``):

- the phases before and after the trials (checking the space, starting Ray, writing the report);
- a trial that starts (its values), reports an epoch (the metric, the best so far), is stopped by the scheduler
  (the epoch and ASHA's rung), finishes its budget, crashes and is retried, or fails for good;
- a compact status at least every ``--status-every`` seconds (20): the trials running, pending, paused (PBT),
  stopped, finished and failed, and the best result so far. It comes from a thread of its own, so it also
  appears while Ray starts or a trial imports torch.

``--quiet`` silences all of it (the report is still printed); ``--ray-verbose 1|2|3`` turns Ray Tune's own
progress table on besides. The events come from a ``ray.tune.Callback`` (:meth:`SearchWatch.callback`; Tune calls
it in the driver, after the scheduler has decided on each result). A trial's status in the reports is
:func:`trial_status`: ``completed`` (trained its whole budget), ``stopped at epoch N`` (the scheduler stopped it
early) or ``error``.

This module imports Ray only inside :meth:`SearchWatch.callback`, so ``ablate --list`` stays light.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

STATUS_EVERY = 20.0  # seconds between status lines: well inside the 30 s a watcher should wait at most
RAY_VERBOSITY = (0, 1, 2, 3)  # Ray Tune's RunConfig(verbose=...): 0 silent ... 3 every trial's results


@dataclass(frozen=True)
class StatusOptions:
    """What a search or an ablation prints while it runs.

    Attributes:
        quiet: Print nothing while it runs (the report at the end is still printed).
        every: Seconds between status lines.
        ray_verbose: Ray Tune's own output (``RunConfig(verbose=...)``): 0 none, 1 the experiment, 2 a progress
            table of the trials, 3 also each result.
    """

    quiet: bool = False
    every: float = STATUS_EVERY
    ray_verbose: int = 0

    def __post_init__(self) -> None:
        if self.ray_verbose not in RAY_VERBOSITY:
            raise ConfigError(f"--ray-verbose must be one of 0, 1, 2, 3, got {self.ray_verbose}")
        if not (math.isfinite(self.every) and self.every > 0):
            raise ConfigError(f"--status-every must be a positive number of seconds, got {self.every}")


# ----------------------------------------------------------------------------------------------------------------
# A trial's status


def trial_status(error: bool, epochs: int, budget: int | None) -> str:
    """``error``; ``completed`` when the trial trained its whole ``budget`` of epochs (or no budget is known);
    ``stopped at epoch N`` when the scheduler stopped it after N < budget epochs."""
    if error:
        return "error"
    if budget is None or epochs >= budget:
        return "completed"
    return f"stopped at epoch {epochs}" if epochs else "stopped before its first epoch"


def result_summary(result: Any, budget: int | None) -> dict[str, Any]:
    """Epochs a Tune result trained, its :func:`trial_status` against ``budget`` epochs, and its folder."""
    epochs = int((result.metrics or {}).get("epoch", 0))
    return {"epochs": epochs, "status": trial_status(bool(result.error), epochs, budget), "path": str(result.path)}


def trial_number(tag: str | None, trial_id: str = "") -> str:
    """The trial's number in its experiment: the start of Tune's ``experiment_tag`` (``"3_optim.lr=0.1"`` -> 3),
    which also names its folder; else its id."""
    head = (tag or "").split("_", 1)[0]
    return head if head.isdigit() else trial_id


def describe(config: Mapping[str, Any]) -> str:
    """A trial's sampled values, short: ``optim.lr=0.0412, mixup.alpha=0.2``."""
    return ", ".join(f"{k}={_value(v)}" for k, v in config.items())


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def asha_rungs(scheduler: Any) -> tuple[int, ...]:
    """The epochs of ASHA's rungs (its first bracket's milestones), low to high; () for other schedulers."""
    brackets = getattr(scheduler, "_brackets", None)
    if not brackets:
        return ()
    return tuple(sorted(int(milestone) for milestone, _ in brackets[0]._rungs))


def _stamp(seconds: float) -> str:
    s = int(seconds)
    return f"[{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}]" if s >= 3600 else f"[{s // 60}:{s % 60:02d}]"


# ----------------------------------------------------------------------------------------------------------------
# The watch


class SearchWatch:
    """Prints a search's or an ablation's progress (see the module notes); use it as a context manager.

    Args:
        title: What runs, for the status lines (``search digits``, ``ablation tiny``).
        metric, mode: The metric to report and rank by, and ``max`` or ``min``.
        options: :class:`StatusOptions` (quiet, the status period).
        budget: A trial's epochs from its sampled config (for "stopped" against "completed"); None if unknown.
        stream: Where to print (default: ``sys.stderr`` at the time of each line).

    ``budget`` and ``name`` (a Tune trial -> how the lines call it; default ``trial N``, N as in its folder's
    name) may be set later, once they are known.
    """

    def __init__(self, title: str, metric: str, mode: str, options: StatusOptions | None = None,
                 budget: Callable[[Mapping[str, Any]], int | None] | None = None, stream: Any = None) -> None:
        self.title, self.metric, self.mode = title, metric, mode
        self.options = options or StatusOptions()
        self.budget = budget or (lambda config: None)
        self.name: Callable[[Any], str] = lambda trial: f"trial {trial_number(trial.experiment_tag, trial.trial_id)}"
        self.stream = stream
        self.start = time.monotonic()
        self.trials: Sequence[Any] = ()
        self.total = 0  # trials the experiment will run (Tune's total_num_samples)
        self.rungs: tuple[int, ...] = ()
        self.scheduler = "the scheduler"
        self.best: tuple[float, str, int] | None = None  # (value, trial name, epoch)
        self._phase, self._phase_start = "starting", self.start
        self._last_status = self.start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- printing ---------------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """Print one line, stamped with the time since the watch started (nothing when quiet)."""
        if self.options.quiet:
            return
        with self._lock:
            stream = self.stream or sys.stderr
            stream.write(f"{_stamp(time.monotonic() - self.start)} {text}\n")
            stream.flush()

    def phase(self, name: str, text: str | None = None) -> None:
        """Enter a phase (``starting Ray``, ``trials``, ``writing the report``), announced with ``text``."""
        self._phase, self._phase_start = name, time.monotonic()
        if text:
            self.say(text)

    def status_line(self) -> str:
        """The compact status: the trials by state and the best result so far (or what is going on)."""
        if self._phase != "trials":
            return f"{self.title}: {self._phase} ({time.monotonic() - self._phase_start:.0f} s)"
        counts = dict.fromkeys(("running", "pending", "paused", "stopped", "finished", "failed"), 0)
        for trial in list(self.trials):
            counts[self._state(trial)] += 1
        counts["pending"] += max(0, self.total - len(self.trials))
        shown = [f"{n} {state}" for state, n in counts.items() if n or state in ("running", "pending", "finished")]
        best = "none yet" if self.best is None else \
            f"{self.metric} {self.best[0]:.4g} ({self.best[1]}, epoch {self.best[2]})"
        return f"{self.title}: {', '.join(shown)}; best {best}"

    def _state(self, trial: Any) -> str:
        status = str(trial.status)
        if status == "TERMINATED":
            return "stopped" if self._stopped_early(trial) else "finished"
        return {"RUNNING": "running", "PAUSED": "paused", "ERROR": "failed"}.get(status, "pending")

    def _stopped_early(self, trial: Any) -> bool:
        budget = self.budget(trial.config)
        return budget is not None and int((trial.last_result or {}).get("epoch", 0)) < budget

    # -- the status thread --------------------------------------------------------------------------------------

    def __enter__(self) -> SearchWatch:
        if not self.options.quiet:
            self._thread = threading.Thread(target=self._beat, name="search-status", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(0.5):
            if time.monotonic() - self._last_status >= self.options.every:
                self._last_status = time.monotonic()
                self.say(self.status_line())

    # -- events (from the Tune callback; plain trial objects, so they can be tested without Ray) ----------------

    def setup(self, total: int) -> None:
        self.total = total
        self.phase("trials", f"{self.title}: {total} trial(s) to run")

    def ended(self, trials: Sequence[Any]) -> None:
        self.trials = trials
        self.say(self.status_line())
        self.phase("finishing")

    def started(self, trial: Any) -> None:
        if trial.num_failures:
            self.say(f"{self.name(trial)} restarted (retry {trial.num_failures})")
            return
        values = describe(trial.config)
        self.say(f"{self.name(trial)} started" + (f": {values}" if values else ""))

    def restored(self, trial: Any) -> None:
        self.say(f"{self.name(trial)} resumes from a checkpoint")

    def reported(self, trial: Any, result: Mapping[str, Any]) -> None:
        """One line per result: the epoch (of the trial's budget), its time, the metric and the best so far."""
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        budget = self.budget(trial.config)
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and (
                self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])):
            self.best = (float(value), self.name(trial), epoch)
        seconds = result.get("time_this_iter_s")
        took = f" ({seconds:.1f} s)" if isinstance(seconds, (int, float)) else ""
        shown = "not reported" if value is None else _value(float(value))
        best = f" (best {self.best[0]:.4g})" if self.best else ""
        self.say(f"{self.name(trial)} epoch {epoch}{f'/{budget}' if budget else ''}{took}: {self.metric} {shown}{best}")

    def completed(self, trial: Any) -> None:
        """A trial that ended without an error: stopped early by the scheduler (at which rung), or finished."""
        last = trial.last_result or {}
        epoch, budget, value = int(last.get("epoch", 0)), self.budget(trial.config), last.get(self.metric)
        shown = "" if value is None else f": {self.metric} {_value(float(value))}"
        if budget is not None and epoch < budget:
            rung = max((r for r in self.rungs if r <= epoch), default=None)
            at = f" at its epoch-{rung} rung (rungs at epochs {', '.join(map(str, self.rungs))})" if rung else ""
            self.say(f"{self.name(trial)} stopped by {self.scheduler} after epoch {epoch}/{budget}{at}{shown}")
        else:
            self.say(f"{self.name(trial)} finished: {epoch} epoch(s){shown}")

    def recovered(self, trial: Any) -> None:
        """A trial that crashed and will be retried from its last checkpoint."""
        epoch = int((trial.last_result or {}).get("epoch", 0))
        of = "" if trial.max_failures < 0 else f" of {trial.max_failures}"
        since = f"its checkpoint of epoch {epoch}" if epoch else "the start"
        self.say(f"{self.name(trial)} crashed ({_error_line(trial)}); retry {trial.num_failures}{of} from {since}")

    def errored(self, trial: Any) -> None:
        """A trial that failed for good (its retries used up)."""
        retries = max(0, trial.num_failures - 1)
        log = f"; log: {trial.path}/error.txt" if getattr(trial, "path", None) else ""
        tries = f"{retries} retr{'y' if retries == 1 else 'ies'}"
        self.say(f"{self.name(trial)} failed after {tries} ({_error_line(trial)}){log}")

    def callback(self, scheduler: Any = None, scheduler_name: str = "the scheduler") -> Any:
        """The ``ray.tune.Callback`` that feeds this watch, for the Tuner's ``RunConfig(callbacks=...)``; None when
        quiet. ``scheduler``: the Tune scheduler, whose rungs (ASHA's) the stop lines name."""
        if self.options.quiet:
            return None
        self.rungs, self.scheduler = asha_rungs(scheduler), scheduler_name
        return _callback_class()(self)


_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b.*)$")


def _error_line(trial: Any) -> str:
    """The trial's error in one line (:func:`error_summary` of its error file, where Tune writes the traceback)."""
    path = getattr(trial, "error_file", None)
    try:
        return error_summary(open(path).read() if path else "")
    except OSError:
        return error_summary("")


def error_summary(text: str) -> str:
    """A printed error in one line: its last ``SomeError: message`` line, without the exception's module; else
    its first line (a lost worker process: ``The actor died unexpectedly ...``). Ray's own header lines
    (``ray::ImplicitFunc.train() (pid=...)``, ``Failure # 1``) are not the message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Failure # ", "ray::"))]
    named = [m.group(1) for line in lines if (m := _EXCEPTION.match(line))]
    text = named[-1] if named else lines[0] if lines else "no error message"
    return text if len(text) <= 160 else text[:157] + "..."


def _callback_class() -> type:
    """A ``ray.tune.Callback`` class that hands Tune's events to a :class:`SearchWatch` (built on first use, so
    that this module does not import Ray)."""
    from ray.tune import Callback

    class StatusCallback(Callback):
        def __init__(self, watch: SearchWatch) -> None:
            self.watch = watch

        def __reduce__(self) -> tuple:
            # Tune pickles the RunConfig, callbacks included, into tuner.pkl; a restored experiment gets a callback
            # that does nothing, and experiment.fit installs the new run's own
            return (Callback, ())

        def setup(self, total_num_samples: int = 0, **info: Any) -> None:
            self.watch.setup(total_num_samples)

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            self.watch.trials = trials

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.watch.started(trial)

        def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.watch.restored(trial)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.watch.reported(trial, result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.watch.completed(trial)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.watch.recovered(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.watch.errored(trial)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.watch.ended(trials)

    return StatusCallback
