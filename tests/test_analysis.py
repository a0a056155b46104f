"""Design-space analysis: EDFs, complexity normalisation, importances, the comparison of two
studies, the `analyze` command end to end, population studies, and bad input."""

from __future__ import annotations

import csv
import json
import sqlite3

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from scipy import stats
from typer.testing import CliRunner

from xnetspace.cli import app
from xnetspace.search import RunOptions, StudyConfig
from xnetspace.search.analysis import analyze
from xnetspace.search.analysis_data import AnalysisError, Candidate, load_run, study_data
from xnetspace.search.analysis_schema import AnalysisResult
from xnetspace.search.analysis_stats import compare, complexity_weights, edf, edf_distance, importances
from xnetspace.search.records import KEY
from xnetspace.search.space import SearchSpace
from xnetspace.search.study import store_run_options
from xnetspace.search.train import TrainConfig, TrainResult

from .conftest import use_trainer
from .test_search import SPACE  # the tiny space: a budget of 200 kFLOPs at 16x16 rejects some samples

KNOBS = {
    "stage1.embed_dim": IntDistribution(8, 24, step=8),
    "stage1.attn_ratio": CategoricalDistribution([0.5, 1.0]),
    "stage2.num_heads": CategoricalDistribution([1, 2]),
}
runner = CliRunner()


