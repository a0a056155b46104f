"""Every spec of a finite design space, exactly: the grid of its Optuna parameters, enumerated.

A space samples a spec from Optuna parameters (:meth:`~.space.SearchSpace.sample`): categorical
choices, integer ranges and stepped float ranges are finite, so the space is the product of their
values, as NAS-Bench-201 is the product of its 6 edges' 5 operations (Dong & Yang, ICLR 2020).
:func:`parameter_grid` finds the parameters and their values by asking the space once, in the
order it asks them; :func:`enumerate_space` builds every combination, drops the invalid ones and
those over the budget (the exact cost model, as a search rejects them), and keeps one spec per
digest (several combinations can build the same network). A continuous range has no table: it is
refused, naming the parameter.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..cost import cost_report
from ..spec import NetworkSpec, SpecError
from .space import SearchSpace, SpaceError

__all__ = ["MAX_COMBINATIONS", "parameter_grid", "grid_values", "FixedTrial", "Enumeration", "enumerate_space"]

MAX_COMBINATIONS = 100_000  # about 0.3 ms each to sample and hash, 2 ms to cost a new digest


def grid_values(low: float, high: float, step: float, whole: bool) -> list:
    """``low, low + step, ...`` up to ``high`` as Optuna computes them (``k * step + low``), so a
    value an Optuna sampler returns equals one of them bit for bit (specs are hashed)."""
    count = int(math.floor((high - low) / step + 1e-9)) + 1
    return [int(low) + int(step) * k for k in range(count)] if whole else [k * step + low for k in range(count)]


class _GridRecorder:
    """A trial that records each parameter's values and answers with the first."""

    def __init__(self) -> None:
        self.grid: dict[str, list] = {}

    def suggest_categorical(self, name: str, choices: list) -> Any:
        self.grid[name] = list(choices)
        return choices[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.grid[name] = grid_values(low, high, step, whole=True)
        return low

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        if step is None:
            raise SpaceError(
                f"{name} is a continuous range [{low:g}, {high:g}]: a table needs finite knobs (give it a step "
                f"or a list of choices)"
            )
        self.grid[name] = grid_values(low, high, step, whole=False)
        return low


class FixedTrial:
    """A trial that answers each parameter from ``params`` (one combination of the grid).

    Raises:
        SpaceError: a parameter ``params`` lacks (the space asks a parameter the grid did not see).
    """

    def __init__(self, params: dict[str, Any]):
        self.params = params

    def _get(self, name: str) -> Any:
        if name not in self.params:
            raise SpaceError(f"the space asked for {name}, which its grid does not have")
        return self.params[name]

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return self._get(name)

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._get(name)

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        return self._get(name)


def parameter_grid(space: SearchSpace, **network: Any) -> dict[str, list]:
    """Each Optuna parameter ``space`` samples, with every value it can take, in the order the
    space asks for them (a space asks every parameter whatever the values drawn).

    Raises:
        SpaceError: a continuous range (no step), naming the parameter.
    """
    recorder = _GridRecorder()
    try:
        space.sample(recorder, **network)
    except (ValidationError, SpecError):
        pass  # the first corner may be an invalid spec; every parameter was asked for on the way
    return recorder.grid


@dataclass
class Enumeration:
    """What :func:`enumerate_space` found: the distinct valid in-budget ``specs`` (in grid order,
    each named ``{space}_{i}``), for each the ``knobs`` of the first combination that gives it,
    and the counts of ``combinations``, ``invalid`` ones, distinct specs ``over_budget`` and
    combinations that repeat an earlier spec (``repeats``)."""

    grid: dict[str, list]
    specs: list[NetworkSpec] = field(default_factory=list)
    knobs: list[dict[str, Any]] = field(default_factory=list)
    combinations: int = 0
    invalid: int = 0
    over_budget: int = 0
    repeats: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "combinations": self.combinations,
            "invalid": self.invalid,
            "over_budget": self.over_budget,
            "repeats": self.repeats,
            "specs": len(self.specs),
        }


def enumerate_space(space: SearchSpace, max_combinations: int = MAX_COMBINATIONS, **network: Any) -> Enumeration:
    """Every distinct valid in-budget spec of ``space`` (FLOPs and params from the exact cost
    model at the budget's image size; ``network``: the dataset's ``num_classes``, ``in_chans``).

    Raises:
        SpaceError: a continuous range; more than ``max_combinations`` combinations (naming how
            many and each parameter's count); a latency budget (measured, not countable).
    """
    if space.constraints.max_latency_ms is not None:
        raise SpaceError(
            f"space '{space.name}' has a latency budget (max_latency_ms), measured on a search's device: a "
            f"table's specs are in budget by FLOPs and params; drop max_latency_ms"
        )
    grid = parameter_grid(space, **network)
    total = math.prod(len(v) for v in grid.values())
    if total > max_combinations:
        sizes = ", ".join(f"{name} {len(values)}" for name, values in grid.items())
        raise SpaceError(
            f"space '{space.name}' has {total:,} combinations of its {len(grid)} parameters ({sizes}); a table "
            f"enumerates at most {max_combinations:,}: fix knobs or give them fewer values"
        )
    found = Enumeration(grid=grid, combinations=total)
    seen: set[str] = set()
    for combo in itertools.product(*grid.values()):
        params = dict(zip(grid, combo))
        try:
            spec = space.sample(FixedTrial(params), **network)
        except (ValidationError, SpecError):
            found.invalid += 1
            continue
        digest = spec.digest()
        if digest in seen:
            found.repeats += 1
            continue
        seen.add(digest)
        report = cost_report(spec, space.constraints.image_size)
        if space.constraints.violations(report.flops, report.params):
            found.over_budget += 1
            continue
        found.specs.append(spec.model_copy(update={"name": f"{space.name}_{len(found.specs)}"}))
        found.knobs.append(params)
    return found
