"""The score a study ranks candidates by: validation top-1 or validation cross-entropy.

Top-1 on a small split moves in steps of one image and saturates when every candidate is nearly
right; the mean cross-entropy (negative log-likelihood of the true class, in nats, without label
smoothing) is continuous and still ranks networks that classify the same images correctly by how
confidently they do it. Which one lets a study tell architectures apart is measured: README,
"Search" (issue 8).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Score", "TOP1", "LOSS", "score_of"]


@dataclass(frozen=True)
class Score:
    """One way of scoring a trained candidate.

    ``name`` is the key in results (``top1``, ``loss``), ``label``/``unit`` the words reports use,
    ``maximize`` the direction, ``digits`` the decimals a report prints.
    """

    name: Literal["top1", "loss"]
    label: str
    unit: str
    maximize: bool
    digits: int

    @property
    def direction(self) -> str:
        """Optuna's word for the direction."""
        return "maximize" if self.maximize else "minimize"

    def of(self, result) -> float:
        """The score of a :class:`~xnetspace.search.train.TrainResult` (its last epoch)."""
        return result.top1 if self.name == "top1" else result.loss

    def of_run(self, run) -> float:
        """The score of a :class:`~xnetspace.search.records.RunRecord` (its last epoch)."""
        return (run.top1 if self.name == "top1" else run.loss)[-1]

    def rank_key(self, value: float) -> float:
        """Sort key: ascending order puts the best score first."""
        return -value if self.maximize else value

    def improves(self, difference: float) -> bool:
        """Whether ``a - b == difference`` means that ``a`` is the better score."""
        return difference > 0 if self.maximize else difference < 0

    def format(self, value: float) -> str:
        return f"{value:.{self.digits}f}"


TOP1 = Score("top1", "top-1", "%", maximize=True, digits=2)
LOSS = Score("loss", "cross-entropy", "nats", maximize=False, digits=4)


def score_of(objective: str) -> Score:
    """The score behind a study objective: ``loss`` ranks by cross-entropy; ``top1`` and the
    two-objective ``top1-flops``/``top1-latency`` by top-1."""
    return LOSS if objective == "loss" else TOP1
