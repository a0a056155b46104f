"""Knob definitions of a design space, and the trials that draw them.

One knob of a stage (``depth``, ``embed_dim``, ... any field of :class:`~xnetspace.spec.StageSpec`),
or one parameter of a rule (:mod:`.space_rules`), is defined as

- fixed: ``attn_ratio: 0.5`` (:class:`Fixed`; for ``ffn_kernel_sizes`` a list of ints);
- a list of choices: ``sr_ratio: [4, 8]`` or ``{choices: [4, 8]}`` (:class:`Choices`);
- a range: ``{low: 16, high: 64, step: 8}``, ``log: true`` for log-uniform (:class:`Range`);
- tied: ``tie: NAME`` added to a definition, or ``{tie: NAME}`` alone (:class:`TieRef`).

:class:`RandomTrial` and :class:`CornerTrial` stand in for an ``optuna.Trial`` (the same
``suggest_*`` signatures): uniform random draws, and the space's low or high corner.
"""

from __future__ import annotations

import math
import random
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo

from ..spec import Float, StageSpec
from ..text import short_repr

__all__ = [
    "SpaceError",
    "parse_count",
    "Count",
    "KNOBS",
    "INT_KNOBS",
    "FLOAT_KNOBS",
    "Fixed",
    "Choices",
    "Range",
    "TieRef",
    "Knob",
    "as_definition",
    "check_values",
    "finite_values",
    "suggest",
    "RandomTrial",
    "CornerTrial",
    "validate_knob_value",
]

KNOBS = tuple(StageSpec.model_fields)
INT_KNOBS = {k for k, f in StageSpec.model_fields.items() if f.annotation is int}
FLOAT_KNOBS = {k for k, f in StageSpec.model_fields.items() if f.annotation is float}
_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


class SpaceError(ValueError):
    """A space file that cannot describe a search, or constraints no spec can meet."""


def parse_count(value: int | float | str) -> int:
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
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # a NaN bound draws NaN widths
    tie: str | None = None


class Fixed(_Def):
    """One value."""

    value: Any


class Choices(_Def):
    """A categorical choice (Optuna ``suggest_categorical``)."""

    choices: tuple[Any, ...] = Field(min_length=1)


class Range(_Def):
    """``low`` to ``high``, every ``step`` (``suggest_int``/``suggest_float``), log-uniform with ``log``."""

    low: Float
    high: Float
    step: Float | None = None
    log: bool = False

    @model_validator(mode="after")
    def _sane(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} is above high {self.high:g}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step:g}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log ranges need low > 0 and no step")
        return self


class TieRef(_Def):
    """A reference to a tie defined elsewhere."""

    tie: str


Knob = Fixed | Choices | Range | TieRef


def as_definition(knob: str, raw: Any) -> Knob:
    """Shorthand -> explicit definition (``4`` -> fixed, ``[4, 8]`` -> choices); a definition
    passes through unchanged.

    Raises:
        ValueError: a definition that cannot be read; the message starts with the knob's name.
    """
    if isinstance(raw, (Fixed, Choices, Range, TieRef)):
        return raw
    try:
        return _read_definition(knob, raw)
    except ValidationError as err:  # a Range/Choices of its own: say which knob it was for
        problem = err.errors()[0]
        where = ".".join([knob, *(str(p) for p in problem["loc"])])  # depth.low
        value = "" if isinstance(problem["input"], dict) else f" = {short_repr(problem['input'])}"
        raise ValueError(f"{where}{value}: {problem['msg'].removeprefix('Value error, ')}") from None


def _read_definition(knob: str, raw: Any) -> Knob:
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


def field_adapter(field: FieldInfo) -> TypeAdapter[Any]:
    """A validator of one spec field on its own: its annotation with its constraints, and the
    specs' ``allow_inf_nan=False``."""
    finite = ConfigDict(allow_inf_nan=False)
    if not field.metadata:  # Annotated needs a type and at least one annotation
        return TypeAdapter(Any if field.annotation is None else field.annotation, config=finite)
    form = (field.annotation, *field.metadata)
    return TypeAdapter(Annotated[form], config=finite)  # type: ignore[arg-type]  # a type form built at run time


