"""Batch sources of the trainer: an in-memory data set augmented by the batch on the device, a file data set
through DataLoader workers that decode and crop while the device does the float work on each batch
(:class:`FileBatches`; both shard and order their samples with :class:`Shard`), or a streamed timm data set
sharded by timm's readers (:class:`IterableBatches`).
:func:`timm_tricks.build.build_batches` makes the one a config asks for.

Epoch ``e`` visits a permutation seeded by ``(seed, e)``; process ``r`` of ``w`` takes positions ``r, r+w, ...``
and drops the ragged tail, so every process runs the same number of steps and a resumed epoch (from step ``k``)
visits exactly the samples the uninterrupted one would have.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import TensorData, normalize, stats_on
from .errors import ConfigError, DataError
from .seeding import generator, step_seed


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
        self.stats = stats_on(data, device)  # once: no host-to-device copy in the step
        self.augment = augment
        self.channels = data.train_images.shape[1]
        self.steps_per_epoch, self.num_classes = shard.steps_per_epoch, data.num_classes

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, batch = self.shard.order(epoch).to(self.device), self.shard.batch
        for step in range(start_step, self.steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
            images = normalize(self.data.train_images[idx], *self.stats)
            if self.augment is not None:
                images = self.augment(images, generator=generator(self.seed, epoch, step, self.shard.rank, 1))
            yield images, self.data.train_labels[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = torch.tensor(self.shard.eval_indices(len(self.data.val_labels)), device=self.device)
        for i in range(0, len(indices), batch_size):
            idx = indices[i:i + batch_size]
            yield normalize(self.data.val_images[idx], *self.stats), self.data.val_labels[idx]


def seed_host(seed: int) -> None:
    """Seed Python's, NumPy's and torch's CPU generators, which the per-image transforms draw from: what
    :func:`~timm_tricks.seeding.seed_everything` does for them (the same draws), without its CUDA seeding, which
    before CUDA starts queues a lazy call with a formatted traceback (about 0.2 ms a sample)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.default_generator.manual_seed(seed)


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a file data set so each sample's random transform is seeded by ``(seed, epoch, index)``: the same
    augmentation whichever worker loads it, which makes mid-epoch resume exact for file data too.

    A key is an index (read in epoch :attr:`epoch`) or an ``(epoch, index)`` pair: persistent DataLoader workers
    keep the copy of this object they started with, so :class:`FileBatches` sends the epoch with every key."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        seed_host(step_seed(self.seed, epoch, index, 2))
        return self.dataset[index]


class BatchReader(torch.utils.data.Dataset):
    """Whole batches of a :class:`SeededDataset`, read by one DataLoader worker each: key ``(epoch, step,
    indices, stream)`` gives the stacked samples and labels, each sample seeded by ``(seed, epoch, index)``.

    With a ``stage`` (on the CPU: :class:`FileBatches` runs the float stage where the batch is made, so the workers
    share it) the batch then goes through ``stage(images, generator)``, the generator seeded by ``(seed, epoch,
    step, stream, 6)``: the numbers the device stage of a CUDA run draws for the same batch."""

    def __init__(self, dataset: SeededDataset, stage: Any = None) -> None:
        self.dataset, self.stage = dataset, stage

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, list[int], int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, step, indices, stream = key
        images, labels = stack([self.dataset[(epoch, i)] for i in indices])
        if self.stage is not None:
            images = self.stage(images, generator(self.dataset.seed, epoch, step, stream, 6))
        return images, labels


def stack(samples: list[Any]) -> tuple[Any, Any]:
    """``default_collate`` of ``(image, label)`` samples, except that images held in channels-last memory (as
    :class:`~timm_tricks.augment.CropFlip` gives them) stay so: stacked as ``(N, H, W, C)``, a plain copy each,
    and seen as ``(N, C, H, W)`` in the channels-last format (a model trained channels-last takes them as they are)."""
    images, labels = [s[0] for s in samples], [s[1] for s in samples]
    if all(isinstance(x, torch.Tensor) and x.ndim == 3 and x.permute(1, 2, 0).is_contiguous() for x in images):
        hwc = torch.utils.data.default_collate([x.permute(1, 2, 0) for x in images])  # shared memory in a worker
        return hwc.permute(0, 3, 1, 2), torch.utils.data.default_collate(labels)
    return torch.utils.data.default_collate(images), torch.utils.data.default_collate(labels)


