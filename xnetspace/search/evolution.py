"""Regularized evolution as an Optuna sampler.

Real, Aggarwal, Huang & Le, "Regularized Evolution for Image Classifier Architecture Search"
(AAAI 2019), Algorithm 1: a population of the ``population_size`` most recent models, the first
of them drawn at random; each new model is the best of ``tournament_size`` members drawn from the
population, with one of its parameters changed to another value (a mutation); the oldest member
leaves as the new one arrives (aging, the "regularized" part: a model survives by being re-found,
not by one lucky evaluation). On NAS-Bench-101 (Ying et al., ICML 2019) and NAS-Bench-201 (Dong &
Yang, ICLR 2020) it was among the best strategies at small budgets; their defaults for those
tables were a population of 10 to 100 and a tournament of 3 to 10.

Here the population is the study's last ``population_size`` completed trials (a sample rejected
as over budget is pruned and never joins it); until there are that many, parameters are drawn at
random (:class:`optuna.samplers.RandomSampler`). A mutation draws a parameter uniformly among those
with more than one value and gives it another of its values uniformly (categorical choices, integer
and stepped float grids; a continuous float is drawn anew from its range).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .space_grid import grid_values

__all__ = ["RegularizedEvolutionSampler"]


class RegularizedEvolutionSampler(BaseSampler):
    """Regularized (aging) evolution (Real et al., AAAI 2019) for single-objective studies.

    Args:
        population_size: P, the most recent completed trials that form the population (and the
            random trials that start it).
        tournament_size: S, the members drawn (without replacement) whose best is mutated.
        seed: seeds the tournaments, mutations and the random start.

    Raises:
        ValueError: a tournament larger than the population, or either below its minimum
            (population 2, tournament 1); a multi-objective study (at its first sample).
    """

    def __init__(self, population_size: int = 10, tournament_size: int = 3, seed: int | None = None):
        if population_size < 2 or not 1 <= tournament_size <= population_size:
            raise ValueError(
                f"regularized evolution needs population_size >= 2 and 1 <= tournament_size <= population_size, "
                f"got population {population_size}, tournament {tournament_size}"
            )
        self.population_size, self.tournament_size = population_size, tournament_size
        self._rng = random.Random(seed)
        self._random = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self.population_size:
            return {}
        return optuna.search_space.intersection_search_space(completed[-self.population_size :])

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """A mutated copy of the tournament's winner (empty: the population is not full yet)."""
        if not search_space:
            return {}
        if len(study.directions) > 1:
            raise ValueError("regularized evolution here is single-objective; the study has several objectives")
        population = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))[-self.population_size :]
        contenders = self._rng.sample(population, self.tournament_size)
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        parent = min(contenders, key=lambda t: (sign * float(t.values[0]), t.number))
        child = {name: parent.params[name] for name in search_space}
        mutable = [name for name, d in search_space.items() if (values := _values(d)) is None or len(values) > 1]
        if mutable:
            name = self._rng.choice(mutable)
            child[name] = self._mutate(search_space[name], child[name])
        return child

    def _mutate(self, distribution: BaseDistribution, value: Any) -> Any:
        values = _values(distribution)
        if values is None:  # a continuous float: a new draw from its range
            assert isinstance(distribution, FloatDistribution)
            low, high = distribution.low, distribution.high
            if distribution.log:
                return math.exp(self._rng.uniform(math.log(low), math.log(high)))
            return self._rng.uniform(low, high)
        return self._rng.choice([v for v in values if v != value])

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._random.after_trial(study, trial, state, values)


def _values(distribution: BaseDistribution) -> list | None:
    """Every value of a finite distribution (None: a continuous float range)."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return grid_values(distribution.low, distribution.high, distribution.step, whole=True)
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        return grid_values(distribution.low, distribution.high, distribution.step, whole=False)
    return None
