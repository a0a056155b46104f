"""The fidelity study's runs as typed records (xnetspace/search/fidelity_runs.py), its plan's
spec indices, and its job worker, without training a network (the study itself runs in
test_evaluation.py, marked slow)."""

from __future__ import annotations

import csv
import math

import pytest
from pydantic import ValidationError

from xnetspace.search.data import load_dataset
from xnetspace.search.fidelity import FidelityConfig, plan, specs
from xnetspace.search.fidelity_runs import CURVES, FidelityRun, read_runs, runs_by_spec, write_runs
from xnetspace.search.fidelity_stats import racing_replay
from xnetspace.search.jobs import enqueue_jobs, finished_record, job_results, job_state, open_job_study
from xnetspace.search.records import RunRecord
from xnetspace.search.score import LOSS
from xnetspace.search.space import SearchSpace
from xnetspace.search.workers import job_worker
from xnetspace.search.zero_cost import ZERO_COST

from .conftest import tiny_spec, use_trainer
from .test_evaluation import NoisyTrainer
from .test_search import SPACE

# Four rows of a runs.csv that `xnetspace fidelity` wrote before runs became typed records
# (commit 9d7a6fb): a proxy and a confirmation run of spec 0, a proxy run of spec 1.
BEFORE = """\
spec,spec_digest,recipe,seed,epochs,flops,params,synflow,naswot,grad_norm,train_loss,loss,top1,seconds,first_of_job,\
stage1.depth,stage1.embed_dim,stage1.ffn_kernel_sizes,stage1.attn_ratio
0,5deb85fc474ea1a9,proxy,0,2,104072,1861432,4.0,40.0,2.5,0.351075;0.351075,0.251075;0.251075,97.4893;97.4893,1.25,\
True,1,8,"1,3,5,7",1.0
0,5deb85fc474ea1a9,proxy,1,2,104072,1861432,4.0,40.0,2.5,0.35027;0.35027,0.25027;0.25027,97.4973;97.4973,1.25,\
False,1,8,"1,3,5,7",1.0
0,5deb85fc474ea1a9,confirm,1000,4,104072,1861432,,,,0.348507;0.348507;0.348507;0.348507,\
0.248507;0.248507;0.248507;0.248507,97.5149;97.5149;97.5149;97.5149,2.5,True,1,8,"1,3,5,7",1.0
1,a259cf456a5c49c9,proxy,0,2,149752,3094876,4.8,48.0,2.0833333333333335,0.308147;0.308147,0.208147;0.208147,\
97.9185;97.9185,0.5,True,1,16,"1,3,5,7",0.5
"""


def test_a_runs_csv_written_before_reads_as_typed_runs_and_is_rewritten_unchanged(tmp_path):
    before = tmp_path / "runs.csv"
    before.write_text(BEFORE.replace("\n", "\r\n"))  # the csv module ends rows with \r\n
    runs = read_runs(before)
    assert [(r.spec_index, r.recipe, r.run.seed) for r in runs] == [
        (0, "proxy", 0),
        (0, "proxy", 1),
        (0, "confirm", 1000),
        (1, "proxy", 0),
    ]
    proxy, confirm = runs[0], runs[2]
    assert proxy.run.loss == [0.251075, 0.251075] and proxy.run.top1 == [97.4893, 97.4893]
    assert proxy.run.train_loss == [0.351075, 0.351075] and confirm.run.epochs == 4
    assert proxy.zero_cost == {"synflow": 4.0, "naswot": 40.0, "grad_norm": 2.5} and confirm.zero_cost == {}
    assert (proxy.flops, proxy.params, proxy.spec_digest) == (104072, 1861432, "5deb85fc474ea1a9")
    assert (proxy.seconds, proxy.first_of_job, runs[1].first_of_job) == (1.25, True, False)
    assert proxy.knobs == {
        "stage1.depth": "1",
        "stage1.embed_dim": "8",
        "stage1.ffn_kernel_sizes": "1,3,5,7",
        "stage1.attn_ratio": "1.0",
    }
    again = write_runs(runs, tmp_path / "again.csv")
    assert again.read_bytes() == before.read_bytes()


def _runs(pool_size: int = 3, seeds: int = 2) -> list[FidelityRun]:
    """Runs of ``pool_size`` specs under both recipes, with curves of more digits than the file keeps."""
    runs = []
    for i in range(pool_size):
        spec = tiny_spec(stages=[dict(depth=1, embed_dim=16 * (i + 1), num_heads=1, sr_ratio=2)])
        for recipe, first, epochs in (("proxy", 0, 2), ("confirm", 1000, 4)):
            zero_cost = (
                {"synflow": 1.0 / 3 + i, "naswot": math.pi * i, "grad_norm": math.nan} if recipe == "proxy" else {}
            )
            for n in range(seeds):
                loss = [1 / 7 + i / 11 + n / 13 + e / 17 for e in range(epochs)]
                run = RunRecord(
                    seed=first + n,
                    loss=loss,
                    top1=[100 - v for v in loss],
                    train_loss=[v + 1 / 3 for v in loss],
                    seconds=12.345,
                )
                runs.append(
                    FidelityRun.of(
                        i, recipe, spec, run, (1000 * (i + 1), 10 * (i + 1)), zero_cost=zero_cost, first_of_job=n == 0
                    )
                )
    return runs


