"""Data: proxy-training datasets with their fixed splits.

Datasets for proxy training (:func:`load_dataset`), each with a fixed train/validation split:

- ``digits`` or ``digits:N``: scikit-learn's 1,797 real handwritten digits (8x8, one channel,
  10 classes), offline; a fixed stratified split into 898 training images (``digits:N``: a fixed
  stratified subset of N of them, 10 to 898), 360 validation (the proxy score the pruner and
  sampler see) and 539 test images (held out for confirmation runs, never seen by the search).
  Whether a split lets a study tell its candidates apart is measured, not assumed
  (docs/findings.md, "How the default task was chosen": by cross-entropy the default study's
  specs differ beyond seed noise, by top-1 they do not).
- ``cifar10:PATH`` / ``cifar100:PATH``: CIFAR python batches as torchvision stores them
  (``PATH/cifar-10-batches-py/data_batch_1..5`` and ``test_batch``, ``PATH/cifar-100-python/train``
  and ``test``), read locally, never downloaded, with an unpickler that admits numpy arrays only; a
  fixed seeded 10% of the training images validate, and the official test batch (when present) is
  the held-out split for confirmation runs.
- ``imagefolder:PATH``: class-per-folder images, prepared once at the proxy resolution and cached
  (:mod:`.prepare`: ``PATH/train``, ``PATH/val`` [, ``PATH/test``] when present, else a fixed
  stratified 60/20/20 train/val/test split of PATH); ``imagefolder:FILE`` reads a file that
  ``xnetspace prepare`` wrote. No image is decoded after the preparation.
- ``fashion-mnist[:N]``, ``fashion-mnist:PATH[:N]``: Fashion-MNIST's IDX files (28x28 grayscale,
  10 classes) from Debian's package ``dataset-fashion-mnist`` or from PATH, read offline
  (:mod:`.fashion_mnist`); a fixed stratified 5,000 of the official training images validate, N
  of the other 55,000 train (default all), and the official 10,000 test images are held out for
  confirmation runs.
- ``synthetic`` or ``synthetic:N``: N small images (default 512) of 8 classes, each class a faint
  fixed random pattern under noise: learnable in seconds, for tests.

Every dataset lives in memory and is batched on the device (:mod:`.batches`): digits and synthetic
as normalised (N, C, H, W) float tensors resized once to the proxy size, CIFAR, Fashion-MNIST and
image folders as
uint8 images (:class:`~xnetspace.search.batches.ImageTensors`) that each batch converts, augments
(``TrainConfig.augment``), resizes and normalises on the device.
The presets' evaluation preprocessing and the photograph ``xnetspace build`` classifies are
:mod:`xnetspace.photo`.
"""

from __future__ import annotations

import pickle
from collections.abc import Sized
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from . import fashion_mnist
from .batches import ImageTensors
from .errors import DataError
from .prepare import PreparedFolder, load_or_prepare, load_prepared

__all__ = ["DataSplit", "DataError", "load_dataset", "default_dataset", "DATASETS"]

DATASETS = (
    "digits[:N]",
    "fashion-mnist[:N]",
    "fashion-mnist:PATH[:N]",
    "synthetic[:N]",
    "imagefolder:PATH",
    "cifar10:PATH",
    "cifar100:PATH",
)
DIGITS_TRAIN = 898  # training images of the default digits task: all that are not val or test


