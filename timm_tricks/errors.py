"""The errors a user can cause, and the exit status the command line gives each.

:class:`UserError` and its kinds (:class:`ConfigError` for a recipe, override, ladder or search space,
:class:`DataError` for a data source) mean the input was wrong: the command line prints the message as one line,
``timm-tricks: error: ...``, and exits with status 2 (as argparse does for a bad flag). :class:`TrainingError`
means a run started but cannot go on (a non-finite loss): status 1. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2  # argparse's status for a bad command line
EXIT_STOPPED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's status for a command stopped with Ctrl-C


class UserError(Exception):
    """A mistake in what the user gave (a command-line option, a file); printed as one line, exit status 2."""


class ConfigError(UserError, ValueError):
    """A recipe, override or value the user gave is not valid; the message says which and what would be."""


class DataError(ConfigError):
    """A data source the user named cannot be used; the message names it."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be loaded (damaged, in the pickle layout, or not a checkpoint); the message names it."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the step and the checkpoint kept."""


def exit_status(error: BaseException) -> int | None:
    """The command line's exit status for ``error``: 2 for the user's mistake, 1 for a stopped run, None for a
    bug (which should keep its traceback)."""
    if isinstance(error, UserError):
        return EXIT_USER_ERROR
    if isinstance(error, TrainingError):
        return EXIT_STOPPED
    return None
