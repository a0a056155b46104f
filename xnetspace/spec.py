"""Network specs: a TransXNet described stage by stage (Pydantic v2).

A :class:`NetworkSpec` is the single description of an architecture in xnetspace: the builder
(:func:`xnetspace.model.network.build_model`) compiles it into modules, the cost model
(:mod:`xnetspace.cost`) counts it without building anything, and the search samples it. Every
invalid spec is rejected here, with a message that names the stage, the field and the value, so a
bad spec never reaches torch.

Paper: "TransXNet: Learning Both Global and Local Dynamics with a Dual Dynamic Token Mixer for
Visual Recognition", arXiv 2310.19380, section III (the network) and Table I (the variants).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import SpecError
from .paths import output_file, write_atomically
from .text import SHORT_VALUE, read_text_file, short_repr, shorten, unique_pairs, yaml_mapping

__all__ = [
    "StageSpec",
    "KnobMeta",
    "stage_knob",
    "stage_knobs",
    "NetworkSpec",
    "SpecError",
    "format_validation_error",
    "load_spec",
    "save_spec",
    "load_preset",
    "preset_names",
    "resolve_spec",
    "Int",
    "Float",
    "Float32",
    "check_image_size",
    "MAX_STAGES",
    "MAX_DEPTH",
    "MAX_EMBED_DIM",
    "MAX_HEADS",
    "MAX_SR_RATIO",
    "MAX_IDCONV_GROUPS",
    "MAX_KERNEL_SIZE",
    "MAX_FFN_KERNELS",
    "MAX_MLP_RATIO",
    "MAX_IN_CHANS",
    "MAX_CLASSES",
    "MAX_IMAGE_SIZE",
]

STEM_STRIDES = (1, 2, 4)  # NetworkSpec.stem_stride; 4 is the paper's 7x7 stride-4 stem
STEM_STRIDE = 4  # the paper's, and the default

# Fixed parts of the architecture (release `models/transxnet.py`): they are not search knobs.
IDCONV_REDUCTION = 4  # IDConv's proj: c -> c // 4 -> G * c (paper eq. 3)
STE_REDUCTION = 8  # STE hidden width max(16, C // 8) (paper eq. 2)
STE_MIN_CHANNELS = 16
_WHOLE_TOL = 1e-6  # float products (0.5 * 48) must be whole within this, never rounded

# Upper bounds where larger values are physically meaningless for an image network (the paper's
# largest model, TransXNet-B, has depth 12, width 512, 8 heads, sr_ratio 8, kernels <= 7). They
# keep a hostile spec from asking for billions of blocks before the memory check can refuse it.
MAX_STAGES = 16  # each stage halves the map: 16 stages reduce 16384 px to 1 px
MAX_DEPTH = 256  # blocks per stage (ResNet-1202 has 200 per stage)
MAX_EMBED_DIM = 16384  # channels per stage
MAX_HEADS = 1024
MAX_SR_RATIO = 64
MAX_IDCONV_GROUPS = 64
MAX_KERNEL_SIZE = 31  # RepLKNet's largest depthwise kernel
MAX_FFN_KERNELS = 16  # MS-FFN branches
MAX_MLP_RATIO = 64.0
MAX_IN_CHANS = 4096  # hyperspectral images have a few hundred bands
MAX_CLASSES = 1_000_000
MAX_IMAGE_SIZE = 16384  # pixels per side, for image_size and for any input size
MAX_NAME_LENGTH = 100
MAX_PROBLEMS = 20  # problems listed in one validation message
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32 (torch.finfo(torch.float32).max)
# Seeds (every command's --seed, a recipe's train.seed): 0..2**31 - 1, so that the offsets added to
# them (1,000 per worker for a sampler, up to 10**9 for a joining machine; confirmation seeds) stay
# below 2**32, which numpy's and scikit-learn's generators need.
MAX_SEED = 2**31 - 1


def _whole(value: float) -> int | None:
    """``value`` as an int when it is whole up to float error, else None (never rounds)."""
    nearest = round(value)
    return nearest if abs(value - nearest) <= _WHOLE_TOL * max(1.0, abs(value)) else None


def check_image_size(size: tuple[int, int], what: str = "image size") -> tuple[int, int]:
    """``size`` (H, W) when both sides lie in 1..MAX_IMAGE_SIZE pixels.

    Raises:
        SpecError: a side out of range (the message gives the bound).
    """
    if not all(1 <= side <= MAX_IMAGE_SIZE for side in size):
        raise SpecError(
            f"{what} {shorten(str(tuple(size)))} is out of range: each side must be 1..{MAX_IMAGE_SIZE} pixels"
        )
    return size


def _at_most(limit: int, what: str):
    """A before-validator refusing a list longer than ``limit`` without validating its items
    (a million-entry list is refused at once, not after a million item checks)."""

    def check(items: Any) -> Any:
        if isinstance(items, (list, tuple)) and len(items) > limit:
            raise ValueError(f"{len(items):,} {what}; at most {limit} allowed")
        return items

    return check


def _odd_kernel(k: int) -> int:
    if k % 2 == 0:
        raise ValueError("kernel sizes must be odd (padding K // 2 keeps the size)")
    return k


def non_empty(message: str) -> AfterValidator:
    """A validator refusing an empty sequence with ``message``. (Not ``min_length``: pydantic's
    variadic tuples then also report a false length error whenever an item fails.)"""

    def check(items: tuple) -> tuple:
        if not items:
            raise ValueError(message)
        return items

    return AfterValidator(check)


def _not_bool(value: Any) -> Any:
    """Refuse ``true``/``false`` where a number is meant (pydantic reads them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"a number is needed, not the boolean {str(value).lower()}")
    return value


