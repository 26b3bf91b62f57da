"""Training checkpoints as data only: tensors in safetensors files, everything else in JSON.

A checkpoint is the folder ``checkpoints/ckpt-<global step>`` of a run:

- ``model.safetensors``: the weights and buffers of the (unwrapped) model;
- ``optimizer.safetensors``: the optimizer's state dict, its tensors as safetensors and its structure (parameter
  groups, step counts, hyperparameters) as JSON in the file's metadata;
- ``ema.safetensors``: the EMA model, when the run keeps one;
- ``trainer_state.json``: the step counters, every process's running loss sum, and the FP16 loss scaler's state;
- ``summary.csv``: the epochs done, so the checkpoint resumes in any folder;
- ``COMPLETE``: written last: the counters, and the size and SHA-256 of every other file (JSON); a folder
  without it is not a checkpoint.

Nothing is pickled, so nothing in a checkpoint can run code when it is loaded (a pickle, including torch's and
accelerate's default ``.bin``/``.pkl`` files, calls whatever function it names). The random generators need no
saving: every draw of a step comes from generators seeded by (seed, epoch, step, process), see
:mod:`timm_tricks.train`. A checkpoint in the older pickle layout (accelerate's ``save_state``) is refused by
name, unread.

Checkpoints are written into a temporary folder, flushed to disk (``fsync`` of each file, of the folder, and of
the parent after the rename into place), so a run killed mid-write, or a machine that loses power, never replaces
the last good one. On resume :func:`newest_intact` checks every file against the marker and falls back to the
newest checkpoint that is whole, with one warning line for each one it skips. The hashes catch damage, not
attacks: whoever crafts a checkpoint writes its hashes too, which is why the files are data only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

CHECKPOINT_PREFIX = "ckpt-"
COMPLETE_MARKER = "COMPLETE"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.json"
SUMMARY_FILE = "summary.csv"
PICKLED_LAYOUT = ("*.pkl", "*.bin", "*.pt")  # what accelerate's save_state wrote (optimizer.bin, *_0.pkl, scaler.pt)
TREE_KEY = "timm_tricks.tree"  # safetensors metadata key of a tree's JSON structure


# ------------------------------------------------------------------------------------------------------------------
# Nested state (dicts, lists, tuples, numbers, strings, tensors) as one safetensors file


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able structure of ``obj``; each tensor is moved to ``tensors`` and left as a reference to its key.

    Dicts are kept as key-value pairs (an optimizer's state is keyed by parameter index, an int), tuples as tuples.
    """
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().contiguous().cpu()
        return {"tensor": key}
    if isinstance(obj, dict):
        return {"dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"tuple" if isinstance(obj, tuple) else "list": [_encode(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (only tensors, numbers, strings, "
                    "lists, tuples and dicts)")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    (kind, body), = node.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
    if kind in ("list", "tuple"):
        items = [_decode(v, tensors) for v in body]
        return tuple(items) if kind == "tuple" else items
    if kind == "value" and (body is None or isinstance(body, (bool, int, float, str))):
        return body
    raise ValueError(f"unknown entry {kind!r}")


