"""Seeds as evaluations (issue 19): candidates scored over several proxy seeds, racing over seeds,
zero-cost objectives, random search at equal compute as the control, the noise ceiling, and the
fidelity study."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from xnetspace.cli import app
from xnetspace.search import RunOptions, StudyConfig, run_search
from xnetspace.search.control import CONTROL_SUFFIX, spent
from xnetspace.search.fidelity import FidelityConfig, run_fidelity
from xnetspace.search.fidelity_runs import read_runs
from xnetspace.search.fidelity_schema import FidelityResult, StudyInfo
from xnetspace.search.fidelity_stats import analyze_runs
from xnetspace.search.records import read_trial
from xnetspace.search.space import SearchSpace
from xnetspace.search.stats import noise_ceiling, precision_at_k
from xnetspace.search.study import candidates, live_slots
from xnetspace.search.train import TrainConfig, TrainResult
from xnetspace.search.zero_cost import ZERO_COST, zero_cost_scores

from .conftest import tiny_spec, use_trainer
from .test_search import SPACE

runner = CliRunner()


class NoisyTrainer:
    """A proxy whose score is the network's true quality (wider is better) plus a seed effect:
    loss = 10 / width + noise(seed). Records every (spec, seed) it trains."""

    def __init__(self, noise: float = 0.002, interrupt=None):
        self.calls, self.noise, self.interrupt = [], noise, interrupt

    def __call__(self, spec, data, config, device, report=None):
        if self.interrupt is not None and self.interrupt(spec, config):
            raise KeyboardInterrupt
        self.calls.append((spec.digest(), config.seed, config.epochs))
        rng = np.random.default_rng(config.seed + 7 * sum(spec.embed_dims))
        loss = 10 / sum(spec.embed_dims) + self.noise * float(rng.normal())
        result = TrainResult()
        for epoch in range(config.epochs):
            result.history.append(100 - 10 * loss)
            result.loss_history.append(loss)
            result.train_loss_history.append(loss + 0.1)
            if report is not None:
                report(epoch, result)
        return result


def make(tmp_path, n_trials=8, objective="loss", proxy_seeds=1, race=None, **options):
    config = StudyConfig(
        space=SearchSpace.model_validate(SPACE),
        dataset="synthetic:128",
        objective=objective,
        train=TrainConfig(image_size=16, epochs=2, batch_size=32),
        proxy_seeds=proxy_seeds,
        race=race,
    )
    options.setdefault("confirm_top", 0)
    options.setdefault("confirm_seeds", 2)
    options.setdefault("fidelity_sample", 0)
    opts = RunOptions(
        n_trials=n_trials,
        out=tmp_path / "out",
        study_name="s",
        progress=False,
        heartbeat=1,
        sampler="random",
        pruner="none",
        workers_per_device=1,
        **options,
    )
    return config, opts


def test_a_candidate_is_scored_by_the_mean_over_its_proxy_seeds(tmp_path, monkeypatch):
    trainer = NoisyTrainer()
    use_trainer(monkeypatch, trainer)
    config, options = make(tmp_path, n_trials=5, proxy_seeds=3)
    study = run_search(config, options).study
    for t in candidates(study):
        record = read_trial(t)
        assert [r.seed for r in record.runs] == [0, 1, 2]
        assert t.value == pytest.approx(np.mean([r.loss[-1] for r in record.runs]))
        assert set(record.zero_cost) == set(ZERO_COST)
    trained = [(d, s) for d, s, _ in trainer.calls]
    assert len(trained) == len(set(trained))  # no (spec, seed) trained twice
    rows = list(csv.DictReader(open(options.out / "trials.csv")))
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert done and all(r["n_seeds"] == "3" and r["loss_seed2"] and r["naswot"] and r["tse"] for r in done)
    assert float(done[0]["proxy"]) == pytest.approx(
        np.mean([float(done[0][f"loss_seed{s}"]) for s in range(3)]), rel=1e-5
    )


@pytest.mark.slow
def test_racing_gives_a_clearly_worse_candidate_no_more_seeds(tmp_path, monkeypatch):
    """Widths 8..24 and 16..48: losses from 0.21 to 0.42 against a seed noise of 0.002, so after a
    few candidates with every seed, a narrow one is hopeless after its first seeds."""
    trainer = NoisyTrainer(noise=0.002)
    use_trainer(monkeypatch, trainer)
    config, options = make(tmp_path, n_trials=14, proxy_seeds=4, race=1.0)
    study = run_search(config, options).study
    records = [read_trial(t) for t in candidates(study)]
    raced = [r for r in records if r.race]
    full = [r for r in records if len(r.runs) == 4]
    assert raced and full, "some candidates got every seed, some were raced out after their first two"
    assert all(len(r.runs) == 2 and "worse than trial" in r.race for r in raced)
    best = min(records, key=lambda r: r.final("loss"))
    assert len(best.runs) == 4  # the winner is never raced out
    assert all(r.final("loss") > min(f.final("loss") for f in full) for r in raced)


@pytest.mark.slow
def test_a_retried_trial_trains_only_the_seeds_it_lacks(tmp_path, monkeypatch):
    """Ctrl-C in a trial's second pack of seeds: its first pack is kept; the retry trains the rest."""
    first = NoisyTrainer(interrupt=lambda spec, config: config.seed >= 1)
    use_trainer(monkeypatch, first)
    config, options = make(tmp_path, n_trials=1, proxy_seeds=2)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, options)
    study = optuna.load_study(study_name="s", storage=options.storage_url)
    failed = study.get_trials()[-1]
    assert [r.seed for r in read_trial(failed).runs] == [0]
    optuna.storages.RetryFailedTrialCallback()(study, failed)  # what the heartbeat does for a killed worker
    second = NoisyTrainer()
    use_trainer(monkeypatch, second)
    study = run_search(config, options).study
    (done,) = live_slots(study)
    assert [s for _, s, _ in second.calls] == [1]  # seed 0 was not trained again
    assert [r.seed for r in read_trial(done).runs] == [0, 1]


