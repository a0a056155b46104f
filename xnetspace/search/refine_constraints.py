"""The candidate constraints of ``xnetspace refine`` (:class:`Constraint`): which population
members satisfy each, and how each is written into a space's data (``space_data(space)``; the
statistics: :mod:`.refine_evidence`; the greedy pass that combines them: :mod:`.refine`).

- ``tie``: a knob takes one value in every stage;
- ``monotone``: widths, depths or heads never decrease from one stage to the next;
- ``schedule``: the attention share runs linearly from the first to the last stage (rounded to
  the share values the space allows);
- ``width_rule``: the stage widths and depths follow RegNet's quantized linear rule within
  ``FIT_TOLERANCE`` (mean absolute log-ratio of the block widths, pycls's ``e_fit``:
  :func:`fit_width_rule`), with the rule's w0, wa, wm and depth ranges fitted to the best quarter
  of the members (written into the space, it replaces monotone widths, which it implies, and
  monotone depths: it sets the depths itself);
- ``fix``: a knob whose fANOVA importance is nil (below ``NIL_SHARE`` of an equal share) is
  fixed at the value whose members have the lowest mean error (:func:`set_param`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from optuna.distributions import IntDistribution

from ..spec import NetworkSpec
from .analysis import Candidate, importances, marginals
from .analysis_schema import RefineKind
from .space import SearchSpace, space_data
from .space_knobs import INT_KNOBS, KNOBS
from .space_rules import interpolate, monotone_chains, smallest_quantum

__all__ = [
    "Member",
    "Constraint",
    "candidate_constraints",
    "fit_width_rule",
    "set_param",
    "FIT_TOLERANCE",
    "NIL_SHARE",
    "BEST_FRACTION",
    "MONOTONE_CANDIDATES",
]

FIT_TOLERANCE = 0.1  # mean |log(width / rule width)| over the blocks: widths within about 10%
NIL_SHARE = 0.25  # fANOVA importance below this share of an equal share (1 / knobs): nil
BEST_FRACTION = 0.25  # the best members, to which the width rule is fitted
MONOTONE_CANDIDATES = ("embed_dim", "depth", "num_heads")


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

    kind: RefineKind
    knob: str
    description: str
    satisfied: np.ndarray  # bool per member
    apply: Callable[[dict], None]  # edits space_data(space) in place; may raise ValueError
    details: dict[str, Any] = field(default_factory=dict)
    not_applicable: str | None = None


def candidate_constraints(
    space: SearchSpace,
    members: list[Member],
    candidates: list[Candidate],
    distributions: dict,
    seed: int = 0,
) -> tuple[list[Constraint], dict[str, float]]:
    """Every candidate constraint of ``space`` on its population ``members`` (``candidates``: the
    same members as the analysis reads them, with the study's ``distributions``): the constraints
    on the space's shape (ties, monotone knobs, the schedule, the width rule), then the fixes.

    Returns:
        the constraints, and the fANOVA importance of each varying knob over the members.
    """
    errors = np.array([m.error for m in members])
    constraints = (
        _tie_constraints(space, members)
        + _monotone_constraints(space, members)
        + _schedule_constraints(space, members)
        + _width_constraint(space, members, errors)
    )
    fixes, importance = _fix_constraints(members, candidates, distributions, seed)
    return constraints + fixes, importance


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
        return Constraint(RefineKind.TIE, knob, description, satisfied, lambda d: None, not_applicable=reason)
    common = _common_values(sets)
    if not common:
        reason = f"no {knob} value is allowed in every stage"
        return Constraint(RefineKind.TIE, knob, description, satisfied, lambda d: None, not_applicable=reason)
    return Constraint(
        RefineKind.TIE,
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

        out.append(Constraint(RefineKind.MONOTONE, knob, description, satisfied, apply, not_applicable=reason))
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
                RefineKind.SCHEDULE,
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
            RefineKind.SCHEDULE,
            knob,
            f"{description} (rounded to {_show(values)})",
            np.array(satisfied),
            apply,
            {"values": values},
        )
    ]


_WIDTH_RULE = "stage widths and depths from RegNet's quantized linear rule"


def _width_rule_not_applicable(members: int, why: str, details: dict | None = None) -> Constraint:
    """The width rule as a constraint no member satisfies and that cannot be written, for ``why``."""
    return Constraint(
        RefineKind.WIDTH_RULE,
        "embed_dim",
        _WIDTH_RULE,
        np.zeros(members, bool),
        lambda d: None,
        details or {},
        not_applicable=why,
    )


def _width_constraint(space: SearchSpace, members: list[Member], errors: np.ndarray) -> list[Constraint]:
    n = len(space.stages)
    if space.rules.width is not None or n < 2:
        return []
    sets = [{k: space.stage_values(i, k) for k in ("attn_ratio", "num_heads", "mlp_ratio")} for i in range(n)]
    smallest = smallest_quantum(sets)
    if smallest is None:
        return [_width_rule_not_applicable(len(members), "no quantum keeps every stage's heads and ratios valid")]
    quantum = smallest * 8 // math.gcd(smallest, 8)  # pycls's 8, or a multiple the stages need
    grid = _width_grid(members, quantum)
    cache: dict = {}
    fits = [fit_width_rule(_blocks(m.spec), quantum, n, grid, cache) for m in members]
    best = _best_fits(fits, errors)
    if len(best) < 3:
        why = (
            f"{len(best)} of the best {BEST_FRACTION:.0%} of the members follow a "
            f"{n}-stage rule within e_fit {FIT_TOLERANCE} (3 needed to fit ranges)"
        )
        return [_width_rule_not_applicable(len(members), why, {"quantum": quantum, "fit_tolerance": FIT_TOLERANCE})]
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
            RefineKind.WIDTH_RULE,
            "embed_dim",
            f"{_WIDTH_RULE} (w0 {_span(ranges['w0'])}, wa {_span(ranges['wa'])}, "
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


def set_param(data: dict, name: str, value: Any) -> None:
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
    members: list[Member], candidates: list[Candidate], distributions: dict, seed: int
) -> tuple[list[Constraint], dict[str, float]]:
    """A fix of each knob of nil fANOVA importance, and every varying knob's importance."""
    importance, _, _ = importances(candidates, distributions, seed)
    fanova = importance["fanova"]
    if not fanova:
        return [], {}
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
                RefineKind.FIX,
                knob,
                f"{knob} fixed at {fixed} (fANOVA importance {value:.3f}, below {threshold:.3f})",
                satisfied,
                functools.partial(set_param, name=knob, value=fixed),
                {"importance": value, "value": fixed, "threshold": threshold},
            )
        )
    return out, fanova


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b
