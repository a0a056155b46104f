"""Latency predicted from the spec: a per-operator lookup table, timed once per device and summed
along the spec as the cost model sums FLOPs (issue 33). The method is OFA's and nn-Meter's (Cai et
al., "Once-for-All", ICLR 2020, section 3.4; Zhang et al., "nn-Meter", MobiSys 2021): time each
operator at each shape a space produces, then predict a network as the sum of its operators.

An *operator* is one module the inference form (``reparameterize()``) calls at one input shape:

- ``stem``, ``downsample`` and ``head`` (:mod:`.model.stem`, :mod:`.model.head`);
- per block, as :class:`~xnetspace.model.block.FusedBlock` runs them: ``dpe``, ``group_norm``
  (twice), the D-Mixer's ``idconv`` (its static depthwise conv with one group), ``osra`` and
  ``ste``, ``msffn``, and ``wiring``: the block's own tensor work (the D-Mixer's channel split and
  concatenation, the residual sums), timed as a FusedBlock whose operators are identities.

Each operator's constructor arguments come from its module's ``knobs(stage)``, so the table keys
on exactly what builds the network. A shape the table never saw is predicted from its kind's
least-squares line of microseconds against FLOPs over the table's entries (:meth:`LatencyTable.fallback`);
a prediction says how many of its operators took that line.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveInt, ValidationError
from torch import Tensor, nn

from .cost import ImageSize, parse_image_size
from .model import complexity
from .model.block import FusedBlock
from .model.dpe import DPE
from .model.ffn import MSFFN
from .model.folds import Fusable
from .model.head import head, head_cost
from .model.idconv import IDConv, local_branch, local_branch_cost
from .model.mixer import SqueezedTokenEnhancer
from .model.osra import OSRA
from .model.stem import Downsample, Stem
from .paths import write_atomically
from .spec import NetworkSpec, StageSpec, format_validation_error

__all__ = [
    "OPERATOR_KINDS",
    "Operator",
    "LatencyTable",
    "LatencyTableError",
    "LatencyPrediction",
    "network_operators",
    "predict_latency",
    "time_in_context",
    "fill_table",
    "read_table",
    "open_table",
]

TABLE_FORMAT = 1
OPERATOR_KINDS = ("stem", "downsample", "dpe", "group_norm", "idconv", "osra", "ste", "msffn", "wiring", "head")


class LatencyTableError(ValueError):
    """A latency table that cannot be read, or cannot answer: names the file and the field."""


@dataclass(frozen=True)
class Operator:
    """One operator of the inference form at one input shape.

    ``args`` are its constructor arguments (sorted pairs), ``shape`` its input (C, H, W) for one
    image, ``flops`` the cost model's count for one image (fvcore's, of the operator's training
    form: one multiply-add = one flop), the size :meth:`LatencyTable.fallback` reads.
    """

    kind: str
    args: tuple[tuple[str, Any], ...]
    shape: tuple[int, int, int]
    flops: int = field(compare=False)

    @property
    def key(self) -> str:
        """The table's key, e.g. ``osra(dim=24, num_heads=1, pos_bias=True, sr_ratio=2) 24x7x7``."""
        args = ", ".join(f"{k}={v}" for k, v in self.args)
        return f"{self.kind}({args}) {'x'.join(map(str, self.shape))}"

    def build(self) -> nn.Module:
        """The operator's inference-form module, in eval mode."""
        return _BUILDERS[self.kind](**dict(self.args)).eval()

    def inputs(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor | None, ...]:
        """Random inputs (batch_size, C, H, W) (and OSRA's position bias (1, h, N, M))."""
        x = torch.randn(batch_size, *self.shape, device=device, dtype=dtype)
        args = dict(self.args)
        if self.kind == "osra" and args["pos_bias"]:
            h, w = self.shape[1:]
            r = args["sr_ratio"]
            bias = torch.zeros(1, args["num_heads"], h * w, -(-h // r) * -(-w // r), device=device, dtype=dtype)
            return x, bias
        return (x,)


def _operator(kind: str, shape: tuple[int, int, int], flops: Counter | int, **args: Any) -> Operator:
    total = flops if isinstance(flops, int) else sum(flops.values())
    return Operator(kind, tuple(sorted(args.items())), shape, total)


def _block_operators(stage: StageSpec, hw: tuple[int, int], pos_bias: bool, layer_scale: bool) -> list[Operator]:
    """A block's operators in :class:`FusedBlock`'s order (the two GroupNorms are one key)."""
    dim, n = stage.embed_dim, hw[0] * hw[1]
    shape = (dim, *hw)
    attn_dim, local_dim = stage.attn_channels, stage.embed_dim - stage.attn_channels
    norm = _operator("group_norm", shape, complexity.group_norm(dim, n).flops, dim=dim)
    ops = [_operator("dpe", shape, DPE.cost(hw, dim).flops, dim=dim), norm]
    if local_dim:
        idconv = IDConv.knobs(stage)
        cost = local_branch_cost(hw, local_dim, **idconv)
        ops.append(_operator("idconv", (local_dim, *hw), cost.flops, dim=local_dim, **idconv))
    if attn_dim:
        osra = OSRA.knobs(stage)
        cost = OSRA.cost(hw, attn_dim, **osra)
        ops.append(_operator("osra", (attn_dim, *hw), cost.flops, dim=attn_dim, pos_bias=pos_bias, **osra))
    ste = SqueezedTokenEnhancer.knobs(stage)
    ops.append(_operator("ste", shape, SqueezedTokenEnhancer.cost(hw, dim, **ste).flops, dim=dim, **ste))
    ops.append(norm)
    ffn = MSFFN.knobs(stage)
    ops.append(_operator("msffn", shape, MSFFN.cost(hw, dim, **ffn).flops, dim=dim, **ffn))
    ops.append(_operator("wiring", shape, 0, dim=dim, local_dim=local_dim, layer_scale=layer_scale))
    return ops


def network_operators(spec: NetworkSpec, image_size: ImageSize | None = None) -> list[Operator]:
    """The operators ``build_model(spec).reparameterize()`` runs on one (in_chans, H, W) image, in
    forward order (a stage's blocks repeat theirs ``depth`` times), walked as
    :func:`xnetspace.cost.network_cost` walks the spec: nothing is built.

    Args:
        image_size: H or (H, W) in pixels; default ``spec.image_size``.

    Raises:
        ValueError: an image size that is not one or two positive integers.
    """
    size = parse_image_size(spec.image_size if image_size is None else image_size)
    sizes = spec.stage_sizes(size)
    dim0 = spec.embed_dims[0]
    stem = Stem.cost(size, sizes[0], spec.in_chans, dim0, spec.stem_stride)
    ops = [
        _operator("stem", (spec.in_chans, *size), stem.flops, in_chans=spec.in_chans, dim=dim0, stride=spec.stem_stride)
    ]
    in_chs, in_hw = None, sizes[0]
    for i, (stage, hw) in enumerate(zip(spec.stages, sizes)):
        if in_chs:
            cost = Downsample.cost(hw, in_chs, stage.embed_dim)
            ops.append(_operator("downsample", (in_chs, *in_hw), cost.flops, in_chs=in_chs, dim=stage.embed_dim))
        pos_bias = spec.pos_bias_shape(i) is not None
        ops += _block_operators(stage, hw, pos_bias, spec.layer_scale_init_value is not None) * stage.depth
        in_chs, in_hw = stage.embed_dim, hw
    assert in_chs is not None  # a spec has at least one stage
    cost = head_cost(in_hw, in_chs, spec.num_classes)
    ops.append(_operator("head", (in_chs, *in_hw), cost.flops, in_chs=in_chs, num_classes=spec.num_classes))
    return ops


# -- building one operator alone ------------------------------------------------------------------------
class _Identity(nn.Module):
    """Stands for an operator inside the ``wiring`` block: returns its first input."""

    def forward(self, x: Tensor, *_: Any, **__: Any) -> Tensor:
        return x


def _wiring(dim: int, local_dim: int, layer_scale: bool) -> nn.Module:
    """A :class:`FusedBlock` with identities for its operators: what is left is the block's own work."""
    block = FusedBlock(StageSpec(depth=1, embed_dim=dim, num_heads=1, attn_ratio=1 - local_dim / dim), layer_scale)
    for name in ("dpe", "norm1", "norm2", "ffn"):
        setattr(block, name, _Identity())
    for name, present in (("idconv", local_dim), ("osra", dim - local_dim), ("ste", True)):
        setattr(block.mixer, name, _Identity() if present else None)
    return block


def _fused(module: nn.Module) -> nn.Module:
    return module.eval().fuse() if isinstance(module, Fusable) else module


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "stem": lambda in_chans, dim, stride: _fused(Stem(in_chans, dim, stride)),
    "downsample": lambda in_chs, dim: _fused(Downsample(in_chs, dim)),
    "dpe": lambda dim: _fused(DPE(dim)),
    "group_norm": lambda dim: nn.GroupNorm(1, dim),
    "idconv": lambda dim, **knobs: _fused(local_branch(dim, **knobs)),
    "osra": lambda dim, num_heads, sr_ratio, pos_bias: _fused(OSRA(dim, num_heads, sr_ratio)),
    "ste": lambda dim, **knobs: _fused(SqueezedTokenEnhancer(dim, **knobs)),
    "msffn": lambda dim, **knobs: _fused(MSFFN(dim, **knobs)),
    "wiring": _wiring,
    "head": lambda in_chs, num_classes: head(in_chs, num_classes),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_in_context(
    ops: Sequence[Operator],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 30,
) -> list[float]:
    """Median microseconds of each operator of one network, each run in turn as the network runs
    them (each on its own random (batch_size, C, H, W) input), ``repeats`` times after three
    warm-up passes, at ``torch.get_num_threads()`` threads; CUDA is synchronised around each.

    In context, not alone: an operator timed alone in a loop keeps its weights and code hot and
    runs about a fifth faster than inside the network, while the chain of a network's operators
    run in turn takes what the network takes (docs/performance.md).
    """
    device = torch.device(device)
    chain = [(op.build().to(device=device, dtype=dtype), op.inputs(batch_size, device, dtype)) for op in ops]
    times = [[0.0] * repeats for _ in chain]
    clock = time.perf_counter
    with torch.inference_mode():
        for r in range(-3, repeats):
            for k, (module, inputs) in enumerate(chain):
                _sync(device)
                start = clock()
                module(*inputs)
                _sync(device)
                if r >= 0:
                    times[k][r] = (clock() - start) * 1e6
    return [statistics.median(t) for t in times]


# -- the table ------------------------------------------------------------------------------------------
@dataclass
class LatencyPrediction:
    """A spec's predicted latency: ``total_us`` (microseconds, one forward of the inference form at
    the table's batch size), ``by_kind`` (microseconds per operator kind) and ``unseen`` (keys of
    the operators the table lacked, predicted by :meth:`LatencyTable.fallback`)."""

    total_us: float
    by_kind: dict[str, float] = field(default_factory=dict)
    unseen: list[str] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return self.total_us / 1e3


@dataclass
class LatencyTable:
    """Microseconds per operator key on one device, batch size, thread count and dtype.

    ``entries`` map :attr:`Operator.key` to ``{"kind", "flops", "us", "samples"}``: ``samples``
    map the digest of each network the operator was timed in to its times there (one per
    occurrence: the fastest round's median, :func:`fill_table`), ``us`` is their median.
    ``networks`` map each network's digest to the rounds it was timed in; ``device`` is ``cpu`` or
    ``cuda``, ``device_name`` the processor's or GPU's name (a table is only valid there).
    """

    device: str
    device_name: str
    batch_size: int = 1
    threads: int = 1
    dtype: str = "float32"
    repeats: int = 30
    torch_version: str = torch.__version__
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, int] = field(default_factory=dict)
    _lines: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The file's fields (:class:`_TableFile`): the format, then every public field."""
        public = {f.name: getattr(self, f.name) for f in dataclass_fields(self) if not f.name.startswith("_")}
        return {"format": TABLE_FORMAT, **public, "entries": dict(sorted(self.entries.items()))}

    def save(self, path: Path) -> None:
        """Write the table as JSON, atomically (a temporary file, then a rename)."""
        write_atomically(
            path, lambda p: p.write_text(json.dumps(self.to_dict(), indent=1) + "\n"), "write the latency table"
        )

    def add(self, digest: str, ops: Sequence[Operator], times: Sequence[float]) -> None:
        """One more round of network ``digest``: ``times[k]`` microseconds for ``ops[k]``; each
        occurrence keeps its fastest round."""
        seen: dict[str, int] = {}
        for op, us in zip(ops, times, strict=True):
            entry = self.entries.setdefault(op.key, dict(kind=op.kind, flops=op.flops, us=us, samples={}))
            mine = entry["samples"].setdefault(digest, [])
            k = seen[op.key] = seen.get(op.key, -1) + 1
            if k < len(mine):
                mine[k] = min(mine[k], us)
            else:
                mine.append(us)
            entry["us"] = statistics.median(t for v in entry["samples"].values() for t in v)
            self._lines.pop(op.kind, None)
        self.networks[digest] = self.networks.get(digest, 0) + 1

    def fallback(self, op: Operator) -> float:
        """Microseconds for an operator the table lacks: its kind's least-squares line
        ``us = a + b * flops`` over the table's entries of that kind (a: the per-call cost that
        dominates small operators), with a and b clipped at 0.

        Raises:
            LatencyTableError: the table has fewer than two entries of the kind.
        """
        line = self._lines.get(op.kind)
        if line is None:
            rows = [(e["flops"], e["us"]) for e in self.entries.values() if e["kind"] == op.kind]
            if len(rows) < 2:
                raise LatencyTableError(
                    f"the latency table has {len(rows)} '{op.kind}' operator(s), too few to predict "
                    f"{op.key}: re-run `xnetspace latency-table` with the space this spec comes from"
                )
            x, y = np.array(rows, dtype=float).T
            slope, intercept = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, float(np.mean(y)))
            line = self._lines[op.kind] = (max(float(intercept), 0.0), max(float(slope), 0.0))
        return line[0] + line[1] * op.flops

    def predict(self, spec: NetworkSpec, image_size: ImageSize | None = None) -> LatencyPrediction:
        """Sum the table along ``spec``'s operators (:func:`network_operators`)."""
        prediction = LatencyPrediction(0.0)
        for op in network_operators(spec, image_size):
            entry = self.entries.get(op.key)
            if entry is None:
                us = self.fallback(op)
                prediction.unseen.append(op.key)
            else:
                us = entry["us"]
            prediction.by_kind[op.kind] = prediction.by_kind.get(op.kind, 0.0) + us
            prediction.total_us += us
        return prediction


