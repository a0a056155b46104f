"""Proxy training: a few epochs of a candidate on a small dataset, reporting validation top-1 and
cross-entropy.

The recipe follows the paper's ImageNet one in kind (AdamW, cosine schedule, label smoothing;
paper section IV-A) at proxy scale, built from timm's optimizer and scheduler factories. Seeds
and the data order are fixed, so a spec trains the same way every time. On CUDA the forward runs
under bf16 autocast with channels_last memory.

Speed (issue 12; ``benchmarks/bench_train.py`` measures it): by default the network trains in its
fast form (:meth:`xnetspace.model.TransXNet.set_train_form`) with a fused AdamW; in-memory
datasets are batched by indexing their tensors on the device, without a DataLoader, and evaluated
in large batches under ``inference_mode``. ``train_form="reference"`` trains the release's
operators with torch's plain AdamW, for comparison.

Failures are typed so a search can record why a trial ended: :class:`Diverged` (NaN/inf loss),
:class:`TimeLimitExceeded` (the trial's time limit), and CUDA out-of-memory (torch's own error).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from torch import nn

from ..model import build_model
from ..model.network import TrainForm, TransXNet
from ..pack import Pack
from ..spec import MAX_IMAGE_SIZE, MAX_SEED, Float, Int, NetworkSpec
from .batches import AUGMENTS, Augment, Batches, TensorBatches, batches  # noqa: F401 - TensorBatches, Batches: re-exported

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Diverged",
    "TimeLimitExceeded",
    "train_candidate",
    "train_seeds",
    "evaluate",
    "evaluate_pack",
    "autocast_dtype",
    "check_recipe",
]

MAX_LR = 10.0  # AdamW's learning rates are about 1e-3; beyond 10 every update diverges
MAX_EPOCHS = 100_000


class TrainConfig(BaseModel):
    """The proxy-training recipe. ``image_size`` is the side of the (square) training images;
    ``time_limit`` (seconds, None: none) bounds one candidate's training. Every number is finite
    and bounded (a learning rate of inf or 1e30 only makes every candidate fail); a batch larger
    than the training split is refused where the data is known (:func:`check_recipe`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    image_size: Int = Field(32, ge=8, le=MAX_IMAGE_SIZE)
    epochs: Int = Field(5, ge=1, le=MAX_EPOCHS)
    batch_size: Int = Field(64, ge=2, description="at least 2: IDConv's batch norm sees one value per sample")
    lr: Float = Field(2e-3, gt=0, le=MAX_LR)
    weight_decay: Float = Field(0.05, ge=0)
    warmup_epochs: Int = Field(0, ge=0, le=MAX_EPOCHS)
    label_smoothing: Float = Field(0.1, ge=0, lt=1)
    seed: Int = Field(0, ge=0, le=MAX_SEED)
    time_limit: Float | None = Field(None, gt=0)
    num_workers: Int = Field(0, ge=0, description="DataLoader workers (image folders decode images)")
    train_form: TrainForm = Field(
        "fast", description="fast: the fast training form and a fused AdamW; reference: the release's operators"
    )
    augment: Augment = Field(
        "none",
        description="augmentation of the training batches, drawn on the device from the seed's own generator "
        "(xnetspace/search/batches.py; validation never augments)",
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="bfloat16: the forward under bf16 autocast; auto: bfloat16 on CUDA, float32 elsewhere"
    )
    channels_last: bool | None = Field(
        None, description="channels_last memory for the network and a lone run's batches (None: on CUDA only)"
    )


def check_recipe(config: TrainConfig, data) -> None:
    """Refuse, before any trial, a recipe that no candidate can train on ``data`` (a
    :class:`~xnetspace.search.data.DataSplit`): a batch larger than the training split, which
    leaves no full batch (``drop_last``), so every candidate would fail.

    Raises:
        ValueError: naming ``batch_size``, its value and the split's size.
    """
    images = len(cast(Sized, data.train))
    if config.batch_size > images:
        raise ValueError(
            f"batch_size {config.batch_size:,} (--batch-size) is larger than the {images:,} training images "
            f"of {data.name}: at most {images:,}"
        )


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class TimeLimitExceeded(RuntimeError):
    """Training ran past ``TrainConfig.time_limit``."""


@dataclass
class TrainResult:
    """Validation top-1 (percent) and validation cross-entropy (nats per image, no label
    smoothing) after each epoch (``top1`` and ``loss`` are the last ones), the training loss of
    every update (``losses``, label-smoothed, what the optimiser minimised) and its mean per epoch
    (``train_loss_history``; their sum is the training-speed estimate, :attr:`tse`), the wall
    seconds at each epoch's end (``seconds_history``, cumulative, the held-out scoring left out)
    and, when :func:`train_seeds` scores the held-out split too, its top-1 and cross-entropy per
    epoch (``test_history``, ``test_loss_history``)."""

    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    train_loss_history: list[float] = field(default_factory=list)
    seconds_history: list[float] = field(default_factory=list)  # wall seconds at each epoch's end (cumulative)
    test_history: list[float] = field(default_factory=list)  # held-out top-1 per epoch (score_test only)
    test_loss_history: list[float] = field(default_factory=list)  # held-out cross-entropy per epoch

    @property
    def top1(self) -> float:
        return self.history[-1]

    @property
    def loss(self) -> float:
        return self.loss_history[-1]

    @property
    def tse(self) -> float:
        """Training-speed estimate (Ru et al., NeurIPS 2021, "Speedy Performance Estimation for
        Neural Architecture Search"): the sum over epochs of the epoch's mean training loss."""
        return math.fsum(self.train_loss_history)


def evaluate(model: nn.Module, loader, device: torch.device, config: TrainConfig | None = None) -> tuple[float, float]:
    """``(top-1 in percent, mean cross-entropy in nats)`` of ``model`` (eval mode) over ``loader``
    (a DataLoader, :class:`TensorBatches`, or any iterable of ``(images, labels)`` batches). The
    cross-entropy is the plain negative log-likelihood of the true class, without the label
    smoothing of training, computed in float32."""
    model.eval()
    correct, total, nll = 0, 0, 0.0  # whole counts: equal accuracies compare equal
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device)
            with _autocast(device, config):
                logits = model(x)
            correct += int((logits.argmax(dim=-1) == y).sum())
            nll += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            total += len(y)
    return 100.0 * correct / total, nll / total


