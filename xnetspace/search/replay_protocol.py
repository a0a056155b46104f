"""The default study replayed against a table: what ``xnetspace search`` with its defaults would
have chosen, and what it would have cost.

The default study (:mod:`.runner`; docs/search.md) runs N proxy trials with the study's TPE and
median pruner, then random search at equal compute as its control (:mod:`.control`), then
confirms the top ``confirm_top`` candidates, the control's best and ``fidelity_sample`` random
specs with ``confirm_seeds`` new seeds on the held-out test split (:mod:`.confirmation`); its
winner is the confirmed candidate with the best confirmed mean. Replayed on a table
(:func:`run_protocol`), with :class:`~.study.RunOptions`' defaults for a budget of N trials:

- the search and the control are :func:`~.replay_search.run_search` with the study's sampler and
  pruner (:func:`~.study.make_sampler`, :func:`~.study.make_pruner`; the control's random sampler
  seeded as :func:`~.control.open_control_study` seeds it), each epoch's validation score of the
  repeat's seed reported to the pruner; the control runs until it has spent the search's
  replica-epochs (or holds :func:`~.workers.control_max_trials` trials);
- a confirmation reads the table's test scores of the other seeds (up to ``confirm_seeds``; with
  a one-seed table, the proxy's own seed): a real confirmation trains new seeds, a table has only
  its K, so with few seeds the confirmation shares seeds with the outcome (the mean test score
  over all seeds), which flatters the protocol a little;
- it is charged for every run it trains: the search's and the control's epochs (a pruned trial
  its epochs so far), each random spec's proxy run, and ``confirm_seeds`` full runs of every
  distinct spec confirmed, in replica-epochs and in the table's wall seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

from .replay_search import Oracle, ReplayConfig, Trace, regret_of, run_search
from .stats import mean_difference
from .study import RunOptions, StudyConfig, make_pruner, make_sampler
from .workers import control_max_trials

__all__ = ["run_protocol", "protocol_outcomes", "fidelity_positions"]

_CONTROL_SEED = 500_000  # the control's sampler seed offset (open_control_study)
_RANDOM_POOL_SEED = 7919  # the random specs' seed offset (confirmation's random pool)


def fidelity_positions(oracle: Oracle, study: StudyConfig, options: RunOptions) -> list[int]:
    """Table positions of the ``fidelity_sample`` random specs the study confirms beside its
    candidates (drawn as confirmation draws them: a fixed seed, the same in every repeat)."""
    pool = study.space.distinct_specs(
        options.fidelity_sample, study.train.seed + _RANDOM_POOL_SEED, "random", **oracle.network
    )
    return [oracle.position[s.digest()] for s in pool if s.digest() in oracle.position]


def run_protocol(
    oracle: Oracle, budget: int, seed: int, position: int, study: StudyConfig, fidelity: list[int]
) -> dict[str, Any]:
    """One default study of ``budget`` trials (sampler seed ``seed``, proxy seed at ``position``):
    ``{"winner", "control", "epochs", "seconds", "confirmed", "control_confirmed"}`` (table
    positions, -1 for none; the charge; the confirmed test scores)."""
    options = RunOptions(n_trials=budget, seed=seed).resolved(study)
    pruner = make_pruner(study, options.pruner)
    search = run_search(
        oracle, make_sampler(study, options, 0), position, lambda t: len(t.chosen) >= budget, pruner=pruner
    )
    cap = control_max_trials(options)
    control = run_search(
        oracle,
        optuna.samplers.RandomSampler(seed=options.seed + _CONTROL_SEED),
        position,
        lambda t: t.spent >= search.spent or len(t.chosen) >= cap,
        pruner=make_pruner(study, options.pruner),
    )
    k = oracle.test.shape[1]
    seeds = [(position + 1 + i) % k for i in range(min(options.confirm_seeds, k - 1))] or [position]
    top = _ranked(oracle, search)[: options.confirm_top]
    best_control = next(iter(_ranked(oracle, control)), -1)
    sign = -1.0 if oracle.maximize else 1.0
    confirmed = {p: oracle.test[p, seeds] for p in {*top, best_control} if p >= 0}
    winner = min(top, key=lambda p: (sign * confirmed[p].mean(), oracle.flops[p]), default=-1)
    runs = {*confirmed, *fidelity}  # jobs of one spec and seeds are trained once
    epochs = oracle.epochs
    run_seconds = oracle.seconds[:, :, -1].mean(axis=1)
    return {
        "winner": winner,
        "control": best_control,
        "epochs": search.spent + control.spent + len(fidelity) * epochs + len(runs) * options.confirm_seeds * epochs,
        "seconds": _seconds(search)
        + _seconds(control)
        + float(sum(run_seconds[p] for p in fidelity))
        + options.confirm_seeds * float(sum(run_seconds[p] for p in runs)),
        "confirmed": confirmed.get(winner, np.array([])),
        "control_confirmed": confirmed.get(best_control, np.array([])),
    }


def _ranked(oracle: Oracle, trace: Trace) -> list[int]:
    """A search's distinct candidates by proxy score (ties: fewer FLOPs, then earlier), as
    confirmation ranks them."""
    sign = -1.0 if oracle.maximize else 1.0
    return [p for _, p, _ in sorted(trace.candidates, key=lambda c: (sign * c[0], oracle.flops[c[1]], c[2]))]


def _seconds(trace: Trace) -> float:
    return trace.seconds[-1] if trace.seconds else 0.0


def protocol_outcomes(oracle: Oracle, config: ReplayConfig, seeds: np.ndarray, study: StudyConfig) -> dict:
    """The default study replayed ``config.repeats`` times at each budget: per budget (R,) arrays
    of the winner (``chosen``), its ``regret``, the replica-epochs and seconds charged, the
    control's best, and how the winner compares with it: ``beats_confirmed`` (better confirmed
    mean, what the study reports), ``beats_distinguishable`` (and Welch's 95% interval of the
    difference excludes 0), ``beats_true`` (better mean test score over all the table's seeds)."""
    keys = ("chosen", "regret", "epochs", "seconds", "control", "beats_confirmed", "beats_distinguishable")
    out: dict[str, Any] = {k: {} for k in (*keys, "beats_true", "control_regret")}
    fidelity = fidelity_positions(oracle, study, RunOptions(n_trials=1).resolved(study))
    sign = -1.0 if oracle.maximize else 1.0
    for b in config.budgets:
        rows = [run_protocol(oracle, b, config.seed + r, int(seeds[r]), study, fidelity) for r in range(config.repeats)]
        winners, controls = np.array([x["winner"] for x in rows]), np.array([x["control"] for x in rows])
        out["chosen"][b], out["control"][b] = winners, controls
        out["regret"][b], out["control_regret"][b] = regret_of(oracle, winners), regret_of(oracle, controls)
        out["epochs"][b] = np.array([x["epochs"] for x in rows])
        out["seconds"][b] = np.array([x["seconds"] for x in rows])
        out["beats_confirmed"][b] = np.array([_beats(x, sign) for x in rows])
        out["beats_distinguishable"][b] = np.array([_beats(x, sign, strict=True) for x in rows])
        out["beats_true"][b] = np.array(
            [
                w >= 0 and c >= 0 and sign * oracle.outcome[w] < sign * oracle.outcome[c]
                for w, c in zip(winners, controls)
            ]
        )
    out["curve"], out["traces"] = None, []
    return out


def _beats(row: dict, sign: float, strict: bool = False) -> bool:
    """Does the winner's confirmed mean beat the control's (``strict``: with Welch's interval of
    the difference clear of 0)?"""
    mine, theirs = row["confirmed"], row["control_confirmed"]
    if not len(mine) or not len(theirs) or row["winner"] == row["control"]:
        return False
    if strict:
        diff = mean_difference(mine, theirs)
        return bool(diff["distinguishable"] and sign * diff["mean"] < 0)
    return bool(sign * (mine.mean() - theirs.mean()) < 0)
