"""Online backups: a consistent copy of the database file, taken while the daemon writes.

The copy is made by `VACUUM INTO` on a read-only connection of its own, in a thread of its
own, never on the store's writer. In WAL mode its read transaction is a snapshot as of its
start and takes no lock a writer waits for, so group commits go on while it runs (the WAL
only grows meanwhile: checkpoints cannot pass the snapshot until it ends). SQLite's online
backup API would not do here: a write by any other connection restarts it, and under a
steady stream of accepts it may never finish.

The copy is written to a temporary file beside the destination, checked with
`PRAGMA integrity_check`, synced, and only then renamed onto the destination, so an older
backup there stays whole until a newer one is complete.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dispatchd.domain.errors import StoreError
from dispatchd.store.sqlite.schema import APPLICATION_ID, BUSY_TIMEOUT_MS, _lock

VACUUM_INTO = "VACUUM INTO ?"
INTEGRITY_CHECK = "PRAGMA integrity_check"
READ_APPLICATION_ID = "PRAGMA application_id"
COUNT_MESSAGES = "SELECT count(*) FROM messages"
# A destination that is a directory gets a file named for the time the copy was started.
TIMESTAMPED_NAME = "dispatchd-%Y%m%dT%H%M%SZ.db"
# Files whose replacement would wreck the live database.
_LIVE_SUFFIXES = ("", "-wal", "-shm", "-journal", ".lock")
# Lines of a failed integrity check quoted in the error; the first few say what is wrong.
_PROBLEMS_QUOTED = 3
# How much nicer than the daemon a copy in the background runs. The copy and its check
# are seconds of CPU; at the daemon's priority they would take a core from the event loop
# and the writer of a small machine, and accepts would wait. Niced, they get what is idle.
BACKGROUND_NICENESS = 10
# The copy is synced as it grows, this much at a time (see `_WriteBehind`).
FLUSH_BYTES = 8 * 1024 * 1024
FLUSH_POLL = 0.02
# SQLite's own sync of the copy would flush all of it at the end of the VACUUM at once;
# `_WriteBehind` and the final fsync make it durable instead.
NO_SYNC = "PRAGMA synchronous = OFF"


@dataclass(frozen=True, slots=True)
class BackupResult:
    """A finished, checked copy."""

    path: Path
    bytes: int
    seconds: float
    messages: int
    started_at: float
    """Epoch seconds: everything committed before this is in the copy."""
    integrity: str = "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "messages": self.messages,
            "started_at": self.started_at,
            "integrity": self.integrity,
        }


class BackupJob:
    """One copy of `source` to `dest`: `run` in a thread, `cancel` from any other."""

    def __init__(
        self,
        source: Path,
        dest: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
        background: bool = False,
    ) -> None:
        self.source = source
        self.background = background
        self.dest = dest
        self._clock = clock
        self._timer = timer
        self._guard = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """Stop the copy soon; `run` then removes what it wrote and raises StoreError."""
        with self._guard:
            self._cancelled = True
            if self._conn is not None:
                self._conn.interrupt()

    def run(self) -> BackupResult:
        """Copy, check, sync and rename into place; raise StoreError saying why not.

        `background`: run niced, for a thread of its own (the niceness stays with it).
        """
        if self.background:
            _lower_priority()
        started = self._timer()
        started_at = self._clock()
        target = backup_target(self.source, self.dest, started_at)
        tmp = _temp_file(target)
        try:
            self._vacuum_into(tmp)
            messages = _check(tmp)
            _fsync(tmp)
            size = tmp.stat().st_size
            self._stop_if_cancelled()  # the last moment at which nothing has changed yet
            os.replace(tmp, target)
        except OSError as exc:
            _remove(tmp)
            raise StoreError(f"cannot write the backup to {target}: {exc.strerror}") from exc
        except BaseException:
            _remove(tmp)
            raise
        try:
            _fsync(target.parent)
        except OSError as exc:
            raise StoreError(
                f"the backup is at {target}, but its directory could not be synced "
                f"({exc.strerror}); it may not survive a power loss"
            ) from exc
        return BackupResult(target, size, self._timer() - started, messages, started_at)

    def _vacuum_into(self, tmp: Path) -> None:
        try:
            conn = _open_read_only(self.source)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.source}: {exc}") from exc
        try:
            with self._guard:
                self._stop_if_cancelled()
                self._conn = conn
            try:
                if conn.execute(READ_APPLICATION_ID).fetchone()[0] != APPLICATION_ID:
                    raise StoreError(f"{self.source} is not a dispatchd database")
                conn.execute(NO_SYNC)
                with _WriteBehind(tmp):
                    conn.execute(VACUUM_INTO, (str(tmp),))
            except sqlite3.Error as exc:
                raise self._failure(exc, tmp.parent) from exc
        finally:
            with self._guard:
                self._conn = None
            conn.close()

    def _stop_if_cancelled(self) -> None:
        if self._cancelled:
            raise StoreError("the backup was cancelled")

    def _failure(self, exc: sqlite3.Error, directory: Path) -> StoreError:
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if self._cancelled or code == sqlite3.SQLITE_INTERRUPT:
            return StoreError("the backup was cancelled")
        if code == sqlite3.SQLITE_FULL:
            return StoreError(f"the disk holding {directory} is full; the backup did not fit")
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            return StoreError(f"{self.source} cannot be read as a database: {exc}")
        return StoreError(f"the backup to {directory} failed: {exc}")


class _WriteBehind:
    """Syncs a file another thread is writing, `FLUSH_BYTES` at a time, while it grows.

    Left alone, the kernel would hold a copy of hundreds of MiB dirty and write it out in
    one go at the final sync, and every commit's fsync of the live WAL would queue behind
    that flush: accepts stalled for 300-600 ms on this project's machine with a 100-300 MB
    database. Synced as it grows, no flush is bigger than a few milliseconds of disk time.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatchd-backup-sync", daemon=True)
        self._fd = -1

    def __enter__(self) -> _WriteBehind:
        self._fd = os.open(self._path, os.O_RDONLY)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)

    def _run(self) -> None:
        synced = 0
        while not self._stop.wait(FLUSH_POLL):
            # A failing sync here shows again, and is reported, at the final fsync.
            with contextlib.suppress(OSError):
                size = os.fstat(self._fd).st_size
                if size - synced >= FLUSH_BYTES:
                    os.fdatasync(self._fd)
                    synced = size


