"""Proxy training: a few epochs of a candidate on a small dataset, reporting validation top-1 and
cross-entropy.

The recipe follows the paper's ImageNet one in kind (AdamW, cosine schedule, label smoothing;
paper section IV-A) at proxy scale, built from timm's optimizer and scheduler factories. Seeds
and the data order are fixed, so a spec trains the same way every time. On CUDA the forward runs
under bf16 autocast with channels_last memory.

Speed (issue 12; ``benchmarks/bench_train.py`` measures it): by default the network trains in its
fast form (:meth:`xnetspace.network.TransXNet.set_train_form`) with a fused AdamW; in-memory
datasets are batched by indexing their tensors on the device, without a DataLoader, and evaluated
in large batches under ``inference_mode``. ``train_form="reference"`` trains the release's
operators with torch's plain AdamW, for comparison.

Failures are typed so a search can record why a trial ended: :class:`Diverged` (NaN/inf loss),
:class:`TimeLimitExceeded` (the trial's time limit), and CUDA out-of-memory (torch's own error).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from ..network import TRAIN_FORMS, build_model
from ..spec import Float, Int, NetworkSpec
from .batches import AUGMENTS, Batches, TensorBatches, batches  # noqa: F401 - TensorBatches, Batches: re-exported

__all__ = ["TrainConfig", "TrainResult", "Diverged", "TimeLimitExceeded", "train_candidate", "evaluate"]


class TrainConfig(BaseModel):
    """The proxy-training recipe. ``image_size`` is the side of the (square) training images;
    ``time_limit`` (seconds, None: none) bounds one candidate's training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: Int = Field(32, ge=8)
    epochs: Int = Field(5, ge=1)
    batch_size: Int = Field(64, ge=2, description="at least 2: IDConv's batch norm sees one value per sample")
    lr: Float = Field(2e-3, gt=0)
    weight_decay: Float = Field(0.05, ge=0)
    warmup_epochs: Int = Field(0, ge=0)
    label_smoothing: Float = Field(0.1, ge=0, lt=1)
    seed: Int = 0
    time_limit: Optional[Float] = Field(None, gt=0)
    num_workers: Int = Field(0, ge=0, description="DataLoader workers (image folders decode images)")
    train_form: Literal[TRAIN_FORMS] = Field(
        "fast", description="fast: the fast training form and a fused AdamW; reference: the release's operators")
    augment: Literal[AUGMENTS] = Field(
        "none", description="augmentation of the training batches, drawn on the device from the seed's own generator "
                            "(xnetspace/search/batches.py; validation never augments)")


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class TimeLimitExceeded(RuntimeError):
    """Training ran past ``TrainConfig.time_limit``."""


@dataclass
class TrainResult:
    """Validation top-1 (percent) and validation cross-entropy (nats per image, no label
    smoothing) after each epoch (``top1`` and ``loss`` are the last ones), the training loss of
    every update (``losses``, label-smoothed, what the optimiser minimised) and its mean per epoch
    (``train_loss_history``; their sum is the training-speed estimate, :attr:`tse`)."""

    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    train_loss_history: list[float] = field(default_factory=list)

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


def evaluate(model: nn.Module, loader, device: torch.device) -> tuple[float, float]:
    """``(top-1 in percent, mean cross-entropy in nats)`` of ``model`` (eval mode) over ``loader``
    (a DataLoader, :class:`TensorBatches`, or any iterable of ``(images, labels)`` batches). The
    cross-entropy is the plain negative log-likelihood of the true class, without the label
    smoothing of training, computed in float32."""
    model.eval()
    correct, total, nll = 0, 0, 0.0  # whole counts: equal accuracies compare equal
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device)
            with _autocast(device):
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
    report: Optional[Callable[[int, TrainResult], None]] = None,
) -> TrainResult:
    """Train ``spec`` from scratch on ``data.train`` and validate each epoch on ``data.val``.

    Args:
        spec: the network; its ``num_classes``/``in_chans`` are set to the dataset's.
        report: called as ``report(epoch, result)`` after every epoch with the result so far (a
            pruner hook: it may raise ``optuna.TrialPruned`` to stop).

    Raises:
        Diverged: NaN/inf loss. TimeLimitExceeded: past ``config.time_limit``.
        ValueError: ``batch_size`` larger than the training set.
        torch.OutOfMemoryError: on a device that ran out of memory.
    """
    start = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model = build_model(spec, num_classes=data.num_classes, in_chans=data.in_chans).to(device)
    model.set_train_form(config.train_form)
    layout = training_memory_format(device)
    model = model.to(memory_format=layout)
    gen = torch.Generator().manual_seed(config.seed)
    train_batches = batches(data.train, config.batch_size, device, shuffle=True, drop_last=True, generator=gen,
                            num_workers=config.num_workers, memory_format=layout, augment=config.augment,
                            seed=config.seed)
    val_batches = batches(data.val, max(config.batch_size, _EVAL_BATCH), device, num_workers=config.num_workers,
                          memory_format=layout)
    if len(train_batches) == 0:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(data.train)} training images")

    optimizer = adamw(model, config.lr, config.weight_decay, config.train_form)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=config.epochs,
                                       warmup_epochs=config.warmup_epochs, step_on_epochs=False,
                                       updates_per_epoch=len(train_batches))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    result, updates = TrainResult(), 0
    for epoch in range(config.epochs):
        model.train()
        for x, y in train_batches:
            x, y = _to(x, device, layout), y.to(device)
            with _autocast(device):
                loss = loss_fn(model(x), y)
            result.losses.append(loss.item())
            if not math.isfinite(result.losses[-1]):
                raise Diverged(f"loss became {result.losses[-1]} at epoch {epoch + 1}, update {updates + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            if config.time_limit and time.perf_counter() - start > config.time_limit:
                raise TimeLimitExceeded(f"past the {config.time_limit:g} s time limit in epoch {epoch + 1}")
        scheduler.step(epoch + 1)
        epoch_losses = result.losses[-len(train_batches):]
        result.train_loss_history.append(math.fsum(epoch_losses) / len(epoch_losses))
        top1, val_loss = evaluate(model, val_batches, device)
        result.history.append(top1)
        result.loss_history.append(val_loss)
        result.seconds = time.perf_counter() - start
        if report is not None:
            report(epoch, result)
    return result


def adamw(model: nn.Module, lr: float, weight_decay: float, train_form: str) -> torch.optim.Optimizer:
    """timm's AdamW (no weight decay on biases and norms); for the fast form torch's fused kernel,
    one pass over all parameters instead of a dozen small ops per parameter (the same update)."""
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay,
                               **(dict(fused=True) if train_form == "fast" else {}))


_EVAL_BATCH = 1024  # evaluation keeps no activations: large batches, few calls


def training_memory_format(device: torch.device) -> torch.memory_format:
    """The memory format proxy training uses: channels_last on CUDA (cuDNN's fast layout under
    bf16); contiguous NCHW on the CPU, where the fast form's matmul paths for small maps need it
    (with channels_last the fast form measured about 15% slower on tiny_cpu candidates)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _to(x: torch.Tensor, device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    return x.to(device, non_blocking=True).contiguous(memory_format=memory_format)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
