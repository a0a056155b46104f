"""IDConv (paper eq. 3) forward + backward in train mode, reference form against fast form, side by
side in one run, at the shapes TransXNet's small spaces give it (batch 64; 8x8 to 1x1 maps of
32x32 inputs, and 16x16 and 56x56 maps of larger ones).

    python benchmarks/bench_idconv.py                    # one thread, the default shapes
    python benchmarks/bench_idconv.py --shapes 64x48x2x7 8x48x56x7 --rounds 20

A shape is BxCxHxK: batch, IDConv's channels, the map's side, the kernel size (G = 2 kernel banks).
Each round times one forward + backward (input and parameter gradients) of each form in turn, in
CPU time of this process (``time.process_time``: at one thread, time other processes take from
this one's core is not counted, so a loaded machine gives stable figures); printed: median
milliseconds and their ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from xnetspace.model.idconv import IDConv

SHAPES = ["64x48x1x7", "64x72x1x3", "64x16x2x7", "64x36x2x3", "64x30x4x7", "64x24x4x3", "64x24x8x7", "64x12x8x5"]
SHAPES += ["64x24x16x7", "8x24x56x7"]


def step(module: IDConv, x: torch.Tensor, grad: torch.Tensor):
    def run() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)

    return run


def cpu_times(fns: dict, rounds: int) -> dict[str, list[float]]:
    """CPU seconds per call of every function, one call of each per round (after one warm-up call)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="BxCxHxK")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"IDConv forward + backward, train mode, {torch.get_num_threads()} threads "
        f"({args.rounds} rounds, median CPU time)"
    )
    print("| B x C x H x K | reference ms | fast ms | ratio |")
    print("|---|---|---|---|")
    for shape in args.shapes:
        batch, dim, side, kernel = (int(v) for v in shape.split("x"))
        torch.manual_seed(0)
        reference = IDConv(dim, kernel).train()
        fast = copy.deepcopy(reference)
        for m in fast.modules():
            if hasattr(m, "fast"):
                m.fast = True
        x = torch.randn(batch, dim, side, side, requires_grad=True)
        grad = torch.randn(batch, dim, side, side)
        times = cpu_times({"reference": step(reference, x, grad), "fast": step(fast, x, grad)}, args.rounds)
        ref, new = (1e3 * statistics.median(times[f]) for f in ("reference", "fast"))
        print(f"| {shape} | {ref:.2f} | {new:.2f} | {ref / new:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
