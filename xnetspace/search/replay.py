"""Search strategies replayed against a table, hundreds of times, without training.

NATS-Bench (Dong et al., TPAMI 2021) compares search strategies by running each 500 times against
its table; JAHS-Bench-201 (Bansal et al., NeurIPS 2022) asks for regret against cost over many
seeds. ``xnetspace replay TABLE --samplers random,tpe,... --budget 10,25,50 --repeats R`` does the
same for a table of :mod:`.tabulate` (read with :mod:`xnetspace.bench`):

- each sampler searches the table's space through Optuna exactly as ``xnetspace search`` does:
  the space's own parameters (:meth:`~.space.SearchSpace.sample` on an Optuna trial), invalid and
  over-budget samples rejected before anything is "trained" and told to the sampler as pruned
  (they take no evaluation), a spec drawn again taking its earlier result (it takes an
  evaluation, as it takes one of a study's N trials, but no compute);
- an evaluation returns one seed's validation score after the proxy's last epoch (the seed drawn
  once per repeat, the same for every sampler in that repeat, so samplers are compared paired);
  the search never reads a test score;
- a sampler's outcome after n evaluations is the spec it ranks best so far (its best validation
  score, ties to the earlier), judged by that spec's mean test score over all the table's seeds;
  regret is its distance to the table's best spec by the same measure.

Samplers (:data:`SAMPLERS`): ``random``; ``tpe``, the study's TPE as :func:`~.study.make_sampler`
builds it (multivariate, ``min(10, max(2, N // 3))`` random start-up trials for a budget of N);
``tpe-multivariate``, Optuna's TPE with its own defaults (10 start-up trials; in Optuna 5 every
TPE is multivariate, so this differs from ``tpe`` only in its start-up); ``gp``, Optuna's
GPSampler (slow: ``gp_repeats`` repeats, fewer than the others); ``evolution``, regularized
evolution (:mod:`.evolution`, Real et al., AAAI 2019); and ``protocol``, the default study itself
(:mod:`.replay_protocol`). One search is :mod:`.replay_search`; the statistics and the figure
:mod:`.replay_stats`.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from ..bench import Bench
from ..strict_json import json_safe
from .replay_protocol import protocol_outcomes
from .replay_search import (
    SAMPLERS,
    Oracle,
    ReplayConfig,
    ReplayError,
    replay_sampler,
    sampler_unavailable,
    seed_positions,
    study_config,
)
from .replay_stats import plot_replay, summarize

__all__ = ["run_replay", "ReplayConfig", "ReplayError", "SAMPLERS"]


# -- the whole replay ----------------------------------------------------------------------------------
def run_replay(bench: Bench, config: ReplayConfig, out: Path | None = None, progress: bool = True) -> dict:
    """Replay every sampler of ``config`` against ``bench`` and summarise (:mod:`.replay_stats`);
    with ``out``, write ``replay.json``, ``replay.csv`` (one row per sampler, budget and repeat)
    and ``replay.png`` there. Returns the summary (``replay.json``).

    Raises:
        ReplayError: a table the replay cannot use (:meth:`Oracle.of`).
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core (GPSampler's torch would take them all)
    try:
        summary, results, seeds = _replay_all(bench, config, progress)
    finally:
        torch.set_num_threads(threads)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "replay.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
        _write_rows(results, config, seeds, out / "replay.csv")
        plot_replay(Oracle.of(bench, config.score), config, results, out / "replay.png")
    return summary


def _replay_all(bench: Bench, config: ReplayConfig, progress: bool) -> tuple[dict, dict[str, dict], np.ndarray]:
    """Every sampler's replays (the default study first: random search then runs on to its
    compute), and their summary."""
    oracle = Oracle.of(bench, config.score)
    seeds = seed_positions(oracle, config)
    results: dict[str, dict] = {}
    unavailable = {s: why for s in config.samplers if (why := sampler_unavailable(s))}
    until = None
    order = sorted((s for s in config.samplers if s not in unavailable), key=lambda s: (s != "protocol", s != "random"))
    bar = _bar(len(order), progress)
    for name in order:
        start = time.perf_counter()
        if name == "protocol":
            results[name] = protocol_outcomes(oracle, config, seeds, study_config(oracle, config.score))
            until = np.max(np.stack(list(results[name]["epochs"].values())), axis=0)
        else:
            results[name] = replay_sampler(oracle, name, config, seeds, until if name == "random" else None)
        results[name]["replay_seconds"] = time.perf_counter() - start
        bar.update(1)
    bar.close()
    return summarize(oracle, config, results, unavailable), results, seeds


def _bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="replay", unit="sampler", disable=not progress, dynamic_ncols=True)


def _write_rows(results: dict[str, dict], config: ReplayConfig, seeds: np.ndarray, path: Path) -> Path:
    """One row per sampler, budget and repeat: the seed's position, the chosen spec's position,
    its regret and the replica-epochs charged."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sampler", "budget", "repeat", "seed_position", "chosen", "regret", "epochs"])
        for name, result in results.items():
            for b in config.budgets:
                for r, (c, g, e) in enumerate(zip(result["chosen"][b], result["regret"][b], result["epochs"][b])):
                    writer.writerow([name, b, r, int(seeds[r]), int(c), f"{g:.6g}", int(e)])
    return path