_FIELD_TYPES = {name: field_adapter(field) for name, field in StageSpec.model_fields.items()}


def validate_knob_value(knob: str, value: Any) -> None:
    """Raise ValueError naming ``knob`` and ``value`` when ``value`` is not a valid value of the
    stage knob on its own (``depth`` -1, an even kernel size)."""
    try:
        _FIELD_TYPES[knob].validate_python(value)
    except ValidationError as err:
        raise ValueError(f"{knob} value {value!r} is not valid: {err.errors()[0]['msg']}") from None


def check_values(knob: str, definition: Knob) -> None:
    """Each value a definition can produce must be a valid value of the stage knob on its own.

    Raises:
        ValueError: naming the knob and the value (a range for a list knob, a fractional step of a
            whole knob, a value out of the knob's bounds).
    """
    if isinstance(definition, TieRef):
        return
    if isinstance(definition, Range):
        if knob not in INT_KNOBS | FLOAT_KNOBS:
            raise ValueError(f"{knob} takes a value or a list of choices, not a range")
        bounds = (definition.low, definition.high, definition.step or 1)
        if knob in INT_KNOBS and not all(float(v).is_integer() for v in bounds):
            raise ValueError(f"{knob} is a whole number: low, high and step must be whole")
        values = [definition.low, definition.high]
    else:
        values = [definition.value] if isinstance(definition, Fixed) else list(definition.choices)
    for value in values:
        validate_knob_value(knob, value)


def finite_values(definition: Knob, whole: bool) -> list | None:
    """Every value ``definition`` can produce, in order (ranges: low, low + step, ... <= high;
    whole ranges without a step: every integer), or None for a continuous range. A TieRef gives
    None (its values are its tie's)."""
    if isinstance(definition, Fixed):
        return [definition.value]
    if isinstance(definition, Choices):
        return list(definition.choices)
    if isinstance(definition, Range):
        step = definition.step or (1 if whole else None)
        if step is None:
            return None
        count = int(math.floor((definition.high - definition.low) / step + 1e-9)) + 1
        values = [definition.low + step * i for i in range(count)]
        return [int(round(v)) for v in values] if whole else [round(v, 12) for v in values]
    return None


def encode(value: Any) -> Any:
    """Optuna categoricals hold scalars: kernel lists travel as "1,3,5,7"."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def decode(knob: str, value: Any) -> Any:
    """The inverse of :func:`encode` for ``knob`` ("1,3,5,7" -> (1, 3, 5, 7) for kernel lists)."""
    return tuple(int(v) for v in value.split(",")) if knob == "ffn_kernel_sizes" and isinstance(value, str) else value


def suggest(trial: Any, name: str, definition: Knob, whole: bool, knob: str = "") -> Any:
    """Draw Optuna parameter ``name`` from ``definition`` (``whole``: an integer knob; ``knob``:
    the stage knob, for kernel lists)."""
    if isinstance(definition, Fixed):
        return definition.value
    if isinstance(definition, Choices):
        return decode(knob, trial.suggest_categorical(name, [encode(c) for c in definition.choices]))
    assert isinstance(definition, Range)  # a TieRef is drawn through its tie's definition
    if whole:
        return trial.suggest_int(
            name, int(definition.low), int(definition.high), step=int(definition.step or 1), log=definition.log
        )
    return trial.suggest_float(name, definition.low, definition.high, step=definition.step, log=definition.log)


class RandomTrial:
    """Uniform draws with Optuna's ``suggest_*`` signatures, for random specs without a study."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return self.params.setdefault(name, self.rng.choice(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        if log:
            value = round(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        else:
            value = low + step * self.rng.randint(0, (high - low) // step)
        return self.params.setdefault(name, value)

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
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
        self.high = high
        self.names: list[str] = []

    def suggest_categorical(self, name: str, choices: list) -> Any:
        self.names.append(name)
        return choices[-1] if self.high else choices[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.names.append(name)
        return low + step * ((high - low) // step) if self.high else low

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        self.names.append(name)
        return (low + step * int((high - low) / step) if step else high) if self.high else low
