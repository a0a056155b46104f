"""TransXNet network compiled from a :class:`~xnetspace.spec.NetworkSpec`, with timm's model interface.

Paper: "TransXNet: Learning Both Global and Local Dynamics with a Dual Dynamic Token Mixer for
Visual Recognition", arXiv 2310.19380, section III and Fig. 2. Original code: github.com/LMMMEng/TransXNet.

Layout (timm style): ``stem`` -> ``stages.{i}`` (each owns its ``downsample``, its relative
position bias ``pos_bias`` and its ``blocks.{j}``) -> ``head`` (GN -> global average pool -> fc).
The parts are the operator modules of :mod:`xnetspace.model`; this module wires them, switches
the training forms (:meth:`TransXNet.set_train_form`) and the inference form
(:meth:`TransXNet.reparameterize`), and compiles a spec (:func:`build_model`). Release checkpoints
map onto it through :func:`xnetspace.release.convert_official_state_dict`; the timm registrations
live in :mod:`xnetspace.timm_models`. The network scripts (``torch.jit.script``) and traces
(``torch.fx``, e.g. torchvision's ``create_feature_extractor``) like timm's own models.
"""

# No ``from __future__ import annotations`` here: FX writes the forward's annotations into the code
# it generates, and the string "Tensor" would not script (timm's fx + TorchScript test).
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch
from timm.layers import SelectAdaptivePool2d, calculate_drop_path_rates, trunc_normal_
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from ..memory_limit import MemoryEstimate, refuse_over_memory
from ..spec import NetworkSpec, resolve_spec
from .block import FusedStage, TransXNetStage
from .complexity import Cost
from .folds import FastForm, Fusable
from .head import head, head_cost, head_pool
from .stem import Stem

__all__ = ["TransXNet", "build_model", "TRAIN_FORMS", "FORMS"]

TrainForm = Literal["reference", "fast"]
TRAIN_FORMS: tuple[str, ...] = get_args(TrainForm)  # ("reference", "fast")
Form = Literal["reference", "fast", "fused"]
FORMS: tuple[str, ...] = get_args(Form)  # the two training forms and the inference form


