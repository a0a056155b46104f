"""One study on a real PostgreSQL server (started by conftest's ``postgres_server``): a head and
joining workers (``xnetspace worker``) in separate processes, a worker SIGKILLed mid-trial, a
worker on a finished study, and bad storage input."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from xnetspace.cli import app
from xnetspace.search.records import is_live, read_trial

from .conftest import PG_PASSWORD, new_database
from .test_bench import TINY  # the four-spec space the tabulation tests share

pytestmark = pytest.mark.slow  # every test shares a study of several worker processes (study_run)

ROOT = Path(__file__).parent.parent
SPACE = {
    "name": "pg",
    "stage_defaults": {"depth": 1, "mlp_ratio": [1, 2], "idconv_kernel_size": [3, 5]},
    "stages": [
        {"embed_dim": {"low": 8, "high": 24, "step": 8}, "sr_ratio": [2, 4], "attn_ratio": [0.5, 1.0]},
        {"embed_dim": {"low": 16, "high": 48, "step": 16}, "num_heads": [1, 2]},
    ],
    "constraints": {"image_size": 16, "flops": [0, "200k"]},
    "train": {"image_size": 16, "epochs": 1, "batch_size": 32},
}
# The head as a user's script would run it (no confirmation runs: this file tests the trials),
# except that its own worker holds its first trial until the test creates the file GATE: so the
# joined workers, not a head that starts first, run the others, whatever the machine's load.
HEAD = """
import json, sys, time
from pathlib import Path
import xnetspace.search.objective as objective
from xnetspace.search import RunOptions, StudyConfig, run_search
from xnetspace.search.space import SearchSpace
from xnetspace.search.train import TrainConfig

url, name, n, epochs, out, space, gate = sys.argv[1:]
train = objective.train_seeds


def held(*args, **kwargs):
    while not Path(gate).exists():
        time.sleep(0.2)
    return train(*args, **kwargs)


objective.train_seeds = held
config = StudyConfig(space=SearchSpace.model_validate(json.loads(space)), dataset="synthetic:64",
                     train=TrainConfig(image_size=16, epochs=int(epochs), batch_size=32))
run_search(config, RunOptions(n_trials=int(n), storage=url, study_name=name, out=Path(out), sampler="random",
                              pruner="none", heartbeat=2, confirm_top=0, workers_per_device=1))
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # several processes share two cores in CI
runner = CliRunner()


def start_head(tmp_path: Path, url: str, name: str, n: int, epochs: int, gate: Path) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"head-{name}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HEAD,
            url,
            name,
            str(n),
            str(epochs),
            str(tmp_path / name),
            json.dumps(SPACE),
            str(gate),
        ],
        cwd=ROOT,
        env=ENV,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    return proc, log


def printed_worker_command(proc: subprocess.Popen, log: Path) -> list[str]:
    """The worker command the head prints once the study exists, as an argv for this interpreter."""
    deadline = time.time() + 120
    while time.time() < deadline:
        lines = log.read_text().splitlines()
        for i, line in enumerate(lines[:-1]):
            if line.startswith("other machines join with:"):
                argv = shlex.split(lines[i + 1])
                assert argv[:2] == ["xnetspace", "worker"]
                return [sys.executable, "-m", "xnetspace.cli", *argv[1:]]
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError("the head printed no worker command: " + log.read_text()[-3000:])


def start_worker(argv: list[str], tmp_path: Path, tag: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*argv, *extra], cwd=ROOT, env=ENV, stdout=open(tmp_path / f"{tag}.log", "w"), stderr=subprocess.STDOUT
    )


def finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def check_exactly_n(study: optuna.Study, n: int) -> list:
    live = [t for t in study.get_trials() if is_live(t)]
    assert len(live) == n and all(t.state.is_finished() for t in live)
    trained = [t for t in live if read_trial(t).duplicate_of is None and not read_trial(t).rejected]
    assert len({read_trial(t).spec_digest for t in trained}) == len(trained)  # no spec trained twice
    assert all(read_trial(t).spec is None for t in study.get_trials() if read_trial(t).surplus)
    return live


