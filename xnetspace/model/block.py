"""The TransXNet block (paper section III, eq. 1) and the stage (Fig. 2), each with its inference form.

A block is DPE -> GN -> D-Mixer (LS1) -> GN -> MS-FFN (LS2) with residuals and drop-path; a stage
is an optional downsample, ``depth`` blocks, and the relative position bias P its blocks' OSRA
share (paper eq. 4). The operators are the modules beside this one (:mod:`.dpe`, :mod:`.mixer`,
:mod:`.ffn`, :mod:`.stem`); the block and stage only wire them, fold the layer scales in their
inference forms (:class:`FusedBlock`, :class:`FusedStage`, which caches P resized per input size)
and sum their costs.
"""

# No ``from __future__ import annotations`` here, as in :mod:`.network`: the block and stage are the
# modules FX traces through with the network (their annotations must be real types).
import copy
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch
import torch.fx
from timm.layers import DropPath
from timm.models import checkpoint
from torch import Tensor, nn

from ..spec import StageSpec
from . import complexity
from .complexity import Cost
from .convs import LayerScale
from .dpe import DPE
from .ffn import MSFFN, FusedMSFFN
from .folds import Fusable, InferenceOnly
from .mixer import DMixer, FusedDMixer
from .osra import resize_pos_bias
from .stem import Downsample

__all__ = ["TransXNetBlock", "FusedBlock", "TransXNetStage", "FusedStage"]

# torchvision's FX tracer (create_feature_extractor) keeps the call as one node: its size arithmetic
# on traced shapes cannot be traced. (timm's tracer knows it from register_notrace_function.)
torch.fx.wrap("resize_pos_bias")


class TransXNetBlock(nn.Module, Fusable):
    """One TransXNet block (paper eq. 1)::

        x = x + DPE(x)                                   # depthwise 7x7, bias (model.dpe.DPE)
        x = x + DropPath(LS1(D-Mixer(GN1(x), pos_bias)))
        x = x + DropPath(LS2(MS-FFN(GN2(x))))

    Shapes: (B, C, H, W) -> (B, C, H, W); ``pos_bias`` (1, h, N, M) already sized for this input.
    """

    def __init__(
        self,
        stage: StageSpec,
        drop_path: float = 0.0,
        drop_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
    ):
        super().__init__()
        dim = stage.embed_dim
        self.stage, self.layer_scale = stage, layer_scale_init_value is not None  # for fuse(); not in forward
        self.dpe = DPE(dim)
        self.norm1 = nn.GroupNorm(1, dim)
        self.mixer = DMixer(dim, **DMixer.knobs(stage))
        self.norm2 = nn.GroupNorm(1, dim)
        self.ffn = MSFFN(dim, **MSFFN.knobs(stage), drop=drop_rate)
        ls = layer_scale_init_value
        self.layer_scale1 = LayerScale(dim, ls) if ls is not None else nn.Identity()
        self.layer_scale2 = LayerScale(dim, ls) if ls is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, pos_bias: Tensor | None = None) -> Tensor:
        x = self.dpe(x)  # x + DPE(x)
        x = x + self.drop_path(self.layer_scale1(self.mixer(self.norm1(x), pos_bias)))
        return x + self.drop_path(self.layer_scale2(self.ffn(self.norm2(x))))

    def fuse(self) -> "FusedBlock":
        """Inference form (:class:`FusedBlock`): DPE's residual in its centre tap,
        LS1 folded into the D-Mixer, LS2 into MS-FFN's fc2; drop-path (identity in eval) dropped."""
        ls1, ls2 = (ls if isinstance(ls, LayerScale) else None for ls in (self.layer_scale1, self.layer_scale2))
        return FusedBlock(self.stage, self.layer_scale).take(
            dpe=self.dpe.fuse(),
            norm1=copy.deepcopy(self.norm1),
            mixer=self.mixer.fuse(ls1),
            norm2=copy.deepcopy(self.norm2),
            ffn=self.ffn.fuse(ls2),
        )

    @staticmethod
    def cost(hw: tuple[int, int], stage: StageSpec, layer_scale_init_value: float | None = 1e-5) -> Cost:
        """DPE, GN1, D-Mixer, GN2, MS-FFN (and the layer scales). Activations: the parts' plus the
        residual stream and its copies (8 C N)."""
        dim, n = stage.embed_dim, hw[0] * hw[1]
        cost = (
            DPE.cost(hw, dim)
            + complexity.group_norm(dim, n)
            + DMixer.cost(hw, dim, **DMixer.knobs(stage))
            + complexity.group_norm(dim, n)
            + MSFFN.cost(hw, dim, **MSFFN.knobs(stage))
        )
        if layer_scale_init_value is not None:
            cost += LayerScale.cost(hw, dim) + LayerScale.cost(hw, dim)
        cost.activations += 8 * dim * n
        return cost


