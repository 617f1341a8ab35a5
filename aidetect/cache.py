"""The score cache: an SQLite database of scores by file content, so that a rescan costs a hash.

Where: `AIDETECT_CACHE`, else `$XDG_CACHE_HOME/aidetect`, else `~/.cache/aidetect`; the database
is `scores.sqlite3` in that folder (`cache_folder`).

A score row says: the file whose content has this sha256, scored under this key (the weights,
the preprocessing, the device kind and precision: `aidetect.score_key`), gave this score and
logit, and decoded to this format, mode and size. The threshold is not in the key: a label is
recomputed from the score. Errors are never stored (a file may become readable).

Hashing (`hash_files`) skips reading a file whose (device, inode, size, mtime_ns, ctime_ns) are
those recorded when it was last hashed; any difference means the file is read and hashed again.
ctime catches an edit whose mtime was set back (only the kernel sets ctime). A file changed in
the RACY_SECONDS before it was hashed is not recorded (git's "racy clean" rule), so that an edit
within one tick of a coarse file-system clock is still seen; nor is one that changed while it
was read.

Safe under real use: WAL journal and a busy timeout, so that scans can run at once; every write
is a small transaction, so a scan killed at any moment leaves a consistent database (SQLite's
atomic commit) holding all it had committed. A damaged, foreign, newer or unwritable database
file is dealt with by `aidetect.cache_file`; damage found later sets the file aside and turns
the cache off for the rest of the run. The cache never raises on its own account and never
prints: what a user should know is appended to `warnings`.

Size: at most `max_entries` scores and as many file hashes (MAX_ENTRIES: about 250 MB at most);
past that, the least recently used are deleted down to 90% of it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aidetect.cache_file import DATABASE_NAME, connect, database_files, set_aside
from aidetect.hub import stream_sha256

__all__ = ["DATABASE_NAME", "CachedScore", "CacheInfo", "FileDigest", "ScoreCache", "cache_folder",
           "hash_file", "stamp_of"]

MAX_ENTRIES = 1_000_000  # scores kept (and as many file hashes); least recently used go first
RACY_SECONDS = 2.0  # a file changed this recently is re-hashed next time (coarse clocks)
_TOUCH_SECONDS = 3600  # last-use times are refreshed at most hourly: LRU needs no finer

Stamp = tuple[int, int, int, int, int]  # (dev, ino, size, mtime_ns, ctime_ns)


@dataclass(frozen=True)
class CachedScore:
    """What a report needs of a scored file besides its path, threshold and label."""

    score: float
    logit: float
    format: str | None
    mode: str | None
    width: int | None
    height: int | None


@dataclass(frozen=True)
class FileDigest:
    """A file's sha256 and its stat stamp taken before it was read."""

    sha256: str
    stamp: Stamp
    stable: bool  # unchanged while it was read (only a stable file's score may be stored)


@dataclass(frozen=True)
class CacheInfo:
    """What `aidetect cache info` shows."""

    path: str
    bytes_on_disk: int
    scores: int
    files: int
    keys: int
    max_entries: int
    oldest_use: int | None  # unix seconds
    newest_use: int | None


