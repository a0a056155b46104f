"""The errors the search half raises for input or situations a user can fix (the command line
maps each to one paragraph and exit status 2; :class:`WorkerCrashed` and :class:`StudyStalled` to exit
status 1)."""

from __future__ import annotations

from ..errors import ReportedError

__all__ = ["SearchError", "StorageError", "WorkerCrashed", "StudyStalled", "DataError"]


class SearchError(RuntimeError, ReportedError):
    """A study that cannot run as asked (e.g. resumed with another recipe); the message says why."""


class StorageError(SearchError):
    """A storage URL that cannot be opened; the message says why, without the password."""


class WorkerCrashed(SearchError):
    """Worker processes crashed and left the study unfinished; the message names each one and
    the log file with its traceback. Not the user's input: the command line exits with 1."""

    exit_status = 1


class StudyStalled(SearchError):
    """A study whose trials keep failing (:data:`~.study.MAX_FAILURES_IN_A_ROW` in a row, or every
    one of them): it stops, and the message gives the last reason. Not the input as such: the
    command line exits with 1."""

    exit_status = 1


class DataError(ValueError):
    """A dataset name, folder or prepared file that cannot be read; the message says which and why."""


class TrialFailed(RuntimeError):
    """A trial or job ended in failure with a recorded reason (out of memory, an error in
    training); the study goes on."""


class SurplusTrial(RuntimeError):
    """A trial created when there was nothing left for it to do (the study's N slots taken, a job
    run elsewhere); it does nothing."""
