"""benchmarks/compare_searches.py (docs/design_spaces.md, section 3): winner against winner from
two searches' summary.json files, against xnetspace.search.stats.mean_difference."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from xnetspace.search.stats import mean_difference

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "compare_searches.py"


def summary(folder: Path, scores: list[float], tau: float) -> Path:
    folder.mkdir()
    diff = {"mean": 0.01, "ci95": [-0.02, 0.04]}
    stats_ = {"mean": float(np.mean(scores)), "std": float(np.std(scores, ddof=1)), "scores": scores}
    data = {
        "best": {"confirm": stats_, "confirm_top1": {"mean": 95.0}},
        "baselines": [{"name": "random search", "difference": diff}, {"name": "transxnet_t_x0.4", "difference": diff}],
        "fidelity": {"kendall_tau": tau, "n": 20},
        "compute": {"search": 30},
        "protocol": {"seeds": [1000 + k for k in range(len(scores))]},
    }
    (folder / "summary.json").write_text(json.dumps(data))
    return folder


def run(args: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    return capsys.readouterr().out


def test_pairs_runs_and_reports_welch_intervals(tmp_path, capsys, monkeypatch):
    a = [summary(tmp_path / f"a{i}", [0.30 + i / 100, 0.31 + i / 100, 0.29 + i / 100], 0.7) for i in range(2)]
    b = [summary(tmp_path / "b0", [0.25, 0.27, 0.26], 0.6), summary(tmp_path / "b1", [0.26, 0.28, 0.26], 0.6)]
    out = run([*map(str, a), "--", *map(str, b)], capsys, monkeypatch)
    assert out.count(f"| {tmp_path}") == 4 and "0.70 (20)" in out and "0.60 (20)" in out
    d = mean_difference([0.25, 0.27, 0.26], [0.30, 0.31, 0.29])
    assert f"{b[0]} - {a[0]}: {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], distinguishable: True" in out
    assert "over the 2 replicates (winner means): -0.0417" in out
    low, high = stats.ttest_rel([0.25, 0.27, 0.26], [0.30, 0.31, 0.29]).confidence_interval(0.95)
    assert f"paired by seed -0.0400 [{low:+.4f}, {high:+.4f}]" in out  # per-seed differences -0.05, -0.04, -0.03


def test_unpaired_runs_are_refused(tmp_path, capsys, monkeypatch):
    a = summary(tmp_path / "a", [0.3, 0.31], 0.5)
    with pytest.raises(SystemExit, match="as many runs after -- as before"):
        run([str(a), "--"], capsys, monkeypatch)