@dataclass
class DataSplit:
    """A dataset with its fixed split. Items are ``(image (in_chans, H, W) float, label int)``.

    ``val`` scores the search's proxy runs; ``test`` (None: no separate split) is held out for
    confirmation, so the confirmed score is not the one the candidates were selected on.
    ``unreadable`` lists the images a preparation could not decode (left out), ``prepared`` the
    prepared file the images came from (None: not from one, or not cached)."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    test: Dataset | None = None
    unreadable: tuple[str, ...] = ()
    prepared: str | None = None

    def held_out(self) -> DataSplit:
        """The same split with the test images in place of the validation ones (confirmation
        runs score on it); the split itself when there is no test split."""
        if self.test is None:
            return self
        return replace(self, val=self.test, test=None)

    def __str__(self) -> str:
        # torch's Dataset declares no __len__; these datasets (ImageTensors, TensorDataset) have one
        train, val = cast(Sized, self.train), cast(Sized, self.val)
        test = f" / {len(cast(Sized, self.test)):,} test" if self.test is not None else ""
        line = (
            f"{self.name}: {len(train):,} train / {len(val):,} val{test} images, "
            f"{self.num_classes} classes, {self.in_chans} channel(s)"
        )
        if self.unreadable:
            line += (
                f"; {len(self.unreadable):,} unreadable image(s) left out (listed in "
                f"{self.prepared or 'the preparation summary'})"
            )
        return line


def load_dataset(name: str, image_size: int, seed: int = 0) -> DataSplit:
    """Open a proxy-training dataset by name (see the module docstring), resized to ``image_size``.

    Raises:
        DataError: unknown name, missing folder, or files that are not of the expected format.
    """
    kind, _, arg = name.partition(":")
    if kind == "digits":
        count = _count(name, arg, DIGITS_TRAIN)
        if not 10 <= count <= 898:
            raise DataError(f"digits:N takes 10 to 898 training images, got {count:,}")
        return _digits(image_size, count)
    if kind == "synthetic":
        count = _count(name, arg, 512)
        if not 10 <= count <= 1_000_000:
            raise DataError(f"synthetic:N takes 10 to 1,000,000 samples, got {count:,}")
        return _synthetic(image_size, count, seed)
    if kind == "fashion-mnist":
        return _fashion_mnist(arg, image_size)
    if kind in ("cifar10", "cifar100", "imagefolder"):
        root = Path(arg)
        if kind == "imagefolder" and arg and root.is_file():
            return _prepared_split(load_prepared(root), f"imagefolder:{root}", image_size, str(root))
        if not arg or not root.is_dir():
            also = " (or a file that `xnetspace prepare` wrote)" if kind == "imagefolder" else ""
            raise DataError(f"dataset {name!r}: {kind} needs an existing folder{also}, e.g. {kind}:/data/{kind}")
        return _cifar(kind, root, image_size) if kind.startswith("cifar") else _image_folder(root, image_size)
    raise DataError(f"unknown dataset {name!r}; use one of: {', '.join(DATASETS)}")


def default_dataset(task: str) -> tuple[str, str]:
    """The dataset a command runs when ``--dataset`` is not given, and why, in words: the space's
    own task (``SearchSpace.dataset``, what its budget and recipe were chosen on), except that a
    Fashion-MNIST task read from Debian's folder falls back to ``digits`` where the package
    ``dataset-fashion-mnist`` is not installed (a fresh machine, CI)."""
    kind, _, arg = task.partition(":")
    if kind == "fashion-mnist":
        folder, _ = fashion_mnist.parse_argument(arg)
        if folder == fashion_mnist.DEBIAN_FOLDER and not fashion_mnist.installed():
            return "digits", (
                f"the space's task is {task}, but Debian's package dataset-fashion-mnist is not installed "
                "(apt-get install dataset-fashion-mnist): digits instead"
            )
    return task, f"the space's task ({task})"


def _count(name: str, arg: str, default: int) -> int:
    try:
        return int(arg) if arg else default
    except ValueError:
        raise DataError(f"{name.partition(':')[0]}:N needs a count, got {arg[:80]!r}") from None


def _tensor_split(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    val_index: np.ndarray,
    image_size: int,
    num_classes: int,
    test_index: np.ndarray | None = None,
) -> DataSplit:
    """Resize once, normalise with the training split's per-channel statistics, split.

    Raises:
        DataError: images that would not fit in memory at ``image_size`` (checked before resizing).
    """
    _check_memory(name, x.shape[0] * x.shape[1], image_size)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    part = torch.zeros(len(x), dtype=torch.long)  # 0 train, 1 val, 2 test
    part[torch.as_tensor(val_index)] = 1
    if test_index is not None:
        part[torch.as_tensor(test_index)] = 2
    train = part == 0
    mean = x[train].mean(dim=(0, 2, 3), keepdim=True)
    std = x[train].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x = (x - mean) / std
    test = TensorDataset(x[part == 2], y[part == 2]) if test_index is not None else None
    return DataSplit(
        name,
        TensorDataset(x[train], y[train]),
        TensorDataset(x[part == 1], y[part == 1]),
        num_classes,
        x.shape[1],
        test,
    )


_FLOAT_COPIES = 3  # the resized images, their normalised copy and the splits cut from it


def _check_memory(name: str, planes: int, image_size: int) -> None:
    """Refuse an in-memory float dataset (``planes`` = images x channels) that would not fit in the
    memory available at ``image_size`` (digits at 16,384 pixels would need about 6 TB)."""
    from ..memory_limit import available_memory, human_bytes

    need = _FLOAT_COPIES * planes * image_size * image_size * 4
    free = available_memory()
    if free is not None and need > free:
        raise DataError(
            f"image_size {image_size:,} (--image-size): {name} held at {image_size:,}x{image_size:,} would need "
            f"about {human_bytes(need)} of memory, but {human_bytes(free)} is available; use a smaller image size"
        )


def _stratified_val(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    _, val = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(val)


def _digits(image_size: int, n_train: int) -> DataSplit:
    from sklearn.datasets import load_digits

    digits = load_digits()
    val = _stratified_val(digits.target, 0.2, seed=0)  # the same 360 validation images as before
    rest = np.setdiff1d(np.arange(len(digits.target)), val)
    test = rest[_stratified_val(digits.target[rest], 0.375, seed=0)]  # 539 of the other 1,437
    train = np.setdiff1d(rest, test)  # 898
    if n_train < len(train):  # a fixed stratified subset; the other training images are not used
        train = np.sort(train[_stratified_val(digits.target[train], n_train / len(train), seed=0)])
    keep = np.sort(np.concatenate([train, val, test]))
    position = {int(i): k for k, i in enumerate(keep)}
    x = torch.tensor(digits.images[keep], dtype=torch.float32).unsqueeze(1) / 16.0  # (n, 1, 8, 8)
    y = torch.tensor(digits.target[keep], dtype=torch.long)
    name = "digits" if n_train == DIGITS_TRAIN else f"digits:{n_train}"
    return _tensor_split(
        name,
        x,
        y,
        np.array([position[int(i)] for i in val]),
        image_size,
        10,
        test_index=np.array([position[int(i)] for i in test]),
    )


def _synthetic(image_size: int, count: int, seed: int, num_classes: int = 8) -> DataSplit:
    # Faint class patterns under unit noise: above chance in one epoch, far from 100% in three.
    gen = torch.Generator().manual_seed(seed)
    patterns = 0.2 * torch.randn(num_classes, 3, 8, 8, generator=gen)
    y = torch.arange(count) % num_classes
    x = patterns[y] + torch.randn(count, 3, 8, 8, generator=gen)
    val = np.arange(count)[np.arange(count) % 5 == 0]  # every fifth image validates
    return _tensor_split(f"synthetic:{count}", x, y, val, image_size, num_classes)


_CIFAR = {  # folder inside PATH, training files, test file, label key (torchvision's python layout)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels", 100),
}


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles of dicts of numpy arrays: allow numpy's array classes and
    nothing else, so a data file can never run code."""

    _ALLOWED = {
        (core, name)
        for core in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _read_cifar(kind: str, root: Path, folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) labels of the batch files."""
    images, labels = [], []
    for name in files:
        try:
            with open(folder / name, "rb") as f:
                batch = _ArrayUnpickler(f, encoding="latin1").load()
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch[label_key])
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as err:
            raise DataError(f"{kind}:{root}: {name} is not a CIFAR batch: {err}") from err
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)


def _cifar(kind: str, root: Path, image_size: int) -> DataSplit:
    """uint8 images batched on the device; normalised with the training split's per-channel
    statistics of the images resized to ``image_size``, computed as they were when the images
    were held as floats, so the batches without augmentation are bit for bit the same."""
    inner, files, test_file, label_key, num_classes = _CIFAR[kind]
    folder = root if (root / files[0]).is_file() else root / inner
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{kind}:{root}: not torchvision's CIFAR python files; missing {missing} in {folder}")
    x, y = _read_cifar(kind, root, folder, files, label_key)
    rng = np.random.default_rng(0)
    val = np.zeros(len(y), dtype=bool)
    val[rng.permutation(len(y))[: max(1, len(y) // 10)]] = True
    mean, std = _train_statistics(torch.from_numpy(x[~val]), image_size)
    channels_last = x.transpose(0, 2, 3, 1)

    def part(images: np.ndarray, labels: np.ndarray) -> ImageTensors:
        return ImageTensors(
            torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), image_size, mean, std
        )

    test = None
    if (folder / test_file).is_file():
        tx, ty = _read_cifar(kind, root, folder, [test_file], label_key)
        test = part(tx.transpose(0, 2, 3, 1), ty)
    return DataSplit(
        f"{kind}:{root}", part(channels_last[~val], y[~val]), part(channels_last[val], y[val]), num_classes, 3, test
    )


def _fashion_mnist(arg: str, image_size: int) -> DataSplit:
    """Fashion-MNIST's fixed splits as uint8 images (:mod:`.fashion_mnist`), normalised with the
    training images' statistics at ``image_size``."""
    folder, n_train = fashion_mnist.parse_argument(arg)
    arrays = fashion_mnist.read_fashion_mnist(folder)
    images, labels = arrays["train_images"][..., None], arrays["train_labels"].astype(np.int64)  # (N, 28, 28, 1)
    train, val = fashion_mnist.split_indices(labels, n_train)
    mean, std = _train_statistics(torch.from_numpy(images[train]).permute(0, 3, 1, 2), image_size)

    def part(x: np.ndarray, y: np.ndarray) -> ImageTensors:
        return ImageTensors(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), image_size, mean, std)

    test = part(arrays["test_images"][..., None], arrays["test_labels"].astype(np.int64))
    name = "fashion-mnist" if n_train is None else f"fashion-mnist:{len(train)}"
    if folder != fashion_mnist.DEBIAN_FOLDER:
        name = f"fashion-mnist:{folder}" + ("" if n_train is None else f":{len(train)}")
    return DataSplit(name, part(images[train], labels[train]), part(images[val], labels[val]), 10, 1, test)


