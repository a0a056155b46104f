"""The Optuna storage a study lives in, opened so that several processes can share it safely.

Optuna's RDB storage hands a queued (WAITING) trial to one worker by reading its state and
writing RUNNING in one transaction, with ``SELECT ... FOR UPDATE`` (``RDBStorage.set_trial_state
_values``). PostgreSQL and MySQL lock the row; SQLite ignores ``FOR UPDATE``, and Python's sqlite3
driver starts a transaction only at the first write, so two processes could both read WAITING
and both run the trial (seen under load: 218 runs of 200 queued trials by 4 processes). Here every
SQLite transaction starts with ``BEGIN IMMEDIATE``, which takes the database's write lock before
the first read (SQLAlchemy's recipe, "Serializable isolation / Savepoints / Transactional DDL" in
its pysqlite dialect notes): a read-then-write is atomic, so exactly one process pops a trial,
and two processes creating the same storage at once no longer race on its tables. Other
processes wait for the lock (up to :data:`SQLITE_BUSY_SECONDS`), as they did for writes before.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from sqlalchemy import event
from sqlalchemy.engine import make_url

try:
    import fcntl
except ImportError:  # not POSIX: storages are set up without the file lock
    fcntl = None  # type: ignore[assignment]

from ..text import shorten
from .errors import StorageError

__all__ = ["connect_storage", "check_shareable", "shown_url", "SQLITE_BUSY_SECONDS"]

SQLITE_BUSY_SECONDS = 60  # how long a transaction waits for another process's write lock


def _immediate_transactions(engine) -> None:
    """From now on, every transaction of ``engine`` (SQLite) begins with ``BEGIN IMMEDIATE``.

    The driver's own implicit ``BEGIN`` (issued lazily, before the first write) is switched off
    on new connections and the engine's ``begin`` event issues ``BEGIN IMMEDIATE`` instead; the
    pool is emptied so that every later connection is a new one. Called after Optuna has set the
    storage up: its set-up nests connections (``_VersionManager``), which would wait for each
    other's write lock.
    """

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


@contextlib.contextmanager
def _setup_lock(url: str) -> Iterator[None]:
    """An exclusive lock on the folder of an SQLite file while Optuna sets the storage up: two
    processes creating the same storage at once would race on its tables (``table studies already
    exists``). The folder itself is locked (``flock`` on its descriptor), so no lock file is made
    or left behind, and opening a folder never blocks. No lock for other databases (their DDL is
    transactional), without fcntl, or when the folder is missing (Optuna then says so)."""
    database = _sqlite_file(url)
    try:
        folder = os.open(os.path.dirname(os.path.abspath(database)), os.O_RDONLY | os.O_DIRECTORY) if database else None
    except OSError:
        folder = None
    if folder is None or fcntl is None:
        yield
        return
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


def _sqlite_file(url: str) -> str | None:
    """The database file of an SQLite URL; None for other databases and in-memory ones."""
    database = make_url(url).database if url.startswith("sqlite") else None
    return None if not database or database == ":memory:" else database


def _check_sqlite_file(url: str, shown: str) -> None:
    """Refuse an SQLite file that is not a regular file (a FIFO would block SQLite's first read)."""
    database = _sqlite_file(url)
    try:
        mode = os.stat(database).st_mode if database else None
    except OSError:  # missing (SQLite makes it) or unreachable (SQLite says why)
        return
    if mode is not None and not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a FIFO, a device or a socket"
        raise StorageError(f"--storage {shown}: {shorten(str(database))!r} is {what}, not an SQLite database file")


def check_shareable(url: str) -> str:
    """``url`` unless it names an in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``,
    SQLite's URI forms ``file::memory:`` and ``mode=memory``), which lives inside one process: the
    worker processes of a study could not share it and nothing would be kept. Checked before any
    work, and again by :func:`connect_storage`.

    Raises:
        StorageError: an in-memory database, in one paragraph.
    """
    if not url.startswith("sqlite"):
        return url
    try:
        database = make_url(url).database or ""
    except Exception:  # noqa: BLE001 - not a URL at all: connect_storage says so
        return url
    if database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in url:
        raise StorageError(
            f"--storage {shorten(url)} is an in-memory SQLite database: it lives inside one process and is gone "
            f"when that process ends, so the worker processes could not share it (each would get an empty "
            f"database of its own) and nothing would be kept; give a file, e.g. sqlite:///study.db, or a "
            f"server database"
        )
    return url


def shown_url(url: str) -> str:
    """``url`` with its password hidden (for messages and logs); the text itself if unparsable."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is shown as given; it has no password field
        return url


def connect_storage(url: str, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """Open the Optuna RDB storage at ``url`` (SQLite, PostgreSQL ``postgresql+psycopg://``, MySQL),
    with a heartbeat every ``heartbeat`` seconds (grace: 3 intervals) whose stale trials are failed
    and queued again, when given.

    SQLite transactions take the write lock first (module docstring) and wait up to 60 s for it;
    server databases get ``pool_pre_ping`` (a connection the server dropped is replaced before
    use, not handed to a trial), ``pool_recycle`` and a 10 s connect timeout, and keep their row
    locks.

    Raises:
        StorageError: a malformed URL, an in-memory SQLite database (processes cannot share it), a
            missing driver, an unreachable server, refused credentials or a missing database, in one
            paragraph without the password.
    """
    import sqlalchemy.exc

    try:
        make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise StorageError(
            f"--storage {url!r} is not a database URL; use e.g. sqlite:///study.db or "
            f"postgresql+psycopg://USER:PASSWORD@HOST:5432/DB"
        ) from None
    check_shareable(url)
    shown = shown_url(url)
    sqlite = url.startswith("sqlite")
    if sqlite:
        _check_sqlite_file(url, shown)
    engine = _engine_options(sqlite)
    try:
        with warnings.catch_warnings():  # heartbeats and retries are marked experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            beat = _heartbeat_options(heartbeat)
            with _setup_lock(url):
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)
        if sqlite:
            _immediate_transactions(storage.engine)
        return storage
    except ImportError as err:  # SQLAlchemy's missing-driver error
        raise StorageError(
            f"--storage {shown}: the database driver is not installed ({err}); for PostgreSQL "
            f"install the extra: pip install -e '.[postgres]'"
        ) from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as err:
        raise StorageError(f"--storage {shown}: {err}") from None
    except sqlalchemy.exc.SQLAlchemyError as err:  # unreachable, wrong password, no such database
        reason = " ".join(str(getattr(err, "orig", None) or err).split())
        raise StorageError(f"--storage {shown}: cannot connect: {reason}") from None


def _engine_options(sqlite: bool) -> dict[str, Any]:
    """SQLAlchemy engine arguments: SQLite waits for another process's write lock; a server
    database's dropped connections are replaced before use, and connecting gives up after 10 s."""
    if sqlite:
        return {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    return dict(pool_pre_ping=True, pool_recycle=3600, connect_args={"connect_timeout": 10})


def _heartbeat_options(heartbeat: int | None) -> dict[str, Any]:
    """RDBStorage's heartbeat arguments (none without ``heartbeat``): stale trials, after 3 missed
    intervals, are failed and queued again, at most twice."""
    if heartbeat is None:
        return {}
    return dict(
        heartbeat_interval=heartbeat,
        grace_period=3 * heartbeat,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
    )
