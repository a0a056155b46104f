"""``xnetspace refine``'s whole run (:func:`refine_run`: refine a population study's folder, write
its files, verify when asked) and ``--verify N`` (:func:`verify`): a fresh population of the
refined space, trained with the original study's dataset, objective, recipe and proxy seeds
through the normal search machinery (random sampler, no pruner, no confirmation: what
``xnetspace search --population`` runs), and compared with the original population
(:func:`~.analysis.analyze`: EDFs, Kolmogorov-Smirnov, bootstrap CIs)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import optuna

from ..paths import output_folder
from ..spec import MAX_SEED
from .analysis import analyze
from .analysis_data import StudyData, load_run, study_data
from .analysis_plots import write_analysis
from .analysis_schema import Comparison, RefineResult, Verification
from .refine import Refinement, refine
from .refine_plots import REFINE_FILES, write_refine, write_result
from .runner import run_search
from .study import RunOptions, check_devices, check_workers

__all__ = ["refine_run", "verify"]


def refine_run(
    run: Path,
    out: Path,
    n_verify: int = 0,
    force: bool = False,
    seed: int = 0,
    devices: str | Sequence[str] = ("cpu",),
    workers_per_device: int | None = None,
    progress: bool = True,
) -> tuple[RefineResult, dict[str, Path]]:
    """Refine the population study in the folder ``run`` (:func:`~.refine.refine`), write
    ``refine.json``, the refined space and its figure into ``out``, and with ``n_verify`` train
    and compare a fresh population of that many members (:func:`verify`; its ``devices`` and
    ``workers_per_device`` are checked before anything is refined), adding it to ``refine.json``.

    Returns:
        ``(refine.json's object, a RefineResult; {"json": ..., "space": ..., "edf": ...})``.

    Raises:
        AnalysisError: not a study folder, too few members, not a population study (without ``force``).
        ValueError: a seed outside 0..MAX_SEED; with ``n_verify``, a device that is none, CUDA
            where there is none, or a worker count below 1 or above what the machine holds
            (all checked before anything is written).
        OSError: files that cannot be written (xnetspace.paths.PathError: ``out`` refused by the
            path rule, checked before any work).
        and what :func:`verify` raises.
    """
    if not 0 <= seed <= MAX_SEED:  # the rule of every --seed; scikit-learn would say it in its own words
        raise ValueError(f"--seed {seed} must be between 0 and {MAX_SEED:,}")
    output_folder(out, "--out", REFINE_FILES, create=False)  # before any work; made when written
    if n_verify:  # the verify study's options, checked before anything is read or written
        devices = check_devices(devices)
        check_workers(devices, workers_per_device)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fANOVA's and scipy's notices; refine.json says what matters
        data = study_data(load_run(run), str(run), Path(run) / "summary.json")
        refinement = refine(data, force=force, seed=seed)
    files = write_refine(refinement, out)
    if n_verify:
        checked = verify(refinement, data, out, n_verify, list(devices), workers_per_device, seed, progress=progress)
        refinement.result.verify = checked
        write_result(refinement.result, files["json"])  # refine.json again, now with its verify
    return refinement.result, files


def verify(
    refinement: Refinement,
    original: StudyData,
    out: Path,
    n: int,
    devices: list[str] | None = None,
    workers_per_device: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Verification:
    """Sample and train ``n`` members of the refined space in ``out/verify`` (resumable: the same
    command continues it) and compare them with ``original``.

    Returns:
        ``refine.json``'s ``verify`` (a :class:`~.analysis_schema.Verification`): ``folder``,
        ``requested``, ``members``, ``comparison`` (a: the refined space's population, b: the
        original; see :func:`~.analysis.analyze`), ``knobs_before``, ``knobs_after``.
        ``out/verify`` also gets ``analysis.json`` and figures.

    Raises:
        what :func:`~.runner.run_search` and :func:`~.analysis.analyze` raise.
    """
    folder = Path(out) / "verify"
    config = original.config.model_copy(update={"space": refinement.space})  # its dataset, objective, recipe, seeds
    options = RunOptions(
        n_trials=n,
        out=folder,
        study_name=f"{refinement.space.name}-verify",
        sampler="random",
        pruner="none",
        confirm_top=0,
        seed=seed,
        devices=devices or ["cpu"],
        workers_per_device=workers_per_device,
        progress=progress,
    )
    run_search(config, options)
    fresh = study_data(load_run(folder), str(folder), folder / "summary.json")
    result = analyze([fresh, original], seed=seed)
    write_analysis(result, folder)
    comparison = cast(Comparison, result.comparison)  # two studies: always compared
    return Verification(
        folder=str(folder),
        requested=n,
        members=len(fresh.candidates),
        comparison=comparison,
        knobs_before=len(refinement.result.knobs_before),
        knobs_after=len(refinement.result.knobs_after),
    )
