"""Seeds in one pass (train_seeds): every seed's run in a pack is the run that seed makes alone, and
what the GPU path switches on (bf16 autocast, channels_last) runs on the CPU too."""

from __future__ import annotations

import pytest
import torch

from xnetspace.search.data import load_dataset
from xnetspace.search.train import TrainConfig, autocast_dtype, train_candidate, train_seeds

from .conftest import tiny_spec

SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 32)


def relative(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["fast", "reference"])
def test_a_pack_of_three_seeds_trains_each_as_it_trains_alone(digits, form):
    config = TrainConfig(image_size=32, epochs=2, batch_size=64, lr=3e-3, train_form=form)
    spec = tiny_spec(in_chans=1, image_size=32)
    packed = train_seeds(spec, digits, SEEDS, config)
    alone = [train_candidate(spec, digits, config.model_copy(update={"seed": s})) for s in SEEDS]
    assert len(packed) == 3 and len(packed[0].losses) == 2 * (898 // 64)
    for mine, theirs in zip(packed, alone):
        assert relative(mine.losses, theirs.losses) < 1e-4  # every update's training loss (measured: 3e-7)
        assert relative([mine.loss], [theirs.loss]) < 1e-4  # the final validation cross-entropy
        # Between, the eval-mode scores may differ by a few 1e-4: parameters the training loss is
        # invariant to (a BN's bias followed by another train-mode BN) get gradients that are 0 up
        # to rounding, which AdamW turns into steps that differ between any two summation orders;
        # BatchNorm's running statistics follow them, so eval mode sees them (docs/search.md, "Seeds as evaluations").
        assert relative(mine.loss_history, theirs.loss_history) < 1e-3
        assert all(abs(a - b) <= 100 / 360 + 1e-9 for a, b in zip(mine.history, theirs.history))  # one image at most
    assert len({round(r.loss, 6) for r in packed}) == 3  # three seeds, three runs


@pytest.mark.slow
def test_seeds_one_after_another_are_the_same_runs(digits):
    config = TrainConfig(image_size=32, epochs=1, batch_size=64)
    spec = tiny_spec(in_chans=1, image_size=32)
    reports = []
    one_by_one = train_seeds(
        spec, digits, [4, 5], config, pack=False, report=lambda epoch, results: reports.append(len(results))
    )
    packed = train_seeds(spec, digits, [4, 5], config)
    assert reports == [1, 2]  # the report sees the finished seeds and the one in training
    for a, b in zip(one_by_one, packed):
        assert relative(a.losses, b.losses) < 1e-4


def test_seeds_must_be_distinct(digits):
    with pytest.raises(ValueError, match="distinct seeds"):
        train_seeds(tiny_spec(in_chans=1), digits, [1, 1], TrainConfig(image_size=32, epochs=1))


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True])
def test_bf16_autocast_and_channels_last_train_on_the_cpu(digits, packed):
    """The GPU recipe's switches, forced on the CPU: a short run trains and its scores are sane (a
    pack trains in float32 whatever the precision asked: see train_seeds)."""
    config = TrainConfig(image_size=32, epochs=1, batch_size=64, precision="bfloat16", channels_last=True)
    assert autocast_dtype(torch.device("cpu"), config) == torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), TrainConfig()) is None
    assert autocast_dtype(torch.device("cuda"), TrainConfig()) == torch.bfloat16  # auto: bf16 on CUDA
    results = train_seeds(tiny_spec(in_chans=1, image_size=32), digits, [0, 1] if packed else [0], config)
    for r in results:
        assert all(torch.isfinite(torch.tensor(r.losses))) and r.losses[-1] < r.losses[0]
        assert 0 < r.loss < 2.3 and r.top1 > 10
