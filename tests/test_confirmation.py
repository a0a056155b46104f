"""Confirmation: seeds, intervals, the confirmed winner, the budget-scaled baseline, fidelity, and
an interrupted confirmation that resumes without training anything twice."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import optuna
import pytest
from scipy import stats

from xnetspace import NetworkSpec, load_preset
from xnetspace.cost import count_flops
from xnetspace.scaling import ScalingError, scale_to_budget
from xnetspace.search import RunOptions, StudyConfig, run_search
from xnetspace.search.confirmation import CONFIRM_SUFFIX, ConfirmError, baseline_spec
from xnetspace.search.records import read_job, read_trial
from xnetspace.search.space import SearchSpace
from xnetspace.search.stats import (
    blocked_separation,
    mean_difference,
    pooled_seed_std,
    rank_fidelity,
    seed_summary,
    separation,
)
from xnetspace.search.study import candidates, pareto_front
from xnetspace.search.train import TrainConfig, TrainResult

from .conftest import use_trainer
from .test_search import SPACE


class SeedTrainer:
    """Proxy runs (seed 0) score wide networks high; confirmation runs (seeds 1, 2, ...) score
    narrow ones high, with a small seed effect: the confirmed winner is not the proxy's."""

    def __init__(self, interrupt_at=None):
        self.calls, self.interrupt_at = [], interrupt_at

    def __call__(self, spec, data, config, device, report=None):
        self.calls.append((spec.digest(), config.seed, config.epochs))
        confirming = [c for c in self.calls if c[1] != 0]
        if config.seed != 0 and len(confirming) == self.interrupt_at:
            raise KeyboardInterrupt
        width = float(sum(spec.embed_dims))
        top1 = width / 2 if config.seed == 0 else 100 - width / 2 + 0.1 * config.seed
        loss = 10 / width + 0.01 * config.seed  # the wide networks' cross-entropy is lowest
        for epoch in range(config.epochs):
            if report is not None:
                report(epoch, TrainResult(history=[top1] * (epoch + 1), loss_history=[loss] * (epoch + 1)))
        return TrainResult(history=[top1] * config.epochs, loss_history=[loss] * config.epochs, seconds=0.01)


def make(tmp_path, n_trials=8, **options):
    options.setdefault("fidelity_sample", 0)
    options.setdefault("baseline", "none")  # these tests ask for the controls they are about
    config = StudyConfig(
        space=SearchSpace.model_validate(SPACE),
        dataset="synthetic:128",
        objective="top1",
        train=TrainConfig(image_size=16, epochs=2, batch_size=32),
    )
    return config, RunOptions(
        n_trials=n_trials,
        out=tmp_path / "out",
        study_name="s",
        progress=False,
        heartbeat=1,
        workers_per_device=1,
        sampler="random",
        pruner="none",
        **options,
    )


@pytest.fixture
def trainer(monkeypatch):
    fake = SeedTrainer()
    use_trainer(monkeypatch, fake)
    return fake


# -- statistics against scipy on known numbers --------------------------------------------------------
def test_seed_summary_is_the_t_interval():
    s = seed_summary([96.0, 97.0, 98.0])
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, 2) x s / sqrt(n), s = 1
    assert s["mean"] == pytest.approx(97.0) and s["std"] == pytest.approx(1.0) and s["n"] == 3
    assert s["ci95"] == pytest.approx([97.0 - half, 97.0 + half])
    assert math.isnan(seed_summary([97.0])["ci95"][0])