class TransXNet(nn.Module):
    """TransXNet (paper section III, Fig. 2) built from a spec, with timm's model interface.

    Args:
        spec: the architecture. ``overrides`` replace spec fields (``num_classes``, ``in_chans``,
            ``drop_path_rate``, ...) and are validated like the spec itself.
        global_pool: the head's pooling, timm's ``SelectAdaptivePool2d`` type (``"avg"``, ``"max"``,
            ``"avgmax"``, ...; ``""``: none, the head then returns the normed map). Not part of the
            spec: it changes no weight.
        form: ``"reference"`` (the release's computation), ``"fast"`` (the same function with
            cheaper kernels, :meth:`set_train_form`) or ``"fused"``: the inference form built
            directly (what :meth:`reparameterize` gives, with the same state-dict keys and shapes,
            so a saved re-parameterised network loads into it; timm's ``inference_mode=True``).

    Shapes: ``forward`` (B, in_chans, H, W) -> (B, num_classes) logits (or (B, C_last) pooled
    pre-logits when ``num_classes == 0``; (B, C_last, h, w) with ``global_pool=""`` too); any
    H, W >= 1. ``forward_features`` returns the last stage's map (B, C_last, ceil(H/2^(n+1)), ...).

    Raises:
        pydantic.ValidationError: when ``spec`` with ``overrides`` is not a valid spec.
        ValueError: an unknown ``global_pool`` (timm's message), or ``global_pool=""`` with
            ``num_classes > 0`` (a linear layer needs a pooled vector); ``form`` not in :data:`FORMS`.
    """

    __jit_unused_properties__ = ["is_reparameterized", "train_form"]  # noqa: RUF012 - the list TorchScript reads; not scriptable (isinstance of mixins); not needed there

    def __init__(self, spec: NetworkSpec, global_pool: str = "avg", form: str = "reference", **overrides: Any):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {str(form)[:80]!r}")
        if overrides:
            spec = NetworkSpec.model_validate({**spec.model_dump(), **overrides})
        self.spec = spec
        self.num_classes = spec.num_classes
        self.in_chans = spec.in_chans
        self.drop_rate = spec.drop_rate
        self.grad_checkpointing = False

        fused = form == "fused"
        stem = Stem.fused if fused else Stem
        self.stem: nn.Module = stem(spec.in_chans, spec.embed_dims[0], spec.stem_stride)
        # One rate per block: timm's annotation also covers the per-stage lists it gives for a list of depths.
        dp_rates = cast(list[float], calculate_drop_path_rates(spec.drop_path_rate, sum(spec.depths)))
        stages: list[nn.Module] = []
        self.feature_info, in_chs = [], None
        for i, stage in enumerate(spec.stages):
            first = sum(spec.depths[:i])
            layer_scale = spec.layer_scale_init_value
            if fused:
                stages.append(FusedStage(in_chs, stage, spec.pos_bias_shape(i), layer_scale is not None))
            else:
                rates = dp_rates[first : first + stage.depth]
                stages.append(TransXNetStage(in_chs, stage, spec.pos_bias_shape(i), rates, spec.drop_rate, layer_scale))
            in_chs = stage.embed_dim
            self.feature_info.append(dict(num_chs=in_chs, reduction=spec.stem_stride * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        assert in_chs is not None  # a spec has at least one stage

        self.num_features = self.head_hidden_size = in_chs
        self.head = head(in_chs, spec.num_classes, global_pool)
        self.apply(self._init_weights)
        if form == "fast":
            self.set_train_form("fast")
        elif fused:
            self.eval()  # inference-only, as reparameterize() leaves it

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Release init: conv/linear weights truncated normal (std 0.02), biases 0, norms 1/0.
        # IDConv banks, layer scales and position biases initialise themselves.
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- cost ---------------------------------------------------------------------------------------
    @staticmethod
    def cost(
        spec: NetworkSpec, image_size: tuple[int, int], form: str = "reference"
    ) -> list[tuple[str, tuple[int, int], Cost]]:
        """``(name, map size, cost)`` of each part, in forward order (``stem``, ``stage1``..
        ``stageN``, ``head``), for one (in_chans, H, W) image of ``image_size`` (H, W) pixels,
        without building anything: the walk of :meth:`__init__`, beside it (pycls's
        ``complexity()``). The map size is the part's output (for the head: its input). FLOPs as
        fvcore counts them (:mod:`.complexity`); :mod:`xnetspace.cost` reports them.

        ``form``: ``"reference"`` and ``"fast"`` share one count (the same parameters and function;
        the fast form's kernels are cheaper, not fewer flops of the function); ``"fused"`` counts
        the inference form (folded BNs and layer scales, merged kernels; activations not bounded).

        Raises:
            ValueError: ``form`` not in :data:`FORMS`.
        """
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {str(form)[:80]!r}")
        fused, ls = form == "fused", spec.layer_scale_init_value
        sizes = spec.stage_sizes(image_size)
        dim0 = spec.embed_dims[0]
        if fused:
            stem = Stem.fused_cost(sizes[0], spec.in_chans, dim0, spec.stem_stride)
        else:
            stem = Stem.cost(image_size, sizes[0], spec.in_chans, dim0, spec.stem_stride)
        parts = [("stem", sizes[0], stem)]
        in_chs, in_hw = None, sizes[0]
        for i, (stage, hw) in enumerate(zip(spec.stages, sizes)):
            if fused:
                cost = FusedStage.cost(hw, in_chs, stage, spec.pos_bias_shape(i), ls is not None)
            else:
                cost = TransXNetStage.cost(hw, in_hw, in_chs, stage, spec.pos_bias_shape(i), ls)
            parts.append((f"stage{i + 1}", hw, cost))
            in_chs, in_hw = stage.embed_dim, hw
        assert in_chs is not None  # a spec has at least one stage
        parts.append(("head", sizes[-1], head_cost(sizes[-1], in_chs, spec.num_classes)))
        return parts

    # -- inference form ---------------------------------------------------------------------------
    @torch.jit.ignore
    def reparameterize(self) -> "TransXNet":
        """Switch to the inference form in place (each operator's ``fuse()``; the folds are
        :mod:`xnetspace.model.folds`) and return ``self``.

        The network then computes the same eval-mode function (within float rounding, checked to
        1e-4 relative) with fewer, larger operators. A second call does nothing;
        ``timm.utils.reparameterize_model(model)`` gives the same network. Afterwards ``train()``
        raises ``RuntimeError`` and the state-dict keys differ: save the training form.
        """
        self.eval()
        if isinstance(self.stem, Fusable):
            self.stem = self.stem.fuse()
        for i, stage in enumerate(self.stages):
            if isinstance(stage, Fusable):
                self.stages[i] = stage.fuse()
        return self

    @property
    def is_reparameterized(self) -> bool:
        """True once :meth:`reparameterize` (or timm's ``reparameterize_model``) has run."""
        return not any(isinstance(stage, Fusable) for stage in self.stages)

    # -- training forms ---------------------------------------------------------------------------
    @torch.jit.ignore
    def set_train_form(self, form: str = "fast") -> "TransXNet":
        """Switch between the two training forms in place and return ``self``; either way back.

        ``"reference"`` (what :func:`build_model` gives) runs every operator as the release does.
        ``"fast"`` computes the same function, in train and eval mode, with fewer or cheaper
        operators: DPE's, LR's and MS-FFN's residuals and MS-FFN's four depthwise branches go into
        one kernel per conv, assembled from the same parameters at every step (differentiable, so
        gradients reach them as before); depthwise convs on small maps run as batched matmuls and
        dense 1x1 convs as matmuls (:mod:`xnetspace.model.kernels`); the layer scales are multiply-adds; and
        OSRA's attention is one ``baddbmm`` + ``bmm``. Contiguous (NCHW) inputs take the matmul
        paths. Parameters and state-dict keys are the same in both forms, so
        checkpoints and optimizers carry over; outputs and gradients agree within float rounding
        (tests/test_train_form.py). Proxy training uses the fast form (``TrainConfig.train_form``).

        Raises:
            ValueError: ``form`` not in :data:`TRAIN_FORMS`.
            RuntimeError: the network is re-parameterised (inference only; it has no training form).
        """
        if form not in TRAIN_FORMS:
            raise ValueError(f"train form must be one of {', '.join(TRAIN_FORMS)}, got {str(form)[:80]!r}")
        if self.is_reparameterized:
            raise RuntimeError("a re-parameterised TransXNet is inference-only and has no training form")
        for module in self.modules():
            if isinstance(module, FastForm):
                module.fast = form == "fast"
        return self

    @property
    def train_form(self) -> str:
        """``"fast"`` or ``"reference"``: the form :meth:`set_train_form` last set."""
        return "fast" if any(isinstance(m, FastForm) and m.fast for m in self.modules()) else "reference"

    # -- timm interface ---------------------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable
        for stage in self.stages:
            # torch types Module.__setattr__ for tensors and modules; any value may be set
            stage.grad_checkpointing = enable  # type: ignore[assignment]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.(downsample|pos_bias)", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^head\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return cast(nn.Module, self.head.fc)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final linear layer (``num_classes == 0``: pooled pre-logits) and, when
        given, the pooling (``""``: none, as in timm).

        Raises:
            ValueError: ``global_pool=""`` with ``num_classes > 0``, or an unknown pool type.
        """
        if global_pool is not None:
            self.head.global_pool = head_pool(global_pool, num_classes)
        elif num_classes and cast(SelectAdaptivePool2d, self.head.global_pool).is_identity():
            raise ValueError(f"num_classes={num_classes} needs a pooled head; pass global_pool='avg' too")
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            self._init_weights(self.head.fc)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (B, C_i, H/2^(i+2), W/2^(i+2)) for the ``indices`` taken (timm API).

        ``norm`` is accepted for the timm interface; TransXNet has no per-stage output norms.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (and head) that the ``indices`` taken do not need (timm API)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1  # the head's norm is sized for the last stage
        self.stages = self.stages[: max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.head.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> last stage map (B, C_last, h, w), before the head's norm."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C_last, h, w) -> GN -> pool -> (B, C_last) pre-logits -> fc -> (B, num_classes)."""
        # torch types Module.__getattr__ as Tensor | Module; these are the head's submodules. The
        # ignores end their lines: TorchScript parses type comments.
        x = self.head.global_pool(self.head.norm(x))  # type: ignore[operator]
        return x if pre_logits else self.head.fc(x)  # type: ignore[operator]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(spec: NetworkSpec | Mapping[str, Any] | str | Path, force: bool = False, **overrides: Any) -> TransXNet:
    """Compile a spec into a :class:`TransXNet` with release-identical initialisation.

    Args:
        spec: a NetworkSpec, a mapping of its fields, a preset name (``"transxnet_t"``) or a
            spec file path.
        force: build even when the parameters would not fit in the memory available now.
        overrides: spec fields to replace, e.g. ``num_classes=10``; and ``global_pool`` (see
            :class:`TransXNet`).

    Raises:
        xnetspace.spec.SpecError: unknown preset or unreadable/invalid spec file.
        xnetspace.memory_limit.MemoryLimitError: (without ``force``) the network's parameters and
            buffers (counted by :meth:`TransXNet.cost`) would not fit in the memory available now
            (nothing is built).
        pydantic.ValidationError: an invalid spec mapping or override (nothing is built).
    """
    spec = resolve_spec(spec)
    fields = {k: v for k, v in overrides.items() if k in NetworkSpec.model_fields}
    if not force:  # refuse at once what the allocator would refuse after minutes of swapping
        checked = NetworkSpec.model_validate({**spec.model_dump(), **fields}) if fields else spec
        side = checked.image_size  # parameters and buffers do not depend on the input size
        total = sum((cost for _, _, cost in TransXNet.cost(checked, (side, side))), Cost())
        refuse_over_memory(MemoryEstimate(total.model_bytes), checked.name)
    return TransXNet(spec, **overrides)
