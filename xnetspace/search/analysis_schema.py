"""The files of the design-space tools as Pydantic models: ``analysis.json`` (``xnetspace analyze``,
:class:`AnalysisResult`) and ``refine.json`` (``xnetspace refine``, :class:`RefineResult`); and
the place every JSON Schema of the files xnetspace writes is exported from (:func:`schemas`: these
two, ``summary.json``'s (:class:`~.summary.Summary`) and ``fidelity.json``'s
(:class:`~.fidelity_schema.FidelityResult`)).

Every model forbids unknown fields, so a file parsed back into its model is checked field by field
(the tests do this with real outputs). Their JSON Schemas are kept in ``docs/schemas/``:
``python -m xnetspace.search.analysis_schema docs/schemas`` writes them all (:func:`write_schemas`),
and a test fails when a written schema differs from the model's current one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..strict_json import to_json
from .fidelity_schema import FidelityResult
from .names import StrEnum
from .summary import Summary

__all__ = [
    "ScoreInfo",
    "AnalysisResult",
    "StudySummary",
    "Comparison",
    "Normalization",
    "Five",
    "EDF",
    "FlopRange",
    "Best",
    "MarginalRow",
    "RefineResult",
    "RefineStep",
    "RefineKind",
    "Verdict",
    "Evidence",
    "Verification",
    "schemas",
    "write_schemas",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreInfo(_Strict):
    """What "error" means in a file: the score analysed, its unit, and its direction."""

    name: Literal["loss", "top1_error"] = Field(description="loss: validation cross-entropy; top1_error: 100 - top-1")
    label: str
    unit: Literal["nats", "%"]
    direction: Literal["minimize"] = Field(description="lower is better")
    note: str | None = Field(None, description="why this score was used when it is not the studies' own")


class Five(_Strict):
    """Minimum, median, mean and maximum, in the score's unit."""

    min: float
    median: float
    mean: float
    max: float


class EDF(_Strict):
    """F(e): the (weighted) fraction of candidates with error <= e, at each distinct error."""

    error: list[float]
    fraction: list[float]


class FlopRange(_Strict):
    min: int
    max: int


class Best(_Strict):
    trial: int
    error: float
    flops: int
    params: int
    spec_digest: str


class MarginalRow(_Strict):
    """One value (or quantile bin, with ``range``) of a knob: candidates, mean error, SEM, t-interval."""

    value: Any
    n: int
    mean_error: float
    sem: float | None
    ci95: list[float] | None
    range: list[float] | None = None


class StudySummary(_Strict):
    """One study of an analysis (see :func:`xnetspace.search.analysis.analyze`)."""

    name: str
    source: str
    space: str
    dataset: str
    image_size: list[int]
    sampler: str
    pruner: str
    n: int = Field(description="candidates: completed trials that trained a spec of their own")
    rejected: int
    rejected_over_budget: int
    sampled: int
    pruned: int
    failed: int
    duplicates: int
    error: Five
    top1_error: Five | None
    flops: FlopRange
    best: Best
    edf: EDF
    edf_normalized: EDF
    edf_top1_error: EDF
    importance: dict[str, float] = Field(description="Optuna fANOVA, normalised to sum 1")
    importance_ped_anova: dict[str, float]
    single_valued: list[str]
    marginals: dict[str, list[MarginalRow]]
    seed_std: float | None = Field(description="std of one spec's score over seeds, in the score's unit")
    confirmed_best: dict[str, Any] | None
    warnings: list[str]


class Comparison(_Strict):
    """Study ``a`` against study ``b`` (differences are a - b; negative: a is better)."""

    a: str
    b: str
    ks_statistic: float | None
    ks_pvalue: float | None
    mean_difference: float | None = None
    best_difference: float | None = None
    mean_difference_ci95: list[float] | None
    best_difference_ci95: list[float] | None
    ks_statistic_normalized: float | None = None
    verdict: str | None = None
    warnings: list[str]


class Normalization(_Strict):
    """The complexity normalisation (absent fields: it could not be made, ``error`` says why)."""

    method: str
    bins: int | None = None
    edges: list[float] | None = None
    shared_bins: int | None = None
    dropped: list[int] | None = None
    error: str | None = None


class AnalysisResult(_Strict):
    """``analysis.json``: the score, each study's summary, and the comparisons."""

    score: ScoreInfo
    studies: list[StudySummary]
    importance_method: Literal["fanova"]
    normalization: Normalization
    comparison: Comparison | None = None
    comparisons: list[Comparison] | None = None