def test_a_zero_cost_objective_trains_nothing(tmp_path, monkeypatch):
    trainer = NoisyTrainer()
    use_trainer(monkeypatch, trainer)
    config, options = make(tmp_path, n_trials=4, objective="naswot")
    study = run_search(config, options).study
    assert trainer.calls == [] and study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert all(t.value == read_trial(t).zero_cost["naswot"] for t in candidates(study))


@pytest.mark.slow
def test_random_search_at_equal_compute_is_the_default_control(tmp_path, monkeypatch):
    use_trainer(monkeypatch, NoisyTrainer())
    config, options = make(tmp_path, n_trials=6, proxy_seeds=2, confirm_top=2, fidelity_sample=3)
    assert options.baselines == ["random:auto"]
    outcome = run_search(config, options)
    summary = outcome.summary
    control = optuna.load_study(study_name="s" + CONTROL_SUFFIX, storage=options.storage_url)
    search_spent, control_spent = spent(outcome.study), spent(control)
    assert summary.compute.search == search_spent and summary.compute.control == control_spent
    assert search_spent <= control_spent < search_spent + config.proxy_seeds * config.train.epochs
    (base,) = summary.baselines
    assert base.name.startswith("random search at equal compute: trial ") and base.confirm.n == 2
    assert summary.baseline == base and summary.difference == base.difference
    best_control = min(candidates(control), key=lambda t: t.value)
    assert base.name.endswith(f"trial {best_control.number}")
    ceiling = summary.fidelity.ceiling
    assert ceiling.n == 2 + 3 and ceiling.seeds == 2 and -1 <= ceiling.kendall_tau <= 1
    assert (
        summary.fidelity.fraction_of_ceiling == pytest.approx(summary.fidelity.kendall_tau / ceiling.kendall_tau)
        if ceiling.kendall_tau > 0
        else True
    )


@pytest.mark.slow
def test_a_preset_and_the_random_control_together(tmp_path, monkeypatch):
    use_trainer(monkeypatch, NoisyTrainer())
    config, options = make(tmp_path, n_trials=4, confirm_top=1, baseline="transxnet_t,random:auto")
    summary = run_search(config, options).summary
    names = [b.name for b in summary.baselines]
    assert names[0].startswith("transxnet_t_x") and names[1].startswith("random search at equal compute")
    assert summary.baseline.name == names[0]


