"""The tabular benchmark (issue 30): a space enumerated exactly, tabulated end to end (resumed after an
interruption, nothing trained twice), read back with xnetspace.bench, replayed by every sampler,
and its fidelity read without training."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from typer.testing import CliRunner

import xnetspace.search.jobs as jobs_module
from xnetspace import bench
from xnetspace.cli import app
from xnetspace.cost import cost_report
from xnetspace.search.bench_fidelity import table_fidelity
from xnetspace.search.data import load_dataset
from xnetspace.search.evolution import RegularizedEvolutionSampler
from xnetspace.search.fidelity_report import report_lines
from xnetspace.search.fidelity_schema import FidelityResult, TableInfo
from xnetspace.search.progress import remaining_seconds
from xnetspace.search.replay import ReplayConfig, run_replay
from xnetspace.search.replay_protocol import fidelity_positions, run_protocol
from xnetspace.search.replay_search import (
    STUCK_REPEATS,
    Oracle,
    replay_sampler,
    run_search,
    seed_positions,
    study_config,
)
from xnetspace.search.space import SearchSpace, SpaceError
from xnetspace.search.space_grid import FixedTrial, enumerate_space, parameter_grid
from xnetspace.search.study import RunOptions, make_pruner, make_sampler
from xnetspace.search.synthetic_table import synthetic_table
from xnetspace.search.tabulate import TabulateConfig, run_tabulate
from xnetspace.search.train import train_seeds

runner = CliRunner()

# Four specs (stage 1 width 8 or 16, stage 2 one or two heads), 8x8 images, one epoch: seconds.
TINY = {
    "name": "tiny4",
    "network": {"image_size": 8},
    "stage_defaults": {"depth": 1, "mlp_ratio": 1},
    "stages": [{"embed_dim": [8, 16], "sr_ratio": 2}, {"embed_dim": 16, "num_heads": [1, 2]}],
    "constraints": {"image_size": 8, "flops": [0, "200k"]},
    "train": {"image_size": 8, "epochs": 1, "batch_size": 16},
}

# A larger space for replays (no training): 432 combinations of 7 parameters, some over budget.
WIDE = {
    "name": "wide",
    "network": {"image_size": 8},
    "stage_defaults": {"depth": {"low": 1, "high": 3}, "mlp_ratio": [1, 2]},
    "stages": [{"embed_dim": [8, 16, 24], "sr_ratio": 2}, {"embed_dim": [16, 32], "num_heads": [1, 2]}],
    "constraints": {"image_size": 8, "flops": [0, "60k"]},
    "train": {"image_size": 8, "epochs": 3, "batch_size": 16},
}


def in_process(target, devices, arguments, first_worker=0, monitor=None):
    """spawn_workers in this process: one single-thread worker (the counting wrapper is patched
    here; one thread, as a worker on a shared core gets: two threads on busy cores crawl)."""
    threads = torch.get_num_threads()
    try:
        target(*arguments(0, devices[0], 1))
    finally:
        torch.set_num_threads(threads)
    if monitor is not None:
        monitor.poll()
    return []


# -- enumeration ---------------------------------------------------------------------------------------
def test_a_space_is_enumerated_exactly():
    space = SearchSpace.model_validate(WIDE)
    found = enumerate_space(space, num_classes=10, in_chans=1)
    grid = parameter_grid(space, num_classes=10, in_chans=1)
    assert set(grid) == set(space.param_names())
    assert found.combinations == math.prod(len(v) for v in grid.values()) == 3 * 2 * 3 * 2 * 2 * 3 * 2
    budget = space.constraints.flops[1]
    assert all(cost_report(s, 8).flops <= budget for s in found.specs)
    assert len({s.digest() for s in found.specs}) == len(found.specs)
    assert found.over_budget > 0 and found.invalid + found.over_budget + found.repeats + len(found.specs) == (
        found.combinations
    )
    for spec, knobs in zip(found.specs, found.knobs):  # each spec's knobs sample it again
        assert space.sample(FixedTrial(knobs), num_classes=10, in_chans=1).digest() == spec.digest()


def test_a_space_that_cannot_be_enumerated_is_refused_naming_why():
    continuous = {**WIDE, "stage_defaults": {"depth": 1, "mlp_ratio": {"low": 1.0, "high": 2.0}}}
    with pytest.raises(SpaceError, match=r"stage1.mlp_ratio is a continuous range \[1, 2\]"):
        enumerate_space(SearchSpace.model_validate(continuous))
    with pytest.raises(SpaceError, match=r"has 432 combinations of its 7 parameters \(stage1.depth 3, .*at most 10"):
        enumerate_space(SearchSpace.model_validate(WIDE), max_combinations=10)
    latency = {**TINY, "constraints": {**TINY["constraints"], "max_latency_ms": 5}}
    with pytest.raises(SpaceError, match="latency budget"):
        enumerate_space(SearchSpace.model_validate(latency))


# -- tabulation ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A real table of TINY on synthetic:64 (2 seeds, 1 epoch), interrupted after two jobs and
    resumed; returns (folder, trained job count per digest, the two runs' metas)."""
    out = tmp_path_factory.mktemp("table") / "t"
    mp = pytest.MonkeyPatch()
    trained: dict[str, int] = {}
    real, state = jobs_module.train_seeds, {"resumed": False}

    def counting(spec, data, seeds, config, device="cpu", report=None, pack=True, score_test=False):
        if len(trained) == 2 and not state["resumed"]:
            raise KeyboardInterrupt  # the first sitting ends here
        trained[spec.digest()] = trained.get(spec.digest(), 0) + 1
        return real(spec, data, seeds, config, device, report, pack, score_test)

    mp.setattr(jobs_module, "train_seeds", counting)
    mp.setattr("xnetspace.search.workers.spawn_workers", in_process)
    config = TabulateConfig(space=SearchSpace.model_validate(TINY), dataset="synthetic:64", seeds=2)
    with pytest.raises(SystemExit):  # a worker's Ctrl-C (workers.guarded)
        run_tabulate(config, out, progress=False, latency_seconds=0.01)
    assert not (out / "table.csv").exists() and sum(trained.values()) == 2
    state["resumed"] = True
    first = run_tabulate(config, out, progress=False, latency_seconds=0.01)
    again = run_tabulate(config, out, progress=False, latency_seconds=0.01)  # all done: trains nothing
    mp.undo()
    return out, trained, (first, again)