def train_candidate(
    spec: NetworkSpec,
    data,  # xnetspace.search.data.DataSplit
    config: TrainConfig = TrainConfig(),
    device: str | torch.device = "cpu",
    report: Callable[[int, TrainResult], None] | None = None,
) -> TrainResult:
    """Train ``spec`` from scratch on ``data.train`` with ``config.seed`` and validate each epoch
    on ``data.val`` (:func:`train_seeds` with one seed).

    Args:
        spec: the network; its ``num_classes``/``in_chans`` are set to the dataset's.
        report: called as ``report(epoch, result)`` after every epoch with the result so far (a
            pruner hook: it may raise ``optuna.TrialPruned`` to stop).

    Raises:
        Diverged: NaN/inf loss. TimeLimitExceeded: past ``config.time_limit``.
        ValueError: ``batch_size`` larger than the training set.
        torch.OutOfMemoryError: on a device that ran out of memory.
    """
    hook = None if report is None else (lambda epoch, results: report(epoch, results[0]))
    return train_seeds(spec, data, [config.seed], config, device, hook)[0]


def train_seeds(
    spec: NetworkSpec,
    data,  # xnetspace.search.data.DataSplit
    seeds: Sequence[int],
    config: TrainConfig = TrainConfig(),
    device: str | torch.device = "cpu",
    report: Callable[[int, list[TrainResult]], None] | None = None,
    pack: bool = True,
    score_test: bool = False,
) -> list[TrainResult]:
    """Train ``spec`` once per seed, all at once as one :class:`~xnetspace.pack.Pack` (or one after
    another with ``pack=False``), and validate each epoch on ``data.val``; one result per seed.

    Each seed's run is the run that seed makes alone (``config`` with ``seed`` replaced): the same
    initialisation (``torch.manual_seed(seed)`` before building), the same batches and
    augmentations (its own generators, :mod:`.batches`), its own BatchNorm statistics and AdamW
    state; the same schedule. A pack's loss is the sum of the replicas' mean losses, so each
    replica gets its own gradients (``tests/test_train_seeds.py`` checks the histories against
    separate runs). ``seconds`` of each result is the wall time of the whole pack. A pack trains
    in float32 and contiguous memory whatever ``precision`` and ``channels_last`` say: under
    ``vmap`` autocast reaches some operators and not others (convolutions stay float32, matmuls
    turn bf16), which mixes dtypes; so on CUDA a seed trained alone (bf16 by default) and the same
    seed in a pack differ by bf16 rounding.

    Args:
        report: called as ``report(epoch, results)`` after every epoch with every seed's result
            so far (a pruner hook: it may raise ``optuna.TrialPruned`` to stop).
        score_test: also score every epoch on ``data.test`` (a tabular benchmark records both
            curves, :mod:`.tabulate`); its time is left out of ``seconds``. Without a test split:
            nothing is added.

    Raises:
        Diverged: a NaN/inf loss in any seed's run. TimeLimitExceeded: past ``config.time_limit``.
        ValueError: no seeds, repeated seeds, or a ``batch_size`` larger than the training set.
        torch.OutOfMemoryError: on a device that ran out of memory.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"train_seeds needs distinct seeds, got {seeds}")
    if not pack and len(seeds) > 1:
        return _train_one_after_another(spec, data, seeds, config, device, report, score_test)
    return _train_together(spec, data, seeds, config, device, report, score_test)


def _train_one_after_another(
    spec: NetworkSpec,
    data,
    seeds: list[int],
    config: TrainConfig,
    device: str | torch.device,
    report: Callable[[int, list[TrainResult]], None] | None,
    score_test: bool,
) -> list[TrainResult]:
    """``train_seeds(pack=False)``: each seed alone, in turn; ``report`` sees the finished seeds'
    results before the running one's."""
    results: list[TrainResult] = []
    for seed in seeds:
        done = results.copy()
        hook = None if report is None else (lambda epoch, mine: report(epoch, done + mine))  # noqa: B023 - used in this iteration
        results += train_seeds(spec, data, [seed], config, device, hook, score_test=score_test)
    return results


