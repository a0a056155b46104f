"""The GPU path, exercised on the CPU: device placement of worker processes, K workers per device,
and benchmarks/gpu_check.sh end to end at toy sizes (bf16 autocast, channels_last and packs train
on the CPU in tests/test_train_seeds.py; out-of-memory trials in tests/test_search.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import xnetspace.search.workers as workers
from xnetspace.search import RunOptions, StudyConfig
from xnetspace.search.space import SearchSpace

from .test_search import SPACE

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    "device,visible,given", [("cuda:1", "1", "cuda"), ("cuda", None, "cuda"), ("cpu", None, "cpu")]
)
def test_a_worker_process_sees_only_its_gpu(monkeypatch, device, visible, given):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    seen = {}

    def work(d: str) -> None:
        seen.update(device=d, visible=os.environ.get("CUDA_VISIBLE_DEVICES"))

    workers.guarded(work, device, threads=None)
    assert seen == {"device": given, "visible": visible}


def test_a_crashing_worker_exits_1_and_logs_its_traceback(monkeypatch):
    def work(d: str) -> None:
        raise RuntimeError("out of ideas")

    with pytest.raises(SystemExit) as done:
        workers.guarded(work, "cpu")
    assert done.value.code == 1


@pytest.mark.parametrize(
    "devices,k,expected",
    [
        (["cuda:0", "cuda:1"], 2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]),  # dealt round-robin (issue 28)
        (["cuda:0"], 4, ["cuda:0"] * 4),
        (["cpu"], 2, ["cpu", "cpu"]),
    ],
)
def test_k_workers_per_device(monkeypatch, devices, k, expected):
    calls = {}

    def spawn(target, devs, arguments, first_worker=0, monitor=None):
        calls["devices"] = devs
        calls["threads"] = [arguments(i, d, None if d != "cpu" else 1)[-1] for i, d in enumerate(devs)]
        return []

    monkeypatch.setattr(workers, "spawn_workers", spawn)
    config = StudyConfig(space=SearchSpace.model_validate(SPACE))
    workers.run_processes(config, RunOptions(devices=devices, workers_per_device=k, out=Path("o"), study_name="s"))
    assert calls["devices"] == expected
    assert all(
        (t is None) == (d != "cpu") for t, d in zip(calls["threads"], expected)
    )  # GPU workers keep torch's threads


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_cpu():
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"], report
    assert report["parity"]["logits_rel_err"] < 1e-5 and report["parity"]["stages_rel_err"] < 1e-5
    assert {(r["dtype"], r["batch"]) for r in report["deploy"]["rows"]} == {
        ("float32", 1),
        ("bfloat16", 1),
        ("float32", 2),
        ("bfloat16", 2),
    }
    assert [r["S"] for r in report["packs"]["rows"]] == [1, 2] and all(
        r["packed_img_s"] > 0 for r in report["packs"]["rows"]
    )
    assert [r["workers_per_device"] for r in report["study"]["rows"]] == [1, 2]
