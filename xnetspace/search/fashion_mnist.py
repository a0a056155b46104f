"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, arXiv 1708.07747), read offline from IDX files.

60,000 training and 10,000 test images, 28x28 grayscale, 10 classes of clothing. Debian's package
``dataset-fashion-mnist`` installs the four files (gzipped) in :data:`DEBIAN_FOLDER`; any folder
holding them, gzipped or not, serves as well. Nothing is downloaded.

The fixed splits (:func:`fashion_mnist`): a fixed stratified 5,000 of the official training images
validate (the proxy score), N of the other 55,000 train (a fixed stratified subset; default all),
and the official 10,000 test images are held out for confirmation. Images stay uint8 and are
batched, resized and normalised on the device (:class:`~xnetspace.search.batches.ImageTensors`).

torchvision's MNIST readers (``read_sn3_pascalvincent_tensor``) take uncompressed files only and
fail on a truncated one with a bare reshape error, so :func:`read_idx` reads the format itself
(Y. LeCun's IDX: two zero bytes, a type byte, the number of dimensions, big-endian uint32 sizes,
then the data) and names the file in every error.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = [
    "DEBIAN_FOLDER",
    "FILES",
    "installed",
    "VAL_IMAGES",
    "read_idx",
    "parse_argument",
    "read_fashion_mnist",
    "split_indices",
]

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
FILES = {  # the official file names; each may end in .gz
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
VAL_IMAGES = 5_000  # of the official training images, fixed and stratified: the validation split
NUM_CLASSES = 10
_UBYTE = 0x08  # IDX's type code of unsigned bytes, the only one the dataset uses
_MAX_BYTES = 256 * 2**20  # larger than the 47 MB training images; a decompression bomb stops here


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a uint8 array of ``ndim`` dimensions.

    Raises:
        DataError: naming the file, when it cannot be read, is a broken gzip stream, is not an IDX
            file of unsigned bytes with ``ndim`` dimensions, or holds fewer or more bytes than its
            header says (truncated or padded).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            data = gzip.GzipFile(fileobj=f).read(_MAX_BYTES + 1) if head == b"\x1f\x8b" else f.read(_MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as err:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DataError(f"{path}: cannot be read as an IDX file: {err}") from None
    if len(data) > _MAX_BYTES:
        raise DataError(f"{path}: more than {_MAX_BYTES // 2**20} MiB of data; not a Fashion-MNIST IDX file")
    header = 4 + 4 * ndim
    if len(data) < header or data[:2] != b"\0\0" or data[2] != _UBYTE or data[3] != ndim:
        found = f"header {data[:4].hex(' ')}" if len(data) >= 4 else f"{len(data)} bytes"
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) "
            f"(expected header 00 00 08 {ndim:02x}, found {found})"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: truncated or corrupt: its header gives shape {shape} ({expected:,} bytes of data), "
            f"the file holds {len(data) - header:,}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable, for torch


def parse_argument(arg: str) -> tuple[Path, int | None]:
    """``fashion-mnist[:N]``, ``fashion-mnist:PATH`` or ``fashion-mnist:PATH:N`` -> (folder, N or None).

    Raises:
        DataError: an N that is not a positive count.
    """
    folder, count = DEBIAN_FOLDER, ""
    if arg.isdigit():
        count = arg
    elif arg:
        path, _, tail = arg.rpartition(":")
        folder, count = (Path(path), tail) if path and tail.isdigit() else (Path(arg), "")
    return folder, int(count) if count else None


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def installed(folder: Path | None = None) -> bool:
    """Whether ``folder`` (default: :data:`DEBIAN_FOLDER`) holds the four files (not whether they read)."""
    return all(_find(DEBIAN_FOLDER if folder is None else folder, stem) is not None for stem in FILES.values())


def read_fashion_mnist(folder: Path) -> dict[str, np.ndarray]:
    """The four arrays of :data:`FILES` from ``folder``: images (N, 28, 28) and labels (N,) uint8.

    Raises:
        DataError: missing files (naming the package that installs them and the expected names), a
            file :func:`read_idx` refuses, images and labels of different counts, labels outside 0-9.
    """
    found = {key: _find(folder, stem) for key, stem in FILES.items()}
    missing = [FILES[key] for key, path in found.items() if path is None]
    if missing:
        where = (
            "install Debian's package with `apt-get install dataset-fashion-mnist`"
            if folder == DEBIAN_FOLDER
            else "give the folder that holds them as fashion-mnist:PATH"
        )
        raise DataError(
            f"fashion-mnist: {folder} lacks {', '.join(missing)} (each may end in .gz); {where}, "
            f"or use `--dataset digits`"
        )
    arrays = {}
    for key, path in found.items():
        assert path is not None
        arrays[key] = read_idx(path, 3 if key.endswith("images") else 1)
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if len(images) != len(labels):
            raise DataError(
                f"fashion-mnist: {found[f'{part}_images']} holds {len(images):,} images, "
                f"{found[f'{part}_labels']} {len(labels):,} labels"
            )
        if labels.size and int(labels.max()) >= NUM_CLASSES:
            raise DataError(f"fashion-mnist: {found[f'{part}_labels']} holds label {int(labels.max())}, not 0-9")
    return arrays


def split_indices(labels: np.ndarray, n_train: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified (train, val) indices into the official training images: :data:`VAL_IMAGES`
    validate (the same ones for every N), ``n_train`` of the rest train (None: all of them).

    Raises:
        DataError: too few images for the validation split, or an N outside 10 to the rest.
    """
    from sklearn.model_selection import train_test_split

    val_count = min(VAL_IMAGES, len(labels) // 5)  # a small test file keeps a fifth for validation
    if val_count < NUM_CLASSES:
        raise DataError(f"fashion-mnist: {len(labels):,} training images are too few for a stratified split")
    try:
        rest, val = train_test_split(np.arange(len(labels)), test_size=val_count, stratify=labels, random_state=0)
        count = len(rest) if n_train is None else n_train
        if not NUM_CLASSES <= count <= len(rest):
            raise DataError(f"fashion-mnist:N takes {NUM_CLASSES} to {len(rest):,} training images, got {count:,}")
        if count < len(rest):
            _, rest = train_test_split(rest, test_size=count, stratify=labels[rest], random_state=0)
    except ValueError as err:  # scikit-learn: a class with fewer than 2 images cannot be stratified
        if isinstance(err, DataError):
            raise
        raise DataError(f"fashion-mnist: the training labels cannot be split stratified: {err}") from None
    return np.sort(rest), np.sort(val)
