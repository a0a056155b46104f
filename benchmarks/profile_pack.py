"""Where a packed training step's time goes on the CPU: torch.profiler over one epoch of a
tiny_cpu spec trained as a pack of 4 seeds and as 4 separate runs; the top operators by self-CPU
time. ``python benchmarks/profile_pack.py`` (about 30 s; the profiler's per-operator overhead
inflates the separate runs' time, so read the shares, not the seconds).
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from xnetspace.search.data import load_dataset
from xnetspace.search.space import load_space
from xnetspace.search.train import train_seeds


def main() -> None:
    torch.set_num_threads(1)
    space = load_space("tiny_cpu")
    train = space.train.model_copy(update={"epochs": 1})
    data = load_dataset("digits", train.image_size, 0)
    spec = space.random_specs(1, seed=3)[0]
    spec = spec.model_copy(update={"num_classes": data.num_classes, "in_chans": data.in_chans})
    for pack in (True, False):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            train_seeds(spec, data, [0, 1, 2, 3], train, pack=pack)
            seconds = time.perf_counter() - start
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        calls = sum(e.count for e in events)
        print(f"pack={pack}: {seconds:.1f} s under the profiler; {calls} operator calls; top operators by self-CPU:")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
            print(f"  {e.key:40s} {100 * e.self_cpu_time_total / total:5.1f}%  calls {e.count}")


if __name__ == "__main__":
    main()
