"""Cost model vs build + fvcore, side by side in one run: median seconds per call and the ratio.

    python benchmarks/bench_cost.py [--presets transxnet_t transxnet_s transxnet_b] [--repeats 5]

The cost model must take under 1 ms per ``count_flops`` call and be at least 1,000x faster than
building the model and tracing it with fvcore (issue 3); both must give the same number.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xnetspace import build_model, load_preset
from xnetspace.cost import count_flops, fvcore_flops


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["transxnet_t", "transxnet_s", "transxnet_b"])
    parser.add_argument("--repeats", type=int, default=5, help="build + fvcore runs per preset")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    print(f"{'preset':<13} {'count_flops (median)':>21} {'build + fvcore (median)':>24} {'ratio':>9}  same?")
    for name in args.presets:
        spec = load_preset(name)
        ours, flops = median_seconds(lambda: count_flops(spec, args.image_size), 2001)
        ref, analysis_total = median_seconds(
            lambda: fvcore_flops(build_model(spec), args.image_size).total(), args.repeats
        )
        print(
            f"{name:<13} {ours * 1e6:>18.1f} us {ref:>22.3f} s {ref / ours:>8,.0f}x  "
            f"{'yes' if flops == analysis_total else 'NO'} ({flops:,})"
        )


if __name__ == "__main__":
    main()
