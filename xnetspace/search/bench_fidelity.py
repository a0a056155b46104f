"""Fidelity for free: every cheap score's rank correlation with a table's outcome, without training.

A table (:mod:`.tabulate`, read with :mod:`xnetspace.bench`) holds, for every spec and seed, the
validation curve a search sees and the test curve; NAS-Bench-201 (Dong & Yang, ICLR 2020) and
the zero-cost proxy studies on it (Abdelfattah et al., ICLR 2021) measure proxies this way.
:func:`table_fidelity` turns the table into the fidelity study's runs (:mod:`.fidelity`: each
run once as a ``proxy`` run, its validation curve, and once as a ``confirm`` run, its test curve)
and reuses its analysis (:func:`~.fidelity.analyze_runs`): Kendall tau, Spearman rho and
precision@5 of each epoch's validation cross-entropy (1 to K seeds), top-1, TSE, the zero-cost
scores, params and FLOPs against the final mean test cross-entropy over the K seeds, beside the
noise ceiling (half the seeds' mean test score against the other half's).

One difference from ``xnetspace fidelity SPACE``: there the confirmation trains other seeds; here
a spec's validation and test scores come from the same runs, so a seed's luck is shared by the
proxy and the target, and the proxy's tau reads a little higher than against fresh seeds. The
noise ceiling is unaffected (it splits seeds).
"""

from __future__ import annotations

from ..bench import ZERO_COST_COLUMNS, Bench
from .fidelity import analyze_runs
from .names import JobRole

__all__ = ["table_runs", "table_fidelity"]

RUN_CURVES = ("val_loss", "val_top1", "test_loss", "test_top1", "train_loss")


def table_runs(bench: Bench) -> list[dict]:
    """The table as the fidelity study's runs (``runs.csv`` rows): a ``proxy`` row (validation
    curve) and a ``confirm`` row (test curve) per spec and seed."""
    rows = []
    for entry in bench.specs():
        common = {
            "spec": entry.index,
            "spec_digest": entry.digest,
            "flops": entry.flops,
            "params": entry.params,
            **{z: entry.zero_cost.get(z, float("nan")) for z in ZERO_COST_COLUMNS},
        }
        for run in entry.runs:
            joined = {name: ";".join(f"{v:.7g}" for v in getattr(run, name)) for name in RUN_CURVES}
            rows.append(
                {
                    **common,
                    "recipe": JobRole.PROXY,  # the job role fidelity.py writes in its runs table
                    "seed": run.seed,
                    "epochs": run.epochs,
                    "train_loss": joined["train_loss"],
                }
                | {"loss": joined["val_loss"], "top1": joined["val_top1"]}
            )
            rows.append(
                {
                    **common,
                    "recipe": JobRole.CONFIRM,
                    "seed": run.seed,
                    "epochs": run.epochs,
                    "train_loss": joined["train_loss"],
                }
                | {"loss": joined["test_loss"], "top1": joined["test_top1"]}
            )
    return rows


def table_fidelity(bench: Bench, seed: int = 0) -> dict:
    """The fidelity analysis of a table (the keys of :func:`~.fidelity.analyze_runs`, with
    ``target`` saying what it is here and ``config`` the table's space, dataset, seeds, epochs)."""
    result = analyze_runs(table_runs(bench), seed=seed)
    result["target"] = f"mean test cross-entropy over the table's {len(bench.seeds)} seeds (the proxy's own runs)"
    result["config"] = {
        "table": str(bench.folder),
        "space": bench.meta["space"]["name"],
        "dataset": bench.meta["dataset"],
        "seeds": len(bench.seeds),
        "proxy_epochs": bench.epochs,
        "split": bench.meta.get("score", {}).get("test", "test split"),
    }
    return result
