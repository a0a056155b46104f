"""The fidelity study's analysis: how well each cheap score ranks the specs against their
confirmed mean, beside the noise ceiling, and racing over seeds replayed, computed from the runs
alone (:class:`~.fidelity_runs.FidelityRun`, as :mod:`.fidelity` records them or ``runs.csv``
holds them). Pure computation: nothing is trained, read or written here.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

from .fidelity_runs import FidelityRun, SpecRuns, runs_by_spec
from .fidelity_schema import FidelityNoise, FidelityResult, RacingRow, ScoreRow
from .records import RunRecord
from .stats import noise_ceiling, pooled_seed_std, precision_at_k, rank_fidelity
from .summary import Ceiling, TauRho
from .zero_cost import ZERO_COST

__all__ = ["analyze_runs", "racing_replay"]


def _score(
    name: str,
    label: str,
    values: Sequence[float],
    target: Sequence[float],
    maximize: bool,
    seed: int,
    ceiling_tau: float,
) -> ScoreRow:
    sign = -1.0 if maximize else 1.0  # oriented so that +1 means: ranks the specs as the confirmation does
    fid = rank_fidelity([sign * v for v in values], target, seed=seed)
    tau = fid["kendall_tau"]
    return ScoreRow(
        name=name,
        label=label,
        kendall_tau=tau,
        spearman_rho=fid["spearman_rho"],
        ci95=TauRho(**fid["ci95"]),
        n=fid["n"],
        precision_at_5=precision_at_k([sign * v for v in values], target, k=5),
        precision_at_5_ci95=_bootstrap_precision([sign * v for v in values], target, seed),
        fraction_of_ceiling=(tau / ceiling_tau if ceiling_tau and ceiling_tau > 0 and math.isfinite(tau) else math.nan),
    )


def _bootstrap_precision(
    values: Sequence[float], target: Sequence[float], seed: int, resamples: int = 1000
) -> list[float]:
    x, y = np.asarray(values, dtype=float), np.asarray(target, dtype=float)
    if len(x) < 5:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    draws = [precision_at_k(x[i], y[i], k=5) for i in (rng.integers(0, len(x), size=len(x)) for _ in range(resamples))]
    return [float(v) for v in np.percentile(draws, [2.5, 97.5])]


def analyze_runs(runs: list[FidelityRun], seed: int = 0) -> FidelityResult:
    """Rank fidelity of every score against the K-seed confirmed mean cross-entropy, the noise
    ceiling, and racing replayed on the recorded runs, from the runs alone (``runs.csv``:
    :func:`~.fidelity_runs.read_runs`). Specs missing a recipe's runs are left out.

    Returns the analysis without ``config`` and the times (the caller sets them): each score's
    Kendall tau, Spearman rho, their paired-bootstrap 95% intervals, precision@5 and the fraction of
    the noise ceiling (:class:`~.fidelity_schema.ScoreRow`).
    """
    specs_ = {k: v for k, v in runs_by_spec(runs).items() if v.proxy and v.confirm}
    keys = sorted(specs_)
    k = min(len(specs_[i].proxy) for i in keys) if keys else 0
    target = [statistics.fmean(r.loss[-1] for r in specs_[i].confirm) for i in keys]
    proxy = {i: specs_[i].proxy for i in keys}
    ceiling = Ceiling(**noise_ceiling([[r.loss[-1] for r in specs_[i].confirm] for i in keys], seed=seed))
    c = ceiling.kendall_tau if ceiling.kendall_tau is not None else math.nan
    scores = [
        _score(name, label, values, target, maximize, seed, c)
        for name, label, values, maximize in (*_proxy_candidates(proxy, keys, k), *_cost_candidates(specs_, keys))
    ]
    scores += _self_scores(specs_, keys, seed, c)
    seed_std = pooled_seed_std([[r.loss[-1] for r in proxy[i]] for i in keys])
    return FidelityResult(
        target=f"confirmed cross-entropy, mean of {min(len(specs_[i].confirm) for i in keys) if keys else 0} "
        f"seeds, held-out split",
        n_specs=len(keys),
        seeds=k,
        ceiling=ceiling,
        scores=scores,
        noise=FidelityNoise(
            proxy_seed_std=seed_std,
            proxy_architecture_std=_architecture_std(proxy, keys, k, seed_std),
            confirm_seed_std=pooled_seed_std([[r.loss[-1] for r in specs_[i].confirm] for i in keys]),
        ),
        racing=[racing_replay(proxy, target, z, seed=seed) for z in (0.5, 1.0, 2.0)] if k >= 2 else [],
    )


# A score to rank by before it is compared with the target: name, label, one value per spec, and
# whether larger values should mean a better (lower cross-entropy) spec.
_Candidate = tuple[str, str, list[float], bool]


def _proxy_candidates(proxy: dict[int, list[RunRecord]], keys: list[int], k: int) -> list[_Candidate]:
    """The proxy recipe's scores: cross-entropy from 1..K seeds, after each earlier epoch, top-1, TSE."""
    out: list[_Candidate] = []
    epochs = min(len(r.loss) for i in keys for r in proxy[i]) if keys else 0
    for s in range(1, k + 1):
        out.append(
            (
                f"loss@{s}",
                f"proxy cross-entropy, mean of {s} seed{'s' if s > 1 else ''}",
                [statistics.fmean(r.loss[-1] for r in proxy[i][:s]) for i in keys],
                False,
            )
        )
    for e in range(1, epochs):
        out.append(
            (
                f"loss@1/epoch{e}",
                f"proxy cross-entropy after epoch {e} of {epochs}, 1 seed",
                [proxy[i][0].loss[e - 1] for i in keys],
                False,
            )
        )
        out.append(
            (
                f"loss@{k}/epoch{e}",
                f"proxy cross-entropy after epoch {e} of {epochs}, mean of {k} seeds",
                [statistics.fmean(r.loss[e - 1] for r in proxy[i]) for i in keys],
                False,
            )
        )
    out.append(("top1@1", "proxy top-1, 1 seed", [proxy[i][0].top1[-1] for i in keys], True))
    out.append(
        (
            f"top1@{k}",
            f"proxy top-1, mean of {k} seeds",
            [statistics.fmean(r.top1[-1] for r in proxy[i]) for i in keys],
            True,
        )
    )
    out.append(
        (
            "tse@1",
            "TSE (sum of epoch training losses), 1 seed",
            [math.fsum(proxy[i][0].train_loss) for i in keys],
            False,
        )
    )
    out.append(
        (
            f"tse@{k}",
            f"TSE, mean of {k} seeds",
            [statistics.fmean(math.fsum(r.train_loss) for r in proxy[i]) for i in keys],
            False,
        )
    )
    return out


