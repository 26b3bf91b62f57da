"""Data sources named by a spec string: ``digits``, ``synthetic[:N]``, ``folder:PATH``, ``cifar10[:ROOT]``,
``cifar100[:ROOT]`` and ``timm:NAME[:ROOT]``.

Small data sets (digits, synthetic, CIFAR) load once into memory as uint8 ``NCHW`` tensors, so the trainer can
move them to its device and augment whole batches there (Page, "How to train your ResNet", Myrtle.ai 2018).
File data sets (an ImageNet-layout folder, or anything timm's ``create_dataset`` reads) stay on disk and go
through DataLoader workers with per-image transforms; timm's streamed sources (``timm:hfids/``, ``wds/``, ``tfds/``)
are read in order by :class:`timm_tricks.batches.IterableBatches`.

Every mistake a user can make (unknown kind, missing folder, missing CIFAR files without ``--download``, an
unreadable image) raises :class:`DataError` naming the bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .choices import SOURCE_KINDS
from .errors import DataError
from .safe_pickle import RefusedPickle, load_data_pickle
from .schema import suggest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Source:
    """A parsed ``--data`` spec: the kind and its argument (a count, a path, or a timm name)."""

    kind: str
    arg: str | None = None

    @property
    def in_memory(self) -> bool:
        """Whether the whole data set is held as tensors (and augmented by the batch)."""
        return self.kind in ("digits", "synthetic", "cifar10", "cifar100")


def parse_source(spec: str) -> Source:
    """Split ``kind[:arg]`` and check the kind; ``folder`` and ``timm`` need their argument."""
    kind, _, arg = spec.partition(":")
    if kind not in SOURCE_KINDS:
        raise DataError(f"unknown data source {spec!r}{suggest(kind, SOURCE_KINDS)} Valid: digits, synthetic[:N], "
                        "folder:PATH, cifar10[:ROOT], cifar100[:ROOT], timm:NAME[:ROOT]")
    if kind in ("folder", "timm") and not arg:
        raise DataError(f"data source {kind!r} needs an argument: {kind}:{'PATH' if kind == 'folder' else 'NAME'}")
    if kind == "synthetic" and arg and (not arg.isdigit() or int(arg) < 2):
        raise DataError(f"synthetic:N needs a whole number N >= 2 of images, got {arg!r}")
    if kind == "digits" and arg:
        raise DataError(f"data source 'digits' takes no argument, got {spec!r}")
    return Source(kind, arg or None)


@dataclass
class TensorData:
    """A whole data set in memory: uint8 ``NCHW`` images, int64 labels, and the per-channel statistics (0-1 scale)
    used to normalise it."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to(self, device: torch.device | str) -> TensorData:
        """The same data on ``device``."""
        move = {k: getattr(self, k).to(device) for k in ("train_images", "train_labels", "val_images", "val_labels")}
        return TensorData(**move, num_classes=self.num_classes, mean=self.mean, std=self.std)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 ``NCHW`` images on the 0-1 scale."""
    x = images.double().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-3).tolist())


def normalize(images: torch.Tensor, mean: tuple[float, ...] | torch.Tensor,
              std: tuple[float, ...] | torch.Tensor) -> torch.Tensor:
    """uint8 ``NCHW`` images to normalised float32: ``(x / 255 - mean) / std``. ``mean`` and ``std`` are
    per-channel tuples, or float32 tensors already on the images' device (:func:`stats_on`), which a loop over
    batches should pass: a tuple is copied to the device at each call, a copy from pageable memory that makes the
    host wait for the GPU (two such waits a step measured on an H200, ``benchmarks/step_profile.py``)."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - m) / s


def stats_on(data: TensorData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``data``'s per-channel mean and std as float32 tensors on ``device``, for :func:`normalize`."""
    return (torch.tensor(data.mean, dtype=torch.float32, device=device),
            torch.tensor(data.std, dtype=torch.float32, device=device))


# ------------------------------------------------------------------------------------------------------------------
# In-memory sources


def load_digits(image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> TensorData:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) as RGB ``image_size`` squares.

    The 0-16 grey levels are scaled to 0-255, resized bilinearly and repeated over three channels. The split is a
    fixed seeded permutation: the last ``val_fraction`` (359 images at 0.2) is the validation set.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(y) * val_fraction)
    train, val = order[:-n_val], order[-n_val:]
    mean, std = channel_stats(x[train])
    return TensorData(x[train], y[train], x[val], y[val], 10, mean, std)


