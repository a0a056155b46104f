"""Metrics: what a confirmation measures (its *score*) and what a search ranks by (its *proxy*),
one type for both (:class:`Metric`).

A study's *score* is what its confirmation runs measure on the held-out split: validation
cross-entropy (``LOSS``, nats, lower is better) or top-1 (``TOP1``, percent). Top-1 on a small
split moves in steps of one image and saturates when every candidate is nearly right; the mean
cross-entropy (negative log-likelihood of the true class, without label smoothing) is continuous
and still ranks networks that classify the same images correctly by how confidently they do it.

A study's *proxy* is what its search ranks candidates by, cheaper than a confirmation: the
validation cross-entropy or top-1 after the proxy recipe (mean over the candidate's seeds), the
training-speed estimate (TSE: Ru et al., NeurIPS 2021, the sum over epochs of the mean training
loss), a zero-cost score at initialisation (:mod:`.zero_cost`), or params / FLOPs (the baselines
any proxy must beat). How well each ranks what the confirmation measures is measured by the
fidelity study (:mod:`.fidelity`; docs/fidelity.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from .names import ObjectiveName

__all__ = ["Metric", "TOP1", "LOSS", "score_of", "PROXIES", "proxy_of"]

Direction = Literal["minimize", "maximize"]  # Optuna's words


@dataclass(frozen=True)
class Metric:
    """A number that scores a candidate: what a confirmation measures (:data:`TOP1`, :data:`LOSS`)
    or what a search ranks by (:data:`PROXIES`): one type for both, as Optuna has one objective
    value whatever it measures.

    ``name`` is the key in results and records (``top1``, ``loss``, ``tse``, ``synflow``, ...),
    ``label``/``unit`` the words reports use, ``maximize`` the direction (a higher value is the
    better network), ``digits`` the decimals a report prints, ``trains`` whether it needs proxy
    training (else it is known at initialisation or from the spec alone).
    """

    name: str
    label: str
    maximize: bool
    trains: bool = True
    unit: str = ""
    digits: int = 4

    @property
    def direction(self) -> Direction:
        """Optuna's word for the direction."""
        return "maximize" if self.maximize else "minimize"

    def rank_key(self, value: float) -> float:
        """Sort key: ascending order puts the best value first."""
        return -value if self.maximize else value

    def improves(self, difference: float) -> bool:
        """Whether ``a - b == difference`` means that ``a`` is the better value."""
        return difference > 0 if self.maximize else difference < 0

    def format(self, value: float) -> str:
        return f"{value:.{self.digits}f}"

    def of_run(self, run) -> float:
        """The value of one :class:`~xnetspace.search.records.RunRecord` (one seed): TSE sums its
        training losses, the others take its last epoch; only for metrics that train."""
        if self.name == "tse":
            return math.fsum(run.train_loss)
        return (run.top1 if self.name == "top1" else run.loss)[-1]

    def of_trial(self, record: Any) -> float | None:
        """The value of a trial (:class:`~xnetspace.search.records.TrialRecord`, or a confirmation
        job's): the mean over its runs for a metric that trains, the stored zero-cost score, or its
        params / FLOPs; None when the record lacks it."""
        if self.trains:
            values = [self.of_run(r) for r in record.runs if r.top1]
            return math.fsum(values) / len(values) if values else None
        if self.name in ("params", "flops"):
            value = getattr(record, self.name, None)
            return None if value is None else float(value)
        return record.zero_cost.get(self.name)


TOP1 = Metric("top1", "top-1", maximize=True, unit="%", digits=2)
LOSS = Metric("loss", "cross-entropy", maximize=False, unit="nats", digits=4)


def score_of(objective: str) -> Metric:
    """The score a study of ``objective`` (an :class:`~.names.ObjectiveName` value) confirms by:
    top-1 for ``top1`` and the two-objective ``top1-flops``/``top1-latency``; cross-entropy for
    every other objective (``loss-latency`` too)."""
    return TOP1 if ObjectiveName(objective).proxy == ObjectiveName.TOP1 else LOSS


PROXIES = {
    p.name: p
    for p in (
        Metric("loss", "validation cross-entropy", maximize=False, unit="nats"),
        Metric("top1", "validation top-1", maximize=True, unit="%", digits=2),
        Metric("tse", "training-speed estimate (TSE)", maximize=False, unit="nats"),
        Metric("synflow", "synflow at initialisation (log10)", maximize=True, trains=False),
        Metric("naswot", "NASWOT at initialisation", maximize=True, trains=False),
        Metric("grad_norm", "grad_norm at initialisation", maximize=True, trains=False),
        Metric("params", "parameter count", maximize=True, trains=False, digits=0),
        Metric("flops", "FLOPs", maximize=True, trains=False, digits=0),
    )
}


def proxy_of(objective: str) -> Metric:
    """The proxy a study of ``objective`` (an :class:`~.names.ObjectiveName` value) ranks by (a
    two-objective study's first: ``loss-latency`` ranks by ``loss``)."""
    return PROXIES[ObjectiveName(objective).proxy]
