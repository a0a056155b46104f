"""Where ``xnetspace build --save WHERE`` writes the network, and writing it there safely.

:func:`save_target` checks WHERE before anything is built: the regular file it names (through
any symlink), never a folder, a device, a FIFO or a socket, and one that can be written.
:func:`save_to` then writes into a temporary file beside it, synced, renamed over it: a failed
save leaves no half-written file and an existing file intact, and a symlink stays a symlink.
Both raise :class:`SaveError`, whose message is one paragraph naming WHERE.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .text import shorten

__all__ = ["SaveError", "save_target", "save_to", "through_link", "saved_line"]

_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


class SaveError(OSError):
    """The network cannot be saved where asked; the message says why and where."""


def save_target(where: str) -> Path:
    """The regular file that ``--save WHERE`` writes: WHERE itself, or the file a symlink (even a
    dangling one) points to. Checked before anything is built.

    Raises:
        SaveError: an empty name or one with a NUL byte, a symlink loop, a target that exists but
            is not a regular file (a folder, a device such as /dev/full, a FIFO, a socket: none is
            ever replaced or written into) or is read-only, and a folder where no file can be made
            (tried with an unnamed temporary file).
    """
    shown = shorten(where)
    if not where.strip():
        raise SaveError("--save needs a file name, got an empty one")
    if "\0" in where:
        raise SaveError(f"--save {shown!r}: a file name cannot hold a NUL byte")
    try:
        target = Path(where).resolve()  # follows every symlink; a dangling one gives its target
        mode = target.stat().st_mode if target.exists() else None
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python 3.11)
        raise SaveError(f"cannot save the network to {shown!r}: {getattr(err, 'strerror', None) or err}") from None
    link = f" (the symlink's target, {shorten(str(target))!r})" if through_link(where, target) else ""
    if mode is not None:
        kind = next((name for test, name in _FILE_KINDS if test(mode)), None)
        if kind is not None or not stat.S_ISREG(mode):
            raise SaveError(
                f"cannot save the network to {shown!r}: it is {kind or 'not a regular file'}{link}, not "
                f"a regular file; --save writes a checkpoint file and never replaces anything else"
            )
        if not mode & 0o222:
            raise SaveError(
                f"cannot save the network to {shown!r}: the file is read-only{link}; make it writable "
                f"(chmod u+w) or choose another name"
            )
    folder = target.parent  # missing folders are made at saving; the first existing one must take a file
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        with tempfile.TemporaryFile(dir=folder):  # an unnamed file where the file system allows one
            pass
    except OSError as err:
        raise SaveError(
            f"cannot save the network to {shown!r}: {err.strerror or err} (no new file can be made in "
            f"{shorten(str(folder))!r})"
        ) from None
    return target


def through_link(where: str, target: Path) -> bool:
    """Whether a symlink led from ``where`` to ``target``."""
    return str(target) != os.path.abspath(where)


def save_to(where: str, target: Path, write: Callable[[Path], Any]) -> None:
    """``write(path)`` (e.g. ``lambda path: save_checkpoint(model, path)``) into a temporary file
    beside ``target`` (the resolved ``--save WHERE``, :func:`save_target`), then renamed over it.

    Raises:
        SaveError: any error of the file system, named (ENOSPC: "No space left on device").
    """
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    created = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # ours alone; mode per umask
        created = True
        write(partial)
        os.replace(partial, target)
    except OSError as err:
        if created:
            try:
                partial.unlink()
            except OSError:
                pass
        step = (
            f" (no new file can be made in {shorten(str(target.parent))!r})"
            if str(err.filename) == str(partial)
            else ""
        )
        raise SaveError(f"cannot save the network to {shorten(where)!r}: {err.strerror or err}{step}") from None


def saved_line(where: str, target: Path) -> str:
    """``saved to WHERE``, naming the symlink's target when WHERE is a link."""
    through = f" (the symlink's target, {target})" if through_link(where, target) else ""
    return f"saved to {where}{through}"
