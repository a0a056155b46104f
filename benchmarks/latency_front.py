"""At equal accuracy, how much faster? Latency against test loss over a tabular benchmark (issue 33, item 4).

    python benchmarks/latency_front.py benchmarks/tables/fashion_cpu --latency-table runs/latency/cpu-b1-t1.json

Every spec of the table (trained with K seeds, its test cross-entropy per seed) is predicted from the
latency table (``predict_latency``) and measured on this machine (``xnetspace.latency.fastest_latencies``,
the inference form at batch 1 and the table's threads, ``--rounds`` rounds, each spec's fastest kept),
as is the reference row (TransXNet-T scaled to the space's budget). Printed:

- the Pareto front of (mean test loss, predicted latency): what a loss-latency search of the space
  aims at;
- the fastest spec (by measured latency) whose mean test loss is at most the reference's, and the
  fastest whose loss is not detectably worse (Welch's t-test of the per-seed test losses,
  ``scipy.stats.ttest_ind(equal_var=False)``, one-sided at 5%, with the 95% CI of the difference);
  each one's measured latency against the reference's and against the median spec's;
- Spearman's rho of predicted and measured latency over all the specs, and the MAPE.

With K = 2 seeds Welch's test has 2 degrees of freedom or so: "not detectably worse" admits large
differences, which is why the stricter "mean at most the reference's" is printed beside it.
Run it on an idle machine, the one the latency table was timed on.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from scipy import stats

from xnetspace import bench
from xnetspace.latency import fastest_latencies
from xnetspace.latency_table import read_table
from xnetspace.model import build_model


def welch(a: list[float], b: list[float]) -> dict:
    """Welch's test of mean(a) - mean(b) > 0 (a worse than b in cross-entropy) and the 95% CI."""
    result = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return dict(
        diff=statistics.fmean(a) - statistics.fmean(b), ci95=[float(ci.low), float(ci.high)], p=float(result.pvalue)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="a tabular benchmark's folder (xnetspace tabulate --out)")
    parser.add_argument("--latency-table", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table, latency = bench.load(args.table), read_table(args.latency_table)
    torch.set_num_threads(latency.threads)
    size = table.meta["space"]["constraints"]["image_size"]
    keys = [e.index for e in table.specs()] + [bench.REFERENCE]
    specs = {key: table.network(key) for key in keys}
    entries = {**{e.index: e for e in table.specs()}, bench.REFERENCE: table.reference}
    models = [(specs[k], build_model(specs[k]).reparameterize()) for k in keys]
    measured = dict(
        zip(keys, fastest_latencies(models, latency.batch_size, size, latency.device, args.min_run_time, args.rounds))
    )
    rows = {
        k: dict(
            name=entries[k].name,
            mflops=entries[k].flops / 1e6,
            test_loss=entries[k].scores("test_loss"),
            mean_loss=entries[k].mean("test_loss"),
            predicted_ms=latency.predict(specs[k], size).total_ms,
            measured_ms=measured[k],
        )
        for k in keys
    }
    ref = rows.pop(bench.REFERENCE)
    median_ms = statistics.median(r["measured_ms"] for r in rows.values())
    front = [
        r
        for r in rows.values()
        if not any(
            o is not r
            and o["mean_loss"] <= r["mean_loss"]
            and o["predicted_ms"] <= r["predicted_ms"]
            and (o["mean_loss"], o["predicted_ms"]) != (r["mean_loss"], r["predicted_ms"])
            for o in rows.values()
        )
    ]
    for r in rows.values():
        r["vs_reference"] = welch(r["test_loss"], ref["test_loss"])
    as_good = [r for r in rows.values() if r["mean_loss"] <= ref["mean_loss"]]
    not_worse = [r for r in rows.values() if r["vs_reference"]["p"] >= 0.05]
    fastest = {
        "mean at most the reference's": min(as_good, key=lambda r: r["measured_ms"], default=None),
        "not detectably worse (Welch, 5%)": min(not_worse, key=lambda r: r["measured_ms"], default=None),
    }
    pred = [r["predicted_ms"] for r in rows.values()]
    meas = [r["measured_ms"] for r in rows.values()]
    summary = dict(
        table=args.table,
        device=latency.device_name,
        specs=len(rows),
        reference=ref,
        median_measured_ms=median_ms,
        front=sorted(front, key=lambda r: r["predicted_ms"]),
        fastest=fastest,
        counts={"mean at most the reference's": len(as_good), "not detectably worse (Welch, 5%)": len(not_worse)},
        prediction=dict(
            spearman=float(stats.spearmanr(pred, meas).statistic),
            mape=statistics.fmean(abs(p - m) / m * 100 for p, m in zip(pred, meas)),
        ),
        rows=list(rows.values()),
    )
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    p = summary["prediction"]
    print(f"{args.table}: {len(rows)} specs + {ref['name']}, {latency.device_name}, batch {latency.batch_size}")
    print(f"reference {ref['name']}: test loss {ref['mean_loss']:.4f}, measured {ref['measured_ms']:.2f} ms")
    print(f"median spec: {median_ms:.2f} ms; prediction: Spearman {p['spearman']:.2f}, MAPE {p['mape']:.1f}%")
    print("Pareto front (mean test loss, predicted ms):")
    for r in summary["front"]:
        print(
            f"  {r['name']}: {r['mean_loss']:.4f} nats, "
            f"predicted {r['predicted_ms']:.2f} ms, measured {r['measured_ms']:.2f} ms"
        )
    for words, r in fastest.items():
        if r is None:
            print(f"fastest {words}: none")
            continue
        d = r["vs_reference"]
        print(
            f"fastest {words} ({summary['counts'][words]} specs): {r['name']}, loss {r['mean_loss']:.4f} "
            f"(minus the reference's: {d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]), "
            f"{r['measured_ms']:.2f} ms: {ref['measured_ms'] / r['measured_ms']:.2f}x faster than the reference, "
            f"{median_ms / r['measured_ms']:.2f}x than the median spec"
        )


if __name__ == "__main__":
    main()
