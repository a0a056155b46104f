"""The fidelity study: how well each cheap score ranks a space's specs, against the noise ceiling.

``xnetspace fidelity SPACE --dataset D --n-specs M --seeds K --out DIR`` trains M random in-budget
specs of SPACE with K seeds under the space's proxy recipe (on the validation split) and K other
seeds under the confirmation recipe (twice the epochs, on the held-out test split), and records
every run (per-epoch training loss, validation or test cross-entropy and top-1) with each spec's
zero-cost scores, FLOPs and params. Then, for every score a search could rank by:

- the proxy's validation cross-entropy from 1 seed, and its mean over 2..K seeds; the same after
  each earlier epoch of the proxy recipe; the proxy's top-1; TSE (Ru et al., NeurIPS 2021) from 1
  seed and K seeds; each zero-cost score (Abdelfattah et al., ICLR 2021); FLOPs and params (the
  baselines any proxy must beat: ZiCo, ICLR 2023),

it gives Kendall tau, Spearman rho and precision@5 against the specs' K-seed confirmed mean, with
paired-bootstrap 95% intervals, beside the **noise ceiling**: Kendall tau between the means of two
disjoint halves of the confirmation seeds (:func:`~.stats.noise_ceiling`), the most any score can
reach when the target is itself a noisy mean. It also replays racing over seeds on the recorded
runs (``racing``): for each threshold z, the seeds a search would have spent and the ranking it
would have got (:func:`racing_replay`).

The runs are jobs (:mod:`.jobs`) of an Optuna study in ``DIR/fidelity.db``: a killed or interrupted
fidelity study resumes with the same command and trains nothing twice, and worker processes share
the cores. ``DIR/runs.csv`` holds the raw runs, ``DIR/fidelity.json`` the analysis (which
:func:`analyze_runs` recomputes from ``runs.csv`` alone), ``DIR/fidelity.png`` the figure.
"""

from __future__ import annotations

import csv
import math
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import stats as scipy_stats

from ..cost import cost_report
from ..paths import output_folder
from ..spec import MAX_SEED, NetworkSpec
from ..strict_json import to_json
from .confirmation import CONFIRM_SEED_OFFSET
from .data import DataSplit, load_dataset
from .errors import SearchError, WorkerCrashed
from .jobs import Job, JobObjective, enqueue_jobs, finished_record, job_results, job_state, open_job_study
from .plots import pyplot, save_figure
from .score import LOSS
from .space import SearchSpace
from .stats import noise_ceiling, pooled_seed_std, precision_at_k, rank_fidelity
from .train import TrainConfig, check_recipe
from .zero_cost import ZERO_COST

__all__ = [
    "FidelityConfig",
    "run_fidelity",
    "analyze_runs",
    "read_runs",
    "racing_replay",
    "report_lines",
    "FIDELITY_STUDY",
    "FIDELITY_FILES",
]

FIDELITY_STUDY = "fidelity"
FIDELITY_FILES = ("fidelity.db", "workers.log", "runs.csv", "fidelity.json", "fidelity.png")  # written into --out
_CONFIG_ATTR = "xnetspace_fidelity"


class FidelityConfig(BaseModel):
    """What defines a fidelity study (resuming it with another is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    space: SearchSpace
    dataset: str = "digits"
    n_specs: int = Field(30, ge=3, le=10_000)
    seeds: int = Field(4, ge=2, le=64, description="K: seeds per spec and recipe")
    confirm_epochs: int | None = Field(None, ge=1, description="default: twice the proxy's")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the spec sample")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the proxy recipe (default: the space's)")

    @model_validator(mode="before")
    @classmethod
    def _space_recipe(cls, data: Any) -> Any:
        """Without ``train``, the space's own recipe (what ``xnetspace fidelity`` trains with)."""
        if isinstance(data, dict) and data.get("train") is None:
            space = data.get("space")
            recipe = (
                space.train
                if isinstance(space, SearchSpace)
                else space.get("train")
                if isinstance(space, dict)
                else None
            )
            if recipe is not None:
                data = {**data, "train": recipe}
        return data

    @property
    def epochs(self) -> int:
        return self.confirm_epochs or 2 * self.train.epochs

    @property
    def proxy_seeds(self) -> tuple[int, ...]:
        return tuple(self.train.seed + k for k in range(self.seeds))

    @property
    def confirm_seeds(self) -> tuple[int, ...]:
        return tuple(self.train.seed + CONFIRM_SEED_OFFSET + k for k in range(self.seeds))


