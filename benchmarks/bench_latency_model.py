"""How well a latency table predicts whole networks it never timed (issue 33, item 2).

    xnetspace latency-table fashion_cpu tiny_cpu tiny_cpu_refined --specs 60 --out runs/latency-cpu.json  # ~4 min
    python benchmarks/bench_latency_model.py fashion_cpu tiny_cpu tiny_cpu_refined --table runs/latency-cpu.json

For each SPACE: ``--specs`` held-out specs, drawn with ``--seed`` (``SearchSpace.distinct_specs``)
and none of the ``--table-specs`` drawn with seed 0 whose operators the table was timed on (the
default of ``xnetspace latency-table``). Each is built, reparameterised and timed whole
(``xnetspace.latency.measure_latency``: median of torch.utils.benchmark's blocks over
``--min-run-time`` seconds, at the table's batch size and threads; ``--rounds`` rounds over all the
specs, each spec's fastest round kept, as the table keeps each operator's) and predicted from the table
(``predict_latency``, operators the table lacks from their kind's line). Printed per space: the
mean absolute percentage error (MAPE), the median and largest, the share within 10%, the mean
signed error (bias), Spearman's rho (scipy.stats.spearmanr) of prediction and measurement, and of
FLOPs and measurement for comparison, the share of operators the table lacked, and the noise
floor: the same errors of the odd rounds' fastest taken as the prediction of the even rounds' fastest.

Run it on an idle machine, on the machine the table was timed on.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from scipy import stats

from xnetspace.cost import count_flops
from xnetspace.latency import fastest_latencies
from xnetspace.latency_table import network_operators, read_table
from xnetspace.model import build_model
from xnetspace.search.space import load_space


def held_out(space, count: int, seed: int, table_specs: int, in_chans: int, num_classes: int) -> list:
    """``count`` distinct specs drawn with ``seed``, none among the table's ``table_specs`` (seed 0)."""
    network = dict(in_chans=in_chans, num_classes=num_classes)
    timed = {s.digest() for s in space.distinct_specs(table_specs, 0, "latency", **network)}
    pool = space.distinct_specs(count + len(timed), seed, "heldout", **network)
    return [s for s in pool if s.digest() not in timed][:count]


def check_space(name: str, table, args) -> dict:
    space = load_space(name)
    size = space.constraints.image_size
    specs = held_out(space, args.specs, args.seed, args.table_specs, args.in_chans, args.num_classes)
    models = [(spec, build_model(spec).reparameterize()) for spec in specs]
    rounds = [  # one round at a time, to measure the noise floor from two halves of them
        fastest_latencies(models, table.batch_size, size, table.device, args.min_run_time, rounds=1)
        for _ in range(args.rounds)
    ]
    rows = []
    for k, spec in enumerate(specs):
        prediction = table.predict(spec, size)
        rows.append(
            dict(
                spec=spec.digest(),
                mflops=count_flops(spec, size) / 1e6,
                measured_ms=min(r[k] for r in rounds),
                rounds_ms=[r[k] for r in rounds],
                predicted_ms=prediction.total_ms,
                unseen=len(prediction.unseen),
                operators=len(network_operators(spec, size)),
            )
        )
    measured = [r["measured_ms"] for r in rows]
    return dict(
        space=name,
        specs=len(rows),
        **errors([r["predicted_ms"] for r in rows], measured),
        spearman_flops=float(stats.spearmanr([r["mflops"] for r in rows], measured).statistic),
        # the measurement against itself (the noise floor): the odd rounds' fastest as the prediction of the even's
        repeat=errors(*(fastest(rounds[half::2]) for half in (0, 1))) if args.rounds > 1 else None,
        unseen_share=sum(r["unseen"] for r in rows) / sum(r["operators"] for r in rows),
        measured_ms=[min(measured), max(measured)],
        rows=rows,
    )


def fastest(rounds: list[list[float]]) -> list[float]:
    """Each spec's fastest round."""
    return [min(times) for times in zip(*rounds)]


def errors(predicted: list[float], measured: list[float]) -> dict:
    """MAPE and its median and largest, the share within 10%, the mean signed error (%), Spearman."""
    signed = [(p - m) / m * 100 for p, m in zip(predicted, measured)]
    ape = [abs(e) for e in signed]
    rho = stats.spearmanr(predicted, measured)
    return dict(
        mape=statistics.fmean(ape),
        median_ape=statistics.median(ape),
        max_ape=max(ape),
        within_10=sum(a <= 10 for a in ape) / len(ape),
        bias=statistics.fmean(signed),
        spearman=float(rho.statistic),
        spearman_p=float(rho.pvalue),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spaces", nargs="+")
    parser.add_argument("--table", required=True, help="xnetspace latency-table's --out")
    parser.add_argument("--specs", type=int, default=30, help="held-out specs per space")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out draw")
    parser.add_argument("--table-specs", type=int, default=200, help="latency-table's --specs (seed 0): left out")
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds each network is timed per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds over the specs: a spec's fastest is kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = read_table(args.table)
    torch.set_num_threads(table.threads)
    results = [check_space(name, table, args) for name in args.spaces]
    if args.json:
        print(json.dumps(dict(table=args.table, device=table.device_name, results=results), indent=1))
        return
    print(f"table {args.table}: {table.device_name}, batch {table.batch_size}, {table.threads} thread(s)")
    print(
        "space | specs | measured ms | MAPE % | median APE % | max APE % | within 10% | bias % "
        "| Spearman | FLOPs Spearman | unseen ops | odd vs even rounds: MAPE %, Spearman"
    )
    for r in results:
        lo, hi = r["measured_ms"]
        print(
            f"{r['space']} | {r['specs']} | {lo:.2f}-{hi:.2f} | {r['mape']:.1f} | {r['median_ape']:.1f} "
            f"| {r['max_ape']:.1f} | "
            f"{r['within_10']:.0%} | {r['bias']:+.1f} | {r['spearman']:.2f} (p {r['spearman_p']:.1g}) | "
            f"{r['spearman_flops']:.2f} | {r['unseen_share']:.0%} | "
            + (f"{r['repeat']['mape']:.1f}, {r['repeat']['spearman']:.2f}" if r["repeat"] else "-")
        )


if __name__ == "__main__":
    main()
