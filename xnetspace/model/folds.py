"""The exact folds every operator's inference form is built with, and the base of those forms.

Each operator module holds its own inference form (``Fused*``) and the ``fuse()`` that builds it
from the training form (timm's ``reparameterize_model`` convention); the folds they share are
here. ``TransXNet.reparameterize()`` (or ``timm.utils.reparameterize_model``) replaces every
module by its inference form, which computes the same eval-mode function with fewer, larger
operators. The paper names its own speed limit (arXiv 2310.19380, section V): "potentially
inefficient operators (e.g. multi-kernel depthwise convolutions in MS-FFN)". What is folded:

- every BN next to a convolution is folded into it where that is exact: after any conv (stem,
  downsamples, IDConv's proj, OSR, fc2) or before an unpadded 1x1 conv (STE's ``bn_dw`` and
  ``bn_reduce``, MS-FFN's ``norm``). A BN before a zero-padded conv (MS-FFN's ``fc1_bn``, OSR's
  last BN) is not exact at the borders (its shift would reach the padding) and stays a per-channel
  affine map;
- MS-FFN's depthwise kernels (1, 3, 5, 7), zero-padded to the largest and centred, plus its
  identity, become one depthwise conv; DPE's and OSRA's local-refinement residuals go into the
  centre tap of their kernels;
- the layer scales, linear, go into the last conv before them (LS2 into fc2; LS1 into STE's last
  conv, its weight also scaling the ``+ Y`` shortcut);
- IDConv's proj runs once on the K x K pooled map and the global mean together (it is pointwise);
- OSRA's attention uses ``scaled_dot_product_attention`` with the position bias as additive mask
  off the CPU; on the CPU, where SDPA measured slower for these shapes (``benchmarks/bench_model.py
  --attention``), one ``baddbmm`` (scale and bias fused) then ``bmm`` with no transposed copy;
- each stage caches its position bias resized per input size.

Every inference module is eval-only (:class:`InferenceOnly`: ``train()`` raises; dropout,
drop-path and BN statistics are gone); gradients still flow, e.g. for saliency maps. State-dict
keys differ from the training form: save and load the training form, then re-parameterise.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .kernels import merged_depthwise_kernel

__all__ = [
    "bn_scale_shift",
    "fold_bn",
    "conv_then_affine",
    "affine_then_conv",
    "merge_depthwise",
    "affine_param",
    "InferenceOnly",
    "Fusable",
    "FastForm",
]


# -- the forms' interface: what TransXNet switches, by type ----------------------------------------
class FastForm:
    """Mixin of an operator with a fast training form: ``fast = True`` computes the same function
    (train mode included) with the same parameters and fewer or cheaper kernels.
    ``TransXNet.set_train_form`` sets it on every module that is a ``FastForm``."""

    fast: bool


class Fusable:
    """Mixin of a training-form module with an inference form: ``fuse()`` returns it (an eval-only
    module computing the same eval-mode function; timm's ``reparameterize_model`` calls ``fuse``
    too). ``TransXNet.reparameterize`` fuses every part that is ``Fusable``."""

    def fuse(self) -> nn.Module:
        """The inference form of this module (new modules; this one is left as it is)."""
        raise NotImplementedError(f"{type(self).__name__} has no inference form")


# -- exact folds -----------------------------------------------------------------------------------
def _conv_like(conv: nn.Conv2d, weight: Tensor, bias: Tensor) -> nn.Conv2d:
    """A copy of ``conv`` (stride, padding, groups) with new weight and a bias."""
    out = copy.deepcopy(conv)
    out.weight = nn.Parameter(weight.detach().clone())
    out.bias = nn.Parameter(bias.detach().clone())
    return out


def _bias(conv: nn.Conv2d) -> Tensor:
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BN (running statistics) as ``scale * x + shift``, each (C,)."""
    assert bn.running_var is not None and bn.running_mean is not None  # BNs here track statistics
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    return scale, shift if bn.bias is None else shift + bn.bias


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one conv (eval-mode BN; torch's ``fuse_conv_bn_weights``). Exact."""
    assert bn.running_mean is not None and bn.running_var is not None  # BNs here track statistics
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return _conv_like(conv, weight, bias)


@torch.no_grad()
def conv_then_affine(conv: nn.Conv2d, scale: Tensor, shift: Tensor) -> nn.Conv2d:
    """``scale * conv(x) + shift`` (per output channel, (C_out,) each) as one conv. Exact."""
    return _conv_like(conv, conv.weight * scale.reshape(-1, 1, 1, 1), _bias(conv) * scale + shift)


@torch.no_grad()
def affine_then_conv(scale: Tensor, shift: Tensor, conv: nn.Conv2d) -> nn.Conv2d:
    """``conv(scale * x + shift)`` (per input channel, (C_in,) each) as one conv.

    Raises:
        ValueError: ``conv`` is not a dense, unpadded 1x1 conv; for any other conv the shift
            would also reach the zero padding (or mix across groups) and the fold is not exact.
    """
    if conv.kernel_size != (1, 1) or conv.groups != 1 or tuple(conv.padding) != (0, 0):
        raise ValueError(f"an affine map folds exactly only into a dense unpadded 1x1 conv, not {conv}")
    weight = conv.weight * scale.reshape(1, -1, 1, 1)
    return _conv_like(conv, weight, _bias(conv) + conv.weight.flatten(1) @ shift)


@torch.no_grad()
def merge_depthwise(convs: Sequence[nn.Conv2d], identity: bool = False) -> nn.Conv2d:
    """Depthwise convs on consecutive channel groups (outputs concatenated), plus ``x`` when
    ``identity``, as one depthwise conv of the largest kernel K, padding K // 2.

    Exact: a k x k kernel zero-padded to K x K and centred reads the same taps under the same zero
    padding, and the identity is a 1 in the centre tap. Shapes: (B, sum C_i, H, W) -> same.

    Raises:
        ValueError: a conv that is not depthwise with stride 1 and padding k // 2 (odd k).
    """
    for c in convs:
        k = c.kernel_size[0]
        if (
            c.groups != c.in_channels
            or c.out_channels != c.in_channels
            or c.stride != (1, 1)
            or c.kernel_size != (k, k)
            or k % 2 == 0
            or tuple(c.padding) != (k // 2, k // 2)
        ):
            raise ValueError(f"merge_depthwise needs odd-kernel depthwise convs, stride 1, padding k//2: {c}")
    weight = merged_depthwise_kernel([c.weight for c in convs], identity)
    size = weight.shape[-1]
    ref = convs[0].weight
    out = nn.Conv2d(
        len(weight), len(weight), size, padding=size // 2, groups=len(weight), device=ref.device, dtype=ref.dtype
    )
    assert out.bias is not None  # nn.Conv2d's default bias=True
    out.weight.copy_(weight)
    out.bias.copy_(torch.cat([_bias(c) for c in convs]))
    return out


def affine_param(values: Tensor) -> nn.Parameter:
    """(C,) -> (C, 1, 1) parameter that broadcasts over (B, C, H, W) in either memory format."""
    return nn.Parameter(values.detach().reshape(-1, 1, 1).clone())


def _layout(part: nn.Module | Tensor | None) -> object:
    """State-dict keys and shapes of a module (a tensor's shape; None for None)."""
    if isinstance(part, nn.Module):
        return {key: tuple(value.shape) for key, value in part.state_dict().items()}
    return None if part is None else tuple(part.shape)


_Form = TypeVar("_Form", bound="InferenceOnly")


# -- the inference forms' base ---------------------------------------------------------------------
class InferenceOnly(nn.Module):
    """Base of the re-parameterised modules: always in eval mode.

    Raises:
        RuntimeError: on ``train()``/``train(True)``: the folds assume eval mode (BN running
            statistics, no dropout or drop-path), so the training form must be trained instead.
    """

    def take(self: _Form, **parts: nn.Module | Tensor | None) -> _Form:
        """Put the folded ``parts`` in place of this module's own (built from its constructor's
        arguments alone) and return ``self``, in eval mode: how each ``fuse()`` fills its inference
        form, so that a fused module and one built directly from a spec hold the same state-dict
        keys and shapes, and load each other's checkpoints.

        Raises:
            ValueError: a part whose state-dict keys or shapes differ from those of the part it
                replaces (the direct build and the fold disagree; nothing is replaced silently).
        """
        for name, part in parts.items():
            built, folded = _layout(getattr(self, name)), _layout(part)
            if built != folded:
                raise ValueError(f"{type(self).__name__}.{name}: folded {folded} but built {built}")
            setattr(self, name, part)
        return self.eval()

    def train(self: _Form, mode: bool = True) -> _Form:
        if mode:
            raise RuntimeError(
                f"{type(self).__name__} is part of a re-parameterised (inference-only) TransXNet and "
                "cannot train; train the training form (build_model / load_checkpoint) and call "
                "reparameterize() afterwards"
            )
        return super().train(False)