def make_study(
    folder,
    n=12,
    dataset="synthetic:128",
    image_size=16,
    sampler="random",
    pruner="none",
    shift=0.0,
    rejected=3,
    seed=0,
    name="s",
    knobs=None,
    train_seed=0,
):
    """A finished study as `xnetspace search` stores it, with hand-made trials: n candidates whose
    error is 10 - embed_dim / 8 (+ noise, + shift), a few rejected samples, one repeat."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    config = StudyConfig(
        space=SearchSpace.model_validate(SPACE),
        dataset=dataset,
        objective="top1",
        train=TrainConfig(image_size=image_size, epochs=2, batch_size=32, seed=train_seed),
    )
    study.set_user_attr("xnetspace_config", config.model_dump(mode="json"))
    store_run_options(study, RunOptions(n_trials=max(n, 1), sampler=sampler, pruner=pruner))
    rng = np.random.default_rng(seed)
    knobs = knobs or KNOBS
    for _ in range(rejected):
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.PRUNED,
                user_attrs={KEY: {"slot": True, "rejected": True, "reason": "over budget: FLOPs 300k above max 200k"}},
            )
        )
    for i in range(n):
        params = {
            k: d.to_external_repr(int(rng.integers(len(d.choices))))
            if isinstance(d, CategoricalDistribution)
            else int(rng.choice([8, 16, 24]))
            for k, d in knobs.items()
        }
        error = 10 - params.get("stage1.embed_dim", 16) / 8 + shift + float(rng.normal(0, 0.2))
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=knobs,
                value=100 - error,
                user_attrs={
                    KEY: {
                        "slot": True,
                        "flops": 100_000 + 5_000 * i,
                        "params": 20_000,
                        "spec_digest": f"d{i}",
                        "runs": [{"seed": 0, "top1": [100 - error]}],
                    }
                },
            )
        )
    if n:
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=knobs,
                value=100 - error,
                user_attrs={KEY: {"slot": True, "duplicate_of": n - 1 + rejected}},
            )
        )
    return folder


def fake_trainer(spec, data, config, device, report):
    """Stands in for proxy training: a top-1 that grows with width, reported every epoch."""
    top1 = float(sum(spec.embed_dims)) / 2
    loss = 10 / top1
    for epoch in range(config.epochs):
        report(epoch, TrainResult(history=[top1] * (epoch + 1), loss_history=[loss] * (epoch + 1)))
    return TrainResult(history=[top1] * config.epochs, loss_history=[loss] * config.epochs, seconds=0.01)


def candidates(errors, flops=None, knobs=None):
    return [
        Candidate(i, e, (flops or [1] * len(errors))[i], 1, "", (knobs or [{}] * len(errors))[i])
        for i, e in enumerate(errors)
    ]


# -- EDFs and normalisation --------------------------------------------------------------------------
def test_edf_of_hand_made_errors():
    x, f = edf([4.0, 2.0, 3.0, 2.0, 5.0])
    assert x == [2.0, 3.0, 4.0, 5.0]
    assert f == pytest.approx([0.4, 0.6, 0.8, 1.0])  # F(e): fraction with error <= e
    assert f == pytest.approx(stats.ecdf([4.0, 2.0, 3.0, 2.0, 5.0]).cdf.evaluate(x))
    x, f = edf([3.0, 1.0, 2.0, 2.0], weights=[0, 1, 1, 2])  # weights normalised to sum 1
    assert x == [1.0, 2.0, 3.0] and f == pytest.approx([0.25, 1.0, 1.0])
    with pytest.raises(AnalysisError, match="at least one error"):
        edf([])


def test_complexity_normalisation_worked_example():
    # FLOP range of both studies [1.0, 3.9]; bins=2 -> edges 1.0, 2.45, 3.9.
    # A: 3 candidates in bin 0, 1 in bin 1 -> 1/(2*3) each in bin 0, 1/(2*1) in bin 1; B the mirror image.
    (wa, wb), info = complexity_weights([[1.0, 1.2, 1.4, 3.5], [1.1, 3.2, 3.6, 3.9]], bins=2)
    assert info["edges"] == pytest.approx([1.0, 2.45, 3.9])
    assert wa == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2]) and wb == pytest.approx([1 / 2, 1 / 6, 1 / 6, 1 / 6])
    assert info["shared_bins"] == 2 and info["dropped"] == [0, 0]
    # A bin empty in one study gets no weight in any: edges 1, 3, 5; B has nothing in [3, 5].
    (wa, wb), info = complexity_weights([[1.0, 1.1, 5.0], [1.0, 1.2, 1.3]], bins=2)
    assert wa == pytest.approx([0.5, 0.5, 0.0]) and wb == pytest.approx([1 / 3] * 3)
    assert info["shared_bins"] == 1 and info["dropped"] == [1, 0]
    with pytest.raises(AnalysisError, match="no FLOP bin"):
        complexity_weights([[1.0, 1.1], [9.0, 9.5]], bins=2)


def test_ks_distance_and_bootstrap_against_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(5, 1, 40), rng.normal(7, 1, 30)
    result = compare(a, b, n_resamples=2000)
    ks = stats.ks_2samp(a, b)
    assert result["ks_statistic"] == pytest.approx(ks.statistic) and result["ks_pvalue"] == pytest.approx(ks.pvalue)
    assert edf_distance(edf(a), edf(b)) == pytest.approx(ks.statistic)
    assert result["mean_difference"] == pytest.approx(a.mean() - b.mean())
    assert result["best_difference"] == pytest.approx(a.min() - b.min())
    lo, hi = result["mean_difference_ci95"]
    assert lo < result["mean_difference"] < hi < 0  # 2 points apart with these sizes: clearly below 0
    same = compare(a, a + 0.0, n_resamples=2000)
    assert same["ks_statistic"] == 0 and same["mean_difference_ci95"][0] < 0 < same["mean_difference_ci95"][1]


# -- importances -------------------------------------------------------------------------------------
def test_importance_on_a_small_finished_study(tmp_path):
    data = study_data(load_run(make_study(tmp_path / "a", n=20)))
    assert len(data.candidates) == 20 and data.rejected == 3 and data.duplicates == 1
    result, single, _ = importances(data.candidates, data.distributions)
    for name in ("fanova", "ped_anova"):
        values = result[name]
        assert set(values) == set(KNOBS) and all(v >= 0 for v in values.values())
        assert sum(values.values()) == pytest.approx(1.0)
    assert max(result["fanova"], key=result["fanova"].get) == "stage1.embed_dim"  # the knob that sets the error
    assert result["fanova"]["stage1.embed_dim"] > 0.5 and single == []


def test_single_valued_knob_and_too_few_candidates():
    knobs = [{"a": v % 3, "b": 4} for v in range(6)]
    dist = {"a": CategoricalDistribution([0, 1, 2]), "b": CategoricalDistribution([4, 8])}
    result, single, notes = importances(candidates([float(v % 3) for v in range(6)], knobs=knobs), dist)
    assert single == ["b"] and set(result["fanova"]) == {"a"} and result["fanova"]["a"] == pytest.approx(1.0)
    assert any("b = 4" in n and "no importance" in n for n in notes)
    few = [{"a": i % 3, "b": i % 2, "c": i % 2 + 1} for i in range(2)]
    dist |= {"c": CategoricalDistribution([1, 2])}
    result, _, notes = importances(candidates([1.0, 2.0], knobs=few), dist | {"b": CategoricalDistribution([0, 1])})
    assert result == {"fanova": {}, "ped_anova": {}}
    assert any("no importance from 2 candidates for 3 knobs" in n for n in notes)


# -- end to end ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_studies_analysed_end_to_end(tmp_path):
    a = make_study(tmp_path / "a", n=14, name="free")
    b = make_study(tmp_path / "b", n=12, shift=1.5, seed=1, rejected=5, name="fixed")
    (b / "summary.json").write_text(json.dumps({"noise": {"seed_std": 5.0}, "best": {"trial": 7}}))
    out = tmp_path / "compare"
    result = runner.invoke(app, ["analyze", str(a), str(b), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == json.loads((out / "analysis.json").read_text())
    for name in ("edf.png", "importance.png", "marginals.png"):
        assert (out / name).stat().st_size > 1000
    first, second = report["studies"]
    assert (first["name"], second["name"]) == ("free", "fixed")
    assert (first["n"], second["n"]) == (14, 12) and (first["rejected"], second["rejected"]) == (3, 5)
    assert first["sampler"] == "random" and report["importance_method"] == "fanova"
    for s in (first, second):
        assert len(s["edf"]["error"]) == len(s["edf"]["fraction"]) and s["edf"]["fraction"][-1] == pytest.approx(1.0)
        assert all(v >= 0 for v in s["importance"].values()) and s["importance"]
        assert {"stage1.embed_dim", "stage2.num_heads"} <= set(s["marginals"])
        assert not any("not reliable" in w for w in s["warnings"])
    assert (first["seed_std"], first["confirmed_best"]) == (None, None)
    assert (second["seed_std"], second["confirmed_best"]) == (5.0, {"trial": 7})
    c = report["comparison"]
    assert any("within twice the proxy's seed noise (std 5.00 points)" in w for w in c["warnings"])
    assert not any("trained with different seeds" in w for w in c["warnings"])  # both with seed 0
    assert {"ks_statistic", "ks_pvalue", "mean_difference_ci95", "best_difference_ci95", "verdict"} <= set(c)
    assert c["mean_difference_ci95"][1] < 0 and c["verdict"].startswith("free has the lower mean error")
    text = runner.invoke(app, ["analyze", str(a), str(b), "--out", str(out)])
    assert text.exit_code == 0 and "free vs fixed: KS" in text.output and "analysis.json" in text.output


def test_studies_trained_with_different_seeds_are_compared_with_a_warning(tmp_path):
    # A seed's initialisation and batch order are shared by every member of its study: on the default
    # task seed 1 lowered the cross-entropy of each of 7 specs by 0.013 to 0.036 nats (docs/design_spaces.md).
    a = make_study(tmp_path / "a", n=12, name="first")
    b = make_study(tmp_path / "b", n=12, name="second", train_seed=1)
    c = analyze([study_data(load_run(a)), study_data(load_run(b))]).comparison
    assert c is not None and any("trained with different seeds (first: 0, second: 1)" in w for w in c.warnings)


def test_analyze_builds_its_model_and_sets_only_what_it_made(tmp_path):
    # analysis.json is the result without its unset fields: a comparison only for 2+ studies, the
    # list of comparisons only for 3+, a short comparison's fields only where it was not made
    a, b, tiny = (
        make_study(tmp_path / "a", name="a"),
        make_study(tmp_path / "b", name="b"),
        make_study(tmp_path / "t", n=1, name="t"),
    )
    one = analyze([study_data(load_run(a))])
    assert isinstance(one, AnalysisResult) and one.comparison is None and one.comparisons is None
    assert set(one.model_dump(exclude_unset=True)) == {"score", "studies", "importance_method", "normalization"}
    assert "note" not in one.model_dump(exclude_unset=True)["score"]
    assert set(one.model_dump(exclude_unset=True)["normalization"]) == {
        "method",
        "bins",
        "edges",
        "shared_bins",
        "dropped",
    }
    three = analyze([study_data(load_run(f)) for f in (a, b, tiny)])
    assert three.comparisons is not None and [(c.a, c.b) for c in three.comparisons] == [("a", "b"), ("a", "t")]
    assert three.comparison == three.comparisons[0] and three.comparison.verdict is not None
    dumped = three.model_dump(exclude_unset=True)
    assert set(dumped) == {"score", "studies", "importance_method", "normalization", "comparison", "comparisons"}
    assert dumped["comparisons"][1] == {  # the tiny study: no statistics, and no keys for them
        "a": "a",
        "b": "t",
        "ks_statistic": None,
        "ks_pvalue": None,
        "mean_difference_ci95": None,
        "best_difference_ci95": None,
        "warnings": ["a comparison needs 2+ candidates in each study"],
    }
    assert all("range" not in row for rows in dumped["studies"][0]["marginals"].values() for row in rows)


@pytest.mark.slow
def test_population_search_keeps_rejections_and_analyses(tmp_path, monkeypatch):
    use_trainer(monkeypatch, fake_trainer)
    space = tmp_path / "space.yaml"
    space.write_text(json.dumps(SPACE))  # JSON is YAML
    out = tmp_path / "pop"
    result = runner.invoke(
        app,
        [
            "search",
            "--space",
            str(space),
            "--dataset",
            "synthetic:128",
            "--population",
            "--n-trials",
            "12",
            "--out",
            str(out),
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--workers-per-device",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    study = load_run(out)
    settings = study.user_attrs["xnetspace_run"]
    assert (settings["sampler"], settings["pruner"], settings["confirm_top"]) == ("random", "none", 0)
    rows = list(csv.DictReader(open(out / "trials.csv")))
    rejected = sum(r["state"] == "REJECTED" for r in rows)
    assert rejected > 0, "this budget rejects some samples"
    assert sum(int(r["rejected_samples"] or 0) for r in rows) == rejected
    report = json.loads(runner.invoke(app, ["analyze", str(out), "--json"]).output)
    assert report["studies"][0]["rejected"] == rejected and "comparison" not in report
    assert (out / "edf.png").is_file()  # one run: the files go into its folder


# -- bad input -----------------------------------------------------------------------------------------
def test_not_a_study_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "study.db").write_text("not a database " * 100)
    (tmp_path / "other").mkdir()
    sqlite3.connect(tmp_path / "other" / "study.db").execute("create table t (x int)").connection.commit()
    cases = {
        "missing": "does not exist",
        "empty": "has no study.db",
        "junk": "not an SQLite database",
        "other": "not an Optuna storage",
    }
    for folder, message in cases.items():
        result = runner.invoke(app, ["analyze", str(tmp_path / folder)])
        assert result.exit_code == 2 and message in result.output, (folder, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "missing").exists()
    result = runner.invoke(app, ["analyze"])
    assert result.exit_code == 2 and "nothing to analyse" in result.output


def test_few_candidates_are_analysed_with_a_warning_and_tpe_is_called_biased(tmp_path):
    folder = make_study(tmp_path / "few", n=5, sampler="tpe", pruner="median")
    result = runner.invoke(app, ["analyze", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    study = json.loads(result.output)["studies"][0]
    assert study["n"] == 5 and len(study["edf"]["error"]) == 5
    assert any("only 5 completed candidates" in w and "not reliable" in w for w in study["warnings"])
    assert any("TPE study is a biased sample" in w for w in study["warnings"])


@pytest.mark.slow
def test_different_datasets_or_sizes_are_refused_unless_forced(tmp_path):
    a = make_study(tmp_path / "a", n=10)
    b = make_study(tmp_path / "b", n=10, dataset="digits")
    c = make_study(tmp_path / "c", n=10, image_size=32)
    for other, what in ((b, "different datasets"), (c, "different image sizes")):
        result = runner.invoke(app, ["analyze", str(a), str(other), "--out", str(tmp_path / "x")])
        assert result.exit_code == 2 and what in result.output and "--force" in result.output
    forced = runner.invoke(app, ["analyze", str(a), str(b), "--out", str(tmp_path / "x"), "--force", "--json"])
    assert forced.exit_code == 0
    assert any("(--force)" in w for w in json.loads(forced.output)["comparison"]["warnings"])


def test_storage_and_study_name_options(tmp_path):
    folder = make_study(tmp_path / "a", n=10, name="mine")
    url = f"sqlite:///{folder / 'study.db'}"
    result = runner.invoke(
        app, ["analyze", "--storage", url, "--study-name", "mine", "--out", str(tmp_path / "o"), "--json"]
    )
    assert result.exit_code == 0 and json.loads(result.output)["studies"][0]["name"] == "mine"
    result = runner.invoke(app, ["analyze", "--storage", url, "--study-name", "theirs"])
    assert result.exit_code == 2 and "no study named 'theirs'" in result.output
    optuna.create_study(study_name="second", storage=url)
    optuna.create_study(study_name="mine:confirm", storage=url)  # confirmation runs are not a candidate study
    result = runner.invoke(app, ["analyze", str(folder)])
    assert result.exit_code == 2 and "holds 2 studies (mine, second)" in result.output


def test_population_refuses_another_sampler(tmp_path):
    result = runner.invoke(
        app, ["search", "--space", "tiny_cpu", "--population", "--sampler", "tpe", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "--population means --sampler random --pruner none" in result.output


def test_a_study_without_candidates_or_config(tmp_path):
    folder = make_study(tmp_path / "none", n=0)
    result = runner.invoke(app, ["analyze", str(folder)])
    assert result.exit_code == 2 and "no completed candidates" in result.output
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    optuna.create_study(study_name="foreign", storage=url)
    result = runner.invoke(app, ["analyze", "--storage", url, "--study-name", "foreign"])
    assert result.exit_code == 2 and "not made by xnetspace search" in result.output
    with pytest.raises(AnalysisError, match="at least 2 candidates"):
        compare([1.0], [1.0, 2.0])
    with pytest.raises(AnalysisError, match="nothing to analyse"):
        analyze([])
