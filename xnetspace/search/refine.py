"""Refining a design space from one population study: pycls's AnyNet-to-RegNet step
(Radosavovic et al. 2020, "Designing Network Design Spaces", section 3).

A population study (``xnetspace search --population``: random sampler, no pruner) is a uniform
sample of its space with each member's error in the study's score (cross-entropy in nats in a
``loss`` study, top-1 error in percent otherwise; lower is better). Each *candidate constraint*
picks the members that satisfy it:

- ``tie``: a knob takes one value in every stage;
- ``monotone``: widths, depths or heads never decrease from one stage to the next;
- ``schedule``: the attention share runs linearly from the first to the last stage (rounded to
  the share values the space allows);
- ``width_rule``: the stage widths and depths follow RegNet's quantized linear rule within
  ``FIT_TOLERANCE`` (mean absolute log-ratio of the block widths, pycls's ``e_fit``), with the
  rule's w0, wa, wm and depth ranges fitted to the best quarter of the members (written into
  the space, it replaces monotone widths, which it implies, and monotone depths: it sets the
  depths itself);
- ``fix``: a knob whose fANOVA importance is nil (below ``NIL_SHARE`` of an equal share) is
  fixed at the value whose members have the lowest mean error.

**Evidence**, for the satisfying subset S of members M (the whole population, or the members
left by the constraints accepted before): the EDFs of S and M (plain and complexity-normalised,
:func:`~.analysis.complexity_weights`), the largest gap between them, the two-sample
Kolmogorov-Smirnov test of S against M minus S (``scipy.stats.ks_2samp``: disjoint samples), and
a percentile-bootstrap 95% CI (``scipy.stats.bootstrap``, members resampled, S and M together) of
mean(S) - mean(M), complexity-normalised: the mean over the FLOP bins that hold members of S of
each bin's mean, as pycls's normalised EDF weighs them (equal-width bins over the members' FLOPs,
5 or fewer so that S has at least 5 members per bin on average: :func:`bins_for`).

**Acceptance rule**: a constraint is accepted when at least ``MIN_SUBSET`` members of M satisfy it
and the 95% CI of the normalised mean(S) - mean(M) does not lie above 0 (the constrained subset
is not detectably worse); rejected when the CI lies above 0; undecided with fewer members. This
is pycls's criterion (keep a constraint that simplifies the space without a loss in the error
EDF): a population of ~100 cannot show that a constraint helps, only that it does not hurt.
Candidates are tested on all members first; those not rejected are then accepted in order of
evidence (the upper end of that CI, lowest first). The constraints on the space's shape (tie,
monotone, schedule, width rule) come first, each re-tested on the members that satisfy the shape
accepted before it; the fixes after them, each decided on all members (in a uniform sample the
members with one knob at one value are a uniform sample of the others; nested fixes would leave a
third of the members per knob). A constraint is not applicable when it cannot be written into the
space together with the accepted ones, or when the space would then hold fewer than
``MIN_MODELS`` distinct in-budget models (too few for a fresh population to verify it).

Caveats: dozens of tests at 95% each; ``fix`` and ``width_rule`` pick their values from the
same errors they are then tested on (the subset looks better than it is); the fixes' joint
effect is not tested. ``--verify N`` answers all three: a fresh population of the refined space,
compared with the original (:func:`~.analysis.analyze`).
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from optuna.distributions import IntDistribution
from pydantic import ValidationError
from scipy import stats

from ..spec import NetworkSpec
from .analysis import (
    MIN_RELIABLE,
    UNBIASED_SAMPLERS,
    AnalysisError,
    Candidate,
    StudyData,
    complexity_weights,
    edf,
    edf_distance,
    importances,
    marginals,
)
from .analysis_schema import RefineResult
from .space import SearchSpace, SpaceError, space_data
from .space_knobs import INT_KNOBS, KNOBS
from .space_rules import interpolate, monotone_chains, smallest_quantum

__all__ = [
    "refine",
    "Refinement",
    "report_lines",
    "evidence",
    "bins_for",
    "fit_width_rule",
    "MIN_SUBSET",
    "MIN_MODELS",
    "CHECK_DRAWS",
    "MIN_MEMBERS",
    "FIT_TOLERANCE",
    "NIL_SHARE",
    "BEST_FRACTION",
]

MIN_SUBSET = MIN_RELIABLE  # members that must satisfy a constraint before it can be accepted
MIN_MEMBERS = 2 * MIN_SUBSET  # a population smaller than this is refused
FIT_TOLERANCE = 0.1  # mean |log(width / rule width)| over the blocks: widths within about 10%
NIL_SHARE = 0.25  # fANOVA importance below this share of an equal share (1 / knobs): nil
BEST_FRACTION = 0.25  # the best members, to which the width rule is fitted
BINS = 5  # FLOP bins of the complexity normalisation (analyze's default), at most
PER_BIN = 5  # satisfying members per bin on average, at least (bins_for)
MONOTONE_CANDIDATES = ("embed_dim", "depth", "num_heads")
SHAPE_KINDS = {"tie", "monotone", "schedule", "width_rule"}  # constraints on the space's shape (not fixes)
MIN_MODELS = 100  # distinct in-budget models a refined space keeps: a fresh population (pycls: 100) to verify it
CHECK_DRAWS = 5000  # random draws in which they must be found


@dataclass
class Member:
    """One population member: trial number, error (study score), FLOPs, spec, Optuna params."""

    number: int
    error: float
    flops: int
    spec: NetworkSpec
    params: dict[str, Any]

    def values(self, knob: str) -> list:
        """``knob``'s value in each stage, first to last."""
        return [getattr(s, knob) for s in self.spec.stages]


