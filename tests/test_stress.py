"""Worker processes racing on one storage while other processes keep the cores busy: exactly N
trials, no spec trained twice, every confirmation run trained once, no worker lost.

The head runs as a script (so that its spawned workers, which import the script again, get the
same fast fake trainer); a busy-looping process competes for the cores, since races between
workers show when the machine is loaded (issue 22). Rounds: a fresh study, then the same study
resumed to a larger N, on SQLite and on the PostgreSQL fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import optuna
import pytest

from xnetspace.search.confirmation import CONFIRM_SUFFIX
from xnetspace.search.control import CONTROL_SUFFIX
from xnetspace.search.records import counts_as_job, read_job, read_trial
from xnetspace.search.study import live_slots

from .conftest import new_database

ROOT = Path(__file__).parent.parent
SPACE = {  # 24 distinct specs: 60+ trials draw each several times, so the dedupe is exercised too
    "name": "stress",
    "stage_defaults": {"depth": 1, "mlp_ratio": [1, 2], "idconv_kernel_size": [3, 5]},
    "stages": [
        {"embed_dim": {"low": 8, "high": 24, "step": 8}, "sr_ratio": 2, "attn_ratio": 0.5},
        {"embed_dim": 16, "num_heads": [1, 2]},
    ],
    "constraints": {"image_size": 16},
    "train": {"image_size": 16, "epochs": 2, "batch_size": 16},
}
HEAD = '''
import json, os, random, sys, time
from pathlib import Path

import xnetspace.search.jobs as jobs
import xnetspace.search.objective as objective
from xnetspace.search.train import TrainResult

LOG = os.environ["STRESS_LOG"]


def fake_train(phase, spec, data, seeds, config, device="cpu", report=None, pack=True):
    """Proxy training of a pack of seeds in a few tens of milliseconds; every run is appended to LOG."""
    time.sleep(random.uniform(0.01, 0.08))
    with open(LOG, "a") as log:
        for seed in seeds:
            log.write(json.dumps({"phase": phase, "pid": os.getpid(), "digest": spec.digest(), "seed": seed,
                                  "epochs": config.epochs, "split": len(data.val)}) + "\\n")
    top1 = float(sum(spec.embed_dims)) + spec.stages[0].mlp_ratio
    results = [TrainResult() for _ in seeds]
    for epoch in range(config.epochs):
        for result in results:
            result.history.append(top1)
            result.loss_history.append(10.0 / top1)
            result.train_loss_history.append(20.0 / top1)
        if report is not None:
            report(epoch, results)
    return results


def fake_zero_cost(spec, data, seed, batch_size=64, device="cpu"):
    return {"synflow": 1.0, "naswot": float(sum(spec.embed_dims)), "grad_norm": 1.0}


objective.train_seeds = lambda *args, **kwargs: fake_train("search", *args, **kwargs)
jobs.train_seeds = lambda *args, **kwargs: fake_train("confirm", *args, **kwargs)
objective.zero_cost_scores = jobs.zero_cost_scores = fake_zero_cost

import xnetspace.search.workers as workers

run_worker = workers.run_worker


def crashing_worker(config, options, device="cpu", worker=0, data=None):
    """Worker number CRASH_WORKER dies of a bug; the others work as usual."""
    if os.environ.get("CRASH_WORKER") == str(worker):
        raise RuntimeError(f"a bug in worker {worker}")
    return run_worker(config, options, device, worker, data)


workers.run_worker = crashing_worker

if __name__ == "__main__":
    from xnetspace.search import RunOptions, StudyConfig, run_search
    from xnetspace.search.space import SearchSpace
    from xnetspace.search.train import TrainConfig

    space, storage, n, out = sys.argv[1:5]
    space = SearchSpace.model_validate(json.loads(space))
    config = StudyConfig(space=space, dataset="synthetic:64", train=space.train)
    run_search(config, RunOptions(n_trials=int(n), storage=storage, study_name="stress", out=Path(out),
                                  sampler="random", heartbeat=5, workers_per_device=4, confirm_top=3,
                                  confirm_seeds=2, fidelity_sample=2, baseline="random:3,random:auto",
                                  progress=len(sys.argv) > 5))
'''


@pytest.fixture
def busy_core():
    """A process spinning on the CPU for the length of a test."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield
    proc.kill()
    proc.wait()


def run_rounds(tmp_path: Path, storage: str, rounds: list[int]) -> None:
    script, log = tmp_path / "head.py", tmp_path / "trained.jsonl"
    script.write_text(HEAD)
    env = {**os.environ, "STRESS_LOG": str(log), "OMP_NUM_THREADS": "1"}
    log.write_text("")
    for n in rounds:  # one study, resumed to a larger N each round; the log keeps every round's runs
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(script), json.dumps(SPACE), storage, str(n), str(tmp_path / "out")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        seconds = time.monotonic() - start
        assert done.returncode == 0, f"round N={n} ({seconds:.0f} s): {done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr + done.stdout
        check_round(storage, n, [json.loads(line) for line in log.read_text().splitlines()])
        print(f"round N={n}: {seconds:.1f} s")


