"""One trial: sample a spec, reject or deduplicate it before anything is built, train, report.

Each trial samples a spec; invalid or over-budget samples are *rejected* before anything is
built (the cost model is exact), recorded as pruned trials with the reason (which teaches the
sampler where the budget ends), and replaced by a new slot; the trial that finally trains records
how many samples were rejected before it. A spec identical to an earlier candidate (same
canonical hash) is not trained again: the trial takes the earlier result. The candidate is
proxy-trained; each epoch's score (top-1, or cross-entropy for the ``loss`` objective) is reported
so a pruner can stop it. Divergence or an overrun time limit ends it as pruned, out-of-memory or
any other error as failed, with the reason in the trial's record (:mod:`.records`); the study
goes on.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from collections.abc import Sequence
from typing import NoReturn

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from ..cost import cost_report
from ..latency import measure_latency
from ..latency_table import read_table
from ..spec import NetworkSpec
from .data import DataSplit
from .errors import SurplusTrial, TrialFailed
from .names import Rejection, SecondObjective
from .records import RunRecord, TrialRecord, is_live, read_trial, slot_attrs, write
from .space import SpaceError
from .stats import pooled_seed_std
from .study import StudyConfig, candidates, live_slots
from .train import Diverged, TimeLimitExceeded, TrainConfig, TrainResult, train_seeds
from .zero_cost import zero_cost_scores

__all__ = ["Objective"]

_MAX_REJECTIONS_IN_A_ROW = 500


class Objective:
    """The Optuna objective: sample, reject or deduplicate, train, report. Loads data once."""

    def __init__(self, config: StudyConfig, data: DataSplit, n_trials: int, device: str, worker: int = 0):
        self.config, self.data, self.n_trials = config, data, n_trials
        self.device, self.worker = device, worker
        self.space = config.space
        table = self.space.constraints.latency_table
        self.latency_table = read_table(table) if table is not None else None
        self.rejected_in_a_row = 0
        self.started = time.perf_counter()

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float | None] | None:
        self.started = time.perf_counter()  # the trial's clock (--trial-time-limit): sampling and scoring count
        earlier = read_trial(trial)  # a retried trial (the heartbeat's) carries its first attempt's record
        if not self._holds_slot(trial):
            write(trial, earlier.model_copy(update={"surplus": True}))
            raise SurplusTrial("the study's slots were all taken")
        record = TrialRecord(slot=True, worker=self.worker)
        try:
            spec = self.space.sample(trial, num_classes=self.data.num_classes, in_chans=self.data.in_chans)
        except ValidationError as err:
            self._reject(trial, record, Rejection.INVALID.reason(err.errors()[0]["msg"].removeprefix("Value error, ")))
        report = cost_report(spec, self.space.constraints.image_size)
        spec = spec.model_copy(update={"name": f"{self.space.name}_trial{trial.number}"})  # a label only
        record = record.model_copy(
            update=dict(
                flops=report.flops, params=report.params, spec_digest=spec.digest(), spec=spec.model_dump(mode="json")
            )
        )
        problems = self.space.constraints.violations(report.flops, report.params)
        if problems:
            self._reject(trial, record, Rejection.OVER_BUDGET.reason("; ".join(problems)))
        record.rejected_samples = self.rejected_in_a_row
        write(trial, record)  # before looking for the spec elsewhere: a worker that drew it too sees it
        duplicate = self._earlier_candidate(trial, record)
        if duplicate is not None:
            return self._repeat(trial, record, duplicate)
        latency = self._latency(trial, record, spec)

        self.rejected_in_a_row = 0
        if earlier.spec_digest == record.spec_digest:  # runs and scores it finished are not trained again
            record.runs, record.zero_cost = earlier.runs, earlier.zero_cost
        self._evaluate(trial, record, spec)
        value = self.config.proxy.of_trial(record)
        if value is None or not math.isfinite(value):  # Optuna would fail it without a reason, as a lost worker's
            record.reason = f"{self.config.proxy.label} is {value}: no score to rank it by (did training diverge?)"
            write(trial, record)
            raise TrialFailed(record.reason)
        second = self.config.second_objective
        if second == SecondObjective.FLOPS:
            return value, float(report.flops)
        if second == SecondObjective.LATENCY:
            return value, latency
        return value

    def _holds_slot(self, trial: optuna.Trial) -> bool:
        """Only the first N live slots (by trial number) may run: exact N whatever the races."""
        if not read_trial(trial).slot:
            return False
        live = [t.number for t in live_slots(trial.study)]
        return trial.number in live[: self.n_trials]

    def _reject(self, trial: optuna.Trial, record: TrialRecord, reason: str) -> NoReturn:
        """Record why the sample is not trained, give its slot back, and end the trial pruned."""
        write(trial, record.model_copy(update={"rejected": True, "reason": reason}))
        trial.study.enqueue_trial({}, user_attrs=slot_attrs())  # the slot goes back to the queue
        self.rejected_in_a_row += 1
        if self.rejected_in_a_row >= _MAX_REJECTIONS_IN_A_ROW:
            raise SpaceError(
                f"{self.rejected_in_a_row} samples in a row were rejected (last: {reason}); "
                f"widen the space or the budget"
            )
        raise optuna.TrialPruned(reason)

    def _earlier_candidate(self, trial: optuna.Trial, record: TrialRecord) -> FrozenTrial | None:
        """An earlier trial that trained (or is training) the same spec. One still training
        rejects this sample: of two workers that drew one spec at once, neither trains it twice."""
        for other in trial.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        ):
            theirs = read_trial(other)
            if other.number != trial.number and theirs.spec_digest == record.spec_digest and is_live(other):
                if other.state == TrialState.RUNNING:
                    self._reject(trial, record, f"same spec as trial {other.number}, still training")
                return other
        return None

    def _repeat(self, trial: optuna.Trial, record: TrialRecord, earlier: FrozenTrial) -> float | Sequence[float]:
        theirs = read_trial(earlier)
        record = record.model_copy(
            update=dict(
                duplicate_of=earlier.number,
                runs=theirs.runs,
                zero_cost=theirs.zero_cost,
                latency_ms=theirs.latency_ms,
                seconds=theirs.seconds,
                race=theirs.race,
            )
        )
        if earlier.state != TrialState.COMPLETE:
            record.reason = f"same spec as trial {earlier.number}, which was pruned"
            write(trial, record)
            raise optuna.TrialPruned(record.reason)
        write(trial, record)
        return earlier.values if len(earlier.values) > 1 else earlier.values[0]

    def _latency(self, trial: optuna.Trial, record: TrialRecord, spec: NetworkSpec) -> float:
        """The spec's latency in ms, predicted from the space's latency table (no build) or else
        measured on the study's device; NaN when neither the objective nor a budget asks for it.
        Over ``max_latency_ms`` the sample is rejected (counted as FLOPs rejections are)."""
        constraints = self.space.constraints
        if self.config.second_objective != SecondObjective.LATENCY and constraints.max_latency_ms is None:
            return math.nan
        if self.latency_table is not None:
            latency, how = self.latency_table.predict(spec, constraints.image_size).total_ms, "predicted"
        else:
            latency, how = (
                measure_latency(
                    spec, constraints.latency_batch_size, constraints.image_size, self.device, min_run_time=0.3
                ),
                "measured",
            )
        record.latency_ms, record.latency_predicted = latency, self.latency_table is not None
        if constraints.max_latency_ms is not None:
            # An Optuna constraint (feasible when <= 0) that constraint-aware samplers learn from;
            # over the limit, the spec is not trained.
            trial.set_constraint("latency_ms", latency - constraints.max_latency_ms)
            if latency > constraints.max_latency_ms:
                detail = f"{how} latency {latency:.2f} ms above max {constraints.max_latency_ms:g} ms"
                self._reject(trial, record, Rejection.OVER_BUDGET.reason(detail))
        return latency

    def _evaluate(self, trial: optuna.Trial, record: TrialRecord, spec: NetworkSpec) -> None:
        """The candidate's scores, into its record: zero-cost scores at initialisation, then (for a
        proxy that trains) its first seeds as one pack, each epoch's mean proxy score reported to
        the pruner, then the other seeds if racing keeps it a contender (:meth:`_contender`).

        Ends early: divergence or the time limit as pruned, out of memory or any other error as
        failed, each with its reason in the record, which keeps the epochs done.
        """
        config, proxy = self.config, self.config.proxy
        seeds = config.proxy_seed_list
        full = [r for r in record.runs if r.epochs == config.train.epochs and r.seed in seeds]
        record.runs = full
        start = time.perf_counter()
        try:
            if not record.zero_cost:
                record.zero_cost = zero_cost_scores(spec, self.data, seeds[0], config.train.batch_size, self.device)
            if not proxy.trains:
                return
            self._train(trial, record, spec, [s for s in seeds[: config.first_seeds] if not record.run(s)], report=True)
            rest = [s for s in seeds[config.first_seeds :] if not record.run(s)]
            if rest and self._contender(trial, record):
                write(trial, record)  # the first seeds are kept whatever happens to the rest
                self._train(trial, record, spec, rest, report=False)
        except TimeLimitExceeded:
            limit = config.train.time_limit
            record.reason = (
                f"TimeLimitExceeded: past the {limit:g} s time limit of a trial after "
                f"{time.perf_counter() - self.started:.1f} s"
            )
            raise optuna.TrialPruned(record.reason) from None
        except Diverged as err:
            record.reason = f"{type(err).__name__}: {err}"
            raise optuna.TrialPruned(str(err)) from None
        except optuna.TrialPruned:
            raise
        except torch.OutOfMemoryError as err:
            record.reason = f"out of memory: {str(err).splitlines()[0]}"
            raise TrialFailed("out of memory") from None
        except Exception as err:  # noqa: BLE001 - any error ends this trial, never the study
            record.reason = f"{type(err).__name__}: {err}"
            record.traceback = traceback.format_exc()[-4000:]
            raise TrialFailed(str(err)) from None
        finally:
            record.runs.sort(key=lambda r: seeds.index(r.seed))
            record.seconds = round(time.perf_counter() - start, 2)
            write(trial, record)

    def _train(
        self, trial: optuna.Trial, record: TrialRecord, spec: NetworkSpec, seeds: list[int], report: bool
    ) -> None:
        """Train ``seeds`` as one pack; their runs (the epochs done, also when stopped) go into the
        record. With ``report``, each epoch's mean proxy score goes to the pruner."""
        if not seeds:
            return
        single, proxy = len(self.config.directions) == 1, self.config.proxy
        so_far: list[TrainResult] = []

        def hook(epoch: int, results: list[TrainResult]) -> None:
            so_far[:] = results
            if report and single:
                trial.report(statistics.fmean(proxy.of_run(RunRecord.of(s, r)) for s, r in zip(seeds, results)), epoch)
                if trial.should_prune():
                    record.reason = f"pruner stopped it after epoch {epoch + 1}"
                    raise optuna.TrialPruned(record.reason)

        try:
            so_far[:] = train_seeds(spec, self.data, seeds, self._recipe(), self.device, hook)
        finally:
            record.runs += [RunRecord.of(s, r) for s, r in zip(seeds, so_far) if r.history]

    def _recipe(self) -> TrainConfig:
        """The proxy recipe with its time limit cut to what is left of the trial's (sampling,
        latency and zero-cost scores count too).

        Raises:
            TimeLimitExceeded: nothing is left before training starts.
        """
        train = self.config.train
        if train.time_limit is None:
            return train
        left = train.time_limit - (time.perf_counter() - self.started)
        if left <= 0:
            raise TimeLimitExceeded(f"past the {train.time_limit:g} s time limit before training")
        return train.model_copy(update={"time_limit": left})

    def _contender(self, trial: optuna.Trial, record: TrialRecord) -> bool:
        """Racing over seeds: after its first seeds, does the candidate still deserve the rest?

        It does unless the study measures its mean as worse than the incumbent's (the best mean
        of the candidates that got every seed) by more than ``race`` standard errors:
        ``gap > z * sigma * sqrt(1/k + 1/n)``, with ``sigma`` the study's pooled seed std of the
        proxy score (candidates with 2+ seeds; 3 such candidates at least, else every candidate
        goes on), k and n the two means' seeds. A paired test over seeds (Optuma's WilcoxonPruner)
        cannot decide with so few: with 3 seeds the smallest two-sided Wilcoxon p is 0.25.
        """
        config, proxy = self.config, self.config.proxy
        if config.race is None:
            return True
        groups = []
        for t in candidates(trial.study):
            theirs = read_trial(t)
            groups.append((t.number, [proxy.of_run(r) for r in theirs.runs if r.epochs == config.train.epochs]))
        sigma = pooled_seed_std([g for _, g in groups if len(g) > 1])
        full = [(n, g) for n, g in groups if len(g) == config.proxy_seeds]
        if sum(len(g) > 1 for _, g in groups) < 3 or not full or not math.isfinite(sigma):
            return True
        number, best = min(full, key=lambda item: proxy.rank_key(statistics.fmean(item[1])))
        mine = [proxy.of_run(r) for r in record.runs]
        gap = proxy.rank_key(statistics.fmean(mine)) - proxy.rank_key(statistics.fmean(best))
        bound = config.race * sigma * math.sqrt(1 / len(mine) + 1 / len(best))
        if gap > bound:
            record.race = (
                f"{len(mine)} of {config.proxy_seeds} seeds: {proxy.label} worse than trial {number}'s by "
                f"{gap:.4g} > {config.race:g} x {sigma * math.sqrt(1 / len(mine) + 1 / len(best)):.4g}"
            )
            return False
        return True
