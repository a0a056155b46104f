"""One search replayed against a table: the table as a search sees it (:class:`Oracle`), a search
through Optuna exactly as ``xnetspace search`` runs it (:func:`run_search`), the samplers
(:func:`make_replay_sampler`) and their repeats (:func:`replay_sampler`). :mod:`.replay` runs the
whole comparison; docs/benchmark.md says what each sampler is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..bench import Bench, maximized
from ..cost import cost_report
from .errors import SearchError
from .evolution import RegularizedEvolutionSampler
from .names import Rejection
from .score import Direction
from .space import SearchSpace
from .study import RunOptions, StudyConfig, make_sampler
from .tabulate import space_hash

__all__ = [
    "SAMPLERS",
    "BY_BUDGET",
    "ReplayConfig",
    "ReplayError",
    "Oracle",
    "Trace",
    "run_search",
    "make_replay_sampler",
    "sampler_unavailable",
    "seed_positions",
    "study_config",
    "replay_sampler",
    "regret_of",
    "FAILED",
]

SAMPLERS = ("random", "tpe", "tpe-multivariate", "gp", "evolution", "protocol")
BY_BUDGET = {"tpe", "protocol"}  # their behaviour depends on the budget: replayed once per budget
FAILED = -1  # what the oracle answers for a spec whose training failed in the table
MAX_REJECTIONS_IN_A_ROW = 500  # as the study's objective: past it, the search ends
# A sampler that ignores pruned trials (GPSampler) proposes a rejected spec again and again, until
# the study ends it after MAX_REJECTIONS_IN_A_ROW; the replay ends it as soon as the same one has
# come back this many times in a row (the same end, without hundreds of slow asks).
STUCK_REPEATS = 25


class ReplayError(SearchError):
    """A table the replay cannot use, or a sampler asked that is not known; the message says why."""


class ReplayConfig(BaseModel):
    """What a replay does: ``samplers`` (of :data:`SAMPLERS`), ``budgets`` (evaluations), ``repeats``
    (``gp_repeats`` for the slow GPSampler), ``seed`` (repeat r seeds its samplers with seed + r),
    ``score`` (``loss``: cross-entropy, or ``top1``), the evolution's population and tournament."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samplers: tuple[str, ...] = SAMPLERS
    budgets: tuple[int, ...] = (10, 25, 50)
    repeats: int = Field(200, ge=2, le=100_000)
    gp_repeats: int = Field(10, ge=2, le=100_000)
    seed: int = 0
    score: str = "loss"
    population: int = Field(10, ge=2)
    tournament: int = Field(3, ge=1)

    @field_validator("samplers")
    @classmethod
    def _known(cls, samplers: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in samplers if s not in SAMPLERS]
        if unknown or not samplers:
            raise ValueError(f"unknown sampler(s) {unknown}; samplers are {', '.join(SAMPLERS)}")
        return tuple(dict.fromkeys(samplers))

    @field_validator("budgets")
    @classmethod
    def _positive(cls, budgets: tuple[int, ...]) -> tuple[int, ...]:
        if not budgets or any(b < 1 for b in budgets):
            raise ValueError(f"budgets must be positive evaluation counts, got {list(budgets)}")
        return tuple(sorted(set(budgets)))

    @field_validator("score")
    @classmethod
    def _score(cls, score: str) -> str:
        if score not in ("loss", "top1"):
            raise ValueError(f"score {score!r} must be loss (cross-entropy) or top1")
        return score

    def repeats_of(self, sampler: str) -> int:
        return min(self.repeats, self.gp_repeats) if sampler == "gp" else self.repeats


