"""Training batches from an image folder: today's per-epoch JPEG decoding against prepared uint8
tensors augmented on the device (issue 24), side by side in one run.

    python benchmarks/bench_data.py                          # writes 2,000 JPEGs, 32 px, CPU
    python benchmarks/bench_data.py --image-size 64 --json   # the last line is one JSON object
    python benchmarks/bench_data.py --imagefolder /data/imagenet-subset --device cuda

Without ``--imagefolder`` it writes its own folder (``--per-class`` x 10 classes, default 2,000
JPEGs of 256x256, quality 90, seeded): five classes of random crops of scikit-image's bundled
photographs (astronaut, chelsea, coffee, rocket, immunohistochemistry; random scale, position,
flip and brightness) and five of synthetic drawings (``skimage.draw``: discs, rectangles, lines,
triangles, ellipses in random colours over a random background with noise).

Both paths give the training batches of one epoch (``--batch-size``, shuffled, last partial batch
dropped) as normalised float tensors on ``--device``, with a random-resized crop (area scale
0.35..1, as the proxy recipe has always used for image folders) and a horizontal flip:

- ``decode``: the DataLoader path xnetspace used before issue 24: ``torchvision.datasets.ImageFolder``
  decoding each JPEG with PIL every epoch, timm's training transform (bicubic RRC, flip, to tensor,
  ImageNet normalisation), ``--num-workers`` loader processes (default 0, TrainConfig's default);
- ``prepared``: ``xnetspace prepare``'s file (decoded once at ceil(1.25 S)), held as uint8 and
  batched by ``TensorBatches(..., augment="rrc-flip")`` on the device.

The two are timed in turn (``--rounds`` rounds, each one full epoch of each path; the prepared path
repeats its epoch until the round lasts ``--min-seconds``), so load from other processes falls on
both alike. Printed: images per second of each path (median over rounds, with the min..max), their
ratio, and the one-off preparation time (``prep_s``, decoding with ``--prepare-workers`` threads).
Target (issue 24): the prepared path at least 10x faster per epoch.

Torch runs one thread by default (``--threads``), as each CPU worker of a study does: on a machine
that other processes keep busy, torch's own thread pool (one thread per core) stalls on every
small operation (measured on a shared 2-core machine: gathering one batch of 64 images took 0.4
ms with one thread and 12 ms with two), which would time the machine's load, not the data path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xnetspace.search.batches import TensorBatches
from xnetspace.search.data import load_dataset
from xnetspace.search.prepare import list_image_folder, prepare_image_folder

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
DRAWINGS = ("discs", "rectangles", "lines", "triangles", "ellipses")


def photo_crop(photo: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    """A random square crop (40-100% of the shorter side) of ``photo``, resized, maybe flipped and
    brightened: (side, side, 3) uint8."""
    h, w = photo.shape[:2]
    crop = int(min(h, w) * rng.uniform(0.4, 1.0))
    y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    image = Image.fromarray(photo[y : y + crop, x : x + crop]).resize((side, side), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.7, 1.3)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def drawing(kind: str, rng: np.random.Generator, side: int) -> np.ndarray:
    """3 to 8 random shapes of one kind over a random background with noise: (side, side, 3) uint8."""
    from skimage import draw

    image = np.empty((side, side, 3), dtype=np.float32)
    image[:] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(3, 9)):
        colour = rng.uniform(0, 255, 3)
        r, c = rng.uniform(0, side, 2)
        size = rng.uniform(side / 16, side / 4)
        if kind == "discs":
            rr, cc = draw.disk((r, c), size, shape=image.shape[:2])
        elif kind == "rectangles":
            rr, cc = draw.rectangle((r, c), extent=(size, 1.5 * size), shape=image.shape[:2])
        elif kind == "lines":
            r2, c2 = rng.uniform(0, side, 2)
            rr, cc = draw.line_aa(int(r), int(c), int(r2), int(c2))[:2]
            keep = (rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)
            rr, cc = rr[keep], cc[keep]
        elif kind == "triangles":
            rows, cols = r + rng.uniform(-size, size, 3), c + rng.uniform(-size, size, 3)
            rr, cc = draw.polygon(rows, cols, shape=image.shape[:2])
        else:
            rr, cc = draw.ellipse(r, c, size, size / 2, shape=image.shape[:2], rotation=rng.uniform(0, np.pi))
        image[rr, cc] = colour
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_folder(root: Path, per_class: int, side: int = 256, seed: int = 0) -> int:
    """The benchmark's own image folder (module docstring); returns the number of images."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = {name: getattr(skimage.data, name)() for name in PHOTOS}
    count = 0
    for kind in PHOTOS + DRAWINGS:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = photo_crop(photos[kind], rng, side) if kind in photos else drawing(kind, rng, side)
            Image.fromarray(pixels).save(root / kind / f"{i:05d}.jpg", quality=90)
            count += 1
    return count