def wait_for(storage, what, message, timeout: float = 240):
    """The first trial of study 'shared' for which ``what(trial)`` holds, polled from the storage."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = next((t for t in optuna.load_study(study_name="shared", storage=storage).get_trials() if what(t)), None)
        if found is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(message())


@pytest.fixture(scope="module")
def study_run(postgres_server, tmp_path_factory):
    """One study of 6 trials on PostgreSQL: the head (holding its first trial, see HEAD), a worker
    joined with the printed command and SIGKILLed while it trains a spec, then a worker with
    ``--workers-per-device 2`` (two worker processes) that joins and finishes the study with the
    head. Every process is killed at the end."""
    tmp_path = tmp_path_factory.mktemp("pg")
    url, gate = new_database(postgres_server, "study_run"), tmp_path / "gate"
    procs: list[subprocess.Popen] = []
    try:
        head, log = start_head(tmp_path, url, "shared", n=6, epochs=10, gate=gate)
        procs.append(head)
        argv = printed_worker_command(head, log)
        victim = start_worker(argv, tmp_path, "victim", "--worker-index", "500")
        procs.append(victim)
        storage = optuna.storages.RDBStorage(url)
        target = wait_for(
            storage,
            lambda t: (
                t.state == optuna.trial.TrialState.RUNNING
                and read_trial(t).spec is not None
                and read_trial(t).worker == 500
                and not read_trial(t).rejected
            ),
            lambda: (tmp_path / "victim.log").read_text()[-3000:],
        )
        victim.send_signal(signal.SIGKILL)  # mid-trial: the trial stays RUNNING in the storage
        victim.wait()
        survivor = start_worker(argv, tmp_path, "survivor", "--worker-index", "600", "--workers-per-device", "2")
        procs.append(survivor)
        wait_for(
            storage,
            lambda t: t.system_attrs.get("failed_trial") == target.number and t.state.is_finished(),
            lambda: (tmp_path / "survivor.log").read_text()[-3000:],
        )  # the retry, run by the survivor
        gate.touch()  # the head may train its own trial now
        finish(head, log)
        finish(survivor, tmp_path / "survivor.log")
        yield {
            "url": url,
            "name": "shared",
            "argv": argv,
            "killed": target.number,
            "survivor_log": (tmp_path / "survivor.log").read_text(),
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_head_and_two_worker_processes_finish_exactly_n(study_run):
    study = optuna.load_study(study_name=study_run["name"], storage=study_run["url"])
    live = check_exactly_n(study, 6)
    workers = {read_trial(t).worker for t in study.get_trials() if read_trial(t).spec is not None}
    assert {0, 500} <= workers <= {0, 500, 600, 601} and workers & {600, 601}, (
        workers
    )  # the joined processes ran trials
    # The printed command names this storage (with its password, so it can be pasted) and study.
    assert study_run["argv"][3:] == [
        "worker",
        "--storage",
        study_run["url"],
        "--study-name",
        "shared",
        "--devices",
        "cpu",
        "--workers-per-device",
        "1",
    ]
    assert "joined study 'shared'" in study_run["survivor_log"] and "as worker 600..601" in study_run["survivor_log"]
    assert PG_PASSWORD not in study_run["survivor_log"]
    assert len(live) == 6


def test_killed_worker_trial_is_failed_by_the_heartbeat_and_retried(study_run):
    trials = optuna.load_study(study_name=study_run["name"], storage=study_run["url"]).get_trials()
    dead = trials[study_run["killed"]]
    assert read_trial(dead).worker == 500
    assert dead.state == optuna.trial.TrialState.FAIL and read_trial(dead).reason is None  # by the heartbeat
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].params == dead.params  # queued again with the same spec ...
    assert retry[0].state.is_finished() and read_trial(retry[0]).worker in {600, 601}  # ... and run


def test_worker_on_a_finished_study_exits_at_once(study_run):
    before = len(optuna.load_study(study_name=study_run["name"], storage=study_run["url"]).get_trials())
    start = time.perf_counter()
    result = runner.invoke(app, study_run["argv"][3:])  # the printed command, in this process
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - start < 10  # no trial is trained
    assert len(optuna.load_study(study_name=study_run["name"], storage=study_run["url"]).get_trials()) == before


def test_worker_refuses_another_dataset(study_run):
    result = runner.invoke(
        app, ["worker", "--storage", study_run["url"], "--study-name", study_run["name"], "--dataset", "synthetic:32"]
    )
    assert result.exit_code == 2 and "is not the study's dataset 'synthetic:64'" in result.output


@pytest.mark.parametrize(
    "case,message",
    [
        ("unreachable", "cannot connect: connection failed"),
        ("password", 'password authentication failed for user "xnet"'),
        ("study", "--study-name 'nope': no such study in postgresql+psycopg://xnet:***@127.0.0.1"),
        ("url", "--storage 'not a url' is not a database URL"),
        ("workers", "--workers-per-device 0 must be at least 1"),
    ],
)
def test_worker_bad_input_exits_2_with_one_paragraph(case, message, study_run, postgres_server):
    url, name = study_run["url"], study_run["name"]
    if case == "unreachable":
        url = url.replace(f":{postgres_server['port']}/", ":1/")
    elif case == "password":
        url = url.replace(PG_PASSWORD, "wrong")
    elif case == "study":
        name = "nope"
    elif case == "url":
        url = "not a url"
    extra = ["--workers-per-device", "0"] if case == "workers" else []
    result = runner.invoke(app, ["worker", "--storage", url, "--study-name", name, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.startswith("error: ") and result.output.strip().count("\n") == 0  # one paragraph
    assert "wrong" not in result.output and PG_PASSWORD not in result.output  # no password shown
    if case == "study":
        assert "the studies there: shared" in result.output


# -- a tabulation's jobs on the server (issue 30) --------------------------------------------------------
def test_a_joining_worker_trains_a_tabulations_jobs_and_the_head_trains_none_twice(postgres_url, tmp_path):
    """`tabulate --storage URL` queues its jobs on the server; `xnetspace worker` (another process, as
    on another machine) pops them all; the head's own sitting then trains nothing and writes the
    whole table, every job finished exactly once."""
    from xnetspace import bench
    from xnetspace.search.records import read_job
    from xnetspace.search.space import SearchSpace
    from xnetspace.search.tabulate import TabulateConfig, queue_tabulation

    space_file = tmp_path / "tiny4.json"
    space_file.write_text(json.dumps(TINY))
    config = TabulateConfig(space=SearchSpace.model_validate(TINY), dataset="synthetic:64", seeds=2)
    queued = queue_tabulation(config, tmp_path / "table", postgres_url)
    assert queued.url == postgres_url and queued.name.startswith("tabulate-tiny4-")
    argv = [sys.executable, "-m", "xnetspace.cli", "worker", "--storage", postgres_url, "--study-name", queued.name]
    joined = subprocess.run(
        [*argv, "--workers-per-device", "1"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-2000:]
    assert f"tabulation {queued.name!r}: no job left ({len(queued.jobs)} finished" in joined.stdout

    head = runner.invoke(
        app,
        ["tabulate", str(space_file), "--dataset", "synthetic:64", "--seeds", "2", "--out", str(tmp_path / "table"),
         "--storage", postgres_url, "--json"],
    )  # fmt: skip
    assert head.exit_code == 0, head.output
    meta = json.loads(head.stdout)
    assert meta["sittings"][-1]["jobs_finished"] == 0 and not meta["failed"]
    done = [t for t in queued.study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(read_job(t).key for t in done) == sorted({read_job(t).key for t in done})  # none twice
    assert len(done) == len(queued.jobs) == 5 and all(read_job(t).worker >= 1000 for t in done)  # the joined worker's
    table = bench.load(tmp_path / "table")
    assert len(table.specs()) == 4 and table.reference is not None
    assert all(len(table.runs(s.index)) == 2 for s in table.specs())
