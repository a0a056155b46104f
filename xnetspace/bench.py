"""A tabular benchmark of a design space: every spec's training runs, read back without training.

NAS-Bench-201 (Dong & Yang, ICLR 2020), NATS-Bench (Dong et al., TPAMI 2021) and JAHS-Bench-201
(Bansal et al., NeurIPS 2022) train every architecture of a space once, with a few seeds, and keep
per-epoch curves, so that search strategies are compared by replaying them against the table
hundreds of times instead of training again. ``xnetspace tabulate`` (:mod:`xnetspace.search.tabulate`)
writes such a table for a TransXNet space; this module holds its file format and reads it, and
imports nothing of the search half (the network half stays usable alone)::

    from xnetspace import bench
    table = bench.load("runs/table")          # the folder, or its table.csv
    best = table.best()                       # the spec with the lowest mean test cross-entropy
    best.mean("test_top1"), best.flops, best.knobs, table.network(best.index)
    [run.at("val_loss", epoch=1) for run in table.runs(best.index)]

``DIR/table.csv`` has one row per (spec, seed, epoch); :data:`ID_COLUMNS`, :data:`RUN_COLUMNS`,
:data:`SPEC_COLUMNS`, then one column per knob (the space's Optuna parameters, ``stage1.sr_ratio``;
empty for the reference row). ``DIR/meta.json`` says what was trained and how: the space and its
hash, the dataset and its splits, the recipe, the seeds, every spec as JSON, the machine, package
versions, and the table's SHA-256 (a table that does not match its meta file is refused).
docs/benchmark.md gives every column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import NetworkSpec

__all__ = [
    "BenchError",
    "Run",
    "Entry",
    "Bench",
    "load",
    "write",
    "TABLE_FILE",
    "META_FILE",
    "ID_COLUMNS",
    "RUN_COLUMNS",
    "SPEC_COLUMNS",
    "ZERO_COST_COLUMNS",
]

TABLE_FILE, META_FILE = "table.csv", "meta.json"
ID_COLUMNS = ("spec", "role", "name", "digest", "seed", "epoch", "pack")
RUN_COLUMNS = ("val_loss", "val_top1", "test_loss", "test_top1", "train_loss", "seconds")
ZERO_COST_COLUMNS = ("synflow", "naswot", "grad_norm")
SPEC_COLUMNS = ("flops", "params", "latency_ms", *ZERO_COST_COLUMNS)
REFERENCE = "reference"  # the role of the budget-scaled preset's row; the space's specs have role "space"


class BenchError(ValueError):
    """A table or meta file that cannot be read, or a query it cannot answer; the message names
    the file (and row and column) or the spec."""


@dataclass(frozen=True)
class Run:
    """One seed's run of a spec: per epoch (index 0 is epoch 1), validation and test cross-entropy
    (nats) and top-1 (percent), the mean training loss (label-smoothed) and the wall seconds since
    the run started (cumulative; its share of the ``pack`` of seeds trained together)."""

    seed: int
    pack: int
    val_loss: tuple[float, ...]
    val_top1: tuple[float, ...]
    test_loss: tuple[float, ...]
    test_top1: tuple[float, ...]
    train_loss: tuple[float, ...]
    seconds: tuple[float, ...]

    @property
    def epochs(self) -> int:
        return len(self.val_loss)

    def at(self, column: str, epoch: int | None = None) -> float:
        """``column`` (one of :data:`RUN_COLUMNS`) after ``epoch`` (from 1; default: the last).

        Raises:
            BenchError: an unknown column or an epoch the run does not have.
        """
        if column not in RUN_COLUMNS:
            raise BenchError(f"unknown run column {column!r}; columns are {', '.join(RUN_COLUMNS)}")
        values = getattr(self, column)
        e = len(values) if epoch is None else epoch
        if not 1 <= e <= len(values):
            raise BenchError(f"epoch {epoch} is not in 1..{len(values)}")
        return values[e - 1]


@dataclass(frozen=True)
class Entry:
    """A spec of the table with its costs, zero-cost scores (at initialisation, first seed), knobs
    (the Optuna parameters that give it; empty for the reference) and runs (one per seed)."""

    index: int
    role: str
    name: str
    digest: str
    flops: int
    params: int
    latency_ms: float
    zero_cost: dict[str, float]
    knobs: dict[str, Any]
    runs: tuple[Run, ...] = field(default=())

    def scores(self, column: str = "test_loss", epoch: int | None = None) -> list[float]:
        """``column`` after ``epoch`` (default: the last) for each seed."""
        return [run.at(column, epoch) for run in self.runs]

    def mean(self, column: str = "test_loss", epoch: int | None = None) -> float:
        """The mean over seeds of ``column`` after ``epoch`` (default: the last); nan without runs."""
        values = self.scores(column, epoch)
        return statistics.fmean(values) if values else math.nan


def maximized(column: str) -> bool:
    """Is a higher ``column`` better (top-1) rather than lower (cross-entropy, loss)?"""
    return column.endswith("top1")


class Bench:
    """A loaded table (:func:`load`): the space's specs (:meth:`specs`), the reference row
    (:attr:`reference`: TransXNet-T scaled to the space's budget, trained with the same seeds;
    None when no scaled version met it) and ``meta`` (``meta.json`` as a dict)."""

    def __init__(self, meta: dict, entries: list[Entry], reference: Entry | None, folder: Path):
        self.meta, self.folder, self.reference = meta, folder, reference
        self._entries = sorted(entries, key=lambda e: e.index)
        self._by_digest = {e.digest: e for e in self._entries}
        self._by_index = {e.index: e for e in self._entries}

    @property
    def seeds(self) -> list[int]:
        return list(self.meta["seeds"])

    @property
    def epochs(self) -> int:
        return int(self.meta["recipe"]["epochs"])

    def specs(self) -> list[Entry]:
        """The space's specs with runs, by index (a spec whose training failed is in
        ``meta["failed"]`` instead)."""
        return list(self._entries)

    def entry(self, key: int | str) -> Entry:
        """The spec of index ``key`` (an int) or digest ``key`` (a str).

        Raises:
            BenchError: no such spec in the table.
        """
        found = self._by_index.get(key) if isinstance(key, int) else self._by_digest.get(str(key))
        if found is None:
            raise BenchError(f"no spec {key!r} in the table {self.folder / TABLE_FILE} ({len(self._entries)} specs)")
        return found

    def runs(self, key: int | str) -> tuple[Run, ...]:
        """A spec's runs, one per seed (:meth:`entry` for ``key``)."""
        return self.entry(key).runs

    def best(self, column: str = "test_loss", epoch: int | None = None) -> Entry:
        """The spec with the best mean ``column`` over its seeds (lowest cross-entropy, highest
        top-1; ties: fewer FLOPs, then the lower index)."""
        sign = -1.0 if maximized(column) else 1.0
        return min(self._entries, key=lambda e: (sign * e.mean(column, epoch), e.flops, e.index))

    def network(self, key: int | str) -> NetworkSpec:
        """The :class:`~xnetspace.spec.NetworkSpec` of a spec (or of the reference, ``"reference"``)."""
        if key == REFERENCE:
            if self.reference is None:
                raise BenchError("this table has no reference row")
            return NetworkSpec.model_validate(self.meta["reference"]["spec"])
        entry = self.entry(key)
        return NetworkSpec.model_validate(self.meta["specs"][str(entry.index)]["spec"])


