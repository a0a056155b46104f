"""Design spaces: per-stage ranges and choices for every spec knob, ties, and budgets.

A :class:`SearchSpace` (a ``spaces/*.yaml`` file) turns an ``optuna.Trial``, or a random
generator, into a :class:`~xnetspace.spec.NetworkSpec`, like pycls's AnyNet design space: per-stage
parameters zipped into stages. Every knob of :class:`~xnetspace.spec.StageSpec` can be

- fixed: ``attn_ratio: 0.5`` (for ``ffn_kernel_sizes`` a list of ints, ``[1, 3, 5, 7]``);
- a list of choices: ``sr_ratio: [4, 8]`` or ``{choices: [4, 8]}`` (kernel lists: a list of lists);
- a range: ``{low: 16, high: 64, step: 8}`` (``log: true`` for log-uniform);
- tied across stages: add ``tie: NAME`` to the definition; every knob naming the same tie takes
  one shared value (``{tie: NAME}`` alone refers to a tie defined elsewhere).

Optuna parameter names are ``stage{i}.{knob}`` (stages counted from 1) and ``tied.{NAME}``.
``constraints`` are hard budgets checked from the cost model before anything is built.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, field_validator,
                      model_validator)

from ..cost import ImageSize, cost_report, parse_image_size
from ..spec import (Float, Int, NetworkSpec, SpecError, StageSpec, format_validation_error, non_empty,
                    read_text_file, yaml_mapping)
from .train import TrainConfig

__all__ = ["SearchSpace", "Constraints", "SpaceError", "load_space", "parse_count", "human_count", "RandomTrial", "SpaceCheck"]

KNOBS = tuple(StageSpec.model_fields)
_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


class SpaceError(ValueError):
    """A space file that cannot describe a search, or constraints no spec can meet."""


def parse_count(value: Union[int, float, str]) -> int:
    """``300M``, ``0.5G``, ``2.5k``, ``1e9`` or a number -> an integer count (FLOPs, params).

    Raises:
        ValueError: text that is not a non-negative number with an optional k/M/G/T suffix.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?\d+)?)\s*([kmgt]?)\s*", str(value).lower())
        if not match:
            raise ValueError(f"{value!r} is not a count such as 300M, 0.5G or 1200000")
        number = float(match[1]) * _SUFFIXES[match[2]]
    if number < 0 or not math.isfinite(number):
        raise ValueError(f"{value!r} must be a non-negative number")
    return int(round(number))


Count = Annotated[int, BeforeValidator(parse_count)]


# -- knob definitions ---------------------------------------------------------------------------------
class _Def(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tie: Optional[str] = None


class Fixed(_Def):
    value: Any


class Choices(_Def):
    choices: tuple[Any, ...] = Field(min_length=1)


class Range(_Def):
    low: Float
    high: Float
    step: Optional[Float] = None
    log: bool = False

    @model_validator(mode="after")
    def _sane(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} is above high {self.high:g}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step:g}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log ranges need low > 0 and no step")
        return self


class TieRef(_Def):
    tie: str


Knob = Union[Fixed, Choices, Range, TieRef]


def _as_definition(knob: str, raw: Any) -> Any:
    """Shorthand -> explicit definition (``4`` -> fixed, ``[4, 8]`` -> choices).

    Raises:
        ValueError: a definition that cannot be read; the message starts with the knob's name.
    """
    try:
        return _read_definition(knob, raw)
    except ValidationError as err:  # a Range/Choices of its own: say which knob it was for
        problem = err.errors()[0]
        where = ".".join([knob, *(str(p) for p in problem["loc"])])  # depth.low
        raise ValueError(f"{where}: {problem['msg'].removeprefix('Value error, ')}") from None


def _read_definition(knob: str, raw: Any) -> Any:
    if isinstance(raw, dict):
        if set(raw) == {"tie"}:
            return TieRef(**raw)
        if "choices" in raw:
            return Choices(**raw)
        if {"low", "high"} & set(raw):
            return Range(**raw)
        if "value" in raw:
            return Fixed(**raw)
        raise ValueError(f"a {knob} definition needs value, choices, low/high or tie; got keys {sorted(raw)}")
    if isinstance(raw, (list, tuple)):
        if knob == "ffn_kernel_sizes" and all(not isinstance(v, (list, tuple)) for v in raw):
            return Fixed(value=tuple(raw))  # one kernel list is a fixed value
        return Choices(choices=tuple(tuple(v) if isinstance(v, list) else v for v in raw))
    return Fixed(value=raw)


_FIELD_TYPES = {
    name: TypeAdapter(Annotated[(field.annotation, *field.metadata)]) for name, field in StageSpec.model_fields.items()
}