def _in_float32(value: float) -> float:
    """Refuse a float the network's float32 tensors cannot hold (torch fails on it only when building)."""
    if abs(value) > FLOAT32_MAX:
        raise ValueError(
            f"beyond float32's range (magnitude at most {FLOAT32_MAX:.7g}): the network's tensors are float32"
        )
    return value


# Numbers that refuse booleans: `depth: true` is a mistake, not a depth of 1. 4.0 stays a valid int
# and 4 a valid float, as pydantic's lax mode reads them. A spec's floats become float32 tensors.
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Float32 = Annotated[Float, AfterValidator(_in_float32)]
OddKernel = Annotated[Int, Field(ge=1, le=MAX_KERNEL_SIZE), AfterValidator(_odd_kernel)]


@dataclass(frozen=True)
class KnobMeta:
    """What a :class:`StageSpec` field is beyond its type, kept as the field's metadata
    (``Annotated[Int, KnobMeta(...)]``): the operators, ``xnetspace build``'s table and the search half
    read it from here rather than from lists of names kept in their own rooms.

    Attributes:
        operator: who reads it: ``"stage"`` (the stage's depth and width), ``"mixer"`` (the
            D-Mixer's split), or the operator whose ``knobs(stage)`` hands it to its constructor
            and ``cost()``: ``"idconv"``, ``"osra"``, ``"ffn"``, ``"ste"``.
        column: its header in the build table (None: not shown); ``"-"`` is shown when the stage
            has no channels for its operator (no OSRA or no IDConv).
        schedulable: a space may give it one value per stage from a schedule (``rules.schedules``).
        cost_free: it changes no operator's ``cost()`` (``tests/test_knobs.py`` checks that every
            other field changes some cost).
        since_release: added after specs' digests were published: left out of
            :meth:`NetworkSpec.digest` at its default, so older specs keep their digests.
    """

    operator: str
    column: str | None = None
    schedulable: bool = False
    cost_free: bool = False
    since_release: bool = False


def stage_knob(name: str) -> KnobMeta:
    """The :class:`KnobMeta` of :class:`StageSpec` field ``name``.

    Raises:
        KeyError: not a field of StageSpec.
    """
    return next(m for m in StageSpec.model_fields[name].metadata if isinstance(m, KnobMeta))


