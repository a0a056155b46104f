"""Parametrised forms of a design space (the ``rules:`` section of a space file): few knobs that
set many stage values, each sampled by Optuna and producing an ordinary
:class:`~xnetspace.spec.NetworkSpec` (so the cost model counts it exactly, like any spec).

- :class:`WidthRule` (``rules.width``): RegNet's quantized linear width rule (Radosavovic et al.
  2020, "Designing Network Design Spaces", section 3.3; pycls ``generate_regnet``): block ``j``
  of ``d`` blocks gets the width ``u_j = w0 + wa * j``, quantized to ``w0 * wm ** round(log(u_j /
  w0) / log(wm))`` and then to a multiple of ``quantum``; the runs of equal widths are the stages.
  TransXNet's stages are fixed in number (the stem and the three downsamplings), so a draw must
  give exactly as many distinct widths as the space has stages, with no quantization step
  skipped (pycls's ``check_regnet_constraints``: ``num_stages == max_stage``); other draws are
  invalid samples, rejected before anything is built. The quantum is checked when the space is
  read: every multiple of it must keep the attention channels whole and divisible by the heads,
  and the MS-FFN width whole, for every attn_ratio, num_heads and mlp_ratio a stage can take.
- :class:`Schedule` (``rules.schedules.KNOB``): a knob that runs linearly (or geometrically,
  ``log: true``) from its ``first`` to its ``last`` stage value, each stage's value rounded to
  the nearest of ``values``, or, without ``values``, to the nearest valid value: a whole number
  for integer knobs, whole MS-FFN channels for ``mlp_ratio``, and for ``attn_ratio`` the nearest
  share whose attention channels are divisible by the stage's heads (and leave IDConv 0 or at
  least 4 channels). Two Optuna parameters, ``schedule.KNOB.first`` and ``.last``.
- monotone (``rules.monotone: [embed_dim, depth, ...]``): the knob never decreases from one stage
  to the next. Sampled constructively, never by rejection: consecutive stages whose value sets
  overlap form a chain, and the chain's non-decreasing combinations are one categorical Optuna
  parameter ``stageA-B.KNOB`` ("32,40,48"), so a random draw is uniform over exactly the
  combinations the constraint allows; stages outside a chain keep their own parameter.
- ties (``tie: NAME`` in a knob's definition) are in :mod:`.space_knobs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..spec import IDCONV_REDUCTION, Int, stage_knobs
from ..text import short_repr
from .space_knobs import (
    FLOAT_KNOBS,
    INT_KNOBS,
    KNOBS,
    Fixed,
    Knob,
    Range,
    TieRef,
    as_definition,
    check_values,
    finite_values,
    suggest,
    validate_knob_value,
)

__all__ = [
    "WidthRule",
    "Schedule",
    "Rules",
    "SCHEDULE_KNOBS",
    "MONOTONE_KNOBS",
    "MAX_MONOTONE_COMBINATIONS",
    "regnet_widths",
    "interpolate",
    "round_scheduled",
    "monotone_chains",
    "nondecreasing",
    "smallest_quantum",
    "quantum_problem",
    "whole_value",
]

SCHEDULE_KNOBS = stage_knobs(schedulable=True)  # StageSpec's field metadata (xnetspace.spec.KnobMeta)
MONOTONE_KNOBS = tuple(k for k in KNOBS if k in INT_KNOBS | FLOAT_KNOBS)  # every numeric stage knob
MAX_MONOTONE_COMBINATIONS = 2000  # one categorical parameter; Optuna stores its choices with every trial
_EPS = 1e-9


def whole_value(value: float) -> int | None:
    """``value`` as an int when it is whole up to float error, else None."""
    nearest = round(value)
    return nearest if abs(value - nearest) <= 1e-6 * max(1.0, abs(value)) else None  # the spec's tolerance


def _definition(name: str) -> Any:
    def read(raw: Any) -> Knob:
        definition = as_definition(name, raw)  # a range's bounds are finite already
        if definition.tie is not None:
            raise ValueError(f"{name} cannot be tied (ties are for stage knobs)")
        values = [definition.value] if isinstance(definition, Fixed) else getattr(definition, "choices", ())
        for value in values:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} needs finite numbers, not {value!r}")
        return definition

    return BeforeValidator(read)


def _extent(definition: Knob) -> tuple[float, float]:
    """The smallest and largest value a (non-tie) definition can give."""
    if isinstance(definition, Range):
        return definition.low, definition.high
    assert not isinstance(definition, TieRef)  # rule knobs cannot be tied (_definition)
    values = [definition.value] if isinstance(definition, Fixed) else list(definition.choices)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"needs numbers, got {values}")
    return min(values), max(values)


def _whole_definition(name: str, definition: Knob) -> None:
    values = finite_values(definition, whole=False) or [cast(Range, definition).low, cast(Range, definition).high]
    if isinstance(definition, Range):
        values.append(definition.step or 1)
    for v in values:
        if not float(v).is_integer():
            raise ValueError(f"{name} is a whole number, got {v!r}")


# -- the width rule ------------------------------------------------------------------------------------
def regnet_widths(w0: float, wa: float, wm: float, depth: int, quantum: int) -> tuple[list[int], list[int]]:
    """Per-block widths of RegNet's quantized linear rule (pycls ``generate_regnet``).

    ``u_j = w0 + wa * j`` for blocks ``j = 0 .. depth - 1``; ``s_j = round(log(u_j / w0) / log(wm))``;
    width ``round(w0 * wm ** s_j / quantum) * quantum`` (channels).

    Returns:
        (the ``depth`` block widths, their steps ``s_j``).
    """
    widths, steps = [], []
    for j in range(depth):
        u = w0 + wa * j
        s = int(round(math.log(u / w0) / math.log(wm)))
        widths.append(int(round(w0 * wm**s / quantum)) * quantum)
        steps.append(s)
    return widths, steps


class WidthRule(BaseModel):
    """``rules.width``: stage widths (``embed_dim``) and depths from RegNet's quantized linear rule,
    four knobs (``w0``, ``wa``, ``wm``, ``depth``: total blocks) for every stage's two.

    Raises:
        pydantic.ValidationError: a definition that can give w0 <= 0 or not a multiple of the
            quantum, wa < 0, wm <= 1, a depth below 1 or not whole, or a tie.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    w0: Annotated[Knob, _definition("w0")] = Field(description="width of the first block (channels)")
    wa: Annotated[Knob, _definition("wa")] = Field(description="slope: channels added per block")
    wm: Annotated[Knob, _definition("wm")] = Field(description="quantization base, > 1")
    depth: Annotated[Knob, _definition("depth")] = Field(description="blocks in all stages together")
    quantum: Int = Field(8, ge=1, le=4096, description="every width is a multiple of it (channels)")

    @model_validator(mode="after")
    def _values(self) -> WidthRule:
        for name in ("w0", "depth"):
            _whole_definition(name, getattr(self, name))
        (w0_low, _), (wa_low, _), (wm_low, _), (d_low, _) = (
            _extent(self.w0),
            _extent(self.wa),
            _extent(self.wm),
            _extent(self.depth),
        )
        if w0_low <= 0:
            raise ValueError(f"w0 {w0_low:g} must be positive (channels)")
        if wa_low < 0:
            raise ValueError(f"wa {wa_low:g} must be >= 0 (widths never shrink)")
        if wm_low <= 1:
            raise ValueError(f"wm {wm_low:g} must be above 1 (it is the base of the quantization)")
        if d_low < 1:
            raise ValueError(f"depth {d_low:g} must be at least 1 block")
        w0_values = finite_values(self.w0, whole=True)
        assert w0_values is not None  # whole: every definition but a tie is finite, and w0 cannot be tied
        bad = [v for v in w0_values if v % self.quantum]
        if bad:
            raise ValueError(
                f"w0 value {bad[0]} is not a multiple of the quantum {self.quantum} (a range's low and "
                f"step must be multiples of it)"
            )
        return self

    def draw(self, trial: Any) -> tuple[int, float, float, int]:
        """Suggest ``width.w0``, ``width.wa``, ``width.wm``, ``width.depth`` from ``trial``."""
        return (
            int(suggest(trial, "width.w0", self.w0, whole=True)),
            float(suggest(trial, "width.wa", self.wa, whole=False)),
            float(suggest(trial, "width.wm", self.wm, whole=False)),
            int(suggest(trial, "width.depth", self.depth, whole=True)),
        )

    def stages(self, w0: int, wa: float, wm: float, depth: int, num_stages: int) -> tuple[list[int], list[int]]:
        """Stage widths and depths of one draw.

        Raises:
            ValueError: the draw gives another number of stages than ``num_stages``, or skips a
                quantization step (the message names the rule and the widths it gave).
        """
        widths, steps = regnet_widths(w0, wa, wm, depth, self.quantum)
        dims: list[int] = []
        depths: list[int] = []
        for w in widths:
            if dims and dims[-1] == w:
                depths[-1] += 1
            else:
                dims.append(w)
                depths.append(1)
        draw = f"w0 {w0}, wa {wa:.4g}, wm {wm:.4g}, depth {depth}"
        if len(dims) != num_stages:
            raise ValueError(
                f"rules.width gives {len(dims)} stages, the space has {num_stages} ({draw}: widths {short_repr(dims)})"
            )
        if max(steps) + 1 != num_stages:
            raise ValueError(
                f"rules.width skips a width step, pycls rejects such draws ({draw}: steps {sorted(set(steps))})"
            )
        return dims, depths


