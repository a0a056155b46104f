"""`xnetspace refine`: candidate constraints tested against a population whose right answer is
known (non-decreasing widths help, a tied MLP ratio hurts), the evidence against scipy, the
refined space file, refine.json against its model, --verify, and bad input."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from pydantic import ValidationError
from scipy import stats
from typer.testing import CliRunner

from xnetspace.cli import app
from xnetspace.cost import cost_report
from xnetspace.search import RunOptions, StudyConfig
from xnetspace.search.analysis_data import load_run, study_data
from xnetspace.search.analysis_schema import Evidence, RefineKind, RefineResult, Verdict
from xnetspace.search.analysis_stats import complexity_weights
from xnetspace.search.records import KEY
from xnetspace.search.refine import CHECK_DRAWS, MIN_MODELS, refine
from xnetspace.search.refine_constraints import FIT_TOLERANCE, fit_width_rule
from xnetspace.search.refine_evidence import MIN_SUBSET, evidence, verdict
from xnetspace.search.space import SearchSpace, load_space
from xnetspace.search.space_rules import regnet_widths
from xnetspace.search.study import store_run_options
from xnetspace.search.train import TrainConfig

from .conftest import use_trainer
from .test_analysis import fake_trainer

runner = CliRunner()
SPACE = {  # every stage takes every width, so about 1 in 7 draws has non-decreasing widths
    "name": "pop",
    "network": {"image_size": 16, "drop_path_rate": 0.0},
    "stage_defaults": {
        "depth": [1, 2],
        "embed_dim": [16, 32, 48, 64],
        "mlp_ratio": [2, 4],
        "idconv_kernel_size": [3, 5],
        "attn_ratio": [0.25, 0.5, 0.75],
        "num_heads": [1, 2],
    },
    "stages": [{"sr_ratio": [1, 2]}, {"sr_ratio": 1}, {"sr_ratio": 1}, {"sr_ratio": 1}],
    "constraints": {"image_size": 16},
    "train": {"image_size": 16, "epochs": 1, "batch_size": 32},
}


def known_error(spec) -> float:
    """The truth the population is made from (cross-entropy, nats): widths that never decrease
    are 0.1 better, an MLP ratio tied across stages is 0.08 worse, nothing else matters."""
    widths, mlp = spec.embed_dims, {s.mlp_ratio for s in spec.stages}
    return 0.4 - 0.1 * (list(widths) == sorted(widths)) + 0.08 * (len(mlp) == 1)


def make_population(folder, n=130, seed=0, sampler="random", pruner="none", name="pop", space=None):
    """A finished population (loss) study made as `xnetspace search --population` makes one:
    Optuna's random sampler draws each spec from the space; errors from known_error + noise.
    Made in memory, then copied into FOLDER/study.db in one go (fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    space = SearchSpace.model_validate(space or SPACE)
    study = optuna.create_study(study_name=name, direction="minimize", sampler=optuna.samplers.RandomSampler(seed=seed))
    config = StudyConfig(
        space=space,
        dataset="synthetic:128",
        objective="loss",
        train=TrainConfig(image_size=16, epochs=1, batch_size=32),
    )
    study.set_user_attr("xnetspace_config", config.model_dump(mode="json"))
    store_run_options(study, RunOptions(n_trials=n, sampler=sampler, pruner=pruner, confirm_top=0))
    rng = np.random.default_rng(seed)
    for i in range(n):
        trial = study.ask()
        spec = space.sample(trial, num_classes=10)
        report = cost_report(spec, 16)
        loss = known_error(spec) + float(rng.normal(0, 0.01))
        trial.set_user_attr(
            KEY,
            {
                "slot": True,
                "flops": report.flops,
                "params": report.params,
                "spec_digest": f"d{i}",
                "spec": spec.model_dump(mode="json"),
                "runs": [{"seed": 0, "top1": [90.0], "loss": [loss]}],
            },
        )
        study.tell(trial, loss)
    optuna.copy_study(from_study_name=name, from_storage=study._storage, to_storage=f"sqlite:///{folder / 'study.db'}")
    return folder


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    return make_population(tmp_path_factory.mktemp("refine") / "pop")


# -- evidence --------------------------------------------------------------------------------------------
def test_evidence_against_scipy_and_the_complexity_weights():
    rng = np.random.default_rng(4)
    errors, flops = rng.normal(5, 0.5, 60), rng.uniform(1e6, 3e6, 60)
    mask = np.arange(60) % 3 == 0
    errors[mask] -= 1.5  # the subset is 1.5 points better than the rest
    result = evidence(errors, flops, mask, n_resamples=999)
    assert isinstance(result, Evidence)
    ks = stats.ks_2samp(errors[mask], errors[~mask])
    assert (result.ks_statistic, result.ks_pvalue) == pytest.approx((ks.statistic, ks.pvalue))
    assert result.mean_difference_plain == pytest.approx(errors[mask].mean() - errors.mean())
    (ws, wm), _ = complexity_weights([flops[mask], flops], bins=4)  # 20 members: 4 bins of 5 on average
    assert result.bins == 4
    assert result.normalized and result.mean_difference == pytest.approx(ws @ errors[mask] - wm @ errors)
    for ci in (result.mean_difference_ci95, result.mean_difference_plain_ci95):
        low, high = ci
        assert low < high < 0  # 1 point better than all (1.5 x 2/3), noise 0.5: clearly below 0
    same = evidence(errors, flops, np.ones(60, bool), n_resamples=999)
    assert same.mean_difference == pytest.approx(0) and same.ks_statistic is None
    one = evidence(errors, flops, np.arange(60) == 0)
    assert one.mean_difference_ci95 is None and one.satisfying == 1 and one.members == 60  # one member: no CI


def _evidence(satisfying: int, ci: list[float] | None, normalized: bool = True) -> Evidence:
    return Evidence(
        members=100,
        satisfying=satisfying,
        **dict.fromkeys(["ks_statistic", "ks_pvalue", "edf_gap", "edf_gap_normalized", "mean_difference"]),
        mean_difference_ci95=ci,
        mean_difference_plain=None,
        mean_difference_plain_ci95=ci,
        normalized=normalized,
        bins=None,
    )


def test_the_verdict_rule_on_hand_made_evidence():
    verdict_, why = verdict(_evidence(MIN_SUBSET - 1, [-1.0, -0.5]))
    assert verdict_ is Verdict.UNDECIDED and f"only {MIN_SUBSET - 1} of 100 members" in why  # too few, however good
    assert verdict(_evidence(MIN_SUBSET, None))[0] is Verdict.UNDECIDED
    verdict_, why = verdict(_evidence(40, [0.01, 0.2]))
    assert verdict_ is Verdict.REJECTED and "complexity-normalised mean difference [+0.01, +0.2] lies above 0" in why
    verdict_, why = verdict(_evidence(40, [-0.01, 0.2], normalized=False))
    assert verdict_ is Verdict.ACCEPTED and why.startswith("not worse: the 95% CI of the mean difference [-0.01")
    assert verdict(_evidence(MIN_SUBSET, [0.0, 0.2]))[0] is Verdict.ACCEPTED  # a CI touching 0 does not lie above it


def test_verdicts_and_kinds_are_written_as_their_words():
    from xnetspace.search.analysis_schema import RefineStep

    step = RefineStep(
        kind=RefineKind.WIDTH_RULE, knob="embed_dim", description="d", verdict=Verdict.NOT_APPLICABLE, reason="r"
    )
    written = json.loads(step.model_dump_json())
    assert written["kind"] == "width_rule" and written["verdict"] == "not applicable"
    assert f"{Verdict.NOT_APPLICABLE:<16}|" == "not applicable  |" and str(RefineKind.FIX) == "fix"  # as printed
    back = RefineStep.model_validate(written)
    assert back.kind is RefineKind.WIDTH_RULE and back.verdict is Verdict.NOT_APPLICABLE
    with pytest.raises(ValidationError, match="verdict"):
        RefineStep.model_validate({**written, "verdict": "maybe"})


def test_the_width_rule_fit_recovers_a_rule_and_measures_a_miss():
    grid = {"w0": np.arange(16, 129, 16.0), "wa": np.linspace(0.5, 128, 256), "wm": np.linspace(1.2, 4.0, 57)}
    widths, _ = regnet_widths(16, 16.0, 2.0, 8, 16)  # 16, 32, 64 x3, 128 x3
    error, fit = fit_width_rule(widths, 16, 4, grid)
    assert error == 0 and regnet_widths(fit["w0"], fit["wa"], fit["wm"], 8, 16)[0] == widths
    error, _ = fit_width_rule([16, 48, 48, 64, 64, 64, 128, 128], 16, 4, grid)
    assert 0 < error < 0.2  # one block 1.5x off (log 1.5 / 8 blocks = 0.05) or so
    assert fit_width_rule([16, 16, 16], 16, 4, grid) == (float("inf"), None)  # 3 blocks cannot make 4 stages


# -- refine on a population with a known answer ----------------------------------------------------------
@pytest.mark.slow
def test_refine_finds_the_known_answer(population):
    data = study_data(load_run(population))
    refinement = refine(data, n_resamples=999)
    result = refinement.result
    assert isinstance(result, RefineResult)
    assert RefineResult.model_validate(json.loads(result.json_text())) == result  # refine.json reads back the same
    assert result.score.name == "loss" and result.members == 130
    steps = {(s.kind, s.knob): s for s in result.steps}
    widths = steps[(RefineKind.MONOTONE, "embed_dim")]
    assert widths.verdict == Verdict.ACCEPTED and widths.order == 1  # the strongest evidence, first
    assert widths.first_test.mean_difference_ci95[1] < -0.05  # about 0.1 nats better, as made
    mlp = steps[(RefineKind.TIE, "mlp_ratio")]
    assert mlp.verdict == Verdict.REJECTED and mlp.first_test.mean_difference_ci95[0] > 0.03  # 0.08 worse
    tested = (Verdict.ACCEPTED, Verdict.UNDECIDED, Verdict.REJECTED)
    assert steps[(RefineKind.TIE, "embed_dim")].verdict in tested  # tested, every value shared
    assert steps[(RefineKind.MONOTONE, "depth")].first_test is not None
    assert "embed_dim non-decreasing across stages" in result.accepted[0]
    space = refinement.space
    assert "embed_dim" in space.rules.monotone and len(result.knobs_after) < len(result.knobs_before)
    for spec in space.random_specs(30, seed=1, num_classes=10):
        assert list(spec.embed_dims) == sorted(spec.embed_dims)
    left = result.members_left  # those that satisfy every accepted constraint: fixes included
    assert left <= sum(1 for c in data.candidates if _nondecreasing_widths(c.spec))
    assert result.final_test.satisfying == left
    ordered = sorted((s for s in result.steps if s.test is not None), key=lambda s: s.order)
    shape = [s for s in ordered if s.kind != RefineKind.FIX]
    fixes = [s for s in ordered if s.kind == RefineKind.FIX]
    assert shape[0] is widths and ordered.index(shape[-1]) < ordered.index(fixes[0])  # the shape first
    for s in shape[1:]:  # re-tested within the members of the shape accepted before
        assert s.test.members <= widths.test.satisfying < 130
    assert all(s.test.members == 130 for s in fixes)  # each fix decided on all members
    assert sum(s.verdict == Verdict.ACCEPTED for s in fixes) >= 5  # nothing but widths and the tie matter
    assert len(space.distinct_specs(MIN_MODELS, 0, "check", CHECK_DRAWS, num_classes=10)) == MIN_MODELS
    floor = [s for s in fixes if "distinct in-budget models" in s.reason]
    for s in floor:  # a fix refused by the floor would leave too few models to verify the space
        assert s.verdict == Verdict.NOT_APPLICABLE and f"fewer than {MIN_MODELS}" in s.reason


def _nondecreasing_widths(spec: dict) -> bool:
    widths = [s["embed_dim"] for s in spec["stages"]]
    return widths == sorted(widths)


@pytest.mark.slow
def test_a_knob_the_monotone_rule_already_holds_at_one_value_is_no_tie_candidate(tmp_path):
    space = {**SPACE, "rules": {"monotone": ["depth"]}}
    space["stages"] = [{"sr_ratio": [1, 2], "depth": 2}, {"sr_ratio": 1}, {"sr_ratio": 1}, {"sr_ratio": 1}]
    population = make_population(tmp_path / "pop", n=40, space=space)  # depth 1-2 after a 2: always 2
    result = refine(study_data(load_run(population)), n_resamples=199).result
    assert (RefineKind.TIE, "depth") not in {(s.kind, s.knob) for s in result.steps}
    assert (RefineKind.TIE, "mlp_ratio") in {(s.kind, s.knob) for s in result.steps}


@pytest.mark.slow
def test_a_constraint_that_leaves_too_few_models_is_not_applicable(population, monkeypatch):
    import xnetspace.search.refine as refine_module

    monkeypatch.setattr(refine_module, "CHECK_DRAWS", 50)
    monkeypatch.setattr(refine_module, "MIN_MODELS", 51)  # more than 50 draws can find: every space too small
    result = refine(study_data(load_run(population)), n_resamples=199).result
    assert result.accepted == [] and result.knobs_after == result.knobs_before
    passed = [s for s in result.steps if s.first_test is not None and s.order is not None]
    assert passed and all(s.verdict == Verdict.NOT_APPLICABLE for s in passed)
    assert all("fewer than 51 distinct in-budget models" in s.reason for s in passed)


@pytest.mark.slow
def test_the_command_writes_the_refined_space_and_the_evidence(population, tmp_path):
    out = tmp_path / "refined"
    result = runner.invoke(app, ["refine", str(population), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == json.loads((out / "refine.json").read_text())
    RefineResult.model_validate(report)
    with pytest.raises(ValidationError, match="extra"):
        RefineResult.model_validate({**report, "surprise": 1})
    space = load_space(out / "refined_space.yaml")
    assert space.name == "pop_refined" and "embed_dim" in space.rules.monotone
    assert sorted(space.param_names()) == sorted(report["knobs_after"])
    text = (out / "refined_space.yaml").read_text()
    assert text.startswith("# pop_refined: refined by `xnetspace refine` from study pop (130 members")
    assert "1. embed_dim non-decreasing across stages" in text
    assert (out / "refine_edf.png").stat().st_size > 5000


@pytest.mark.slow
def test_verify_samples_the_refined_space_and_compares(tmp_path, monkeypatch):
    _use_fake_trainer(monkeypatch)
    population = make_population(tmp_path / "pop", n=40, seed=3)
    out = tmp_path / "refined"
    result = runner.invoke(
        app, ["refine", str(population), "--out", str(out), "--verify", "8", "--workers-per-device", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output and "knobs 2" in result.output and "verify: " in result.output
    report = json.loads((out / "refine.json").read_text())
    RefineResult.model_validate(report)
    checked = report["verify"]
    assert checked["requested"] == 8 and 2 <= checked["members"] <= 8
    assert checked["comparison"]["a"] == "pop_refined-verify" and checked["comparison"]["b"] == "pop"
    assert (out / "verify" / "analysis.json").is_file() and (out / "verify" / "edf.png").is_file()
    fresh = study_data(load_run(out / "verify"))
    refined = load_space(out / "refined_space.yaml")
    assert fresh.config.space == refined and fresh.settings["sampler"] == "random"
    for c in fresh.candidates:  # every fresh member lies in the refined space
        for knob in refined.rules.monotone:
            values = [s[knob] for s in c.spec["stages"]]
            assert values == sorted(values)


def _use_fake_trainer(monkeypatch) -> None:
    """Every training of a study goes to test_analysis.fake_trainer."""
    use_trainer(monkeypatch, fake_trainer)


# -- bad input -------------------------------------------------------------------------------------------
def test_refine_refuses_what_is_not_a_population(tmp_path):
    tpe = make_population(tmp_path / "tpe", n=25, sampler="tpe", pruner="median")
    result = runner.invoke(app, ["refine", str(tpe), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "is not a population study (sampler tpe, pruner median)" in result.output
    assert "Traceback" not in result.output
    small = make_population(tmp_path / "small", n=12)
    result = runner.invoke(app, ["refine", str(small), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "has 12 members with a stored spec; refine needs at least 20" in result.output
    result = runner.invoke(app, ["refine", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "does not exist" in result.output


RULE_SPACE = {  # non-decreasing widths already (a second round, as pycls's AnyNetXE before RegNet)
    "name": "pop_refined",
    "network": {"image_size": 16, "drop_path_rate": 0.0},
    "rules": {"monotone": ["embed_dim", "depth"]},
    "stage_defaults": {
        "depth": [1, 2, 3],
        "embed_dim": [16, 32, 48, 64, 96, 128],
        "mlp_ratio": [2, 4],
        "attn_ratio": 0.5,
        "num_heads": 1,
    },
    "stages": [{}, {}, {}, {}],
    "constraints": {"image_size": 16},
    "train": {"image_size": 16, "epochs": 1, "batch_size": 32},
}


@pytest.mark.slow
def test_the_width_rule_is_fitted_and_written_when_rule_networks_are_better(tmp_path):
    grid = {"w0": np.arange(8, 129, 8.0), "wa": np.linspace(0.5, 128, 64), "wm": np.linspace(1.2, 4.0, 29)}
    cache: dict = {}

    def follows(spec) -> bool:  # pycls's quantum 8: these stages (heads 1, attn_ratio 0.5) need no more
        blocks = [s.embed_dim for s in spec.stages for _ in range(s.depth)]
        return fit_width_rule(blocks, 8, 4, grid, cache)[0] <= FIT_TOLERANCE

    global known_error
    plain = known_error
    known_error = lambda spec: 0.4 - 0.1 * follows(spec)  # noqa: E731 - the truth of this population
    try:
        folder = make_population(tmp_path / "rule", n=90, seed=5, space=RULE_SPACE, name="rule")
    finally:
        known_error = plain
    result = runner.invoke(app, ["refine", str(folder), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    step = next(s for s in report["steps"] if s["kind"] == RefineKind.WIDTH_RULE)
    assert step["verdict"] == Verdict.ACCEPTED and step["first_test"]["mean_difference_ci95"][1] < 0
    space = load_space(tmp_path / "out" / "refined_space.yaml")
    assert space.name == "pop_refined2" and space.rules.width is not None and space.rules.width.quantum == 8
    assert "embed_dim" not in space.rules.monotone and "depth" not in space.rules.monotone  # the rule sets both
    assert not any(n.endswith(("embed_dim", "depth")) and n.startswith("stage") for n in space.param_names())
    rule = step["details"]["rule"]
    for spec in space.random_specs(10, seed=2, num_classes=10):  # the rule's networks: within its depth range
        blocks = [s.embed_dim for s in spec.stages for _ in range(s.depth)]
        low, high = (
            (rule["depth"]["low"], rule["depth"]["high"]) if isinstance(rule["depth"], dict) else (rule["depth"],) * 2
        )
        assert low <= len(blocks) <= high and blocks == sorted(blocks)


def test_analysis_splits_monotone_chains_into_stage_values(tmp_path):
    from xnetspace.search.analysis import analyze

    folder = make_population(tmp_path / "chains", n=24, seed=1, space=RULE_SPACE, name="chains")
    data = study_data(load_run(folder))
    for c in data.candidates:  # "stage1-4.embed_dim" = "16,32,32,64" became four numbers
        assert [c.knobs[f"stage{i}.embed_dim"] for i in range(1, 5)] == [s["embed_dim"] for s in c.spec["stages"]]
        assert not any("-" in k for k in c.knobs)
    assert data.distributions["stage2.depth"].low == 1 and data.distributions["stage2.depth"].high == 3
    study = analyze([data]).studies[0]
    assert {"stage1.embed_dim", "stage4.embed_dim", "stage3.depth"} <= set(study.marginals)