@dataclass
class Constraint:
    """A candidate constraint: which members satisfy it and how it is written into a space."""

    kind: str
    knob: str
    description: str
    satisfied: np.ndarray  # bool per member
    apply: Callable[[dict], None]  # edits space_data(space) in place; may raise ValueError
    details: dict[str, Any] = field(default_factory=dict)
    not_applicable: str | None = None


@dataclass
class Refinement:
    """What :func:`refine` found: the result (``refine.json``), the refined space, and the
    data the figures need."""

    result: dict
    space: SearchSpace
    errors: np.ndarray
    flops: np.ndarray
    masks: dict[str, np.ndarray]  # step description -> satisfied; plus "subset before" masks
    within: dict[str, np.ndarray]


# -- evidence -----------------------------------------------------------------------------------------
def _plain_difference(e: np.ndarray, m: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (e * m).sum(axis) / m.sum(axis) - e.mean(axis)


def _normalized_difference(e: np.ndarray, m: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the FLOP bins holding members of S of (S's bin mean - M's bin mean), which is
    sum_i w_i e_i of :func:`complexity_weights` for S minus the same for M (``b``: bin indices)."""
    total_s: Any = 0.0  # floats until the first bin makes them arrays
    total_m: Any = 0.0
    shared: Any = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(int(np.max(b)) + 1):
            in_bin = b == j
            count_s = (m * in_bin).sum(axis)
            has = count_s > 0
            mean_s = np.where(has, (e * m * in_bin).sum(axis) / np.maximum(count_s, 1), 0.0)
            mean_m = np.where(has, (e * in_bin).sum(axis) / np.maximum(in_bin.sum(axis), 1), 0.0)
            total_s, total_m, shared = total_s + mean_s, total_m + mean_m, shared + has
        return (total_s - total_m) / shared


def _bins(flops: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each FLOP count among ``bins`` equal-width bins over their range (complexity_weights')."""
    low, high = float(flops.min()), float(flops.max())
    if high <= low:
        return np.zeros(len(flops), dtype=int)
    edges = np.linspace(low, high, bins + 1)
    return np.clip(np.searchsorted(edges, flops, side="right") - 1, 0, bins - 1)


def bins_for(satisfying: int) -> int:
    """FLOP bins for a subset of ``satisfying`` members: ``BINS``, fewer for small subsets (at
    least ``PER_BIN`` members of the subset per bin on average), since a bin holding one member
    weighs as much as a bin holding twenty."""
    return max(1, min(BINS, satisfying // PER_BIN))


def _ci(data: tuple, statistic: Callable, seed: int, n_resamples: int) -> list[float] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: a zero-width or NaN interval, handled below
        boot = stats.bootstrap(
            data,
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return [low, high] if math.isfinite(low) and math.isfinite(high) else None


def evidence(
    errors: npt.ArrayLike, flops: npt.ArrayLike, satisfied: npt.ArrayLike, seed: int = 0, n_resamples: int = 1999
) -> dict:
    """Compare the members that satisfy a constraint (S) with all of them (M).

    Args:
        errors: per member, the error (lower is better), in the study's score.
        flops: per member, FLOPs (fvcore's count: one multiply-add = one flop).
        satisfied: per member, whether it satisfies the constraint.

    Returns:
        ``members``, ``satisfying``, ``ks_statistic`` and ``ks_pvalue`` (S against M minus S;
        None when either has fewer than 2), ``edf_gap`` and ``edf_gap_normalized`` (sup |F_S -
        F_M|), ``mean_difference`` and its ``mean_difference_ci95`` (complexity-normalised when
        ``normalized``; over ``bins`` FLOP bins, :func:`bins_for`), ``mean_difference_plain`` and
        ``mean_difference_plain_ci95``. Values are
        None where S has fewer than 2 members or a CI is undefined.
    """
    e, f, m = np.asarray(errors, float), np.asarray(flops, float), np.asarray(satisfied, bool)
    out: dict[str, Any] = {
        "members": int(e.size),
        "satisfying": int(m.sum()),
        "ks_statistic": None,
        "ks_pvalue": None,
        "edf_gap": None,
        "edf_gap_normalized": None,
        "mean_difference": None,
        "mean_difference_ci95": None,
        "mean_difference_plain": None,
        "mean_difference_plain_ci95": None,
        "normalized": False,
        "bins": None,
    }
    if m.sum() < 2:
        return out
    if (~m).sum() >= 2:
        ks = stats.ks_2samp(e[m], e[~m])
        out["ks_statistic"], out["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
    out["edf_gap"] = edf_distance(edf(e[m]), edf(e))
    out["mean_difference_plain"] = float(e[m].mean() - e.mean())
    mf = m.astype(float)
    out["mean_difference_plain_ci95"] = _ci((e, mf), _plain_difference, seed, n_resamples)
    bins = out["bins"] = bins_for(int(m.sum()))
    try:
        (ws, wm), _ = complexity_weights([f[m], f], bins=bins)
    except AnalysisError:
        ws = None
    if ws is not None:
        out["edf_gap_normalized"] = edf_distance(edf(e[m], ws), edf(e, wm))
        out["mean_difference"] = float(ws @ e[m] - wm @ e)
        out["mean_difference_ci95"] = _ci((e, mf, _bins(f, bins)), _normalized_difference, seed, n_resamples)
        out["normalized"] = out["mean_difference_ci95"] is not None
    if not out["normalized"]:
        out["mean_difference"], out["mean_difference_ci95"] = (
            out["mean_difference_plain"],
            out["mean_difference_plain_ci95"],
        )
    return out


def _verdict(test: dict) -> tuple[str, str]:
    if test["satisfying"] < MIN_SUBSET:
        return "undecided", (
            f"only {test['satisfying']} of {test['members']} members satisfy it (fewer than "
            f"{MIN_SUBSET}); test it on a fresh population of the refined space"
        )
    ci = test["mean_difference_ci95"]
    what = "complexity-normalised " if test["normalized"] else ""
    if ci is None:
        return "undecided", "no confidence interval could be computed"
    if ci[0] > 0:
        return "rejected", (f"worse: the 95% CI of the {what}mean difference [{ci[0]:+.4g}, {ci[1]:+.4g}] lies above 0")
    return "accepted", (
        f"not worse: the 95% CI of the {what}mean difference [{ci[0]:+.4g}, {ci[1]:+.4g}] does not "
        f"lie above 0, {test['satisfying']} of {test['members']} members"
    )


# -- the width rule fit -------------------------------------------------------------------------------
def fit_width_rule(
    blocks: Sequence[int], quantum: int, num_stages: int, grid: dict[str, np.ndarray], cache: dict | None = None
) -> tuple[float, dict | None]:
    """The RegNet rule (w0, wa, wm over ``grid``; depth = len(blocks)) closest to the per-block
    widths ``blocks`` among rules that give exactly ``num_stages`` stages: pycls's ``e_fit``, the
    mean over blocks of |log(width / rule width)|.

    Returns:
        (e_fit, ``{"w0", "wa", "wm", "depth"}``), or (inf, None) when no rule of the grid gives
        ``num_stages`` stages with this depth.
    """
    depth = len(blocks)
    key = (depth, quantum)
    if cache is None or key not in cache:
        w0, wa, wm = np.meshgrid(grid["w0"], grid["wa"], grid["wm"], indexing="ij")
        w0, wa, wm = w0.ravel(), wa.ravel(), wm.ravel()
        u = w0[:, None] + wa[:, None] * np.arange(depth)[None, :]
        steps = np.round(np.log(u / w0[:, None]) / np.log(wm[:, None]))
        widths = np.round(w0[:, None] * wm[:, None] ** steps / quantum) * quantum
        distinct = 1 + (np.diff(widths, axis=1) != 0).sum(axis=1)
        valid = (distinct == num_stages) & (steps.max(axis=1) + 1 == num_stages) & (widths.min(axis=1) > 0)
        entry = (w0[valid], wa[valid], wm[valid], np.log(widths[valid]))
        if cache is not None:
            cache[key] = entry
    else:
        entry = cache[key]
    w0, wa, wm, log_widths = entry
    if w0.size == 0:
        return math.inf, None
    errors = np.abs(log_widths - np.log(np.asarray(blocks, float))[None, :]).mean(axis=1)
    best = int(np.argmin(errors))
    return float(errors[best]), {"w0": int(w0[best]), "wa": float(wa[best]), "wm": float(wm[best]), "depth": depth}


def _blocks(spec: NetworkSpec) -> list[int]:
    return [s.embed_dim for s in spec.stages for _ in range(s.depth)]


# -- candidate constraints ----------------------------------------------------------------------------
def _remove(data: dict, knob: str) -> None:
    data.get("stage_defaults", {}).pop(knob, None)
    for stage in data["stages"]:
        stage.pop(knob, None)


def _rules(data: dict) -> dict:
    return data.setdefault("rules", {})


def _drop_monotone(data: dict, knob: str) -> None:
    rules = data.get("rules", {})
    if knob in rules.get("monotone", []):
        rules["monotone"] = [k for k in rules["monotone"] if k != knob]
        if not rules["monotone"]:
            rules.pop("monotone")


def _stage_values(space: SearchSpace, index: int, knob: str) -> list | None:
    """The values a stage's knob can take, after the monotone rule (None: continuous)."""
    for (a, b), combos in space.monotone_options.get(knob, {}).items():
        if a <= index <= b:
            return sorted({combo[index - a] for combo in combos})
    return space.stage_values(index, knob)


def _tie_constraints(space: SearchSpace, members: list[Member]) -> list[Constraint]:
    out = []
    n = len(space.stages)
    for knob in KNOBS:
        sets = [_stage_values(space, i, knob) for i in range(n)]
        if n < 2 or knob in space.rules.schedules or (space.rules.width and knob in ("embed_dim", "depth")):
            continue
        if _one_value_already(space, knob, sets):
            continue
        out.append(_tie_constraint(knob, sets, members))
    return out


def _one_value_already(space: SearchSpace, knob: str, sets: list[list | None]) -> bool:
    """Whether ``knob`` takes one value in every stage already (tied, or one value everywhere):
    no tie to test."""
    definitions = [d.get(knob) for d in space.stage_definitions()]
    if all(d is not None and d.tie for d in definitions) and len({d.tie for d in definitions if d is not None}) == 1:
        return True  # tied already
    return all(s is not None and len(set(s)) == 1 for s in sets) and len({s[0] for s in sets if s is not None}) == 1


def _tie_constraint(knob: str, sets: list[list | None], members: list[Member]) -> Constraint:
    """The tie of ``knob`` across stages (``sets``: the values each stage allows)."""
    satisfied = np.array([len(set(m.values(knob))) == 1 for m in members])
    description = f"{knob} tied across stages"
    if any(s is None for s in sets):
        reason = f"{knob} is continuous in some stage; a tie needs finite values"
        return Constraint("tie", knob, description, satisfied, lambda d: None, not_applicable=reason)
    common = _common_values(sets)
    if not common:
        reason = f"no {knob} value is allowed in every stage"
        return Constraint("tie", knob, description, satisfied, lambda d: None, not_applicable=reason)
    return Constraint(
        "tie",
        knob,
        f"{description} (one of {_show(common)})",
        satisfied,
        functools.partial(_write_tie, knob=knob),
        {"values": _plain(common)},
    )


def _write_tie(data: dict, knob: str) -> None:
    """Tie ``knob`` across the stages of the space data, over the values every stage still allows
    (ValueError when none is left, or the knob is no longer per stage)."""
    current = SearchSpace.model_validate(data)
    sets = [current.stage_values(i, knob) for i in range(len(current.stages))]
    if any(s is None for s in sets):
        raise ValueError(f"{knob} is no longer a per-stage knob")
    values = _common_values(sets)
    if not values:
        raise ValueError(f"no {knob} value is left in every stage")
    _remove(data, knob)
    _drop_monotone(data, knob)  # a tied knob never decreases
    plain = _plain(values)
    data.setdefault("stage_defaults", {})[knob] = {"choices": plain, "tie": knob} if len(plain) > 1 else plain[0]


def _common_values(sets: Sequence[Sequence | None]) -> list:
    """The values every stage allows, sorted (values of one type together)."""
    return sorted(set.intersection(*(set(s) for s in sets if s is not None)), key=lambda v: (str(type(v)), v))


def _plain(values: Sequence) -> list:
    """Values as the space file writes them: tuples as lists."""
    return [list(v) if isinstance(v, tuple) else v for v in values]


def _show(values: Sequence) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _monotone_constraints(space: SearchSpace, members: list[Member]) -> list[Constraint]:
    out = []
    for knob in MONOTONE_CANDIDATES:
        satisfied = np.array([all(a <= b for a, b in zip(m.values(knob), m.values(knob)[1:])) for m in members])
        description = f"{knob} non-decreasing across stages"
        reason = None
        if knob in space.rules.monotone:
            continue
        if space.rules.width and knob in ("embed_dim", "depth"):
            reason = f"{knob} is set by the width rule"
        elif knob in space.rules.schedules:
            reason = f"{knob} follows a schedule"
        else:
            sets = [space.stage_values(i, knob) for i in range(len(space.stages))]
            if any(s is None for s in sets):
                reason = f"{knob} is continuous in some stage"
            elif not monotone_chains([s for s in sets if s is not None]):
                reason = f"the stages' {knob} ranges never overlap: it is non-decreasing already"

        def apply(data: dict, knob: str = knob) -> None:
            rules = _rules(data)
            rules["monotone"] = [*rules.get("monotone", []), knob]

        out.append(Constraint("monotone", knob, description, satisfied, apply, not_applicable=reason))
    return out


def _nearest(x: float, options: Sequence[float]) -> float:
    return min(options, key=lambda v: (abs(v - x), v))


def _schedule_constraints(space: SearchSpace, members: list[Member]) -> list[Constraint]:
    knob, n = "attn_ratio", len(space.stages)
    if n < 3 or knob in space.rules.schedules:
        return []
    sets = [space.stage_values(i, knob) for i in range(n)]
    description = "attn_ratio linear from the first to the last stage"
    if any(s is None for s in sets):
        return [
            Constraint(
                "schedule",
                knob,
                description,
                np.zeros(len(members), bool),
                lambda d: None,
                not_applicable="attn_ratio is continuous in some stage",
            )
        ]
    values = sorted(set().union(*(set(s) for s in sets if s is not None)))
    if len(values) < 2:
        return []
    satisfied = []
    for m in members:
        shares = m.values(knob)
        line = [_nearest(x, values) for x in interpolate(shares[0], shares[-1], n)]
        satisfied.append(all(math.isclose(a, b) for a, b in zip(shares, line)))

    def apply(data: dict) -> None:
        current = SearchSpace.model_validate(data)
        stages = current.stage_definitions()
        first, last = stages[0].get(knob), stages[-1].get(knob)
        if first is None or last is None or first.tie or last.tie:
            raise ValueError("attn_ratio is tied or unset at an end")
        ends = space_data(current)
        short = (
            {**ends.get("stage_defaults", {}), **ends["stages"][0]}[knob],
            {**ends.get("stage_defaults", {}), **ends["stages"][-1]}[knob],
        )
        _remove(data, knob)
        _rules(data).setdefault("schedules", {})[knob] = {"first": short[0], "last": short[1], "values": values}

    return [
        Constraint(
            "schedule",
            knob,
            f"{description} (rounded to {_show(values)})",
            np.array(satisfied),
            apply,
            {"values": values},
        )
    ]


def _width_constraint(space: SearchSpace, members: list[Member], errors: np.ndarray) -> list[Constraint]:
    n = len(space.stages)
    description = "stage widths and depths from RegNet's quantized linear rule"
    if space.rules.width is not None or n < 2:
        return []
    sets = [{k: space.stage_values(i, k) for k in ("attn_ratio", "num_heads", "mlp_ratio")} for i in range(n)]
    smallest = smallest_quantum(sets)
    if smallest is None:
        return [
            Constraint(
                "width_rule",
                "embed_dim",
                description,
                np.zeros(len(members), bool),
                lambda d: None,
                not_applicable="no quantum keeps every stage's heads and ratios valid",
            )
        ]
    quantum = smallest * 8 // math.gcd(smallest, 8)  # pycls's 8, or a multiple the stages need
    grid = _width_grid(members, quantum)
    cache: dict = {}
    fits = [fit_width_rule(_blocks(m.spec), quantum, n, grid, cache) for m in members]
    best = _best_fits(fits, errors)
    if len(best) < 3:
        return [
            Constraint(
                "width_rule",
                "embed_dim",
                description,
                np.zeros(len(members), bool),
                lambda d: None,
                {"quantum": quantum, "fit_tolerance": FIT_TOLERANCE},
                not_applicable=f"{len(best)} of the best {BEST_FRACTION:.0%} of the members follow a "
                f"{n}-stage rule within e_fit {FIT_TOLERANCE} (3 needed to fit ranges)",
            )
        ]
    ranges = {k: (min(b[k] for b in best), max(b[k] for b in best)) for k in ("w0", "wa", "wm", "depth")}
    rule = {k: _rule_range(k, *ranges[k], quantum) for k in ("w0", "wa", "wm", "depth")} | {"quantum": quantum}
    details = {
        "quantum": quantum,
        "fit_tolerance": FIT_TOLERANCE,
        "rule": rule,
        "fitted_best": len(best),
        "fits_within_tolerance": int(sum(f[0] <= FIT_TOLERANCE for f in fits)),
    }
    return [
        Constraint(
            "width_rule",
            "embed_dim",
            f"{description} (w0 {_span(ranges['w0'])}, wa {_span(ranges['wa'])}, "
            f"wm {_span(ranges['wm'])}, depth {_span(ranges['depth'])}, "
            f"quantum {quantum})",
            _follow_fitted_rules(members, ranges, grid, quantum, n),
            functools.partial(_write_width_rule, rule=rule),
            details,
        )
    ]


def _width_grid(members: list[Member], quantum: int) -> dict[str, np.ndarray]:
    """The w0, wa and wm values the rule is fitted over: up to the widest block of any member."""
    widest = max(max(_blocks(m.spec)) for m in members)
    return {
        "w0": np.arange(quantum, widest + 1, quantum, dtype=float),
        "wa": np.linspace(0.5, widest, 64),
        "wm": np.linspace(1.2, 4.0, 29),
    }


def _best_fits(fits: list[tuple[float, dict | None]], errors: np.ndarray) -> list[dict]:
    """The fitted rules of the best ``BEST_FRACTION`` of the members (lowest error first) that
    follow their rule within ``FIT_TOLERANCE``."""
    order = np.argsort(errors, kind="stable")
    best = order[: max(1, int(math.ceil(BEST_FRACTION * len(fits))))]
    return [cast(dict, fits[i][1]) for i in best if fits[i][0] <= FIT_TOLERANCE]


def _follow_fitted_rules(
    members: list[Member], ranges: dict[str, tuple], grid: dict[str, np.ndarray], quantum: int, num_stages: int
) -> np.ndarray:
    """Per member, whether a rule within the fitted ``ranges`` gives its blocks within ``FIT_TOLERANCE``."""
    inside = {k: (grid[k] >= ranges[k][0] - 1e-9) & (grid[k] <= ranges[k][1] + 1e-9) for k in ("w0", "wa", "wm")}
    narrow = {k: grid[k][inside[k]] for k in inside}
    narrow_cache: dict = {}
    satisfied = np.zeros(len(members), bool)
    for i, m in enumerate(members):
        blocks = _blocks(m.spec)
        if ranges["depth"][0] <= len(blocks) <= ranges["depth"][1]:
            satisfied[i] = fit_width_rule(blocks, quantum, num_stages, narrow, narrow_cache)[0] <= FIT_TOLERANCE
    return satisfied


def _rule_range(k: str, low: float, high: float, quantum: int) -> Any:
    """The width rule's definition of parameter ``k`` (w0, wa, wm, depth) over [low, high]: a value or a range."""
    if low == high:
        return int(low) if k in ("w0", "depth") else round(low, 4)
    if k == "w0":
        return {"low": int(low), "high": int(high), "step": quantum}
    if k == "depth":
        return {"low": int(low), "high": int(high)}
    return {"low": round(low, 4), "high": round(high, 4)}


def _write_width_rule(data: dict, rule: dict) -> None:
    """Write the width ``rule`` into the space data in place of the stages' widths and depths."""
    for knob in ("embed_dim", "depth"):  # the rule sets both: widths never decrease, depths are its run lengths
        _drop_monotone(data, knob)
        _remove(data, knob)
    _rules(data)["width"] = rule


def _span(pair: tuple[float, float]) -> str:
    low, high = pair
    return f"{low:.3g}" if low == high else f"{low:.3g}-{high:.3g}"


_STAGE = re.compile(r"stage(\d+)\.(\w+)")
_CHAIN = re.compile(r"stage(\d+)-(\d+)\.(\w+)")


def _set_param(data: dict, name: str, value: Any) -> None:
    """Fix Optuna parameter ``name`` at ``value`` in the space data (raises ValueError when the
    parameter is no longer there to fix)."""
    current = SearchSpace.model_validate(data)
    stage = _STAGE.fullmatch(name)
    in_chain = stage is not None and stage[2] in current.rules.monotone  # analysis splits chains into stages
    if name not in current.param_names() and not in_chain:
        raise ValueError(f"{name} is no longer a parameter of the space")
    if not _set_stage_param(data, name, value):
        _set_shared_param(data, name, value)


def _set_stage_param(data: dict, name: str, value: Any) -> bool:
    """Fix a stage's parameter (``stage2.mlp_ratio``) or a monotone chain's (``stage2-3.embed_dim``
    = ``"48,96"``); False when ``name`` is neither."""
    if match := _CHAIN.fullmatch(name):
        a, b, knob = int(match[1]), int(match[2]), match[3]
        for i, v in zip(range(a - 1, b), str(value).split(",")):
            data["stages"][i][knob] = int(float(v)) if knob in INT_KNOBS else float(v)
    elif match := _STAGE.fullmatch(name):
        data["stages"][int(match[1]) - 1][match[2]] = value
    else:
        return False
    return True


def _set_shared_param(data: dict, name: str, value: Any) -> None:
    """Fix a parameter shared by stages (``tied.``), the network's, the width rule's or a schedule's."""
    if name.startswith("tied."):
        tie = name[len("tied.") :]
        for where in [data.get("stage_defaults", {}), *data["stages"]]:
            for knob, definition in list(where.items()):
                if isinstance(definition, dict) and definition.get("tie") == tie:
                    where[knob] = value
    elif name.startswith("network."):
        data["network"][name[len("network.") :]] = value
    elif name.startswith("width."):
        _rules(data)["width"][name[len("width.") :]] = value
    elif name.startswith("schedule."):
        _, knob, end = name.split(".")
        _rules(data)["schedules"][knob][end] = value
    else:
        raise ValueError(f"cannot fix {name}")


def _fix_constraints(
    space: SearchSpace, members: list[Member], candidates: list[Candidate], distributions: dict, seed: int
) -> tuple[list[Constraint], dict]:
    importance, single, notes = importances(candidates, distributions, seed)
    fanova = importance["fanova"]
    if not fanova:
        return [], {"importance": {}, "notes": notes}
    threshold = NIL_SHARE / len(fanova)
    table = marginals(candidates)
    out = []
    for knob, value in sorted(fanova.items(), key=lambda kv: kv[1]):
        if value >= threshold:
            continue
        rows = [r for r in table.get(knob, []) if r["n"] >= 3] or table.get(knob, [])
        row = min(rows, key=lambda r: r["mean_error"])
        if "range" in row:  # a binned numeric knob: the members of the bin, fixed at its mean
            low, high = row["range"]
            satisfied = np.array([low <= m.params.get(knob, math.nan) <= high for m in members])
            whole = isinstance(distributions[knob], IntDistribution)
            fixed: Any = int(round(row["value"])) if whole else float(f"{row['value']:.4g}")
        else:
            fixed = row["value"]
            satisfied = np.array([_same(m.params.get(knob), fixed) for m in members])
        out.append(
            Constraint(
                "fix",
                knob,
                f"{knob} fixed at {fixed} (fANOVA importance {value:.3f}, below {threshold:.3f})",
                satisfied,
                functools.partial(_set_param, name=knob, value=fixed),
                {"importance": value, "value": fixed, "threshold": threshold},
            )
        )
    return out, {"importance": fanova, "notes": notes, "single_valued": single}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


# -- refine -------------------------------------------------------------------------------------------
def refine(data: StudyData, force: bool = False, seed: int = 0, n_resamples: int = 1999) -> Refinement:
    """Test candidate constraints on a population study and build the refined space.

    Args:
        data: the population study (:func:`~.analysis.study_data`); members are its candidates
            with a stored spec.
        force: refine a study that is not a population study (another sampler, a pruner).

    Returns:
        A :class:`Refinement`: ``result`` is ``refine.json``
        (:class:`~.analysis_schema.RefineResult`), ``space`` the refined space.

    Raises:
        AnalysisError: a study that is not a population study (without ``force``), or with fewer
            than ``MIN_MEMBERS`` members.
    """
    if not force:
        _check_population(data)
    candidates, members = _members(data)
    space = data.config.space
    errors = np.array([m.error for m in members])
    flops = np.array([m.flops for m in members], float)
    constraints = (
        _tie_constraints(space, members)
        + _monotone_constraints(space, members)
        + _schedule_constraints(space, members)
        + _width_constraint(space, members, errors)
    )
    fixes, importance_info = _fix_constraints(space, members, candidates, data.distributions, seed)
    constraints += fixes
    test = functools.partial(evidence, seed=seed, n_resamples=n_resamples)
    steps, masks, within = _first_tests(constraints, space, errors, flops, test)
    refined_data, current, accepted = _accept_greedily(constraints, steps, space, errors, flops, within, test, seed)
    refined = _refined_space(refined_data, data, len(members), len(accepted))
    result = {
        "study": data.name,
        "source": data.source,
        "space": space.name,
        "refined_space": refined.name,
        "refined_space_file": "refined_space.yaml",
        "score": data.score.model_dump(exclude_none=True),
        "members": len(members),
        "rule": _RULE,
        "knobs_before": space.param_names(),
        "knobs_after": refined.param_names(),
        "steps": steps,
        "accepted": accepted,
        "members_left": int(current.sum()),
        "final_test": test(errors, flops, current) if accepted else None,
        "importance": importance_info["importance"],
        "warnings": _refine_warnings(data, steps, len(members)),
    }
    result = RefineResult.model_validate(result).model_dump(exclude_unset=True)
    masks["all accepted constraints"], within["all accepted constraints"] = current, np.ones(len(members), bool)
    return Refinement(result, refined, errors, flops, masks, within)


def _check_population(data: StudyData) -> None:
    """Refuse a study that is not a population study (a biased sampler, a pruner)."""
    sampler, pruner = data.settings.get("sampler", "unknown"), data.settings.get("pruner", "unknown")
    if sampler not in UNBIASED_SAMPLERS or pruner != "none" or data.pruned_by_pruner:
        raise AnalysisError(
            f"study {data.name!r} is not a population study (sampler {sampler}, pruner {pruner}): "
            f"its members are not a uniform sample of the space, so subsets of them say little "
            f"about subspaces; run xnetspace search --population, or pass --force"
        )


def _members(data: StudyData) -> tuple[list[Candidate], list[Member]]:
    """The study's candidates with a stored spec, and the members made of them (AnalysisError when
    there are fewer than ``MIN_MEMBERS``)."""
    candidates = [c for c in data.candidates if c.spec is not None]
    members = [Member(c.number, c.error, c.flops, NetworkSpec.model_validate(c.spec), c.knobs) for c in candidates]
    if len(members) < MIN_MEMBERS:
        raise AnalysisError(
            f"study {data.name!r} has {len(members)} members with a stored spec; refine needs at "
            f"least {MIN_MEMBERS} (each constraint needs {MIN_SUBSET} members that satisfy it; pycls "
            f"sampled 100 or more per space)"
        )
    return candidates, members


def _first_tests(
    constraints: list[Constraint],
    space: SearchSpace,
    errors: np.ndarray,
    flops: np.ndarray,
    test: Callable[..., dict],
) -> tuple[list[dict], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each constraint written into the original space alone and, where it can be, tested on all
    members: refine.json's steps, and per tested constraint its mask and the members tested within."""
    everyone = np.ones(len(errors), bool)
    steps: list[dict] = []
    masks, within = {}, {}
    for c in constraints:
        if c.not_applicable is None:
            _check_alone(c, space)
        step = _new_step(c)
        if c.not_applicable is None:
            step["first_test"] = test(errors, flops, c.satisfied)
            step["verdict"], step["reason"] = _verdict(step["first_test"])
            masks[c.description] = c.satisfied
            within[c.description] = everyone
        steps.append(step)
    return steps, masks, within


def _check_alone(c: Constraint, space: SearchSpace) -> None:
    """Mark ``c`` not applicable when, written into the original space alone, it gives no valid space."""
    try:
        alone = _fresh(space)
        c.apply(alone)
        SearchSpace.model_validate(alone)
    except (ValueError, ValidationError) as err:
        c.not_applicable = f"cannot be written into the space: {_first_line(err)}"


def _new_step(c: Constraint) -> dict[str, Any]:
    """Constraint ``c``'s step of refine.json, untested."""
    return {
        "kind": c.kind,
        "knob": c.knob,
        "description": c.description,
        "order": None,
        "first_test": None,
        "test": None,
        "verdict": "not applicable",
        "reason": c.not_applicable or "",
        "details": c.details,
    }


def _ranked(steps: list[dict], constraints: list[Constraint]) -> list[int]:
    """The constraints accepted on all members, in the order they are combined."""
    # greedy: strongest evidence first; the space's shape (tie, monotone, schedule, width rule)
    # first, each re-tested within the members left by the shape accepted before it; then the
    # fixes, each decided on all members, not within the shrinking subsets: in a uniform sample
    # the members with one knob at one value are a uniform sample of the other knobs (the shape
    # included), and nested subsets leave too few members to decide anything (a third per knob,
    # and a monotone chain of widths keeps 15 of 100). The fixes' joint effect, with the shape,
    # is what --verify measures on a fresh population.
    return _by_evidence(steps, constraints, SHAPE_KINDS) + _by_evidence(steps, constraints, {"fix"})


def _by_evidence(steps: list[dict], constraints: list[Constraint], kinds: set[str]) -> list[int]:
    """The accepted constraints of ``kinds``: the lowest upper end of the CI first, then the most members."""
    picked = (i for i, s in enumerate(steps) if s["verdict"] == "accepted" and constraints[i].kind in kinds)
    return sorted(
        picked,
        key=lambda i: (steps[i]["first_test"]["mean_difference_ci95"][1], -steps[i]["first_test"]["satisfying"]),
    )


def _accept_greedily(
    constraints: list[Constraint],
    steps: list[dict],
    space: SearchSpace,
    errors: np.ndarray,
    flops: np.ndarray,
    within: dict[str, np.ndarray],
    test: Callable[..., dict],
    seed: int,
) -> tuple[dict, np.ndarray, list[str]]:
    """Combine the constraints accepted on all members, in :func:`_ranked` order, each re-tested
    (a shape within the members satisfying the shape accepted before it; a fix on all members).

    Returns:
        the refined space's data, which members satisfy every accepted constraint, and the
        accepted constraints' descriptions; ``steps`` and ``within`` are updated in place.
    """
    everyone = np.ones(len(errors), bool)
    current, refined_data, accepted = everyone.copy(), _fresh(space), []
    for order, i in enumerate(_ranked(steps, constraints), start=1):
        c, step = constraints[i], steps[i]
        step["order"] = order
        trial_data = _copy(refined_data)
        try:
            _write_with_enough_models(c, trial_data, seed)
        except (ValueError, ValidationError, SpaceError) as err:
            step["verdict"], step["reason"] = (
                "not applicable",
                (f"cannot be combined with the constraints accepted before it: {_first_line(err)}"),
            )
            continue
        tested_in = everyone if c.kind == "fix" else current
        step["test"] = test(errors[tested_in], flops[tested_in], c.satisfied[tested_in])
        step["verdict"], step["reason"] = _verdict(step["test"])
        within[c.description] = tested_in.copy()
        if step["verdict"] == "accepted":
            refined_data, current = trial_data, current & c.satisfied
            accepted.append(c.description)
        elif step["verdict"] == "undecided":
            step["reason"] += " (after the constraints accepted before it)"
    return refined_data, current, accepted


def _write_with_enough_models(c: Constraint, data: dict, seed: int) -> None:
    """Write ``c`` into the space data; SpaceError when the space then holds fewer than
    ``MIN_MODELS`` distinct in-budget models (ValueError, ValidationError: it cannot be written)."""
    c.apply(data)
    models = SearchSpace.model_validate(data).distinct_specs(MIN_MODELS, seed, "check", CHECK_DRAWS)
    if len(models) < MIN_MODELS:
        raise SpaceError(
            f"it leaves fewer than {MIN_MODELS} distinct in-budget models ({len(models)} in "
            f"{CHECK_DRAWS} draws): too few for a fresh population to verify the space"
        )


def _refined_space(refined_data: dict, data: StudyData, members: int, accepted: int) -> SearchSpace:
    """The refined space: named after the original, trained with the population's recipe."""
    space = data.config.space
    refined_data["name"] = _refined_name(space.name)
    refined_data["description"] = (
        f"{space.name} refined by xnetspace refine from study {data.name} "
        f"({members} members): {accepted} constraint(s) accepted"
    )
    refined_data["train"] = data.config.train.model_dump(mode="json")  # the recipe the population was trained with
    try:
        return SearchSpace.model_validate(refined_data)
    except ValidationError as err:  # every step was validated: a bug if it happens
        raise SpaceError(f"the refined space is not valid: {_first_line(err)}") from err


def _refine_warnings(data: StudyData, steps: list[dict], members: int) -> list[str]:
    """refine.json's notes: the many tests, the values picked from the errors they are tested on,
    a small population, a forced study."""
    sampler, pruner = data.settings.get("sampler", "unknown"), data.settings.get("pruner", "unknown")
    warnings_ = [
        f"{sum(s['first_test'] is not None for s in steps)} constraints were tested at 95% each: some "
        f"verdicts are chance; --verify N samples a fresh population of the refined space and compares it "
        f"with this one",
        "fix and width_rule take their values from the errors they are then tested on (their subsets look "
        "better than they are), and each fix is decided alone, not with the others; --verify is the unbiased "
        "check",
    ]
    if members < 100:
        warnings_.append(
            f"{members} members: pycls sampled 100 or more per space; subsets are small and the "
            f"shape's greedy steps shrink them fast"
        )
    if sampler not in UNBIASED_SAMPLERS or pruner != "none":
        warnings_.append(
            f"refined with --force from a study with sampler {sampler}, pruner {pruner}: not a uniform sample"
        )
    return warnings_


def report_lines(result: dict, files: dict[str, Path] | None = None) -> list[str]:
    """``refine.json`` in words (``xnetspace refine``): each tested constraint with its verdict, the
    members that satisfy it and why, the knobs before and after, the --verify comparison when
    there is one, the notes, and the files written when given."""
    score = result["score"]
    lines = [f"{result['study']} ({result['space']}): {result['members']} members, {score['label']} ({score['unit']})"]
    for step in sorted(result["steps"], key=lambda s: (s["order"] is None, s["order"] or 0)):
        test = step["test"] or step["first_test"]
        where = f"{test['satisfying']}/{test['members']}" if test else "-"
        lines.append(f"  {step['verdict']:<14} {where:>8}  {step['description']}: {step['reason']}")
    lines.append(
        f"accepted {len(result['accepted'])}; knobs {len(result['knobs_before'])} -> "
        f"{len(result['knobs_after'])}; members satisfying all accepted: {result['members_left']}"
    )
    if result.get("verify"):
        c = result["verify"]["comparison"]
        if c.get("mean_difference_ci95"):
            lo, hi = c["mean_difference_ci95"]
            lines.append(
                f"verify: {result['verify']['members']} fresh members; refined minus original mean "
                f"{c['mean_difference']:+.4g} [95% CI {lo:+.4g}, {hi:+.4g}], KS {c['ks_statistic']:.3f} "
                f"(p = {c['ks_pvalue']:.3g}): {c['verdict']}"
            )
    lines += [f"  note: {note}" for note in result["warnings"]]
    if files is not None:
        lines.append("files: " + ", ".join(str(p) for p in files.values()))
    return lines


_RULE = (
    f"accept a constraint when at least {MIN_SUBSET} members satisfy it and the 95% bootstrap CI of "
    f"mean(satisfying) - mean(members), complexity-normalised, does not lie above 0 (not detectably worse); "
    f"reject when it lies above 0; undecided with fewer members. Tested on all members, then accepted greedily "
    f"by the upper end of that CI (lowest first), each re-tested on the members that satisfy every constraint "
    f"accepted before it."
)


def _refined_name(name: str) -> str:
    """``tiny_cpu`` -> ``tiny_cpu_refined`` -> ``tiny_cpu_refined2`` -> ``tiny_cpu_refined3``."""
    match = re.fullmatch(r"(.*)_refined(\d*)", name)
    if match is None:
        return f"{name}_refined"
    return f"{match[1]}_refined{int(match[2] or 1) + 1}"


def _fresh(space: SearchSpace) -> dict:
    return _copy(space_data(space))


def _copy(data: Any) -> Any:
    """A deep copy of plain data (dicts, lists, scalars)."""
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_copy(v) for v in data]
    return data


def _first_line(err: Exception) -> str:
    if isinstance(err, ValidationError):
        e = err.errors()[0]
        where = ".".join(map(str, e["loc"]))
        return f"{where + ': ' if where else ''}{e['msg'].removeprefix('Value error, ')}"
    return str(err).splitlines()[0]