def check_round(storage: str, n: int, trained: list[dict]) -> None:
    study = optuna.load_study(study_name="stress", storage=storage)
    slots = live_slots(study)
    assert len(slots) == n and all(t.state.is_finished() for t in slots), "exactly N trials, all finished"
    surplus_ran = [t.number for t in study.get_trials() if read_trial(t).surplus and read_trial(t).spec_digest]
    assert not surplus_ran, f"surplus trials sampled a spec: {surplus_ran}"

    # Search trials and the random control's (its own study: the same spec may train once in each).
    logged = Counter(r["digest"] for r in trained if r["phase"] == "search")
    claimed = Counter()
    for name in ("stress", "stress" + CONTROL_SUFFIX):
        mine = Counter(
            read_trial(t).spec_digest
            for t in optuna.load_study(study_name=name, storage=storage).get_trials()
            if read_trial(t).runs and read_trial(t).duplicate_of is None
        )
        twice = {d: c for d, c in mine.items() if c > 1}
        assert not twice, f"specs trained more than once in {name}: {twice}"
        claimed += mine
    assert logged == claimed, "every training is a trial's, and every trial's training happened once"
    completed = [t for t in slots if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(read_trial(t).spec_digest in logged for t in completed)

    cstudy = optuna.load_study(study_name="stress" + CONFIRM_SUFFIX, storage=storage)
    assert cstudy.direction == optuna.study.StudyDirection.MINIMIZE  # the loss objective's direction
    jobs = [t for t in cstudy.get_trials() if counts_as_job(t)]
    done = Counter(read_job(t).key for t in jobs if t.state == optuna.trial.TrialState.COMPLETE)
    assert done and all(c == 1 for c in done.values()), f"confirmation runs completed twice: {done}"
    assert not [t for t in jobs if not t.state.is_finished()], "confirmation runs left unfinished"
    runs = Counter((r["digest"], r["seed"], r["epochs"], r["split"]) for r in trained if r["phase"] == "confirm")
    assert all(c == 1 for c in runs.values()), f"confirmation runs trained twice: {runs}"


@pytest.mark.slow
def test_four_workers_on_sqlite_under_load(tmp_path, busy_core):
    run_rounds(tmp_path, f"sqlite:///{tmp_path / 'study.db'}", [60, 72])


@pytest.mark.slow
def test_four_workers_on_postgres_under_load(tmp_path, busy_core, postgres_server):
    run_rounds(tmp_path, new_database(postgres_server, "stress"), [60, 72])


@pytest.mark.slow
def test_a_crashed_worker_is_reported_when_it_happens_and_the_study_still_ends_well(tmp_path):
    script, log = tmp_path / "head.py", tmp_path / "trained.jsonl"
    script.write_text(HEAD)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = {**os.environ, "STRESS_LOG": str(log), "OMP_NUM_THREADS": "1", "CRASH_WORKER": "1"}
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(SPACE), storage, "12", str(tmp_path / "out"), "progress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]  # the other workers finished the study
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "xnetspace-worker-1 crashed" in line]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("worker xnetspace-worker-1 crashed (exit code 1); its traceback is in ")
    crash_log = Path(lines[0].rsplit(" ", 1)[1])
    assert "RuntimeError: a bug in worker 1" in crash_log.read_text()
    assert len(live_slots(optuna.load_study(study_name="stress", storage=storage))) == 12


def test_a_trial_finished_by_another_process_is_noted_and_the_worker_goes_on(tmp_path, monkeypatch):
    import xnetspace.search.objective as objective
    from xnetspace.search import RunOptions, StudyConfig, run_search
    from xnetspace.search.space import SearchSpace
    from xnetspace.search.train import TrainResult

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    stolen = []

    def trainer(spec, data, seeds, config, device="cpu", report=None, pack=True):
        if not stolen:  # the first trial is failed under it, as the heartbeat fails a stalled worker's trial
            other = optuna.load_study(study_name="s", storage=storage)
            running = [t for t in other.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
            other._storage.set_trial_state_values(running[0]._trial_id, optuna.trial.TrialState.FAIL)
            stolen.append(running[0].number)
        return [
            TrainResult(
                history=[50.0] * config.epochs,
                loss_history=[1.0] * config.epochs,
                train_loss_history=[1.0] * config.epochs,
            )
            for _ in seeds
        ]

    monkeypatch.setattr(objective, "train_seeds", trainer)
    monkeypatch.setattr(objective, "zero_cost_scores", lambda *args, **kwargs: {})
    space = SearchSpace.model_validate(SPACE)
    options = RunOptions(
        n_trials=3,
        storage=storage,
        study_name="s",
        out=tmp_path / "out",
        sampler="random",
        pruner="none",
        confirm_top=0,
        confirm_seeds=1,
        workers_per_device=1,
        progress=False,
    )
    study = run_search(StudyConfig(space=space, dataset="synthetic:64", train=space.train), options).study
    slots = live_slots(study)
    assert len(slots) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in slots)
    assert stolen and stolen[0] not in [t.number for t in slots]
    note = (tmp_path / "out" / "workers.log").read_text()
    assert "Cannot tell a FAIL trial: the trial was finished by another process" in note


