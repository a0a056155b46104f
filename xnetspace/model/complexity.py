"""What an operator costs, counted from its construction arguments alone (pycls's ``complexity()``).

Every operator class of :mod:`xnetspace.model` has a static ``cost(hw, ...)`` beside its
``__init__``, taking the map size (H, W) it runs at and the same arguments as its constructor, and
returning a :class:`Cost`; a module's cost is the sum of its parts' costs, written in the order
its constructor builds them. The walkers :mod:`xnetspace.cost` (params, FLOPs) and
:mod:`xnetspace.memory` (bytes) only sum these over a spec; nothing is built.

FLOPs are counted as fvcore counts them (``fvcore/nn/jit_handles.py``), one multiply-add = one
flop, by fvcore's operator kind, for one image in eval mode:

- conv: ``prod(weight.shape) * H_out * W_out``; matmul ``(.., n, k) @ (.., k, m)``: ``numel(a) * m``;
  linear: ``in * out``;
- batch_norm (eval): 2 per element; group_norm: 5 per element; adaptive_avg_pool2d: 1 per input
  element; elementwise ops, softmax, GELU, mean and the bicubic resize of position biases: 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

FLOAT_BYTES = 4  # float32, the builder's dtype

__all__ = ["FLOAT_BYTES", "Cost", "conv", "batch_norm", "group_norm", "adaptive_avg_pool", "matmul", "bmm", "linear"]


@dataclass
class Cost:
    """Params, FLOPs, BatchNorm buffers and activation memory of one operator (or of a whole part).

    - ``flops``: FLOPs by fvcore operator kind (``"conv"``, ``"matmul"``, ``"batch_norm"``,
      ``"group_norm"``, ``"adaptive_avg_pool2d"``, ``"linear"``), one image;
    - ``params``: parameter elements;
    - ``norms`` and ``norm_floats``: BatchNorm layers, and their running mean and variance
      elements (2 C per layer; each layer also holds one int64 ``num_batches_tracked``);
    - ``activations``: an upper bound on the float32 elements alive at once during one eval
      forward at batch 1 (:mod:`xnetspace.memory`); parts that run one after the other do not add
      (:meth:`times`), parts alive together do (``+``);
    - ``logits``: attention logits computed (heads x N x M): memory-bound work (bias add,
      softmax, the bias resize) that fvcore counts as 0 flops (:mod:`xnetspace.timing`).
    """

    flops: Counter = field(default_factory=Counter)
    params: int = 0
    norms: int = 0
    norm_floats: int = 0
    activations: int = 0
    logits: int = 0

    def __add__(self, other: Cost) -> Cost:
        flops = Counter(self.flops)
        flops.update(other.flops)
        return Cost(
            flops,
            self.params + other.params,
            self.norms + other.norms,
            self.norm_floats + other.norm_floats,
            self.activations + other.activations,
            self.logits + other.logits,
        )

    @property
    def model_bytes(self) -> int:
        """Bytes of the parameters and buffers: float32 parameters and BN running statistics,
        and one int64 ``num_batches_tracked`` per BN (exactly what a built network holds)."""
        return FLOAT_BYTES * (self.params + self.norm_floats) + 8 * self.norms

    def times(self, count: int) -> Cost:
        """``count`` copies run one after the other (a stage's blocks): every count multiplied,
        except ``activations`` (one copy's tensors are freed before the next runs)."""
        flops = Counter({kind: count * value for kind, value in self.flops.items()})
        return Cost(
            flops,
            count * self.params,
            count * self.norms,
            count * self.norm_floats,
            self.activations,
            count * self.logits,
        )


# -- fvcore's counts of the torch operators the modules call ---------------------------------------
def conv(c_in: int, c_out: int, kernel_size: int, n_out: int, groups: int = 1, bias: bool = True) -> Cost:
    """``nn.Conv2d(c_in, c_out, kernel_size, groups=groups, bias=bias)`` with ``n_out`` output pixels."""
    weight = c_out * (c_in // groups) * kernel_size * kernel_size
    return Cost(Counter(conv=weight * n_out), weight + (c_out if bias else 0))


def batch_norm(c: int, n: int) -> Cost:
    """``nn.BatchNorm2d(c)`` (eval) on ``n`` pixels: weight and bias, 2 C running floats."""
    return Cost(Counter(batch_norm=2 * c * n), 2 * c, norms=1, norm_floats=2 * c)


def group_norm(c: int, n: int) -> Cost:
    """``nn.GroupNorm(1, c)`` on ``n`` pixels."""
    return Cost(Counter(group_norm=5 * c * n), 2 * c)


def adaptive_avg_pool(c: int, n_in: int) -> Cost:
    """``adaptive_avg_pool2d`` of a (c, n_in pixels) map: fvcore counts one per input element."""
    return Cost(Counter(adaptive_avg_pool2d=c * n_in))


def matmul(flops: int) -> Cost:
    """Batched matmuls of ``flops`` multiply-adds in all (``numel(a) * m`` each)."""
    return Cost(Counter(matmul=flops))


def bmm(flops: int, bias: bool = False) -> Cost:
    """``torch.bmm`` (or ``torch.baddbmm`` with ``bias``, whose bias add counts 0) of ``flops``
    multiply-adds (``numel(a) * m``): the inference form's attention. fvcore has no handle for
    ``baddbmm``; :func:`xnetspace.cost.fvcore_flops` adds one with the same rule as ``bmm``."""
    return Cost(Counter({"baddbmm" if bias else "bmm": flops}))


def linear(c_in: int, c_out: int) -> Cost:
    """``nn.Linear(c_in, c_out)`` on one vector."""
    return Cost(Counter(linear=c_in * c_out), c_in * c_out + c_out)
