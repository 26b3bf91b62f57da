"""One run per output folder: an atomic claim, a lock held while training, resume only under the same config, and
no file replaced that the run did not write.

- **Claim.** The main process takes an exclusive ``flock`` on ``OUTPUT/.lock`` when the Trainer is built, before
  any data is read, and holds it until the run ends: a second run started on the same folder, even at the same
  moment, is refused in one line. The kernel drops the lock when the process dies, so a killed run can be resumed.
- **Not a run.** Without ``--resume`` a folder that holds any file a run writes (``config.yaml``, ``checkpoints/``,
  ``summary.csv``, ``metrics.json``, ``model*.safetensors``) is refused untouched.
- **Resume.** ``--resume`` compares the resolved config with the run's ``config.yaml`` and refuses a difference,
  naming the keys, except the keys of :data:`RESUMABLE_KEYS`.
- **A failed start.** A start that fails before its first checkpoint removes what it created (:meth:`abandon`),
  so the same command can simply be run again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .schema import flatten

LOCK_FILE = ".lock"
RUN_FILES = ("config.yaml", "checkpoints", "summary.csv", "metrics.json", "model.safetensors", "model_ema.safetensors")
# What may change when a run is resumed: how long it trains, how it logs and checkpoints, how it reads its data.
RESUMABLE_KEYS = frozenset({"name", "description", "source", "train.epochs", "train.checkpoint_every_steps",
                            "train.deterministic",
                            "train.keep_checkpoints", "train.log_every_steps", "train.log_every_seconds",
                            "train.log_with", "data.workers", "data.eval_batch_size"})
# The folders the trackers of train.log_with write inside the run folder (timm_tricks.build.trackers puts them
# there): TensorBoard's event files, wandb's run files (wandb.init(dir=...)), DVCLive's (Live(dir=...)), Aim's repo.
TRACKER_FOLDERS = ("tensorboard", "wandb", "dvclive", ".aim")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary name in the same folder and a rename: readers see the old file or the
    new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RunFolder:
    """The output folder of one run, claimed by this process (see the module notes)."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path, self.resume = Path(path), resume
        self._lock: int | None = None
        self._created: list[Path] = []

    def claim(self, config_yaml: str) -> None:
        """Lock the folder, check it, and write ``config.yaml`` (main process only)."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output {str(out)!r} is a file, not a folder")
        top = out  # the top-most folder this claim creates
        while not top.parent.exists():
            top = top.parent
        existed = out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--output {str(out)!r} cannot be created: {e.strerror}") from None
        if not existed:
            self._created.append(top)
        self._take_lock()
        try:
            self._check(config_yaml)
        except ConfigError:
            self.release(remove_created=True)
            raise
        if not (out / "config.yaml").exists():
            self._created.append(out / "config.yaml")
        write_atomic(out / "config.yaml", config_yaml.encode())

    def _take_lock(self) -> None:
        import fcntl

        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"--output {str(self.path)!r} cannot be written: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"--output {str(self.path)!r} is in use by another run (process {holder}); wait for "
                              "it to end or choose another folder (nothing was changed)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd

    def _check(self, config_yaml: str) -> None:
        out = self.path
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found and not self.resume:
            raise ConfigError(f"--output {str(out)!r} already holds a run ({', '.join(found)}); pass --resume to "
                              "continue it or choose another folder (nothing was changed)")
        # (checkpoints alone, without config.yaml: a checkpoint moved into a new folder, such as a restored Ray
        # Tune trial's, which resumes anywhere)
        others = [name for name in found if name != "checkpoints"]
        if others and self.resume and not (out / "config.yaml").is_file():
            raise ConfigError(f"--output {str(out)!r} holds {', '.join(others)} but no config.yaml: it is not a run "
                              "this program can resume (nothing was changed)")
        if self.resume and (out / "config.yaml").is_file():
            self._check_same_config(yaml.safe_load((out / "config.yaml").read_text()) or {},
                                    yaml.safe_load(config_yaml))

    def _check_same_config(self, saved: dict[str, Any], now: dict[str, Any]) -> None:
        before, after = flatten(saved), flatten(now)
        differ = sorted(k for k in set(before) | set(after)
                        if k not in RESUMABLE_KEYS and before.get(k) != after.get(k))
        if differ:
            details = "; ".join(f"{k}: {before.get(k)!r} in the run, {after.get(k)!r} now" for k in differ[:6])
            raise ConfigError(f"--resume {str(self.path)!r} with another config ({details}); only "
                              f"{', '.join(sorted(RESUMABLE_KEYS - {'name', 'description', 'source'}))} may change "
                              "on resume: repeat the run's settings, or train into a new folder")

    def abandon(self) -> None:
        """After a start that failed before its first checkpoint: remove what this run created, so that the same
        command can run again. A run with a checkpoint is kept (``--resume`` continues it)."""
        if any((self.path / "checkpoints").glob("ckpt-*")):
            self.release()
            return
        for name in (*TRACKER_FOLDERS, "summary.csv", "checkpoints"):
            if (self.path / name).exists() and self.path / "config.yaml" in self._created:
                # (a tracker's own process may still be writing its folder: what it adds later is its own)
                shutil.rmtree(self.path / name, ignore_errors=True) if (self.path / name).is_dir() else \
                    (self.path / name).unlink()
        self.release(remove_created=True)

    def release(self, remove_created: bool = False) -> None:
        """Drop the lock; with ``remove_created`` also remove the files and folders this claim made."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if not remove_created:
            return
        for path in reversed(self._created):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self._created = []
