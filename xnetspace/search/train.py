"""Proxy training: a few epochs of a candidate on a small dataset, reporting validation top-1.

The recipe follows the paper's ImageNet one in kind (AdamW, cosine schedule, label smoothing;
paper section IV-A) at proxy scale, built from timm's optimizer and scheduler factories. Seeds
and the data order are fixed, so a spec trains the same way every time. On CUDA the forward runs
under bf16 autocast with channels_last memory.

Failures are typed so a search can record why a trial ended: :class:`Diverged` (NaN/inf loss),
:class:`TimeLimitExceeded` (the trial's time limit), and CUDA out-of-memory (torch's own error).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import DataLoader

from ..network import build_model
from ..spec import NetworkSpec

__all__ = ["TrainConfig", "TrainResult", "Diverged", "TimeLimitExceeded", "train_candidate", "evaluate"]


class TrainConfig(BaseModel):
    """The proxy-training recipe. ``image_size`` is the side of the (square) training images;
    ``time_limit`` (seconds, None: none) bounds one candidate's training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(32, ge=8)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=2, description="at least 2: IDConv's batch norm sees one value per sample")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    time_limit: Optional[float] = Field(None, gt=0)
    num_workers: int = Field(0, ge=0, description="DataLoader workers (image folders decode images)")


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class TimeLimitExceeded(RuntimeError):
    """Training ran past ``TrainConfig.time_limit``."""


@dataclass
class TrainResult:
    """Validation top-1 (percent) after each epoch; ``top1`` is the last one."""

    history: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def top1(self) -> float:
        return self.history[-1]


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) over ``loader``."""
    model.eval()
    correct, total = 0, 0  # whole counts: equal accuracies compare equal
    with torch.inference_mode(), _autocast(device):
        for x, y in loader:
            x, y = _to(x, device), y.to(device)
            correct += int((model(x).argmax(dim=-1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def train_candidate(
    spec: NetworkSpec,
    data,  # xnetspace.search.data.DataSplit
    config: TrainConfig = TrainConfig(),
    device: str | torch.device = "cpu",
    report: Optional[Callable[[int, float], None]] = None,
) -> TrainResult:
    """Train ``spec`` from scratch on ``data.train`` and validate each epoch on ``data.val``.

    Args:
        spec: the network; its ``num_classes``/``in_chans`` are set to the dataset's.
        report: called as ``report(epoch, top1)`` after every epoch (a pruner hook: it may raise
            ``optuna.TrialPruned`` to stop).

    Raises:
        Diverged: NaN/inf loss. TimeLimitExceeded: past ``config.time_limit``.
        torch.OutOfMemoryError: on a device that ran out of memory.
    """
    start = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model = build_model(spec, num_classes=data.num_classes, in_chans=data.in_chans).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True, drop_last=True,
                              generator=gen, num_workers=config.num_workers)
    val_loader = DataLoader(data.val, batch_size=max(config.batch_size, 128), num_workers=config.num_workers)
    if len(train_loader) == 0:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(data.train)} training images")

    optimizer = create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=config.epochs,
                                       warmup_epochs=config.warmup_epochs, step_on_epochs=False,
                                       updates_per_epoch=len(train_loader))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    result, updates = TrainResult(), 0
    for epoch in range(config.epochs):
        model.train()
        for x, y in train_loader:
            x, y = _to(x, device), y.to(device)
            with _autocast(device):
                loss = loss_fn(model(x), y)
            if not math.isfinite(loss.item()):
                raise Diverged(f"loss became {loss.item()} at epoch {epoch + 1}, update {updates + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            if config.time_limit and time.perf_counter() - start > config.time_limit:
                raise TimeLimitExceeded(f"past the {config.time_limit:g} s time limit in epoch {epoch + 1}")
        scheduler.step(epoch + 1)
        result.history.append(evaluate(model, val_loader, device))
        result.seconds = time.perf_counter() - start
        if report is not None:
            report(epoch, result.history[-1])
    return result


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
