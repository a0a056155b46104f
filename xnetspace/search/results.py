"""Study results on disk: ``best_spec.yaml``, ``trials.csv``, ``history.png``, ``pareto.png``.

The best trial is chosen among completed, trained trials only, so it is always inside the
budget (over-budget samples are never trained). In a multi-objective study, ``best_spec.yaml``
is the Pareto-optimal trial with the highest top-1 and ``trials.csv`` marks the front.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..spec import NetworkSpec
from .progress import log
from .space import human_count

__all__ = ["SearchOutcome", "write_results", "best_trial", "pareto_front"]


@dataclass
class SearchOutcome:
    """What a finished (or interrupted) search produced."""

    study: optuna.Study
    best: Optional[FrozenTrial]
    files: dict[str, Path] = field(default_factory=dict)
    baseline: Optional[dict] = None


def _candidates(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials that trained a spec of their own (not a repeat of an earlier one)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("slot") and "duplicate_of" not in t.user_attrs]


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Non-dominated candidates (top-1 maximised, the second objective minimised)."""
    trials = _candidates(study)
    return [t for t in trials if not any(
        o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in trials)]


def best_trial(study: optuna.Study) -> Optional[FrozenTrial]:
    """Highest top-1 (on the Pareto front for multi-objective studies); ties: fewer FLOPs."""
    pool = pareto_front(study) if len(study.directions) > 1 else _candidates(study)
    return max(pool, key=lambda t: (t.values[0], -t.user_attrs.get("flops", 0)), default=None)


def write_results(study: optuna.Study, config, options, baseline: Optional[dict] = None):
    """Write the result files into ``options.out`` and print the best trial beside the baseline."""
    out = Path(options.out)
    files = {"trials": _write_trials_csv(study, out / "trials.csv"), "history": _plot_history(study, out / "history.png")}
    if len(study.directions) > 1:
        files["pareto"] = _plot_pareto(study, config, out / "pareto.png")
    best = best_trial(study)
    if best is not None:
        spec = NetworkSpec.model_validate(best.user_attrs["spec"])
        header = (f"# Best of study '{options.study_name}' (space {config.space.name}, dataset {config.dataset}): "
                  f"trial {best.number}, top-1 {best.values[0]:.2f},\n# {best.user_attrs['flops']:,} FLOPs at "
                  f"{'x'.join(map(str, config.space.constraints.image_size))}, {best.user_attrs['params']:,} params.\n")
        files["best_spec"] = out / "best_spec.yaml"
        files["best_spec"].write_text(header + spec.to_yaml())
        log(options, f"best: trial {best.number}, {human_count(best.user_attrs['flops'])} FLOPs, "
                      f"{human_count(best.user_attrs['params'])} params, top-1 {best.values[0]:.2f}  -> {files['best_spec']}")
    if baseline:
        log(options, f"baseline {baseline['preset']}: {human_count(baseline['flops'])} FLOPs, "
                      f"{human_count(baseline['params'])} params, top-1 {baseline['top1']:.2f} (same recipe)")
    log(options, "results: " + ", ".join(str(p) for p in files.values()))
    return SearchOutcome(study, best, files, baseline)


def _state(trial: FrozenTrial) -> str:
    return "REJECTED" if trial.user_attrs.get("rejected") else trial.state.name


def _write_trials_csv(study: optuna.Study, path: Path) -> Path:
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    knobs = sorted({name for t in trials for name in t.params})
    front = {t.number for t in pareto_front(study)} if len(study.directions) > 1 else set()
    fields = ["number", "state", "reason", "top1", "flops", "params", "latency_ms", "seconds", "epochs",
              "rejected_samples", "duplicate_of", "pareto", "spec_digest", *knobs]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for t in trials:
            a = t.user_attrs
            history = a.get("top1_history", [])
            writer.writerow({
                "number": t.number, "state": _state(t), "reason": a.get("reason", ""),
                "top1": f"{t.values[0]:.4f}" if t.values else (f"{history[-1]:.4f}" if history else ""),
                "flops": a.get("flops", ""), "params": a.get("params", ""),
                "latency_ms": f"{a['latency_ms']:.3f}" if "latency_ms" in a else "",
                "seconds": a.get("seconds", ""), "epochs": len(history) or "",
                "rejected_samples": a.get("rejected_samples", ""), "duplicate_of": a.get("duplicate_of", ""),
                "pareto": int(t.number in front) if front else "", "spec_digest": a.get("spec_digest", ""),
                **{k: t.params.get(k, "") for k in knobs},
            })
    return path


def _plot_history(study: optuna.Study, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("top1_history") and not t.user_attrs.get("rejected")]
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    stopped = [t for t in done if t.state != TrialState.COMPLETE]
    ax.scatter([t.number for t in complete], [t.values[0] for t in complete], s=18, label="completed")
    ax.scatter([t.number for t in stopped], [t.user_attrs["top1_history"][-1] for t in stopped], marker="x",
               s=18, color="grey", label="pruned / failed (last epoch)")
    best, xs, ys = -float("inf"), [], []
    for t in sorted(complete, key=lambda t: t.number):
        best = max(best, t.values[0])
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel="validation top-1 (%)", title=f"study '{study.study_name}'")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_pareto(study: optuna.Study, config, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials, front = _candidates(study), sorted(pareto_front(study), key=lambda t: t.values[1])
    scale, unit = (1e6, "MFLOPs") if config.objective == "top1-flops" else (1.0, "latency (ms)")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter([t.values[1] / scale for t in trials], [t.values[0] for t in trials], s=18, color="C0", label="trials")
    ax.plot([t.values[1] / scale for t in front], [t.values[0] for t in front], "o-", color="C3", label="Pareto front")
    ax.set(xlabel=unit, ylabel="validation top-1 (%)", title=f"study '{study.study_name}': top-1 vs {unit}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