class FusedBlock(InferenceOnly):
    """TransXNet block (paper eq. 1) for inference: ``x = DPE'(x)`` (residual in the centre tap),
    ``x = D-Mixer'(GN1(x), P, shortcut=x)`` (LS1 folded), ``x = x + MS-FFN'(GN2(x))`` (LS2 folded).
    Shapes: (B, C, H, W) -> same.
    """

    def __init__(self, stage: StageSpec, layer_scale: bool = True):
        super().__init__()
        dim = stage.embed_dim
        self.dpe = DPE.fused(dim)
        self.norm1 = nn.GroupNorm(1, dim)
        self.mixer = FusedDMixer(dim, **DMixer.knobs(stage), layer_scale=layer_scale)
        self.norm2 = nn.GroupNorm(1, dim)
        self.ffn = FusedMSFFN(dim, **MSFFN.knobs(stage))
        self.eval()

    @staticmethod
    def cost(hw: tuple[int, int], stage: StageSpec, layer_scale: bool = True, pos_bias: bool = True) -> Cost:
        """DPE (residual merged), GN1, the fused D-Mixer (LS1 folded), GN2, the fused MS-FFN (LS2 folded)."""
        dim, n = stage.embed_dim, hw[0] * hw[1]
        mixer = FusedDMixer.cost(hw, dim, **DMixer.knobs(stage), layer_scale=layer_scale, pos_bias=pos_bias)
        return (
            DPE.cost(hw, dim)
            + complexity.group_norm(dim, n)
            + mixer
            + complexity.group_norm(dim, n)
            + FusedMSFFN.cost(hw, dim, **MSFFN.knobs(stage))
        )

    def forward(self, x: Tensor, pos_bias: Tensor | None = None) -> Tensor:
        x = self.dpe(x)
        x = self.mixer(self.norm1(x), pos_bias, shortcut=x)
        return x + self.ffn(self.norm2(x))


class TransXNetStage(nn.Module, Fusable):
    """A stage: optional downsample (3x3 conv, stride 2, no bias -> BN), then ``depth`` blocks.

    Owns the stage's relative position bias ``pos_bias`` (1, h, N0, M0), sized for the spec's
    base image size, zero-initialised and shared by all its blocks (paper eq. 4, P). For an input
    whose (N, M) differ it is resized bicubically (``align_corners=False``) once per forward.
    Shapes: (B, C_in, 2H, 2W) -> (B, C, H, W) (or (B, C, H, W) -> same without downsample).
    """

    def __init__(
        self,
        in_chs: int | None,
        stage: StageSpec,
        pos_bias_shape: tuple[int, ...] | None,
        drop_path_rates: list[float],
        drop_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
    ):
        super().__init__()
        self.sr_ratio = stage.sr_ratio
        self.grad_checkpointing = False
        self.in_chs, self.stage, self.layer_scale = in_chs, stage, layer_scale_init_value is not None  # for fuse()
        self.downsample = Downsample(in_chs, stage.embed_dim) if in_chs else nn.Identity()
        self.pos_bias = nn.Parameter(torch.zeros(pos_bias_shape)) if pos_bias_shape else None
        self.blocks = nn.ModuleList(
            TransXNetBlock(stage, dp, drop_rate, layer_scale_init_value) for dp in drop_path_rates
        )

    def resized_pos_bias(self, height: int, width: int) -> Tensor | None:
        """Position bias (1, h, N, M) for an (height, width) map: M counts the tokens after OSR."""
        if self.pos_bias is None:
            return None
        return resize_pos_bias(self.pos_bias, height, width, self.sr_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        pos_bias = self.resized_pos_bias(x.shape[-2], x.shape[-1])
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, pos_bias)
            else:
                x = block(x, pos_bias)
        return x

    def fuse(self) -> nn.Module:
        """Inference form (:class:`FusedStage`): downsample's BN folded, blocks fused,
        the resized position bias cached per input size."""
        downsample = self.downsample.fuse() if isinstance(self.downsample, Fusable) else nn.Identity()
        blocks = nn.ModuleList(cast(TransXNetBlock, block).fuse() for block in self.blocks)
        pos_bias = None if self.pos_bias is None else self.pos_bias.detach().clone()
        fused = FusedStage(self.in_chs, self.stage, None if pos_bias is None else pos_bias.shape, self.layer_scale)
        return fused.take(downsample=downsample, pos_bias=pos_bias, blocks=blocks)

    @staticmethod
    def cost(
        hw: tuple[int, int],
        in_hw: tuple[int, int],
        in_chs: int | None,
        stage: StageSpec,
        pos_bias_shape: tuple[int, ...] | None,
        layer_scale_init_value: float | None = 1e-5,
    ) -> Cost:
        """The downsample (from an ``in_hw`` map of ``in_chs`` channels to ``hw``), the position bias
        and ``depth`` blocks. Activations: the stage's input map, one block's, and the resized
        position bias the stage keeps (1, h, N, M): as many floats as one block's logits, which
        are also computed once more for the resize."""
        cost = Cost(params=math.prod(pos_bias_shape) if pos_bias_shape else 0)
        if in_chs:
            cost += Downsample.cost(hw, in_chs, stage.embed_dim)
        block = TransXNetBlock.cost(hw, stage, layer_scale_init_value)
        cost += block.times(stage.depth)
        if pos_bias_shape:
            cost.activations += block.logits
            cost.logits += block.logits
        cost.activations += (in_chs or stage.embed_dim) * in_hw[0] * in_hw[1]
        return cost