@pytest.mark.slow
def test_tabulate_trains_every_spec_once_and_resumes_after_an_interruption(table):
    out, trained, (meta, again) = table
    assert len(trained) == 4 + 1 and set(trained.values()) == {1}  # 4 specs and the reference, each once
    assert len(meta["sittings"]) == 2 and len(again["sittings"]) == 3
    assert again["sittings"][-1]["jobs_finished"] == 0
    assert [s["jobs_finished"] for s in meta["sittings"]] == [2, 3]  # the interrupted job was trained again
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert len(rows) == 5 * 2 * 1  # (specs + reference) x seeds x epochs
    assert {r["role"] for r in rows} == {"space", "reference"}
    assert {"stage1.embed_dim", "stage2.num_heads", "val_loss", "test_top1", "latency_ms", "naswot"} <= set(rows[0])
    assert meta["enumeration"]["specs"] == 4 and meta["seeds"] == [0, 1]
    assert meta["score"]["test"] == "validation split"  # synthetic has no test split, and says so
    assert meta["space_hash"] and meta["versions"]["torch"] and meta["machine"]["cpu_count"]
    assert meta["reference"]["name"].startswith("transxnet_t") and meta["failed"] == []


def test_the_table_reads_back_through_the_query_api(table):
    out, _, _ = table
    t = bench.load(out)
    assert [e.index for e in t.specs()] == [0, 1, 2, 3] and t.seeds == [0, 1] and t.epochs == 1
    best = t.best()
    assert best.mean("test_loss") == min(e.mean("test_loss") for e in t.specs())
    runs = t.runs(best.digest)
    assert [r.seed for r in runs] == [0, 1] and all(r.pack == 2 and r.seconds[0] > 0 for r in runs)
    assert all(math.isfinite(v) for e in t.specs() for v in (e.latency_ms, *e.zero_cost.values()))
    assert t.network(best.index).digest() == best.digest
    assert t.reference is not None and t.network("reference").digest() == t.reference.digest
    assert set(best.knobs) == {"stage1.embed_dim", "stage2.num_heads"}
    with pytest.raises(bench.BenchError, match="no spec 9"):
        t.entry(9)


def test_a_table_that_does_not_match_its_meta_file_is_refused(table, tmp_path):
    out, _, _ = table
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "meta.json").write_text((out / "meta.json").read_text())
    (copy / "table.csv").write_text((out / "table.csv").read_text().replace("space", "spaces", 1))
    with pytest.raises(bench.BenchError, match="does not match"):
        bench.load(copy)


