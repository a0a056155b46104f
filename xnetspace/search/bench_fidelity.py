"""Fidelity for free: every cheap score's rank correlation with a table's outcome, without training.

A table (:mod:`.tabulate`, read with :mod:`xnetspace.bench`) holds, for every spec and seed, the
validation curve a search sees and the test curve; NAS-Bench-201 (Dong & Yang, ICLR 2020) and
the zero-cost proxy studies on it (Abdelfattah et al., ICLR 2021) measure proxies this way.
:func:`table_fidelity` turns the table into the fidelity study's runs (:mod:`.fidelity_runs`:
each run once as a ``proxy`` run, its validation curve, and once as a ``confirm`` run, its test
curve) and reuses its analysis (:func:`~.fidelity_stats.analyze_runs`): Kendall tau, Spearman rho and
precision@5 of each epoch's validation cross-entropy (1 to K seeds), top-1, TSE, the zero-cost
scores, params and FLOPs against the final mean test cross-entropy over the K seeds, beside the
noise ceiling (half the seeds' mean test score against the other half's).

One difference from ``xnetspace fidelity SPACE``: there the confirmation trains other seeds; here
a spec's validation and test scores come from the same runs, so a seed's luck is shared by the
proxy and the target, and the proxy's tau reads a little higher than against fresh seeds. The
noise ceiling is unaffected (it splits seeds).
"""

from __future__ import annotations

import math

from ..bench import ZERO_COST_COLUMNS, Bench
from .fidelity_runs import FidelityRun
from .fidelity_schema import FidelityResult, TableInfo
from .fidelity_stats import analyze_runs
from .records import RunRecord

__all__ = ["table_runs", "table_fidelity"]


def table_runs(bench: Bench) -> list[FidelityRun]:
    """The table as the fidelity study's runs: a ``proxy`` run (validation curve) and a ``confirm``
    run (test curve) per spec and seed."""
    runs = []
    for entry in bench.specs():
        common = {
            "spec_index": entry.index,
            "spec_digest": entry.digest,
            "flops": entry.flops,
            "params": entry.params,
            "zero_cost": {z: entry.zero_cost.get(z, math.nan) for z in ZERO_COST_COLUMNS},
        }
        for run in entry.runs:
            for recipe, loss, top1 in (
                ("proxy", run.val_loss, run.val_top1),
                ("confirm", run.test_loss, run.test_top1),
            ):
                record = RunRecord(seed=run.seed, loss=list(loss), top1=list(top1), train_loss=list(run.train_loss))
                runs.append(FidelityRun.model_validate({**common, "recipe": recipe, "run": record}))
    return runs


def table_fidelity(bench: Bench, seed: int = 0) -> FidelityResult:
    """The fidelity analysis of a table (:func:`~.fidelity_stats.analyze_runs`'s, with ``target``
    saying what it is here and ``config`` the table's space, dataset, seeds, epochs)."""
    result = analyze_runs(table_runs(bench), seed=seed)
    result.target = f"mean test cross-entropy over the table's {len(bench.seeds)} seeds (the proxy's own runs)"
    result.config = TableInfo(
        table=str(bench.folder),
        space=bench.meta["space"]["name"],
        dataset=bench.meta["dataset"],
        seeds=len(bench.seeds),
        proxy_epochs=bench.epochs,
        split=bench.meta.get("score", {}).get("test", "test split"),
    )
    return result