def predict_latency(spec: NetworkSpec, table: LatencyTable, image_size: ImageSize | None = None) -> float:
    """Predicted microseconds of one forward of ``spec``'s inference form on ``table``'s device, at
    its batch size and threads: the sum of the table's operators along the spec, without building
    (OFA, nn-Meter). Shapes the table lacks take their kind's line (:meth:`LatencyTable.fallback`).

    Args:
        image_size: H or (H, W) in pixels; default ``spec.image_size``.

    Raises:
        LatencyTableError: an unseen operator of a kind with fewer than two entries.
    """
    return table.predict(spec, image_size).total_us


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``; else ``platform.processor()``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _Entry(BaseModel):
    """One operator's row of the table file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: Literal[OPERATOR_KINDS]  # type: ignore[valid-type]
    flops: NonNegativeInt
    us: NonNegativeFloat
    samples: dict[str, list[NonNegativeFloat]]


class _TableFile(BaseModel):
    """The table file's fields (:meth:`LatencyTable.to_dict`), validated when it is read."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format: Literal[1]
    device: str
    device_name: str
    batch_size: PositiveInt
    threads: PositiveInt
    dtype: str
    repeats: PositiveInt
    torch_version: str = ""
    networks: dict[str, NonNegativeInt] = Field(default_factory=dict)
    entries: dict[str, _Entry] = Field(default_factory=dict)