@pytest.fixture
def one_thread():
    """One torch thread, as a worker on a shared core has (two threads on busy cores crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_scores_the_test_split_each_epoch_without_changing_the_run(one_thread):
    data = load_dataset("digits:64", 8)
    space = SearchSpace.model_validate(TINY)
    spec = enumerate_space(space, num_classes=10, in_chans=1).specs[0]
    recipe = space.train.model_copy(update={"epochs": 2})
    plain = train_seeds(spec, data, [0, 1], recipe)
    both = train_seeds(spec, data, [0, 1], recipe, score_test=True)
    for a, b in zip(plain, both):
        assert a.loss_history == pytest.approx(b.loss_history) and a.history == b.history  # training untouched
        assert len(b.test_loss_history) == len(b.seconds_history) == 2 and not a.test_loss_history
        assert b.test_loss_history != b.loss_history  # another split
        assert b.seconds_history[0] < b.seconds_history[1]


def test_tabulate_refuses_more_specs_than_max_specs_naming_the_count(tmp_path):
    space = tmp_path / "wide.yaml"
    space.write_text(json.dumps(WIDE))
    result = runner.invoke(
        app, ["tabulate", str(space), "--dataset", "synthetic:64", "--max-specs", "3", "--out", str(tmp_path / "t")]
    )
    assert result.exit_code == 2, result.output
    found = len(enumerate_space(SearchSpace.model_validate(WIDE), num_classes=8, in_chans=3).specs)
    assert f"has {found} distinct in-budget specs" in result.output and "--max-specs 3" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "t" / "tabulate.db").exists()


# -- replay --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("wide") / "t"
    synthetic_table(SearchSpace.model_validate(WIDE), out, seeds=3, epochs=3)
    return bench.load(out)


def test_replay_searches_as_the_study_does_and_never_reads_a_test_score(tmp_path):
    """Validation ranks the specs in the reverse order of the test split: a search that read test
    scores would find the best; one that reads validation scores, having seen every spec, picks
    the worst by test, in every repeat."""
    space = SearchSpace.model_validate(TINY)

    def reversed_scores(p, k, split):
        return 1.0 + 0.1 * p + 0.001 * k if split == "val" else 2.0 - 0.1 * p

    t = bench.load(synthetic_table(space, tmp_path / "t", seeds=2, epochs=2, scores=reversed_scores))
    oracle = Oracle.of(t)
    config = ReplayConfig(samplers=("random",), budgets=(40,), repeats=5)
    result = replay_sampler(oracle, "random", config, seed_positions(oracle, config))
    assert list(result["chosen"][40]) == [0] * 5  # lowest validation loss
    assert result["regret"][40] == pytest.approx([oracle.regret.max()] * 5) and oracle.regret.max() > 0


def test_over_budget_samples_are_rejected_as_the_study_rejects_them(wide_table):
    oracle = Oracle.of(wide_table)
    trace = run_search(oracle, optuna.samplers.RandomSampler(seed=0), 0, lambda t: len(t.chosen) >= 30)
    assert trace.rejected > 0 and len(trace.chosen) == 30  # rejections take no evaluation
    assert all(0 <= c < len(oracle.regret) for c in trace.chosen)
    assert trace.epochs[-1] == 3 * len({p for _, p, _ in trace.candidates})  # a repeated spec costs nothing


def test_every_sampler_replays_and_is_paired_with_random_search(wide_table, tmp_path):
    samplers = ("random", "tpe", "tpe-multivariate", "evolution", "protocol")
    config = ReplayConfig(samplers=samplers, budgets=(5, 12), repeats=6, seed=3)
    summary = run_replay(wide_table, config, tmp_path / "r", progress=False)
    rows = {(r["sampler"], r["budget"]): r for r in summary["rows"]}
    assert set(rows) == {(s, b) for s in samplers for b in (5, 12)}
    for (name, _), r in rows.items():
        assert r["repeats"] == 6 and r["mean_ci95"][0] <= r["mean_regret"] <= r["mean_ci95"][1]
        assert 0 <= r["top5"]["p"] <= 1 and (name == "random") == ("vs_random" not in r)
    # Evolution draws its first population (10) as RandomSampler(seed) draws: at 5 evaluations it is
    # random search itself, paired repeat by repeat.
    same = rows[("evolution", 5)]["vs_random"]
    assert same["mean_difference"] == 0 and same["ties"] == 6 and same["wilcoxon_p"] == 1
    protocol = rows[("protocol", 12)]
    assert protocol["evaluations"] > 12 and set(protocol["beats_control"]) == {"confirmed", "distinguishable", "true"}
    assert "vs_random_equal_compute" in protocol
    lines = list(csv.DictReader(open(tmp_path / "r" / "replay.csv")))
    assert len(lines) == 2 * 5 * 6  # budgets x samplers x repeats
    assert (tmp_path / "r" / "replay.png").stat().st_size > 0
    assert json.loads((tmp_path / "r" / "replay.json").read_text())["specs"] == len(wide_table.specs())


def test_gp_replays_with_fewer_repeats(tmp_path):
    t = bench.load(synthetic_table(SearchSpace.model_validate(TINY), tmp_path / "t", seeds=2, epochs=1))
    summary = run_replay(
        t, ReplayConfig(samplers=("random", "gp"), budgets=(12,), repeats=4, gp_repeats=2), None, False
    )
    rows = {r["sampler"]: r for r in summary["rows"]}
    assert rows["gp"]["repeats"] == 2 and rows["random"]["repeats"] == 4 and rows["gp"]["vs_random"]["n"] == 2


@pytest.mark.slow  # two analyses of the table: about 30 s
def test_a_tables_fidelity_is_one_result_written_once_and_read_back(tmp_path):
    """``xnetspace fidelity --table --out --json``: fidelity.json is the text --json prints, the
    returned FidelityResult's; precision@5 of 4 specs is undefined (NaN, null in the file); the file
    reads back into its model, which writes and reports it as the result did."""
    folder = synthetic_table(SearchSpace.model_validate(TINY), tmp_path / "t", seeds=2, epochs=2).parent
    result = table_fidelity(bench.load(folder))
    assert isinstance(result.config, TableInfo) and result.config.seeds == 2 and result.seconds_trained is None
    assert result.n_specs == 4 and all(math.isnan(s.precision_at_5) for s in result.scores)
    printed = runner.invoke(app, ["fidelity", "--table", str(folder), "--out", str(tmp_path / "o"), "--json"])
    assert printed.exit_code == 0, printed.output
    text = (tmp_path / "o" / "fidelity.json").read_text()
    assert text == printed.output == result.json_text() + "\n"
    data = json.loads(text)
    assert list(data) == ["target", "n_specs", "seeds", "ceiling", "scores", "noise", "racing", "config"]
    assert all(s["precision_at_5"] is None for s in data["scores"]) and "NaN" not in text
    read = FidelityResult.model_validate_json(text)
    assert read.scores[0].precision_at_5 is None and read.json_text() == result.json_text()
    assert report_lines(read) == report_lines(result) and "precision@5 nan" in report_lines(result)[1]


class _Always(optuna.samplers.BaseSampler):
    """Proposes the same parameters every time (as GPSampler does once pruned trials teach it nothing)."""

    def __init__(self, params):
        self.params = params

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.params[param_name]


def test_a_search_stuck_on_a_rejected_spec_ends_early(wide_table):
    oracle = Oracle.of(wide_table)
    corner = {name: values[-1] for name, values in parameter_grid(oracle.space, **oracle.network).items()}
    assert isinstance(oracle.lookup(FixedTrial(corner)), str)  # the largest corner is over budget
    trace = run_search(oracle, _Always(corner), 0, lambda t: len(t.chosen) >= 10)
    assert trace.ended_early and trace.rejected == STUCK_REPEATS and trace.chosen == []


def test_the_protocol_is_charged_for_every_run_it_trains(wide_table):
    """One default study of 8 trials (3-epoch runs): the search's and the control's runs, the 5
    random specs' proxy runs and 3 confirmation seeds of every distinct confirmed spec."""
    oracle = Oracle.of(wide_table)
    study = study_config(oracle, "loss")
    options = RunOptions(n_trials=8, seed=4).resolved(study)
    fidelity = fidelity_positions(oracle, study, options)
    row = run_protocol(oracle, 8, 4, 1, study, fidelity)
    search = run_search(
        oracle, make_sampler(study, options, 0), 1, lambda t: len(t.chosen) >= 8, make_pruner(study, options.pruner)
    )
    control = run_search(
        oracle,
        optuna.samplers.RandomSampler(seed=4 + 500_000),
        1,
        lambda t: t.spent >= search.spent or len(t.chosen) >= 100,
        make_pruner(study, options.pruner),
    )
    ranked = sorted(search.candidates, key=lambda c: (c[0], oracle.flops[c[1]], c[2]))[:5]
    best_control = min(control.candidates, key=lambda c: (c[0], oracle.flops[c[1]], c[2]))[1]
    confirmed = {p for _, p, _ in ranked} | {best_control} | set(fidelity)
    assert len(fidelity) == 5 and control.spent >= search.spent
    assert row["epochs"] == search.spent + control.spent + 5 * 3 + 3 * 3 * len(confirmed)
    means = {p: oracle.test[p, [2, 0]].mean() for _, p, _ in ranked}  # the seeds after the proxy's
    assert row["winner"] == min(means, key=lambda p: (means[p], oracle.flops[p]))


