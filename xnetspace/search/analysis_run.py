"""``xnetspace analyze``'s whole run (:func:`run_analysis`): read the studies
(:mod:`.analysis_data`), analyse them (:func:`.analysis.analyze`) and write ``analysis.json`` and
the figures (:mod:`.analysis_plots`), with the numerical libraries' notices gathered on the way."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import optuna

from ..paths import output_folder
from ..text import shorten
from .analysis import analyze
from .analysis_data import AnalysisError, load_named_study, load_run, study_data
from .analysis_plots import ANALYSIS_FILES, write_analysis
from .analysis_schema import AnalysisResult

__all__ = ["run_analysis", "MAX_BINS"]

MAX_BINS = 100  # FLOP bins of the normalisation: each must hold candidates of every study to count


def run_analysis(
    runs: Sequence[Path | str] = (),
    storage: str | None = None,
    study_names: Sequence[str] = (),
    out: Path | None = None,
    bins: int = 5,
    force: bool = False,
) -> tuple[AnalysisResult, dict[str, Path], list[str]]:
    """``xnetspace analyze``: load the studies in the folders ``runs`` (each with its
    ``summary.json``) and those named ``study_names`` in ``storage``, :func:`~.analysis.analyze`
    them in that order and write ``analysis.json`` and the figures into ``out`` (default: the
    run's folder for one run, else ``runs/analysis``).

    Returns:
        ``(the analysis, {"json": ..., "edf": ..., ...} the files written, notices)``: the notices
        are the numerical libraries' warnings met on the way, each once and on one line.

    Raises:
        AnalysisError: ``bins`` outside 1..MAX_BINS, ``storage`` without ``study_names`` or the
            reverse, nothing to analyse, and what :func:`~.analysis_data.load_run`,
            :func:`~.analysis_data.load_named_study` and :func:`~.analysis.analyze` raise (all
            before anything is written).
        xnetspace.paths.PathError: an ``out`` that cannot be written (checked before the analysis).
    """
    folders, study_names = [Path(r) for r in runs], list(study_names)
    if not 1 <= bins <= MAX_BINS:  # a billion bins would fill the memory before anything is said
        raise AnalysisError(f"--bins {bins:,} must be between 1 and {MAX_BINS} (FLOP bins of the normalisation)")
    if bool(storage) != bool(study_names):
        raise AnalysisError("--storage and --study-name go together: give both, or study folders only")
    if not folders and not study_names:
        raise AnalysisError(
            "nothing to analyse: give study output folders (RUN ...) or --storage URL --study-name NAME"
        )
    one = len(folders) + len(study_names) == 1
    out = out or (folders[0] if one and folders else Path("runs") / "analysis")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:  # numerical libraries' notices: one line each
        warnings.simplefilter("always")
        data = [study_data(load_run(run), str(run), run / "summary.json") for run in folders]
        # study_names come with storage (checked above)
        data += [study_data(load_named_study(cast(str, storage), name), f"{storage} :: {name}") for name in study_names]
        output_folder(out, "--out", ANALYSIS_FILES, create=False)  # before the analysis; made when written
        result = analyze(data, force=force, bins=bins)
        files = write_analysis(result, out)
    notices = dict.fromkeys(
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if not issubclass(w.category, (DeprecationWarning, FutureWarning))
    )
    return result, files, [shorten(notice.splitlines()[0], 200) for notice in notices]