@dataclass
class Oracle:
    """The table as a search sees it. Arrays are indexed by the spec's position ``p`` in
    ``bench.specs()``, its seed's position ``k`` and the epoch ``e`` (from 0): ``val`` (n, K, E)
    the validation score, ``seconds`` (n, K, E) the run's cumulative wall seconds, ``test`` (n, K)
    the last epoch's test score; ``outcome`` (n,) the mean test score over seeds and ``regret``
    (n,) its distance to the best (>= 0; cross-entropy in nats, top-1 in points)."""

    bench: Bench
    space: SearchSpace
    network: dict[str, int]
    maximize: bool
    val: np.ndarray
    seconds: np.ndarray
    test: np.ndarray
    outcome: np.ndarray
    regret: np.ndarray
    flops: np.ndarray
    position: dict[str, int]
    failed: set[str]
    _budget: dict[str, str | None] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return self.val.shape[2]

    @property
    def direction(self) -> Direction:
        return "maximize" if self.maximize else "minimize"

    @classmethod
    def of(cls, bench: Bench, score: str = "loss") -> Oracle:
        """The oracle of a loaded table for ``score`` (``loss`` or ``top1``).

        Raises:
            ReplayError: a table whose space does not match its hash, or whose specs do not all
                have every seed's runs over every epoch.
        """
        meta = bench.meta
        space = SearchSpace.model_validate(meta["space"])
        if space_hash(space) != meta["space_hash"]:
            raise ReplayError(f"the space in {bench.folder}/meta.json does not match its hash: edited?")
        entries = bench.specs()
        shape = (len(bench.seeds), bench.epochs)
        short = [e.index for e in entries if len(e.runs) != shape[0] or any(r.epochs != shape[1] for r in e.runs)]
        if short:
            raise ReplayError(f"specs {short[:5]} of {bench.folder} lack runs (every spec needs {shape} seeds, epochs)")
        val_col, test_col = f"val_{score}", f"test_{score}"

        def curves(column: str) -> np.ndarray:
            return np.array([[getattr(r, column) for r in e.runs] for e in entries], dtype=float)

        test = curves(test_col)[:, :, -1]
        outcome = test.mean(axis=1)
        sign = -1.0 if maximized(test_col) else 1.0
        return cls(
            bench=bench,
            space=space,
            network={"num_classes": int(meta["num_classes"]), "in_chans": int(meta["in_chans"])},
            maximize=maximized(val_col),
            val=curves(val_col),
            seconds=curves("seconds"),
            test=test,
            outcome=outcome,
            regret=sign * (outcome - outcome[np.argmin(sign * outcome)]),
            flops=np.array([e.flops for e in entries], dtype=float),
            position={e.digest: p for p, e in enumerate(entries)},
            failed={f["digest"] for f in meta.get("failed", [])},
        )

    def lookup(self, trial: Any) -> int | str:
        """The table position of the spec ``trial`` samples, :data:`FAILED` for a spec whose
        training failed, or the reason it is rejected (invalid, over budget), as the study's
        objective rejects it.

        Raises:
            ReplayError: a valid in-budget spec that is not in the table (the table was made from
                another version of the space, or is incomplete).
        """
        try:
            spec = self.space.sample(trial, **self.network)
        except ValidationError as err:
            return Rejection.INVALID.reason(err.errors()[0]["msg"].removeprefix("Value error, "))
        digest = spec.digest()
        if digest in self.position:
            return self.position[digest]
        if digest in self.failed:
            return FAILED
        if digest not in self._budget:
            report = cost_report(spec, self.space.constraints.image_size)
            problems = self.space.constraints.violations(report.flops, report.params)
            self._budget[digest] = Rejection.OVER_BUDGET.reason("; ".join(problems)) if problems else None
        reason = self._budget[digest]
        if reason is None:
            raise ReplayError(f"spec {digest} is valid and in budget but not in the table {self.bench.folder}")
        return reason


