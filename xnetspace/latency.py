"""Measured latency of a built network: the one cost that the spec alone cannot give.

It sits above :mod:`xnetspace.model.network` (it builds the network), while :mod:`xnetspace.cost`
counts params and FLOPs from the spec without building anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from .cost import ImageSize, parse_image_size
from .model import build_model
from .spec import NetworkSpec

__all__ = ["measure_latency", "fastest_latencies"]


def measure_latency(
    spec: NetworkSpec,
    batch_size: int = 1,
    image_size: ImageSize = 224,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model: torch.nn.Module | None = None,
    min_run_time: float = 1.0,
) -> float:
    """Median milliseconds of one eval forward pass of a (batch_size, in_chans, H, W) batch.

    Uses ``torch.utils.benchmark.Timer`` (which warms up and synchronises CUDA) and runs for at
    least ``min_run_time`` seconds. ``model`` replaces ``build_model(spec)`` (e.g. a deploy form).

    Raises:
        ValueError: an image size that is not a positive H or (H, W).
    """
    h, w = parse_image_size(image_size)
    device = torch.device(device)
    model = (model if model is not None else build_model(spec)).eval().to(device=device, dtype=dtype)
    x = torch.randn(batch_size, spec.in_chans, h, w, device=device, dtype=dtype)
    with torch.inference_mode():
        for _ in range(2):  # warm-up outside the timer: first calls allocate and pick kernels
            model(x)
        from torch.utils import benchmark  # imported here: its import logs a CUDA warning on CPU-only machines

        timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return statistics.median(measurement.times) * 1e3


def fastest_latencies(
    models: Sequence[tuple[NetworkSpec, torch.nn.Module]],
    batch_size: int = 1,
    image_size: ImageSize = 224,
    device: str | torch.device = "cpu",
    min_run_time: float = 0.3,
    rounds: int = 3,
) -> list[float]:
    """Milliseconds of each ``(spec, model)`` (:func:`measure_latency`), measured in ``rounds``
    rounds over all of them and the fastest round kept: a shared machine's slow spells (seconds
    long, up to 1.7x on the project's CPU) fall on one round of a network, rarely on all."""
    times = [
        [
            measure_latency(spec, batch_size, image_size, device, model=model, min_run_time=min_run_time)
            for spec, model in models
        ]
        for _ in range(rounds)
    ]
    return [min(spec_times) for spec_times in zip(*times)]
