"""Studies: hard budgets, rejection and dedupe, failures that do not stop a study, resume after an
interruption or a SIGKILL, and several workers sharing one storage."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from typer.testing import CliRunner

import xnetspace.search.objective as objective_module
from xnetspace import build_model, load_spec
from xnetspace.cli import app
from xnetspace.cost import cost_report
from xnetspace.latency_table import LatencyTable, LatencyTableError, network_operators
from xnetspace.search import RunOptions, SearchError, StudyConfig, run_search
from xnetspace.search.records import is_live, read_trial
from xnetspace.search.results import pareto_front
from xnetspace.search.space import SearchSpace
from xnetspace.search.train import Diverged, TrainConfig, TrainResult
from xnetspace.spec import NetworkSpec

from .conftest import use_trainer

SPACE = {
    "name": "test",
    "stage_defaults": {"depth": 1, "mlp_ratio": [1, 2], "idconv_kernel_size": [3, 5]},
    "stages": [
        {"embed_dim": {"low": 8, "high": 24, "step": 8}, "sr_ratio": [2, 4], "attn_ratio": [0.5, 1.0]},
        {"embed_dim": {"low": 16, "high": 48, "step": 16}, "num_heads": [1, 2]},
    ],
    "constraints": {"image_size": 16, "flops": [0, "200k"]},
    "train": {"image_size": 16, "epochs": 2, "batch_size": 32},
}


def make(tmp_path, n_trials=6, space=None, objective="top1", **options):
    config = StudyConfig(
        space=SearchSpace.model_validate(space or SPACE),
        dataset="synthetic:128",
        objective=objective,
        train=TrainConfig(image_size=16, epochs=2, batch_size=32),
    )
    options.setdefault("confirm_top", 0)  # these tests are about the search; confirmation has its own
    options.setdefault("confirm_seeds", 1)
    options.setdefault("workers_per_device", 1)  # in-process, where the fake trainers are patched in
    opts = RunOptions(
        n_trials=n_trials,
        out=tmp_path / "out",
        study_name="s",
        progress=False,
        heartbeat=1,
        sampler=options.pop("sampler", "random"),
        **options,
    )
    return config, opts


class FakeTrainer:
    """Stands in for proxy training: records every spec that reaches it, returns a top-1 that
    grows with width (or raises what a test asks for)."""

    def __init__(self, fail=None):
        self.specs, self.fail = [], fail or {}

    def __call__(self, spec, data, config, device, report):
        self.specs.append(spec)
        error = self.fail.get(len(self.specs))
        if error is not None:
            raise error
        top1 = float(sum(spec.embed_dims)) / 2
        loss = 10 / top1
        for epoch in range(config.epochs):
            report(epoch, TrainResult(history=[top1] * (epoch + 1), loss_history=[loss] * (epoch + 1)))
        return TrainResult(history=[top1] * config.epochs, loss_history=[loss] * config.epochs, seconds=0.01)


def counted(study):
    return [t for t in study.get_trials() if is_live(t)]


@pytest.mark.slow
def test_no_over_budget_spec_ever_reaches_the_trainer(tmp_path, monkeypatch):
    trainer = FakeTrainer()
    use_trainer(monkeypatch, trainer)
    config, options = make(tmp_path, n_trials=12)
    outcome = run_search(config, options)
    low, high = config.space.constraints.flops
    assert len(trainer.specs) + sum(read_trial(t).duplicate_of is not None for t in counted(outcome.study)) == 12
    for spec in trainer.specs:
        assert low <= cost_report(spec, 16).flops <= high
    rejected = [t for t in outcome.study.get_trials() if read_trial(t).rejected]
    assert rejected, "this budget is tight enough that some samples must be rejected"
    assert all(read_trial(t).reason.startswith("over budget: FLOPs") for t in rejected)
    assert sum(read_trial(t).rejected_samples for t in counted(outcome.study)) == len(rejected)
    best = outcome.best
    assert read_trial(best).flops <= high and best.values[0] == max(t.values[0] for t in counted(outcome.study))
    best_spec = load_spec(outcome.files["best_spec"])
    assert cost_report(best_spec, 16).flops <= high and best_spec.num_classes == 8
    build_model(best_spec)


def test_identical_specs_are_trained_once(tmp_path, monkeypatch):
    trainer = FakeTrainer()
    use_trainer(monkeypatch, trainer)
    single = {
        **SPACE,
        "stage_defaults": {"depth": 1, "mlp_ratio": 1},
        "stages": [{"embed_dim": 8, "sr_ratio": 2}, {"embed_dim": 16}],
    }
    config, options = make(tmp_path, n_trials=3, space=single)
    study = run_search(config, options).study
    assert len(trainer.specs) == 1
    trials = counted(study)
    assert [read_trial(t).duplicate_of for t in trials] == [None, 0, 0]
    assert len({t.values[0] for t in trials}) == 1


def test_failing_trials_do_not_stop_the_study(tmp_path, monkeypatch):
    trainer = FakeTrainer(
        fail={
            1: Diverged("loss became nan at epoch 1, update 3"),
            2: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
            3: RuntimeError("something else broke"),
        }
    )
    use_trainer(monkeypatch, trainer)
    config, options = make(tmp_path, n_trials=5)
    study = run_search(config, options).study
    trials = counted(study)
    assert len(trials) == 5
    trained = [t for t in trials if read_trial(t).duplicate_of is None]
    states = {(read_trial(t).reason or "").split(":")[0]: t.state for t in trained[:3]}
    assert states == {
        "Diverged": optuna.trial.TrialState.PRUNED,
        "out of memory": optuna.trial.TrialState.FAIL,
        "RuntimeError": optuna.trial.TrialState.FAIL,
    }
    assert "something else broke" in read_trial(trained[2]).traceback
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 2
    rows = list(csv.DictReader(open(options.out / "trials.csv")))
    assert {"out of memory: CUDA out of memory. Tried to allocate 2 GiB"} <= {r["reason"] for r in rows}


@pytest.mark.slow
def test_pruner_stops_weak_trials(tmp_path, monkeypatch):
    class Weak(FakeTrainer):
        def __call__(self, spec, data, config, device, report):
            self.specs.append(spec)
            top1 = 90.0 if len(self.specs) <= 6 else 10.0  # later trials are far worse
            for epoch in range(config.epochs):
                report(epoch, TrainResult(history=[top1 + e for e in range(epoch + 1)]))
            return TrainResult(history=[top1, top1 + 1], seconds=0.01)

    use_trainer(monkeypatch, Weak())
    config, options = make(tmp_path, n_trials=9, space={**SPACE, "train": {**SPACE["train"], "epochs": 3}})
    config = config.model_copy(update={"train": TrainConfig(image_size=16, epochs=3, batch_size=32)})
    study = run_search(config, options).study
    pruned = [
        t for t in counted(study) if t.state == optuna.trial.TrialState.PRUNED and read_trial(t).duplicate_of is None
    ]
    assert pruned and all(read_trial(t).reason.startswith("pruner stopped it") for t in pruned)


@pytest.mark.slow
def test_short_study_on_synthetic_data_writes_every_result(tmp_path):
    config, options = make(tmp_path, n_trials=3)
    outcome = run_search(config, options)
    assert {p.name for p in outcome.files.values()} == {"trials.csv", "history.png", "best_spec.yaml"}
    assert all(p.stat().st_size > 0 for p in outcome.files.values())
    rows = list(csv.DictReader(open(outcome.files["trials"])))
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert done and all(float(r["top1"]) > 0 and int(r["flops"]) <= 200_000 for r in done)
    assert {"stage1.embed_dim", "stage2.num_heads", "reason", "rejected_samples"} <= set(rows[0])
    spec = load_spec(outcome.files["best_spec"])
    assert build_model(spec).eval()(torch.randn(1, 3, 16, 16)).shape == (1, 8)
    assert outcome.study.user_attrs["xnetspace_config"]["dataset"] == "synthetic:128"


@pytest.mark.slow
def test_multi_objective_study_gives_a_pareto_front(tmp_path, monkeypatch):
    use_trainer(monkeypatch, FakeTrainer())
    config, options = make(tmp_path, n_trials=6, objective="top1-flops", sampler="nsga2", pruner="none")
    outcome = run_search(config, options)
    assert outcome.files["pareto"].stat().st_size > 0
    rows = [r for r in csv.DictReader(open(outcome.files["trials"])) if r["state"] == "COMPLETE"]
    front = [r for r in rows if r["pareto"] == "1"]
    assert front and all(
        not any(float(o["top1"]) >= float(r["top1"]) and int(o["flops"]) < int(r["flops"]) for o in rows) for r in front
    )
    assert outcome.best.number in {int(r["number"]) for r in front}


@pytest.mark.slow
def test_resume_continues_up_to_n_in_total(tmp_path, monkeypatch):
    trainer = FakeTrainer()
    use_trainer(monkeypatch, trainer)
    config, options = make(tmp_path, n_trials=3)
    first = run_search(config, options).study
    done = {t.number: t.values for t in counted(first)}
    assert len(done) == 3
    options.n_trials = 5
    second = run_search(config, options).study
    assert len(counted(second)) == 5
    assert {t.number: t.values for t in counted(second) if t.number in done} == done  # nothing lost
    assert len(run_search(config, options).study.get_trials()) == len(second.get_trials())  # already complete


@pytest.mark.slow
def test_resume_with_another_recipe_is_refused(tmp_path, monkeypatch):
    use_trainer(monkeypatch, FakeTrainer())
    config, options = make(tmp_path, n_trials=1)
    run_search(config, options)
    other = config.model_copy(update={"train": TrainConfig(image_size=16, epochs=3, batch_size=32)})
    with pytest.raises(SearchError, match="was created with another train"):
        run_search(other, options)


def _run_cli(tmp_path, *extra):
    space = tmp_path / "space.yaml"
    import yaml

    space.write_text(yaml.safe_dump(SPACE))
    return [
        sys.executable,
        "search/run.py",
        "--space",
        str(space),
        "--dataset",
        "synthetic:128",
        "--out",
        str(tmp_path / "out"),
        "--heartbeat",
        "1",
        "--sampler",
        "random",
        "--confirm-top",
        "0",
        "--confirm-seeds",
        "1",
        "--workers-per-device",
        "1",
        *extra,
    ]


@pytest.mark.slow
def test_killed_worker_is_retried_and_nothing_is_lost(tmp_path):
    root = Path(__file__).parent.parent
    command = _run_cli(tmp_path, "--n-trials", "4", "--epochs", "15")
    proc = subprocess.Popen(
        command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    storage = f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    deadline = time.time() + 180
    while time.time() < deadline:  # wait until a trial is training, then kill the whole run
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="test-synthetic-loss", storage=storage).get_trials()
        except Exception:  # noqa: BLE001 - the study is not created yet
            continue
        if any(
            t.state == optuna.trial.TrialState.RUNNING and read_trial(t).spec is not None and not read_trial(t).rejected
            for t in trials
        ):
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = optuna.load_study(study_name="test-synthetic-loss", storage=storage).get_trials()
    killed = [t for t in before if t.state == optuna.trial.TrialState.RUNNING]
    finished = {t.number: t.values for t in before if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(killed) == 1

    rerun = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = optuna.load_study(study_name="test-synthetic-loss", storage=storage)
    trials = study.get_trials()
    dead = next(t for t in trials if t.number == killed[0].number)
    assert dead.state == optuna.trial.TrialState.FAIL  # marked failed by the heartbeat
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].params == dead.params  # ... and queued again, same spec
    live = counted(study)
    assert len(live) == 4 and all(t.state.is_finished() for t in live)
    assert {t.number: t.values for t in trials if t.number in finished} == finished  # nothing lost
    trained = [t for t in live if read_trial(t).duplicate_of is None]
    assert len({read_trial(t).spec_digest for t in trained}) == len(trained)  # nothing trained twice


def test_cpu_studies_default_to_one_single_thread_worker_per_core(monkeypatch):
    from xnetspace.search import study as study_module
    from xnetspace.search.workers import cpu_share

    monkeypatch.setattr(study_module, "usable_cores", lambda: 2)
    assert RunOptions().workers == 2 and RunOptions(workers_per_device=1).workers == 1
    assert RunOptions(devices=["cuda:0", "cuda:1"]).workers == 1  # one per GPU
    monkeypatch.setattr(study_module, "usable_cores", lambda: 64)
    assert RunOptions().workers == study_module.MAX_AUTO_CPU_WORKERS
    assert cpu_share(RunOptions().workers) >= 1


@pytest.mark.slow
def test_two_worker_processes_share_one_study(tmp_path):
    config, options = make(tmp_path, n_trials=5, devices=["cpu", "cpu"])
    config = config.model_copy(update={"train": TrainConfig(image_size=16, epochs=1, batch_size=32)})
    study = run_search(config, options).study
    live = counted(study)
    assert len(live) == 5 and all(t.state.is_finished() for t in live)
    assert {read_trial(t).worker for t in live} == {0, 1}
    trained = [t for t in live if read_trial(t).duplicate_of is None]
    assert len({read_trial(t).spec_digest for t in trained}) == len(trained)
    surplus = [t for t in study.get_trials() if read_trial(t).surplus]
    assert all(read_trial(t).spec is None for t in surplus)  # a surplus trial never trains


runner = CliRunner()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--space", "missing.yaml"], "cannot read space file"),
        (["--space", "tiny_cpu", "--flops-max", "lots"], "'lots' is not a count"),
        (["--space", "tiny_cpu", "--flops-max", "1k"], "flops range [1,500,000, 1,000] has min above max"),
        (
            ["--space", "tiny_cpu", "--flops-min", "0", "--flops-max", "1k"],
            "none of 2,002 specs drawn meets the constraints",
        ),
        (["--space", "tiny_cpu", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--space", "tiny_cpu", "--devices", "tpu"], "devices = ['tpu']: device 'tpu' must be cpu, cuda or cuda:K"),
        (
            ["--space", "tiny_cpu", "--objective", "top1-flops", "--pruner", "median"],
            "multi-objective studies cannot prune",
        ),
        (["--space", "tiny_cpu", "--objective", "speed"], "objective"),
        (["--space", "tiny_cpu", "--baseline", "transxnet_q"], "--baseline 'transxnet_q' is neither a preset"),
        (["--space", "tiny_cpu", "--baseline", "random:0"], "--baseline 'random:0' is neither a preset"),
        (["--space", "tiny_cpu", "--confirm-seeds", "1"], "a 95% confidence interval needs at least 2 seeds"),
        (["--space", "tiny_cpu", "--epochs", "0"], "epochs = 0: Input should be greater than or equal to 1"),
    ],
)
def test_search_command_rejects_bad_input_with_status_2(args, message, tmp_path):
    result = runner.invoke(app, ["search", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_measured_latency_is_a_constraint_and_an_objective(tmp_path, monkeypatch):
    # A deterministic stand-in for the timer: "latency" grows with the widths.
    monkeypatch.setattr(objective_module, "measure_latency", lambda spec, *args, **kw: float(sum(spec.embed_dims)))
    trainer = FakeTrainer()
    use_trainer(monkeypatch, trainer)
    space = {**SPACE, "constraints": {**SPACE["constraints"], "max_latency_ms": 45}}
    config, options = make(tmp_path, n_trials=6, space=space, objective="top1-latency", sampler="nsga2", pruner="none")
    outcome = run_search(config, options)
    assert trainer.specs and all(sum(s.embed_dims) <= 45 for s in trainer.specs)
    trials = outcome.study.get_trials()
    over = [t for t in trials if "latency" in (read_trial(t).reason or "")]
    assert over and all(read_trial(t).latency_ms > 45 and read_trial(t).rejected for t in over)
    for t in counted(outcome.study):
        if t.state == optuna.trial.TrialState.COMPLETE and read_trial(t).duplicate_of is None:
            assert t.values[1] == read_trial(t).latency_ms <= 45
            assert t.system_attrs["constraints:latency_ms"] == read_trial(t).latency_ms - 45
    assert outcome.files["pareto"].stat().st_size > 0


def _width_table(space: SearchSpace, path) -> LatencyTable:
    """A latency table of every operator of ``space``'s specs at 1 us per channel (deterministic)."""
    table = LatencyTable("cpu", "test cpu")
    for spec in space.distinct_specs(200, 0, "t", num_classes=8, in_chans=3):
        for op in network_operators(spec, space.constraints.image_size):
            table.entries[op.key] = dict(kind=op.kind, flops=op.flops, us=float(op.shape[0]), samples={})
    table.save(path)
    return table