def load_synthetic(n: int = 1024, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> TensorData:
    """Random uint8 images with random labels, for speed tests (a quarter of ``n`` again for validation)."""
    g = torch.Generator().manual_seed(seed)
    n_val = max(2, n // 4)
    images = torch.randint(0, 256, (n + n_val, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n + n_val,), generator=g)
    return TensorData(images[:n], labels[:n], images[n:], labels[n:], num_classes, (0.5,) * 3, (0.2887,) * 3)


CIFAR_FILES = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels"),
    100: ("cifar-100-python", ["train"], "test", "fine_labels"),
}


def load_cifar(root: str | Path, num_classes: int = 10, download: bool = False) -> TensorData:
    """CIFAR-10 or CIFAR-100 from torchvision's python-pickle files under ``root``.

    The files are read here directly (``data``: N x 3072 uint8 rows in CHW order; labels under ``labels`` or
    ``fine_labels``), so any set of files in that format loads, through :func:`timm_tricks.safe_pickle
    .load_data_pickle`: a file that names anything but NumPy arrays is refused, nothing in it runs. With
    ``download`` torchvision fetches the official archive (checked against its MD5) and unpacks it; torchvision's
    own CIFAR classes, which read the files with a plain ``pickle.load``, are not used.
    """
    folder, train_files, test_file, label_key = CIFAR_FILES[num_classes]
    base = Path(root).expanduser() / folder
    if download and not base.is_dir():
        from torchvision import datasets
        from torchvision.datasets.utils import download_and_extract_archive

        official = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
        download_and_extract_archive(official.url, str(root), filename=official.filename, md5=official.tgz_md5)
    if not base.is_dir():
        raise DataError(f"no CIFAR-{num_classes} files in {str(base)!r}; pass --download to fetch them into "
                        f"{str(root)!r}, or point cifar{num_classes}:ROOT at the folder that holds {folder!r}")

    def read(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = base / name
        try:
            with open(path, "rb") as f:
                batch = load_data_pickle(f)
        except RefusedPickle as e:
            raise DataError(f"refused CIFAR file {str(path)!r}: {e}; nothing in it was run") from None
        except Exception as e:  # a damaged pickle raises many types (EOFError, UnpicklingError, ValueError, ...)
            raise DataError(f"cannot read CIFAR file {str(path)!r}: {type(e).__name__}: {e}") from None
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"CIFAR file {str(path)!r} is not in the CIFAR format (a dict with 'data' and "
                            f"{label_key!r}): {type(e).__name__}: {e}") from None
        if labels.shape != (len(data),):
            raise DataError(f"CIFAR file {str(path)!r} holds {len(data)} images but {labels.size} labels")
        if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
            raise DataError(f"CIFAR file {str(path)!r} has labels from {labels.min()} to {labels.max()}; CIFAR-"
                            f"{num_classes} labels are 0 to {num_classes - 1}")
        return torch.from_numpy(data.copy()), torch.from_numpy(labels)

    parts = [read(n) for n in train_files]
    train_x, train_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    val_x, val_y = read(test_file)
    mean, std = channel_stats(train_x)
    return TensorData(train_x, train_y, val_x, val_y, num_classes, mean, std)


def load_tensor_data(source: Source, image_size: int = 32, download: bool = False, seed: int = 0) -> TensorData:
    """The in-memory data set of ``source`` (digits, synthetic or CIFAR)."""
    if source.kind == "digits":
        return load_digits(image_size=image_size)
    if source.kind == "synthetic":
        return load_synthetic(int(source.arg or 1024), image_size=image_size, seed=seed)
    if source.kind in ("cifar10", "cifar100"):
        root = source.arg or "data"
        return load_cifar(root, 10 if source.kind == "cifar10" else 100, download=download)
    raise DataError(f"data source {source.kind!r} is not an in-memory source")


# ------------------------------------------------------------------------------------------------------------------
# File sources


def checked_image_loader(path: str) -> Any:
    """Open an image as RGB, or raise :class:`DataError` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from None


JPEG_MAGIC = b"\xff\xd8\xff"


def decode_image(path: str) -> torch.Tensor:
    """An image file as a uint8 RGB ``(3, H, W)`` tensor (the loader of the split file pipeline).

    A JPEG is decoded by ``torchvision.io.decode_jpeg`` (libjpeg-turbo) straight into a tensor, which torch then
    crops and resizes (docs/benchmarks.md measures this against PIL); anything else, or a JPEG it refuses (CMYK,
    damage), goes through PIL (:func:`checked_image_loader`, whose error names the file). Images are taken as
    stored, without EXIF rotation, as PIL's ``ImageFolder`` loader takes them.
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import pil_to_tensor

    _quiet_torchvision_io()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from None
    if data[:3] == JPEG_MAGIC:
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # PIL decides, and names the file if it cannot read it either
    return pil_to_tensor(checked_image_loader(path))


_TORCHVISION_IO = "The image decoding and encoding capabilities of TorchVision"


def _quiet_torchvision_io() -> None:
    """Silence the DeprecationWarning torchvision 0.29 attaches to every image decode (its decoders are to move to
    TorchCodec; the pinned torchvision==0.29.1 has them, and PIL takes over where they fail). Checked on each call:
    a ``warnings.catch_warnings`` block (pytest's, for one) restores the filters it found."""
    import re
    import warnings

    entry = ("ignore", re.compile(_TORCHVISION_IO, re.I), DeprecationWarning, None, 0)
    if entry not in warnings.filters:
        warnings.filterwarnings("ignore", message=_TORCHVISION_IO, category=DeprecationWarning)


def folder_datasets(root: str | Path, train_transform: Any, eval_transform: Any,
                    loader: Any = checked_image_loader) -> tuple[Any, Any, int]:
    """``ImageFolder`` train and val sets of an ImageNet-layout folder: ``root/train/CLASS/*`` and
    ``root/val/CLASS/*``, with the same classes in both. ``loader(path)`` opens an image: an RGB PIL image by
    default, a uint8 tensor with :func:`decode_image`."""
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"folder data set {str(root)!r} has no {split}/ folder (expected {str(root)}/train/CLASS/"
                            f"*.jpg and {str(root)}/val/CLASS/*.jpg)")
    try:
        train = ImageFolder(str(root / "train"), transform=train_transform, loader=loader, is_valid_file=_is_image)
        val = ImageFolder(str(root / "val"), transform=eval_transform, loader=loader, is_valid_file=_is_image)
    except FileNotFoundError as e:
        raise DataError(f"folder data set {str(root)!r}: {e}") from None
    if train.classes != val.classes:
        missing = sorted(set(train.classes) ^ set(val.classes))
        raise DataError(f"folder data set {str(root)!r}: train/ and val/ have different classes ({missing[:5]})")
    if len(train.classes) < 2:
        raise DataError(f"folder data set {str(root)!r} has {len(train.classes)} class ({train.classes}); a "
                        "classifier needs at least two class folders under train/ and val/")
    return train, val, len(train.classes)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