def _cost_candidates(specs_: dict[int, SpecRuns], keys: list[int]) -> list[_Candidate]:
    """The scores known before training: each zero-cost score (where every spec has a finite one),
    params and FLOPs."""
    out: list[_Candidate] = []
    for name in ZERO_COST:
        values = [specs_[i].zero_cost.get(name, math.nan) for i in keys]
        if all(math.isfinite(v) for v in values):
            out.append((name, f"{name} at initialisation", values, True))
    out.append(("params", "parameter count", [float(specs_[i].params) for i in keys], True))
    out.append(("flops", "FLOPs", [float(specs_[i].flops) for i in keys], True))
    return out


def _self_scores(specs_: dict[int, SpecRuns], keys: list[int], seed: int, ceiling_tau: float) -> list[ScoreRow]:
    """Each recipe against itself: s seeds against the mean of its other K - s (so no seed is on both
    sides). For the confirmation recipe, what a proxy as long as the target buys; for the proxy
    recipe, how well one seed ranks the objective a study of that recipe confirms."""
    scores = []
    for recipe, short in (("confirm", "confirmation"), ("proxy", "proxy")):
        runs = {i: getattr(specs_[i], recipe) for i in keys}
        kr = min(len(runs[i]) for i in keys) if keys else 0
        for s in range(1, kr // 2 + 1):
            scores.append(
                _score(
                    f"{recipe}@{s}/self",
                    f"the {short} recipe itself, {s} seed{'s' if s > 1 else ''}, "
                    f"against the mean of its other {kr - s} (not the target)",
                    [statistics.fmean(r.loss[-1] for r in runs[i][:s]) for i in keys],
                    [statistics.fmean(r.loss[-1] for r in runs[i][s:]) for i in keys],
                    False,
                    seed,
                    ceiling_tau,
                )
            )
    return scores


def _architecture_std(proxy: dict[int, list[RunRecord]], keys: list[int], k: int, seed_std: float) -> float:
    """The std of the specs' K-seed proxy means less what the seeds' noise adds to it (nan with
    fewer than 2 specs or no seeds)."""
    if not (k and len(keys) > 1):
        return math.nan
    means = [statistics.fmean(r.loss[-1] for r in proxy[i]) for i in keys]
    return math.sqrt(max(0.0, statistics.pvariance(means) - seed_std**2 / k))


def racing_replay(
    proxy: dict[int, list[RunRecord]], target: Sequence[float], z: float, seed: int = 0, orders: int = 20
) -> RacingRow:
    """Racing over seeds replayed on recorded runs: specs arrive in a random order; each gets its
    first half of the seeds; it gets the rest unless its mean proxy cross-entropy is worse than the
    incumbent's (the best fully evaluated so far) by more than ``z`` standard errors (the pooled
    seed std of the specs evaluated so far), as :class:`~.objective.Objective` races. Averaged
    over ``orders`` random orders: the fraction of the seed-runs spent, Kendall tau of the
    resulting scores against ``target``, and how often the spec with the best target keeps all
    its seeds and ranks first."""
    keys = sorted(proxy)
    k = min(len(proxy[i]) for i in keys)
    first = max(1, k // 2)
    rng = random.Random(seed)
    spent, taus, kept_best, found_best = [], [], [], []
    best_true = keys[int(np.argmin(target))]
    for _ in range(orders):
        order = keys[:]
        rng.shuffle(order)
        seen: dict[int, list[float]] = {}
        for i in order:
            runs = [r.loss[-1] for r in proxy[i]]
            mine = runs[:first]
            full = [v for v in seen.values() if len(v) == k]
            sigma = pooled_seed_std([v for v in seen.values() if len(v) > 1])
            go_on = True
            if full and sum(len(v) > 1 for v in seen.values()) >= 3 and math.isfinite(sigma):
                best = min(full, key=statistics.fmean)
                gap = statistics.fmean(mine) - statistics.fmean(best)
                go_on = gap <= z * sigma * math.sqrt(1 / len(mine) + 1 / len(best))
            seen[i] = runs if go_on else mine
        spent.append(sum(len(v) for v in seen.values()) / (k * len(keys)))
        scores = [statistics.fmean(seen[i]) for i in keys]
        taus.append(float(scipy_stats.kendalltau(scores, target).statistic))
        kept_best.append(len(seen[best_true]) == k)
        found_best.append(keys[int(np.argmin(scores))] == best_true)
    return RacingRow(
        z=z,
        first_seeds=first,
        seeds=k,
        fraction_of_runs=statistics.fmean(spent),
        kendall_tau=statistics.fmean(taus),
        best_kept_all_seeds=statistics.fmean(kept_best),
        best_ranked_first=statistics.fmean(found_best),
    )
