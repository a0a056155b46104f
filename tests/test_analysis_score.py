"""`xnetspace analyze` in the study's score: cross-entropy in a loss study (top-1 error beside it),
per-candidate means over seeds, studies of different scores, and analysis.json against its model
and its exported JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from xnetspace.cli import app
from xnetspace.search import RunOptions, StudyConfig
from xnetspace.search.analysis import analyze
from xnetspace.search.analysis_data import load_run, study_data
from xnetspace.search.analysis_schema import AnalysisResult, schemas
from xnetspace.search.records import KEY
from xnetspace.search.space import SearchSpace
from xnetspace.search.study import store_run_options
from xnetspace.search.train import TrainConfig

from .test_analysis import KNOBS, make_study
from .test_search import SPACE

runner = CliRunner()
SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def make_loss_study(folder, n=16, seeds=2, shift=0.0, seed=0, name="loss"):
    """A finished loss study: per candidate, ``seeds`` runs whose last-epoch cross-entropy is
    0.5 - embed_dim / 100 + seed noise (so width sets the score) and whose top-1 is a constant 90
    plus noise that width does not set (top-1 cannot tell these candidates apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}", direction="minimize")
    config = StudyConfig(
        space=SearchSpace.model_validate(SPACE),
        dataset="synthetic:128",
        objective="loss",
        train=TrainConfig(image_size=16, epochs=2, batch_size=32),
    )
    study.set_user_attr("xnetspace_config", config.model_dump(mode="json"))
    store_run_options(study, RunOptions(n_trials=n, sampler="random", pruner="none"))
    rng = np.random.default_rng(seed)
    truth = []
    for i in range(n):
        params = {
            "stage1.embed_dim": int(rng.choice([8, 16, 24])),
            "stage1.attn_ratio": float(rng.choice([0.5, 1.0])),
            "stage2.num_heads": int(rng.choice([1, 2])),
        }
        base = 0.5 - params["stage1.embed_dim"] / 100 + shift
        runs = [
            {
                "seed": s,
                "top1": [50.0, 90.0 + float(rng.normal(0, 1))],
                "loss": [2.0, base + float(rng.normal(0, 0.01))],
            }
            for s in range(seeds)
        ]
        truth.append((np.mean([r["loss"][-1] for r in runs]), 100 - np.mean([r["top1"][-1] for r in runs])))
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=KNOBS,
                value=truth[-1][0],
                user_attrs={
                    KEY: {
                        "slot": True,
                        "flops": 100_000 + 5_000 * i,
                        "params": 20_000,
                        "spec_digest": f"d{i}",
                        "runs": runs,
                    }
                },
            )
        )
    return folder, truth


def test_a_loss_study_is_analysed_in_cross_entropy_with_top1_error_beside(tmp_path):
    folder, truth = make_loss_study(tmp_path / "a")
    data = study_data(load_run(folder))
    assert [c.error for c in data.candidates] == pytest.approx([t[0] for t in truth])  # mean over the 2 seeds
    assert [c.top1_error for c in data.candidates] == pytest.approx([t[1] for t in truth])
    result = analyze([data])
    assert result.score.model_dump(exclude_unset=True) == {  # as analysis.json holds it: no note
        "name": "loss",
        "label": "validation cross-entropy",
        "unit": "nats",
        "direction": "minimize",
    }
    study = result.studies[0]
    losses = sorted(t[0] for t in truth)
    assert study.edf.error == pytest.approx(sorted(set(losses)))
    assert study.error.min == pytest.approx(losses[0]) and study.error.max == pytest.approx(losses[-1])
    assert study.top1_error is not None and study.top1_error.mean == pytest.approx(np.mean([t[1] for t in truth]))
    assert study.edf_top1_error.fraction[-1] == pytest.approx(1.0) and len(study.edf_top1_error.error) == 16
    # width sets the cross-entropy, so it is the important knob and its marginal falls with width
    assert max(study.importance, key=study.importance.get) == "stage1.embed_dim"
    means = [row.mean_error for row in study.marginals["stage1.embed_dim"]]
    assert means == sorted(means, reverse=True) and means[0] < 0.5


@pytest.mark.slow
def test_the_command_writes_a_cross_entropy_analysis_that_parses_into_its_model(tmp_path):
    a, _ = make_loss_study(tmp_path / "a", name="wide")
    b, _ = make_loss_study(tmp_path / "b", shift=0.2, seed=1, name="narrow")
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "score: validation cross-entropy (nats, lower is better)" in result.output
    assert "nats; most important" in result.output
    report = json.loads((out / "analysis.json").read_text())
    parsed = AnalysisResult.model_validate(report)  # extra="forbid" all the way down
    assert parsed.score.name == "loss" and parsed.comparison.mean_difference_ci95[1] < 0  # wide is better by 0.2 nats
    assert parsed.comparison.verdict.startswith("wide has the lower mean error")
    assert (out / "edf.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="extra"):
        AnalysisResult.model_validate({**report, "surprise": 1})


def test_a_top1_study_keeps_top1_error_and_validates(tmp_path):
    folder = make_study(tmp_path / "t", n=12)
    report = json.loads(runner.invoke(app, ["analyze", str(folder), "--json"]).output)
    assert report["score"]["name"] == "top1_error" and report["score"]["unit"] == "%"
    study = report["studies"][0]
    assert study["edf_top1_error"] == study["edf"] and study["top1_error"] == study["error"]
    AnalysisResult.model_validate(report)


def test_studies_of_different_scores_are_refused_unless_forced_then_compared_by_top1(tmp_path):
    loss, truth = make_loss_study(tmp_path / "loss", n=12)
    top1 = make_study(tmp_path / "top1", n=12)
    refused = runner.invoke(app, ["analyze", str(loss), str(top1), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "different scores" in refused.output and "--force" in refused.output
    assert "by top-1 error" in refused.output and "Traceback" not in refused.output
    forced = runner.invoke(app, ["analyze", str(loss), str(top1), "--out", str(tmp_path / "x"), "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    report = json.loads(forced.output)
    assert report["score"]["name"] == "top1_error" and "compared by top-1 error" in report["score"]["note"]
    first = report["studies"][0]
    assert first["error"]["mean"] == pytest.approx(np.mean([t[1] for t in truth]))  # the loss study's top-1 errors
    assert any("different scores" in w for w in report["comparison"]["warnings"])
    AnalysisResult.model_validate(report)


@pytest.mark.parametrize("name", sorted(schemas()))
def test_exported_schemas_are_the_models_current_ones(name):
    written = json.loads((SCHEMAS / name).read_text())
    assert written == schemas()[name], (
        "docs/schemas is stale: run python -m xnetspace.search.analysis_schema docs/schemas"
    )