def cache_folder(explicit: str | os.PathLike | None = None) -> Path:
    """The cache folder: `explicit` (--cache), else AIDETECT_CACHE, else the XDG cache folder."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("AIDETECT_CACHE"):
        return Path(os.environ["AIDETECT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aidetect"


def stamp_of(info: os.stat_result) -> Stamp:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def hash_file(path: str) -> FileDigest:
    """Read and hash `path`; `stable` when its stat stamp did not change while it was read."""
    with open(path, "rb") as handle:
        before = stamp_of(os.fstat(handle.fileno()))
        sha256 = stream_sha256(handle)
        after = stamp_of(os.fstat(handle.fileno()))
    return FileDigest(sha256, before, stable=before == after)


class ScoreCache:
    """The database, opened by `open`; every method degrades to "nothing cached" on failure.

    Not shared between threads (sqlite3's rule); `hash_files` hashes in threads of its own.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection | None, *, writable: bool,
                 max_entries: int = MAX_ENTRIES, racy_seconds: float = RACY_SECONDS,
                 warnings: list[str] | None = None) -> None:
        self.path = path
        self.writable = writable and connection is not None
        self.max_entries = max_entries
        self.racy_seconds = racy_seconds
        self.warnings: list[str] = warnings if warnings is not None else []
        self._db = connection
        self._key_ids: dict[str, int] = {}
        self._stored = 0

    @property
    def usable(self) -> bool:
        return self._db is not None

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike | None = None, *, max_entries: int = MAX_ENTRIES,
             racy_seconds: float = RACY_SECONDS) -> ScoreCache:
        """The cache in `folder` (default `cache_folder()`), made if absent; never raises."""
        folder = cache_folder(folder)
        path = folder / DATABASE_NAME
        warnings: list[str] = []
        connection, writable = None, False
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            warnings.append(f"cannot create the score cache folder {folder} "
                            f"({_reason(error)}): scanning without the cache")
        else:
            connection, writable = connect(path, warnings)
        return cls(path, connection, writable=writable, max_entries=max_entries,
                   racy_seconds=racy_seconds, warnings=warnings)

    @classmethod
    def disabled(cls) -> ScoreCache:
        """No database (--no-cache): `hash_files` reads every file; nothing is kept."""
        return cls(Path(os.devnull), None, writable=False)

    def close(self) -> None:
        """Evict past the size cap if this session stored anything, then close."""
        if self._db is None:
            return
        if self._stored and self.writable:
            self.evict()
        self._db.close()
        self._db = None

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- hashing -------------------------------------------------------------------------------
    def hash_files(self, paths: Sequence[str], *, threads: int = 4
                   ) -> list[FileDigest | OSError]:
        """Each file's digest (or the OSError that stopped reading it), in the order given.

        A file whose stat stamp is recorded is not read; the others are read in `threads`
        threads, and their stamps recorded when stable and not changed in the last
        `racy_seconds`.
        """
        found: list[FileDigest | OSError | None] = [None] * len(paths)
        touched: list[tuple[int, int]] = []
        now = _now()
        for i, path in enumerate(paths):
            try:
                stamp = stamp_of(os.stat(path))
            except OSError as error:
                found[i] = error
                continue
            row = self._query("SELECT size, mtime_ns, ctime_ns, sha256, last_used FROM files "
                              "WHERE dev = ? AND ino = ?", stamp[:2])
            if row and tuple(row[0][:3]) == stamp[2:]:
                found[i] = FileDigest(row[0][3].hex(), stamp, stable=True)
                if row[0][4] < now - _TOUCH_SECONDS:
                    touched.append(stamp[:2])
        todo = [i for i, item in enumerate(found) if item is None]
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(threads, len(todo)))) as pool:
                digests = pool.map(_hash_or_error, [paths[i] for i in todo])
                for i, digest in zip(todo, digests, strict=True):
                    found[i] = digest
        horizon = time.time_ns() - int(self.racy_seconds * 1e9)
        fresh = [found[i] for i in todo if isinstance(found[i], FileDigest)]
        rows = [(*d.stamp, bytes.fromhex(d.sha256), now) for d in fresh
                if d.stable and max(d.stamp[3], d.stamp[4]) < horizon]
        self._write([("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", rows),
                     ("UPDATE files SET last_used = ? WHERE dev = ? AND ino = ?",
                      [(now, *key) for key in touched])])
        self._stored += len(rows)
        return found  # type: ignore[return-value]

    # --- scores --------------------------------------------------------------------------------
    def lookup(self, digests: Iterable[str], key: str) -> dict[str, CachedScore]:
        """The cached scores of these content hashes under `key`, by hash."""
        key_id = self._key_id(key, None)
        if key_id is None:
            return {}
        found: dict[str, CachedScore] = {}
        touched = []
        now = _now()
        for sha in dict.fromkeys(digests):
            row = self._query("SELECT score, logit, format, mode, width, height, last_used "
                              "FROM scores WHERE sha256 = ? AND key_id = ?",
                              (bytes.fromhex(sha), key_id))
            if row:
                found[sha] = CachedScore(*row[0][:6])
                if row[0][6] < now - _TOUCH_SECONDS:
                    touched.append((now, bytes.fromhex(sha), key_id))
        self._write([("UPDATE scores SET last_used = ? WHERE sha256 = ? AND key_id = ?",
                      touched)])
        return found

    def store(self, entries: Sequence[tuple[str, CachedScore]], key: str,
              description: str) -> None:
        """Keep these scores under `key` (described by the JSON `description`), in one
        transaction."""
        if not entries or not self.writable:
            return
        key_id = self._key_id(key, description)
        if key_id is None:
            return
        now = _now()
        rows = [(bytes.fromhex(sha), key_id, s.score, s.logit, s.format, s.mode, s.width,
                 s.height, now) for sha, s in entries]
        if self._write([("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         rows)]):
            self._stored += len(rows)

    # --- maintenance ---------------------------------------------------------------------------
    def evict(self) -> int:
        """Delete the least recently used scores and file hashes past `max_entries`, down to
        90% of it; returns how many rows went."""
        removed = 0
        for table, key in (("scores", "sha256, key_id"), ("files", "dev, ino")):
            count = self._query(f"SELECT count(*) FROM {table}")
            excess = (count[0][0] if count else 0) - self.max_entries
            if excess > 0:
                excess += self.max_entries // 10
                self._write([(f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM "
                              f"{table} ORDER BY last_used LIMIT ?)", [(excess,)])])
                removed += excess
        return removed

    def info(self) -> CacheInfo:
        def count(sql: str) -> int:
            row = self._query(sql)
            return row[0][0] if row else 0

        uses = self._query("SELECT min(last_used), max(last_used) FROM scores") or [(None, None)]
        size = sum(os.path.getsize(p) for p in database_files(self.path) if os.path.exists(p))
        return CacheInfo(str(self.path), size, count("SELECT count(*) FROM scores"),
                         count("SELECT count(*) FROM files"),
                         count("SELECT count(*) FROM score_keys"), self.max_entries, *uses[0])

    def clear(self) -> int:
        """Delete every score and file hash; returns how many scores there were."""
        scores = self.info().scores
        if self._write([("DELETE FROM scores", [()]), ("DELETE FROM files", [()]),
                        ("DELETE FROM score_keys", [()])]):
            self._key_ids.clear()
            self._guard(lambda db: db.execute("VACUUM"))  # give the space back
        return scores

    # --- SQLite, guarded -----------------------------------------------------------------------
    def _key_id(self, key: str, description: str | None) -> int | None:
        if key not in self._key_ids:
            if description is not None and self.writable:
                self._write([("INSERT OR IGNORE INTO score_keys (key, description) "
                              "VALUES (?, ?)", [(key, description)])])
            row = self._query("SELECT id FROM score_keys WHERE key = ?", (key,))
            if not row:
                return None
            self._key_ids[key] = row[0][0]
        return self._key_ids[key]

    def _query(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        rows = self._guard(lambda db: db.execute(sql, parameters).fetchall())
        return rows or []

    def _write(self, statements: list[tuple[str, list[tuple]]]) -> bool:
        """Run `statements` (each with its rows) in one transaction; False if it failed."""
        statements = [(sql, rows) for sql, rows in statements if rows]
        if not statements or not self.writable:
            return not statements

        def run(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    db.executemany(sql, rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return True

        return bool(self._guard(run))

    def _guard(self, action):
        """`action(db)`, or None when the database fails: a busy or full disk is warned about
        and skipped; a damaged database is set aside and the cache is off for this run."""
        if self._db is None:
            return None
        try:
            return action(self._db)
        except sqlite3.OperationalError as error:  # locked past the timeout, disk full, ...
            self._warn_once(f"score cache {self.path}: {error}; going on without it for now")
        except sqlite3.DatabaseError as error:
            if type(error) is not sqlite3.DatabaseError:
                raise  # IntegrityError, ProgrammingError: a bug here, not a damaged file
            # SQLITE_CORRUPT or SQLITE_NOTADB, found only now (a damaged page deep inside).
            self._db.close()
            self._db = None
            moved = set_aside(self.path)
            self._warn_once(f"score cache {self.path} is damaged ({error}); set aside as "
                            f"{moved.name if moved else '(could not move it)'}; a new one "
                            "starts with the next scan")
        return None

    def _warn_once(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def _now() -> int:
    """Unix seconds, the unit of last-use times (a function, so that tests can move time)."""
    return int(time.time())


def _hash_or_error(path: str) -> FileDigest | OSError:
    try:
        return hash_file(path)
    except OSError as error:
        return error


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()