@dataclass
class _Run:
    """What a run of :func:`_train_together` keeps through its epochs."""

    net: nn.Module | Pack  # the network, or a Pack of one network per seed
    seeds: list[int]
    config: TrainConfig
    device: torch.device
    layout: torch.memory_format  # the memory format of the network and its batches
    start: float  # time.perf_counter() at the start: the time limit and ``seconds`` count from it

    @property
    def packed(self) -> bool:
        return len(self.seeds) > 1


def _train_together(
    spec: NetworkSpec,
    data,
    seeds: list[int],
    config: TrainConfig,
    device: str | torch.device,
    report: Callable[[int, list[TrainResult]], None] | None,
    score_test: bool,
) -> list[TrainResult]:
    """:func:`train_seeds` of one seed, or of several as one pack."""
    start = time.perf_counter()
    device = torch.device(device)
    packed = len(seeds) > 1
    # A pack stacks the replicas' tensors and batches into (S, ...): contiguous, whatever the device.
    layout = torch.contiguous_format if packed else training_memory_format(device, config)
    models = _build_replicas(spec, data, seeds, config, device, layout)
    run = _Run(Pack(models) if packed else models[0], seeds, config, device, layout, start)
    train_batches = [_training_batches(data.train, seed, run) for seed in seeds]
    val_batches = _evaluation_batches(data.val, run)
    test_batches = _evaluation_batches(data.test, run) if score_test and data.test is not None else None
    scoring_test = 0.0  # seconds spent on the held-out split, left out of the runs' wall time
    steps = len(train_batches[0])
    if steps == 0:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(data.train)} training images")
    optimizer = adamw(run.net, config.lr, config.weight_decay, config.train_form, models[0] if packed else None)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=steps,
    )
    results, updates = [TrainResult() for _ in seeds], 0
    for epoch in range(config.epochs):
        updates = _train_epoch(run, train_batches, steps, optimizer, scheduler, results, epoch, updates)
        scheduler.step(epoch + 1)
        _record_validation(run, val_batches, steps, scoring_test, results)
        if test_batches is not None:
            scoring_test += _score_held_out(run.net, test_batches, device, config, results)
        if config.time_limit and time.perf_counter() - start - scoring_test > config.time_limit:  # evaluation counts
            raise TimeLimitExceeded(f"past the {config.time_limit:g} s time limit after epoch {epoch + 1}")
        if report is not None:
            report(epoch, results)
    return results


