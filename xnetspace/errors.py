"""The error of a spec, or of a spec or space file, that cannot describe a TransXNet, and the
mark of the other errors that are answers rather than bugs.

Its own module so that both :mod:`xnetspace.text` (reading the files) and :mod:`xnetspace.spec`
(validating what they hold) raise :class:`SpecError` without importing each other;
:mod:`xnetspace.spec` re-exports it, as does the package. :class:`ReportedError` lets the command
line (``xnetspace.cli``, whose ``build`` never imports the search half) answer the search half's
errors without importing them.
"""

from __future__ import annotations

__all__ = ["SpecError", "ReportedError", "interrupted"]


class SpecError(ValueError):
    """A spec (or spec file) that cannot describe a TransXNet; the message says why and where."""


class ReportedError(Exception):
    """Base of the errors that say something the user can act on but are neither a bad value
    (``ValueError``) nor a file (``OSError``): e.g. a study resumed with another recipe
    (``xnetspace.search.errors.SearchError``). The command line answers one with its message in one
    paragraph and exits with :attr:`exit_status`: 2 (the input or the situation), or 1 where the
    input was fine but the work failed (``WorkerCrashed``: worker processes died; the message names
    their log files)."""

    exit_status: int = 2


def interrupted(err: BaseException) -> bool:
    """Whether ``err`` is a KeyboardInterrupt (Ctrl-C, or SIGTERM where the command line turns it
    into one) or was raised while one was being handled: Ctrl-C landing in a library's cleanup
    gives another error whose context is the interrupt (Optuna 5.0's ``_run_trial`` then raises
    ``UnboundLocalError: 'updated_state'`` from its ``finally``), and that is still an interrupt,
    never a bug. A context hidden on purpose (``raise ... from None``) is not followed."""
    pending, seen = [err], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt):
            return True
        pending += [e for e in (current.__cause__, None if current.__suppress_context__ else current.__context__) if e]
    return False
