"""How fast the replay runs (issue 30): each sampler's seconds for R repeats at budgets 10, 25, 50.

    python benchmarks/bench_replay.py [--space tiny_cpu_refined] [--repeats 200] [--gp-repeats 3]
        [--samplers random,tpe,tpe-multivariate,evolution,protocol,gp] [--table DIR]

Replays against a table with made-up scores of SPACE (``synthetic_table``: the same specs,
rejections and search as a real table, no training) or a real table (``--table``), one sampler at a
time on one core, and prints each one's wall seconds and seconds per repeat (every budget
included: the study's TPE and the default study replay each budget on its own, the others run
once to the largest budget). The target: hundreds of repeats of 50 evaluations in a few minutes on
one core; GPSampler is far slower per evaluation, so it gets its own, smaller repeat count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from xnetspace import bench
from xnetspace.search.replay import ReplayConfig, run_replay
from xnetspace.search.space import load_space
from xnetspace.search.synthetic_table import synthetic_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="tiny_cpu_refined")
    parser.add_argument("--table", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--gp-repeats", type=int, default=3)
    parser.add_argument("--samplers", default="random,tpe,tpe-multivariate,evolution,protocol,gp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.table or synthetic_table(load_space(args.space), Path(tmp) / "t", seeds=2, epochs=3).parent
        table = bench.load(folder)
        print(f"{table.meta['space']['name']}: {len(table.specs())} specs; budgets 10, 25, 50")
        for name in args.samplers.split(","):
            repeats = args.gp_repeats if name == "gp" else args.repeats
            config = ReplayConfig(samplers=(name,), budgets=(10, 25, 50), repeats=repeats, gp_repeats=args.gp_repeats)
            start = time.perf_counter()
            summary = run_replay(table, config, None, progress=False)
            seconds = time.perf_counter() - start
            mean = {r["budget"]: round(r["mean_regret"], 4) for r in summary["rows"]}
            print(f"  {name:<16s} {repeats:4d} repeats  {seconds:7.1f} s  {seconds / repeats:6.3f} s/repeat  {mean}")


if __name__ == "__main__":
    main()