def test_runs_keep_the_files_precision_so_the_file_reads_back_as_the_same_runs(tmp_path):
    runs = _runs()
    assert runs[0].run.loss[0] == pytest.approx(1 / 7, rel=1e-5) and runs[0].run.loss[0] != 1 / 7  # 6 digits kept
    assert runs[0].run.seconds == 0.0  # a run's own seconds are not in the file; the job's are
    assert runs[0].knobs["stage1.embed_dim"] == "16" and runs[0].spec_index == 0
    path = write_runs(runs, tmp_path / "runs.csv")
    back = read_runs(path)
    # the same runs, digit for digit (repr: nan equals nan), so the file's analysis is the memory's
    assert repr(back) == repr(runs) and math.isnan(back[0].zero_cost["grad_norm"])
    with path.open(newline="") as f:
        header = next(csv.reader(f))
    assert header[:15] == [
        "spec",
        "spec_digest",
        "recipe",
        "seed",
        "epochs",
        "flops",
        "params",
        *ZERO_COST,
        *CURVES,
        "seconds",
        "first_of_job",
    ]
    assert all(c.startswith("stage") for c in header[15:])


def test_a_row_with_an_unreadable_value_is_refused_naming_its_column():
    row = next(csv.DictReader(BEFORE.splitlines()))
    with pytest.raises(ValidationError, match="seed"):
        FidelityRun.from_row({**row, "seed": "x"})
    with pytest.raises(ValidationError, match="recipe"):
        FidelityRun.from_row({**row, "recipe": "search"})
    with pytest.raises(ValidationError, match="loss"):
        FidelityRun.from_row({**row, "loss": "0.2;oops"})


def test_runs_by_spec_groups_in_seed_order_with_the_proxys_zero_cost_scores():
    runs = _runs()
    grouped = runs_by_spec(list(reversed(runs)))  # confirmation runs first, seeds descending
    assert sorted(grouped) == [0, 1, 2]
    spec = grouped[1]
    assert [r.seed for r in spec.proxy] == [0, 1] and [r.seed for r in spec.confirm] == [1000, 1001]
    assert spec.zero_cost["synflow"] == pytest.approx(1 / 3 + 1, rel=1e-9) and math.isnan(spec.zero_cost["grad_norm"])
    assert (spec.flops, spec.params) == (2000, 20)


def test_racing_replay_on_typed_runs_spends_every_run_at_a_huge_threshold():
    grouped = runs_by_spec(_runs(pool_size=4, seeds=2))
    proxy = {i: s.proxy for i, s in grouped.items()}
    target = [s.confirm[0].loss[-1] for _, s in sorted(grouped.items())]
    wide = racing_replay(proxy, target, z=1e9, orders=3)
    assert wide.fraction_of_runs == 1.0 and wide.best_kept_all_seeds == 1.0
    assert wide.kendall_tau == pytest.approx(1.0)  # the proxy ranks as the target here


def _config() -> FidelityConfig:
    return FidelityConfig(space=SearchSpace.model_validate(SPACE), dataset="synthetic:64", n_specs=3, seeds=2)


def test_every_job_of_the_plan_names_its_spec_and_keys_stay_as_before():
    config = _config()
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    pool = specs(config, data.num_classes, data.in_chans)
    jobs = plan(config, pool)
    assert [(j.spec_index, j.role) for j in jobs] == [
        (i, role) for i in range(len(pool)) for role in ("proxy", "confirm")
    ]
    for job in jobs:
        assert job.spec == pool[job.spec_index].model_dump(mode="json")
        # a study queued before jobs carried spec_index has the same keys: it resumes, nothing retrained
        assert job.key(config.train, config.dataset) == job.model_copy(update={"spec_index": None}).key(
            config.train, config.dataset
        )


def test_the_job_worker_drains_the_fidelity_study_in_this_process(tmp_path, monkeypatch):
    trainer = NoisyTrainer()
    use_trainer(monkeypatch, trainer)
    config = _config()
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    jobs = plan(config, specs(config, data.num_classes, data.in_chans))[:2]  # spec 0: proxy and confirm
    url = f"sqlite:///{tmp_path / 'fidelity.db'}"
    study = open_job_study(url, "fidelity", 10, LOSS)
    enqueue_jobs(study, jobs, config.train, config.dataset)
    job_worker(url, "fidelity", config.train.model_dump_json(), config.dataset, LOSS, str(tmp_path), "cpu", 0, None)
    assert job_state(study) == (2, 0, 0)
    results = job_results(study)
    for job in jobs:
        record = finished_record(results[job.key(config.train, config.dataset)])
        assert record is not None and [r.seed for r in record.runs] == list(job.seeds)
        assert all(r.epochs == job.epochs for r in record.runs) and bool(record.zero_cost) == job.zero_cost
    assert len(trainer.calls) == 4  # 2 seeds x 2 jobs, each once
