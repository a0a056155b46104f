"""Zero-cost scores: what a network at initialisation says about how it will train, from one batch.

Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021, rank NAS-Bench-201
networks with scores computed at initialisation, no training. Three of them, each for the
network its seed initialises (``torch.manual_seed(seed)`` then ``build_model``) on the first
training batch that seed draws:

- ``grad_norm``: the sum over parameter tensors of the L2 norm of the gradient of the
  cross-entropy on the batch (train mode);
- ``synflow`` (Tanaka et al., NeurIPS 2020, "Pruning neural networks without any data"): every
  parameter replaced by its absolute value, an input of ones, R = sum of the outputs, score =
  sum over parameters of |theta * dR/dtheta|, in float64, BatchNorm in eval mode (at
  initialisation its running statistics make it the identity); reported as log10 (the sum spans
  dozens of orders of magnitude between networks; the logarithm keeps the ranking). TransXNet's
  GroupNorms turn a constant input into zeros, so here the score mostly reflects the paths that
  bypass them (biases, residuals): it is measured like the others, not assumed to work;
- ``naswot`` (Mellor et al., ICML 2021, "Neural Architecture Search without Training"): the
  binary code of every activation unit over the batch (for GELU, whether its input is positive,
  the gate GELU smooths), K = c c^T + (1 - c)(1 - c)^T between images, score = log|det K|.

Whether any of them ranks the specs of a space well is measured by the fidelity study
(:mod:`.fidelity`); ZiCo (Li et al., ICLR 2023) found most of them no better than the parameter
count, so params and FLOPs are reported beside them.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..model import build_model
from ..spec import NetworkSpec
from .batches import batches

__all__ = ["ZERO_COST", "zero_cost_scores"]

ZERO_COST = ("synflow", "naswot", "grad_norm")


def zero_cost_scores(
    spec: NetworkSpec, data, seed: int, batch_size: int = 64, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """``{"synflow": ..., "naswot": ..., "grad_norm": ...}`` of ``spec`` initialised with ``seed``
    on the first training batch of ``seed`` (``batch_size`` images of ``data.train``).

    Raises:
        ValueError: a training set smaller than ``batch_size``.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_model(spec, num_classes=data.num_classes, in_chans=data.in_chans).to(device)
    loader = batches(
        data.train,
        min(batch_size, len(data.train)),
        device,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
    )
    x, y = next(iter(loader))
    return {"synflow": _synflow(model, x.shape[1:]), "naswot": _naswot(model, x), "grad_norm": _grad_norm(model, x, y)}


def _grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model = copy.deepcopy(model).train()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        return float(sum(p.grad.norm() for p in model.parameters() if p.grad is not None))


def _synflow(model: nn.Module, shape: torch.Size) -> float:
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad(set_to_none=True)
    out = model(torch.ones(1, *shape, dtype=torch.float64, device=next(model.parameters()).device))
    out.sum().backward()
    with torch.no_grad():
        total = math.fsum(float((p * p.grad).abs().sum()) for p in model.parameters() if p.grad is not None)
    return math.log10(total) if total > 0 else -math.inf


def _naswot(model: nn.Module, x: torch.Tensor) -> float:
    model = copy.deepcopy(model).train()
    codes: list[torch.Tensor] = []

    def record(_module, args, _output) -> None:
        codes.append((args[0] > 0).flatten(1).double())

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.GELU)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    c = torch.cat(codes, dim=1)  # (B, activation units)
    k = c @ c.T + (1 - c) @ (1 - c).T  # units on which two images agree
    return float(torch.linalg.slogdet(k)[1])
