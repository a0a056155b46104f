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
Each term is the ``activations`` of its operator's ``cost()``, beside its construction, summed
by the network's walk (:meth:`TransXNet.cost <xnetspace.model.network.TransXNet.cost>`); the
refusal itself is :mod:`xnetspace.memory_limit`'s, which ``build_model`` also uses. The preprocessed photograph
counts ``16 in_chans H W`` bytes (the decoded and resized image and the float tensors made from
it). Checked against the peak resident memory of a real forward on the CPU
(``benchmarks/memory_bound.py``, ``tests/test_bad_input.py``): the bound was 1.3 to 3.7 times the
measured peak in nine cases from 128 to 512 pixels (docs/specs.md, "Bounded input").
"""

from __future__ import annotations

from .cost import ImageSize, network_cost, parse_image_size
from .memory_limit import MemoryEstimate, refuse_over_memory
from .model.complexity import FLOAT_BYTES, Cost
from .spec import NetworkSpec

__all__ = ["estimate_memory", "check_memory"]

# The allocator's slack over the tensors alive at once: glibc keeps freed blocks under its mmap
# threshold (up to 32 MB) for reuse (benchmarks/memory_bound.py measures the result).
ACTIVATION_SLACK = 2.0
RUNTIME_BYTES = 32 << 20  # kernels' workspaces and caches a first forward allocates


def _activation_floats(spec: NetworkSpec, size: tuple[int, int]) -> int:
    """Upper bound on the floats alive at once in one eval forward at batch 1 (module docstring)."""
    return max(cost.activations for _, _, cost in network_cost(spec, size))


def estimate_memory(spec: NetworkSpec, image_size: ImageSize | None = None) -> MemoryEstimate:
    """Bytes of ``build_model(spec)`` and, given ``image_size`` (H or (H, W) pixels), of one eval
    forward of a (1, in_chans, H, W) photograph through it. Takes well under a millisecond.

    Raises:
        ValueError: an image size that is not one or two positive integers.
    """
    model = sum((cost for _, _, cost in network_cost(spec, spec.image_size)), Cost()).model_bytes
    if image_size is None:
        return MemoryEstimate(model)
    size = parse_image_size(image_size)
    activations = int(ACTIVATION_SLACK * FLOAT_BYTES * _activation_floats(spec, size)) + RUNTIME_BYTES
    return MemoryEstimate(model, activations, 4 * FLOAT_BYTES * spec.in_chans * size[0] * size[1], size)


def check_memory(
    spec: NetworkSpec, image_size: ImageSize | None = None, available: int | None = None
) -> MemoryEstimate:
    """The estimate of ``spec`` (and of a forward at ``image_size``) when it fits in
    ``available`` bytes (default: :func:`~xnetspace.memory_limit.available_memory` now).

    Raises:
        MemoryLimitError: the estimate exceeds the memory available; the message gives both.
    """
    return refuse_over_memory(estimate_memory(spec, image_size), spec.name, available)
