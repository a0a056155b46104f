"""A table of a space with made-up scores, written in the format of :mod:`xnetspace.bench` without
training anything: what the replay's tests and its speed benchmark (benchmarks/bench_replay.py)
run on when a real table of a large space would take hours to train.

Every distinct in-budget spec of the space (:mod:`.space_grid`) gets a quality from a fixed random
draw, each seed a noise on it, and each split (validation, test) a noise of its own; a run's
cross-entropy falls linearly to its final value over the epochs and its top-1 is
``100 exp(-loss)``. ``scores`` replaces the final values: ``scores(position, seed, split)``.
Nothing in it is a measurement: its meta file says ``"synthetic": true``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..bench import Entry, Run, write
from ..cost import cost_report
from .space import SearchSpace, space_data
from .space_grid import enumerate_space
from .tabulate import space_hash

__all__ = ["synthetic_table"]


def synthetic_table(
    space: SearchSpace,
    out: Path,
    seeds: int = 2,
    epochs: int = 3,
    seed: int = 0,
    num_classes: int = 10,
    in_chans: int = 1,
    scores: Callable[[int, int, str], float] | None = None,
) -> Path:
    """Write ``out/table.csv`` and ``out/meta.json`` for every in-budget spec of ``space`` with
    made-up runs (module docstring); returns the table's path.

    Raises:
        SpaceError: a space that cannot be enumerated (:func:`~.space_grid.enumerate_space`).
    """
    found = enumerate_space(space, num_classes=num_classes, in_chans=in_chans)
    rng = np.random.default_rng(seed)
    quality = 0.3 + 0.1 * rng.standard_normal(len(found.specs))
    noise = 0.02 * rng.standard_normal((len(found.specs), seeds, 2))

    def made_up(p: int, k: int, split: str) -> float:
        return float(quality[p] + noise[p, k, 0] + (0.01 * noise[p, k, 1] if split == "test" else 0.0))

    final = scores or made_up
    entries = []
    for p, spec in enumerate(found.specs):
        report = cost_report(spec, space.constraints.image_size)
        runs = tuple(_run(space.train.seed + k, final(p, k, "val"), final(p, k, "test"), epochs) for k in range(seeds))
        entries.append(
            Entry(p, "space", spec.name, spec.digest(), report.flops, report.params, math.nan, {}, found.knobs[p], runs)
        )
    meta = {
        "format": 1,
        "synthetic": True,
        "space": space_data(space),
        "space_hash": space_hash(space),
        "dataset": "synthetic scores",
        "num_classes": num_classes,
        "in_chans": in_chans,
        "recipe": {**space.train.model_dump(mode="json"), "epochs": epochs},
        "seeds": [space.train.seed + k for k in range(seeds)],
        "specs": {
            str(i): {"name": s.name, "digest": s.digest(), "knobs": found.knobs[i], "spec": s.model_dump(mode="json")}
            for i, s in enumerate(found.specs)
        },
        "failed": [],
        "reference": {"preset": None, "error": "a synthetic table has no reference"},
    }
    return write(out, entries, list(found.grid), meta)


def _run(seed: int, val: float, test: float, epochs: int) -> Run:
    def curve(final: float) -> tuple[float, ...]:
        return tuple(final + 0.5 * (epochs - e) / epochs for e in range(1, epochs + 1))

    val_loss, test_loss = curve(val), curve(test)
    return Run(
        seed=seed,
        pack=1,
        val_loss=val_loss,
        val_top1=tuple(100 * math.exp(-v) for v in val_loss),
        test_loss=test_loss,
        test_top1=tuple(100 * math.exp(-v) for v in test_loss),
        train_loss=tuple(v + 0.1 for v in val_loss),
        seconds=tuple(1.0 * e for e in range(1, epochs + 1)),
    )
