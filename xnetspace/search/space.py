"""Design spaces: per-stage ranges and choices for every spec knob, ties, rules, and budgets.

A :class:`SearchSpace` (a ``spaces/*.yaml`` file; the whole syntax: docs/spaces.md) turns an
``optuna.Trial``, or a random generator, into a :class:`~xnetspace.spec.NetworkSpec`, like pycls's
AnyNet design space: per-stage parameters zipped into stages. Every knob of
:class:`~xnetspace.spec.StageSpec` can be (:mod:`.space_knobs`)

- fixed: ``attn_ratio: 0.5`` (for ``ffn_kernel_sizes`` a list of ints, ``[1, 3, 5, 7]``);
- a list of choices: ``sr_ratio: [4, 8]`` or ``{choices: [4, 8]}`` (kernel lists: a list of lists);
- a range: ``{low: 16, high: 64, step: 8}`` (``log: true`` for log-uniform);
- tied across stages: add ``tie: NAME`` to the definition; every knob naming the same tie takes
  one shared value (``{tie: NAME}`` alone refers to a tie defined elsewhere).

``rules:`` (:mod:`.space_rules`) adds parametrised forms with few knobs: RegNet's quantized linear
width rule (``width``), linear schedules across stages (``schedules``) and non-decreasing knobs
(``monotone``). Optuna parameter names are ``stage{i}.{knob}`` (stages counted from 1),
``tied.{NAME}``, ``width.{w0,wa,wm,depth}``, ``schedule.{knob}.{first,last}`` and
``stage{a}-{b}.{knob}`` (a monotone chain); a network field given a list of choices
(``network: {stem_stride: [2, 4]}``) is ``network.{field}``. ``constraints`` are hard budgets checked from the
cost model before anything is built.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..cost import ImageSize, cost_report, parse_image_size
from ..latency_table import read_table
from ..spec import MAX_STAGES, Float, Int, NetworkSpec, SpecError, StageSpec, format_validation_error, non_empty
from ..text import read_text_file, short_repr, shorten, yaml_mapping
from .data import DATASETS
from .space_knobs import (
    INT_KNOBS,
    KNOBS,
    Choices,
    CornerTrial,
    Count,
    Fixed,
    Knob,
    RandomTrial,
    Range,
    SpaceError,
    TieRef,
    as_definition,
    check_values,
    field_adapter,
    finite_values,
    parse_count,
    suggest,
)
from .space_rules import (
    MAX_MONOTONE_COMBINATIONS,
    Rules,
    interpolate,
    monotone_chains,
    nondecreasing,
    quantum_problem,
    round_scheduled,
    smallest_quantum,
)
from .train import TrainConfig

__all__ = [
    "SearchSpace",
    "Constraints",
    "SpaceError",
    "load_space",
    "parse_count",
    "human_count",
    "RandomTrial",
    "SpaceCheck",
    "CornerTrial",
    "space_yaml",
    "space_data",
]


class StageSpace(BaseModel):
    """Definitions of some or all knobs of one stage (unset knobs: stage defaults, then the
    spec's own defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    knobs: dict[str, Knob] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_mapping(cls, data: Any) -> Any:
        if isinstance(data, dict) and "knobs" not in data:
            unknown = sorted(set(data) - set(KNOBS))
            if unknown:
                raise ValueError(f"unknown knob(s) {unknown}; knobs are {', '.join(KNOBS)}")
            return {"knobs": {k: as_definition(k, v) for k, v in data.items()}}
        return data

    @field_validator("knobs")
    @classmethod
    def _values_valid(cls, knobs: dict[str, Knob]) -> dict[str, Knob]:
        for name, definition in knobs.items():
            check_values(name, definition)
        return knobs


class Constraints(BaseModel):
    """Hard budgets. FLOPs (fvcore's count, one multiply-add = one flop) are counted at
    ``image_size``. ``max_latency_ms`` is predicted from ``latency_table`` when one is named (a
    file of ``xnetspace latency-table``: :func:`xnetspace.latency_table.predict_latency`, at the
    table's device, batch size and threads), before building, as FLOPs are; without one it is
    measured (median eval forward, ``latency_batch_size``) on the study's device, after building.
    Either way it is checked before training."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    image_size: int | tuple[int, int] = Field(224, validate_default=True)  # (224, 224): one form, stored or not
    flops: tuple[Count, Count] | None = None
    max_params: Count | None = None
    max_latency_ms: Float | None = Field(None, gt=0)
    latency_batch_size: Int = Field(1, ge=1)
    latency_table: str | None = Field(None, min_length=1)

    @field_validator("flops")
    @classmethod
    def _ordered(cls, flops: tuple[int, int] | None) -> tuple[int, int] | None:
        if flops is not None and flops[0] > flops[1]:
            raise ValueError(f"flops range [{flops[0]:,}, {flops[1]:,}] has min above max")
        return flops

    @field_validator("image_size", mode="before")
    @classmethod
    def _size_not_bool(cls, size: Any) -> Any:
        if isinstance(size, bool) or (isinstance(size, (list, tuple)) and any(isinstance(v, bool) for v in size)):
            raise ValueError("the sides are numbers, not booleans (true/false)")
        return size

    @field_validator("image_size")
    @classmethod
    def _size(cls, size: ImageSize) -> tuple[int, int]:
        return parse_image_size(size)

    def violations(self, flops: int, params: int) -> list[str]:
        """Why a spec of ``flops`` and ``params`` is over budget (empty: within budget)."""
        out = []  # each message reads "<what> <value> <above max|below min> <limit>"
        if self.flops is not None and flops > self.flops[1]:
            out.append(f"FLOPs {human_count(flops)} above max {human_count(self.flops[1])}")
        if self.flops is not None and flops < self.flops[0]:
            out.append(f"FLOPs {human_count(flops)} below min {human_count(self.flops[0])}")
        if self.max_params is not None and params > self.max_params:
            out.append(f"params {human_count(params)} above max {human_count(self.max_params)}")
        return out


def human_count(count: int) -> str:
    """A count in short form: ``1558000`` -> ``1.558M`` (G, M, k suffixes; 4 significant digits)."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.4g}{suffix}"
    return str(count)


# -- the space ----------------------------------------------------------------------------------------
class SearchSpace(BaseModel):
    """A design space: fixed network fields, per-stage knob definitions, budgets and the proxy
    training recipe that suits it.

    Raises:
        pydantic.ValidationError: unknown fields or knobs, invalid values or ranges, ties whose
            definitions differ, a tie referenced but never defined; rules that clash with the
            stages (a knob set both by a rule and a stage, a tied or continuous monotone knob, a
            quantum that can give invalid widths), each naming the field and the value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    network: dict[str, Any] = Field(
        default_factory=dict,
        description="NetworkSpec fields: fixed (stem_stride: 2) or a list of choices to search (stem_stride: [2, 4])",
    )
    dataset: str = Field(
        "digits",
        description="the task the budget and recipe were chosen on: what --dataset runs when not given "
        "(a Fashion-MNIST task falls back to digits where its package is missing; data.default_dataset)",
    )
    stage_defaults: StageSpace = Field(default_factory=StageSpace)
    stages: Annotated[tuple[StageSpace, ...], non_empty("a space needs at least one stage")]
    rules: Rules = Field(default_factory=Rules, description="width rule, schedules, monotone knobs")
    constraints: Constraints = Field(default_factory=Constraints)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("stages", mode="before")
    @classmethod
    def _stage_count(cls, stages: Any) -> Any:
        # Before the stages are read: a network has at most MAX_STAGES, so every draw would be invalid.
        if isinstance(stages, (list, tuple)) and len(stages) > MAX_STAGES:
            raise ValueError(f"{len(stages):,} stages; a network has at most {MAX_STAGES}")
        return stages

    @field_validator("dataset")
    @classmethod
    def _dataset_kind(cls, dataset: str) -> str:
        kinds = {d.partition("[")[0].partition(":")[0] for d in DATASETS}
        if dataset.partition(":")[0] not in kinds:
            raise ValueError(f"unknown dataset {dataset!r}; use one of: {', '.join(DATASETS)}")
        return dataset

    @field_validator("network")
    @classmethod
    def _network_fields(cls, network: dict[str, Any]) -> dict[str, Any]:
        allowed = set(NetworkSpec.model_fields) - {"stages"}
        unknown = sorted(set(network) - allowed)
        if unknown:
            raise ValueError(f"unknown network field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        for name, value in network.items():
            adapter = field_adapter(NetworkSpec.model_fields[name])
            if isinstance(value, list) and not value:
                raise ValueError(f"network.{name}: an empty list of choices")
            for choice in value if isinstance(value, list) else [value]:
                try:
                    adapter.validate_python(choice)
                except ValidationError as err:
                    raise ValueError(f"network.{name} = {choice!r}: {err.errors()[0]['msg']}") from None
        return network

    @property
    def fixed_network(self) -> dict[str, Any]:
        """The network fields the space fixes (those searched over, lists of choices, left out)."""
        return {name: value for name, value in self.network.items() if not isinstance(value, list)}

    @model_validator(mode="after")
    def _ties_consistent(self) -> SearchSpace:
        self._check_sizes_defined()
        defined = self._check_tie_definitions()
        for stage in self.stage_definitions():
            for knob, definition in stage.items():
                if isinstance(definition, TieRef) and definition.tie not in defined:
                    raise ValueError(f"{knob} refers to tie '{definition.tie}', which no knob defines")
        return self

    def _check_sizes_defined(self) -> None:
        """Every stage needs a depth and a width: its own, the defaults', or the width rule's."""
        for i, stage in enumerate(self.stage_definitions(), start=1):
            for knob in ("depth", "embed_dim"):
                if knob not in stage and self.rules.width is None:
                    raise ValueError(f"stage {i} does not define {knob} (in stages or stage_defaults)")

    def _check_tie_definitions(self) -> dict[str, Knob]:
        """The definition of each tie, refusing a tie defined twice differently."""
        defined: dict[str, Knob] = {}
        for stage in self.stage_definitions():
            for definition in stage.values():
                if definition.tie and not isinstance(definition, TieRef):
                    kept = defined.setdefault(definition.tie, definition)
                    if kept != definition:
                        raise ValueError(
                            f"tie '{definition.tie}' is defined twice, differently: {kept} and {definition}"
                        )
        return defined

    @model_validator(mode="after")
    def _rules_fit(self) -> SearchSpace:
        rules, n = self.rules, len(self.stages)
        set_by = dict.fromkeys(("embed_dim", "depth") if rules.width else (), "rules.width")
        set_by |= {k: f"rules.schedules.{k}" for k in rules.schedules}
        for knob, rule in set_by.items():
            place = self._defined_at(knob)
            if place:
                raise ValueError(f"{rule} sets {knob} in every stage, but {place} defines it too; remove one")
        for knob in rules.monotone:
            if knob in set_by:
                what = (
                    "its widths never decrease already"
                    if set_by[knob] == "rules.width" and knob == "embed_dim"
                    else "it cannot also be monotone"
                )
                raise ValueError(f"rules.monotone: {knob} is set by {set_by[knob]}; {what}")
            self._monotone_options(knob)  # raises for ties, continuous ranges, too many or no combinations
        if rules.width:
            low = (
                rules.width.depth.low
                if isinstance(rules.width.depth, Range)
                else max(cast(list, finite_values(rules.width.depth, whole=True)))
            )  # no ties in rules
            most = rules.width.depth.high if isinstance(rules.width.depth, Range) else low
            if most < n:
                raise ValueError(f"rules.width.depth is at most {most:g} blocks, fewer than the {n} stages")
            sets = [{k: self.stage_values(i, k) for k in ("attn_ratio", "num_heads", "mlp_ratio")} for i in range(n)]
            problem = quantum_problem(rules.width.quantum, sets)
            if problem:
                smallest = smallest_quantum(sets)
                hint = (
                    f"the smallest quantum that keeps every stage valid is {smallest} (every valid one is a "
                    f"multiple of it)"
                    if smallest
                    else "no quantum up to 4096 keeps every stage valid"
                )
                raise ValueError(
                    f"rules.width.quantum {rules.width.quantum} can give invalid widths: {problem}; {hint}"
                )
        return self

    def _defined_at(self, knob: str) -> str | None:
        """Where stages or stage_defaults define ``knob`` (``stages[2].embed_dim``), or None."""
        if knob in self.stage_defaults.knobs:
            return f"stage_defaults.{knob}"
        return next((f"stages[{i}].{knob}" for i, s in enumerate(self.stages) if knob in s.knobs), None)

    def stage_values(self, index: int, knob: str) -> list | None:
        """The finite values ``knob`` can take in stage ``index`` (from 0; None: continuous, set by
        the width rule, or rounded to a valid value by a schedule without ``values``)."""
        whole = knob in INT_KNOBS
        if self.rules.width is not None and knob in ("embed_dim", "depth"):
            return None
        if knob in self.rules.schedules:
            schedule = self.rules.schedules[knob]
            if schedule.values is not None:
                return list(schedule.values)
            if whole:  # rounded to whole numbers between the extremes of first and last
                ends = [
                    finite_values(d, whole=True) or [cast(Range, d).low, cast(Range, d).high]
                    for d in (schedule.first, schedule.last)
                ]
                return list(range(int(min(map(min, ends))), int(max(map(max, ends))) + 1))
            return None
        definition = self.stage_definitions()[index].get(knob)
        if definition is None:
            return [StageSpec.model_fields[knob].default]
        if isinstance(definition, TieRef) or definition.tie:
            definition = self._tie_definitions()[cast(str, definition.tie)]
        return finite_values(definition, whole)

    @cached_property
    def monotone_options(self) -> dict[str, dict[tuple[int, int], list[tuple]]]:
        """Per monotone knob, its chains (first, last stage index, from 0) and each chain's
        non-decreasing combinations (computed once)."""
        return {knob: self._monotone_options(knob) for knob in self.rules.monotone}

    def _monotone_options(self, knob: str) -> dict[tuple[int, int], list[tuple]]:
        """The chains of a monotone knob (first, last stage index) and each chain's non-decreasing
        combinations.

        Raises:
            ValueError: the knob is tied or continuous in a stage, a chain has no non-decreasing
                combination or more than MAX_MONOTONE_COMBINATIONS.
        """
        values = []
        for i, stage in enumerate(self.stage_definitions()):
            definition = stage.get(knob)
            if definition is not None and definition.tie:
                raise ValueError(
                    f"rules.monotone: {knob} is tied (tie '{definition.tie}') in stage {i + 1}: a tied "
                    f"knob is one value in all its stages; drop the tie or the monotone entry"
                )
            if isinstance(definition, Range) and definition.log:
                raise ValueError(
                    f"rules.monotone: {knob} of stage {i + 1} is a log range; monotone knobs are drawn "
                    f"uniformly over their non-decreasing combinations: give a step or choices"
                )
            found = self.stage_values(i, knob)
            if found is None:
                raise ValueError(
                    f"rules.monotone: {knob} of stage {i + 1} is a continuous range; give it a step or choices"
                )
            values.append(found)
        options = {}
        for a, b in monotone_chains(values):
            try:
                combos = nondecreasing(values[a : b + 1])
            except ValueError:
                raise ValueError(
                    f"rules.monotone: {knob} of stages {a + 1}-{b + 1} has more than "
                    f"{MAX_MONOTONE_COMBINATIONS:,} non-decreasing combinations (one Optuna parameter "
                    f"holds them all); use fewer values or steps, or rules.width"
                ) from None
            if not combos:
                raise ValueError(f"rules.monotone: {knob} of stages {a + 1}-{b + 1} has no non-decreasing combination")
            options[(a, b)] = combos
        return options

    def stage_definitions(self) -> list[dict[str, Knob]]:
        """Per stage, every knob's definition: the stage's own over ``stage_defaults``."""
        return [{**self.stage_defaults.knobs, **stage.knobs} for stage in self.stages]

    def _tie_definitions(self) -> dict[str, Knob]:
        return {d.tie: d for s in self.stage_definitions() for d in s.values() if d.tie and not isinstance(d, TieRef)}

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, trial: Any, **network: Any) -> NetworkSpec:
        """Draw a spec: ``trial`` is an ``optuna.Trial`` (or anything with its ``suggest_int``,
        ``suggest_float`` and ``suggest_categorical``, such as :class:`RandomTrial`).

        ``network`` overrides fixed network fields (the dataset's ``num_classes``, ``in_chans``).

        Raises:
            pydantic.ValidationError: the drawn combination is not a valid spec (e.g. attention
                channels not divisible by the drawn heads); callers count it as a rejected sample.
        """
        # The Optuna parameters are asked for in this order, always all of them (stored studies are
        # replayed against it, and param_names relies on it): network, width rule, monotone chains,
        # stage knobs, schedules.
        n = len(self.stages)
        stages: list[dict[str, Any]] = [{} for _ in range(n)]
        searched = self._draw_network(trial)
        problems = self._draw_width(trial, stages)  # raised after every parameter was asked for
        self._draw_monotone(trial, stages)
        self._draw_stage_knobs(trial, stages)
        scheduled = self._draw_schedules(trial, n)
        if problems:
            raise ValidationError.from_exception_data(
                "NetworkSpec",
                [
                    {"type": "value_error", "loc": ("rules",), "input": None, "ctx": {"error": ValueError(p)}}
                    for p in problems
                ],
            )
        self._apply_schedules(stages, scheduled)
        fields = {**self.network, **searched, **network}
        return NetworkSpec.model_validate({"name": f"{self.name}_sample", **fields, "stages": stages})

    def _draw_network(self, trial: Any) -> dict[str, Any]:
        """The network fields with choices (Optuna parameters ``network.FIELD``; one choice is no knob)."""
        return {
            name: choices[0] if len(choices) == 1 else trial.suggest_categorical(f"network.{name}", choices)
            for name, choices in self.network.items()
            if isinstance(choices, list)
        }

    def _draw_width(self, trial: Any, stages: list[dict[str, Any]]) -> list[str]:
        """The width rule's embed_dim and depth into ``stages``; returns why the drawn parameters
        give no valid widths (empty: they do, or there is no width rule)."""
        width = self.rules.width
        if width is None:
            return []
        drawn = width.draw(trial)
        try:
            dims, depths = width.stages(*drawn, len(stages))
        except ValueError as err:
            return [str(err)]
        for stage, dim, depth in zip(stages, dims, depths):
            stage.update(embed_dim=dim, depth=depth)
        return []

    def _draw_monotone(self, trial: Any, stages: list[dict[str, Any]]) -> None:
        """Each monotone chain's non-decreasing combination (one parameter ``stage{a}-{b}.{knob}``)
        into ``stages``."""
        for knob in self.rules.monotone:
            for (a, b), combos in self.monotone_options[knob].items():
                labels = {",".join(f"{v:g}" for v in combo): combo for combo in combos}
                if len(combos) > 1:  # a chain with one non-decreasing combination is no knob
                    combo = labels[trial.suggest_categorical(f"stage{a + 1}-{b + 1}.{knob}", list(labels))]
                else:
                    combo = combos[0]
                for i, value in zip(range(a, b + 1), combo):
                    stages[i][knob] = int(value) if knob in INT_KNOBS else value

    def _draw_stage_knobs(self, trial: Any, stages: list[dict[str, Any]]) -> None:
        """Every stage knob no rule sets into ``stages`` (``stage{i}.{knob}``, or ``tied.{NAME}``)."""
        ties = self._tie_definitions()
        for i, stage_definitions in enumerate(self.stage_definitions()):
            for knob, definition in stage_definitions.items():
                if knob in stages[i] or knob in self.rules.schedules:
                    continue
                whole = knob in INT_KNOBS
                if definition.tie:
                    stages[i][knob] = suggest(trial, f"tied.{definition.tie}", ties[definition.tie], whole, knob)
                else:
                    stages[i][knob] = suggest(trial, f"stage{i + 1}.{knob}", definition, whole, knob)

    def _draw_schedules(self, trial: Any, n: int) -> dict[str, list[float]]:
        """Per scheduled knob, its first and last values interpolated over the ``n`` stages (not yet
        rounded to valid values: :meth:`_apply_schedules`)."""
        scheduled = {}
        for knob, schedule in self.rules.schedules.items():
            whole = knob in INT_KNOBS
            first = suggest(trial, f"schedule.{knob}.first", schedule.first, whole)
            last = suggest(trial, f"schedule.{knob}.last", schedule.last, whole)
            scheduled[knob] = interpolate(first, last, n, schedule.log)
        return scheduled

    def _apply_schedules(self, stages: list[dict[str, Any]], scheduled: dict[str, list[float]]) -> None:
        """The scheduled values, rounded to valid ones for each stage, into ``stages``."""
        defaults = StageSpec.model_fields
        for knob in sorted(scheduled, key=lambda k: k in ("mlp_ratio", "attn_ratio")):  # the ratios need the heads
            for stage, x in zip(stages, scheduled[knob]):
                stage[knob] = round_scheduled(
                    knob,
                    x,
                    self.rules.schedules[knob].values,
                    stage.get("embed_dim"),
                    stage.get("num_heads", defaults["num_heads"].default),
                    len(stage.get("ffn_kernel_sizes", defaults["ffn_kernel_sizes"].default)),
                )

    def rules_summary(self) -> str:
        """One line on the space's rules (empty without rules): ``width rule (w0, wa, wm, depth;
        quantum 16); schedules: attn_ratio; monotone: num_heads (stages 3-4 coupled)``."""
        parts, rules = [], self.rules
        if rules.width is not None:
            parts.append(f"width rule (w0, wa, wm, depth; quantum {rules.width.quantum}) sets embed_dim and depth")
        if rules.schedules:
            parts.append("schedules: " + ", ".join(rules.schedules))
        for knob, chains in self.monotone_options.items():
            coupled = ", ".join(f"stages {a + 1}-{b + 1}: {len(c)} combinations" for (a, b), c in chains.items())
            parts.append(f"monotone {knob} ({coupled or 'implied by the stages'})")
        return "; ".join(parts)

    def param_names(self) -> list[str]:
        """The Optuna parameter names this space samples (``stage2.attn_ratio``, ``tied.mlp``)."""
        trial = CornerTrial(False)
        try:
            self.sample(trial)
        except ValidationError:
            pass  # the low corner may be an invalid spec; every name was asked for on the way
        return sorted(set(trial.names))

    def violations(self, spec: NetworkSpec) -> list[str]:
        """Budget violations of ``spec`` from the cost model (nothing is built)."""
        report = cost_report(spec, self.constraints.image_size)
        return self.constraints.violations(report.flops, report.params)

    def random_specs(self, count: int, seed: int = 0, feasible_only: bool = True, **network: Any) -> list[NetworkSpec]:
        """``count`` specs drawn uniformly at random (design-space statistics, pycls style),
        valid and, with ``feasible_only``, within the budget.

        Raises:
            SpaceError: when 1,000 draws in a row give nothing usable.
        """
        specs: list[NetworkSpec] = []
        rng, misses = random.Random(seed), 0
        while len(specs) < count:
            try:
                spec = self.sample(RandomTrial(rng), **network)
            except ValidationError:
                spec = None
            if spec is None or (feasible_only and self.violations(spec)):
                misses += 1
                if misses >= 1000:
                    raise SpaceError(f"space '{self.name}': 1,000 random draws in a row gave no usable spec")
                continue
            misses = 0
            specs.append(spec)
        return specs

    def distinct_specs(
        self, count: int, seed: int, tag: str, draws: int | None = None, **network: Any
    ) -> list[NetworkSpec]:
        """Up to ``count`` distinct (by digest) valid in-budget specs drawn uniformly with
        ``random.Random(seed)``, named ``{space}_{tag}{i}``; fewer when ``draws`` draws (default
        ``200 * count + 1000``) do not give them (the caller decides whether that is an error)."""
        pool: list[NetworkSpec] = []
        rng, seen = random.Random(seed), set()
        for _ in range(200 * count + 1000 if draws is None else draws):
            if len(pool) == count:
                break
            try:
                spec = self.sample(RandomTrial(rng), **network)
            except (ValidationError, SpecError):
                continue
            digest = spec.digest()
            if digest in seen:  # in budget or not, its cost is known
                continue
            seen.add(digest)
            report = cost_report(spec, self.constraints.image_size)
            if self.constraints.violations(report.flops, report.params):
                continue
            pool.append(spec.model_copy(update={"name": f"{self.name}_{tag}{len(pool)}"}))
        return pool

    def check(self, draws: int = 2000, seed: int = 0, **network: Any) -> SpaceCheck:
        """Draw the space's corners and ``draws`` random specs and count how many are valid
        and within budget (a predicted latency budget too, when the space names a latency
        table), so that an impossible space is refused before any trial runs.

        Raises:
            SpaceError: no draw is both valid and within the constraints (the message gives the
                FLOPs/params ranges seen and the commonest reasons).
            LatencyTableError: the space's latency table cannot be read.
        """
        rng = random.Random(seed)
        trials = [CornerTrial(False), CornerTrial(True)] + [RandomTrial(rng) for _ in range(draws)]
        reasons = _Reasons()
        flops: list[int] = []
        params: list[int] = []
        feasible, valid = 0, 0
        c = self.constraints
        limit = c.max_latency_ms
        table = read_table(c.latency_table) if c.latency_table and limit is not None else None
        for trial in trials:
            try:
                spec = self.sample(trial, **network)
            except ValidationError as err:
                reasons.add(err.errors()[0]["msg"].removeprefix("Value error, "))
                continue
            valid += 1
            report = cost_report(spec, self.constraints.image_size)
            flops.append(report.flops)
            params.append(report.params)
            problems = self.constraints.violations(report.flops, report.params)
            for problem in problems:
                reasons.add(" ".join(problem.split()[0:1] + problem.split()[2:4]))  # "FLOPs above max"
            if not problems and table and limit is not None and table.predict(spec, c.image_size).total_ms > limit:
                problems = ["predicted latency above max"]
                reasons.add(problems[0])
            feasible += not problems
        result = SpaceCheck(
            len(trials),
            valid,
            feasible,
            (min(flops, default=0), max(flops, default=0)),
            (min(params, default=0), max(params, default=0)),
            reasons.commonest(3),
        )
        if feasible == 0:
            raise SpaceError(
                f"space '{self.name}': none of {len(trials):,} specs drawn meets the constraints "
                f"({self._constraint_text()}); {result.summary()}"
            )
        return result

    def _constraint_text(self) -> str:
        c = self.constraints
        h, w = parse_image_size(c.image_size)  # the default, 224, is not validated into (224, 224)
        parts = [f"at {h}x{w}"]
        if c.flops:
            parts.append(f"FLOPs in [{human_count(c.flops[0])}, {human_count(c.flops[1])}]")
        if c.max_params:
            parts.append(f"params <= {human_count(c.max_params)}")
        return ", ".join(parts)

    def with_latency(self, table: str | None = None, max_latency_ms: float | None = None) -> SearchSpace:
        """A copy with the latency table and budget replaced where given, validated again."""
        data = self.model_dump()
        if table is not None:
            data["constraints"]["latency_table"] = table
        if max_latency_ms is not None:
            data["constraints"]["max_latency_ms"] = max_latency_ms
        return SearchSpace.model_validate(data)

    def with_flops(self, flops_min: int | None = None, flops_max: int | None = None) -> SearchSpace:
        """A copy with the FLOP budget replaced (command-line overrides), validated again."""
        low, high = self.constraints.flops or (0, None)
        low = low if flops_min is None else flops_min
        high = high if flops_max is None else flops_max
        if high is None:
            high = 10**18  # no maximum given anywhere
        data = self.model_dump()
        data["constraints"]["flops"] = (low, high)
        return SearchSpace.model_validate(data)


# -- writing a space -----------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Tuples as lists, whole floats as ints: what a person would write in YAML."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _count_text(count: int) -> int | str:
    """``1500000`` -> ``"1.5M"`` when the short form reads back the same count, else the number."""
    text = human_count(count)
    return text if text != str(count) and parse_count(text) == count else count


def _short(definition: Knob) -> Any:
    """A knob definition in the shortest form that reads back the same."""
    if isinstance(definition, TieRef):
        return {"tie": definition.tie}
    if isinstance(definition, Fixed):
        return (
            {"value": _plain(definition.value), "tie": definition.tie} if definition.tie else _plain(definition.value)
        )
    if isinstance(definition, Choices):
        if definition.tie:
            return {"choices": _plain(definition.choices), "tie": definition.tie}
        return _plain(definition.choices)
    out = {"low": _plain(definition.low), "high": _plain(definition.high)}
    if definition.step is not None:
        out["step"] = _plain(definition.step)
    if definition.log:
        out["log"] = True
    if definition.tie:
        out["tie"] = definition.tie
    return out


def space_data(space: SearchSpace) -> dict:
    """``space`` as the mapping a space file holds, in the short forms (``[4, 8]`` for choices);
    ``SearchSpace.model_validate(space_data(space)) == space``."""
    data: dict[str, Any] = {"name": space.name}
    if space.description:
        data["description"] = space.description
    if space.dataset != SearchSpace.model_fields["dataset"].default:
        data["dataset"] = space.dataset
    if space.network:
        data["network"] = _plain(space.network)
    if not space.rules.empty:
        data["rules"] = _rules_data(space.rules)
    if space.stage_defaults.knobs:
        data["stage_defaults"] = {k: _short(d) for k, d in space.stage_defaults.knobs.items()}
    data["stages"] = [_Flow({k: _short(d) for k, d in stage.knobs.items()}) for stage in space.stages]
    data["constraints"] = _constraints_data(space.constraints)
    data["train"] = _Block(space.train.model_dump(mode="json"))  # in full: later default changes leave it as it is
    return data


def _rules_data(rules: Rules) -> dict[str, Any]:
    """``rules`` as a space file writes them, leaving out the parts not set."""
    data: dict[str, Any] = {}
    if rules.width is not None:
        w = rules.width
        data["width"] = {k: _short(getattr(w, k)) for k in ("w0", "wa", "wm", "depth")}
        data["width"]["quantum"] = w.quantum
    if rules.schedules:
        data["schedules"] = {}
        for knob, schedule in rules.schedules.items():
            entry = {"first": _short(schedule.first), "last": _short(schedule.last)}
            if schedule.values is not None:
                entry["values"] = _plain(schedule.values)
            if schedule.log:
                entry["log"] = True
            data["schedules"][knob] = entry
    if rules.monotone:
        data["monotone"] = list(rules.monotone)
    return data


def _constraints_data(c: Constraints) -> dict[str, Any]:
    """``c`` as a space file writes it: the image size always, the other budgets where set."""
    height, width = parse_image_size(c.image_size)  # the default, 224, is not validated into (224, 224)
    constraints: dict[str, Any] = {"image_size": height if height == width else [height, width]}
    if c.flops is not None:
        constraints["flops"] = [_count_text(v) for v in c.flops]
    if c.max_params is not None:
        constraints["max_params"] = c.max_params
    if c.max_latency_ms is not None:
        constraints["max_latency_ms"] = c.max_latency_ms
    if c.latency_table is not None:
        constraints["latency_table"] = c.latency_table
    if c.latency_batch_size != 1:
        constraints["latency_batch_size"] = c.latency_batch_size
    return constraints


class _Flow(dict):
    """A mapping written on one line (``- {depth: 2, embed_dim: 64}``), as the shipped spaces write stages."""


class _Block(dict):
    """A mapping written one key a line."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)
_Dumper.add_representer(
    _Block, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=False)
)


