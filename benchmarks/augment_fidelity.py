"""Does an augmentation make the proxy rank specs better? Re-train the proxy of a finished fidelity
study with another ``augment`` and compare rank fidelity against the same confirmed target.

Reads ``DIR/runs.csv`` of ``xnetspace fidelity`` (its targets: each spec's confirmed cross-entropy,
mean over its confirmation seeds), draws the same spec pool, trains the first ``--specs`` specs
with ``--seeds`` proxy seeds under the space's recipe with ``augment`` replaced (packed, one
process per worker), and prints Kendall tau with its paired-bootstrap 95% interval for the
augmented proxy and for the recorded unaugmented proxy (the same seeds, the same specs), and the
tau of their difference. Example (the default task)::

    python benchmarks/augment_fidelity.py runs/fidelity-tiny_cpu-digits --augment crop-flip --specs 12 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from xnetspace.search.data import load_dataset
from xnetspace.search.fidelity import FidelityConfig, specs
from xnetspace.search.fidelity_runs import read_runs, runs_by_spec
from xnetspace.search.space import load_space
from xnetspace.search.stats import rank_fidelity
from xnetspace.search.train import train_seeds


def _train(args: tuple) -> tuple[int, list[float]]:
    index, spec_json, train_json, dataset, seeds = args
    torch.set_num_threads(1)
    from xnetspace.search.train import TrainConfig
    from xnetspace.spec import NetworkSpec

    train = TrainConfig.model_validate_json(train_json)
    data = load_dataset(dataset, train.image_size, train.seed)
    results = train_seeds(NetworkSpec.model_validate_json(spec_json), data, seeds, train)
    return index, [r.loss for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a finished xnetspace fidelity --out folder")
    parser.add_argument("--space", default="tiny_cpu")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--n-specs", type=int, default=30, help="the fidelity study's --n-specs")
    parser.add_argument("--fidelity-seeds", type=int, default=6, help="the fidelity study's --seeds")
    parser.add_argument("--augment", default="crop-flip")
    parser.add_argument("--specs", type=int, default=12, help="the first N specs of the pool")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = FidelityConfig(
        space=load_space(args.space), dataset=args.dataset, n_specs=args.n_specs, seeds=args.fidelity_seeds
    )
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    pool = specs(config, data.num_classes, data.in_chans)
    recorded = runs_by_spec(read_runs(args.folder / "runs.csv"))
    keys = [i for i in sorted(recorded) if recorded[i].proxy and recorded[i].confirm][: args.specs]
    target = [statistics.fmean(r.loss[-1] for r in recorded[i].confirm) for i in keys]
    plain = [statistics.fmean(r.loss[-1] for r in recorded[i].proxy[: args.seeds]) for i in keys]

    train = config.train.model_copy(update={"augment": args.augment})
    seeds = list(config.proxy_seeds[: args.seeds])
    jobs = [(i, pool[i].model_dump_json(), train.model_dump_json(), config.dataset, seeds) for i in keys]
    with ProcessPoolExecutor(args.workers) as workers:
        done = dict(workers.map(_train, jobs))
    augmented = [statistics.fmean(done[i]) for i in keys]

    result = {
        "specs": len(keys),
        "seeds": args.seeds,
        "augment": args.augment,
        "none": rank_fidelity(plain, target),
        args.augment: rank_fidelity(augmented, target),
        "augmented_vs_none": stats.kendalltau(augmented, plain).statistic,
        "proxy_loss_none": float(np.mean(plain)),
        "proxy_loss_augmented": float(np.mean(augmented)),
    }
    for name in ("none", args.augment):
        r = result[name]
        lo, hi = r["ci95"]["kendall_tau"]
        print(f"{name:>10}: Kendall tau {r['kendall_tau']:+.2f} [{lo:+.2f}, {hi:+.2f}] over {len(keys)} specs")
    print(f"tau between the two proxies' rankings: {result['augmented_vs_none']:+.2f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