def test_regularized_evolution_mutates_one_knob_of_the_tournament_winner():
    sampler = RegularizedEvolutionSampler(population_size=4, tournament_size=4, seed=1)
    study = optuna.create_study(sampler=sampler)
    values = {"a": [1, 2, 3], "b": ["x", "y"], "c": [0.5, 1.0, 1.5]}

    def objective(trial):
        a = trial.suggest_categorical("a", values["a"])
        b = trial.suggest_categorical("b", values["b"])
        c = trial.suggest_float("c", 0.5, 1.5, step=0.5)
        return a + (b == "y") + c

    study.optimize(objective, n_trials=20)
    trials = study.trials
    for n in range(4, 20):
        population = trials[n - 4 : n]  # every trial completes: the last 4 are the population
        parent = min(population, key=lambda t: (t.value, t.number))  # tournament = the whole population
        changed = [k for k in values if trials[n].params[k] != parent.params[k]]
        assert len(changed) == 1
    with pytest.raises(ValueError, match="tournament_size"):
        RegularizedEvolutionSampler(population_size=3, tournament_size=4)


def test_remaining_seconds_is_fitted_to_job_sizes():
    done = [(1.0, 12.0), (3.0, 32.0)]  # 2 s + 10 s per unit of size
    assert remaining_seconds(done, [2.0, 4.0], [], workers=1) == pytest.approx(22 + 42)
    assert remaining_seconds(done, [2.0, 2.0], [(1.0, 5.0)], workers=2) == pytest.approx((22 + 22 + 7) / 2)
    assert remaining_seconds(done, [10.0], [], workers=4) == pytest.approx(102)  # the longest job bounds it
    assert remaining_seconds([], [1.0], [], workers=1) is None