def copy_database(
    source: Path, dest: str | Path, *, clock: Callable[[], float] = time.time
) -> BackupResult:
    """Copy the database at `source` to `dest`, a file or an existing directory (which gets
    a `dispatchd-YYYYmmddTHHMMSSZ.db`); raise StoreError saying why it cannot."""
    return BackupJob(source, dest, clock=clock).run()


def copy_offline(
    source: Path, dest: str | Path, *, clock: Callable[[], float] = time.time
) -> BackupResult:
    """`copy_database` of a database no daemon has open, holding its lock throughout.

    Taking the daemon's lock proves nobody writes the file, and keeps a daemon from
    starting on it mid-copy. Raises StoreLocked when a process holds it.
    """
    if not source.is_file():
        raise StoreError(f"there is no database at {source}")
    lock_file = _lock(source)
    try:
        return copy_database(source, dest, clock=clock)
    finally:
        lock_file.close()


def backup_target(source: Path, dest: str | Path, now: float) -> Path:
    """The file a backup to `dest` writes; refuses the live database's own files.

    A `dest` ending in a slash names a directory, so it must be one.
    """
    raw = os.fspath(dest)
    path = Path(raw).absolute()
    if path.is_dir():
        path = path / datetime.fromtimestamp(now, UTC).strftime(TIMESTAMPED_NAME)
    elif raw.endswith(os.sep):
        state = "is not a directory" if path.exists() else "does not exist"
        raise StoreError(f"cannot write the backup: {path} {state}")
    live = os.path.realpath(source)
    resolved = os.path.realpath(path)
    if resolved in {live + suffix for suffix in _LIVE_SUFFIXES} or _same_file(path, source):
        raise StoreError(f"{path} is the live database's own file; choose another destination")
    return path


def _lower_priority() -> None:
    # Linux keeps a niceness per thread, so this leaves the daemon's other threads alone.
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(current + BACKGROUND_NICENESS, 19))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _open_read_only(path: Path) -> sqlite3.Connection:
    # Read-only: whatever goes wrong, the backup cannot change the live database.
    uri = f"file:{quote(os.fspath(path.absolute()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _temp_file(target: Path) -> Path:
    """An empty file beside `target` (VACUUM INTO takes an empty one), readable by us alone:
    the copy holds every message's number and text."""
    directory = target.parent
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except FileNotFoundError as exc:
        raise StoreError(f"cannot write the backup: {directory} does not exist") from exc
    except PermissionError as exc:
        raise StoreError(
            f"cannot write the backup: {directory} is not writable by uid {os.geteuid()}"
        ) from exc
    except OSError as exc:
        raise StoreError(f"cannot write the backup in {directory}: {exc.strerror}") from exc
    os.close(fd)
    return Path(name)


def _check(copy: Path) -> int:
    """Run the integrity check on the copy; how many messages it holds."""
    try:
        with contextlib.closing(_open_read_only(copy)) as conn:
            rows = [str(r[0]) for r in conn.execute(INTEGRITY_CHECK).fetchall()]
            if rows != ["ok"]:
                quoted = "; ".join(rows[:_PROBLEMS_QUOTED])
                raise StoreError(f"the copy failed its integrity check ({quoted}); not kept")
            return int(conn.execute(COUNT_MESSAGES).fetchone()[0])
    except sqlite3.Error as exc:
        raise StoreError(f"the copy cannot be checked ({exc}); not kept") from exc


def _fsync(path: Path) -> None:
    # O_RDONLY works for directories too; fsync on it makes a rename in it durable.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    # A rollback journal, should SQLite have made one for the copy, goes with it.
    for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