@dataclass
class Trace:
    """One search replayed: after each evaluation, the table position of the spec ranked best so
    far (``chosen``; -1 before any evaluation completed), the replica-epochs and wall seconds
    charged so far (a repeated spec and a rejected sample charge nothing); ``candidates``: each
    completed evaluation of a new spec as (value, position, trial number); ``rejected``: samples
    rejected (invalid or over budget, told to the sampler as pruned); ``ended_early``: the search
    ended after too many rejections in a row, as the study would (or after :data:`STUCK_REPEATS`
    proposals of one rejected spec in a row)."""

    chosen: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    candidates: list[tuple[float, int, int]] = field(default_factory=list)
    first: dict[int, tuple[TrialState, float | None]] = field(default_factory=dict)
    rejected: int = 0
    ended_early: bool = False

    @property
    def spent(self) -> int:
        return self.epochs[-1] if self.epochs else 0

    def chosen_at(self, n: int) -> int:
        """The spec ranked best after ``n`` evaluations (the last one when the search ended before)."""
        return self.chosen[min(n, len(self.chosen)) - 1] if self.chosen else -1


def run_search(
    oracle: Oracle,
    sampler: optuna.samplers.BaseSampler,
    seed: int,
    stop: Callable[[Trace], bool],
    pruner: optuna.pruners.BasePruner | None = None,
) -> Trace:
    """Replay one search: ask the sampler (in-memory study) until ``stop(trace)``; every evaluation
    returns the validation score of the table's seed at position ``seed``; with ``pruner``, each
    epoch's score is reported and the pruner may stop it (charged the epochs it ran)."""
    nop = optuna.pruners.NopPruner()  # create_study's default would be the median pruner
    study = optuna.create_study(direction=oracle.direction, sampler=sampler, pruner=pruner or nop)
    trace, rejected, best = Trace(), 0, (math.inf, -1)
    sign = -1.0 if oracle.maximize else 1.0
    last, same = None, 0
    while not stop(trace):
        trial = study.ask()
        found = oracle.lookup(trial)
        if isinstance(found, str):
            study.tell(trial, state=TrialState.PRUNED)
            rejected, trace.rejected = rejected + 1, trace.rejected + 1
            same = same + 1 if trial.params == last else 1
            last = trial.params
            trace.ended_early = rejected >= MAX_REJECTIONS_IN_A_ROW or same >= STUCK_REPEATS
            if trace.ended_early:
                break
            continue
        rejected, last = 0, None
        state, value, epochs = _evaluate(oracle, trial, found, seed, trace, pruner is not None)
        study.tell(trial, value, state=state)
        if found >= 0 and found not in trace.first:
            trace.first[found] = (state, value)
            if value is not None:
                trace.candidates.append((value, found, trial.number))
        if value is not None and sign * value < best[0]:
            best = (sign * value, found)
        trace.chosen.append(best[1])
        trace.epochs.append(trace.spent + epochs)
        spent_seconds = float(oracle.seconds[found, seed, epochs - 1]) if epochs and found >= 0 else 0.0
        trace.seconds.append((trace.seconds[-1] if trace.seconds else 0.0) + spent_seconds)
    return trace


def _evaluate(
    oracle: Oracle, trial: optuna.Trial, found: int, seed: int, trace: Trace, prune: bool
) -> tuple[TrialState, float | None, int]:
    """(state, value, epochs charged) of one evaluation: a failed spec fails (charged a full run),
    a spec seen before takes its first result (charged nothing), else each epoch is reported to
    the pruner when there is one."""
    if found == FAILED:
        return TrialState.FAIL, None, oracle.epochs
    if found in trace.first:
        state, value = trace.first[found]
        return state, value, 0
    curve = oracle.val[found, seed]
    if prune:
        for epoch, value in enumerate(curve):
            trial.report(float(value), epoch)
            if trial.should_prune():
                return TrialState.PRUNED, None, epoch + 1
    return TrialState.COMPLETE, float(curve[-1]), oracle.epochs


# -- samplers ------------------------------------------------------------------------------------------
def study_config(oracle: Oracle, score: str) -> StudyConfig:
    """The study ``xnetspace search`` would run on the table's space, dataset and recipe."""
    meta = oracle.bench.meta
    return StudyConfig(space=oracle.space, dataset=meta["dataset"], objective=score, train=oracle.space.train)