class FusedStage(InferenceOnly):
    """A stage for inference: fused downsample, fused blocks, and the position bias (paper eq. 4, P)
    resized once per input size and cached (up to ``max_cached_sizes`` sizes; cleared by ``.to()``/``.half()``).

    Under ``torch.compile``/``torch.export`` a size not yet cached is resized in the graph instead.
    Shapes: (B, C_in, 2H, 2W) -> (B, C, H, W) (or same size without downsample).
    """

    max_cached_sizes = 8
    __jit_ignored_attributes__ = ["_pos_bias_cache"]  # noqa: RUF012 - the list TorchScript reads; a scripted stage resizes each call

    def __init__(
        self,
        in_chs: int | None,
        stage: StageSpec,
        pos_bias_shape: Sequence[int] | None,
        layer_scale: bool = True,
    ):
        super().__init__()
        self.sr_ratio = stage.sr_ratio
        self.grad_checkpointing = False  # kept for set_grad_checkpointing(); nothing to checkpoint
        self.downsample = Downsample.fused(in_chs, stage.embed_dim) if in_chs else nn.Identity()
        self.register_buffer("pos_bias", torch.zeros(tuple(pos_bias_shape)) if pos_bias_shape else None)
        self.blocks = nn.ModuleList(FusedBlock(stage, layer_scale) for _ in range(stage.depth))
        self._pos_bias_cache: OrderedDict[tuple[int, int], Tensor] = OrderedDict()
        self.eval()

    @staticmethod
    def cost(
        hw: tuple[int, int],
        in_chs: int | None,
        stage: StageSpec,
        pos_bias_shape: Sequence[int] | None,
        layer_scale: bool = True,
    ) -> Cost:
        """The fused downsample (at the (H, W) output map ``hw``) and ``depth`` fused blocks. The
        position bias is a buffer (resized once per input size, cached): no parameters."""
        cost = Downsample.fused_cost(hw, in_chs, stage.embed_dim) if in_chs else Cost()
        block = FusedBlock.cost(hw, stage, layer_scale, pos_bias=pos_bias_shape is not None)
        return cost + block.times(stage.depth)

    def _apply(self, fn, recurse: bool = True):
        self._pos_bias_cache.clear()  # cached tensors would keep the old device/dtype
        return super()._apply(fn, recurse)

    def resized_pos_bias(self, height: int, width: int) -> Tensor | None:
        """Position bias (1, h, N, M) for an (height, width) map, from the cache when it is there."""
        if self.pos_bias is None:
            return None
        if torch.jit.is_scripting():  # TorchScript has no OrderedDict of tensors: no cache
            return resize_pos_bias(self.pos_bias, height, width, self.sr_ratio)
        return self._cached_pos_bias(height, width)

    @torch.jit.unused
    def _cached_pos_bias(self, height: int, width: int) -> Tensor:
        key = (height, width)
        bias = self._pos_bias_cache.get(key)
        if bias is None:
            bias = resize_pos_bias(self.pos_bias, height, width, self.sr_ratio)
            if not torch.compiler.is_compiling():
                if len(self._pos_bias_cache) >= self.max_cached_sizes:
                    self._pos_bias_cache.popitem(last=False)
                self._pos_bias_cache[key] = bias
        return bias

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        pos_bias = self.resized_pos_bias(x.shape[-2], x.shape[-1])
        for block in self.blocks:
            x = block(x, pos_bias)
        return x
