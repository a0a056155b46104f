"""Fashion-MNIST offline (issue 29, item 1): IDX files read gzipped or not, from the Debian
package's folder or any folder, the fixed stratified splits, and every broken file refused in one
paragraph naming it. The tests write small IDX files of their own: no package needed."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from xnetspace.cli import app
from xnetspace.search import fashion_mnist
from xnetspace.search.data import DataError, load_dataset
from xnetspace.search.fashion_mnist import FILES, read_idx, split_indices

N_TRAIN, N_TEST = 200, 50  # a fifth of the training images validate: 40


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an IDX file: 00 00 08 ndim, big-endian uint32 sizes, the bytes."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion(folder, gz: bool = True, n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict[str, np.ndarray]:
    """Four small IDX files (classes in turn, each image filled with its index's low byte)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        arrays[f"{part}_images"] = (np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)).copy()
        arrays[f"{part}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    for key, array in arrays.items():
        data = idx_bytes(array)
        name = FILES[key] + (".gz" if gz else "")
        (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_idx_files_read_back_gzipped_or_not(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    for key, array in arrays.items():
        path = tmp_path / (FILES[key] + (".gz" if gz else ""))
        np.testing.assert_array_equal(read_idx(path, array.ndim), array)


def test_fashion_mnist_from_a_folder_gives_the_fixed_stratified_splits(tmp_path):
    arrays = write_fashion(tmp_path / "fm")
    data = load_dataset(f"fashion-mnist:{tmp_path / 'fm'}", 32)
    assert (data.num_classes, data.in_chans) == (10, 1)
    assert (len(data.train), len(data.val), len(data.test)) == (160, 40, N_TEST)
    assert np.bincount(data.val.labels.numpy()).tolist() == [4] * 10  # stratified
    assert data.train.images.dtype.is_floating_point is False and data.train.images.shape[1:] == (28, 28, 1)
    image, _ = data.train[0]
    assert image.shape == (1, 32, 32)
    # train and val are disjoint and together the official training images; test is the official test file
    seen = sorted(int(v) for v in np.concatenate([data.train.images[:, 0, 0, 0], data.val.images[:, 0, 0, 0]]))
    assert seen == sorted(arrays["train_images"][:, 0, 0].tolist())
    assert sorted(data.test.images[:, 0, 0, 0].tolist()) == sorted(arrays["test_images"][:, 0, 0].tolist())


def test_n_training_images_are_a_stratified_subset_and_val_does_not_move(tmp_path):
    write_fashion(tmp_path)
    full = load_dataset(f"fashion-mnist:{tmp_path}", 28)
    part = load_dataset(f"fashion-mnist:{tmp_path}:50", 28)
    assert len(part.train) == 50 and np.bincount(part.train.labels.numpy()).tolist() == [5] * 10
    assert part.name == f"fashion-mnist:{tmp_path}:50"
    assert (part.val.images == full.val.images).all()  # the same validation images for every N
    train, val = split_indices(np.arange(60_000) % 10, None)
    assert (len(train), len(val)) == (55_000, 5_000) and not set(train) & set(val)


def test_the_default_folder_is_debians_and_its_absence_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FOLDER", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist:100", 28)
    assert all(name in str(err.value) for name in FILES.values())
    write_fashion(tmp_path / "absent")
    assert len(load_dataset("fashion-mnist:100", 28).train) == 100


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _bad_header(path):
    path.write_bytes(b"\x00\x00\x0d\x03" + path.read_bytes()[4:])


def _bad_gzip(path):
    path.write_bytes(gzip.compress(path.read_bytes())[:40])


@pytest.mark.parametrize(
    "breaks, says",
    [(_truncate, "truncated or corrupt"), (_bad_header, "not an IDX file"), (_bad_gzip, "cannot be read")],
    ids=["truncated", "header", "gzip"],
)
def test_a_corrupt_or_truncated_idx_file_is_refused_naming_it(tmp_path, breaks, says):
    write_fashion(tmp_path, gz=False)
    broken = tmp_path / FILES["train_images"]
    breaks(broken)
    if breaks is _bad_gzip:
        broken.rename(broken.with_name(broken.name + ".gz"))
        broken = broken.with_name(broken.name + ".gz")
    with pytest.raises(DataError, match=says) as err:
        load_dataset(f"fashion-mnist:{tmp_path}", 28)
    assert str(broken) in str(err.value)


def test_images_and_labels_of_different_counts_or_labels_past_nine_are_refused(tmp_path):
    write_fashion(tmp_path, gz=False)
    labels = tmp_path / FILES["test_labels"]
    labels.write_bytes(idx_bytes(np.zeros(N_TEST - 1, np.uint8)))
    with pytest.raises(DataError, match="49 labels"):
        load_dataset(f"fashion-mnist:{tmp_path}", 28)
    labels.write_bytes(idx_bytes(np.full(N_TEST, 12, np.uint8)))
    with pytest.raises(DataError, match="label 12"):
        load_dataset(f"fashion-mnist:{tmp_path}", 28)


def test_search_on_a_missing_folder_exits_2_in_one_paragraph(tmp_path):
    result = CliRunner().invoke(
        app, ["search", "--space", "tiny_cpu", "--dataset", f"fashion-mnist:{tmp_path}", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    assert "train-images-idx3-ubyte" in result.output and "Traceback" not in result.output


def test_a_spaces_own_task_runs_by_default_and_digits_where_the_package_is_missing(tmp_path, monkeypatch):
    from xnetspace.search.data import default_dataset

    monkeypatch.setattr(fashion_mnist, "DEBIAN_FOLDER", tmp_path / "debian")
    name, why = default_dataset("fashion-mnist:100")
    assert name == "digits" and "apt-get install dataset-fashion-mnist" in why and "fashion-mnist:100" in why
    write_fashion(tmp_path / "debian")
    assert default_dataset("fashion-mnist:100") == ("fashion-mnist:100", "the space's task (fashion-mnist:100)")
    # a folder the space names is its own: never swapped for digits (a missing one is an error when read)
    assert default_dataset(f"fashion-mnist:{tmp_path / 'x'}")[0] == f"fashion-mnist:{tmp_path / 'x'}"
    assert default_dataset("digits:100") == ("digits:100", "the space's task (digits:100)")


@pytest.mark.slow
def test_search_without_dataset_runs_the_spaces_task_and_says_why(tmp_path, monkeypatch):
    # The package missing (as on CI): digits runs instead, and the report says so and why.
    # (With the package, default_dataset gives the space's task: the test above.)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FOLDER", tmp_path / "debian")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.yaml").write_text(
        "name: small\ndataset: fashion-mnist:100\nstages: [{embed_dim: 16, depth: 1}]\n"
        "constraints: {image_size: 16, flops: [1, 1G]}\ntrain: {image_size: 16, epochs: 1, batch_size: 16}\n"
    )
    search = ["search", "--space", "small.yaml", "--n-trials", "1", "--confirm-top", "0", "--workers-per-device", "1"]
    result = CliRunner().invoke(app, [*search, "--out", "a"])
    assert result.exit_code == 0, result.output
    assert "digits: " in result.output and "dataset-fashion-mnist is not installed" in result.output
    assert "small-digits-loss" in result.output  # the study is named after the task that ran


def test_a_space_naming_an_unknown_dataset_is_refused_at_load(tmp_path):
    from pydantic import ValidationError

    from xnetspace.search.space import SearchSpace

    with pytest.raises(ValidationError, match="unknown dataset 'mnist'"):
        SearchSpace.model_validate({"name": "x", "dataset": "mnist", "stages": [{"embed_dim": 16}]})
