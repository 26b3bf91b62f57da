"""How a search treats its trials' failures: a user's mistake is not retried, and a search where every trial failed
says so and names no best trial.

A trial that raises one of :mod:`timm_tricks.errors`' user errors (a recipe that cannot build, a data source that
cannot be read) fails the same way however often Tune retries it. :class:`MistakeWatch` (a Tune ``Callback`` and
``Stopper`` for the driver) reads each trial's first failure from the error text Tune keeps for it; once the same
user error has ended the first attempt of every trial that ran (of at least two, or of the only one), and no trial
has reported a result, it stops the experiment instead of letting ``--max-failures`` retries repeat it. The search
then ends with that one line and exit status 2.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ray.tune import Callback, Stopper

from .errors import ConfigError, TrainingError

#: How a user error's last traceback line starts, as Ray prints the trial's exception.
USER_ERROR_LINES = tuple(f"timm_tricks.errors.{name}: " for name in
                         ("ConfigError", "DataError", "CheckpointError", "UserError"))


def error_line(text: str | None) -> str:
    """The last line of an exception's printed traceback (``module.Error: message``), or ``''``."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def user_error(text: str | None) -> str | None:
    """The message of a timm_tricks user error that ends the printed traceback ``text``, else None."""
    line = error_line(text)
    return next((line[len(p):] for p in USER_ERROR_LINES if line.startswith(p)), None)


def _error_text(trial: Any) -> str | None:
    """The error text Tune keeps for ``trial``: its driver-side ``error.txt`` (written before the callbacks run and
    synced to the storage folder later), else the storage copy."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text(errors="replace")
    return trial.get_error()


class MistakeWatch(Callback, Stopper):
    """Stops a search whose trials all fail their first attempt with the same user error (see the module notes)."""

    def __init__(self, num_samples: int) -> None:
        self.needed = min(2, max(1, num_samples))
        self.first_failure: dict[str, str | None] = {}  # trial id -> its first attempt's user error (or None)
        self.reported = False
        self.mistake: str | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.reported = True
        return False

    def stop_all(self) -> bool:
        return self.mistake is not None

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._failed(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._failed(trial)

    def _failed(self, trial: Any) -> None:
        if trial.trial_id in self.first_failure:
            return  # a retry's failure: only the first attempt counts
        self.first_failure[trial.trial_id] = user_error(_error_text(trial))
        counts = Counter(self.first_failure.values())
        message, times = counts.most_common(1)[0]
        if message is not None and times == len(self.first_failure) >= self.needed and not self.reported:
            self.mistake = message

    def raise_if_stopped(self) -> None:
        """After ``Tuner.fit``: the one line of the mistake that stopped the search, as a ConfigError (exit 2)."""
        if self.mistake is not None:
            raise ConfigError(f"every trial failed on its first attempt with the same error, so the search stopped "
                              f"without retries: {self.mistake}")


def all_failed(errors: list[str], where: str) -> TrainingError:
    """The error of a search in which every trial failed: how many, and the most common cause (exit 1)."""
    cause, times = Counter(errors).most_common(1)[0]
    return TrainingError(f"all {len(errors)} trials failed ({times} with: {cause or 'no message'}); no best trial, "
                         f"see {where}")