def _build_replicas(
    spec: NetworkSpec, data, seeds: list[int], config: TrainConfig, device: torch.device, layout: torch.memory_format
) -> list[TransXNet]:
    """One network per seed, each initialised under ``torch.manual_seed(seed)`` as it is alone."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model(spec, num_classes=data.num_classes, in_chans=data.in_chans).to(device)
        models.append(model.set_train_form(config.train_form).to(memory_format=layout))
    return models


def _training_batches(split, seed: int, run: _Run):
    """The seed's own shuffled (and augmented) training batches, from generators of its own."""
    config = run.config
    return batches(
        split,
        config.batch_size,
        run.device,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=config.num_workers,
        memory_format=run.layout,
        augment=config.augment,
        seed=seed,
    )


def _evaluation_batches(split, run: _Run):
    """The batches ``split`` is scored in, in order: ``_EVAL_BATCH`` images or a training batch, the larger."""
    config = run.config
    return batches(
        split, max(config.batch_size, _EVAL_BATCH), run.device, num_workers=config.num_workers, memory_format=run.layout
    )


def _train_epoch(
    run: _Run,
    train_batches: list,
    steps: int,
    optimizer,
    scheduler,
    results: list[TrainResult],
    epoch: int,
    updates: int,
) -> int:
    """One epoch of ``steps`` updates; returns the count of updates so far."""
    config = run.config
    run.net.train()
    epoch_batches = [iter(b) for b in train_batches]
    for _ in range(steps):
        x, y = _next_batch(run, epoch_batches)
        losses = _replica_losses(run, x, y)
        _record_losses(run, losses.tolist(), results, epoch, updates)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        updates += 1
        scheduler.step_update(num_updates=updates)
        if config.time_limit and time.perf_counter() - run.start > config.time_limit:
            raise TimeLimitExceeded(f"past the {config.time_limit:g} s time limit in epoch {epoch + 1}")
    for it in epoch_batches:  # run each iterator to its end: an epoch's last draws are part of its seed's stream
        for _ in it:
            raise AssertionError("the seeds' training sets differ in length")
    return updates


