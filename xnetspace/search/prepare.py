"""Image folders prepared once at the proxy resolution (issue 24), so that a study never decodes a
JPEG after its first use: the downsampled-ImageNet recipe (Chrabaszcz, Loshchilov & Hutter 2017,
"A Downsampled Variant of ImageNet as an Alternative to the CIFAR datasets") of decoding once at
the small size and training from memory.

``xnetspace prepare imagefolder:PATH --image-size S [--out FILE]``, or a study's first use of
``imagefolder:PATH`` (:func:`load_or_prepare`), does this:

1. lists the images as ``torchvision.datasets.ImageFolder`` does (one folder per class, its
   extensions) and splits them: ``PATH/train``, ``PATH/val`` (and ``PATH/test`` when present) as
   given, else a fixed stratified split of every class of ``PATH`` into 60% train, 20% val (the
   proxy score the search sees) and 20% test (held out for confirmation);
2. decodes every image once (threads: Pillow releases the GIL while decoding; JPEGs are decoded
   at a reduced DCT scale that still covers the target, Pillow's ``draft``), converts it to RGB,
   resizes its shorter side to S' = :func:`stored_side` (S) >= S and keeps the centre square
   (``PIL.ImageOps.fit``, bicubic), the room a random-resized crop to S draws from;
3. writes one ``.npz`` file (numpy's zip of arrays, read with ``allow_pickle=False``, so it can
   hold no code) with these arrays:

   ======================  ======================================================================
   ``format``, ``version``  ``"xnetspace-imagefolder"``, 1
   ``images``               (N, S', S', 3) uint8, RGB, channels last; train, then val, then test
   ``labels``               (N,) int64 class index
   ``split``                (N,) int8: 0 train, 1 val, 2 test
   ``paths``                (N,) the images' paths relative to PATH (which image is where)
   ``classes``              (K,) class folder names, in label order
   ``image_size``           S; ``stored_size`` S'
   ``mean``, ``std``        (3,) ImageNet's statistics (timm's), in [0, 1] units, that normalise
   ``root``, ``key``        the folder prepared and its cache key
   ``unreadable_paths``     (F,) images that could not be decoded, left out ...
   ``unreadable_errors``    ... and why (the exception), one per path
   ======================  ======================================================================

Reading a prepared file maps its images from the file (copy-on-write, :func:`load_prepared`):
nothing is read until a batch needs it, and the worker processes of a study on one machine share
one copy in the page cache.

Unreadable images (corrupt, truncated, not images) are counted and listed in the file and in the
summary, never silently dropped and never fatal.

The cache: without ``--out`` the file goes to the cache folder :func:`cache_dir`
(``$XNETSPACE_CACHE``, else ``$XDG_CACHE_HOME/xnetspace``, else ``~/.cache/xnetspace``) under a
name made of S and a SHA-256 key of the folder's file list (relative paths, sizes and modification
times), S and S': a study finds it there, and any change to the folder (an image added, removed,
rewritten or touched) or another S prepares anew. Old entries are never deleted automatically;
delete the folder to reclaim the space. Processes that start at once (a study's workers) prepare
it once: the first takes a file lock (``filelock``), the others wait and read its file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..paths import PathError, output_file, output_folder, write_atomically
from .errors import DataError

__all__ = [
    "FORMAT",
    "VERSION",
    "CACHE_ENV",
    "SPLITS",
    "stored_side",
    "cache_dir",
    "Listing",
    "list_image_folder",
    "folder_key",
    "decode_image",
    "PreparedFolder",
    "prepare_image_folder",
    "load_prepared",
    "cached_file",
    "load_or_prepare",
    "Preparation",
    "prepare_dataset",
    "report_lines",
]

FORMAT = "xnetspace-imagefolder"
VERSION = 1
CACHE_ENV = "XNETSPACE_CACHE"
SPLITS = ("train", "val", "test")  # the values 0, 1, 2 of the prepared file's split array
VAL_FRACTION = TEST_FRACTION = 0.2  # of every class, in a folder without train/val sub-folders
_CHUNK = 4096  # images decoded per round of the thread pool (bounds the queued work)


def stored_side(image_size: int) -> int:
    """S' = ceil(1.25 S): the side images are stored at, so a random-resized crop of the area
    fractions the proxy draws (down to 0.35 of S'^2, a side of 0.59 S') is resampled from about
    as many pixels as it gives (0.74 S for the smallest)."""
    return math.ceil(1.25 * image_size)


def cache_dir() -> Path:
    """The cache folder: ``$XNETSPACE_CACHE``, else ``$XDG_CACHE_HOME/xnetspace``, else
    ``~/.cache/xnetspace`` (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "xnetspace"


@dataclass
class Listing:
    """The images of a folder and their split, before decoding: ``paths`` relative to ``root``
    (POSIX separators), ``labels`` (N,) int64, ``split`` (N,) int8 (:data:`SPLITS`), ``stats``
    (size in bytes, modification time in ns) per path."""

    root: Path
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    split: np.ndarray
    stats: list[tuple[int, int]]


def list_image_folder(root: str | Path) -> Listing:
    """List and split the images of ``root`` (module docstring, step 1), decoding nothing.

    Class folders and image extensions are torchvision's ``ImageFolder``'s, and symlinks are
    followed as it follows them, but each real folder and each real image is listed once
    (:func:`_walk_images`): a symlink loop would list the same images again and again, in every
    split.

    Raises:
        DataError: no class folders or images; train/val/test folders with different classes; a
            class with fewer than 3 images for the stratified split; a folder or an image reached
            twice (a symlink loop, two links to one place); a file that cannot be read.
    """
    from torchvision.datasets.folder import find_classes

    root = Path(root)
    parts = [p for p in SPLITS if (root / p).is_dir()]
    given = "train" in parts and "val" in parts
    folders = [(SPLITS.index(p), root / p) for p in parts] if given else [(-1, root)]
    classes: list[str] | None = None
    paths, labels, split, stats = [], [], [], []
    seen: dict[tuple[int, int], str] = {}  # (device, inode) of each folder and image listed -> its path
    try:
        _claim(root, root, seen)  # a link back to the root is a loop too
        for part, folder in folders:
            if folder != root:
                _claim(folder, root, seen)
            found, _ = find_classes(folder)
            if classes is not None and found != classes:
                raise DataError(
                    f"imagefolder:{root}: {folder.name} has other class folders than train "
                    f"({len(found)} and {len(classes)})"
                )
            classes = found
            for label, name in enumerate(found):
                for path, st in _walk_images(folder / name, root, seen):
                    paths.append(path)
                    labels.append(label)
                    split.append(part)
                    stats.append((st.st_size, st.st_mtime_ns))
    except DataError:
        raise
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(f"imagefolder:{root}: {err}") from err
    labels_arr = np.asarray(labels, dtype=np.int64)
    split_arr = np.asarray(split, dtype=np.int8)
    assert classes is not None  # folders holds at least root
    if not given:
        split_arr = _stratified_split(root, classes, labels_arr)
    return Listing(root, classes, paths, labels_arr, split_arr, stats)


def _walk_images(top: Path, root: Path, seen: dict[tuple[int, int], str]) -> list[tuple[str, os.stat_result]]:
    """The images under the class folder ``top`` as ``torchvision``'s ``make_dataset`` lists them
    (folders in path order, files by name, its extensions, symlinks followed), as (path relative
    to ``root``, stat) pairs; every folder and image is claimed in ``seen`` (:func:`_claim`)
    before it is entered or listed, so a loop stops at its first repeat.

    Raises:
        DataError: no image under ``top``; a folder or an image reached twice.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    _claim(top, root, seen)
    found = []
    for folder, subfolders, names in os.walk(top, followlinks=True):
        for sub in sorted(subfolders):
            _claim(Path(folder, sub), root, seen)  # before os.walk enters it
        found.append((folder, sorted(n for n in names if has_file_allowed_extension(n, IMG_EXTENSIONS))))
    images = [Path(folder, name) for folder, names in sorted(found) for name in names]
    if not images:
        raise DataError(
            f"imagefolder:{root}: the class folder {top.relative_to(root).as_posix()} holds no image "
            f"(extensions: {', '.join(IMG_EXTENSIONS)})"
        )
    return [(path.relative_to(root).as_posix(), _claim(path, root, seen)) for path in images]


def _claim(path: Path, root: Path, seen: dict[tuple[int, int], str]) -> os.stat_result:
    """Record the real folder or file ``path`` leads to in ``seen``; its stat.

    Raises:
        DataError: it was reached before, through another path (the message names both).
    """
    st = os.stat(path)
    shown = path.relative_to(root).as_posix()
    first = seen.setdefault((st.st_dev, st.st_ino), shown)
    if first == shown:
        return st
    if not stat.S_ISDIR(st.st_mode):
        why = f"{shown} and {first} are the same image (a link); an image is listed once, in one class and split"
    elif first == "." or shown.startswith(f"{first}/"):
        why = f"a symlink loop: {shown} leads back to {'the folder itself' if first == '.' else first}"
    else:
        why = f"{shown} is the folder {first} again (two links to one folder); each image is listed once"
    raise DataError(f"imagefolder:{root}: {why}; remove the link")


def _stratified_split(root: Path, classes: list[str], labels: np.ndarray) -> np.ndarray:
    """A fixed split of every class: round(20%) (at least 1) val, as many test, the rest train,
    drawn by a seeded permutation of the class's images in listing order."""
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < 3:
        short = ", ".join(f"{c!r} has {m}" for c, m in zip(classes, counts) if m < 3)
        raise DataError(
            f"imagefolder:{root}: {int(counts.sum())} image(s) in {len(classes)} class folder(s) are too "
            f"few for the fixed stratified 60/20/20 train/val/test split, which needs at least 3 images "
            f"in every class ({short[:200]}); add images, or give {root}/train and {root}/val folders"
        )
    rng = np.random.default_rng(0)
    split = np.zeros(len(labels), dtype=np.int8)
    for c, n in enumerate(counts):
        members = np.flatnonzero(labels == c)[rng.permutation(n)]
        n_val, n_test = max(1, round(VAL_FRACTION * n)), max(1, round(TEST_FRACTION * n))
        split[members[:n_val]] = 1
        split[members[n_val : n_val + n_test]] = 2
    return split


def folder_key(listing: Listing, image_size: int, stored: int) -> str:
    """SHA-256 (hex) of the format, S, S' and the folder's (path, size, mtime) list."""
    blob = json.dumps([FORMAT, VERSION, image_size, stored, listing.paths, listing.stats], separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def decode_image(path: str | Path, side: int) -> np.ndarray:
    """One image as (side, side, 3) uint8 RGB: shorter side resized to ``side`` (bicubic), centre
    square kept. Raises whatever Pillow raises for a file it cannot read."""
    with Image.open(path) as image:
        image.draft("RGB", (side, side))  # JPEG: decode at the smallest DCT scale still >= side
        fitted = ImageOps.fit(image.convert("RGB"), (side, side), method=Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8)


@dataclass
class PreparedFolder:
    """The contents of a prepared file (module docstring, step 3)."""

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    paths: list[str]
    classes: list[str]
    image_size: int
    stored_size: int
    root: str
    key: str
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)

    def counts(self) -> dict[str, int]:
        """Images per split name."""
        return {name: int((self.split == i).sum()) for i, name in enumerate(SPLITS)}

    def summary(self) -> str:
        """One line: images per split, classes, sizes, and the unreadable images (up to 5 named)."""
        counts = self.counts()
        parts = " / ".join(f"{counts[s]:,} {s}" for s in SPLITS if counts[s] or s != "test")
        line = (
            f"imagefolder:{self.root}: {len(self.labels):,} images ({parts}), {len(self.classes)} classes, "
            f"stored at {self.stored_size}x{self.stored_size} for {self.image_size}x{self.image_size}"
        )
        if self.unreadable:
            named = "; ".join(f"{p} ({e})" for p, e in self.unreadable[:5])
            more = f"; and {len(self.unreadable) - 5:,} more" if len(self.unreadable) > 5 else ""
            line += f"; {len(self.unreadable):,} unreadable image(s) left out: {named}{more}"
        return line

    def save(self, path: str | Path) -> None:
        """Write the ``.npz`` file by the path rule (:mod:`xnetspace.paths`): a regular file (a
        symlink's target), written atomically (a temporary file beside it, synced, renamed).

        Raises:
            xnetspace.paths.PathError (an OSError): not a regular file (a FIFO, a folder, ...), a
                read-only file, a folder that cannot be written, a full disk.
        """
        target = output_file(path, "the prepared file", "write the prepared file")
        arrays: dict[str, Any] = dict(
            format=np.array(FORMAT),
            version=np.array(VERSION),
            images=self.images,
            labels=self.labels,
            split=self.split,
            paths=np.array(self.paths, dtype=str),
            classes=np.array(self.classes, dtype=str),
            image_size=np.array(self.image_size),
            stored_size=np.array(self.stored_size),
            mean=np.array(self.mean, dtype=np.float32),
            std=np.array(self.std, dtype=np.float32),
            root=np.array(self.root),
            key=np.array(self.key),
            unreadable_paths=np.array([p for p, _ in self.unreadable], dtype=str),
            unreadable_errors=np.array([e for _, e in self.unreadable], dtype=str),
        )

        def write(partial: Path) -> None:
            with open(partial, "wb") as f:  # a file object: np.savez would add .npz to a name
                np.savez(f, **arrays)

        write_atomically(target, write, "write the prepared file", path)


def load_prepared(path: str | Path) -> PreparedFolder:
    """Read a prepared file (``allow_pickle=False``: no code can run) and check its arrays; the
    images are a copy-on-write ``np.memmap`` of the file when stored uncompressed (as
    :meth:`PreparedFolder.save` stores them).

    Raises:
        DataError: not a readable file of this format and version, or arrays that disagree.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != FORMAT:
                raise DataError(f"{path}: not an image folder prepared by `xnetspace prepare`")
            if int(z["version"]) != VERSION:
                raise DataError(
                    f"{path}: prepared file version {int(z['version'])}, this xnetspace reads "
                    f"{VERSION}; prepare the folder again"
                )
            images = _mapped(path, "images.npy")
            prepared = PreparedFolder(
                images=z["images"] if images is None else images,
                labels=z["labels"].astype(np.int64),
                split=z["split"].astype(np.int8),
                paths=z["paths"].tolist(),
                classes=z["classes"].tolist(),
                image_size=int(z["image_size"]),
                stored_size=int(z["stored_size"]),
                root=str(z["root"]),
                key=str(z["key"]),
                unreadable=list(zip(z["unreadable_paths"].tolist(), z["unreadable_errors"].tolist())),
                mean=tuple(float(v) for v in z["mean"]),
                std=tuple(float(v) for v in z["std"]),
            )
    except DataError:
        raise
    except ValueError as err:  # numpy's words would advise allow_pickle=True: never for a data file
        raise DataError(
            f"{path}: not an image folder prepared by `xnetspace prepare` (not a .npz file of plain arrays)"
        ) from err
    except (OSError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable prepared image folder ({type(err).__name__}: {err})") from err
    _check(prepared, path)
    return prepared


def _mapped(path: Path, member: str) -> np.ndarray | None:
    """An uncompressed ``.npy`` member of an ``.npz`` (``np.savez`` stores them so) mapped from the
    file copy-on-write: nothing is read until used, and the processes of a study on one machine
    share its pages. None when the member is compressed or its layout is not the expected one."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            return None
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if dtype.hasobject or offset - start + math.prod(shape) * dtype.itemsize != info.file_size:
        return None
    if math.prod(shape) == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape, order="F" if fortran else "C")


