"""Winner against winner: the same search protocol run in two spaces, replicate by replicate.

    python benchmarks/compare_searches.py RUN_A1 RUN_A2 ... -- RUN_B1 RUN_B2 ...

Each RUN is a finished `xnetspace search` folder with confirmation (its ``summary.json``); the
i-th run of A is paired with the i-th of B (the same ``--seed``). Prints a markdown table (per
run: the confirmed winner's score, its top-1, the winner minus each control, Kendall tau and the
proxy training spent), then per pair the difference of the confirmed winners (B minus A, Welch
95% CI over their confirmation seeds), and over the pairs the difference of the replicates'
winner means (Welch, one value per replicate). Scores are in the study's score (cross-entropy in
nats for the default ``loss`` objective); lower is better. When both winners were confirmed with
the same seeds (``protocol.seeds``), the difference paired by seed is printed beside it
(``scipy.stats.ttest_rel``): a seed's initialisation and batch order move every spec it trains
alike, and pairing removes that shared part. Used for docs/design_spaces.md, section 3.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from xnetspace.search.stats import mean_difference


def _ci(d: dict) -> str:
    return f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"


def _paired(b: list[float], a: list[float]) -> str:
    """B minus A paired by seed: mean and the 95% t interval of the per-seed differences."""
    test = stats.ttest_rel(b, a)
    low, high = test.confidence_interval(0.95)
    return f"{float(np.mean(np.subtract(b, a))):+.4f} [{low:+.4f}, {high:+.4f}]"


def _row(run: Path) -> tuple[str, list[float]]:
    s = json.loads((run / "summary.json").read_text())
    best = s["best"]
    if not best or not best.get("confirm"):
        raise SystemExit(f"{run}: no confirmed winner in summary.json (run the search with --confirm-top >= 1)")
    controls = {("random" if "random" in b["name"] else "preset"): b["difference"] for b in s["baselines"]}
    f = s.get("fidelity") or {}
    cells = [
        str(run),
        f"{best['confirm']['mean']:.4f} +- {best['confirm']['std']:.4f}",
        f"{best['confirm_top1']['mean']:.2f}",
        _ci(controls["random"]) if "random" in controls else "-",
        _ci(controls["preset"]) if "preset" in controls else "-",
        f"{f['kendall_tau']:.2f} ({f['n']})" if f else "-",
        str(s["compute"]["search"]),
    ]
    seeds = s.get("protocol", {}).get("seeds")
    return "| " + " | ".join(cells) + " |", best["confirm"]["scores"], seeds


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(__doc__)
    cut = argv.index("--")
    a, b = [Path(p) for p in argv[:cut]], [Path(p) for p in argv[cut + 1 :]]
    if not a or len(a) != len(b):
        raise SystemExit(f"give as many runs after -- as before it ({len(a)} and {len(b)})")
    print(
        "| run | confirmed winner (mean +- std over seeds) | winner's top-1 (%) | winner - random control "
        "[Welch 95% CI] | winner - scaled preset [Welch 95% CI] | Kendall tau (confirmed specs) | "
        "proxy training (replica-epochs) |"
    )
    print("|---|---|---|---|---|---|---|")
    scores = []
    for run_a, run_b in zip(a, b):
        (row_a, sa, seeds_a), (row_b, sb, seeds_b) = _row(run_a), _row(run_b)
        print(row_a)
        print(row_b)
        scores.append((run_a, run_b, sa, sb, seeds_a is not None and seeds_a == seeds_b and len(sa) == len(sb) > 1))
    print()
    for run_a, run_b, sa, sb, same_seeds in scores:
        d = mean_difference(sb, sa)
        paired = f"; paired by seed {_paired(sb, sa)}" if same_seeds else ""
        print(f"{run_b} - {run_a}: {_ci(d)}, distinguishable: {d['distinguishable']}{paired}")
    if len(scores) > 1:
        means_a, means_b = [float(np.mean(x[2])) for x in scores], [float(np.mean(x[3])) for x in scores]
        d = mean_difference(means_b, means_a)
        print(
            f"over the {len(scores)} replicates (winner means): {_ci(d)}, distinguishable: {d['distinguishable']}; "
            f"paired by replicate {_paired(means_b, means_a)}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