@pytest.mark.slow
def test_predicted_latency_is_a_budget_and_an_objective(tmp_path, monkeypatch):
    """With a latency table nothing is timed: over-budget samples are rejected by their predicted
    latency before training, and loss-latency studies minimise the score and the prediction."""
    monkeypatch.setattr(objective_module, "measure_latency", lambda *a, **k: pytest.fail("nothing is measured"))
    trainer = FakeTrainer()
    use_trainer(monkeypatch, trainer)
    table = _width_table(SearchSpace.model_validate(SPACE), tmp_path / "table.json")
    limit = 0.45  # ms: about half of the space's predictions
    budget = {"latency_table": str(tmp_path / "table.json"), "max_latency_ms": limit}
    space = {**SPACE, "constraints": {**SPACE["constraints"], **budget}}
    config, options = make(tmp_path, n_trials=6, space=space, objective="loss-latency", sampler="nsga2", pruner="none")
    outcome = run_search(config, options)
    assert config.directions == ["minimize", "minimize"] and trainer.specs
    assert all(table.predict(s, 16).total_ms <= limit for s in trainer.specs)
    trials = [(t, read_trial(t)) for t in outcome.study.get_trials()]
    over = [r for _, r in trials if "predicted latency" in (r.reason or "")]
    assert over and all(r.rejected and r.latency_predicted and r.latency_ms > limit for r in over)
    for t, r in trials:
        if t.state == optuna.trial.TrialState.COMPLETE and r.duplicate_of is None:
            spec = NetworkSpec.model_validate(r.spec)
            assert t.values[1] == r.latency_ms == pytest.approx(table.predict(spec, 16).total_ms)
    front = pareto_front(outcome.study)
    assert front and all(not (o.values[0] <= f.values[0] and o.values[1] < f.values[1]) for f in front for o in front)
    with (tmp_path / "out" / "trials.csv").open() as f:
        sources = {row["latency_source"] for row in csv.DictReader(f) if row["latency_ms"]}
    assert sources == {"predicted"}