def save_tree(obj: Any, path: Path) -> None:
    """Write a nested state (such as ``optimizer.state_dict()``) to the safetensors file ``path``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(obj, tensors)
    save_file(tensors, str(path), metadata={TREE_KEY: json.dumps(structure)})


def load_tree(path: Path) -> Any:
    """The nested state that :func:`save_tree` wrote to ``path``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        structure = json.loads((f.metadata() or {})[TREE_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return _decode(structure, tensors)


# ------------------------------------------------------------------------------------------------------------------
# Checkpoint folders


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (by global step)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def prune_checkpoints(folder: Path, keep: int, best: Path | None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints and ``best``; clear leftovers of killed writes."""
    for p in folder.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    ckpts = list_checkpoints(folder)
    for p in ckpts[:-keep]:
        if best is None or p.resolve() != best.resolve():
            shutil.rmtree(p, ignore_errors=True)


def file_record(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, as the ``COMPLETE`` marker records them."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(tmp: Path, final: Path, *, model: torch.nn.Module, optimizer: Any, ema: torch.nn.Module | None,
                     state: dict[str, Any], summary: Path | None) -> None:
    """Write a checkpoint into ``tmp``, flush it, and rename it to ``final`` (main process only)."""
    from safetensors.torch import save_model

    save_model(model, str(tmp / MODEL_FILE))
    save_tree(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    if ema is not None:
        save_model(ema, str(tmp / EMA_FILE))
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    if summary is not None and summary.exists():  # the epochs so far travel with the state
        shutil.copyfile(summary, tmp / SUMMARY_FILE)
    files = {}
    for path in sorted(tmp.iterdir()):
        _fsync(path)
        files[path.name] = file_record(path)
    (tmp / COMPLETE_MARKER).write_text(json.dumps(dict(state["counters"], files=files)))
    _fsync(tmp / COMPLETE_MARKER)
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync(final.parent)


def verify_checkpoint(path: Path) -> str | None:
    """None when every file the ``COMPLETE`` marker of ``path`` records is there with its size and SHA-256, and
    the files a resume needs are among them; else what is wrong, in a few words."""
    try:
        files = json.loads((path / COMPLETE_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return f"its {COMPLETE_MARKER} marker is not readable"
    if not isinstance(files, dict) or not {MODEL_FILE, OPTIMIZER_FILE, STATE_FILE} <= set(files):
        return f"its {COMPLETE_MARKER} marker does not list the model, optimizer and state files"
    for name, record in files.items():
        file = path / str(name)
        if "/" in name or not file.is_file():
            return f"{name} is missing"
        if not isinstance(record, dict) or file.stat().st_size != record.get("size"):
            return f"{name} has {file.stat().st_size} bytes, not the {record.get('size')} recorded"
        if file_record(file)["sha256"] != record.get("sha256"):
            return f"{name} does not match its recorded SHA-256"
    return None


def newest_intact(folder: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest complete checkpoint in ``folder`` whose files all match its marker, None if there is none;
    ``warn`` gets one line for each newer one skipped. A checkpoint in the pickle layout stops the search with a
    :class:`CheckpointError` (it is refused, not silently passed over)."""
    for path in reversed(list_checkpoints(folder)):
        refuse_pickled_layout(path)
        reason = verify_checkpoint(path)
        if reason is None:
            return path
        warn(f"checkpoint {str(path)!r} is damaged ({reason}); trying the one before it")
    return None


def refuse_pickled_layout(path: Path) -> None:
    """Raise :class:`CheckpointError` naming the pickle files of ``path`` (the layout of accelerate's
    ``save_state``, whose files run code when loaded), unread."""
    pickled = sorted(p.name for pattern in PICKLED_LAYOUT for p in path.glob(pattern))
    if pickled:
        raise CheckpointError(f"checkpoint {str(path)!r} holds pickle files ({', '.join(pickled)}), which can run "
                              "code when loaded; it is refused unread (timm_tricks writes safetensors and JSON "
                              "only: train again, or continue from a checkpoint of this version)")


def read_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: Any, ema: torch.nn.Module | None
                    ) -> dict[str, Any]:
    """Load ``path`` into ``model``, ``optimizer`` and ``ema``; return its ``trainer_state.json``.

    Raises :class:`CheckpointError` naming the file for a checkpoint in the pickle layout, a missing or damaged
    file, or weights that do not fit the model.
    """
    from safetensors.torch import load_model

    refuse_pickled_layout(path)
    current = ""
    try:
        current = STATE_FILE
        state = json.loads((path / STATE_FILE).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("counters"), dict):
            raise ValueError("no step counters")
        current = MODEL_FILE
        load_model(model, str(path / MODEL_FILE))
        current = OPTIMIZER_FILE
        optimizer.load_state_dict(load_tree(path / OPTIMIZER_FILE))
        if ema is not None:
            current = EMA_FILE
            load_model(ema, str(path / EMA_FILE))
    except Exception as e:  # safetensors, json and torch raise many types for a damaged or foreign file
        detail = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"cannot load {str(path / current)!r}: {type(e).__name__}: {detail[:300]}") from None
    return state


def read_summary(path: Path) -> list[list[str]]:
    """The rows of a ``summary.csv`` (header first), or CheckpointError naming it if it is not one."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if not rows or rows[0][0] != "epoch" or any(not r[0].isdigit() for r in rows[1:]):
            raise ValueError("not a summary written by timm-tricks train")
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
        raise CheckpointError(f"cannot read {str(path)!r}: {type(e).__name__}: {e}") from None
    return rows
