"""The emulator's store: one SQLite database, in memory or in a file.

Every request handler runs in a worker thread; one lock serialises access, which is
plenty for a local stand-in and keeps transactions simple and atomic.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coalmine.emulator import ladder_schema, schema
from coalmine.emulator.errors import StoreFullError


class Store:
    """SQLite behind a lock. ``path=None`` keeps the data in memory."""

    def __init__(self, path: Path | None, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            check_same_thread=False,
            isolation_level=None,
        )
        self._db.row_factory = sqlite3.Row
        page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._db.execute(f"PRAGMA max_page_count = {max(max_bytes // page_size, 16)}")
        self._db.execute("PRAGMA foreign_keys = ON")
        if path is not None:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
        for ddl in schema.ALL:
            self._db.executescript(ddl)
        for ddl in ladder_schema.ALL:
            self._db.executescript(ddl)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except sqlite3.OperationalError as error:
                self._rollback()
                if "full" in str(error).lower():
                    raise StoreFullError(str(error)) from error
                raise
            except BaseException:
                self._rollback()
                raise
            else:
                self._db.execute("COMMIT")

    def _rollback(self) -> None:
        # SQLite has already rolled back on some errors, "database or disk is full" among them.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def size_bytes(self) -> int:
        """Bytes the database occupies now."""
        with self._lock:
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        return pages * size

    def close(self) -> None:
        with self._lock:
            self._db.close()