def _train_statistics(train: torch.Tensor, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) of (N, C, H, W) uint8 training images as floats in [0, 1]
    resized to ``image_size`` (the float operations of :func:`_tensor_split`)."""
    x = F.interpolate(
        train.float() / 255.0, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return mean.flatten(), std.flatten()


def _image_folder(root: Path, image_size: int) -> DataSplit:
    prepared, path, _ = load_or_prepare(root, image_size)
    return _prepared_split(prepared, f"imagefolder:{root}", image_size, str(path) if path else None)


def _prepared_split(prepared: PreparedFolder, name: str, image_size: int, source: str | None) -> DataSplit:
    """The DataSplit of a prepared image folder: :class:`ImageTensors` per split, resized from the
    stored side to ``image_size`` by each batch.

    Raises:
        DataError: a train or val split without a readable image.
    """
    images = torch.from_numpy(prepared.images)
    labels = torch.from_numpy(prepared.labels)
    grouped = bool(np.all(np.diff(prepared.split) >= 0))  # as prepare stores them: each split a view, no copy
    parts = {}
    keep: slice | torch.Tensor
    for index, split in enumerate(("train", "val", "test")):
        if grouped:
            lo, hi = np.searchsorted(prepared.split, [index, index + 1])
            keep = slice(int(lo), int(hi))
        else:
            keep = torch.from_numpy(prepared.split == index)
        parts[split] = ImageTensors(images[keep], labels[keep], image_size, prepared.mean, prepared.std)
    for split in ("train", "val"):
        if len(parts[split]) == 0:
            raise DataError(
                f"{name}: the {split} split holds no readable image ({len(prepared.unreadable):,} unreadable)"
            )
    return DataSplit(
        name,
        parts["train"],
        parts["val"],
        len(prepared.classes),
        3,
        parts["test"] if len(parts["test"]) else None,
        tuple(p for p, _ in prepared.unreadable),
        source,
    )