def specs(config: FidelityConfig, num_classes: int, in_chans: int) -> list[NetworkSpec]:
    """The M distinct in-budget specs, drawn uniformly from the space with ``config.seed``."""
    space = config.space
    pool = space.distinct_specs(config.n_specs, config.seed, "fidelity", num_classes=num_classes, in_chans=in_chans)
    if len(pool) < config.n_specs:
        raise SearchError(
            f"space '{space.name}' gave only {len(pool)} distinct in-budget specs of the "
            f"{config.n_specs} asked (--n-specs)"
        )
    return pool


def plan(config: FidelityConfig, pool: list[NetworkSpec]) -> list[Job]:
    """Two jobs per spec: its K proxy runs (with its zero-cost scores) and its K confirmation runs."""
    jobs = []
    for i, spec in enumerate(pool):
        data = spec.model_dump(mode="json")
        jobs.append(
            Job(
                role="proxy",
                label=f"spec {i}",
                spec=data,
                seeds=config.proxy_seeds,
                epochs=config.train.epochs,
                proxy=True,
                zero_cost=True,
            )
        )
        jobs.append(Job(role="confirm", label=f"spec {i}", spec=data, seeds=config.confirm_seeds, epochs=config.epochs))
    return jobs


def _open(config: FidelityConfig, out: Path, heartbeat: int = 10) -> optuna.Study:
    study = open_job_study(f"sqlite:///{(out / 'fidelity.db').resolve()}", FIDELITY_STUDY, heartbeat, LOSS)
    mine, stored = config.model_dump(mode="json"), study.user_attrs.get(_CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(_CONFIG_ATTR, mine)
    elif stored != mine:
        raise SearchError(f"{out} holds a fidelity study of another space, dataset, size or recipe; use another --out")
    return study


def _work(config_json: str, out: str, device: str, worker: int, poll: float = 2.0) -> None:
    """One worker: pop and train jobs until none is queued or running."""
    from .workers import drain_jobs

    config = FidelityConfig.model_validate_json(config_json)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = _open(config, Path(out))
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    objective = JobObjective(config.train, data, LOSS, device, worker)
    drain_jobs(study, objective, Path(out), worker, poll)


def _process(config_json: str, out: str, device: str, worker: int, threads: int | None) -> None:
    from .workers import guarded

    guarded(lambda d: _work(config_json, out, d, worker), device, threads)


def run_fidelity(
    config: FidelityConfig,
    out: Path,
    devices: str | Sequence[str] = ("cpu",),
    workers_per_device: int | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) the fidelity study in ``out`` and write ``runs.csv``, ``fidelity.json``
    and ``fidelity.png``; returns the analysis (:func:`analyze_runs`).

    ``devices``: a list or a comma-separated text (cpu, cuda, cuda:K); ``workers_per_device``
    worker processes on each (default: one per CPU core on the CPU, at most 8; one per GPU).

    Raises:
        ValueError: a device that is none, CUDA where there is none, fewer than one worker per
            device or more than the machine holds (checked before anything is written); a batch
            larger than the training split.
        SearchError: a space without M distinct in-budget specs; ``out`` holding another study.
        WorkerCrashed: worker processes that crashed before the study was done.
        xnetspace.search.data.DataError: a dataset that cannot be read.
    """
    from .study import check_devices, check_workers

    devices = check_devices(devices)
    per_device = check_workers(devices, workers_per_device)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    output_folder(out, "--out", FIDELITY_FILES)
    data = load_dataset(config.dataset, config.train.image_size, config.train.seed)
    check_recipe(config.train, data)
    pool = specs(config, data.num_classes, data.in_chans)
    study = _open(config, out)
    jobs = plan(config, pool)
    enqueue_jobs(study, jobs, config.train, config.dataset)
    start = time.perf_counter()
    _train_jobs(config, out, study, len(jobs), [d for _ in range(per_device) for d in devices], progress)
    rows = _runs_table(study, jobs, pool, config, data)
    _write_runs(rows, out / "runs.csv")
    result = analyze_runs(rows, seed=config.seed)
    result["seconds_this_run"] = round(time.perf_counter() - start, 1)
    result["seconds_trained"] = round(sum(float(r["seconds"]) for r in rows if r["first_of_job"]), 1)
    result["config"] = _config_summary(config, data)
    (out / "fidelity.json").write_text(to_json(result, indent=2) + "\n")
    _plot(result, out / "fidelity.png")
    return result


def _train_jobs(
    config: FidelityConfig, out: Path, study: optuna.Study, n_jobs: int, slots: list[str], progress: bool
) -> None:
    """Train the queued jobs with a worker process per device slot, under a progress bar.

    Raises:
        WorkerCrashed: workers that ended while jobs were still running or waiting.
    """
    from .workers import spawn_workers

    monitor = _Monitor(study, n_jobs, progress)
    try:
        lost = spawn_workers(
            _process,
            slots[: max(1, n_jobs)],  # no more than there are jobs
            lambda i, d, threads: (config.model_dump_json(), str(out), d, i, threads),
            monitor=monitor,
        )
    finally:
        monitor.close()
    _, running, waiting = job_state(study)
    if lost and running + waiting:
        raise WorkerCrashed(
            "fidelity workers ended before the study was done: "
            + "; ".join(w.describe() for w in lost)
            + ". Re-run the same command to continue it"
        )


def _config_summary(config: FidelityConfig, data: DataSplit) -> dict:
    """What ``fidelity.json`` records of the study's definition."""
    return {
        "space": config.space.name,
        "dataset": config.dataset,
        "n_specs": config.n_specs,
        "seeds": config.seeds,
        "proxy_epochs": config.train.epochs,
        "confirm_epochs": config.epochs,
        "split": "test" if data.test is not None else "val",
    }


class _Monitor:
    """A bar over the study's jobs (every worker's, read from the storage)."""

    def __init__(self, study: optuna.Study, total: int, progress: bool):
        from tqdm import tqdm

        self.study = study
        self.bar = tqdm(
            total=total,
            desc="fidelity",
            unit="job",
            disable=not progress,
            initial=job_state(study)[0],
            dynamic_ncols=True,
            mininterval=0,
        )

    def poll(self) -> None:
        done = job_state(self.study)[0]
        if done != self.bar.n:
            self.bar.update(done - self.bar.n)

    def log(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


# -- the runs table ------------------------------------------------------------------------------------
_LISTS = ("train_loss", "loss", "top1")


def _runs_table(
    study: optuna.Study, jobs: list[Job], pool: list[NetworkSpec], config: FidelityConfig, data: DataSplit
) -> list[dict]:
    results = job_results(study)
    size = config.space.constraints.image_size
    rows = []
    for job in jobs:
        record = finished_record(results.get(job.key(config.train, config.dataset), []))
        if record is None:
            continue
        index = int(job.label.split()[-1])
        spec = pool[index]
        report = cost_report(spec, size)
        knobs = {
            f"stage{i}.{k}": (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
            for i, stage in enumerate(spec.model_dump(mode="json")["stages"], start=1)
            for k, v in stage.items()
        }
        for n, run in enumerate(record.runs):
            rows.append(
                {
                    "spec": index,
                    "spec_digest": spec.digest(),
                    "recipe": job.role,
                    "seed": run.seed,
                    "epochs": run.epochs,
                    "flops": report.flops,
                    "params": report.params,
                    **{name: record.zero_cost.get(name, "") for name in ZERO_COST},
                    **{name: ";".join(f"{v:.6g}" for v in getattr(run, name)) for name in _LISTS},
                    "seconds": record.seconds or 0.0,
                    "first_of_job": n == 0,
                    **knobs,
                }
            )
    return rows


def _write_runs(rows: list[dict], path: Path) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_runs(path: Path | str) -> list[dict]:
    """``runs.csv`` as the rows :func:`analyze_runs` takes."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the analysis --------------------------------------------------------------------------------------
def _specs_of(rows: list[dict]) -> dict[int, dict]:
    """Per spec: its proxy runs and confirmation runs (seed order), zero-cost scores, FLOPs, params."""
    out: dict[int, dict] = {}
    for row in rows:
        spec = out.setdefault(int(row["spec"]), {"proxy": [], "confirm": [], "row": row})
        run: dict[str, Any] = {name: [float(v) for v in str(row[name]).split(";") if v != ""] for name in _LISTS}
        run["seed"] = int(row["seed"])
        spec[row["recipe"]].append(run)
    for spec in out.values():
        for recipe in ("proxy", "confirm"):
            spec[recipe].sort(key=lambda r: r["seed"])
    return out


def _score(name: str, label: str, values: Sequence[float], target: Sequence[float], maximize: bool, seed: int) -> dict:
    sign = -1.0 if maximize else 1.0  # oriented so that +1 means: ranks the specs as the confirmation does
    fid = rank_fidelity([sign * v for v in values], target, seed=seed)
    return {
        "name": name,
        "label": label,
        "kendall_tau": fid["kendall_tau"],
        "spearman_rho": fid["spearman_rho"],
        "ci95": fid["ci95"],
        "n": fid["n"],
        "precision_at_5": precision_at_k([sign * v for v in values], target, k=5),
        "precision_at_5_ci95": _bootstrap_precision([sign * v for v in values], target, seed),
    }


def _bootstrap_precision(values: Sequence[float], target: Sequence[float], seed: int, resamples: int = 1000) -> list:
    x, y = np.asarray(values, dtype=float), np.asarray(target, dtype=float)
    if len(x) < 5:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    draws = [precision_at_k(x[i], y[i], k=5) for i in (rng.integers(0, len(x), size=len(x)) for _ in range(resamples))]
    return [float(v) for v in np.percentile(draws, [2.5, 97.5])]


def analyze_runs(rows: list[dict], seed: int = 0) -> dict:
    """Rank fidelity of every score against the K-seed confirmed mean cross-entropy, the noise
    ceiling, and racing replayed on the recorded runs, from the runs table alone (``runs.csv``:
    :func:`read_runs`). Specs missing a recipe's runs are left out.

    Returns ``{"target", "n_specs", "seeds", "ceiling", "scores": [...], "racing": [...],
    "noise"}``; each score: ``name``, ``label``, ``kendall_tau``, ``spearman_rho``, ``ci95``
    (paired bootstrap over specs), ``precision_at_5`` (with ``precision_at_5_ci95``),
    ``fraction_of_ceiling``.
    """
    specs_ = {k: v for k, v in _specs_of(rows).items() if v["proxy"] and v["confirm"]}
    keys = sorted(specs_)
    k = min(len(specs_[i]["proxy"]) for i in keys) if keys else 0
    target = [statistics.fmean(r["loss"][-1] for r in specs_[i]["confirm"]) for i in keys]
    proxy = {i: specs_[i]["proxy"] for i in keys}
    scores = [
        _score(name, label, values, target, maximize, seed)
        for name, label, values, maximize in (*_proxy_candidates(proxy, keys, k), *_cost_candidates(specs_, keys))
    ]
    scores += _self_scores(specs_, keys, seed)
    ceiling = noise_ceiling([[r["loss"][-1] for r in specs_[i]["confirm"]] for i in keys], seed=seed)
    for entry in scores:
        c, t = ceiling["kendall_tau"], entry["kendall_tau"]
        entry["fraction_of_ceiling"] = t / c if c and c > 0 and math.isfinite(t) else math.nan
    seed_std = pooled_seed_std([[r["loss"][-1] for r in proxy[i]] for i in keys])
    return {
        "target": f"confirmed cross-entropy, mean of {min(len(specs_[i]['confirm']) for i in keys) if keys else 0} "
        f"seeds, held-out split",
        "n_specs": len(keys),
        "seeds": k,
        "ceiling": ceiling,
        "scores": scores,
        "noise": {
            "proxy_seed_std": seed_std,
            "proxy_architecture_std": _architecture_std(proxy, keys, k, seed_std),
            "confirm_seed_std": pooled_seed_std([[r["loss"][-1] for r in specs_[i]["confirm"]] for i in keys]),
        },
        "racing": [racing_replay(proxy, target, z, seed=seed) for z in (0.5, 1.0, 2.0)] if k >= 2 else [],
    }


# A score to rank by before it is compared with the target: name, label, one value per spec, and
# whether larger values should mean a better (lower cross-entropy) spec.
_Candidate = tuple[str, str, list[float], bool]


def _proxy_candidates(proxy: dict[int, list[dict]], keys: list[int], k: int) -> list[_Candidate]:
    """The proxy recipe's scores: cross-entropy from 1..K seeds, after each earlier epoch, top-1, TSE."""
    out: list[_Candidate] = []
    epochs = min(len(r["loss"]) for i in keys for r in proxy[i]) if keys else 0
    for s in range(1, k + 1):
        out.append(
            (
                f"loss@{s}",
                f"proxy cross-entropy, mean of {s} seed{'s' if s > 1 else ''}",
                [statistics.fmean(r["loss"][-1] for r in proxy[i][:s]) for i in keys],
                False,
            )
        )
    for e in range(1, epochs):
        out.append(
            (
                f"loss@1/epoch{e}",
                f"proxy cross-entropy after epoch {e} of {epochs}, 1 seed",
                [proxy[i][0]["loss"][e - 1] for i in keys],
                False,
            )
        )
        out.append(
            (
                f"loss@{k}/epoch{e}",
                f"proxy cross-entropy after epoch {e} of {epochs}, mean of {k} seeds",
                [statistics.fmean(r["loss"][e - 1] for r in proxy[i]) for i in keys],
                False,
            )
        )
    out.append(("top1@1", "proxy top-1, 1 seed", [proxy[i][0]["top1"][-1] for i in keys], True))
    out.append(
        (
            f"top1@{k}",
            f"proxy top-1, mean of {k} seeds",
            [statistics.fmean(r["top1"][-1] for r in proxy[i]) for i in keys],
            True,
        )
    )
    out.append(
        (
            "tse@1",
            "TSE (sum of epoch training losses), 1 seed",
            [math.fsum(proxy[i][0]["train_loss"]) for i in keys],
            False,
        )
    )
    out.append(
        (
            f"tse@{k}",
            f"TSE, mean of {k} seeds",
            [statistics.fmean(math.fsum(r["train_loss"]) for r in proxy[i]) for i in keys],
            False,
        )
    )
    return out


def _cost_candidates(specs_: dict[int, dict], keys: list[int]) -> list[_Candidate]:
    """The scores known before training: each zero-cost score (where every spec has a finite one),
    params and FLOPs."""
    out: list[_Candidate] = []
    for name in ZERO_COST:
        values = [float(specs_[i]["row"][name]) for i in keys]
        if all(math.isfinite(v) for v in values):
            out.append((name, f"{name} at initialisation", values, True))
    out.append(("params", "parameter count", [float(specs_[i]["row"]["params"]) for i in keys], True))
    out.append(("flops", "FLOPs", [float(specs_[i]["row"]["flops"]) for i in keys], True))
    return out


def _self_scores(specs_: dict[int, dict], keys: list[int], seed: int) -> list[dict]:
    """Each recipe against itself: s seeds against the mean of its other K - s (so no seed is on both
    sides). For the confirmation recipe, what a proxy as long as the target buys; for the proxy
    recipe, how well one seed ranks the objective a study of that recipe confirms."""
    scores = []
    for recipe, short in (("confirm", "confirmation"), ("proxy", "proxy")):
        runs = {i: specs_[i][recipe] for i in keys}
        kr = min(len(runs[i]) for i in keys) if keys else 0
        for s in range(1, kr // 2 + 1):
            scores.append(
                _score(
                    f"{recipe}@{s}/self",
                    f"the {short} recipe itself, {s} seed{'s' if s > 1 else ''}, "
                    f"against the mean of its other {kr - s} (not the target)",
                    [statistics.fmean(r["loss"][-1] for r in runs[i][:s]) for i in keys],
                    [statistics.fmean(r["loss"][-1] for r in runs[i][s:]) for i in keys],
                    False,
                    seed,
                )
            )
    return scores


def _architecture_std(proxy: dict[int, list[dict]], keys: list[int], k: int, seed_std: float) -> float:
    """The std of the specs' K-seed proxy means less what the seeds' noise adds to it (nan with
    fewer than 2 specs or no seeds)."""
    if not (k and len(keys) > 1):
        return math.nan
    means = [statistics.fmean(r["loss"][-1] for r in proxy[i]) for i in keys]
    return math.sqrt(max(0.0, statistics.pvariance(means) - seed_std**2 / k))


def racing_replay(
    proxy: dict[int, list[dict]], target: Sequence[float], z: float, seed: int = 0, orders: int = 20
) -> dict:
    """Racing over seeds replayed on recorded runs: specs arrive in a random order; each gets its
    first half of the seeds; it gets the rest unless its mean proxy cross-entropy is worse than the
    incumbent's (the best fully evaluated so far) by more than ``z`` standard errors (the pooled
    seed std of the specs evaluated so far), as :class:`~.objective.Objective` races. Averaged
    over ``orders`` random orders: the fraction of the seed-runs spent, Kendall tau of the
    resulting scores against ``target``, and how often the spec with the best target keeps all
    its seeds and ranks first."""
    keys = sorted(proxy)
    k = min(len(proxy[i]) for i in keys)
    first = max(1, k // 2)
    rng = random.Random(seed)
    spent, taus, kept_best, found_best = [], [], [], []
    best_true = keys[int(np.argmin(target))]
    for _ in range(orders):
        order = keys[:]
        rng.shuffle(order)
        seen: dict[int, list[float]] = {}
        for i in order:
            runs = [r["loss"][-1] for r in proxy[i]]
            mine = runs[:first]
            full = [v for v in seen.values() if len(v) == k]
            sigma = pooled_seed_std([v for v in seen.values() if len(v) > 1])
            go_on = True
            if full and sum(len(v) > 1 for v in seen.values()) >= 3 and math.isfinite(sigma):
                best = min(full, key=statistics.fmean)
                gap = statistics.fmean(mine) - statistics.fmean(best)
                go_on = gap <= z * sigma * math.sqrt(1 / len(mine) + 1 / len(best))
            seen[i] = runs if go_on else mine
        spent.append(sum(len(v) for v in seen.values()) / (k * len(keys)))
        scores = [statistics.fmean(seen[i]) for i in keys]
        taus.append(float(scipy_stats.kendalltau(scores, target).statistic))
        kept_best.append(len(seen[best_true]) == k)
        found_best.append(keys[int(np.argmin(scores))] == best_true)
    return {
        "z": z,
        "first_seeds": first,
        "seeds": k,
        "fraction_of_runs": statistics.fmean(spent),
        "kendall_tau": statistics.fmean(taus),
        "best_kept_all_seeds": statistics.fmean(kept_best),
        "best_ranked_first": statistics.fmean(found_best),
    }


def _plot(result: dict, path: Path) -> Path | None:
    """Kendall tau of each score (95% CI) against the noise ceiling's band."""
    scores = [s for s in result["scores"] if s["kendall_tau"] is not None and math.isfinite(s["kendall_tau"])]
    if not scores:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(scores) + 1.5))
    y = np.arange(len(scores))
    taus = [s["kendall_tau"] for s in scores]
    lo = [t - s["ci95"]["kendall_tau"][0] for t, s in zip(taus, scores)]
    hi = [s["ci95"]["kendall_tau"][1] - t for t, s in zip(taus, scores)]
    ax.errorbar(taus, y, xerr=[lo, hi], fmt="o", capsize=3)
    c = result["ceiling"]
    if c["kendall_tau"] is not None and math.isfinite(c["kendall_tau"]):
        ax.axvspan(c["ci95"][0], c["ci95"][1], color="C2", alpha=0.2, label="noise ceiling (95% CI)")
        ax.axvline(c["kendall_tau"], color="C2")
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_yticks(y, [s["name"] for s in scores], fontsize=8)
    ax.set(
        xlabel=f"Kendall tau against the {result['target']}",
        title=f"fidelity over {result['n_specs']} specs x {result['seeds']} seeds",
    )
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def report_lines(result: dict, out: Path | None = None) -> list[str]:
    """The fidelity study in words (``xnetspace fidelity``): the noise ceiling, each score's rank
    correlations with their 95% intervals, racing replayed, and the files in ``out`` when given."""

    def ci(value, interval) -> str:
        if value is None or value != value:
            return "n/a"
        return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"

    c = result["ceiling"]
    lines = [
        f"{result['n_specs']} specs x {result['seeds']} seeds; target: {result['target']}; noise ceiling "
        f"(Kendall tau, half the seeds against the other half): {ci(c['kendall_tau'], c['ci95'])}"
    ]
    for s in result["scores"]:
        lines.append(
            f"  {s['name']:>18s}  tau {ci(s['kendall_tau'], s['ci95']['kendall_tau'])}  rho "
            f"{ci(s['spearman_rho'], s['ci95']['spearman_rho'])}  precision@5 {s['precision_at_5']:.2f}"
        )
    for r in result["racing"]:
        lines.append(
            f"  racing z={r['z']:g}: {100 * r['fraction_of_runs']:.0f}% of the runs, tau {r['kendall_tau']:.2f}, "
            f"the best spec kept all its seeds {100 * r['best_kept_all_seeds']:.0f}% of the time"
        )
    if out is not None:
        lines.append(f"files: {out / 'runs.csv'}, {out / 'fidelity.json'}, {out / 'fidelity.png'}")
    return lines
