"""Batch sources of the trainer: an in-memory data set augmented by the batch on the device, or a file data set
through DataLoader workers. Both shard and order their samples with :class:`Shard`.
:func:`timm_tricks.build.build_batches` makes the one a config asks for.

Epoch ``e`` visits a permutation seeded by ``(seed, e)``; process ``r`` of ``w`` takes positions ``r, r+w, ...``
and drops the ragged tail, so every process runs the same number of steps and a resumed epoch (from step ``k``)
visits exactly the samples the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .data import TensorData, normalize
from .errors import ConfigError, DataError
from .seeding import generator, seed_everything, step_seed


@dataclass(frozen=True)
class Shard:
    """This process's share of a data set of ``size`` training samples, in batches of ``batch`` per process."""

    size: int
    batch: int
    rank: int
    world: int
    seed: int

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{self.size} training images give no full batch of {self.batch} x {self.world} "
                              "process(es); lower data.batch_size")

    @property
    def steps_per_epoch(self) -> int:
        """Full batches each process takes per epoch (the ragged tail is dropped)."""
        return self.size // (self.batch * self.world)

    def order(self, epoch: int, start_step: int = 0) -> torch.Tensor:
        """The sample indices this process visits in ``epoch`` from batch ``start_step`` on."""
        order = torch.randperm(self.size, generator=generator(self.seed, epoch))[self.rank::self.world]
        return order[start_step * self.batch: self.steps_per_epoch * self.batch]

    def eval_indices(self, size: int) -> range:
        """This process's share of a validation set of ``size``: positions ``rank, rank + world, ...`` (every
        sample counted once over all processes)."""
        return range(self.rank, size, self.world)


class TensorBatches:
    """Batches of an in-memory data set, augmented on the device for the whole batch (Page, "How to train your
    ResNet 8: Bag of tricks", Myrtle.ai 2019, "Preprocessing on the GPU")."""

    def __init__(self, data: TensorData, shard: Shard, device: torch.device, augment: Any = None) -> None:
        """``augment(images, generator=...)`` (:class:`timm_tricks.augment.BatchAugment`) transforms each training
        batch, its draws seeded by ``(seed, epoch, step, process)``; None for none."""
        self.data, self.shard, self.device, self.seed = data.to(device), shard, device, shard.seed
        self.augment = augment
        self.channels = data.train_images.shape[1]
        self.steps_per_epoch, self.num_classes = shard.steps_per_epoch, data.num_classes

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, batch = self.shard.order(epoch).to(self.device), self.shard.batch
        for step in range(start_step, self.steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
            images = normalize(self.data.train_images[idx], self.data.mean, self.data.std)
            if self.augment is not None:
                images = self.augment(images, generator=generator(self.seed, epoch, step, self.shard.rank, 1))
            yield images, self.data.train_labels[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = torch.tensor(self.shard.eval_indices(len(self.data.val_labels)), device=self.device)
        for i in range(0, len(indices), batch_size):
            idx = indices[i:i + batch_size]
            yield normalize(self.data.val_images[idx], self.data.mean, self.data.std), self.data.val_labels[idx]


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a file data set so each sample's random transform is seeded by ``(seed, epoch, index)``: the same
    augmentation whichever worker loads it, which makes mid-epoch resume exact for file data too."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        seed_everything(step_seed(self.seed, self.epoch, index, 2))
        return self.dataset[index]


class FileBatches:
    """Batches of a file data set through DataLoader workers."""

    def __init__(self, train: Any, val: Any, num_classes: int, shard: Shard, device: torch.device,
                 workers: int = 0) -> None:
        self.train, self.val = SeededDataset(train, shard.seed), val
        self.shard, self.device, self.workers = shard, device, workers
        self.channels = 3  # the folder and timm readers open every image as RGB
        self.steps_per_epoch, self.num_classes = shard.steps_per_epoch, num_classes

    def _loader(self, dataset: Any, indices: list[int], batch_size: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=False)

    def _to_device(self, loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for images, labels in loader:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        except DataError as e:
            raise DataError(worker_message(e)) from None

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.train.epoch = epoch
        yield from self._to_device(self._loader(self.train, self.shard.order(epoch, start_step).tolist(),
                                                self.shard.batch))

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self._to_device(self._loader(self.val, list(self.shard.eval_indices(len(self.val))), batch_size))


def worker_message(error: Exception) -> str:
    """The original one-line message of an error a DataLoader worker raised: torch re-raises it in the main process
    with the worker's whole traceback as its message ("Caught DataError in DataLoader worker process 0. Original
    Traceback ... timm_tricks.errors.DataError: cannot read image '...'")."""
    last = str(error).rstrip().splitlines()[-1] if str(error).strip() else ""
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    return last[len(name):] if last.startswith(name) else str(error)
