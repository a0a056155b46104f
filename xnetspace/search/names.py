"""The search's closed sets of names as enums, as Optuna's own (``StudyDirection``, ``TrialState``):
the objectives a study can rank by (:class:`ObjectiveName`), the roles of training jobs
(:class:`JobRole`) and why a sample is rejected before training (:class:`Rejection`).

Each is a :class:`StrEnum`: a member *is* its value as a string, so it compares equal to it and
is written unchanged into Optuna's user attrs, JSON and CSV files, and Pydantic and the command
line accept the plain strings.
"""

from __future__ import annotations

import sys
from enum import Enum

__all__ = ["StrEnum", "ObjectiveName", "SecondObjective", "JobRole", "Rejection"]

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # the package supports Python 3.10, which lacks enum.StrEnum

    class StrEnum(str, Enum):
        """``enum.StrEnum`` of Python 3.11: ``str()`` and f-strings give the value."""

        def __str__(self) -> str:
            return str(self.value)


class SecondObjective(StrEnum):
    """The cost a two-objective study minimizes beside its proxy score."""

    FLOPS = "flops"
    LATENCY = "latency"  # predicted from the space's latency table, else measured on the device


class ObjectiveName(StrEnum):
    """What a study ranks candidates by: one proxy score (``loss``, ``top1``, a zero-cost score,
    ...; :data:`~.score.PROXIES`), or a proxy score and a cost (``top1-flops``: two objectives)."""

    LOSS = "loss"
    TOP1 = "top1"
    TSE = "tse"
    SYNFLOW = "synflow"
    NASWOT = "naswot"
    GRAD_NORM = "grad_norm"
    TOP1_FLOPS = "top1-flops"
    TOP1_LATENCY = "top1-latency"
    LOSS_LATENCY = "loss-latency"

    @property
    def proxy(self) -> ObjectiveName:
        """The single objective ranked first (``loss-latency``: ``loss``; ``loss``: itself)."""
        # A two-objective name is PROXY-COST; no single objective's name holds a "-".
        return ObjectiveName(self.value.partition("-")[0])

    @property
    def second(self) -> SecondObjective | None:
        """The cost minimized beside the proxy score (None in a single-objective study)."""
        cost = self.value.partition("-")[2]
        return SecondObjective(cost) if cost else None


class JobRole(StrEnum):
    """What a training job (:class:`~.jobs.Job`) is for."""

    # confirmation (:mod:`.confirmation`)
    CANDIDATE = "candidate"  # a search candidate confirmed with fresh seeds on held-out data
    BASELINE = "baseline"  # a control: a preset, random search at equal compute, best of N random
    RANDOM = "random"  # a random in-budget spec's proxy evaluation (random:N, the fidelity sample)
    FIDELITY = "fidelity"  # a random spec of the fidelity sample confirmed
    NOISE = "noise"  # the best candidate retrained at the proxy recipe: the proxy's seed noise
    # the fidelity study (:mod:`.fidelity`)
    PROXY = "proxy"  # a spec trained at a proxy recipe
    CONFIRM = "confirm"  # a spec trained at the confirmation recipe
    # a tabular benchmark (:mod:`.tabulate`)
    SPEC = "spec"  # one of the space's specs
    REFERENCE = "reference"  # the budget-scaled preset beside them (``bench.REFERENCE``)


class Rejection(StrEnum):
    """Why a sample is rejected before anything is built: a trial record's ``reason`` starts with
    it (``over budget: FLOPs 2.1M above max 2M``), written by the study (:mod:`.objective`) and by
    a replayed search (:mod:`.replay_search`) alike, and counted by :mod:`.analysis`."""

    INVALID = "invalid spec"  # the spec fails validation (e.g. channels not divisible by heads)
    OVER_BUDGET = "over budget"  # FLOPs, params or latency outside the space's constraints

    def reason(self, detail: str) -> str:
        """The record's reason: ``"over budget: " + detail``."""
        return f"{self.value}: {detail}"

    @classmethod
    def of(cls, reason: str | None) -> Rejection | None:
        """The rejection a stored reason names (None: not a rejection's reason)."""
        return next((r for r in cls if (reason or "").startswith(r.value)), None)