# -- the files -----------------------------------------------------------------------------------------
def write(folder: Path, entries: Iterable[Entry], knobs: list[str], meta: dict) -> Path:
    """Write ``folder/table.csv`` (one row per spec, seed and epoch) and ``folder/meta.json``
    (``meta`` with the table's row count and SHA-256 added); returns the table's path."""
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / TABLE_FILE
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*ID_COLUMNS, *RUN_COLUMNS, *SPEC_COLUMNS, *knobs])
        rows = 0
        for e in entries:
            spec_part = [
                e.flops,
                e.params,
                _text(e.latency_ms),
                *(_text(e.zero_cost.get(z)) for z in ZERO_COST_COLUMNS),
            ]
            for run in e.runs:
                for epoch in range(1, run.epochs + 1):
                    values = [_text(run.at(c, epoch)) for c in RUN_COLUMNS]
                    ident = [e.index, e.role, e.name, e.digest, run.seed, epoch, run.pack]
                    writer.writerow([*ident, *values, *spec_part, *(e.knobs.get(k, "") for k in knobs)])
                    rows += 1
    meta = {**meta, "table": TABLE_FILE, "rows": rows, "knobs": knobs, "table_sha256": _sha256(table)}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return table


def load(path: str | Path) -> Bench:
    """Read a table: ``path`` is its folder or its ``table.csv`` (``meta.json`` beside it).

    Raises:
        BenchError: a missing file, a meta file that is not JSON, a table that does not match its
            meta file (edited or truncated), a row with a missing or unreadable value (named by
            line and column).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    table, meta_file = folder / TABLE_FILE, folder / META_FILE
    for f in (table, meta_file):
        if not f.is_file():
            raise BenchError(f"{f} does not exist: a table is a folder written by `xnetspace tabulate`")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BenchError(f"{meta_file} is not JSON: {err}") from None
    if not isinstance(meta, dict) or "seeds" not in meta or "specs" not in meta:
        raise BenchError(f"{meta_file} is not the meta file of a table (no seeds or specs)")
    if meta.get("table_sha256") != _sha256(table):
        raise BenchError(f"{table} does not match {meta_file} (its SHA-256 differs): edited or truncated?")
    entries = _entries(table)
    reference = next((e for e in entries if e.role == REFERENCE), None)
    return Bench(meta, [e for e in entries if e.role != REFERENCE], reference, folder)


def _entries(table: Path) -> list[Entry]:
    """The table's rows grouped into entries (per spec) and runs (per seed, epochs in order)."""
    rows: dict[tuple[int, str], list[dict[str, str]]] = {}
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (*ID_COLUMNS, *RUN_COLUMNS, *SPEC_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchError(f"{table} lacks the column(s) {', '.join(missing)}")
        knobs = [c for c in reader.fieldnames or [] if c not in (*ID_COLUMNS, *RUN_COLUMNS, *SPEC_COLUMNS)]
        for line, row in enumerate(reader, start=2):
            row["_line"] = str(line)
            rows.setdefault((_number(row, "spec", table, int), row["role"]), []).append(row)
    return [_entry(index, role, group, knobs, table) for (index, role), group in rows.items()]


def _entry(index: int, role: str, rows: list[dict[str, str]], knobs: list[str], table: Path) -> Entry:
    first = rows[0]
    by_seed: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        by_seed.setdefault(_number(row, "seed", table, int), []).append(row)
    runs = []
    for seed, group in sorted(by_seed.items()):
        group.sort(key=lambda r: _number(r, "epoch", table, int))
        curves = {c: tuple(_number(r, c, table, float) for r in group) for c in RUN_COLUMNS}
        runs.append(Run(seed=seed, pack=_number(first, "pack", table, int), **curves))
    return Entry(
        index=index,
        role=role,
        name=first["name"],
        digest=first["digest"],
        flops=_number(first, "flops", table, int),
        params=_number(first, "params", table, int),
        latency_ms=_number(first, "latency_ms", table, float),
        zero_cost={z: _number(first, z, table, float) for z in ZERO_COST_COLUMNS},
        knobs={k: _value(first[k]) for k in knobs if first.get(k, "") != ""},
        runs=tuple(runs),
    )


def _number(row: dict[str, str], column: str, table: Path, kind: type) -> Any:
    text = row.get(column)
    if text == "" and kind is float:
        return math.nan  # not measured (a zero-cost score that failed, a latency not taken)
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise BenchError(f"{table} line {row['_line']}, column {column}: {text!r} is not a number") from None


def _value(text: str) -> Any:
    """A knob's value as written: an int, a float, or the text (kernel lists: "1,3,5,7")."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _text(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.7g}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