class BatchKeys(torch.utils.data.Sampler):
    """The keys of the batches a persistent DataLoader reads next (:class:`BatchReader`), set by the main process
    before each pass (:meth:`set`): ``indices`` in batches of ``batch`` (the last one may be short), numbered from
    ``first``."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int, list[int], int]] = []

    def set(self, epoch: int, indices: list[int], batch: int, first: int = 0, stream: int = 0) -> None:
        self.keys = [(epoch, first + k, indices[i:i + batch], stream)
                     for k, i in enumerate(range(0, len(indices), batch))]

    def __iter__(self) -> Iterator[tuple[int, int, list[int], int]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class FileBatches:
    """Batches of a file data set through DataLoader workers.

    Each worker reads whole batches (:class:`BatchReader`); the workers stay up from one pass to the next
    (``persistent_workers``) and read ``prefetch_factor`` batches ahead each; on CUDA the batches come in pinned
    memory and are copied without blocking. With ``stages`` ``(train, eval)`` the data sets' transforms stop at
    uint8 images (decode, crop, flip: :func:`~timm_tricks.augment.bot_crop_transform`) and the float half runs on
    the whole batch (:class:`~timm_tricks.augment.BotBatchStage`: colour, lighting, normalisation), its draws seeded
    by ``(seed, epoch, step, process)``: on the device after the copy, or, on the CPU, colour and lighting in the
    worker that made the batch (the same numbers either way). Without, the transforms give the finished float
    images.
    """

    prefetch_factor = 2

    def __init__(self, train: Any, val: Any, num_classes: int, shard: Shard, device: torch.device,
                 workers: int = 0, stages: tuple[Any, Any] | None = None) -> None:
        self.train, self.val = SeededDataset(train, shard.seed), SeededDataset(val, shard.seed)
        self.shard, self.device, self.workers, self.stages = shard, device, workers, stages
        self.channels = 3  # the folder and timm readers open every image as RGB
        self.steps_per_epoch, self.num_classes = shard.steps_per_epoch, num_classes
        self._loaders: dict[str, tuple[torch.utils.data.DataLoader, BatchKeys]] = {}

    def _stage(self, split: str) -> Any:
        return self.stages[split == "eval"] if self.stages else None

    def _in_workers(self, split: str) -> bool:
        """Whether the workers run the split's stage: on the CPU, when it colours or lights (its float chain costs
        more than a worker's decode and crop, so the workers share it); normalisation alone stays in the main
        process, where it costs less than sending float32 batches between processes (docs/benchmarks.md)."""
        return self.device.type == "cpu" and self.workers > 0 and getattr(self._stage(split), "colours", False)

    def _loader(self, split: str) -> tuple[torch.utils.data.DataLoader, BatchKeys]:
        """The persistent DataLoader of ``split`` and its keys (made on first use)."""
        if split not in self._loaders:
            dataset = self.train if split == "train" else self.val
            reader = BatchReader(dataset, self._stage(split) if self._in_workers(split) else None)
            keys = BatchKeys()
            more = dict(persistent_workers=True, prefetch_factor=self.prefetch_factor) if self.workers else {}
            self._loaders[split] = (torch.utils.data.DataLoader(
                reader, batch_size=None, sampler=keys, num_workers=self.workers,
                pin_memory=self.device.type == "cuda", **more), keys)
        return self._loaders[split]

    def _batches(self, split: str, epoch: int, indices: list[int], batch: int, first: int = 0,
                 stream: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``first, first + 1, ...`` of ``indices`` on the device, through the split's stage."""
        loader, keys = self._loader(split)
        keys.set(epoch, indices, batch, first, stream)
        stage = None if self._in_workers(split) else self._stage(split)
        for k, (images, labels) in enumerate(one_line_errors(loader), first):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if stage is not None:
                images = stage(images, generator(self.shard.seed, epoch, k, stream, 6))
            yield images, labels

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.train.epoch = epoch
        yield from self._batches("train", epoch, self.shard.order(epoch, start_step).tolist(), self.shard.batch,
                                 start_step, self.shard.rank)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self._batches("eval", 0, list(self.shard.eval_indices(len(self.val))), batch_size)

    def sample_images(self, n: int) -> Iterator[torch.Tensor]:
        """The first ``n`` training samples through the training transforms as in epoch 0, the same on every
        process (stage draws from stream -1, apart from every process's training draws): the images an input
        whitening is fitted to (:func:`timm_tricks.whitening.training_images`)."""
        for images, _ in self._batches("train", 0, list(range(min(n, len(self.train)))), self.shard.batch,
                                       stream=-1):
            yield images


