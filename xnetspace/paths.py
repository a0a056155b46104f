"""The one rule for every file and folder a command writes (issue 28): `build --save`,
`scale --save`, `prepare --out` and its cache, the output folders of `search`, `fidelity`,
`analyze` and `refine` (and the default ``runs/NAME``).

A target is checked before any work, with ``os.stat``/``os.lstat`` only (nothing is opened, so
a FIFO never blocks):

- an empty name, a NUL byte and, for a file, a name ending in ``/`` are refused;
- a symlink is followed to its target (a dangling one too); a symlink loop is refused;
- a folder, a device, a FIFO or a socket is never replaced or written into as a file, a file
  never used as a folder;
- a read-only file or folder is refused (also as root, who could write it anyway);
- an input of the same command is never an output, nor is anything inside an input folder;
- the folder that will hold a new file must take one (an unnamed temporary file is tried).

Files are then written atomically (:func:`write_atomically`): into a new temporary file beside the
target (``O_EXCL``: never an existing name), synced, renamed over the target. A failure leaves
the old file intact and no temporary file behind, and a symlink stays a symlink.

Names that become path components (a space's ``name``, ``--study-name`` in ``runs/NAME``) go
through :func:`path_name` first, so that they never leave their folder.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, overload

from .errors import ReportedError
from .text import shorten

__all__ = [
    "PathError",
    "output_file",
    "output_folder",
    "folder_option",
    "write_atomically",
    "path_name",
    "through_link",
    "saved_line",
]

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)
MAX_NAME = 100  # characters of a name made into a folder name (file systems allow 255 bytes)


class PathError(OSError, ReportedError):
    """A file or folder that a command must not or cannot write; the message names it and says
    why, in one paragraph. An OSError for Python callers; a ReportedError so that the command line
    prints the message whole (exit 2)."""


def _text(where: str | Path, option: str) -> str:
    text = str(where)
    if not text.strip():
        raise PathError(f"{option} needs a name, got an empty one")
    if "\0" in text:
        raise PathError(f"{option} {shorten(text)!r}: a name cannot hold a NUL byte")
    return text


def _resolve(text: str, fail: Callable[[str], PathError]) -> tuple[Path, int | None]:
    """``text`` with every symlink followed (a dangling one gives its target), and its mode (None:
    nothing there). ``fail(why)`` makes the error: a loop, a name too long, ..."""
    try:
        target = Path(text).resolve()  # lstat and readlink only: nothing is opened
        try:
            return target, os.stat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):  # nothing there; the folder check names why
            return target, None
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python 3.11's resolve)
        loop = isinstance(err, RuntimeError) or getattr(err, "errno", None) == errno.ELOOP
        raise fail("a symlink loop" if loop else getattr(err, "strerror", None) or str(err)) from None


def _kind(mode: int) -> str | None:
    """The words for a mode that is not a regular file ("a FIFO (named pipe)"); None for a file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def through_link(where: str | Path, target: Path) -> bool:
    """Whether a symlink (or ``..``) led from ``where`` to ``target``."""
    return str(target) != os.path.abspath(where)


def _link(where: str | Path, target: Path) -> str:
    return f" (the symlink's target, {shorten(str(target))!r})" if through_link(where, target) else ""


def _check_inputs(target: Path, inputs: Iterable[str | Path], fail: Callable[[str], PathError]) -> None:
    """Refuse ``target`` when it is one of ``inputs`` (the same file, through any link) or lies
    inside an input folder."""
    for given in inputs:
        try:
            real = Path(given).resolve()
            if not real.exists():
                continue
            same = real == target or (target.exists() and os.path.samefile(real, target))
        except (OSError, RuntimeError, ValueError):
            continue  # an input that cannot be resolved is refused by the code reading it
        if same:
            raise fail(f"it is an input of this command ({shorten(str(given))!r}); an output never replaces an input")
        if real.is_dir() and target.is_relative_to(real):
            raise fail(f"it is inside the input folder {shorten(str(given))!r}; write the output elsewhere")


