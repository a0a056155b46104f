"""Time a build and one forward will take, estimated from the spec before anything is built.

``xnetspace build`` refuses a spec whose ``build_model`` plus one eval forward at batch 1 would take
longer than a limit (:func:`check_time`), as it refuses one that would not fit in memory
(:mod:`xnetspace.memory`): a spec inside the documented bounds (16 stages of depth 256) can take
minutes with nothing on the screen. :func:`estimate_seconds` counts the two things that dominate:

- a cost per block, whatever its width: constructing a block's ~20 modules, initialising their
  small tensors, and the ~40 operator calls of its forward, each of which costs dispatch time
  however small its tensors. Measured on this machine now (:func:`measure_speed`): building two
  blocks of width 16 and running them in a chain over a 4x4 map, per block, the median of three
  such rounds (after one untimed block that loads the kernels; fewer rounds once 0.3 s have
  passed, so that a slow machine is not kept waiting by the measurement itself);
- arithmetic, divided by the machine's matrix-multiply rate measured now (a 512x512 float32
  matmul, repeated for 30 ms) times ``EFFICIENCY`` (convolutions, depthwise ones above all, run
  below the matmul rate): the forward's FLOPs (fvcore's count, :mod:`xnetspace.cost`), plus
  ``LOGIT_WORK`` per attention logit (``heads x N x M`` per block: the position-bias add, the
  softmax and the stage's bicubic resize of the bias are memory-bound work that fvcore counts as 0
  flops), plus ``PARAM_WORK`` per parameter (random initialisation at build time).

The constants were fitted, and the estimate checked, on this project's 2-core CPU while other
processes kept its cores busy (a stress test in another session), with a script (not kept) that
timed ``build_model`` plus one forward beside :func:`estimate_seconds` with a speed measured just
before. Estimate / measured build + forward, in seconds:

=================================  ======  =======  ============  =================
network (input)                    blocks  GFLOPs   1 thread      2 threads (busy)
=================================  ======  =======  ============  =================
16 stages, depth 4, width 16 (32)      64    0.003  0.37 / 0.53   0.29 / 0.49
16 stages, depth 32, width 16 (32)    512    0.023  2.55 / 2.69   2.00 / 2.56
16 stages, depth 64, width 16 (32)   1024    0.045  4.21 / 6.33   4.53 / 5.88
transxnet_t (224)                      18    1.85   0.36 / 0.45   0.21 / 0.32
transxnet_t (512)                      18    10.8   1.33 / 1.03   0.68 / 0.63
transxnet_b (224)                      33    8.47   1.34 / 1.15   0.69 / 0.99
two wide stages, 256 and 512 (448)      4    126    13.7 / 10.2   6.90 / 9.80
attention only, 4 heads (224)           2    1.39   1.85 / 0.94   10.5 / 2.44
attention only, 4 heads (256)           2    2.32   3.54 / 2.38   15.9 / 3.26
MS-FFN heavy, mlp_ratio 8 (448)         2    2.35   0.29 / 0.24   0.30 / 1.19
=================================  ======  =======  ============  =================

That is 0.7 to 2.0 times the measured time with one thread. With two threads (torch's default
here) it was 0.6 to 1.1 times in seven cases; 0.26 once, when another process's burst slowed the
measured run; and 4.3 and 4.9 times when the burst fell on the speed measurement (a block then
measured 296 ms instead of 4, the matmul 8 GFLOP/s instead of 100). Such bursts on busy cores
also came in the first seconds of fresh processes. So a busy machine may refuse a build that
would have taken a fifth of the limit, and ``--force`` goes on. The issue's case, 16 stages of
depth 256 and width 16 at 32x32, took 22.8 s to build and 102.6 s to run there (two threads, busy
cores); its estimate is 4,096 times the block time, 16 s at 4 ms (then it is built, after the
table) to 20 minutes at 300 ms (then it is refused). It is a guard against minutes of silence, not a benchmark.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from .cost import ImageSize, count_flops, count_params, network_cost, parse_image_size
from .spec import NetworkSpec, SpecError, StageSpec

__all__ = ["Speed", "TimeLimitError", "measure_speed", "estimate_seconds", "check_time", "TIME_LIMIT"]

TIME_LIMIT = 60.0  # seconds of build + forward that `xnetspace build` accepts without --force
EFFICIENCY = 0.3  # convolution throughput / matmul throughput (fitted; see the module docstring)
LOGIT_WORK = 150  # flop-equivalents per attention logit (bias add, softmax, bicubic bias resize)
PARAM_WORK = 150  # flop-equivalents per parameter initialised
MEASURE_SECONDS = 0.3  # after this, measure_speed takes no further block sample (at least one)


@dataclass(frozen=True)
class Speed:
    """This machine's speed now: ``flops_per_second`` of a float32 matmul and ``block_seconds``,
    the build and forward of a one-block network."""

    flops_per_second: float
    block_seconds: float


def measure_speed() -> Speed:
    """Measure :class:`Speed` now (about 0.1 s on an idle machine, at most about 1 s on a busy one;
    the module docstring says what is timed). The caller's random number generator is left as it
    was."""
    import torch

    from .model.block import TransXNetBlock

    a, b = torch.randn(512, 512), torch.randn(512, 512)
    a @ b  # the first call loads the kernels
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < 0.03:
        a @ b
        count += 1
    rate = count * 512**3 / elapsed  # multiply-adds per second: fvcore counts one as one flop
    stage = StageSpec(depth=1, embed_dim=16)  # 8 attention channels, 1 head, no reduction
    x, bias = torch.randn(1, 16, 4, 4), torch.zeros(1, 1, 16, 16)
    samples: list[float] = []
    state = torch.random.get_rng_state()  # the timing must not change the caller's random numbers
    try:
        begin = time.perf_counter()
        with torch.inference_mode():
            _chain([TransXNetBlock(stage).eval()], x, bias)  # loads the kernels; not counted
        while len(samples) < 3 and (not samples or time.perf_counter() - begin < MEASURE_SECONDS):
            start = time.perf_counter()
            blocks = [TransXNetBlock(stage).eval() for _ in range(2)]
            with torch.inference_mode():
                _chain(blocks, x, bias)
            samples.append((time.perf_counter() - start) / len(blocks))
    finally:
        torch.random.set_rng_state(state)
    return Speed(rate, statistics.median(samples))


def _chain(blocks: list, x, bias):
    for block in blocks:
        x = block(x, bias)
    return x


def _logits(spec: NetworkSpec, size: tuple[int, int]) -> int:
    """Attention logits of one forward: ``heads x N x M`` per block, plus the stage's resize of
    its position bias (the same count once more per stage): each OSRA's and stage's ``cost()``."""
    return sum(cost.logits for _, _, cost in network_cost(spec, size))


def estimate_seconds(spec: NetworkSpec, image_size: ImageSize, speed: Speed) -> float:
    """Seconds of ``build_model(spec)`` plus one eval forward at ``image_size`` on a machine of
    ``speed`` (module docstring). Counts from the spec alone, in microseconds.

    Raises:
        ValueError: an image size that is not one or two positive integers.
    """
    size = parse_image_size(image_size)
    blocks = sum(spec.depths)
    work = count_flops(spec, size) + LOGIT_WORK * _logits(spec, size) + PARAM_WORK * count_params(spec)
    return blocks * speed.block_seconds + work / (speed.flops_per_second * EFFICIENCY)


class TimeLimitError(SpecError):
    """A build and forward estimated to take longer than the limit; the message gives the
    estimate, the limit and how to go on anyway."""


def check_time(
    spec: NetworkSpec, image_size: ImageSize, limit: float = TIME_LIMIT, speed: Speed | None = None
) -> float:
    """The estimated seconds of building ``spec`` and one forward at ``image_size`` when they are
    at most ``limit`` (``speed``: default :func:`measure_speed` now).

    Raises:
        TimeLimitError: the estimate exceeds ``limit``; the message gives both.
    """
    speed = speed or measure_speed()
    seconds = estimate_seconds(spec, image_size, speed)
    if seconds > limit:
        h, w = parse_image_size(image_size)
        raise TimeLimitError(
            f"network {spec.name!r} ({sum(spec.depths):,} blocks, {count_flops(spec, (h, w)) / 1e9:.3g} GFLOPs "
            f"at {h}x{w}) would take about {seconds:,.0f} s to build and run once on this machine "
            f"(measured now: {speed.block_seconds * 1e3:.1f} ms per block, matmul "
            f"{speed.flops_per_second / 1e9:.1f} GFLOP/s), more than the {limit:g} s limit; make it "
            f"smaller (depth, embed_dim, image size) or force it (--force)"
        )
    return seconds