def stage_knobs(**where: Any) -> tuple[str, ...]:
    """StageSpec's fields, in declaration order, whose :class:`KnobMeta` has every attribute given
    (``stage_knobs(schedulable=True)``; no argument: all of them)."""
    return tuple(
        name
        for name in StageSpec.model_fields
        if all(getattr(stage_knob(name), key) == value for key, value in where.items())
    )


def _stem_stride(stride: int) -> int:
    if stride not in STEM_STRIDES:
        raise ValueError(f"the stem's stride must be one of {', '.join(map(str, STEM_STRIDES))}")
    return stride


StemStride = Annotated[Int, AfterValidator(_stem_stride)]


class StageSpec(BaseModel):
    """One stage of a TransXNet: ``depth`` blocks of width ``embed_dim`` (paper Table I, one column).

    Each block is DPE -> GN -> D-Mixer -> GN -> MS-FFN (paper eq. 1). The D-Mixer gives the first
    ``(1 - attn_ratio) * embed_dim`` channels to IDConv and the last ``attn_ratio * embed_dim``
    channels to OSRA (paper eq. 2, Table IX); 0 gives an IDConv-only mixer, 1 an OSRA-only one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    depth: Annotated[Int, KnobMeta("stage", "depth")] = Field(
        ge=1, le=MAX_DEPTH, description=f"number of blocks in the stage, 1..{MAX_DEPTH}"
    )
    embed_dim: Annotated[Int, KnobMeta("stage", "width")] = Field(
        ge=1, le=MAX_EMBED_DIM, description=f"channels C of the stage, 1..{MAX_EMBED_DIM}"
    )
    num_heads: Annotated[Int, KnobMeta("osra", "heads", schedulable=True)] = Field(
        1, ge=1, le=MAX_HEADS, description=f"OSRA heads, 1..{MAX_HEADS}; must divide the attention channels"
    )
    sr_ratio: Annotated[Int, KnobMeta("osra", "sr", schedulable=True)] = Field(
        1, ge=1, le=MAX_SR_RATIO, description=f"OSRA spatial-reduction ratio r, 1..{MAX_SR_RATIO} (1: none)"
    )
    idconv_groups: Annotated[Int, KnobMeta("idconv", "G", schedulable=True)] = Field(
        2,
        ge=1,
        le=MAX_IDCONV_GROUPS,
        description=f"IDConv attention groups G, 1..{MAX_IDCONV_GROUPS} (1: static DW conv)",
    )
    idconv_kernel_size: Annotated[OddKernel, KnobMeta("idconv")] = Field(
        7, description=f"IDConv kernel size K (odd, 1..{MAX_KERNEL_SIZE})"
    )
    mlp_ratio: Annotated[Float32, KnobMeta("ffn", "mlp", schedulable=True)] = Field(
        4.0, gt=0, le=MAX_MLP_RATIO, description=f"MS-FFN hidden width / embed_dim, finite, in (0, {MAX_MLP_RATIO:g}]"
    )
    ffn_kernel_sizes: Annotated[
        tuple[OddKernel, ...],
        non_empty("ffn_kernel_sizes needs at least one kernel size, e.g. [1, 3, 5, 7]"),
        KnobMeta("ffn"),
    ] = Field(
        (1, 3, 5, 7),
        description=f"MS-FFN depthwise kernel sizes (odd, 1..{MAX_KERNEL_SIZE}; 1..{MAX_FFN_KERNELS} of them)",
    )
    attn_ratio: Annotated[Float32, KnobMeta("mixer", "attn", schedulable=True)] = Field(
        0.5, ge=0, le=1, description="share of channels that go to OSRA, finite, in [0, 1]"
    )
    ste_kernel_size: Annotated[OddKernel, KnobMeta("ste", since_release=True)] = Field(
        3, description=f"STE's depthwise kernel size (odd, 1..{MAX_KERNEL_SIZE}; the paper's 3)"
    )

    _ffn_kernels_bounded = field_validator("ffn_kernel_sizes", mode="before")(
        _at_most(MAX_FFN_KERNELS, "ffn_kernel_sizes")
    )

    @model_validator(mode="after")
    def _channels_fit(self) -> StageSpec:
        # Cross-field rules: each names the fields involved and what would be valid instead.
        c = self.embed_dim
        attn = _whole(self.attn_ratio * c)
        if attn is None:
            raise ValueError(
                f"attn_ratio {self.attn_ratio} x embed_dim {c} = {self.attn_ratio * c:g} attention "
                f"channels, not a whole number; nearest valid attn_ratio: {self._nearest_ratios()}"
            )
        if 0 < attn and attn % self.num_heads:
            raise ValueError(
                f"attention channels {attn} (attn_ratio {self.attn_ratio} x embed_dim {c}) are not "
                f"divisible by num_heads {self.num_heads}; nearest valid attn_ratio: "
                f"{self._nearest_ratios()}"
            )
        local = c - attn
        if 0 < local < IDCONV_REDUCTION:
            raise ValueError(
                f"IDConv gets {local} channels (embed_dim {c}, attn_ratio {self.attn_ratio}); it "
                f"needs 0 or at least {IDCONV_REDUCTION} (its proj reduces by {IDCONV_REDUCTION}); "
                f"nearest valid attn_ratio: {self._nearest_ratios()}"
            )
        hidden = _whole(self.mlp_ratio * c)
        if hidden is None:
            lo, hi = math.floor(self.mlp_ratio * c), math.ceil(self.mlp_ratio * c)
            raise ValueError(
                f"mlp_ratio {self.mlp_ratio} x embed_dim {c} = {self.mlp_ratio * c:g} hidden "
                f"channels, not a whole number; use mlp_ratio {lo / c:.6g} ({lo} channels) or "
                f"{hi / c:.6g} ({hi} channels)"
            )
        if hidden < len(self.ffn_kernel_sizes):
            raise ValueError(
                f"MS-FFN hidden width {hidden} (mlp_ratio {self.mlp_ratio} x embed_dim {c}) is "
                f"smaller than the {len(self.ffn_kernel_sizes)} ffn_kernel_sizes: every branch "
                f"needs a channel; raise mlp_ratio to at least {len(self.ffn_kernel_sizes) / c:.6g}"
            )
        return self

    def _nearest_ratios(self) -> str:
        """The valid attention shares just below and above the requested one."""
        c = self.embed_dim
        valid = [
            a / c for a in range(c + 1) if (a == 0 or a % self.num_heads == 0) and not (0 < c - a < IDCONV_REDUCTION)
        ]
        below = [r for r in valid if r <= self.attn_ratio]
        above = [r for r in valid if r > self.attn_ratio]
        picks = ([max(below)] if below else []) + ([min(above)] if above else [])
        return " or ".join(f"{r:.6g} ({round(r * c)} channels)" for r in picks)

    # Derived widths, used by the builder and the cost model alike.
    @property
    def attn_channels(self) -> int:
        """Channels that go to OSRA (the second part of the split)."""
        return round(self.attn_ratio * self.embed_dim)

    @property
    def idconv_channels(self) -> int:
        """Channels that go to IDConv (the first part of the split)."""
        return self.embed_dim - self.attn_channels

    @property
    def hidden_dim(self) -> int:
        """MS-FFN hidden width ``embed_dim * mlp_ratio``."""
        return round(self.mlp_ratio * self.embed_dim)

    @property
    def ste_dim(self) -> int:
        """Hidden width of the squeezed token enhancer, ``max(16, C // 8)``."""
        return max(STE_MIN_CHANNELS, self.embed_dim // STE_REDUCTION)


class NetworkSpec(BaseModel):
    """A whole TransXNet: stem, ``len(stages)`` stages with a downsample between each, and a head.

    Resolution is ``ceil(H / stem_stride)`` after the stem (``stem_stride`` 4: the paper's 7x7
    stride-4 stem; 2 or 1 for small images, as CIFAR ResNets and timm's byobnet ``stem_stride``
    downsample less) and halves (rounding up) at every following stage.
    ``image_size`` is the base image size the per-stage position biases are sized for (224 in the
    paper); other input sizes resize them bicubically, so it does not limit the input size.
    ``drop_rate`` is MS-FFN's dropout (the release's meaning); ``drop_path_rate`` is stochastic
    depth, rising linearly from 0 at the first block to this value at the last (paper IV-A).

    Raises:
        pydantic.ValidationError: on any invalid field or combination, naming the stage, field and
            value (``format_validation_error`` turns it into a short paragraph).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(
        "custom",
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description=f"a label: 1..{MAX_NAME_LENGTH} printable characters",
    )
    stages: Annotated[tuple[StageSpec, ...], non_empty("a network needs at least one stage")] = Field(
        description=f"the stages, 1..{MAX_STAGES} of them"
    )
    in_chans: Int = Field(3, ge=1, le=MAX_IN_CHANS, description=f"input channels, 1..{MAX_IN_CHANS}")
    num_classes: Int = Field(
        1000,
        ge=0,
        le=MAX_CLASSES,
        description=f"classes, 0..{MAX_CLASSES:,}; 0: no classifier, the head returns pre-logits",
    )
    image_size: Int = Field(
        224, ge=1, le=MAX_IMAGE_SIZE, description=f"base image size of the position biases, 1..{MAX_IMAGE_SIZE} pixels"
    )
    stem_stride: StemStride = Field(
        STEM_STRIDE, description="the stem's stride: 4 (the paper's 7x7 stem), 2 or 1 (3x3) for small images"
    )
    drop_rate: Float32 = Field(0.0, ge=0, lt=1, description="MS-FFN dropout, in [0, 1)")
    drop_path_rate: Float32 = Field(0.0, ge=0, lt=1, description="stochastic depth at the last block, in [0, 1)")
    layer_scale_init_value: Float32 | None = Field(
        1e-5, description="finite, within float32's range; None: no layer scale"
    )

    _stages_bounded = field_validator("stages", mode="before")(_at_most(MAX_STAGES, "stages"))

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str) -> str:
        # The name is printed in tables and logs: no control characters (terminal escapes).
        if not name.isprintable():
            raise ValueError("the name must be printable characters only (no newlines or control codes)")
        return name

    # -- convenient views -------------------------------------------------------------------------
    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def embed_dims(self) -> tuple[int, ...]:
        return tuple(s.embed_dim for s in self.stages)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stage_sizes(self, image_size: int | tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map (H, W) of every stage for an input of ``image_size`` (int or (H, W))."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        h, w = math.ceil(h / self.stem_stride), math.ceil(w / self.stem_stride)
        sizes = []
        for _ in self.stages:
            sizes.append((h, w))
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return sizes

    def pos_bias_shape(self, index: int) -> tuple[int, int, int, int] | None:
        """Shape (1, heads, N, M) of stage ``index``'s position bias at ``image_size``; None
        when the stage has no attention. M uses ceil(H / r), as the release sizes it."""
        stage = self.stages[index]
        if stage.attn_channels == 0:
            return None
        h, w = self.stage_sizes(self.image_size)[index]
        r = stage.sr_ratio
        return (1, stage.num_heads, h * w, math.ceil(h / r) * math.ceil(w / r))

    # -- conversions ------------------------------------------------------------------------------
    @classmethod
    def from_official_arch(
        cls,
        arch: Mapping[str, Any],
        image_size: int = 224,
        num_classes: int = 1000,
        **overrides: Any,
    ) -> NetworkSpec:
        """Spec from the release's arch dict (keys ``layers``, ``embed_dims``, ``kernel_size``,
        ``num_groups``, ``sr_ratio``, ``num_heads``, optional ``mlp_ratios`` (default 4) and
        ``layer_scale_init_value`` (default 1e-5)), as in ``TransXNet.arch_settings``.

        ``overrides`` set other NetworkSpec fields (``name``, ``drop_path_rate``, ...).

        Raises:
            SpecError: when a required key is missing or the lists differ in length.
            pydantic.ValidationError: when the arch is not a valid TransXNet.
        """
        required = ("layers", "embed_dims", "kernel_size", "num_groups", "sr_ratio", "num_heads")
        missing = [k for k in required if k not in arch]
        if missing:
            raise SpecError(f"official arch dict lacks {missing}; it has {sorted(arch)}")
        n = len(arch["layers"])
        lists = {k: list(arch[k]) for k in required}
        lists["mlp_ratios"] = list(arch.get("mlp_ratios", [4] * n))
        bad = {k: len(v) for k, v in lists.items() if len(v) != n}
        if bad:
            raise SpecError(f"official arch lists must all have {n} entries (layers); got {bad}")
        stages = [
            dict(
                depth=lists["layers"][i],
                embed_dim=lists["embed_dims"][i],
                num_heads=lists["num_heads"][i],
                sr_ratio=lists["sr_ratio"][i],
                idconv_groups=lists["num_groups"][i],
                idconv_kernel_size=lists["kernel_size"][i],
                mlp_ratio=lists["mlp_ratios"][i],
            )
            for i in range(n)
        ]
        fields = dict(
            stages=stages,
            image_size=image_size,
            num_classes=num_classes,
            layer_scale_init_value=arch.get("layer_scale_init_value", 1e-5),
        )
        return cls.model_validate({**fields, **overrides})

    def to_yaml(self) -> str:
        """The spec as YAML (stages in flow style, one line each)."""
        data = self.model_dump(mode="json")
        head = yaml.safe_dump({k: v for k, v in data.items() if k != "stages"}, sort_keys=False)
        stages = "".join(
            "  - " + yaml.safe_dump(s, default_flow_style=True, sort_keys=False, width=1000) for s in data["stages"]
        )
        return f"{head}stages:\n{stages}"

    @classmethod
    def from_yaml(cls, text: str) -> NetworkSpec:
        """Parse YAML text (``yaml.safe_load``) into a validated spec.

        Raises:
            SpecError: when the text is not YAML or not a mapping.
            pydantic.ValidationError: when the mapping is not a valid spec.
        """
        return cls.model_validate(yaml_mapping(text, "a spec"))

    def digest(self) -> str:
        """Canonical hash of the architecture: equal for specs that build the same network,
        whatever their ``name`` or the spelling of their numbers (4 and 4.0). The paper's stem
        (``stem_stride`` 4) and stage knobs added later at their defaults (``KnobMeta.since_release``)
        are left out, so specs written before those fields keep their digests."""
        exclude = {"name"} if self.stem_stride != STEM_STRIDE else {"name", "stem_stride"}
        data = self.model_dump(mode="json", exclude=exclude)
        for stage in data["stages"]:  # stage knobs added later, likewise at their defaults
            for name in stage_knobs(since_release=True):
                if stage[name] == StageSpec.model_fields[name].default:
                    del stage[name]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def format_validation_error(err: ValidationError, source: str = "spec") -> str:
    """One paragraph from a pydantic error: each problem as ``stages[1].depth = 0: why``.

    Unknown fields get a "did you mean" from the model's field names.
    Values are quoted up to ``SHORT_VALUE`` characters and at most ``MAX_PROBLEMS`` problems are
    listed (then a count of the rest), so the paragraph stays short whatever the input.
    """
    lines: list[str] = []
    listed: set[str] = set()  # models whose known fields were listed already (once is enough)
    count = err.error_count()
    for e in err.errors(include_url=False)[:MAX_PROBLEMS]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{shorten(str(p), 40)}" for p in e["loc"]).lstrip(".")
        msg = shorten(e["msg"].removeprefix("Value error, "), 300)
        if e["type"] == "extra_forbidden":
            msg = "unknown field" + _did_you_mean(str(e["loc"][-1]), e["loc"][0] == "stages", listed)
        # A whole mapping as the value means a cross-field rule, whose message names its values.
        shown = e["type"] != "missing" and not isinstance(e["input"], dict)
        value = f" = {short_repr(e['input'])}" if shown else ""
        lines.append(f"  {where or '(top level)'}{value}: {msg}")
    if count > len(lines):
        lines.append(f"  ... and {count - len(lines):,} more")
    return f"invalid {source} ({count:,} problem{'s' if count > 1 else ''}):\n" + "\n".join(lines)


def _did_you_mean(field: str, in_stage: bool, listed: set[str]) -> str:
    field = field[:SHORT_VALUE]  # difflib on a megabyte-long key would take minutes
    here, there = (StageSpec, NetworkSpec) if in_stage else (NetworkSpec, StageSpec)
    if field in there.model_fields:
        return f" here: '{field}' is a field of {'the network' if in_stage else 'each entry of stages'}"
    close = difflib.get_close_matches(field, here.model_fields, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if here.__name__ in listed:
        return " (known fields above)"
    listed.add(here.__name__)
    return f"; known fields: {', '.join(here.model_fields)}"


def load_spec(path: str | Path) -> NetworkSpec:
    """Read a spec file (``.yaml``/``.yml`` or ``.json``).

    Raises:
        SpecError: file missing or unreadable, not YAML/JSON, a key repeated in one mapping, or
            not a valid spec (the message lists every problem with its stage, field and value).
    """
    path = Path(path)
    text = read_text_file(path, "spec file")
    shown = shorten(str(path))
    try:
        if path.suffix == ".json":
            try:
                data = json.loads(text, object_pairs_hook=unique_pairs)
            except SpecError:
                raise
            except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
                raise SpecError(f"not valid JSON: {shorten(str(err), 300)}") from err
            return NetworkSpec.model_validate(data)
        return NetworkSpec.from_yaml(text)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, f"spec file {shown}")) from err
    except SpecError as err:
        raise SpecError(f"{shown}: {err}") from err


def save_spec(spec: NetworkSpec, path: str | Path) -> Path:
    """Write ``spec`` as YAML, or JSON when ``path`` ends in ``.json``; returns the path.

    The file is checked and written by :mod:`xnetspace.paths`' rule: a regular file (a symlink's
    target), replaced atomically; missing folders are made.

    Raises:
        xnetspace.paths.PathError (an OSError): a folder, a device, a FIFO, a socket, a read-only
            file, a symlink loop, a full disk.
    """
    text = spec.model_dump_json(indent=2) if Path(path).suffix == ".json" else spec.to_yaml()
    target = output_file(path, "the spec file", "save the spec")
    write_atomically(target, lambda partial: partial.write_text(text), "save the spec", path)
    return Path(path)


def preset_names() -> list[str]:
    """Names of the presets shipped in the package (``transxnet_t``, ``transxnet_s``, ...)."""
    files = resources.files("xnetspace") / "presets"
    return sorted(f.name.removesuffix(".yaml") for f in files.iterdir() if f.name.endswith(".yaml"))


def load_preset(name: str) -> NetworkSpec:
    """The spec of a shipped preset: the paper's exact T/S/B (Table I, release arch settings).

    Raises:
        SpecError: unknown name (the message lists the known ones).
    """
    known = preset_names()
    if name not in known:
        raise SpecError(f"unknown preset {short_repr(name)}; known presets: {', '.join(known)}")
    file = resources.files("xnetspace") / "presets" / f"{name}.yaml"
    return NetworkSpec.from_yaml(file.read_text())


def resolve_spec(spec: NetworkSpec | Mapping[str, Any] | str | Path) -> NetworkSpec:
    """A NetworkSpec from a spec, a mapping of its fields, a preset name or a spec file path.

    Raises:
        SpecError: an empty name, an unknown preset name or an unreadable/invalid file.
        pydantic.ValidationError: invalid mapping.
    """
    if isinstance(spec, NetworkSpec):
        return spec
    if isinstance(spec, Mapping):
        return NetworkSpec.model_validate(dict(spec))
    if isinstance(spec, str) and not spec.strip():  # Path("") would be ".", the working folder
        raise SpecError(
            f"the spec is empty ({short_repr(spec)}): give a spec file (.yaml/.json) or a preset name "
            f"({', '.join(preset_names())})"
        )
    if isinstance(spec, Path) or Path(spec).suffix in (".yaml", ".yml", ".json") or _exists(spec):
        return load_spec(spec)
    return load_preset(str(spec))


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte
        return False