def space_yaml(space: SearchSpace, header: str = "") -> str:
    """``space`` as a readable space file (YAML; ``header`` lines become ``#`` comments on top).
    :func:`load_space` of the text gives ``space`` back."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + yaml.dump(space_data(space), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=1000)


@dataclass
class SpaceCheck:
    """What :meth:`SearchSpace.check` saw: draws, valid ones, feasible ones, ranges, reasons."""

    draws: int
    valid: int
    feasible: int
    flops_range: tuple[int, int]
    params_range: tuple[int, int]
    top_reasons: list[tuple[str, int]]

    @property
    def acceptance(self) -> float:
        return self.feasible / self.draws

    def summary(self) -> str:
        reasons = "; ".join(f"{r} ({n}x)" for r, n in self.top_reasons) or "none"
        return (
            f"{self.valid:,} of {self.draws:,} draws valid, {self.feasible:,} within budget "
            f"({100 * self.acceptance:.1f}%); FLOPs seen {human_count(self.flops_range[0])}-"
            f"{human_count(self.flops_range[1])}, params {human_count(self.params_range[0])}-"
            f"{human_count(self.params_range[1])}; commonest rejections: {reasons}"
        )


class _Reasons:
    """Why draws were rejected, counted by form: a reason with its numbers (and lists of them) masked, so that
    "rules.width gives 3 stages, the space has 4 (w0 16, ...)" and "... gives 5 stages, the space
    has 4 (w0 32, ...)" count as one. A form is shown by its first wording, whole (numbers and
    all), followed by "and the like" when other wordings were counted with it."""

    _NUMBERS = re.compile(r"\[[-\d., e+]*\]|(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")  # a list is one; w0 stays w0
    MAX_REASON = 300  # characters of one wording; the sources keep their values short already

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        self.varied: set[str] = set()

    def add(self, reason: str) -> None:
        form = self._NUMBERS.sub("#", reason)
        self.counts[form] += 1
        if self.first.setdefault(form, reason) != reason:
            self.varied.add(form)

    def commonest(self, count: int) -> list[tuple[str, int]]:
        """The ``count`` commonest forms, each as (its first wording, how many draws it stopped)."""
        return [
            (shorten(self.first[form], self.MAX_REASON) + (" and the like" if form in self.varied else ""), n)
            for form, n in self.counts.most_common(count)
        ]


def load_space(path: str | Path) -> SearchSpace:
    """Read a space file (YAML, ``yaml.safe_load``); a bare name loads ``spaces/NAME.yaml``
    shipped with the package.

    Raises:
        SpaceError: an empty name, missing file, not YAML, or not a valid space (every problem
            listed with its place and value).
    """
    if isinstance(path, str) and not path.strip():  # Path("") would be ".", the working folder
        raise SpaceError(
            f"the space is empty ({short_repr(path)}): give a space file (.yaml) or a shipped space's name"
        )
    path = Path(path)
    if not path.exists() and path.suffix == "":
        from importlib import resources

        shipped = resources.files("xnetspace") / "spaces" / f"{path.name}.yaml"
        if shipped.is_file():
            return _parse_space(shipped.read_text(), str(path))
    try:
        text = read_text_file(path, "space file")  # at most 1 MiB: /dev/zero is refused, not read
    except SpecError as err:
        raise SpaceError(str(err)) from err
    return _parse_space(text, str(path))


def _parse_space(text: str, source: str) -> SearchSpace:
    try:
        return SearchSpace.model_validate(yaml_mapping(text, "a space"))
    except ValidationError as err:
        raise SpaceError(format_validation_error(err, f"space file {source}").replace("knobs.", "")) from err
    except SpecError as err:
        raise SpaceError(f"{source}: {err}") from err