def _check_room(folder: Path, fail: Callable[[str], PathError]) -> None:
    """The first existing folder above a new path: a writable folder in which a file can be made."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    shown = shorten(str(folder))
    try:
        mode = os.stat(folder).st_mode
        if not stat.S_ISDIR(mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        if not mode & 0o222:
            raise PermissionError(errno.EACCES, "the folder is read-only", str(folder))
        with tempfile.TemporaryFile(dir=folder):  # an unnamed file where the file system allows one
            pass
    except OSError as err:
        raise fail(f"{err.strerror or err} (no new file can be made in {shown!r})") from None


def output_file(
    where: str | Path, option: str, what: str, *, inputs: Iterable[str | Path] = (), replace: bool = True
) -> Path:
    """The regular file an output option (``--save WHERE``, ``--out WHERE``) writes: WHERE itself
    or the file a symlink (even a dangling one) points to, checked by the rule of the module
    docstring before any work.

    Args:
        option: the option's name in messages ("--save").
        what: what is written, as in "cannot {what} to WHERE" ("save the network").
        inputs: the command's input files and folders: WHERE may be none of them and lie in none.
        replace: whether an existing regular file may be replaced (False: prepare's ``--out``).

    Raises:
        PathError: an empty name, a NUL byte, a trailing ``/``, a symlink loop, a target that is
            not a regular file (a folder, /dev/full, a FIFO, a socket), is read-only, exists when
            ``replace`` is False, is an input or inside an input folder, and a folder where no
            file can be made.
    """
    text = _text(where, option)
    shown = shorten(text)

    def fail(why: str) -> PathError:
        return PathError(f"cannot {what} to {shown!r}: {why}")

    if text.endswith(("/", os.sep)):
        raise fail(f"a name ending in '/' is a folder; {option} takes a file name")
    target, mode = _resolve(text, fail)
    link = _link(text, target)
    _check_inputs(target, inputs, fail)
    if mode is not None:
        kind = _kind(mode)
        if kind is not None:
            raise fail(
                f"it is {kind}{link}, not a regular file; {option} writes a file and never replaces anything else"
            )
        if not replace:
            raise fail(f"the file exists{link}; {option} never replaces a file: remove it or choose another name")
        if not mode & 0o222:
            raise fail(f"the file is read-only{link}; make it writable (chmod u+w) or choose another name")
    _check_room(target.parent, fail)
    return target


def output_folder(where: str | Path, option: str, files: Iterable[str] = (), create: bool = True) -> Path:
    """Check and create (with its parents) the output folder WHERE of a command, before any work;
    returns WHERE as given (a symlink stays one: files are written through it).

    Args:
        option: the option's name in messages ("--out").
        files: the names of the files the command writes into the folder: each may be missing or
            a writable regular file, never a FIFO, a device, a folder or a socket.
        create: False: check only (a command checks before its work, creates when it writes).

    Raises:
        PathError: an empty name, a NUL byte, a symlink loop, something there that is not a
            folder (a file, a FIFO, ...), a read-only folder, a named file in it that cannot be
            written, a folder that cannot be made.
    """
    text = _text(where, option)
    shown = shorten(text)

    def fail(why: str) -> PathError:
        return PathError(f"cannot write into the folder {shown!r} ({option}): {why}")

    target, mode = _resolve(text, fail)
    link = _link(text, target)
    if mode is None:
        _check_room(target.parent, fail)
    elif not stat.S_ISDIR(mode):
        kind = "a file" if stat.S_ISREG(mode) else _kind(mode)
        raise fail(f"it is {kind}{link}, not a folder")
    elif not mode & 0o222:
        raise fail(f"the folder is read-only{link}")
    for name in files:

        def fail_inside(why: str, name: str = name) -> PathError:
            return fail(f"its {name}: {why}")

        _, inner = _resolve(str(target / name), fail_inside)
        kind = None if inner is None else _kind(inner)
        if kind is not None or (inner is not None and not inner & 0o222):
            raise fail(f"its {name} is {kind or 'read-only'}; the command writes a regular file there")
    try:
        if create:
            target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    return Path(text)


@overload
def folder_option(value: str, option: str = ...) -> Path: ...
@overload
def folder_option(value: None, option: str = ...) -> None: ...
@overload
def folder_option(value: str | None, option: str = ...) -> Path | None: ...
def folder_option(value: str | None, option: str = "--out") -> Path | None:
    """An output folder option as typed on the command line (None: the command's default).
    Refused here, where the text is still there: an empty name (a Path of it is ``.``, the working
    folder) and a NUL byte; :func:`output_folder` checks the rest when the command writes.

    Raises:
        PathError: an empty name or a NUL byte.
    """
    return None if value is None else Path(_text(value, option))


def write_atomically(target: Path, write: Callable[[Path], Any], what: str, where: str | Path | None = None) -> None:
    """``write(path)`` (e.g. ``lambda path: save_checkpoint(model, path)``) into a new temporary
    file beside ``target`` (checked by :func:`output_file`), synced, then renamed over ``target``.

    Args:
        what: what is written, as in "cannot {what} to WHERE".
        where: the name the user gave (default: ``target``), for the message.

    Raises:
        PathError: any error of the file system, named (ENOSPC: "No space left on device"); the
            old file is intact and no temporary file is left.
    """
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    created = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # ours alone; mode per umask
        created = True
        write(partial)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)  # a full disk may only show at write-back
        finally:
            os.close(fd)
        os.replace(partial, target)
    except OSError as err:
        if created:
            partial.unlink(missing_ok=True)
        step = (
            f" (no new file can be made in {shorten(str(target.parent))!r})"
            if str(err.filename) == str(partial)
            else ""
        )
        shown = shorten(str(target if where is None else where))
        raise PathError(f"cannot {what} to {shown!r}: {err.strerror or err}{step}") from None


def path_name(name: str) -> str:
    """``name`` (a space's ``name``, a study name) made safe as one folder name: every character but
    letters, digits, ``.``, ``-`` and ``_`` becomes ``_``, leading dots are dropped (no ``..``,
    no hidden folder), at most :data:`MAX_NAME` characters; ``_`` for nothing left
    (``../../x`` gives ``_.._x``)."""
    safe = re.sub(r"[^\w.-]", "_", name).lstrip(".")[:MAX_NAME]
    return safe or "_"


def saved_line(where: str | Path, target: Path) -> str:
    """``saved to WHERE``, naming the symlink's target when WHERE is a link."""
    through = f" (the symlink's target, {target})" if through_link(where, target) else ""
    return f"saved to {where}{through}"
