"""The search's enums (xnetspace/search/names.py) keep the files as they were: a member is stored,
written and read back as its plain string, and the objective names rank and confirm as the string
rules they replace did."""

from __future__ import annotations

import csv
import io
import json

import pytest

from xnetspace import load_preset
from xnetspace.bench import REFERENCE
from xnetspace.cli import _SearchOpt
from xnetspace.search import StudyConfig
from xnetspace.search.jobs import Job, enqueue_jobs, job_results, open_job_study
from xnetspace.search.names import JobRole, ObjectiveName, Rejection, SecondObjective
from xnetspace.search.records import KEY, read_job
from xnetspace.search.score import LOSS, PROXIES, TOP1, proxy_of, score_of
from xnetspace.search.train import TrainConfig

from .test_search import SPACE


def test_every_job_role_round_trips_through_the_job_study_file(tmp_path):
    spec = load_preset("transxnet_t").model_dump(mode="json")
    jobs = [Job(role=role, label=f"{role} 0", spec=spec, seeds=(i,), epochs=1) for i, role in enumerate(JobRole)]
    study = open_job_study(f"sqlite:///{tmp_path / 'jobs.db'}", "jobs", None, LOSS)
    assert enqueue_jobs(study, jobs, TrainConfig(), "digits") == len(JobRole)
    stored = [read_job(t) for ts in job_results(study).values() for t in ts]
    assert sorted(r.job["role"] for r in stored) == sorted(role.value for role in JobRole)
    for trial in study.get_trials():
        assert type(trial.user_attrs[KEY]["job"]["role"]) is str  # the file holds the plain string
    assert {Job.model_validate(r.job).role for r in stored} == set(JobRole)


def test_a_role_is_written_to_csv_and_json_as_its_string():
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["recipe"])
    writer.writerows([{"recipe": JobRole.PROXY}, {"recipe": JobRole.CONFIRM}])
    assert out.getvalue().split() == ["proxy", "confirm"]
    assert json.dumps([JobRole.PROXY, f"{JobRole.CANDIDATE}"]) == '["proxy", "candidate"]'
    assert JobRole.REFERENCE == REFERENCE  # a tabular benchmark's reference job makes the table's reference row


@pytest.mark.parametrize("name", [o.value for o in ObjectiveName])
def test_every_objective_is_stored_as_its_string_and_ranks_as_before(name):
    config = StudyConfig(space=SPACE, objective=name)
    stored = json.loads(json.dumps(config.model_dump(mode="json")))
    assert stored["objective"] == name and type(stored["objective"]) is str
    assert StudyConfig.model_validate(stored).objective is ObjectiveName(name)
    # the string rules the enum replaced: a "top1" prefix confirms by top-1; the suffix names the cost
    assert score_of(name) is (TOP1 if name.startswith("top1") else LOSS)
    assert proxy_of(name) is PROXIES[name.removesuffix("-flops").removesuffix("-latency")]
    second = {"flops": SecondObjective.FLOPS, "latency": SecondObjective.LATENCY}.get(name.rpartition("-")[2])
    assert config.objective.second is second and config.second_objective is second
    copied = StudyConfig(space=SPACE).model_copy(update={"objective": name})  # not validated: the plain string
    assert copied.second_objective is second and copied.directions == config.directions
    assert len(config.directions) == (1 if second is None else 2)


def test_the_command_line_help_names_every_objective():
    assert all(o.value in _SearchOpt.objective.help for o in ObjectiveName)


def test_a_rejection_reason_reads_as_before_and_is_told_apart():
    reason = Rejection.OVER_BUDGET.reason("FLOPs 300k above max 200k")
    assert reason == "over budget: FLOPs 300k above max 200k"  # as trial records have always held it
    assert Rejection.of(reason) is Rejection.OVER_BUDGET
    assert Rejection.of(Rejection.INVALID.reason("heads must divide channels")) is Rejection.INVALID
    assert Rejection.of("pruner: epoch 2 below the median") is None and Rejection.of(None) is None