class SeededTransform:
    """A training transform seeded per sample of a stream by ``(seed, epoch, pass, process, worker, n)``, ``n``
    counting the samples this worker has transformed in the pass: the same augmentation whichever history the
    process has (the stream's counterpart of :class:`SeededDataset`)."""

    def __init__(self, transform: Any, seed: int, rank: int) -> None:
        self.transform, self.seed, self.rank = transform, seed, rank
        self.epoch = self.attempt = self.count = 0

    def start(self, epoch: int, attempt: int) -> None:
        """Begin pass ``attempt`` of ``epoch`` (DataLoader workers start from a copy made after this call)."""
        self.epoch, self.attempt, self.count = epoch, attempt, 0

    def __call__(self, img: Any) -> Any:
        info = torch.utils.data.get_worker_info()
        seed_host(step_seed(self.seed, self.epoch, self.attempt, self.rank, info.id if info else 0, self.count, 5))
        self.count += 1
        return self.transform(img) if self.transform is not None else img


class IterableBatches:
    """Batches of a streamed timm data set (``timm:wds/``, ``hfids/``, ``tfds/``: timm's ``IterableImageDataset``),
    with the interface of :class:`FileBatches`.

    Sharding is timm's own (``timm/data/readers/reader_wds.py``, ``reader_hfids.py``, ``reader_tfds.py``): global
    worker ``rank * workers + worker`` of ``world * workers`` reads its share of the shards (``wds``: every
    ``world * workers``-th shard; ``hfids``: ``datasets.distributed.split_dataset_by_node``), and in training each
    worker yields a whole number of batches, passing over its shards again where they run short. The reader is
    placed here from the :class:`Shard` (``dist_rank``, ``dist_num_replicas``, ``set_loader_cfg``), the values timm
    reads from ``torch.distributed``, so the split holds with or without a process group. Each epoch calls timm's
    ``set_epoch(epoch)``: the shard (``wds``) or buffer (``hfids``) shuffle is seeded by ``seed + epoch``, the same on
    every process; the per-worker sample shuffle by the DataLoader's worker seeds, drawn from a generator seeded by
    ``(seed, epoch, process)``; the augmentation per sample by :class:`SeededTransform`.

    Steps per epoch are ``N // (batch x world)`` for the split's ``N`` samples (timm's ``num_samples``), the same
    on every process: each takes that many full batches and drops the rest of its stream. A process whose stream
    runs short (a worker without shards) starts another pass of its stream, seeded apart.

    Resume: an epoch's stream depends only on ``(seed, epoch)`` and the layout (shards, processes, workers, batch),
    not on the epochs before it, so a resume at an epoch boundary is exact. Mid-epoch, ``train_batches(epoch, k)``
    reads the re-seeded epoch stream from its start and skips its first ``k`` batches (read and transformed, not
    returned): the batches from ``k`` on are those of the uninterrupted run when the shards, the number of
    processes, of DataLoader workers and the batch are the same; the skipped reading is the cost.

    Validation: each process reads its share once, every sample counted once over all processes. For ``wds`` with
    several processes the validation shards are split by process here (``filenames[rank::world]``) and read whole,
    where timm would cut or repeat each worker's share to an equal count (``with_epoch``).
    """

    def __init__(self, train: Any, val: Any, num_classes: int, shard: Shard, device: torch.device,
                 workers: int = 0) -> None:
        self.train, self.val, self.shard, self.device, self.workers = train, val, shard, device, workers
        self.steps_per_epoch, self.num_classes, self.seed = shard.steps_per_epoch, num_classes, shard.seed
        self.channels = 3  # timm's readers open every image as RGB
        self.transform = SeededTransform(train.transform, shard.seed, shard.rank)
        train.transform = self.transform
        _place(train.reader, shard.rank, shard.world, workers, shard.batch)
        if shard.world > 1 and hasattr(val.reader, "split_info") and hasattr(val.reader.split_info, "filenames"):
            import dataclasses

            info = val.reader.split_info  # wds: this process's validation shards, read whole by its workers
            val.reader.split_info = dataclasses.replace(info, filenames=info.filenames[shard.rank::shard.world])
            _place(val.reader, 0, 1, workers, shard.batch)
        else:
            _place(val.reader, shard.rank, shard.world, workers, shard.batch)

    def _loader(self, dataset: Any, batch_size: int, drop_last: bool, gen: torch.Generator | None = None
                ) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=self.workers,
                                           pin_memory=self.device.type == "cuda", drop_last=drop_last, generator=gen)

    def _pass(self, epoch: int, attempt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass of this process's training stream of ``epoch``, in full batches."""
        gen = generator(self.seed, epoch, self.shard.rank, attempt, 4)
        reader = self.train.reader
        self.train.set_epoch(epoch)  # timm: shard / buffer shuffle seeded by seed + epoch on every process
        self.transform.start(epoch, attempt)
        if self.workers == 0:  # the main process reads: rebuild its pipeline, seeded as a worker's would be
            reader.ds = None
            if hasattr(reader, "worker_seed"):
                reader.worker_seed = int(torch.empty((), dtype=torch.int64).random_(generator=gen).item())
        yield from one_line_errors(self._loader(self.train, self.shard.batch, drop_last=True, gen=gen))

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step, attempt = 0, 0
        while step < self.steps_per_epoch:
            got = 0
            for images, labels in self._pass(epoch, attempt):
                got += 1
                if step >= start_step:
                    yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                step += 1
                if step >= self.steps_per_epoch:
                    return
            if not got:
                raise DataError(f"process {self.shard.rank} of {self.shard.world} got no full batch of "
                                f"{self.shard.batch} from its share of the stream; the data set has fewer shards "
                                "than processes x data.workers: lower data.workers or data.batch_size")
            attempt += 1

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.workers == 0:
            self.val.reader.ds = None
        for images, labels in one_line_errors(self._loader(self.val, batch_size, drop_last=False)):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def _place(reader: Any, rank: int, world: int, workers: int, batch: int) -> None:
    """Put timm's iterable reader on process ``rank`` of ``world`` with ``workers`` DataLoader workers and the
    per-process ``batch`` (the attributes timm's readers set from ``torch.distributed`` and ``set_loader_cfg``)."""
    reader.dist_rank, reader.dist_num_replicas, reader.batch_size = rank, world, batch
    reader.set_loader_cfg(num_workers=workers)


def one_line_errors(loader: Any) -> Iterator[Any]:
    """``loader``'s batches; a :class:`DataError` a DataLoader worker raised comes out with its own one-line
    message (:func:`worker_message`), naming the file as it does without workers."""
    try:
        yield from loader
    except DataError as e:
        raise DataError(worker_message(e)) from None


def worker_message(error: Exception) -> str:
    """The original one-line message of an error a DataLoader worker raised: torch re-raises it in the main process
    with the worker's whole traceback as its message ("Caught DataError in DataLoader worker process 0. Original
    Traceback ... timm_tricks.errors.DataError: cannot read image '...'")."""
    last = str(error).rstrip().splitlines()[-1] if str(error).strip() else ""
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    return last[len(name):] if last.startswith(name) else str(error)