# -- refine.json ---------------------------------------------------------------------------------------
class Verdict(StrEnum):
    """What the acceptance rule says of a candidate constraint (:func:`~.refine_evidence.verdict`);
    a member is its string, so refine.json holds the words."""

    ACCEPTED = "accepted"  # at least MIN_SUBSET members satisfy it and it is not detectably worse
    REJECTED = "rejected"  # detectably worse: the CI of the mean difference lies above 0
    UNDECIDED = "undecided"  # too few members satisfy it, or no CI could be computed
    NOT_APPLICABLE = "not applicable"  # it cannot be written into the space (with those accepted before it)


class RefineKind(StrEnum):
    """The kinds of candidate constraint ``xnetspace refine`` tests (:mod:`.refine_constraints`)."""

    TIE = "tie"  # a knob takes one value in every stage
    MONOTONE = "monotone"  # a knob never decreases from one stage to the next
    SCHEDULE = "schedule"  # the attention share runs linearly from the first to the last stage
    WIDTH_RULE = "width_rule"  # stage widths and depths from RegNet's quantized linear rule
    FIX = "fix"  # a knob of nil importance fixed at its best value


class Evidence(_Strict):
    """A constrained subset against the members it was drawn from (errors in the score's unit)."""

    members: int = Field(description="members the subset was drawn from")
    satisfying: int = Field(description="members that satisfy the constraint")
    ks_statistic: float | None = Field(description="scipy.stats.ks_2samp, satisfying against the others")
    ks_pvalue: float | None
    edf_gap: float | None = Field(description="sup |F_subset - F_members| of the plain EDFs")
    edf_gap_normalized: float | None = Field(description="the same of the complexity-normalised EDFs")
    mean_difference: float | None = Field(
        description="mean(subset) - mean(members), complexity-normalised when normalised is true"
    )
    mean_difference_ci95: list[float] | None = Field(description="percentile bootstrap over the members")
    mean_difference_plain: float | None
    mean_difference_plain_ci95: list[float] | None
    normalized: bool = Field(description="whether the mean difference and its CI are complexity-normalised")
    bins: int | None = Field(description="FLOP bins of the normalisation (fewer for small subsets)")


class RefineStep(_Strict):
    """One candidate constraint: what it is, the evidence, the verdict."""

    kind: RefineKind
    knob: str
    description: str
    order: int | None = Field(None, description="its place in the greedy order (None: never tested there)")
    first_test: Evidence | None = Field(None, description="against all members")
    test: Evidence | None = Field(
        None,
        description=(
            "in the greedy pass: a shape constraint against the members that satisfy the shape accepted "
            "before it, a fix against all members"
        ),
    )
    verdict: Verdict
    reason: str
    details: dict[str, Any] = Field(default_factory=dict)


class Verification(_Strict):
    """``--verify N``: a fresh population of the refined space against the original population."""

    folder: str = Field(description="the verification study's output folder (with its analysis.json)")
    requested: int
    members: int
    comparison: Comparison = Field(description="a: the refined space's population, b: the original")
    knobs_before: int
    knobs_after: int


class RefineResult(_Strict):
    """``refine.json``: the study refined, the rule, each step, and the knobs before and after."""

    study: str
    source: str
    space: str
    refined_space: str
    refined_space_file: str
    score: ScoreInfo
    members: int
    rule: str
    knobs_before: list[str]
    knobs_after: list[str]
    steps: list[RefineStep]
    accepted: list[str]
    members_left: int = Field(description="members that satisfy every accepted constraint")
    final_test: Evidence | None = Field(description="those members against all (None: nothing accepted)")
    importance: dict[str, float] = Field(description="fANOVA importance of each varying knob over the members")
    warnings: list[str]
    verify: Verification | None = None

    def json_text(self) -> str:
        """refine.json's text (and ``xnetspace refine --json``'s): the fields set, 2-space indented,
        non-finite floats as null (:func:`~xnetspace.strict_json.to_json`)."""
        return to_json(self.model_dump(exclude_unset=True), indent=2)


def schemas() -> dict[str, dict]:
    """File name -> JSON Schema of each file model (``analysis.schema.json``, ``fidelity.schema.json``,
    ``refine.schema.json``, ``summary.schema.json``)."""
    return {
        "analysis.schema.json": AnalysisResult.model_json_schema(),
        "fidelity.schema.json": FidelityResult.model_json_schema(),
        "refine.schema.json": RefineResult.model_json_schema(),
        "summary.schema.json": Summary.model_json_schema(),
    }


def write_schemas(folder: Path | str) -> list[Path]:
    """Write :func:`schemas` into ``folder`` (created if missing); returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = folder / name
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m xnetspace.search.analysis_schema docs/schemas
    for path in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(path)
