"""The search's closed sets of names as enums, as Optuna's own (``StudyDirection``, ``TrialState``):
the roles of training jobs (:class:`JobRole`).

Each is a :class:`StrEnum`: a member *is* its value as a string, so it compares equal to it and
is written unchanged into Optuna's user attrs, JSON and CSV files, and Pydantic and the command
line accept the plain strings.
"""

from __future__ import annotations

import sys
from enum import Enum

__all__ = ["StrEnum", "JobRole"]

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # the package supports Python 3.10, which lacks enum.StrEnum

    class StrEnum(str, Enum):
        """``enum.StrEnum`` of Python 3.11: ``str()`` and f-strings give the value."""

        def __str__(self) -> str:
            return str(self.value)


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