# timm sources (``timm:NAME[:ROOT]``): how ``timm.data.create_dataset`` (timm/data/dataset_factory.py) reads NAME.
# ``torch/X`` is a torchvision data set (map-style, classes in ``.classes``); ``hfds/X`` a Hugging Face data set read
# by index; ``hfids/X``, ``wds/X`` and ``tfds/X`` stream through timm's ``IterableImageDataset``; any other NAME
# (or none) is timm's own folder / tar reader.
TIMM_ITERABLE = ("hfids", "wds", "tfds")

#: The modules an optional timm source imports, with the pip package that installs each, and the timm_tricks extra
#: that declares them (pyproject.toml): ``pip install 'timm_tricks[wds]'``.
TIMM_PACKAGES: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "hfds": ((("datasets", "datasets"),), "hfds"),
    "hfids": ((("datasets", "datasets"),), "hfds"),
    "wds": ((("webdataset", "webdataset"),), "wds"),
    "tfds": ((("tensorflow", "tensorflow"), ("tensorflow_datasets", "tensorflow-datasets")), "tfds"),
}


def timm_prefix(name: str) -> str:
    """The reader prefix of a timm data set name (``wds/imagenet`` -> ``wds``), lower-cased as timm's
    ``create_dataset`` compares it; ``''`` for timm's own folder / tar reader."""
    prefix, sep, _ = name.partition("/")
    return prefix.lower() if sep else ""


def is_iterable_timm(arg: str) -> bool:
    """Whether ``timm:ARG`` streams (``hfids/``, ``wds/``, ``tfds/``): read in order, no indexing."""
    return timm_prefix(arg.partition(":")[0]) in TIMM_ITERABLE


def check_timm_packages(arg: str) -> None:
    """Raise one line naming the missing package and the extra that installs it, when source ``timm:ARG`` needs a
    package that is not installed (timm's readers import it only when the data set is opened)."""
    import importlib

    prefix = timm_prefix(arg.partition(":")[0])
    modules, extra = TIMM_PACKAGES.get(prefix, ((), ""))
    for module, package in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise DataError(f"data source 'timm:{arg}' needs the package {package!r}, which is not installed: "
                            f"pip install 'timm_tricks[{extra}]'") from None