# -- the command line ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_replay_and_fidelity_commands_on_a_real_table(table, tmp_path):
    out, _, _ = table
    result = runner.invoke(
        app,
        ["replay", str(out), "--samplers", "random,evolution,protocol", "--budget", "3,6"]
        + ["--repeats", "4", "--out", str(tmp_path / "r"), "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert len(summary["rows"]) == 3 * 2 and summary["reference"]["regret"] == pytest.approx(
        summary["reference"]["outcome"] - summary["best"]["outcome"]
    )
    result = runner.invoke(app, ["fidelity", "--table", str(out), "--json"])
    assert result.exit_code == 0, result.output
    fid = json.loads(result.output)
    names = {s["name"] for s in fid["scores"]}
    assert {"loss@1", "loss@2", "tse@1", "top1@1", "params", "flops", "naswot"} <= names
    assert fid["n_specs"] == 4 and fid["ceiling"]["seeds"] == 2
    read = FidelityResult.model_validate(fid)  # --json is fidelity.json's text: it reads back into its model
    assert isinstance(read.config, TableInfo) and read.config.seeds == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["replay", "nowhere", "--out", "o"], "does not exist"),
        (["replay", "TABLE", "--samplers", "random,annealing", "--out", "o"], "unknown sampler(s) ['annealing']"),
        (["replay", "TABLE", "--budget", "10,x", "--out", "o"], "--budget '10,x' must be comma-separated"),
        (["fidelity"], "fidelity takes SPACE and --out"),
        (["fidelity", "tiny_cpu", "--table", "TABLE"], "fidelity takes SPACE and --out"),
    ],
)
def test_bad_input_to_the_benchmark_commands_gets_one_paragraph(table, tmp_path, args, words):
    out, _, _ = table
    args = [str(out) if a == "TABLE" else str(tmp_path / a) if a in ("nowhere", "o") else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output


def test_synthetic_tables_are_marked_and_load(wide_table):
    assert wide_table.meta["synthetic"] is True and wide_table.reference is None
    assert np.isnan(wide_table.specs()[0].latency_ms)
    assert len(wide_table.specs()) == len(Path(wide_table.folder / "table.csv").read_text().splitlines()[1:]) // 9