def test_mean_difference_is_welchs_interval():
    a, b = [97.1, 96.4, 97.9, 97.0], [95.2, 96.0, 95.5]
    d = mean_difference(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d["mean"] == pytest.approx(np.mean(a) - np.mean(b))
    assert d["ci95"] == pytest.approx([ref.low, ref.high])
    assert d["distinguishable"] == (ref.low > 0)
    assert not mean_difference([97.0, 96.0], [96.5, 97.5])["distinguishable"]  # CI contains 0


def test_pooled_seed_std():
    assert pooled_seed_std([[1.0, 3.0], [2.0, 2.0, 2.0], [5.0]]) == pytest.approx(math.sqrt(2.0 / 3.0))


def test_separation_is_the_one_way_anova():
    groups = [[96.1, 96.4, 96.3], [95.0, 95.2, 94.9], [96.2, 96.0]]
    sep = separation(groups)
    expected = stats.f_oneway(*groups)
    assert sep["f"] == pytest.approx(expected.statistic) and sep["p"] == pytest.approx(expected.pvalue)
    assert sep["separated"] and sep["n"] == 3
    assert sep["between_std"] == pytest.approx(np.std([96.2667, 95.0333, 96.1], ddof=1), abs=1e-3)
    assert sep["seed_std"] == pytest.approx(pooled_seed_std(groups))
    assert sep["architecture_std"] == pytest.approx(math.sqrt(sep["between_std"] ** 2 - sep["seed_std"] ** 2 / (8 / 3)))
    same = separation([[96.0, 96.5], [96.5, 96.0], [96.2, 96.3]])  # equal means: nothing beyond noise
    assert not same["separated"] and same["p"] > 0.9
    assert separation([[96.0, 96.0], [95.0, 95.0]])["separated"]  # no seed noise at all, different means
    assert math.isnan(separation([[96.0, 96.5], [95.0]])["f"])  # one spec with 2+ scores: no test


def test_blocked_separation_is_the_paired_test_and_takes_out_the_shared_seed_shift():
    a, b = [0.461, 0.466, 0.470, 0.458], [0.464, 0.468, 0.474, 0.460]
    paired = stats.ttest_rel(a, b)  # for two specs the block design's F is the paired t squared
    two = blocked_separation([a, b])
    assert two["f"] == pytest.approx(paired.statistic**2) and two["p"] == pytest.approx(paired.pvalue)
    rng = np.random.default_rng(0)
    effect, shift = np.array([0.0, 0.004, 0.008, 0.012]), np.array([0.0, 0.02, -0.015])  # seeds move all alike
    scores = effect[:, None] + shift[None, :] + rng.normal(0, 0.001, (4, 3))
    assert not separation(scores.tolist())["separated"]  # the shared shift hides the specs from one-way ANOVA
    blocked = blocked_separation(scores.tolist())
    assert blocked["p"] < 0.001 and blocked["seed_p"] < 0.001 and blocked["residual_std"] < 0.002
    moved = blocked_separation((scores + np.array([0.1, -0.2, 0.3])).tolist())  # other seed shifts: same test
    assert moved["f"] == pytest.approx(blocked["f"])
    assert math.isnan(blocked_separation([[0.5, 0.6]])["f"])  # one spec: no test
    with pytest.raises(ValueError, match="same seeds"):
        blocked_separation([[0.5, 0.6], [0.5]])


def test_rank_fidelity_on_known_rankings():
    f = rank_fidelity([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert f["kendall_tau"] == pytest.approx(0.6)  # 8 concordant, 2 discordant pairs of 10
    assert f["spearman_rho"] == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    assert f["n"] == 5
    for name in ("kendall_tau", "spearman_rho"):
        lo, hi = f["ci95"][name]
        assert -1 <= lo <= f[name] <= hi <= 1
    assert math.isnan(rank_fidelity([1, 2], [2, 1])["kendall_tau"])  # too few to rank


# -- budget scaling -------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["transxnet_t", "transxnet_s", "transxnet_b"])
@pytest.mark.parametrize("max_flops,size", [(3_000_000, 32), (60_000_000, 64), (900_000_000, 224)])
def test_scaled_presets_land_inside_the_budget(preset, max_flops, size):
    spec = scale_to_budget(load_preset(preset), max_flops, size, network={"num_classes": 10})
    flops = count_flops(spec, (size, size))
    assert 0.85 * max_flops <= flops <= max_flops  # close to the maximum, never past it
    assert NetworkSpec.model_validate(spec.model_dump()) == spec  # a valid spec
    assert len(spec.stages) == 4 and spec.num_classes == 10


def test_scaling_refuses_a_budget_it_cannot_meet():
    with pytest.raises(ScalingError, match="fits the budget"):
        scale_to_budget(load_preset("transxnet_t"), 1_000, 32)
    space = SearchSpace.model_validate(
        {**SPACE, "constraints": {"image_size": 16, "flops": [0, "200k"], "max_params": "1k"}}
    )
    with pytest.raises(ConfirmError, match="--baseline transxnet_t"):
        baseline_spec("transxnet_t", space, 8, 3)


def test_the_baseline_is_counted_like_the_candidates():
    space = SearchSpace.model_validate({**SPACE, "network": {"image_size": 16, "drop_path_rate": 0.0}})
    spec = baseline_spec("transxnet_t", space, 8, 3)  # the space's fixed fields and the data's classes
    assert (spec.image_size, spec.num_classes, spec.in_chans) == (16, 8, 3)
    assert count_flops(spec, (16, 16)) <= 200_000


# -- the confirmation phase ------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_winner_is_the_best_confirmed_mean_not_the_best_proxy(tmp_path, trainer):
    config, options = make(tmp_path, confirm_top=3, confirm_seeds=2, confirm_epochs=3, baseline="transxnet_t")
    outcome = run_search(config, options)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    cands = summary["candidates"]
    assert len(cands) == 3 and all(c["confirm"]["n"] == 2 and len(c["confirm"]["scores"]) == 2 for c in cands)
    proxy_best = max(cands, key=lambda c: c["proxy_top1"])
    assert summary["best"]["trial"] == max(cands, key=lambda c: c["confirm"]["mean"])["trial"] != proxy_best["trial"]
    assert outcome.best.number == summary["best"]["trial"]
    assert f"trial {summary['best']['trial']}, confirmed top-1" in (tmp_path / "out" / "best_spec.yaml").read_text()
    # the proxy ranks the candidates backwards: tau = -1 over the 3 confirmed ones
    assert summary["fidelity"]["n"] == 3 and summary["fidelity"]["kendall_tau"] == pytest.approx(-1.0)
    base = summary["baseline"]
    assert base["name"].startswith("transxnet_t_x") and base["flops"] <= 200_000 and base["confirm"]["n"] == 2
    assert summary["difference"]["mean"] == pytest.approx(summary["best"]["confirm"]["mean"] - base["confirm"]["mean"])
    assert summary["noise"]["seed_std"] == pytest.approx(0.1 / math.sqrt(2))  # seeds 1, 2 differ by 0.1
    # confirmation used new seeds and the longer schedule, each run once
    confirm_calls = [c for c in trainer.calls if c[1] != 0]
    assert {c[1] for c in confirm_calls} == set(summary["protocol"]["seeds"]) == {1000, 1001}  # never a proxy seed
    assert {c[2] for c in confirm_calls} == {3}
    assert len(confirm_calls) == len(set(confirm_calls)) == 4 * 2
    rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert "confirm_mean" in rows[0] and sum(1 for r in rows[1:] if r.split(",")[-1] != "") >= 1
    assert (tmp_path / "out" / "fidelity.png").stat().st_size > 0


@pytest.mark.slow
def test_a_loss_study_ranks_and_confirms_by_cross_entropy(tmp_path, trainer):
    config, options = make(tmp_path, confirm_top=3, confirm_seeds=2, confirm_epochs=3, baseline="transxnet_t")
    config = config.model_copy(update={"objective": "loss"})
    outcome = run_search(config, options)
    summary = outcome.summary
    assert outcome.study.direction == optuna.study.StudyDirection.MINIMIZE
    assert summary.score.model_dump() == {"name": "loss", "unit": "nats", "direction": "minimize"}
    cands = summary.candidates
    searched = sorted(t.value for t in candidates(outcome.study))
    assert sorted(c.proxy_score for c in cands) == pytest.approx(searched[:3])  # the lowest proxy losses
    # lowest confirmed cross-entropy wins (the widest), where top-1 would have picked the narrowest
    assert summary.best.trial == min(cands, key=lambda c: c.confirm.mean).trial
    assert summary.best.trial != max(cands, key=lambda c: c.confirm_top1.mean).trial
    assert all(
        c.confirm.scores == pytest.approx([10 / (2 * c.proxy_top1) + 0.01 * s for s in (1000, 1001)]) for c in cands
    )
    assert all(
        c.confirm_top1.scores == pytest.approx([100 - c.proxy_top1 + 0.1 * s for s in (1000, 1001)]) for c in cands
    )
    assert summary.difference.mean == pytest.approx(summary.best.confirm.mean - summary.baseline.confirm.mean)
    assert summary.fidelity.kendall_tau == pytest.approx(1.0)  # the proxy loss ranks as the confirmed one
    assert summary.separation_top1.candidates.model_dump() == separation([c.confirm_top1.scores for c in cands])
    assert outcome.best.number == summary.best.trial
    assert "confirmed cross-entropy" in (tmp_path / "out" / "best_spec.yaml").read_text()
    header = (tmp_path / "out" / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[3:5] == ["top1", "loss"]


@pytest.mark.slow
def test_random_control_and_fidelity_sample(tmp_path, trainer):
    config, options = make(tmp_path, n_trials=5, confirm_top=2, confirm_seeds=2, baseline="random:3", fidelity_sample=2)
    outcome = run_search(config, options)
    summary = outcome.summary
    assert summary.baseline.name.startswith("best of random:3") and summary.baseline.confirm.n == 2
    assert summary.fidelity.n == 2 + 2  # the confirmed candidates and the random sample
    assert len(summary.fidelity_sample) == 2 and all(x.confirm.n == 2 for x in summary.fidelity_sample)
    assert summary.separation.candidates.n == 2
    assert summary.separation.all.n == 2 + 2 + 1  # candidates, random sample, baseline
    searched = len([t for t in outcome.study.get_trials() if read_trial(t).runs and read_trial(t).duplicate_of is None])
    proxy_runs = [c for c in trainer.calls if c[1] == 0]
    assert len(proxy_runs) == searched + 3  # each of the 3 random specs got one proxy run
    assert summary.pending == 0


def test_more_candidates_asked_than_completed_confirms_what_there_is(tmp_path, trainer, capsys):
    config, options = make(tmp_path, n_trials=2, confirm_top=5, confirm_seeds=2)
    options.progress = True
    summary = run_search(config, options).summary
    assert len(summary.candidates) <= 2
    assert "completed candidates to confirm (--confirm-top 5)" in capsys.readouterr().out


@pytest.mark.slow
def test_an_interrupted_confirmation_resumes_without_training_twice(tmp_path, monkeypatch):
    config, options = make(tmp_path, n_trials=4, confirm_top=2, confirm_seeds=3)
    first = SeedTrainer(interrupt_at=4)  # Ctrl-C in the 2nd confirmation job (each job: one spec, 3 seeds)
    use_trainer(monkeypatch, first)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, options)
    done_before = [c for c in first.calls if c[1] != 0][:3]  # the first job's three runs, which finished
    second = SeedTrainer()
    use_trainer(monkeypatch, second)
    summary = run_search(config, options).summary
    assert [c for c in second.calls if c[1] == 0] == []  # no search trial retrained
    assert not set(done_before) & set(second.calls)  # no finished confirmation job retrained
    assert len(second.calls) == len(set(second.calls)) == 3  # the interrupted job, whole (its seeds train as one pack)
    assert all(c.confirm.n == 3 for c in summary.candidates) and summary.pending == 0
    storage = options.storage_url
    jobs = optuna.load_study(study_name="s" + CONFIRM_SUFFIX, storage=storage).get_trials()
    assert sum(len(read_job(t).runs) for t in jobs if t.state == optuna.trial.TrialState.COMPLETE) == 6


def test_population_studies_still_measure_the_seed_noise(tmp_path, trainer):
    config, options = make(tmp_path, n_trials=4, confirm_top=0, confirm_seeds=3)
    summary = run_search(config, options).summary
    assert summary.candidates == [] and summary.best is None
    assert summary.noise.proxy_seed_std == pytest.approx(0.1)  # seeds 1, 2, 3 at the proxy recipe
    # an undefined statistic is NaN in the summary built and null in the file, which strict parsers read
    assert math.isnan(summary.noise.between_std)

    def refuse(word):
        raise ValueError(f"{word} is not JSON")

    written = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=refuse)
    assert written["noise"]["between_std"] is None and written["noise"]["seed_std"] == summary.noise.seed_std


def test_scores_know_their_direction():
    from xnetspace.search.records import RunRecord
    from xnetspace.search.score import LOSS, PROXIES, TOP1, score_of

    assert TOP1.improves(0.5) and not TOP1.improves(-0.5) and LOSS.improves(-0.01) and not LOSS.improves(0.01)
    assert sorted([96.0, 97.5, 95.0], key=TOP1.rank_key)[0] == 97.5
    assert sorted([0.31, 0.12, 0.2], key=LOSS.rank_key)[0] == 0.12
    assert score_of("loss") is LOSS and score_of("top1") is TOP1 and score_of("top1-flops") is TOP1
    run = RunRecord(seed=0, top1=[90.0, 95.0], loss=[0.4, 0.2], train_loss=[1.5, 0.5])
    assert TOP1.of_run(run) == 95.0 and LOSS.of_run(run) == 0.2 and PROXIES["tse"].of_run(run) == 2.0


@pytest.mark.slow
def test_confirmation_shows_its_progress(tmp_path, trainer, capsys):
    config, options = make(tmp_path, n_trials=4, confirm_top=2, confirm_seeds=2, baseline="random:2")
    options.progress = True
    run_search(config, options)
    out = capsys.readouterr()
    lines = (out.out + out.err).replace("\r", "\n").splitlines()
    confirmed = [line for line in lines if line.startswith("confirmed ")]
    assert any(line.startswith("confirmed baseline best of random:2: test_random") for line in confirmed)
    assert any(line.startswith("confirmed random test_random0 (proxy): top-1 ") for line in confirmed)
    candidates = [line for line in confirmed if line.startswith("confirmed candidate trial ")]
    assert len(candidates) == 2 and all(line.endswith("(2 seeds)") and "top-1 " in line for line in candidates)
    bars = [line for line in lines if line.startswith("confirmation:")]
    assert bars and any("100%" in line and ("job/s" in line or "s/job" in line) for line in bars)  # with its rate


@pytest.mark.slow
def test_a_latency_study_confirms_its_front_and_measures_it(tmp_path, trainer, monkeypatch):
    """A loss-latency study confirms its Pareto front first, then measures every confirmed network
    (front, scaled T, random specs) once and names the fastest not detectably worse than T."""
    import xnetspace.search.latency_report as latency_report

    from .test_search import _width_table

    def widths(models, *args, **kwargs):  # a deterministic stand-in for the timer
        return [float(sum(spec.embed_dims)) for spec, _ in models]

    monkeypatch.setattr(latency_report, "fastest_latencies", widths)
    _width_table(SearchSpace.model_validate(SPACE), tmp_path / "table.json")
    space = {**SPACE, "constraints": {**SPACE["constraints"], "latency_table": str(tmp_path / "table.json")}}
    config, options = make(tmp_path, confirm_top=3, confirm_seeds=2, baseline="transxnet_t", fidelity_sample=2)
    config = config.model_copy(update={"objective": "loss-latency", "space": SearchSpace.model_validate(space)})
    outcome = run_search(config, options)
    front = sorted(pareto_front(outcome.study), key=lambda t: t.values[0])
    confirmed = {c.trial for c in outcome.summary.candidates}
    assert len(confirmed) == 3 and confirmed <= {t.number for t in front} and front[0].number in confirmed
    data = json.loads((tmp_path / "out" / "pareto.json").read_text())
    rows = data["rows"]
    assert Counter(r["role"] for r in rows) == {"front": min(3, len(front)), "baseline": 1, "random": 2}
    assert all(r["measured_ms"] == sum(NetworkSpec.model_validate(r["spec"]).embed_dims) for r in rows)
    control = next(r for r in rows if r["role"] == "baseline")
    fits = [
        r
        for r in rows
        if r["role"] == "front"
        and stats.ttest_ind(
            r["confirm"]["scores"], control["confirm"]["scores"], equal_var=False, alternative="greater"
        ).pvalue
        >= 0.05
    ]
    answer = data["answer"]
    assert answer["found"] == (min(fits, key=lambda r: r["measured_ms"])["label"] if fits else None)
    assert (tmp_path / "out" / "confirmed_latency.png").stat().st_size > 0
