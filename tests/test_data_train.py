"""Datasets (digits, synthetic, image folders, CIFAR files written here) and the proxy trainer."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from xnetspace.model import build_model
from xnetspace.search.data import DataError, load_dataset
from xnetspace.search.train import Diverged, TensorBatches, TimeLimitExceeded, TrainConfig, evaluate, train_candidate

from .conftest import tiny_spec


def test_digits_is_the_real_set_with_a_fixed_split():
    data = load_dataset("digits", 16)
    assert (len(data.train), len(data.val), len(data.test), data.num_classes, data.in_chans) == (898, 360, 539, 10, 1)
    few = load_dataset("digits:300", 16)
    assert len(few.train) == 300 and torch.bincount(few.train.tensors[1]).min() >= 28  # stratified: every digit
    assert torch.equal(few.test.tensors[1], data.test.tensors[1]) and torch.equal(
        few.val.tensors[1], data.val.tensors[1]
    )
    assert len(load_dataset("digits:50", 16).train) == 50
    for bad in ("digits:9", "digits:899", "digits:many"):
        with pytest.raises(DataError, match="digits:N"):
            load_dataset(bad, 16)
    x, _ = data.train[0]
    assert x.shape == (1, 16, 16)
    again = load_dataset("digits", 16)
    assert torch.equal(again.val.tensors[1], data.val.tensors[1])
    assert torch.equal(again.test.tensors[0], data.test.tensors[0])
    assert torch.bincount(data.val.tensors[1]).min() >= 35  # stratified: every digit validates
    assert torch.bincount(data.test.tensors[1]).min() >= 50  # ... and is tested
    held = data.held_out()
    assert held.val is data.test and held.train is data.train  # confirmation scores on the test split
    images = torch.cat([data.train.tensors[0], data.val.tensors[0], data.test.tensors[0]]).flatten(1)
    assert len(torch.unique(images, dim=0)) == len(
        torch.unique(torch.cat([data.train.tensors[0].flatten(1), data.val.tensors[0].flatten(1)]), dim=0)
    ) + len(torch.unique(data.test.tensors[0].flatten(1), dim=0))  # no image in two splits


def test_synthetic_data_size_and_channels():
    data = load_dataset("synthetic:100", 24)
    assert len(data.train) + len(data.val) == 100 and data.in_chans == 3 and data.num_classes == 8
    assert data.train[0][0].shape == (3, 24, 24)


def _write_cifar(root, n_per_batch=12, classes=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 255, (n_per_batch, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, classes, n_per_batch)),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(classes)]}, f)


def test_cifar_files_load_from_a_local_folder(tmp_path):
    _write_cifar(tmp_path)
    data = load_dataset(f"cifar10:{tmp_path}", 16)
    assert len(data.train) + len(data.val) == 60 and len(data.val) == 6
    assert data.num_classes == 10 and data.in_chans == 3 and data.train[0][0].shape == (3, 16, 16)


def _write_image_folder(root, classes=3, per_class=6):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((20 + i, 24, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


def test_image_folder_split_and_train_val_layout(tmp_path):
    _write_image_folder(tmp_path / "flat")
    data = load_dataset(f"imagefolder:{tmp_path / 'flat'}", 32)
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (12, 3, 3, 3)  # 60/20/20 per class
    assert data.train[0][0].shape == (3, 32, 32) and data.val[0][0].shape == (3, 32, 32)
    assert data.held_out().val is data.test
    _write_image_folder(tmp_path / "split" / "train")
    _write_image_folder(tmp_path / "split" / "val", per_class=2)
    data = load_dataset(f"imagefolder:{tmp_path / 'split'}", 32)
    assert (len(data.train), len(data.val), data.test) == (18, 6, None)


@pytest.mark.parametrize(
    "name,message",
    [
        ("mnist", "unknown dataset 'mnist'"),
        ("cifar10:/no/such", "needs an existing folder"),
        ("synthetic:many", "synthetic:N needs a count"),
    ],
)
def test_bad_dataset_names(name, message):
    with pytest.raises(DataError, match=message):
        load_dataset(name, 32)


def test_bad_cifar_folder(tmp_path):
    with pytest.raises(DataError, match=r"not torchvision's CIFAR python files; missing \['data_batch_1'"):
        load_dataset(f"cifar10:{tmp_path}", 32)


def test_cifar_files_never_run_code(tmp_path):
    _write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": Image.new("L", (1, 1))}, f)
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR batch: refusing to load PIL"):
        load_dataset(f"cifar10:{tmp_path}", 32)


def test_cifar100_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    with open(folder / "train", "wb") as f:
        pickle.dump({"data": np.zeros((20, 3072), np.uint8), "fine_labels": list(range(20))}, f)
    data = load_dataset(f"cifar100:{tmp_path}", 8)
    assert data.num_classes == 100 and len(data.train) == 18


@pytest.mark.slow
def test_training_learns_and_is_reproducible():
    data = load_dataset("synthetic:256", 16)
    config = TrainConfig(image_size=16, epochs=2, batch_size=32)
    seen = []
    first = train_candidate(tiny_spec(), data, config, report=lambda e, a: seen.append((e, a)))
    again = train_candidate(tiny_spec(), data, config)
    assert len(first.history) == 2 and [e for e, _ in seen] == [0, 1]
    assert first.history == again.history  # fixed seeds, fixed data order
    assert first.loss_history == again.loss_history and len(first.loss_history) == 2
    assert first.top1 > 100 / 8  # above chance
    assert 0 < first.loss < math.log(8)  # below the cross-entropy of a uniform guess over 8 classes


def test_evaluate_gives_top1_and_plain_cross_entropy():
    data = load_dataset("synthetic:64", 16)
    model = build_model(tiny_spec(), num_classes=data.num_classes, in_chans=data.in_chans)
    x, y = data.val.tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    top1, loss = evaluate(model, TensorBatches(data.val, 5, torch.device("cpu")), torch.device("cpu"))  # uneven batches
    assert top1 == pytest.approx(100.0 * float((logits.argmax(-1) == y).float().mean()))
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)  # no label smoothing


def test_nan_loss_raises_diverged():
    data = load_dataset("synthetic:64", 16)
    data.train.tensors[0][:] = float("nan")
    with pytest.raises(Diverged, match="loss became nan"):
        train_candidate(tiny_spec(), data, TrainConfig(image_size=16, epochs=1, batch_size=16))


def test_time_limit_is_enforced():
    data = load_dataset("synthetic:64", 16)
    with pytest.raises(TimeLimitExceeded, match="time limit"):
        train_candidate(tiny_spec(), data, TrainConfig(image_size=16, epochs=3, batch_size=16, time_limit=1e-6))
