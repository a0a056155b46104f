"""The memory a new allocation can get now, and the refusal of an estimate above it.

The model half's lowest room for memory: :func:`xnetspace.model.build_model` refuses a network
whose parameters and buffers (its cost walk's ``Cost.model_bytes``) would not fit, and
:mod:`xnetspace.memory` adds the bound on a forward's peak. Nothing here knows TransXNet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .spec import SpecError

__all__ = ["MemoryEstimate", "MemoryLimitError", "available_memory", "refuse_over_memory", "human_bytes"]


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


def refuse_over_memory(estimate: MemoryEstimate, name: str, available: int | None = None) -> MemoryEstimate:
    """``estimate`` (of network ``name``) when it fits in ``available`` bytes (default:
    :func:`available_memory` now).

    Raises:
        MemoryLimitError: the estimate exceeds the memory available; the message gives both.
    """
    available = available_memory() if available is None else available
    if available is not None and estimate.total > available:
        raise MemoryLimitError(
            f"network {name!r} would need about {estimate.describe()}, but only "
            f"{human_bytes(available)} of memory is available; make it smaller (depth, embed_dim, "
            f"num_classes, image size) or force it (--force, build_model(..., force=True))"
        )
    return estimate
