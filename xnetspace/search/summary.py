"""``summary.json``, the evidence of a study (:func:`~.confirmation.summarize`), as a Pydantic model.

:func:`~.confirmation.summarize` builds the summary as these models and
:func:`~.results.write_results` writes it as it is. Every model forbids unknown fields, so
``Summary.model_validate_json(text)`` checks a file field by field. A statistic that is undefined
(an interval from one seed, a rank correlation of a constant) is NaN in a summary as built and
``null`` in the file (``ser_json_inf_nan``: no bare ``NaN`` that strict parsers refuse). Its
JSON Schema is kept in ``docs/schemas/summary.schema.json`` (``python -m
xnetspace.search.analysis_schema docs/schemas`` writes every schema; a test fails when one is stale).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Summary", "Ceiling", "TauRho", "as_float"]

Number = float | None  # null where undefined


def as_float(x: Number) -> float:
    """A statistic as a float: NaN where it is undefined (``null`` in a file read back)."""
    return math.nan if x is None else x


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")


class ScoreInfo(_Strict):
    """The score every ``confirm``, difference and ranking is in."""

    name: Literal["loss", "top1"] = Field(description="loss: held-out cross-entropy (nats); top1: top-1 (%)")
    unit: Literal["nats", "%"]
    direction: Literal["minimize", "maximize"]


class ProxyInfo(_Strict):
    """What the search ranked candidates by (score.py, Proxy)."""

    name: str
    label: str
    direction: Literal["minimize", "maximize"]
    seeds: int = Field(description="proxy seeds a candidate gets at most")
    race: Number = Field(description="racing threshold z (null: every candidate got every seed)")


class Confirm(_Strict):
    """One spec's scores over the confirmation seeds: mean, sample std, 95% t-interval, one per seed."""

    mean: Number
    std: Number
    ci95: list[Number] = Field(min_length=2, max_length=2)
    n: int
    scores: list[float]


class Difference(_Strict):
    """Mean of A minus mean of B with Welch's 95% interval; distinguishable when it excludes 0."""

    mean: Number
    ci95: list[Number] = Field(min_length=2, max_length=2)
    distinguishable: bool


class _Confirmed(_Strict):
    spec: dict[str, Any] | None = Field(None, description="the spec's fields (a NetworkSpec)")
    spec_digest: str
    flops: int = Field(description="fvcore count at the space's constraint image size (one multiply-add = one flop)")
    params: int
    confirm: Confirm
    confirm_top1: Confirm | None = Field(None, description="the same runs' top-1 (%), in a loss study")


class Candidate(_Confirmed):
    """A confirmed candidate of the search."""

    trial: int
    proxy_top1: Number
    proxy_score: Number = Field(description="its proxy score in the search (the trial's value)")
    proxy_seeds: int = Field(description="seeds that proxy score is the mean of")


class Sampled(_Confirmed):
    """A random in-budget spec of the fidelity sample."""

    label: str
    proxy_top1: Number
    proxy_score: Number


class Baseline(_Confirmed):
    """A control confirmed like the winner."""

    name: str
    difference: Difference | None = Field(description="best minus this control")


class Noise(_Strict):
    seed_std: Number = Field(description="pooled std over seeds of every spec confirmed with 2+ seeds")
    between_std: Number = Field(description="std of the candidates' confirmed means")
    proxy_seed_std: Number = Field(None, description="std of the best's proxy score over seeds (confirm_top 0)")


class Separation(_Strict):
    """Do the specs differ beyond seed noise (one-way ANOVA over their seed groups)?"""

    n: int
    between_std: Number
    seed_std: Number
    architecture_std: Number
    f: Number
    p: Number
    separated: bool


class Separations(_Strict):
    candidates: Separation
    all: Separation


class TauRho(_Strict):
    kendall_tau: list[Number] = Field(min_length=2, max_length=2)
    spearman_rho: list[Number] = Field(min_length=2, max_length=2)


class Ceiling(_Strict):
    """Kendall tau between the means of two disjoint halves of the confirmation seeds."""

    kendall_tau: Number
    ci95: list[Number] = Field(min_length=2, max_length=2)
    n: int
    seeds: int
    splits: int


class Fidelity(_Strict):
    """Proxy score against confirmed mean over the confirmed specs (+1: the proxy ranks them as the
    confirmation does), with paired-bootstrap 95% intervals, the noise ceiling and the fraction of it."""

    kendall_tau: Number
    spearman_rho: Number
    n: int
    ci95: TauRho
    ceiling: Ceiling
    fraction_of_ceiling: Number


class Compute(_Strict):
    search: int
    control: int | None = Field(description="the random-search control's (null without random:auto)")
    unit: str


class Protocol(_Strict):
    seeds: list[int] = Field(description="confirmation seeds")
    epochs: int = Field(description="confirmation epochs")
    split: Literal["test", "val"]
    proxy_epochs: int
    proxy_seeds: list[int]
    confirm_top: int


class Summary(_Strict):
    """``summary.json``: a study's confirmed evidence."""

    score: ScoreInfo
    proxy: ProxyInfo
    candidates: list[Candidate]
    fidelity_sample: list[Sampled]
    best: Candidate | None
    baselines: list[Baseline]
    baseline: Baseline | None = Field(description="the first of baselines")
    difference: Difference | None = Field(description="best minus the first baseline")
    leaders: Difference | None = Field(description="best minus runner-up")
    noise: Noise
    separation: Separations
    separation_top1: Separations | None = Field(None, description="the same runs by top-1 (a loss study)")
    fidelity: Fidelity
    compute: Compute
    protocol: Protocol
    pending: int = Field(description="planned confirmation jobs not finished")