def make_replay_sampler(name: str, seed: int, budget: int, config: ReplayConfig, study: StudyConfig):
    """The Optuna sampler ``name`` seeded with ``seed`` for a search of ``budget`` evaluations."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return make_sampler(study, RunOptions(n_trials=budget, sampler="tpe", seed=seed), 0)
    if name == "tpe-multivariate":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "evolution":
        return RegularizedEvolutionSampler(config.population, config.tournament, seed=seed)
    raise ReplayError(f"sampler {name!r} is not a sampler of a single search")


def sampler_unavailable(name: str) -> str | None:
    """Why sampler ``name`` cannot run here (None: it can): GPSampler needs torch and scipy."""
    if name != "gp":
        return None
    try:
        with np.errstate(all="ignore"):
            optuna.samplers.GPSampler(seed=0)
        import torch  # noqa: F401 - GPSampler imports it lazily, at its first sample
    except ImportError as err:
        return f"optuna.samplers.GPSampler is unavailable here: {err}"
    return None


def seed_positions(oracle: Oracle, config: ReplayConfig) -> np.ndarray:
    """The table seed (its position) each repeat evaluates with: drawn per repeat, the same for
    every sampler in that repeat."""
    return np.random.default_rng(config.seed).integers(0, oracle.val.shape[1], size=config.repeats)


def replay_sampler(
    oracle: Oracle, name: str, config: ReplayConfig, seeds: np.ndarray, until: np.ndarray | None = None
) -> dict:
    """Replay sampler ``name`` ``config.repeats_of(name)`` times: ``{"regret": {budget: (R,)},
    "chosen": {budget: (R,)}, "epochs": {budget: (R,)}, "curve": (R, max budget)}``, the curve
    being regret after each evaluation of the longest search. ``until`` (per repeat, replica-epochs)
    runs a repeat further until it has spent that much (random search at equal compute)."""
    study = study_config(oracle, config.score)
    top = max(config.budgets)
    out: dict[str, Any] = {"regret": {}, "chosen": {}, "epochs": {}, "traces": []}
    repeats = config.repeats_of(name)
    runs: dict[int, list[Trace]] = {b: [] for b in config.budgets}
    for r in range(repeats):
        seed = config.seed + r
        if name in BY_BUDGET:
            for b in config.budgets:
                sampler = make_replay_sampler(name, seed, b, config, study)
                runs[b].append(run_search(oracle, sampler, int(seeds[r]), _stop_after(b)))
            continue
        target = int(until[r]) if until is not None else 0
        sampler = make_replay_sampler(name, seed, top, config, study)
        trace = run_search(oracle, sampler, int(seeds[r]), _stop_after(top, target))
        for b in config.budgets:
            runs[b].append(trace)
    out["ended_early"] = {}
    for b, traces in runs.items():
        out["ended_early"][b] = np.array([t.ended_early and len(t.chosen) < b for t in traces])
        chosen = np.array([t.chosen_at(b) for t in traces])
        out["chosen"][b] = chosen
        out["regret"][b] = regret_of(oracle, chosen)
        out["epochs"][b] = np.array([t.epochs[min(b, len(t.epochs)) - 1] if t.epochs else 0 for t in traces])
    longest = runs[top]
    out["curve"] = np.array([regret_of(oracle, np.array([t.chosen_at(n) for n in range(1, top + 1)])) for t in longest])
    out["traces"] = longest
    return out


def _stop_after(budget: int, epochs: int = 0) -> Callable[[Trace], bool]:
    return lambda t: len(t.chosen) >= budget and (t.spent >= epochs or len(t.chosen) >= 20 * budget)


def regret_of(oracle: Oracle, chosen: np.ndarray) -> np.ndarray:
    """Regret of each chosen position; a search that chose nothing gets the worst spec's regret."""
    worst = float(oracle.regret.max())
    return np.array([oracle.regret[c] if c >= 0 else worst for c in chosen], dtype=float)
