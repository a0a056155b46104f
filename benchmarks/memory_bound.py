"""How close xnetspace.memory's forward bound is to the memory a real eval forward takes.

For each case: build the network, warm it up on a 16x16 input, hand freed heap back to the
system (``malloc_trim``), reset the peak resident size (``/proc/self/clear_refs``), run one eval
forward at batch 1 and read ``VmHWM``. Prints the measured peak, the bound
(``estimate_memory(spec, size).activations``) and their ratio. Linux only; CPU.

    python benchmarks/memory_bound.py
"""

from __future__ import annotations

import ctypes
import gc

import torch

from xnetspace.memory import estimate_memory
from xnetspace.model import build_model

CASES = [
    ("transxnet_t", 224),
    ("transxnet_t", 512),
    ("transxnet_s", 224),
    ("transxnet_b", 224),
    ({"name": "attention", "stages": [{"depth": 2, "embed_dim": 32, "num_heads": 4, "attn_ratio": 1}]}, 128),
    ({"name": "attention", "stages": [{"depth": 2, "embed_dim": 32, "num_heads": 4, "attn_ratio": 1}]}, 256),
    ({"name": "idconv", "stages": [{"depth": 2, "embed_dim": 64, "idconv_groups": 4, "attn_ratio": 0}]}, 448),
    (
        {
            "name": "ms-ffn",
            "stages": [{"depth": 2, "embed_dim": 64, "mlp_ratio": 8, "attn_ratio": 0, "idconv_groups": 1}],
        },
        448,
    ),
    (
        {
            "name": "wide",
            "stages": [
                {"depth": 1, "embed_dim": 256, "num_heads": 8, "sr_ratio": 4},
                {"depth": 1, "embed_dim": 512, "num_heads": 8, "sr_ratio": 2},
            ],
        },
        448,
    ),
]


def _status(key: str) -> int:
    with open("/proc/self/status") as file:
        return next(int(line.split()[1]) * 1024 for line in file if line.startswith(key))


def peak_forward_bytes(model: torch.nn.Module, in_chans: int, size: int) -> int:
    """Resident bytes one eval forward of a (1, in_chans, size, size) input adds at its peak."""
    with torch.inference_mode():
        model(torch.randn(1, in_chans, 16, 16))
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # resets VmHWM to the current resident size
    base = _status("VmRSS")
    with torch.inference_mode():
        model(torch.randn(1, in_chans, size, size))
    return _status("VmHWM") - base


def main() -> None:
    print(f"{'network':12s} {'input':>7s} {'measured MB':>12s} {'bound MB':>9s} {'bound/measured':>15s}")
    for spec, size in CASES:
        model = build_model(spec).eval()
        measured = peak_forward_bytes(model, model.spec.in_chans, size)
        bound = estimate_memory(model.spec, size).activations
        print(
            f"{model.spec.name:12s} {size:>7d} {measured / 2**20:12.1f} {bound / 2**20:9.1f} {bound / measured:15.2f}"
        )
        del model


if __name__ == "__main__":
    main()