def test_the_space_check_counts_predicted_latency_rejections(tmp_path):
    space = SearchSpace.model_validate(SPACE)
    _width_table(space, tmp_path / "table.json")
    budget = {"latency_table": str(tmp_path / "table.json"), "max_latency_ms": 0.45}  # about half the specs
    limited = SearchSpace.model_validate({**SPACE, "constraints": {**SPACE["constraints"], **budget}})
    free, check = space.check(draws=200, num_classes=8, in_chans=3), limited.check(draws=200, num_classes=8, in_chans=3)
    assert check.valid == free.valid and 0 < check.feasible < free.feasible
    assert "predicted latency above max" in check.summary()


def test_a_missing_latency_table_is_refused_before_the_study(tmp_path):
    with pytest.raises(LatencyTableError, match="cannot read latency table"):
        StudyConfig.create(SearchSpace.model_validate(SPACE), latency_table=str(tmp_path / "none.json"))


@pytest.mark.slow
def test_a_study_of_any_size_starts_at_once(tmp_path):
    """Slots are queued a few at a time: --n-trials 10^12 says where it stands within seconds and
    stores a handful of queued trials, not a trillion."""
    command = _run_cli(tmp_path, "--n-trials", "1000000000000")
    proc = subprocess.Popen(
        command,
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines, start = [], time.monotonic()
    try:
        for line in proc.stdout:
            lines.append(line)
            if "0 of 1000000000000 trials done" in line:
                break
        seconds = time.monotonic() - start
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "0 of 1000000000000 trials done" in lines[-1], "".join(lines)[-2000:]
    assert seconds < 60  # imports and the dataset included; queuing N slots one by one took minutes
    study = optuna.load_study(study_name="test-synthetic-loss", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert 0 < len(study.get_trials()) <= 10
