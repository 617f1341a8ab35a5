"""The score cache's database file (`aidetect.cache`): made, checked, set aside, rebuilt.

`connect` opens `scores.sqlite3` read-write in WAL mode, making its tables when the file is new.
A file whose SQLite header does not carry APPLICATION_ID while it holds tables (another
program's), or that SQLite finds damaged, is renamed aside (`set_aside`) and made anew. One
whose schema (`user_version`) is newer than SCHEMA_VERSION is left alone. One that cannot be
written is opened read-only where SQLite can, else not at all. Each outcome a user should know
of is one line appended to `warnings`; nothing here raises for a bad file.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

DATABASE_NAME = "scores.sqlite3"
SCHEMA_VERSION = 1  # of the tables below; a newer database is not used
APPLICATION_ID = 0x41494443  # "AIDC" in the SQLite header: tells our database from others
BUSY_TIMEOUT_SECONDS = 30.0  # waiting for another scan's write; ours are milliseconds long

_SCHEMA = """
CREATE TABLE IF NOT EXISTS score_keys (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,  -- hex sha256 of the key's description
    description TEXT NOT NULL  -- JSON: weights, preprocessing, device kind and precision
);
CREATE TABLE IF NOT EXISTS scores (
    sha256 BLOB NOT NULL,  -- of the file's content
    key_id INTEGER NOT NULL,
    score REAL NOT NULL, logit REAL NOT NULL,
    format TEXT, mode TEXT, width INTEGER, height INTEGER,
    last_used INTEGER NOT NULL,  -- unix seconds
    PRIMARY KEY (sha256, key_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scores_by_use ON scores (last_used);
CREATE TABLE IF NOT EXISTS files (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    last_used INTEGER NOT NULL,
    PRIMARY KEY (dev, ino)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_use ON files (last_used);
"""
_TABLES = {"score_keys", "scores", "files"}


def connect(path: Path, warnings: list[str]) -> tuple[sqlite3.Connection | None, bool]:
    """Open (making or rebuilding as needed) the database at `path`: (connection, writable)."""
    for attempt in range(2):
        try:
            connection = _open_waiting(path)
            return connection, True
        except _Foreign as foreign:
            if attempt == 0:
                moved = set_aside(path)
                warnings.append(f"score cache {path} {foreign.reason}; set aside as "
                                f"{moved.name if moved else '(could not move it)'} and rebuilt")
                if moved is not None:
                    continue
            break
        except _Newer as newer:
            warnings.append(f"score cache {path} was written by a newer aidetect (schema "
                            f"{newer.version}; this one reads {SCHEMA_VERSION}): scanning "
                            "without it (upgrade aidetect, or pass --cache DIR)")
            return None, False
        except sqlite3.Error as error:  # a read-only folder or file, a lock held too long
            try:
                connection = _open_checked(path, writable=False)
            except (sqlite3.Error, _Foreign, _Newer):
                # A read-only folder lands here too: SQLite reads a WAL database only where it
                # can make the -shm file beside it.
                warnings.append(f"score cache {path} cannot be written ({error}): scanning "
                                "without it")
                return None, False
            warnings.append(f"score cache {path} is read-only ({error}): cached scores are "
                            "used, new ones are not kept")
            return connection, False
    warnings.append(f"score cache {path} cannot be rebuilt: scanning without it")
    return None, False


def _open_waiting(path: Path) -> sqlite3.Connection:
    """`_open_checked` for writing, tried again while another scan holds the database.

    Switching to WAL while another process makes the tables is a lock upgrade that SQLite
    refuses at once (no busy handler: it would deadlock), so scans started together retry
    here instead of running without the cache.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            return _open_checked(path, writable=True)
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _Foreign(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Newer(Exception):
    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


def _open_checked(path: Path, *, writable: bool) -> sqlite3.Connection:
    """Connect; check the header says ours (or empty: then make the tables). Raises
    `_Foreign`, `_Newer`, or sqlite3.Error (could not open or write)."""
    if not writable and not path.exists():
        raise sqlite3.OperationalError("no database yet")
    uri = f"file:{quote(str(path))}?mode={'rwc' if writable else 'ro'}"
    db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        try:
            application_id, version, tables = _header(db)
        except sqlite3.DatabaseError as error:
            if type(error) is not sqlite3.DatabaseError:
                raise  # could not open or read (OperationalError): not a damaged file
            raise _Foreign(f"is damaged ({error})") from None  # not a database, malformed
        if tables and application_id != APPLICATION_ID:
            raise _Foreign("belongs to another program")
        if application_id == APPLICATION_ID and version > SCHEMA_VERSION:
            raise _Newer(version)
        if writable:
            db.execute("PRAGMA journal_mode = WAL")  # readers and a writer at once
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: a kill loses nothing committed
            if not _TABLES <= tables or version != SCHEMA_VERSION:
                _create(db)
        elif not _TABLES <= tables:
            raise sqlite3.OperationalError("no tables")
    except BaseException:
        db.close()
        raise
    return db


def _create(db: sqlite3.Connection) -> None:
    """Make the tables in one transaction (a second process waits, then finds them made).
    Statement by statement: executescript would commit first."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _header(db: sqlite3.Connection) -> tuple[int, int, set[str]]:
    # One read transaction: a consistent snapshot. Read one by one, a scan starting beside
    # another that was making the tables could see the tables (committed) but not the header
    # before it, take the new cache for another program's and set it aside.
    db.execute("BEGIN")
    try:
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        if db.in_transaction:
            db.execute("COMMIT")
    return application_id, version, tables


def database_files(path: Path) -> list[str]:
    """The database and the files SQLite keeps beside it."""
    return [str(path), f"{path}-wal", f"{path}-shm"]


def set_aside(path: Path) -> Path | None:
    """Rename the database (and its WAL) to `<name>.bad-<time>-<pid>`; None if it could not."""
    target = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, target)
    except OSError:
        return None
    # The WAL goes with it; the shared-memory index is only a cache of the WAL's.
    for move in (lambda: os.replace(f"{path}-wal", f"{target}-wal"),
                 lambda: os.unlink(f"{path}-shm")):
        try:
            move()
        except OSError:
            pass  # absent, or kept: SQLite ignores a WAL whose salt is not its database's
    return target
