"""``xnetspace refine --verify N``: a fresh population of the refined space, trained with the
original study's dataset, objective, recipe and proxy seeds through the normal search machinery
(random sampler, no pruner, no confirmation: what ``xnetspace search --population`` runs), and
compared with the original population
(:func:`~.analysis.analyze`: EDFs, Kolmogorov-Smirnov, bootstrap CIs)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .analysis import StudyData, analyze, load_run, study_data
from .analysis_plots import write_analysis
from .refine import Refinement
from .runner import run_search
from .study import RunOptions

__all__ = ["verify"]


def verify(refinement: Refinement, original: StudyData, out: Path, n: int, devices: Optional[list[str]] = None,
           workers_per_device: Optional[int] = None, seed: int = 0, progress: bool = True) -> dict:
    """Sample and train ``n`` members of the refined space in ``out/verify`` (resumable: the same
    command continues it) and compare them with ``original``.

    Returns:
        ``refine.json``'s ``verify`` object: ``folder``, ``requested``, ``members``, ``comparison``
        (a: the refined space's population, b: the original; see :func:`~.analysis.analyze`),
        ``knobs_before``, ``knobs_after``. ``out/verify`` also gets ``analysis.json`` and figures.

    Raises:
        what :func:`~.runner.run_search` and :func:`~.analysis.analyze` raise.
    """
    folder = Path(out) / "verify"
    config = original.config.model_copy(update={"space": refinement.space})  # its dataset, objective, recipe, seeds
    options = RunOptions(n_trials=n, out=folder, study_name=f"{refinement.space.name}-verify", sampler="random",
                         pruner="none", confirm_top=0, seed=seed, devices=devices or ["cpu"],
                         workers_per_device=workers_per_device, progress=progress)
    run_search(config, options)
    fresh = study_data(load_run(folder), str(folder), folder / "summary.json")
    result = analyze([fresh, original], seed=seed)
    write_analysis(result, folder)
    return {"folder": str(folder), "requested": n, "members": len(fresh.candidates),
            "comparison": result["comparison"], "knobs_before": len(refinement.result["knobs_before"]),
            "knobs_after": len(refinement.result["knobs_after"])}
