"""Mini-batches for proxy training: in-memory images indexed, augmented and normalised on the
device, without a DataLoader (issue 24; the idea of FFCV, Leclerc et al. CVPR 2023, and NVIDIA
DALI: decode once, augment batches on the accelerator).

Two kinds of in-memory dataset are batched by :class:`TensorBatches`:

- a ``TensorDataset`` of normalised float images already at the training size (``digits``,
  ``synthetic``): a batch is its rows, exactly as before this module existed;
- an :class:`ImageTensors`: uint8 images stored at a side S' >= the training size S (CIFAR at its
  own 32 px; image folders prepared by :mod:`.prepare`) with the per-channel mean and std that
  normalise them. A batch is gathered as uint8 on the device, converted to float, augmented,
  resized to S and normalised there.

Augmentations (``augment``), drawn per image; the timm / torchvision transform each one means:

- ``none``: no augmentation; the whole stored image resized to S (bilinear, antialiased; for an
  image folder that is the centre square, timm's evaluation transform with ``crop_pct=1.0``).
  Validation and test batches are always this.
- ``flip``: a horizontal flip with probability 0.5 (``RandomHorizontalFlip``).
- ``crop-flip``: pad round(S'/8) pixels of zeros on every side (4 at 32 px; black for uint8 images,
  the mean for normalised float data), crop a random S' x S' window at a whole-pixel offset, then
  flip: ``RandomCrop(32, padding=4)`` + flip, the CIFAR recipe (He et al., CVPR 2016).
- ``rrc-flip``: a random-resized crop, area scale in :data:`RRC_SCALE` and aspect ratio in
  (3/4, 4/3) drawn as timm's ``RandomResizedCropAndInterpolation`` draws them (log-uniform ratio,
  10 tries, else the whole image; box corners are not rounded to whole pixels), resampled to S by
  ``torchvision.ops.roi_align`` (bilinear samples averaged over each output pixel's box, so a
  shrinking crop is antialiased), then flip (Szegedy et al., CVPR 2015; timm's training transform).

Generators (each iterator owns its own, so S seeds batched side by side, or a resumed run, draw
exactly what one run of that seed draws alone): the order comes from a CPU ``torch.Generator``
drawing what ``DataLoader(shuffle=True)`` draws (so with ``augment="none"`` the batches are the
ones studies got before); the augmentation from a second generator on the data's device (CUDA's
Philox for CUDA tensors), seeded from the run's seed through ``numpy.random.SeedSequence`` so that
it is never the order's stream. Neither touches torch's global random state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal, cast, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "AUGMENTS",
    "Augment",
    "RRC_SCALE",
    "RRC_RATIO",
    "ImageTensors",
    "TensorBatches",
    "Batches",
    "batches",
    "augment_batch",
    "stream_seed",
]

Augment = Literal["none", "flip", "crop-flip", "rrc-flip"]
AUGMENTS: tuple[str, ...] = get_args(Augment)  # ("none", "flip", "crop-flip", "rrc-flip")
RRC_SCALE = (0.35, 1.0)  # area fraction of a random-resized crop (timm's default is (0.08, 1): gentler at proxy sizes)
RRC_RATIO = (3 / 4, 4 / 3)  # aspect ratio range (timm's default)
RRC_TRIES = 10  # timm's tries before falling back to the whole image


def stream_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for random stream ``stream`` of a run seeded ``seed`` (numpy's SeedSequence
    mixes both), so two streams of one run never share a sequence."""
    state = np.random.SeedSequence([seed % 2**64, stream]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


class ImageTensors(Dataset):
    """uint8 images held in memory at a stored side S' and given at the training side S.

    Args:
        images: (N, S', S', C) uint8 (channels last, as decoded).
        labels: (N,) integer class indices.
        size: S, the side of the images that batches give (pixels; S' is resampled to it, upsampled
            when S > S').
        mean, std: (C,) per-channel statistics of the values in [0, 1] that normalise them.

    Items (``dataset[i]``) are ``(image (C, S, S) float32 normalised, label)``: the evaluation
    view, what an unaugmented batch holds.

    Raises:
        ValueError: images that are not 4-d uint8 with square sides, labels of another length,
            statistics of another channel count, a non-positive size or std.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        size: int,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
    ):
        images, labels = torch.as_tensor(images), torch.as_tensor(labels, dtype=torch.long)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be (N, S, S, C) uint8, got {tuple(images.shape)} {images.dtype}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must be ({len(images)},), got {tuple(labels.shape)}")
        mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean_t.shape != (images.shape[3],) or std_t.shape != (images.shape[3],) or not bool((std_t > 0).all()):
            raise ValueError(
                f"mean and std must be ({images.shape[3]},) with std > 0, got {mean_t.tolist()}, {std_t.tolist()}"
            )
        if size < 1:
            raise ValueError(f"size must be at least 1 pixel, got {size}")
        self.images, self.labels, self.size, self.mean, self.std = images, labels, int(size), mean_t, std_t
        self._on: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def stored_size(self) -> int:
        """S', the side the images are held at."""
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = range(len(self))[i]  # IndexError out of range, as a list
        images, _, mean, std = self.on(self.images.device)
        return self.transform(images[i : i + 1], "none", None, mean, std)[0], int(self.labels[i])

    def on(self, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, labels, mean, std)`` on ``device``, copied there once and kept (several
        iterators over one dataset, e.g. one per packed seed, share one copy); mean and std
        shaped (1, C, 1, 1)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" share one copy
            device = torch.device("cuda", torch.cuda.current_device())
        key = str(device)
        if key not in self._on:
            shape = (1, self.channels, 1, 1)
            self._on[key] = (
                self.images.to(device),
                self.labels.to(device),
                self.mean.view(shape).to(device),
                self.std.view(shape).to(device),
            )
        return self._on[key]

    def transform(
        self,
        images: torch.Tensor,
        augment: str,
        generator: torch.Generator | None,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> torch.Tensor:
        """(b, S', S', C) uint8 -> (b, C, S, S) float32: to [0, 1], :func:`augment_batch`, then
        ``(x - mean) / std`` (the order of the float operations the in-memory datasets used before,
        so unaugmented CIFAR batches are bit for bit what they were)."""
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = augment_batch(x, augment, (self.size, self.size), generator)
        return (x - mean) / std


def augment_batch(
    x: torch.Tensor, augment: str, size: tuple[int, int], generator: torch.Generator | None
) -> torch.Tensor:
    """Augment a batch and resize it: (b, C, H, W) float -> (b, C, size[0], size[1]) (module
    docstring for what each ``augment`` means). All random draws come from ``generator`` (on
    ``x``'s device), a fixed number per batch: the same generator state gives the same batch.

    Raises:
        ValueError: an unknown ``augment``; a random augmentation without a generator.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment {augment!r}: use one of {', '.join(AUGMENTS)}")
    if augment != "none" and generator is None:
        raise ValueError(f"augment {augment!r} needs a generator")
    draws = cast(torch.Generator, generator)  # every augmentation that draws has one (checked above)
    if augment == "rrc-flip":
        return _flip(_random_resized_crop(x, size, draws), draws)
    if augment == "crop-flip":
        x = _pad_crop_flip(x, draws)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return _flip(x, draws) if augment == "flip" else x


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _pad_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad round(side/8) pixels, crop the original side at a random whole-pixel offset, and
    flip with probability 0.5, in one gather (the flip reverses the gathered columns)."""
    b, _, h, w = x.shape
    ph, pw = max(1, round(h / 8)), max(1, round(w / 8))
    dev = x.device
    oy = torch.randint(0, 2 * ph + 1, (b,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pw + 1, (b,), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    cols = torch.arange(w, device=dev)
    rows = oy[:, None] + torch.arange(h, device=dev)  # (b, h)
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)  # (b, w)
    padded = F.pad(x, (pw, pw, ph, ph))
    out = padded[torch.arange(b, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (b, h, w, C)
    return out.permute(0, 3, 1, 2)


def _random_resized_crop(x: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """timm's random-resized-crop distribution, vectorised: per image, RRC_TRIES (scale, log ratio)
    pairs, the first whose box fits, else the whole image; a uniform position; resampled by
    ``roi_align``."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    dev = x.device
    u = torch.rand((b, RRC_TRIES, 2), generator=generator, device=dev)
    area = (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[..., 0]) * (h * w)
    lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    ratio = torch.exp(lo + (hi - lo) * u[..., 1])
    cw, ch = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
    fits = (cw <= w) & (ch <= h)
    first = fits.to(torch.uint8).argmax(dim=1)  # the first try that fits (0 when none does)
    rows = torch.arange(b, device=dev)
    found = fits.any(dim=1)
    cw = torch.where(found, cw[rows, first], torch.full_like(cw[:, 0], w))
    ch = torch.where(found, ch[rows, first], torch.full_like(ch[:, 0], h))
    v = torch.rand((b, 2), generator=generator, device=dev)
    x1, y1 = v[:, 0] * (w - cw), v[:, 1] * (h - ch)
    boxes = torch.stack([rows.to(x.dtype), x1, y1, x1 + cw, y1 + ch], dim=1).to(x.dtype)
    return roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


class TensorBatches:
    """Mini-batches of an in-memory dataset by indexing its tensors on ``device``: no DataLoader
    workers, no per-sample collation. Yields ``(x, y)``: (b, C, H, W) float, (b,) int64.

    Args:
        dataset: a ``TensorDataset`` of float images at the training size, or an
            :class:`ImageTensors` (uint8; converted, augmented, resized and normalised per batch).
        generator: the CPU generator the order is drawn from (None: a new one seeded with ``seed``).
            With ``shuffle`` each pass draws from it exactly what ``DataLoader(shuffle=True,
            generator=generator)`` draws (its base seed and two ``randperm``), so the batches and
            hence the trained weights are the ones a DataLoader gives, and studies run before stay
            reproducible.
        augment: one of :data:`AUGMENTS` (module docstring); ``none`` gives the rows unchanged.
        seed: the run's seed, which seeds the augmentation's generator (on the data's device) and,
            without ``generator``, the order's; None: ``generator.initial_seed()``, or 0.
        memory_format: the layout of the batches (channels_last on CUDA, see
            :func:`xnetspace.search.train.training_memory_format`).
        dtype: the floating type of the batches (normalised in float32, then cast).

    Two iterators with the same seed give the same batches, whatever runs beside them.

    Raises:
        ValueError: an unknown ``augment``. TypeError: a dataset of another kind.
    """

    def __init__(
        self,
        dataset: TensorDataset | ImageTensors,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        augment: str = "none",
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if augment not in AUGMENTS:
            raise ValueError(f"augment {augment!r}: use one of {', '.join(AUGMENTS)}")
        device = torch.device(device)
        self.images: ImageTensors | None = None
        if isinstance(dataset, ImageTensors):
            self.images = dataset
            self.x, self.y, self.mean, self.std = dataset.on(device)
        elif isinstance(dataset, TensorDataset):
            x, y = dataset.tensors
            self.x = x.to(device).contiguous(memory_format=memory_format)
            self.y = y.to(device)
        else:
            raise TypeError(f"TensorBatches takes a TensorDataset or ImageTensors, not {type(dataset).__name__}")
        if seed is None:
            seed = generator.initial_seed() if generator is not None else 0
        self.seed, self.augment, self.dtype, self.memory_format = seed, augment, dtype, memory_format
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.augment_generator = (
            torch.Generator(device=self.x.device).manual_seed(stream_seed(seed, 1)) if augment != "none" else None
        )

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # DataLoader's base seed
            order = torch.randperm(n, generator=self.generator).to(self.y.device)
        else:
            order = None
        for i in range(len(self)):
            batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield self._batch(batch if order is None else order[batch])
        if self.shuffle:  # RandomSampler draws one more permutation (an empty remainder) at the end
            torch.randperm(n, generator=self.generator)

    def _batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.x[index], self.y[index]
        if self.images is not None:
            x = self.images.transform(x, self.augment, self.augment_generator, self.mean, self.std)
            return x.to(self.dtype).contiguous(memory_format=self.memory_format), y
        if self.augment == "none":
            return x, y  # the rows as they are: the batches of every study before augmentation existed
        x = augment_batch(x, self.augment, (x.shape[-2], x.shape[-1]), self.augment_generator)
        return x.contiguous(memory_format=self.memory_format), y


Batches = DataLoader | TensorBatches


def batches(
    dataset,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
    augment: str = "none",
    seed: int | None = None,
) -> Batches:
    """:class:`TensorBatches` for an in-memory ``TensorDataset`` or :class:`ImageTensors`, a
    DataLoader for any other dataset (which does its own per-sample transforms).

    Raises:
        ValueError: an augmentation asked of a dataset that is not in memory.
    """
    if isinstance(dataset, (TensorDataset, ImageTensors)):
        return TensorBatches(dataset, batch_size, device, shuffle, drop_last, generator, memory_format, augment, seed)
    if augment != "none":
        raise ValueError(
            f"augment {augment!r} needs an in-memory dataset (TensorDataset or ImageTensors), "
            f"not {type(dataset).__name__}"
        )
    if generator is None and shuffle:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        generator=generator,
        num_workers=num_workers,
    )