def _check_values(knob: str, definition: Knob) -> None:
    """Each value a definition can produce must be a valid value of the knob on its own."""
    if isinstance(definition, TieRef):
        return
    if isinstance(definition, Range):
        if knob not in _INT_KNOBS | _FLOAT_KNOBS:
            raise ValueError(f"{knob} takes a value or a list of choices, not a range")
        bounds = (definition.low, definition.high, definition.step or 1)
        if knob in _INT_KNOBS and not all(float(v).is_integer() for v in bounds):
            raise ValueError(f"{knob} is a whole number: low, high and step must be whole")
        values = [definition.low, definition.high]
    else:
        values = [definition.value] if isinstance(definition, Fixed) else list(definition.choices)
    for value in values:
        try:
            _FIELD_TYPES[knob].validate_python(value)
        except ValidationError as err:
            raise ValueError(f"{knob} value {value!r} is not valid: {err.errors()[0]['msg']}") from None


_INT_KNOBS = {k for k, f in StageSpec.model_fields.items() if f.annotation is int}
_FLOAT_KNOBS = {"mlp_ratio", "attn_ratio"}


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
            return {"knobs": {k: _as_definition(k, v) for k, v in data.items()}}
        return data

    @field_validator("knobs")
    @classmethod
    def _values_valid(cls, knobs: dict[str, Knob]) -> dict[str, Knob]:
        for name, definition in knobs.items():
            _check_values(name, definition)
        return knobs


class Constraints(BaseModel):
    """Hard budgets. FLOPs (fvcore's count, one multiply-add = one flop) are counted at
    ``image_size``; ``max_latency_ms`` is measured (median eval forward, ``latency_batch_size``)
    on the study's device, so it is checked after building, before training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: Union[int, tuple[int, int]] = 224
    flops: Optional[tuple[Count, Count]] = None
    max_params: Optional[Count] = None
    max_latency_ms: Optional[Float] = Field(None, gt=0)
    latency_batch_size: Int = Field(1, ge=1)

    @field_validator("flops")
    @classmethod
    def _ordered(cls, flops: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
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
            definitions differ, a tie referenced but never defined.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    network: dict[str, Any] = Field(default_factory=dict, description="fixed NetworkSpec fields")
    stage_defaults: StageSpace = Field(default_factory=StageSpace)
    stages: Annotated[tuple[StageSpace, ...], non_empty("a space needs at least one stage")]
    constraints: Constraints = Field(default_factory=Constraints)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("network")
    @classmethod
    def _network_fields(cls, network: dict[str, Any]) -> dict[str, Any]:
        allowed = set(NetworkSpec.model_fields) - {"stages"}
        unknown = sorted(set(network) - allowed)
        if unknown:
            raise ValueError(f"unknown network field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        for name, value in network.items():
            field = NetworkSpec.model_fields[name]
            try:
                TypeAdapter(Annotated[(field.annotation, *field.metadata)]).validate_python(value)
            except ValidationError as err:
                raise ValueError(f"network.{name} = {value!r}: {err.errors()[0]['msg']}") from None
        return network

    @model_validator(mode="after")
    def _ties_consistent(self) -> "SearchSpace":
        for i, stage in enumerate(self.stage_definitions(), start=1):
            for knob in ("depth", "embed_dim"):
                if knob not in stage:
                    raise ValueError(f"stage {i} does not define {knob} (in stages or stage_defaults)")
        defined: dict[str, Knob] = {}
        for stage in self.stage_definitions():
            for definition in stage.values():
                if definition.tie and not isinstance(definition, TieRef):
                    kept = defined.setdefault(definition.tie, definition)
                    if kept != definition:
                        raise ValueError(f"tie '{definition.tie}' is defined twice, differently: {kept} and {definition}")
        for stage in self.stage_definitions():
            for knob, definition in stage.items():
                if isinstance(definition, TieRef) and definition.tie not in defined:
                    raise ValueError(f"{knob} refers to tie '{definition.tie}', which no knob defines")
        return self

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
        ties = self._tie_definitions()
        stages = []
        for i, definitions in enumerate(self.stage_definitions(), start=1):
            stage = {}
            for knob, definition in definitions.items():
                if definition.tie:
                    stage[knob] = _suggest(trial, f"tied.{definition.tie}", knob, ties[definition.tie])
                else:
                    stage[knob] = _suggest(trial, f"stage{i}.{knob}", knob, definition)
            stages.append(stage)
        return NetworkSpec.model_validate({"name": f"{self.name}_sample", **self.network, **network, "stages": stages})

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
        rng, specs, misses = random.Random(seed), [], 0
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

    def check(self, draws: int = 2000, seed: int = 0, **network: Any) -> "SpaceCheck":
        """Draw the space's corners and ``draws`` random specs and count how many are valid
        and within budget, so that an impossible space is refused before any trial runs.

        Raises:
            SpaceError: no draw is both valid and within the constraints (the message gives the
                FLOPs/params ranges seen and the commonest reasons).
        """
        rng = random.Random(seed)
        trials = [CornerTrial(False), CornerTrial(True)] + [RandomTrial(rng) for _ in range(draws)]
        reasons, flops, params, feasible, valid = Counter(), [], [], 0, 0
        for trial in trials:
            try:
                spec = self.sample(trial, **network)
            except ValidationError as err:
                reasons[_first_reason(err)] += 1
                continue
            valid += 1
            report = cost_report(spec, self.constraints.image_size)
            flops.append(report.flops)
            params.append(report.params)
            problems = self.constraints.violations(report.flops, report.params)
            reasons.update(" ".join(p.split()[0:1] + p.split()[2:4]) for p in problems)  # "FLOPs above max"
            feasible += not problems
        result = SpaceCheck(len(trials), valid, feasible, (min(flops, default=0), max(flops, default=0)),
                            (min(params, default=0), max(params, default=0)), reasons.most_common(3))
        if feasible == 0:
            raise SpaceError(
                f"space '{self.name}': none of {len(trials):,} specs drawn meets the constraints "
                f"({self._constraint_text()}); {result.summary()}"
            )
        return result

    def _constraint_text(self) -> str:
        c = self.constraints
        parts = [f"at {c.image_size[0]}x{c.image_size[1]}"]
        if c.flops:
            parts.append(f"FLOPs in [{human_count(c.flops[0])}, {human_count(c.flops[1])}]")
        if c.max_params:
            parts.append(f"params <= {human_count(c.max_params)}")
        return ", ".join(parts)

    def with_flops(self, flops_min: Optional[int] = None, flops_max: Optional[int] = None) -> "SearchSpace":
        """A copy with the FLOP budget replaced (command-line overrides), validated again."""
        low, high = self.constraints.flops or (0, None)
        low = low if flops_min is None else flops_min
        high = high if flops_max is None else flops_max
        if high is None:
            high = 10**18  # no maximum given anywhere
        data = self.model_dump()
        data["constraints"]["flops"] = (low, high)
        return SearchSpace.model_validate(data)


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
        return (f"{self.valid:,} of {self.draws:,} draws valid, {self.feasible:,} within budget "
                f"({100 * self.acceptance:.1f}%); FLOPs seen {human_count(self.flops_range[0])}-"
                f"{human_count(self.flops_range[1])}, params {human_count(self.params_range[0])}-"
                f"{human_count(self.params_range[1])}; commonest rejections: {reasons}")


def _first_reason(err: ValidationError) -> str:
    e = err.errors()[0]
    return re.sub(r"[0-9.]+", "#", e["msg"].removeprefix("Value error, "))[:80]


def _encode(value: Any) -> Any:
    """Optuna categoricals hold scalars: kernel lists travel as "1,3,5,7"."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def _decode(knob: str, value: Any) -> Any:
    return tuple(int(v) for v in value.split(",")) if knob == "ffn_kernel_sizes" and isinstance(value, str) else value


