"""Memory a network needs, known from its spec before anything is allocated.

:func:`estimate_memory` gives the bytes of a built network (parameters and BatchNorm running
statistics, counted exactly from the spec) and, for an input size, an upper bound on the peak of
one eval forward pass at batch 1; :func:`check_memory` refuses a spec whose estimate exceeds the
memory available now (:func:`available_memory`), so that ``build_model`` and ``xnetspace build``
answer at once instead of swapping for minutes or dying in the allocator.

The activation bound follows the forward of :mod:`xnetspace.model` stage by stage (at stage
resolution ``N = H*W`` tokens, ``C`` channels, MS-FFN width ``D``, ``A`` attention channels, ``h``
heads, ``M`` tokens after OSR): it adds every tensor that can be alive at once in one block --
the residual stream and its copies (``8 C N``, :class:`~xnetspace.model.block.TransXNetBlock`),
MS-FFN's fc1/GELU/BN/branch/concat maps and oneDNN's blocked copies of them (``6 D N``,
:class:`~xnetspace.model.ffn.MSFFN`), OSRA's queries, keys, values and outputs (``4 A N + 4 A M``)
and the attention logits with their bias sum and softmax (``3 h N M``,
:class:`~xnetspace.model.osra.OSRA`), and the resized position bias the whole stage keeps
(``h N M``) -- plus the input map of the stage (its downsample's input), and takes the largest
stage (or the stem: the image, the stem conv's and its BN's outputs); then multiplies by 2 for
the allocator's slack (glibc keeps freed blocks for reuse) and adds 32 MB of kernel workspaces.
Each term is the ``activations`` of its operator's ``cost()``, beside its construction; this
module only walks a spec (:func:`xnetspace.cost.network_cost`). The preprocessed photograph
counts ``16 in_chans H W`` bytes (the decoded and resized image and the float tensors made from
it). Checked against the peak resident memory of a real forward on the CPU
(``benchmarks/memory_bound.py``, ``tests/test_bad_input.py``): the bound was 1.3 to 3.7 times the
measured peak in nine cases from 128 to 512 pixels (docs/specs.md, "Bounded input").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .cost import ImageSize, count_params, network_cost, parse_image_size
from .spec import NetworkSpec, SpecError

__all__ = [
    "MemoryEstimate",
    "MemoryLimitError",
    "estimate_memory",
    "available_memory",
    "check_memory",
    "count_buffers",
    "human_bytes",
]

FLOAT_BYTES = 4  # float32, the builder's dtype
# The allocator's slack over the tensors alive at once: glibc keeps freed blocks under its mmap
# threshold (up to 32 MB) for reuse (benchmarks/memory_bound.py measures the result).
ACTIVATION_SLACK = 2.0
RUNTIME_BYTES = 32 << 20  # kernels' workspaces and caches a first forward allocates


class MemoryLimitError(SpecError):
    """A network (or a forward at some input size) that would not fit in the memory available;
    the message gives the estimate, the memory available and how to go on anyway."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a network and of one eval forward at batch 1 (0 when no input size was given).

    ``model``: parameters and buffers (exact); ``activations``: peak of the forward's feature maps
    (an upper bound, see the module docstring); ``input``: the preprocessed photograph.
    """

    model: int
    activations: int = 0
    input: int = 0
    image_size: tuple[int, int] | None = None

    @property
    def total(self) -> int:
        return self.model + self.activations + self.input

    def describe(self) -> str:
        """``"1.2 GB (network 48.0 MB, forward at 224x224 1.1 GB)"``."""
        parts = [f"network {human_bytes(self.model)}"]
        if self.image_size is not None:
            h, w = self.image_size
            parts.append(f"forward at {h}x{w} {human_bytes(self.activations + self.input)}")
        return f"{human_bytes(self.total)} ({', '.join(parts)})"


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KB"`` (powers of 1024, as ``free -h`` shows them)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1024 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def count_buffers(spec: NetworkSpec) -> tuple[int, int]:
    """``(floats, counters)``: BatchNorm running-mean/var elements and ``num_batches_tracked``
    counters (int64) of ``build_model(spec)``, without building it. Every BN of C channels holds
    2 C floats and one counter; the BNs are counted by the operators that hold them (stem,
    downsamples, IDConv's proj, OSR, STE, MS-FFN)."""
    parts = [cost for _, _, cost in network_cost(spec, spec.image_size)]
    return sum(c.norm_floats for c in parts), sum(c.norms for c in parts)


def _activation_floats(spec: NetworkSpec, size: tuple[int, int]) -> int:
    """Upper bound on the floats alive at once in one eval forward at batch 1 (module docstring)."""
    return max(cost.activations for _, _, cost in network_cost(spec, size))


def estimate_memory(spec: NetworkSpec, image_size: ImageSize | None = None) -> MemoryEstimate:
    """Bytes of ``build_model(spec)`` and, given ``image_size`` (H or (H, W) pixels), of one eval
    forward of a (1, in_chans, H, W) photograph through it. Takes well under a millisecond.

    Raises:
        ValueError: an image size that is not one or two positive integers.
    """
    floats, counters = count_buffers(spec)
    model = FLOAT_BYTES * (count_params(spec) + floats) + 8 * counters
    if image_size is None:
        return MemoryEstimate(model)
    size = parse_image_size(image_size)
    activations = int(ACTIVATION_SLACK * FLOAT_BYTES * _activation_floats(spec, size)) + RUNTIME_BYTES
    return MemoryEstimate(model, activations, 4 * FLOAT_BYTES * spec.in_chans * size[0] * size[1], size)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def available_memory() -> int | None:
    """Bytes a new allocation can get now: ``MemAvailable`` from ``/proc/meminfo`` (free pages
    when there is none), lowered to the headroom under a cgroup memory limit (v2 or v1) when one
    is set; None when the system tells neither (then nothing is refused)."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 writes 2^63 for none
            headroom = max(limit - usage, 0)
            available = headroom if available is None else min(available, headroom)
            break
    return available


def check_memory(
    spec: NetworkSpec, image_size: ImageSize | None = None, available: int | None = None
) -> MemoryEstimate:
    """The estimate of ``spec`` (and of a forward at ``image_size``) when it fits in
    ``available`` bytes (default: :func:`available_memory` now).

    Raises:
        MemoryLimitError: the estimate exceeds the memory available; the message gives both.
    """
    estimate = estimate_memory(spec, image_size)
    available = available_memory() if available is None else available
    if available is not None and estimate.total > available:
        raise MemoryLimitError(
            f"network {spec.name!r} would need about {estimate.describe()}, but only "
            f"{human_bytes(available)} of memory is available; make it smaller (depth, embed_dim, "
            f"num_classes, image size) or force it (--force, build_model(..., force=True))"
        )
    return estimate