# -- schedules -----------------------------------------------------------------------------------------
class Schedule(BaseModel):
    """``rules.schedules.KNOB``: ``first`` and ``last`` stage values (knob definitions), linear
    between them (geometric with ``log``), rounded to ``values`` or to the nearest valid value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first: Annotated[Knob, _definition("first")]
    last: Annotated[Knob, _definition("last")]
    values: tuple[float, ...] | None = Field(None, min_length=1, description="the values a stage may take")
    log: bool = False

    @field_validator("values")
    @classmethod
    def _sorted(cls, values: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if values is None else tuple(sorted(set(values)))


def interpolate(first: float, last: float, num_stages: int, log: bool = False) -> list[float]:
    """``num_stages`` values from ``first`` to ``last``, evenly spaced (in log space with ``log``)."""
    if num_stages == 1:
        return [float(first)]
    t = [i / (num_stages - 1) for i in range(num_stages)]
    if log:
        return [math.exp(math.log(first) + (math.log(last) - math.log(first)) * x) for x in t]
    return [first + (last - first) * x for x in t]


def _nearest(x: float, options: Sequence[float]) -> float:
    return min(options, key=lambda v: (abs(v - x), v))  # ties: the smaller


def round_scheduled(
    knob: str, x: float, values: tuple[float, ...] | None, embed_dim: int | None, num_heads: int, ffn_kernels: int
) -> float | int:
    """One stage's value of a scheduled knob: the nearest of ``values``, or the nearest valid value
    (whole for integer knobs; whole MS-FFN channels for ``mlp_ratio``, at least one per FFN
    kernel; for ``attn_ratio``, attention channels a multiple of ``num_heads`` leaving IDConv 0 or
    at least 4 channels). Without ``embed_dim`` (an invalid width draw) the plain rounding."""
    if values is not None:
        value = _nearest(x, list(values))
        return int(round(value)) if knob in INT_KNOBS else value
    if knob in INT_KNOBS:
        return max(1, int(math.floor(x + 0.5)))
    if embed_dim is None:
        return x
    if knob == "mlp_ratio":
        return max(ffn_kernels, int(math.floor(x * embed_dim + 0.5))) / embed_dim
    shares = list(range(0, embed_dim + 1, num_heads)) + [embed_dim]
    shares = [a for a in shares if not 0 < embed_dim - a < IDCONV_REDUCTION and (a == 0 or a % num_heads == 0)]
    return _nearest(x * embed_dim, shares) / embed_dim


# -- monotone knobs -----------------------------------------------------------------------------------
def monotone_chains(values: list[list[float]]) -> list[tuple[int, int]]:
    """Runs of consecutive stages (first, last index, inclusive; 2+ stages) whose value sets
    overlap, so that a non-decreasing knob couples them; stages outside every run are free."""
    chains, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or max(values[i - 1]) <= min(values[i]):  # stage i cannot go below stage i - 1
            if i - 1 > start:
                chains.append((start, i - 1))
            start = i
    return chains


def nondecreasing(values: list[list[float]], limit: int = MAX_MONOTONE_COMBINATIONS) -> list[tuple]:
    """Every combination (one value per stage, in order) that never decreases; at most ``limit``.

    Raises:
        ValueError: more than ``limit`` combinations.
    """
    out: list[tuple] = []

    def extend(prefix: tuple, i: int) -> None:
        if i == len(values):
            out.append(prefix)
            if len(out) > limit:
                raise ValueError(f"more than {limit:,} non-decreasing combinations")
            return
        for v in sorted(set(values[i])):
            if not prefix or v >= prefix[-1] - _EPS:
                extend(prefix + (v,), i + 1)

    extend((), 0)
    return out


# -- the quantum --------------------------------------------------------------------------------------
def quantum_problem(quantum: int, stages: list[dict[str, list | None]]) -> str | None:
    """Why widths that are multiples of ``quantum`` can be invalid, or None. ``stages``: per
    stage, the finite values of ``attn_ratio``, ``num_heads`` and ``mlp_ratio`` it can take
    (None: rounded to a valid value by a schedule, or a continuous range, not checked)."""
    for i, stage in enumerate(stages, start=1):
        for a in stage["attn_ratio"] or []:
            attn = a * quantum
            if whole_value(attn) is None:
                return f"stage {i}: attn_ratio {a:g} x {quantum} = {attn:g} attention channels, not a whole number"
            for h in stage["num_heads"] or [1]:
                if round(attn) % h:
                    return (
                        f"stage {i}: attn_ratio {a:g} x {quantum} = {round(attn)} attention channels, not "
                        f"divisible by num_heads {h}"
                    )
        for m in stage["mlp_ratio"] or []:
            if whole_value(m * quantum) is None:
                return f"stage {i}: mlp_ratio {m:g} x {quantum} = {m * quantum:g} hidden channels, not a whole number"
    return None


def smallest_quantum(stages: list[dict[str, list | None]], limit: int = 4096) -> int | None:
    """The smallest quantum :func:`quantum_problem` accepts (every valid one is a multiple of it),
    or None below ``limit``."""
    return next((q for q in range(1, limit + 1) if quantum_problem(q, stages) is None), None)


# -- the section -------------------------------------------------------------------------------------
class Rules(BaseModel):
    """The ``rules:`` section: a width rule, schedules, monotone knobs (all optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: WidthRule | None = None
    schedules: dict[str, Schedule] = Field(default_factory=dict)
    monotone: tuple[str, ...] = ()

    @field_validator("schedules")
    @classmethod
    def _schedules(cls, schedules: dict[str, Schedule]) -> dict[str, Schedule]:
        for knob, schedule in schedules.items():
            if knob not in SCHEDULE_KNOBS:
                raise ValueError(f"schedules.{knob}: only {', '.join(SCHEDULE_KNOBS)} can follow a schedule")
            for end in ("first", "last"):
                try:
                    check_values(knob, getattr(schedule, end))
                except ValueError as err:
                    raise ValueError(f"schedules.{knob}.{end}: {err}") from None
                if knob in INT_KNOBS and isinstance(getattr(schedule, end), Range):
                    _whole_definition(f"schedules.{knob}.{end}", getattr(schedule, end))
                if schedule.log and _extent(getattr(schedule, end))[0] <= 0:
                    raise ValueError(f"schedules.{knob}.{end}: a log schedule needs positive values")
            for value in schedule.values or ():
                try:
                    validate_knob_value(knob, int(value) if knob in INT_KNOBS and float(value).is_integer() else value)
                except ValueError as err:
                    raise ValueError(f"schedules.{knob}.values: {err}") from None
                if knob in INT_KNOBS and not float(value).is_integer():
                    raise ValueError(f"schedules.{knob}.values: {knob} is a whole number, got {value!r}")
        return schedules

    @field_validator("monotone")
    @classmethod
    def _monotone(cls, monotone: tuple[str, ...]) -> tuple[str, ...]:
        for knob in monotone:
            if knob not in MONOTONE_KNOBS:
                raise ValueError(f"monotone: {knob!r} is not a numeric stage knob ({', '.join(MONOTONE_KNOBS)})")
        if len(set(monotone)) != len(monotone):
            raise ValueError(f"monotone names a knob twice: {list(monotone)}")
        return monotone

    @property
    def empty(self) -> bool:
        return self.width is None and not self.schedules and not self.monotone