def test_noise_ceiling_and_precision_on_known_numbers():
    rng = np.random.default_rng(0)
    quality = np.arange(12, dtype=float)
    exact = noise_ceiling(np.repeat(quality[:, None], 4, axis=1))  # seeds agree perfectly
    assert exact["kendall_tau"] == pytest.approx(1.0) and exact["splits"] == 3
    noisy = noise_ceiling(quality[:, None] + 50 * rng.normal(size=(12, 4)))  # seeds say nothing
    assert abs(noisy["kendall_tau"]) < 0.5 and noisy["ci95"][0] < noisy["kendall_tau"] < noisy["ci95"][1]
    assert precision_at_k([1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1], k=3) == 0.0
    assert precision_at_k([1, 2, 3, 9, 4], [1, 2, 3, 4, 9], k=3) == 1.0
    assert math.isnan(precision_at_k([1, 2], [1, 2], k=5))


@pytest.mark.slow
def test_zero_cost_scores_of_a_network_at_initialisation():
    from xnetspace.search.data import load_dataset

    data = load_dataset("synthetic:64", 32)
    spec = tiny_spec(num_classes=data.num_classes)
    scores = zero_cost_scores(spec, data, seed=0, batch_size=16)
    assert set(scores) == set(ZERO_COST) and all(math.isfinite(v) for v in scores.values())
    assert zero_cost_scores(spec, data, seed=0, batch_size=16) == scores  # the seed fixes everything
    assert zero_cost_scores(spec, data, seed=1, batch_size=16)["grad_norm"] != scores["grad_norm"]
    assert scores["naswot"] > 0 and scores["grad_norm"] > 0
    wider = tiny_spec(
        num_classes=data.num_classes, stages=[{**s.model_dump(), "embed_dim": 2 * s.embed_dim} for s in spec.stages]
    )
    assert zero_cost_scores(wider, data, seed=0, batch_size=16)["synflow"] > scores["synflow"]


@pytest.mark.slow
def test_the_fidelity_study_writes_its_runs_and_resumes_without_training(tmp_path, monkeypatch):
    trainer = NoisyTrainer(noise=0.001)
    use_trainer(monkeypatch, trainer)
    monkeypatch.setattr("xnetspace.search.workers.spawn_workers", _in_process)
    space = SearchSpace.model_validate(SPACE)
    config = FidelityConfig(space=space, dataset="synthetic:128", n_specs=6, seeds=2, train=space.train)
    result = run_fidelity(config, tmp_path / "f", progress=False)
    runs = read_runs(tmp_path / "f" / "runs.csv")
    assert len(runs) == 6 * 2 * 2 and {r.recipe for r in runs} == {"proxy", "confirm"}
    assert {r.run.seed for r in runs if r.recipe == "confirm"} == {1000, 1001}
    assert all(r.zero_cost["naswot"] for r in runs if r.recipe == "proxy")
    assert sorted({r.spec_index for r in runs}) == list(range(6))  # each spec's place in the pool
    again = analyze_runs(runs, seed=config.seed)  # the analysis from runs.csv alone
    assert [s.kendall_tau for s in again.scores] == pytest.approx([s.kendall_tau for s in result.scores])
    names = [s.name for s in result.scores]
    assert {"loss@1", "loss@2", "tse@1", "params", "flops", *ZERO_COST} <= set(names)
    loss = next(s for s in result.scores if s.name == "loss@2")
    assert loss.kendall_tau > 0.5  # the fake proxy ranks as the confirmation does, up to its noise
    text = (tmp_path / "f" / "fidelity.json").read_text()
    assert json.loads(text)["ceiling"]["seeds"] == 2
    assert text == result.json_text() + "\n"  # the file is the returned result, written once
    read = FidelityResult.model_validate_json(text)  # and reads back into its model, field by field
    assert isinstance(read.config, StudyInfo) and read.config.n_specs == 6 and read.config.split == "val"
    assert [s.name for s in read.scores] == names and read.seconds_trained == result.seconds_trained
    assert (tmp_path / "f" / "fidelity.png").stat().st_size > 0
    calls = len(trainer.calls)
    run_fidelity(config, tmp_path / "f", progress=False)
    assert len(trainer.calls) == calls  # resumed: everything was done, nothing trained again


def _in_process(target, devices, arguments, first_worker=0, monitor=None):
    """spawn_workers in this process (the fakes are patched here, not in spawned processes)."""
    for i, device in enumerate(devices[:1]):
        target(*arguments(i, device, None))
    return []


def test_fidelity_command_refuses_bad_input_in_one_paragraph(tmp_path):
    result = runner.invoke(app, ["fidelity", "tiny_cpu", "--n-specs", "1", "--out", str(tmp_path / "f")])
    assert result.exit_code == 2 and "n_specs" in result.output and "Traceback" not in result.output
