"""Log files for what must not reach the terminal as a traceback: internal errors of the command
line and crashes of worker processes. Both go to ``$TMPDIR/xnetspace-logs/`` (docs/specs.md, "Errors and
exit statuses"), one file per event, so a user can attach it to a bug report."""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

__all__ = ["LOG_FOLDER", "error_log"]

LOG_FOLDER = Path(tempfile.gettempdir()) / "xnetspace-logs"


def error_log(err: BaseException, name: str | None = None) -> Path | None:
    """Write ``err``'s traceback and the command line to ``LOG_FOLDER/NAME.log`` (a new unique
    ``error-*.log`` without ``name``); returns its path, None when no file could be written."""
    try:
        LOG_FOLDER.mkdir(exist_ok=True)
        if name is None:
            fd, path = tempfile.mkstemp(prefix="error-", suffix=".log", dir=LOG_FOLDER)
            file = open(fd, "w")
        else:
            path = str(LOG_FOLDER / f"{name}.log")
            file = open(path, "w")
        with file:
            file.write(f"command: {sys.argv!r}\n\n{''.join(traceback.format_exception(err))}")
        return Path(path)
    except OSError:
        return None