def decode_loader(root: Path, image_size: int, batch_size: int, num_workers: int):
    """The DataLoader path of xnetspace before issue 24 (data.py's ``_image_folder`` training side)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    transform = create_transform(
        input_size=(3, image_size, image_size),
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        interpolation="bicubic",
        is_training=True,
        scale=(0.35, 1.0),
        hflip=0.5,
        color_jitter=None,
    )
    return DataLoader(
        ImageFolder(str(root), transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def epoch_seconds(batches, device: torch.device, min_seconds: float = 0.0) -> tuple[float, int]:
    """Seconds and images of whole epochs of ``batches`` (each batch moved to ``device`` and
    waited for), repeated until ``min_seconds`` have passed."""
    start, images = time.perf_counter(), 0
    while True:
        for x, y in batches:
            x = x.to(device, non_blocking=True)
            images += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if seconds >= min_seconds:
            return seconds, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imagefolder", type=Path, default=None, help="a folder of class folders (default: write one)")
    parser.add_argument(
        "--per-class", type=int, default=200, help="images per class of the folder written (10 classes)"
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader processes of the decode path")
    parser.add_argument("--prepare-workers", type=int, default=None, help="decoding threads of the preparation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="shortest prepared-path round")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1, as each CPU worker of a study runs; 0: torch's default)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the folder and prepared file written")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="xnetspace-bench-data-"))
    try:
        root = args.imagefolder
        if root is None:
            root = work / "images"
            start = time.perf_counter()
            count = write_folder(root, args.per_class)
            print(
                f"wrote {count:,} JPEGs of 256x256 in 10 classes to {root} in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
        listing = list_image_folder(root)
        start = time.perf_counter()
        prepared = prepare_image_folder(listing, args.image_size, args.prepare_workers, progress=False)
        prep_s = time.perf_counter() - start
        prepared.save(work / "prepared.npz")
        data = load_dataset(f"imagefolder:{work / 'prepared.npz'}", args.image_size)
        print(
            f"prepared {len(prepared.labels):,} images at {prepared.stored_size}px in {prep_s:.2f} s "
            f"({len(prepared.unreadable)} unreadable): {data}",
            flush=True,
        )

        decode = decode_loader(root, args.image_size, args.batch_size, args.num_workers)
        fast = TensorBatches(
            data.train, args.batch_size, device, shuffle=True, drop_last=True, seed=0, augment="rrc-flip"
        )
        epoch_seconds(fast, device)  # warm-up: first-call allocations and kernels
        rates: dict[str, list[float]] = {"decode": [], "prepared": []}
        for r in range(args.rounds):
            for name, batches, minimum in (("decode", decode, 0.0), ("prepared", fast, args.min_seconds)):
                seconds, images = epoch_seconds(batches, device, minimum)
                rates[name].append(images / seconds)
            print(
                f"round {r + 1}: decode {rates['decode'][-1]:,.0f} img/s, prepared {rates['prepared'][-1]:,.0f} img/s",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    decode_img_s, prepared_img_s = statistics.median(rates["decode"]), statistics.median(rates["prepared"])
    summary = dict(
        images=len(prepared.labels),
        image_size=args.image_size,
        stored_size=prepared.stored_size,
        batch_size=args.batch_size,
        device=device.type,
        threads=torch.get_num_threads(),
        num_workers=args.num_workers,
        prepare_workers=args.prepare_workers or min(16, len(os.sched_getaffinity(0))),
        rounds=args.rounds,
        decode_img_s=decode_img_s,
        prepared_img_s=prepared_img_s,
        ratio=prepared_img_s / decode_img_s,
        decode_img_s_range=[min(rates["decode"]), max(rates["decode"])],
        prepared_img_s_range=[min(rates["prepared"]), max(rates["prepared"])],
        prep_s=prep_s,
        prep_img_s=len(listing.paths) / prep_s,
    )
    print(
        f"\ntraining batches of {args.image_size}x{args.image_size}, batch {args.batch_size}, random-resized crop "
        f"+ flip, {device.type}, {summary['threads']} torch threads, {args.num_workers} loader workers "
        f"(median over {args.rounds} rounds, min..max):"
    )
    decode_low, decode_high = summary["decode_img_s_range"]
    prepared_low, prepared_high = summary["prepared_img_s_range"]
    print(f"  decode   {decode_img_s:10,.0f} img/s  ({decode_low:,.0f}..{decode_high:,.0f})")
    print(f"  prepared {prepared_img_s:10,.0f} img/s  ({prepared_low:,.0f}..{prepared_high:,.0f})")
    print(
        f"  ratio {summary['ratio']:.1f}x (target >= 10x); one-off preparation {prep_s:.1f} s "
        f"({summary['prep_img_s']:,.0f} img/s, {summary['prepare_workers']} threads)"
    )
    if args.json:
        print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
