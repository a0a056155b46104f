"""The fidelity study's runs: one typed record per run (:class:`FidelityRun`, its curves a
:class:`~.records.RunRecord`) and ``runs.csv``, the file that holds them.

``runs.csv`` has one row per run: ``spec`` (the spec's place in the study's pool),
``spec_digest``, ``recipe`` (``proxy`` or ``confirm``), ``seed``, ``epochs``, ``flops``,
``params``, the zero-cost scores (empty where there are none), the per-epoch ``train_loss``,
``loss`` and ``top1`` (values separated by ``;``, 6 significant digits), ``seconds`` (the job's),
``first_of_job`` and the spec's knobs (``stage1.depth``, ...). A run's curves are kept at the
file's precision from the start (:meth:`FidelityRun.of`), so the analysis of the runs in memory and
of the file read back (:func:`read_runs`) are the same.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..spec import NetworkSpec
from .records import RunRecord
from .zero_cost import ZERO_COST

__all__ = ["FidelityRun", "SpecRuns", "Recipe", "CURVES", "write_runs", "read_runs", "runs_by_spec"]

Recipe = Literal["proxy", "confirm"]
CURVES = ("train_loss", "loss", "top1")  # a run's per-epoch columns
_DIGITS = 6  # significant digits of a curve's values in runs.csv


class FidelityRun(BaseModel):
    """One run of the fidelity study (a row of ``runs.csv``): a spec of the pool trained with one
    seed under one recipe, with what the spec costs and scores before training.

    ``spec_index``: the spec's place in the study's pool (column ``spec``); ``run``: the seed and
    the per-epoch curves; ``seconds``: the wall seconds of the whole job (all its seeds, trained
    as one pack), told once by the job's ``first_of_job`` run; ``knobs``: the spec's knobs as
    ``runs.csv`` writes them (``stage1.ffn_kernel_sizes``: ``"1,3,5,7"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec_index: int
    spec_digest: str = ""
    recipe: Recipe
    run: RunRecord
    flops: int
    params: int
    zero_cost: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0
    first_of_job: bool = False
    knobs: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(
        cls,
        spec_index: int,
        recipe: Recipe,
        spec: NetworkSpec,
        run: RunRecord,
        cost: tuple[int, int],
        **fields: Any,
    ) -> FidelityRun:
        """The record of ``run`` (its curves at ``runs.csv``'s precision) of spec ``spec_index``
        of the pool; ``cost``: the spec's FLOPs and params; ``fields``: the others
        (``zero_cost``, ``seconds``, ``first_of_job``)."""
        curves = {name: [_rounded(v) for v in getattr(run, name)] for name in CURVES}
        return cls(
            spec_index=spec_index,
            spec_digest=spec.digest(),
            recipe=recipe,
            run=RunRecord(seed=run.seed, **curves),
            flops=cost[0],
            params=cost[1],
            knobs=_knobs(spec),
            **fields,
        )

    def row(self) -> dict[str, Any]:
        """The run's row of ``runs.csv``."""
        return {
            "spec": self.spec_index,
            "spec_digest": self.spec_digest,
            "recipe": self.recipe,
            "seed": self.run.seed,
            "epochs": self.run.epochs,
            "flops": self.flops,
            "params": self.params,
            **{name: self.zero_cost.get(name, "") for name in ZERO_COST},
            **{name: ";".join(f"{v:.{_DIGITS}g}" for v in getattr(self.run, name)) for name in CURVES},
            "seconds": self.seconds,
            "first_of_job": self.first_of_job,
            **self.knobs,
        }

    @classmethod
    def from_row(cls, row: dict[str, str]) -> FidelityRun:
        """The run a row of ``runs.csv`` holds (columns other than the known ones are knobs).

        Raises:
            pydantic.ValidationError: a row with a missing or unreadable value (named by column).
        """
        known = {"spec", "spec_digest", "recipe", "seed", "epochs", "flops", "params", *ZERO_COST, *CURVES}
        known |= {"seconds", "first_of_job"}
        data: dict[str, Any] = {
            "spec_index": row.get("spec"),
            "recipe": row.get("recipe"),
            "run": {"seed": row.get("seed"), **{n: [v for v in (row.get(n) or "").split(";") if v] for n in CURVES}},
            "flops": row.get("flops"),
            "params": row.get("params"),
            "zero_cost": {name: row[name] for name in ZERO_COST if row.get(name)},
            "knobs": {k: v for k, v in row.items() if isinstance(k, str) and k not in known and isinstance(v, str)},
        }
        for name in ("spec_digest", "seconds", "first_of_job"):
            if row.get(name):
                data[name] = row[name]
        return cls.model_validate(data)


def _rounded(value: float) -> float:
    """``value`` as ``runs.csv`` holds it."""
    return float(f"{value:.{_DIGITS}g}")


def _knobs(spec: NetworkSpec) -> dict[str, str]:
    """The spec's knobs as ``runs.csv``'s cells: ``stageN.name``, lists joined by commas."""
    return {
        f"stage{i}.{k}": _cell(",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
        for i, stage in enumerate(spec.model_dump(mode="json")["stages"], start=1)
        for k, v in stage.items()
    }


def _cell(value: Any) -> str:
    """A value as the csv module writes it (None as an empty cell)."""
    return "" if value is None else str(value)


def write_runs(runs: list[FidelityRun], path: Path) -> Path:
    """Write ``runs`` to ``path`` (``runs.csv``): the columns in the order the rows first name them."""
    rows = [r.row() for r in runs]
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_runs(path: Path | str) -> list[FidelityRun]:
    """The runs ``runs.csv`` holds (what :func:`~.fidelity_stats.analyze_runs` takes).

    Raises:
        pydantic.ValidationError: a row with a missing or unreadable value.
    """
    with open(path, newline="") as f:
        return [FidelityRun.from_row(row) for row in csv.DictReader(f)]


@dataclass
class SpecRuns:
    """One spec's runs: its proxy and confirmation runs (each in seed order), and its zero-cost
    scores, FLOPs and params (of its first run that has zero-cost scores, else its first run)."""

    proxy: list[RunRecord] = field(default_factory=list)
    confirm: list[RunRecord] = field(default_factory=list)
    zero_cost: dict[str, float] = field(default_factory=dict)
    flops: int = 0
    params: int = 0


def runs_by_spec(runs: list[FidelityRun]) -> dict[int, SpecRuns]:
    """The runs grouped by spec (by ``spec_index``)."""
    out: dict[int, SpecRuns] = {}
    for r in runs:
        spec = out.get(r.spec_index)
        if spec is None:
            spec = out[r.spec_index] = SpecRuns(flops=r.flops, params=r.params)
        if r.zero_cost and not spec.zero_cost:
            spec.zero_cost, spec.flops, spec.params = dict(r.zero_cost), r.flops, r.params
        getattr(spec, r.recipe).append(r.run)
    for spec in out.values():
        spec.proxy.sort(key=lambda r: r.seed)
        spec.confirm.sort(key=lambda r: r.seed)
    return out
