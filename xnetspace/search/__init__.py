"""The search half of xnetspace: design spaces, proxy training, Optuna studies and their evidence.

Arrows point one way, down toward the spec (nothing here is imported by the network half)::

    space, data, train          what a candidate is and how it is trained (data: prepare, batches)
      -> study                  config, storage, the N slots
        -> objective            one trial: sample, reject, train, report
          -> progress, workers  terminal output; the trial loop, in processes
            -> results          files on disk
              -> runner         the whole search on the head node

``from xnetspace.search import run_search, StudyConfig, RunOptions`` is the Python entry point;
``xnetspace search`` (``xnetspace/cli.py``) is the command line over it.
"""

from .errors import SearchError, WorkerCrashed
from .results import SearchOutcome, best_trial, pareto_front, write_results
from .runner import progress_summary, run_search
from .study import ObjectiveName, RunOptions, StudyConfig, open_study

__all__ = [
    "run_search",
    "progress_summary",
    "StudyConfig",
    "RunOptions",
    "SearchError",
    "WorkerCrashed",
    "SearchOutcome",
    "ObjectiveName",
    "open_study",
    "best_trial",
    "pareto_front",
    "write_results",
]