def read_table(path: str | Path) -> LatencyTable:
    """Load a table written by :meth:`LatencyTable.save` (``xnetspace latency-table``).

    Raises:
        LatencyTableError: the file is missing, not JSON, or a field is missing or invalid (a
            format other than 1, an unknown operator kind, a negative or non-finite time): the
            message names the file and each field.
    """
    path = Path(path)
    try:
        data = _TableFile.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as err:
        why = format_validation_error(err, "latency table") if isinstance(err, ValidationError) else str(err)
        raise LatencyTableError(f"cannot read latency table {str(path)!r}: {why}") from None
    fields = data.model_dump(exclude={"format", "entries"})
    return LatencyTable(**fields, entries={k: e.model_dump() for k, e in data.entries.items()})


def fill_table(
    table: LatencyTable,
    networks: Iterable[tuple[str, Sequence[Operator]]],
    rounds: int = 3,
    save: Callable[[LatencyTable], None] | None = None,
    progress: Callable[[list], Iterable] = lambda todo: todo,
) -> int:
    """Time the operators of each network ``(digest, operators)`` in context (:func:`time_in_context`
    at the table's settings) in ``rounds`` rounds over all the networks, keeping for each operator
    the fastest round's median: a shared machine's slow spells (seconds long, up to 1.7x on the
    project's CPU) fall on one round of a network, rarely on all. ``save(table)`` after each
    network's round, so that a stopped run resumes where it stopped. Returns the rounds timed now.
    """
    nets = dict(networks)
    todo = [(k, digest) for k in range(1, rounds + 1) for digest in nets if table.networks.get(digest, 0) < k]
    device, dtype = torch.device(table.device), getattr(torch, table.dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(table.threads)
    try:
        for _, digest in progress(todo):
            ops = nets[digest]
            times = time_in_context(ops, table.batch_size, device, dtype, table.repeats)
            table.add(digest, ops, times)
            if save is not None:
                save(table)
    finally:
        torch.set_num_threads(threads)
    return len(todo)


def open_table(
    path: Path,
    device: str = "cpu",
    batch_size: int = 1,
    threads: int = 1,
    dtype: str = "float32",
    repeats: int = 30,
) -> LatencyTable:
    """The table at ``path`` to add to (a stopped run resumes), or a new empty one.

    Raises:
        LatencyTableError: the file's table was timed with other settings (device, its name,
            batch size, threads, dtype): named with both values; or it cannot be read.
        ValueError: a batch size, thread count or repeat count below 1, or a dtype torch lacks.
    """
    if min(batch_size, threads, repeats) < 1:
        raise ValueError(f"--batch-size {batch_size}, --threads {threads} and --repeats {repeats} must be at least 1")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"--dtype {dtype!r} is not a torch dtype (float32, float16, bfloat16)")
    wanted = LatencyTable(device, device_name(torch.device(device)), batch_size, threads, dtype, repeats)
    if not path.exists():
        return wanted
    table = read_table(path)
    for name in ("device", "device_name", "batch_size", "threads", "dtype"):
        if getattr(table, name) != getattr(wanted, name):
            raise LatencyTableError(
                f"latency table {str(path)!r} was timed with {name}={getattr(table, name)!r}, not "
                f"{getattr(wanted, name)!r}: write this device's table to another --out"
            )
    return table