# -- issue 28: Ctrl-C while workers start, worker counts, Ctrl-C in Optuna's bookkeeping -------------
def test_issue28_item16_ctrl_c_while_workers_start_ends_the_started_ones(monkeypatch):
    """Ctrl-C while worker processes are still being started (1,000 of them took minutes): the
    ones already started are terminated and reaped at once, the rest never start."""
    import xnetspace.search.workers as workers

    events = []

    class Process:
        def __init__(self, target, args, name):
            self.name, self.pid, self.exitcode = name, None, None

        def start(self):
            if len(events) == 3:  # Ctrl-C arrives while the fourth starts
                raise KeyboardInterrupt
            self.pid = 1000 + len(events)
            events.append(("start", self.name))

        def is_alive(self):
            return self.pid is not None and self.exitcode is None

        def terminate(self):
            events.append(("terminate", self.name))
            self.exitcode = -15

        def join(self):
            events.append(("join", self.name))

    monkeypatch.setattr(workers, "_context", lambda: types.SimpleNamespace(Process=Process))
    with pytest.raises(KeyboardInterrupt):
        workers.spawn_workers(print, ["cpu"] * 8, lambda i, d, threads: ())
    started = [f"xnetspace-worker-{i}" for i in range(3)]
    assert events == [("start", n) for n in started] + [("terminate", n) for n in started] + [
        ("join", n) for n in started
    ]


def test_issue28_item16_a_study_starts_no_more_workers_than_it_can_use():
    from xnetspace.search import RunOptions

    one = RunOptions(n_trials=1, workers_per_device=8, confirm_top=0)
    assert one.worker_devices == ["cpu"]
    two_gpus = RunOptions(n_trials=3, devices=["cuda:0", "cuda:1"], workers_per_device=4, confirm_top=0)
    assert two_gpus.worker_devices == ["cuda:0", "cuda:1", "cuda:0"]  # dealt round-robin
    confirmed = RunOptions(n_trials=2, workers_per_device=8, confirm_top=3, fidelity_sample=0, baseline="none")
    assert len(confirmed.worker_devices) == 4  # 3 confirmed candidates and the noise check can run at once


def test_issue28_item20_ctrl_c_in_optunas_bookkeeping_exits_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C landing while Optuna records a trial (in ``_tell_with_warning``) surfaces from its
    ``finally`` as ``UnboundLocalError: 'updated_state'``: still an interrupt, 130, in the head
    and in a worker process."""
    import optuna.study._optimize as optimize
    import yaml

    import xnetspace.cli as cli
    import xnetspace.search.objective as objective
    from xnetspace.logs import LOG_FOLDER
    from xnetspace.search.workers import guarded

    monkeypatch.setattr(objective, "train_seeds", lambda spec, data, seeds, *a, **k: [_result() for _ in seeds])
    monkeypatch.setattr(objective, "zero_cost_scores", lambda *args, **kwargs: {})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(optimize, "_tell_with_warning", interrupted)
    monkeypatch.chdir(tmp_path)
    Path("space.yaml").write_text(yaml.safe_dump(SPACE))
    search = ["search", "--space", "space.yaml", "--dataset", "synthetic:64", "--n-trials", "2"]
    monkeypatch.setattr(sys, "argv", ["xnetspace", *search, "--workers-per-device", "1", "--confirm-top", "0"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    err = capsys.readouterr().err
    assert done.value.code == 130, err[-2000:]
    assert "interrupted: " in err and "the study is kept" in err and "internal error" not in err

    def work(device: str) -> None:  # a worker process's trial loop meeting the same
        try:
            raise KeyboardInterrupt
        finally:
            raise UnboundLocalError("cannot access local variable 'updated_state'")

    logs = set(LOG_FOLDER.glob("*.log"))
    with pytest.raises(SystemExit) as done:
        guarded(work, "cpu")
    assert done.value.code == 130
    assert set(LOG_FOLDER.glob("*.log")) == logs  # no crash log: not a bug


def _result():
    from xnetspace.search.train import TrainResult

    return TrainResult(history=[50.0, 60.0], loss_history=[1.0, 0.9], train_loss_history=[1.5, 1.2])
