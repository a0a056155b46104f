"""The tabular benchmarks shipped in benchmarks/tables/ (issue 30): each loads through
xnetspace.bench (which refuses a table whose SHA-256 differs from its meta file), holds every
spec of its space with per-epoch curves for each seed and the reference row, and was tabulated
from the space file shipped today."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from xnetspace import bench
from xnetspace.search.space import load_space
from xnetspace.search.tabulate import space_hash

TABLES = Path(__file__).parent.parent / "benchmarks" / "tables"
SHIPPED = sorted(p.name for p in TABLES.iterdir() if (p / "meta.json").is_file())


def test_the_fashion_mnist_table_is_shipped():
    assert "fashion_cpu" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_table_holds_every_spec_with_its_curves(name):
    table = bench.load(TABLES / name)
    meta, specs = table.meta, table.specs()
    assert len(specs) == len(meta["specs"]) - len(meta["failed"]) and len(specs) >= 100
    assert table.reference is not None and len(table.reference.runs) == len(meta["seeds"]) >= 2
    epochs = meta["recipe"]["epochs"]
    for entry in specs:
        runs = table.runs(entry.index)
        assert len(runs) == len(meta["seeds"]), entry.name
        for run in runs:
            for column in ("val_loss", "val_top1", "test_loss", "test_top1", "train_loss", "seconds"):
                assert all(math.isfinite(run.at(column, epoch=e)) for e in range(1, epochs + 1)), (entry.name, column)
        assert math.isfinite(entry.latency_ms) and entry.latency_ms > 0 and entry.flops > 0
    best = table.best()
    assert best.mean("test_loss") == min(e.mean("test_loss") for e in specs)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_table_was_tabulated_from_the_space_shipped_today(name):
    meta = bench.load(TABLES / name).meta
    assert meta["space_hash"] == space_hash(load_space(meta["space"]["name"])), "re-tabulate or restore the space"
