"""Where ``run_search``'s options go: the modules a small search passes its ``RunOptions`` through.

    python benchmarks/options_trail.py

Runs a 4-trial search with confirmation (2 candidates, 2 seeds, the random-search control and a
fidelity sample of 1) on 64 synthetic images in process, with a made-up trainer (a score from the
spec's width, no training), and follows every call of an ``xnetspace.search`` function that
receives a ``RunOptions`` (as an argument or inside one: ``run.options``; not RunOptions' own
methods). Each function counts at its first call (the worker loop's repeats are not new
visits). Prints those first calls in order, then: rooms (distinct modules), stays (runs of first
calls in one module), re-entries (stays in a module entered before), the entries per module and
each module's functions. Issue 32's
figure, as filed: 14 rooms, 49 stays, 21 climbs back up, confirmation.py entered 9 times.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import xnetspace.search.jobs as jobs
import xnetspace.search.objective as objective
from xnetspace.search import RunOptions, StudyConfig, run_search
from xnetspace.search.space import SearchSpace
from xnetspace.search.train import TrainConfig, TrainResult

SPACE = {
    "name": "trail",
    "stages": [
        {"depth": [1, 2], "embed_dim": [16, 24], "num_heads": 1, "sr_ratio": 2},
        {"depth": 1, "embed_dim": [24, 32], "num_heads": 1, "sr_ratio": 1},
    ],
    "constraints": {"image_size": 16},
}


def fake_seeds(spec, data, seeds, config, device="cpu", report=None, pack=True):
    """``train_seeds`` without training: top-1 and loss from the spec's width, per seed."""
    width = sum(spec.embed_dims)
    results = []
    for seed in seeds:
        top1, loss = 50.0 + width / 4 + seed % 3, 2.0 - width / 100
        result = TrainResult(history=[top1] * config.epochs, loss_history=[loss] * config.epochs, seconds=0.0)
        results.append(result)
        if report is not None:
            report(config.epochs - 1, results)
    return results


def fake_zero_cost(spec, data, seed, batch_size=64, device="cpu"):
    width = float(sum(spec.embed_dims))
    return {"synflow": width / 10, "naswot": width + seed, "grad_norm": 100.0 / width}


def carries_options(frame) -> bool:
    """Whether the called function was handed options: an argument that is a RunOptions or holds
    one (``run.options``); RunOptions' own methods (``self``) are not a hand-over."""
    for name, value in frame.f_locals.items():
        if name != "self" and (
            isinstance(value, RunOptions) or isinstance(getattr(value, "options", None), RunOptions)
        ):
            return True
    return False


def main() -> None:
    for module in (objective, jobs):
        module.train_seeds = fake_seeds  # type: ignore[attr-defined]
        module.zero_cost_scores = fake_zero_cost  # type: ignore[attr-defined]
    trail: list[tuple[str, str]] = []

    def profile(frame, event, arg):
        if event == "call":
            name = frame.f_globals.get("__name__", "")
            if name.startswith("xnetspace.search") and carries_options(frame):
                trail.append((name.removeprefix("xnetspace.search."), frame.f_code.co_name))

    config = StudyConfig(
        space=SearchSpace.model_validate(SPACE),
        dataset="synthetic:64",
        objective="top1",
        train=TrainConfig(image_size=16, epochs=1, batch_size=32),
    )
    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(
            n_trials=4,
            out=Path(tmp) / "out",
            study_name="trail",
            progress=False,
            workers_per_device=1,
            sampler="random",
            pruner="none",
            confirm_top=2,
            confirm_seeds=2,
            fidelity_sample=1,
            baseline="random:auto",
        )
        sys.setprofile(profile)
        try:
            run_search(config, options)
        finally:
            sys.setprofile(None)
    functions: dict[str, list[str]] = {}
    for module, function in trail:
        if function not in functions.setdefault(module, []):
            functions[module].append(function)
    first = list(dict.fromkeys(trail))  # each function at its first call: the path once, loops not repeated
    stays = [m for i, (m, _) in enumerate(first) if i == 0 or first[i - 1][0] != m]
    print("first calls: " + " -> ".join(f"{m}.{f}" for m, f in first))
    print(f"rooms: {len(functions)}, stays: {len(stays)}, re-entries: {len(stays) - len(functions)}")
    print("entries per module: " + ", ".join(f"{m} {n}" for m, n in Counter(stays).most_common()))
    for module, names in functions.items():
        print(f"  {module}: {', '.join(names)}")


if __name__ == "__main__":
    main()