def _suggest(trial: Any, name: str, knob: str, definition: Knob) -> Any:
    if isinstance(definition, Fixed):
        return definition.value
    if isinstance(definition, Choices):
        return _decode(knob, trial.suggest_categorical(name, [_encode(c) for c in definition.choices]))
    if knob in _INT_KNOBS:
        return trial.suggest_int(name, int(definition.low), int(definition.high),
                                 step=int(definition.step or 1), log=definition.log)
    return trial.suggest_float(name, definition.low, definition.high, step=definition.step, log=definition.log)


class RandomTrial:
    """Uniform draws with Optuna's ``suggest_*`` signatures, for random specs without a study."""

    def __init__(self, rng: random.Random):
        self.rng, self.params = rng, {}

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return self.params.setdefault(name, self.rng.choice(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        if log:
            value = round(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        else:
            value = low + step * self.rng.randint(0, (high - low) // step)
        return self.params.setdefault(name, value)

    def suggest_float(self, name: str, low: float, high: float, step: Optional[float] = None, log: bool = False) -> float:
        if step:
            value = low + step * self.rng.randint(0, int(round((high - low) / step)))
        elif log:
            value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
        else:
            value = self.rng.uniform(low, high)
        return self.params.setdefault(name, value)


class CornerTrial:
    """Every knob at its low (or high) end: the space's smallest and largest corners. Records
    the parameter names asked for in ``names``."""

    def __init__(self, high: bool):
        self.high, self.names = high, []

    def suggest_categorical(self, name: str, choices: list) -> Any:
        self.names.append(name)
        return choices[-1] if self.high else choices[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.names.append(name)
        return low + step * ((high - low) // step) if self.high else low

    def suggest_float(self, name: str, low: float, high: float, step: Optional[float] = None, log: bool = False) -> float:
        self.names.append(name)
        return (low + step * int((high - low) / step) if step else high) if self.high else low


def load_space(path: Union[str, Path]) -> SearchSpace:
    """Read a space file (YAML, ``yaml.safe_load``); a bare name loads ``spaces/NAME.yaml``
    shipped with the package.

    Raises:
        SpaceError: missing file, not YAML, or not a valid space (every problem listed with its
            place and value).
    """
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
