"""Real data at proxy speed (issue 24): image folders prepared once into uint8 tensors (the file, its
split, the cache), unreadable images listed, batches augmented on the device from each seed's
own generator, and a study on an image folder that decodes every image exactly once."""

from __future__ import annotations

import os
import pickle

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch.utils.data import DataLoader, Dataset, TensorDataset
from typer.testing import CliRunner

from xnetspace.cli import app
from xnetspace.search import RunOptions, StudyConfig, run_search
from xnetspace.search.batches import AUGMENTS, ImageTensors, TensorBatches, batches
from xnetspace.search.confirmation import open_confirm_study
from xnetspace.search.data import DataError, load_dataset
from xnetspace.search.prepare import (
    SPLITS,
    cache_dir,
    decode_image,
    list_image_folder,
    load_or_prepare,
    load_prepared,
    stored_side,
)
from xnetspace.search.records import read_job, read_trial
from xnetspace.search.score import score_of
from xnetspace.search.space import SearchSpace
from xnetspace.search.train import TrainConfig, train_candidate

from .conftest import tiny_spec
from .test_search import SPACE

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 240, 20)]


def write_folder(root, classes=3, per_class=7, fmt="JPEG", seed=0):
    """``classes`` folders of small images, class c a flat colour COLOURS[c] under a little noise,
    of varied sizes and aspect ratios; returns the paths written."""
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 18 + 3 * i, 30 - i
            pixels = np.clip(np.array(COLOURS[c]) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            path = root / f"class{c}" / f"{i}.{'jpg' if fmt == 'JPEG' else 'png'}"
            PIL.Image.fromarray(pixels).save(path, fmt)
            paths.append(path)
    return paths


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("XNETSPACE_CACHE", str(folder))
    return folder


@pytest.fixture
def opened(monkeypatch):
    """Counts every ``PIL.Image.open`` (each decode of an image file starts with one)."""
    calls = []
    real = PIL.Image.open

    def counting(fp, *args, **kwargs):
        calls.append(str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting)
    return calls


# -- the prepared file ---------------------------------------------------------------------------
def test_prepared_file_holds_uint8_images_labels_classes_and_the_split(tmp_path, cache):
    root = tmp_path / "photos"
    written = write_folder(root, classes=3, per_class=7)
    out = tmp_path / "prepared.npz"
    result = CliRunner().invoke(app, ["prepare", f"imagefolder:{root}", "--image-size", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "21 images (15 train / 3 val / 3 test), 3 classes, stored at 20x20 for 16x16" in result.output
    assert not cache.exists()  # --out writes there and nowhere else

    with np.load(out, allow_pickle=False) as z:
        assert str(z["format"]) == "xnetspace-imagefolder" and int(z["version"]) == 1
        images, labels, split, paths = z["images"], z["labels"], z["split"], z["paths"].tolist()
        assert images.dtype == np.uint8 and images.shape == (21, 20, 20, 3) and stored_side(16) == 20
        assert z["classes"].tolist() == ["class0", "class1", "class2"]
        assert (int(z["image_size"]), int(z["stored_size"])) == (16, 20)
        assert len(z["unreadable_paths"]) == 0
    assert sorted(paths) == sorted(p.relative_to(root).as_posix() for p in written)  # every image, once
    assert [labels[i] for i in range(21)] == [int(p.split("/")[0][-1]) for p in paths]
    assert list(split) == sorted(split)  # stored train, then val, then test
    for c in range(3):  # stratified: 7 per class -> 5 / 1 / 1
        assert np.bincount(split[labels == c], minlength=3).tolist() == [5, 1, 1]
    for i in (0, 10, 20):  # the pixels are the decoded, centre-cropped image of that path
        assert np.array_equal(images[i], decode_image(root / paths[i], 20))
        assert np.abs(images[i].reshape(-1, 3).mean(0) - COLOURS[labels[i]]).max() < 12
    prepared = load_prepared(out)
    assert prepared.counts() == {"train": 15, "val": 3, "test": 3}
    assert isinstance(prepared.images, np.memmap) and np.array_equal(prepared.images, images)  # mapped, not read

    again = list_image_folder(root)  # the split is fixed: the same folder splits the same way
    assert dict(zip(again.paths, again.split)) == dict(zip(paths, split))


def test_train_val_test_folders_are_the_split(tmp_path, cache):
    for part, count in (("train", 4), ("val", 2), ("test", 1)):
        write_folder(tmp_path / "data" / part, classes=2, per_class=count, fmt="PNG")
    data = load_dataset(f"imagefolder:{tmp_path / 'data'}", 16)
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (8, 4, 2, 2)
    prepared, path, hit = load_or_prepare(tmp_path / "data", 16)
    assert hit and path.parent == cache
    for name, index in zip(SPLITS, range(3)):
        assert all(p.startswith(f"{name}/") for p, s in zip(prepared.paths, prepared.split) if s == index)
    write_folder(tmp_path / "other" / "train", classes=2, per_class=3)
    write_folder(tmp_path / "other" / "val", classes=3, per_class=3)
    with pytest.raises(DataError, match="val has other class folders than train"):
        load_dataset(f"imagefolder:{tmp_path / 'other'}", 16)


def test_an_image_folder_held_as_uint8_gives_normalised_float_batches(tmp_path, cache):
    write_folder(tmp_path / "photos", classes=2, per_class=6)
    data = load_dataset(f"imagefolder:{tmp_path / 'photos'}", 16)
    assert isinstance(data.train, ImageTensors) and data.train.images.dtype == torch.uint8
    x, y = next(iter(TensorBatches(data.train, 4, torch.device("cpu"))))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 16, 16)
    # the whole stored square resized to 16, then normalised with ImageNet's statistics (timm's)
    raw = data.train.images[:4].permute(0, 3, 1, 2).float() / 255
    expected = F.interpolate(raw, size=(16, 16), mode="bilinear", antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x, (expected - mean[:, None, None]) / std[:, None, None])
    assert torch.equal(data.train[1][0], x[1]) and data.train[1][1] == int(y[1])
    # a prepared file serves another training size: the stored side is resampled per batch
    bigger = load_dataset(f"imagefolder:{tmp_path / 'photos'}", 24)
    assert next(iter(TensorBatches(bigger.train, 2, torch.device("cpu"))))[0].shape == (2, 3, 24, 24)


# -- the cache -----------------------------------------------------------------------------------
def test_cache_is_hit_for_the_same_folder_and_size_and_missed_on_any_change(tmp_path, cache, opened):
    root = tmp_path / "photos"
    written = write_folder(root, classes=3, per_class=4)
    first, path, hit = load_or_prepare(root, 16)
    assert not hit and path.parent == cache and path.is_file() and len(opened) == 12
    again, path2, hit = load_or_prepare(root, 16)
    assert hit and path2 == path and len(opened) == 12  # read from the cache: nothing decoded
    assert np.array_equal(again.images, first.images) and again.paths == first.paths

    _, other_size, hit = load_or_prepare(root, 24)  # another S: prepared anew
    assert not hit and other_size != path and len(opened) == 24
    stat = written[0].stat()
    os.utime(written[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: a new key
    _, touched, hit = load_or_prepare(root, 16)
    assert not hit and touched != path and len(opened) == 36
    write_folder(tmp_path / "more", classes=1, per_class=1)
    os.replace(tmp_path / "more" / "class0" / "0.jpg", root / "class0" / "new.jpg")  # one more image
    added, _, hit = load_or_prepare(root, 16)
    assert not hit and len(added.labels) == 13 and len(opened) == 49

    _, current, hit = load_or_prepare(root, 16)
    assert hit and len(opened) == 49
    current.write_bytes(b"damaged")  # a damaged cache entry is prepared again and replaced
    _, replaced, hit = load_or_prepare(root, 16)
    assert not hit and replaced == current and len(opened) == 62 and load_prepared(replaced).labels.shape == (13,)


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XNETSPACE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("XNETSPACE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "xnetspace"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "xnetspace"


def test_an_unwritable_cache_prepares_in_memory_and_says_so(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XNETSPACE_CACHE", str(tmp_path / "file" / "cache"))
    write_folder(tmp_path / "photos", classes=2, per_class=3)
    lines = []
    prepared, path, hit = load_or_prepare(tmp_path / "photos", 16, log=lines.append)
    assert path is None and not hit and len(prepared.labels) == 6
    assert any(
        "cannot write into the folder" in line
        and "(the cache folder): Not a directory" in line
        and "XNETSPACE_CACHE" in line
        for line in lines
    )


# -- unreadable images ---------------------------------------------------------------------------
def test_unreadable_images_are_counted_and_listed_never_dropped_silently_or_fatal(tmp_path, cache):
    root = tmp_path / "photos"
    good = write_folder(root, classes=2, per_class=5)
    whole = good[0].read_bytes()
    (root / "class0" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "class1" / "text.jpg").write_text("this is not an image")
    (root / "class1" / "empty.png").write_bytes(b"")
    prepared, path, _ = load_or_prepare(root, 16, log=lambda line: None)
    assert len(prepared.labels) == 10
    bad = dict(prepared.unreadable)
    assert set(bad) == {"class0/truncated.jpg", "class1/text.jpg", "class1/empty.png"}
    assert all(reason for reason in bad.values()) and "truncated" in bad["class0/truncated.jpg"].lower()
    assert sorted(load_prepared(path).unreadable) == sorted(prepared.unreadable)  # the file lists them too
    data = load_dataset(f"imagefolder:{root}", 16)
    assert "3 unreadable image(s) left out" in str(data) and str(path) in str(data)

    result = CliRunner().invoke(app, ["prepare", f"imagefolder:{root}", "--image-size", "16"])
    assert result.exit_code == 0 and "3 unreadable image(s) left out" in result.output
    assert "class1/text.jpg" in result.output and "already prepared" in result.output


def test_prepare_refuses_bad_input_in_one_paragraph(tmp_path, cache):
    write_folder(tmp_path / "photos", classes=2, per_class=3)
    (tmp_path / "folder").mkdir()
    cases = [
        (["prepare", "digits", "--image-size", "16"], "prepare takes imagefolder:PATH"),
        (["prepare", f"imagefolder:{tmp_path / 'nowhere'}", "--image-size", "16"], "no such folder"),
        (["prepare", f"imagefolder:{tmp_path / 'photos'}", "--image-size", "4"], "--image-size 4 must be 8 to 1024"),
        (
            ["prepare", f"imagefolder:{tmp_path / 'photos'}", "--image-size", "16", "--out", str(tmp_path / "folder")],
            "is a folder; give a file name",
        ),
        (
            [
                "prepare",
                f"imagefolder:{tmp_path / 'photos'}",
                "--image-size",
                "16",
                "--out",
                str(tmp_path / "no" / "x.npz"),
            ],
            "does not exist",
        ),
        (["prepare", f"imagefolder:{tmp_path / 'folder'}", "--image-size", "16"], "imagefolder:"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    (tmp_path / "fake.npz").write_bytes(pickle.dumps({"images": 1}))
    with pytest.raises(DataError, match="not an image folder prepared by `xnetspace prepare`") as err:
        load_dataset(f"imagefolder:{tmp_path / 'fake.npz'}", 16)
    assert "allow_pickle" not in str(err.value)


# -- augmented batches: one generator per seed ---------------------------------------------------
def _uint8_data(n=24, side=10, size=8, seed=0) -> ImageTensors:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, side, side, 3), generator=gen, dtype=torch.uint8)
    return ImageTensors(images, torch.arange(n) % 4, size, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])


def _float_data(n=24, side=8) -> TensorDataset:
    return TensorDataset(torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1)), torch.arange(n))


def _epochs(it, count=2):
    return [(x.clone(), y.clone()) for _ in range(count) for x, y in it]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


@pytest.mark.parametrize("augment", ["flip", "crop-flip", "rrc-flip"])
@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_augmented_batches_depend_on_the_seed_alone(augment, kind):
    data = _uint8_data() if kind == "uint8" else _float_data()
    cpu = torch.device("cpu")

    def run(seed):
        return TensorBatches(data, 5, cpu, shuffle=True, drop_last=True, augment=augment, seed=seed)

    state = torch.get_rng_state()
    alone = _epochs(run(3))
    assert _same(alone, _epochs(run(3)))  # the same seed, the same batches
    assert not _same(alone, _epochs(run(4)))  # another seed, other batches
    a, b = run(3), run(5)  # side by side, as packed seeds are zipped: neither disturbs the other
    packed = [(xa.clone(), ya.clone()) for _ in range(2) for (xa, ya), _ in zip(a, b)]
    assert _same(alone, packed)
    torch.manual_seed(123)  # the global generator plays no part
    assert _same(alone, _epochs(run(3)))
    torch.set_rng_state(state)
    plain = _epochs(TensorBatches(data, 5, cpu, shuffle=True, drop_last=True, seed=3))
    assert [torch.equal(y, v) for (_, y), (_, v) in zip(alone, plain)] == [True] * len(plain)  # the same order
    assert not all(torch.equal(x, u) for (x, _), (u, _) in zip(alone, plain))  # ... augmented


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("augment", ["flip", "crop-flip", "rrc-flip"])
def test_augmented_batches_on_cuda_draw_from_a_cuda_generator_of_the_seed(augment):
    data, cuda = _uint8_data(), torch.device("cuda")

    def run(seed):
        return TensorBatches(
            data, 5, cuda, shuffle=True, drop_last=True, augment=augment, seed=seed, memory_format=torch.channels_last
        )

    assert run(3).augment_generator.device.type == "cuda" and run(3).generator.device.type == "cpu"
    alone = _epochs(run(3))
    assert alone[0][0].is_cuda and alone[0][0].is_contiguous(memory_format=torch.channels_last)
    assert _same(alone, _epochs(run(3))) and not _same(alone, _epochs(run(4)))
    a, b = run(3), run(5)
    assert _same(alone, [(xa.clone(), ya.clone()) for _ in range(2) for (xa, ya), _ in zip(a, b)])
    on_cpu = _epochs(TensorBatches(data, 5, torch.device("cpu"), shuffle=True, drop_last=True, augment=augment, seed=3))
    assert all(torch.equal(y.cpu(), v) for (_, y), (_, v) in zip(alone, on_cpu))  # the order: a CPU generator


def test_flip_and_crop_flip_are_mirrors_and_shifts_of_the_plain_images():
    data = _uint8_data(n=16, side=8, size=8)
    cpu = torch.device("cpu")
    plain = next(iter(TensorBatches(data, 16, cpu)))[0]
    flipped = next(iter(TensorBatches(data, 16, cpu, augment="flip", seed=0)))[0]
    mirrored = [torch.equal(f, p.flip(-1)) for f, p in zip(flipped, plain)]
    assert all(torch.equal(f, p) or m for f, p, m in zip(flipped, plain, mirrored)) and 0 < sum(mirrored) < 16
    cropped = next(iter(TensorBatches(data, 16, cpu, augment="crop-flip", seed=0)))[0]
    raw = data.images.permute(0, 3, 1, 2).float() / 255  # zero padding is black, before normalising
    padded = F.pad(raw, (1, 1, 1, 1))
    mean, std = data.mean[:, None, None], data.std[:, None, None]
    shifts = []
    for c, image in zip(cropped, padded):
        found = [
            (dy, dx, f)
            for dy in range(3)
            for dx in range(3)
            for f in (False, True)
            if torch.allclose(c, ((lambda w: w.flip(-1) if f else w)(image[:, dy : dy + 8, dx : dx + 8]) - mean) / std)
        ]
        assert found, "every crop-flip image is a shifted (and maybe mirrored) window of the padded image"
        shifts.append(found[0])
    assert len(set(shifts)) > 3


def test_random_resized_crops_stay_within_the_image_and_vary():
    data = _uint8_data(n=32, side=20, size=16)
    x, _ = next(iter(TensorBatches(data, 32, torch.device("cpu"), augment="rrc-flip", seed=0)))
    assert x.shape == (32, 3, 16, 16) and torch.isfinite(x).all()
    lo = (0 - data.mean) / data.std
    hi = (1 - data.mean) / data.std
    assert (x >= lo[:, None, None] - 1e-5).all() and (x <= hi[:, None, None] + 1e-5).all()  # interpolations of pixels
    plain = next(iter(TensorBatches(data, 32, torch.device("cpu"))))[0]
    assert not any(torch.allclose(a, b) for a, b in zip(x, plain))  # every image cropped or resampled


def test_none_gives_the_batches_of_before():
    data = TensorDataset(torch.randn(50, 1, 4, 4), torch.arange(50))
    loader = DataLoader(data, batch_size=8, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(3))
    ours = TensorBatches(data, 8, torch.device("cpu"), shuffle=True, drop_last=True, seed=3)  # its own generator
    assert _same(_epochs(loader), _epochs(ours))
    with pytest.raises(ValueError, match="augment 'jitter': use one of none, flip, crop-flip, rrc-flip"):
        TensorBatches(data, 8, torch.device("cpu"), augment="jitter")
    with pytest.raises(ValidationError, match="augment"):
        TrainConfig(augment="jitter")
    assert TrainConfig().augment == "none" and set(AUGMENTS) == {"none", "flip", "crop-flip", "rrc-flip"}

    class Lazy(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(1, 4, 4), i

    with pytest.raises(ValueError, match="needs an in-memory dataset"):
        batches(Lazy(), 2, torch.device("cpu"), augment="flip")


def _write_cifar(root, n_per_batch=40, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                    "labels": list(rng.integers(0, 10, n_per_batch)),
                },
                f,
            )
    return folder


@pytest.mark.parametrize("size", [32, 16])
def test_cifar_batches_without_augmentation_are_bit_for_bit_the_float_ones_of_before(tmp_path, size):
    folder = _write_cifar(tmp_path)
    data = load_dataset(f"cifar10:{tmp_path}", size)
    assert isinstance(data.train, ImageTensors) and (len(data.train), len(data.val), len(data.test)) == (180, 20, 40)
    # The float tensors the loader held before this change (data.py at commit cdef3e4, _tensor_split):
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f)
        images.append(batch["data"].reshape(-1, 3, 32, 32))
        labels += batch["labels"]
    x = torch.from_numpy(np.concatenate(images)).float() / 255.0
    y = torch.tensor(labels)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    val = np.sort(np.random.default_rng(0).permutation(len(y))[:20])
    train = torch.ones(len(y), dtype=torch.bool)
    train[val] = False
    mean = x[train].mean(dim=(0, 2, 3), keepdim=True)
    std = x[train].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x = (x - mean) / std
    before = TensorDataset(x[train], y[train])
    cpu = torch.device("cpu")
    old = _epochs(
        TensorBatches(before, 16, cpu, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(7))
    )
    new = _epochs(
        TensorBatches(data.train, 16, cpu, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(7))
    )
    assert _same(old, new)
    assert torch.equal(next(iter(TensorBatches(data.val, 64, cpu)))[0], x[~train])
    # the official test batch is the held-out split, normalised with the training statistics
    with open(folder / "test_batch", "rb") as f:
        test = torch.from_numpy(pickle.load(f)["data"].reshape(-1, 3, 32, 32)).float() / 255.0
    test = (F.interpolate(test, size=(size, size), mode="bilinear", align_corners=False, antialias=True) - mean) / std
    assert torch.equal(next(iter(TensorBatches(data.held_out().val, 64, cpu)))[0], test)


def test_iterators_over_one_dataset_share_its_device_copy():
    data = _uint8_data()
    a = TensorBatches(data, 4, torch.device("cpu"), seed=1, augment="flip")
    b = TensorBatches(data, 4, torch.device("cpu"), seed=2, augment="flip")
    assert a.x.data_ptr() == b.x.data_ptr() == data.images.data_ptr()


# -- training and a whole study ------------------------------------------------------------------
@pytest.mark.slow
def test_training_with_augmentation_is_reproducible(tmp_path, cache):
    write_folder(tmp_path / "photos", classes=4, per_class=6)
    data = load_dataset(f"imagefolder:{tmp_path / 'photos'}", 16)
    spec = tiny_spec(stages=[dict(depth=1, embed_dim=16, num_heads=1, sr_ratio=2)])
    config = TrainConfig(image_size=16, epochs=2, batch_size=4, augment="rrc-flip")
    first, again = train_candidate(spec, data, config), train_candidate(spec, data, config)
    assert first.losses == again.losses and first.loss_history == again.loss_history
    plain = train_candidate(spec, data, config.model_copy(update={"augment": "none"}))
    assert plain.losses != first.losses  # the augmentation reached the training batches
    assert len(plain.losses) == len(first.losses) == 2 * (len(data.train) // 4)


@pytest.mark.slow
def test_a_study_on_an_image_folder_decodes_each_image_once(tmp_path, cache, opened):
    root = tmp_path / "photos"
    write_folder(root, classes=4, per_class=10)

    def study(name, confirm_top):
        config = StudyConfig(
            space=SearchSpace.model_validate(SPACE),
            dataset=f"imagefolder:{root}",
            objective="loss",
            train=TrainConfig(image_size=16, epochs=1, batch_size=8, augment="crop-flip"),
        )
        options = RunOptions(
            n_trials=2,
            out=tmp_path / name,
            study_name=name,
            progress=False,
            heartbeat=1,
            sampler="random",
            workers_per_device=1,
            confirm_top=confirm_top,
            confirm_seeds=2,
            confirm_epochs=1,
            fidelity_sample=0,
        )
        return run_search(config, options).study

    first = study("first", confirm_top=0)
    done = [read_trial(t) for t in first.get_trials() if t.state.name == "COMPLETE" and read_trial(t).runs]
    assert done and all(r.runs[0].loss and np.isfinite(r.runs[0].loss[-1]) for r in done)  # trained for real
    assert len(opened) == 40 and len(set(opened)) == 40  # each image decoded once: the preparation
    assert len(list(cache.glob("imagefolder-16px-*.npz"))) == 1
    second = study("second", confirm_top=1)
    assert len(opened) == 40  # a second study reads the cache: no decode at all
    assert any(t.state.name == "COMPLETE" for t in second.get_trials())
    confirm = open_confirm_study(RunOptions(out=tmp_path / "second", study_name="second").address, score_of("loss"))
    jobs = [read_job(t) for t in confirm.get_trials() if t.state.name == "COMPLETE"]
    assert jobs and all(j.runs and j.runs[0].loss for j in jobs)  # confirmed on the held-out split, decoding nothing
    assert len(opened) == 40