class CifarImages(torch.utils.data.Dataset):
    """CIFAR as torchvision's ``CIFAR10``/``CIFAR100`` give it (an RGB PIL image and an int label per index, with
    ``classes``), from the files :func:`load_cifar` has read safely: what ``timm:torch/cifar10:ROOT`` opens.

    torchvision's own CIFAR classes read the files with a plain ``pickle.load`` (torchvision/datasets/cifar.py), which
    runs whatever a crafted file names; the project reads no data pickle unrestricted (docs/security.md).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, transform: Any = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        img = Image.fromarray(self.images[index].permute(1, 2, 0).numpy())
        return (self.transform(img) if self.transform is not None else img), int(self.labels[index])


class ToRGB:
    """A transform that converts the PIL image to RGB first (torchvision's MNIST family gives grey ``L`` images;
    timm's own readers convert with ``input_img_mode='RGB'``)."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, img: Any) -> Any:
        img = img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img
        return self.transform(img) if self.transform is not None else img


def timm_datasets(arg: str, train_transform: Any, eval_transform: Any, download: bool = False,
                  batch_size: int = 1, seed: int = 42) -> tuple[Any, Any, int | None]:
    """Train and validation sets of source ``timm:NAME[:ROOT]``, as ``timm.data.create_dataset(NAME, root=ROOT,
    split="train" / "validation")`` opens them, and the number of classes (None when the source does not say).

    - ``torch/NAME``: a torchvision data set; classes from its ``.classes`` (``all_categories`` for iNaturalist).
      ``torch/cifar10`` and ``torch/cifar100`` are read by :func:`load_cifar` (safe unpickling) into
      :class:`CifarImages`, never by torchvision's CIFAR classes. ``torch/image_folder`` (and timm's own reader,
      ``timm::ROOT`` or ``timm:NAME:ROOT``) take ``ROOT/train`` and ``ROOT/val`` (or ``validation``, ...; timm's
      ``_search_split``); a ROOT without split folders is refused rather than train and validate on the same images.
    - ``hfds/NAME``: a Hugging Face data set by index; ``hfids/``, ``wds/``, ``tfds/``: timm's
      ``IterableImageDataset`` streams, shuffled in training from ``seed`` (timm's ``common_seed``), counted in
      batches of ``batch_size``; :class:`timm_tricks.batches.IterableBatches` places them on the process and worker.
      Classes from the reader's ``class_to_idx`` (empty for ``wds/`` read by ``.cls`` files: set model.num_classes).

    A missing optional package (datasets, webdataset, tensorflow) is one line naming the extra that installs it.
    """
    from timm.data import create_dataset

    name, _, root = arg.partition(":")
    prefix = timm_prefix(name)
    check_timm_packages(arg)
    if prefix == "torch" and not root:
        raise DataError(f"timm data set {arg!r} needs its ROOT folder: timm:{name}:ROOT")
    kind = name.split("/", 2)[-1].lower() if prefix == "torch" else ""
    if kind in ("cifar10", "cifar100"):
        data = load_cifar(root, 10 if kind == "cifar10" else 100, download=download)
        return (CifarImages(data.train_images, data.train_labels, data.num_classes, train_transform),
                CifarImages(data.val_images, data.val_labels, data.num_classes, eval_transform), data.num_classes)
    extra: dict[str, Any] = {}
    if kind in ("image_folder", "folder"):
        extra = dict(loader=checked_image_loader, is_valid_file=_is_image)
    elif prefix in TIMM_ITERABLE:
        extra = dict(batch_size=batch_size, seed=seed)
    try:
        train = create_dataset(name, root=root or None, split="train", is_training=True, download=download, **extra)
        val = create_dataset(name, root=root or None, split="validation", is_training=False, download=download,
                             **extra)
    except Exception as e:  # timm, torchvision and datasets raise many types for a bad name or root
        raise DataError(f"timm data set {arg!r} could not be opened: {_timm_hint(prefix, e)}") from None
    if prefix == "" or kind in ("image_folder", "folder"):
        _check_split_folders(arg, train, val)
    if prefix == "torch":
        train.transform, val.transform = ToRGB(train_transform), ToRGB(eval_transform)
        classes = getattr(train, "classes", None) or getattr(train, "all_categories", None)
    else:
        train.transform, val.transform = train_transform, eval_transform
        classes = getattr(getattr(train, "reader", None), "class_to_idx", None)
    return train, val, len(classes) if classes else None


def _timm_hint(prefix: str, e: Exception) -> str:
    """The first line of ``e``, with what to do where the cause is known."""
    text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if prefix == "hfids" and "length is unknown" in str(e):
        return (f"{text} (a streamed Hugging Face data set needs its split sizes: pass --download to prepare it "
                "into ROOT, which records them)")
    return text


def _check_split_folders(arg: str, train: Any, val: Any) -> None:
    """Refuse a folder source whose train and validation sets resolve to the same folder or tar file (timm's
    ``_search_split`` falls back to ROOT itself when it has no ``train/`` or ``val/`` folder)."""
    roots = [getattr(getattr(ds, "reader", ds), "root", None) for ds in (train, val)]
    if roots[0] is not None and roots[0] == roots[1]:
        raise DataError(f"timm data set {arg!r} has no train/ and val/ folders under {str(roots[0])!r}: training and "
                        "validation would read the same images")
