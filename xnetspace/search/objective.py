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
import time
import traceback
from typing import NoReturn, Optional, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from ..cost import cost_report
from ..latency import measure_latency
from ..spec import NetworkSpec
from .data import DataSplit
from .records import RunRecord, TrialRecord, is_live, read_trial, slot_attrs, write
from .space import SpaceError
from .study import StudyConfig, live_slots
from .train import Diverged, TimeLimitExceeded, TrainResult, train_candidate

__all__ = ["Objective", "TrialFailed", "SurplusTrial"]

_MAX_REJECTIONS_IN_A_ROW = 500


class TrialFailed(RuntimeError):
    """A trial ended in failure with a recorded reason (out of memory, an error in training)."""


class SurplusTrial(RuntimeError):
    """A trial created when the study's N slots were already taken; it does nothing."""


class Objective:
    """The Optuna objective: sample, reject or deduplicate, train, report. Loads data once."""

    def __init__(self, config: StudyConfig, data: DataSplit, n_trials: int, device: str, worker: int = 0):
        self.config, self.data, self.n_trials = config, data, n_trials
        self.device, self.worker = device, worker
        self.space = config.space
        self.rejected_in_a_row = 0

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]:
        if not self._holds_slot(trial):
            write(trial, read_trial(trial).model_copy(update={"surplus": True}))
            raise SurplusTrial("the study's slots were all taken")
        record = TrialRecord(slot=True, worker=self.worker)
        try:
            spec = self.space.sample(trial, num_classes=self.data.num_classes, in_chans=self.data.in_chans)
        except ValidationError as err:
            self._reject(trial, record, "invalid spec: " + err.errors()[0]["msg"].removeprefix("Value error, "))
        report = cost_report(spec, self.space.constraints.image_size)
        spec = spec.model_copy(update={"name": f"{self.space.name}_trial{trial.number}"})  # a label only
        record = record.model_copy(update=dict(flops=report.flops, params=report.params, spec_digest=spec.digest(),
                                               spec=spec.model_dump(mode="json")))
        problems = self.space.constraints.violations(report.flops, report.params)
        if problems:
            self._reject(trial, record, "over budget: " + "; ".join(problems))
        record.rejected_samples = self.rejected_in_a_row
        write(trial, record)  # before looking for the spec elsewhere: a worker that drew it too sees it
        duplicate = self._earlier_candidate(trial, record)
        if duplicate is not None:
            return self._repeat(trial, record, duplicate)
        latency = self._latency(trial, record, spec)

        self.rejected_in_a_row = 0
        result = self._train(trial, record, spec)
        if self.config.objective == "top1-flops":
            return result.top1, float(report.flops)
        if self.config.objective == "top1-latency":
            return result.top1, latency
        return self.config.score.of(result)

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
            raise SpaceError(f"{self.rejected_in_a_row} samples in a row were rejected (last: {reason}); "
                             f"widen the space or the budget")
        raise optuna.TrialPruned(reason)

    def _earlier_candidate(self, trial: optuna.Trial, record: TrialRecord) -> Optional[FrozenTrial]:
        """An earlier trial that trained (or is training) the same spec. One still training
        rejects this sample: of two workers that drew one spec at once, neither trains it twice."""
        for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                    TrialState.RUNNING)):
            theirs = read_trial(other)
            if other.number != trial.number and theirs.spec_digest == record.spec_digest and is_live(other):
                if other.state == TrialState.RUNNING:
                    self._reject(trial, record, f"same spec as trial {other.number}, still training")
                return other
        return None

    def _repeat(self, trial: optuna.Trial, record: TrialRecord, earlier: FrozenTrial) -> float | Sequence[float]:
        theirs = read_trial(earlier)
        record = record.model_copy(update=dict(duplicate_of=earlier.number, runs=theirs.runs,
                                               latency_ms=theirs.latency_ms, seconds=theirs.seconds))
        if earlier.state != TrialState.COMPLETE:
            record.reason = f"same spec as trial {earlier.number}, which was pruned"
            write(trial, record)
            raise optuna.TrialPruned(record.reason)
        write(trial, record)
        return earlier.values if len(earlier.values) > 1 else earlier.values[0]

    def _latency(self, trial: optuna.Trial, record: TrialRecord, spec: NetworkSpec) -> float:
        constraints = self.space.constraints
        if self.config.objective != "top1-latency" and constraints.max_latency_ms is None:
            return math.nan
        latency = measure_latency(spec, constraints.latency_batch_size, constraints.image_size, self.device,
                                  min_run_time=0.3)
        record.latency_ms = latency
        if constraints.max_latency_ms is not None:
            # Known only after measuring: an Optuna constraint (feasible when <= 0) that
            # constraint-aware samplers learn from; over the limit, the spec is not trained.
            trial.set_constraint("latency_ms", latency - constraints.max_latency_ms)
            if latency > constraints.max_latency_ms:
                self._reject(trial, record, f"over budget: latency {latency:.1f} ms above max "
                                            f"{constraints.max_latency_ms:g} ms")
        return latency

    def _train(self, trial: optuna.Trial, record: TrialRecord, spec: NetworkSpec) -> TrainResult:
        """Train the candidate, reporting each epoch's score to the pruner; the record gets its run
        (the epochs done, also when it is stopped) and the reason it ended early, in one write."""
        single, score = len(self.config.directions) == 1, self.config.score
        seed = self.config.train.seed
        so_far = TrainResult()

        def report(epoch: int, result: TrainResult) -> None:
            nonlocal so_far
            so_far = result
            if single:
                trial.report(score.of(result), epoch)
                if trial.should_prune():
                    record.reason = f"pruner stopped it after epoch {epoch + 1}"
                    raise optuna.TrialPruned(record.reason)

        start = time.perf_counter()
        try:
            so_far = train_candidate(spec, self.data, self.config.train, self.device, report)
            return so_far
        except (Diverged, TimeLimitExceeded) as err:
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
            if so_far.history:
                record.runs = [RunRecord.of(seed, so_far)]
            record.seconds = round(time.perf_counter() - start, 2)
            write(trial, record)