def _check(p: PreparedFolder, path: Path) -> None:
    n, s = len(p.labels), p.stored_size
    problems = []
    if p.images.dtype != np.uint8 or p.images.shape != (n, s, s, 3):
        problems.append(f"images {p.images.shape} {p.images.dtype}, expected ({n}, {s}, {s}, 3) uint8")
    if p.split.shape != (n,) or len(p.paths) != n or (n and not np.isin(p.split, (0, 1, 2)).all()):
        problems.append("split or paths do not match the images")
    if n and (p.labels.min() < 0 or p.labels.max() >= len(p.classes)):
        problems.append(f"labels outside the {len(p.classes)} classes")
    if len(p.mean) != 3 or len(p.std) != 3 or min(p.std) <= 0:
        problems.append("mean/std are not 3 channels with std > 0")
    if problems:
        raise DataError(f"{path}: a damaged prepared file: {'; '.join(problems)}")


def prepare_image_folder(
    listing: Listing, image_size: int, workers: int | None = None, progress: bool | None = None
) -> PreparedFolder:
    """Decode and resize every listed image once (module docstring, step 2).

    Args:
        workers: decoding threads (None: the usable cores, at most 16).
        progress: show a tqdm bar on stderr (None: when stderr is a terminal).

    Unreadable images are left out and listed in the result's ``unreadable``; nothing is fatal.
    """
    side = stored_side(image_size)
    order = np.argsort(listing.split, kind="stable")  # stored train, val, test: each split one slice
    _check_memory(listing, len(order), side)
    workers = workers or min(
        16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    images, keep, unreadable = _decode_all(listing, order, side, workers, progress)
    kept_order = order[keep]
    return PreparedFolder(
        images=images[: len(kept_order)],
        labels=listing.labels[kept_order],
        split=listing.split[kept_order],
        paths=[listing.paths[i] for i in kept_order],
        classes=list(listing.classes),
        image_size=image_size,
        stored_size=side,
        root=str(listing.root.resolve()),
        key=folder_key(listing, image_size, side),
        unreadable=unreadable,
    )


def _check_memory(listing: Listing, n: int, side: int) -> None:
    """Refuse, before decoding anything, ``n`` images at ``side`` that the memory cannot hold."""
    from ..memory_limit import available_memory, human_bytes

    need, free = n * side * side * 3, available_memory()
    if free is not None and need > free:
        raise DataError(
            f"imagefolder:{listing.root}: {n:,} images at {side}x{side} need {human_bytes(need)} of memory, "
            f"{human_bytes(free)} is available; use a smaller --image-size or fewer images"
        )


def _decode_all(
    listing: Listing, order: np.ndarray, side: int, workers: int, progress: bool | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode the images in ``order`` with ``workers`` threads, chunk by chunk. Returns the images
    (the readable ones first, compacted in place: no second copy), which positions of ``order``
    were readable, and the unreadable ones' paths and errors."""
    from tqdm import tqdm

    n = len(order)
    images = np.empty((n, side, side, 3), dtype=np.uint8)
    keep = np.zeros(n, dtype=bool)
    unreadable: list[tuple[str, str]] = []
    root = listing.root

    def decode(i: int):
        try:
            return decode_image(root / listing.paths[i], side), None
        except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for damaged files; each is listed
            return None, f"{type(err).__name__}: {err}"

    kept = 0
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(
            total=n,
            desc=f"preparing {root} at {side}px",
            unit="img",
            file=sys.stderr,
            disable=None if progress is None else not progress,
        ) as bar,
    ):
        for start in range(0, n, _CHUNK):
            chunk = order[start : start + _CHUNK]
            for k, (pixels, error) in zip(range(start, start + len(chunk)), pool.map(decode, chunk)):
                if error is None:
                    images[kept] = pixels  # compacted in place: no second copy of the images
                    keep[k] = True
                    kept += 1
                else:
                    unreadable.append((listing.paths[order[k]], error[:300]))
                bar.update(1)
    return images, keep, unreadable


def cached_file(listing: Listing, image_size: int) -> Path:
    """Where the cache keeps ``listing`` prepared at ``image_size``."""
    key = folder_key(listing, image_size, stored_side(image_size))
    return cache_dir() / f"imagefolder-{image_size}px-{key[:32]}.npz"


def load_or_prepare(
    root: str | Path,
    image_size: int,
    log: Callable[[str], None] | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    strict: bool = False,
) -> tuple[PreparedFolder, Path | None, bool]:
    """The prepared ``root`` at ``image_size`` from the cache, prepared and cached first on a miss.

    Returns ``(prepared, cache file, hit)``; the file is None when the cache folder cannot be
    written (then the folder is prepared in memory and ``log`` says so; with ``strict``, an error).
    The cache folder and file are checked by the path rule (:mod:`xnetspace.paths`): never a FIFO,
    a device or a read-only file. ``log`` (default: stderr) gets one line after a preparation. A
    cache file that cannot be read is prepared again.

    Raises:
        DataError: from :func:`list_image_folder`.
        xnetspace.paths.PathError: with ``strict``, a cache folder that cannot be written (checked
            before decoding).
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    listing = list_image_folder(root)
    path: Path | None  # None: the cache cannot be written
    path = cached_file(listing, image_size)
    hit = _read_cache(path)
    if hit is not None:
        return hit, path, True
    try:
        from filelock import FileLock

        output_folder(path.parent, "the cache folder")
        output_file(path, "the cache file", "write the cache file")
        lock = FileLock(f"{path}.lock")
        lock.acquire()
    except OSError as err:
        log(_no_cache(path.parent, err, root, strict))
        lock, path = None, None
    try:
        if path is not None:
            hit = _read_cache(path)  # another process may have prepared it while this one waited
            if hit is not None:
                return hit, path, True
        start = time.perf_counter()
        prepared = prepare_image_folder(listing, image_size, workers, progress)
        seconds = time.perf_counter() - start
        if path is not None:
            try:
                prepared.save(path)
            except OSError as err:
                log(_no_cache(path.parent, err, root, strict))
                path = None
    finally:
        if lock is not None:
            lock.release()
    log(f"prepared in {seconds:.1f} s: {prepared.summary()}" + (f"; cached in {path}" if path else ""))
    return prepared, path, False


def _no_cache(folder: Path, err: OSError, root, strict: bool) -> str:
    """The note that ``root`` is prepared in memory only; with ``strict``, the error instead."""
    why = str(err) if isinstance(err, PathError) else f"cannot write the cache folder {folder}: {err.strerror or err}"
    if strict:
        raise PathError(f"{why}; set {CACHE_ENV} to a writable folder, or give --out FILE") from None
    return (
        f"note: {why}; imagefolder:{root} is prepared in memory only (set {CACHE_ENV} to a writable folder to keep it)"
    )


def _read_cache(path: Path) -> PreparedFolder | None:
    if not path.is_file():
        return None
    try:
        return load_prepared(path)
    except DataError:
        return None  # a damaged or older cache entry: prepared again and replaced


@dataclass
class Preparation:
    """What ``xnetspace prepare`` did (:func:`prepare_dataset`): the prepared folder, the file it is
    in (None: the cache folder could not be written), whether it was already in the cache, the
    seconds it took and whether the file is the cache's (no ``out`` given)."""

    prepared: PreparedFolder
    path: Path | None
    hit: bool
    seconds: float
    cached: bool

    def to_dict(self) -> dict:
        """The JSON object of ``xnetspace prepare --json``."""
        p = self.prepared
        return {
            "file": str(self.path) if self.path else None,
            "cache_hit": self.hit,
            "seconds": self.seconds,
            "images": len(p.labels),
            **p.counts(),
            "classes": len(p.classes),
            "image_size": p.image_size,
            "stored_size": p.stored_size,
            "unreadable": [{"path": f, "error": e} for f, e in p.unreadable],
        }


def prepare_dataset(
    dataset: str, image_size: int, out: str | Path | None = None, workers: int | None = None, progress: bool = True
) -> Preparation:
    """``xnetspace prepare``: prepare ``imagefolder:PATH`` at ``image_size`` into the cache (where a
    study on it finds it; :func:`load_or_prepare`) or, with ``out``, into that file.

    ``out`` is checked before anything is decoded (:func:`_out_target`): a new regular file outside
    PATH (never an existing file, which is refused as search, fidelity and refine refuse a
    file for their ``--out``); without ``out``, a cache folder that cannot be written is an error.

    Raises:
        ValueError: not ``imagefolder:PATH``, no such folder, an image size outside 8..1024, a
            thread count outside 1..256, an ``out`` that is a folder or in a folder that does not exist.
        DataError: from :func:`list_image_folder`.
        xnetspace.paths.PathError (an OSError): ``out`` or the cache cannot or must not be written.
    """
    kind, _, arg = dataset.partition(":")
    if kind != "imagefolder" or not arg:
        raise ValueError(
            f"prepare takes imagefolder:PATH, got {dataset[:200]!r} (digits, synthetic and CIFAR "
            f"files are read into memory directly)"
        )
    if not Path(arg).is_dir():
        raise ValueError(f"imagefolder:{arg[:200]}: no such folder")
    if not 8 <= image_size <= 1024:
        raise ValueError(f"--image-size {image_size} must be 8 to 1024 pixels (the proxy training size)")
    if workers is not None and not 1 <= workers <= 256:
        raise ValueError(f"--workers {workers} must be 1 to 256")
    if out is not None:
        _out_target(str(out), arg)  # before anything is decoded
    start = time.perf_counter()
    if out is None:
        prepared, path, hit = load_or_prepare(
            Path(arg),
            image_size,
            log=lambda line: None,
            workers=workers,
            progress=True if progress else None,
            strict=True,
        )
    else:
        prepared = prepare_image_folder(list_image_folder(Path(arg)), image_size, workers, True if progress else None)
        prepared.save(out)
        path, hit = Path(out), False
    return Preparation(prepared, path, hit, time.perf_counter() - start, cached=out is None)


def _out_target(out: str, folder: str) -> Path:
    """``prepare --out FILE`` checked by the path rule (:func:`xnetspace.paths.output_file`): a new
    regular file (a dangling symlink's target), in an existing folder, outside the image folder.

    Raises:
        ValueError: a folder, a missing folder.
        xnetspace.paths.PathError: what the path rule refuses, and an existing file.
    """
    if out.strip() and not out.endswith("/") and Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {Path(out) / 'prepared.npz'}")
    if out.strip() and not Path(out).parent.is_dir():
        raise ValueError(f"--out {out}: the folder {Path(out).parent} does not exist")
    return output_file(out, "--out", "write the prepared file", inputs=[folder], replace=False)


def report_lines(run: Preparation) -> list[str]:
    """:func:`prepare_dataset`'s run in words: the folder's summary, the unreadable images the
    summary does not name, and where the file is (or that it could not be written)."""
    lines = [run.prepared.summary()]
    lines += [f"  unreadable: {p} ({e})" for p, e in run.prepared.unreadable[5:]]  # the summary names the first five
    if run.path is None:
        lines.append(f"not written: the cache folder cannot be written (set XNETSPACE_CACHE); {run.seconds:.1f} s")
    else:
        where = f"in the cache: {run.path}" if run.cached else str(run.path)
        lines.append(f"{'already prepared' if run.hit else f'prepared in {run.seconds:.1f} s'}, {where}")
    return lines