def _next_batch(run: _Run, epoch_batches: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Every seed's next batch, stacked into (S, B, ...) for a pack, on the device."""
    pairs = [next(it) for it in epoch_batches]
    x = pairs[0][0] if not run.packed else torch.stack([x for x, _ in pairs])
    y = pairs[0][1] if not run.packed else torch.stack([y for _, y in pairs])
    return _to(x, run.device, run.layout), y.to(run.device)


def _replica_losses(run: _Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each replica's mean label-smoothed cross-entropy on its batch, shape (S,)."""
    with _autocast(run.device, None if run.packed else run.config):  # packs train in float32 (see train_seeds)
        logits = run.net(x)  # (B, classes), or (S, B, classes) for a pack
        return (
            nn.functional.cross_entropy(
                logits.flatten(0, -2).float(),
                y.flatten(),
                reduction="none",
                label_smoothing=run.config.label_smoothing,
            )
            .view(len(run.seeds), -1)
            .mean(1)
        )


def _record_losses(run: _Run, values: list[float], results: list[TrainResult], epoch: int, updates: int) -> None:
    """Append each seed's loss to its result; raises Diverged at the first that is not finite."""
    for result, seed, value in zip(results, run.seeds, values):
        result.losses.append(value)
        if not math.isfinite(value):
            where = f" (seed {seed})" if run.packed else ""
            raise Diverged(f"loss became {value}{where} at epoch {epoch + 1}, update {updates + 1}")


def _record_validation(run: _Run, loader, steps: int, scoring_test: float, results: list[TrainResult]) -> None:
    """Append the epoch's mean training loss, validation scores and wall seconds to each result."""
    scores = (
        evaluate_pack(cast(Pack, run.net), loader, run.device)
        if run.packed
        else [evaluate(cast(nn.Module, run.net), loader, run.device, run.config)]
    )
    for result, (top1, val_loss) in zip(results, scores):
        epoch_losses = result.losses[-steps:]
        result.train_loss_history.append(math.fsum(epoch_losses) / len(epoch_losses))
        result.history.append(top1)
        result.loss_history.append(val_loss)
        result.seconds = time.perf_counter() - run.start - scoring_test
        result.seconds_history.append(result.seconds)


def _score_held_out(net, loader, device: torch.device, config: TrainConfig, results: list[TrainResult]) -> float:
    """Append each replica's held-out top-1 and cross-entropy to its result; returns the seconds it took."""
    start = time.perf_counter()
    scores = evaluate_pack(net, loader, device) if isinstance(net, Pack) else [evaluate(net, loader, device, config)]
    for result, (top1, loss) in zip(results, scores):
        result.test_history.append(top1)
        result.test_loss_history.append(loss)
    return time.perf_counter() - start


def adamw(
    model, lr: float, weight_decay: float, train_form: str, like: nn.Module | None = None
) -> torch.optim.Optimizer:
    """timm's AdamW (no weight decay on biases and norms); for the fast form torch's fused kernel,
    one pass over all parameters instead of a dozen small ops per parameter (the same update).

    ``model`` is a network, or a :class:`~xnetspace.pack.Pack` with ``like`` one of its replicas:
    the pack's stacked parameters then get the groups timm gives the replica's (AdamW is
    element-wise, so on the stacked tensors it is each replica's own optimizer)."""
    fused: dict[str, Any] = dict(fused=True) if train_form == "fast" else {}
    if like is None:
        return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, **fused)
    names = {id(p): name for name, p in like.named_parameters()}
    groups = [
        {**group, "params": [model.params[names[id(p)]] for p in group["params"]]}
        for group in param_groups_weight_decay(like, weight_decay)
    ]
    return create_optimizer_v2(groups, opt="adamw", lr=lr, weight_decay=weight_decay, **fused)


_EVAL_BATCH = 1024  # evaluation keeps no activations: large batches, few calls


def evaluate_pack(pack: Pack, loader, device: torch.device) -> list[tuple[float, float]]:
    """:func:`evaluate` for every replica of ``pack`` at once (in float32): ``[(top-1 %,
    cross-entropy), ...]``, one pair per replica, on the same images."""
    pack.eval()
    correct, nll, total = torch.zeros(pack.size, dtype=torch.long), torch.zeros(pack.size, dtype=torch.float64), 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device)
            logits = pack(x).float()  # (S, b, classes)
            correct += (logits.argmax(dim=-1) == y).sum(dim=1).cpu()
            nll += (
                nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(pack.size), reduction="none")
                .view(pack.size, -1)
                .sum(dim=1)
                .double()
                .cpu()
            )
            total += len(y)
    return [(100.0 * int(c) / total, float(n) / total) for c, n in zip(correct, nll)]


def training_memory_format(device: torch.device, config: TrainConfig | None = None) -> torch.memory_format:
    """The memory format proxy training uses: ``config.channels_last`` when set, else channels_last
    on CUDA (cuDNN's fast layout under bf16) and contiguous NCHW on the CPU, the layout the fast
    form's matmul paths work in (on the CPU they copy other layouts to it, so a channels_last batch
    turns NCHW at the first of them: measured 1% slower per step on tiny_cpu candidates)."""
    wanted = config.channels_last if config is not None else None
    if wanted is None:
        wanted = device.type == "cuda"
    return torch.channels_last if wanted else torch.contiguous_format


def _to(
    x: torch.Tensor, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    return x.to(device, non_blocking=True).contiguous(memory_format=memory_format)


def autocast_dtype(device: torch.device, config: TrainConfig | None = None) -> torch.dtype | None:
    """bfloat16 when ``config.precision`` asks for it (or is ``auto`` on CUDA), else None (float32)."""
    precision = config.precision if config is not None else "auto"
    if precision == "bfloat16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _autocast(device: torch.device, config: TrainConfig | None = None):
    dtype = autocast_dtype(device, config)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
