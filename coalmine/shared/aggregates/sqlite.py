"""Proxy counts in the local state file: the table ``proxy_minutes``.

One row per (proxy, release, arm, minute) holding the counts document. A proxy writes
only its own rows, replacing a row as its cell grows; each write also deletes the rows of
every proxy older than the retention, so that proxies that stopped leave nothing behind
for long. WAL mode and a busy timeout let the controller read while proxies write.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from coalmine.shared.aggregates.model import (
    DEFAULT_RETENTION_SECONDS,
    BadAggregatesError,
    MinuteCell,
    decode_counts,
    encode_counts,
    merge,
    oldest_minute,
    parse_arm,
)
from coalmine.shared.aggregates.store import Readout
from coalmine.shared.sqlite_file import SqliteFile

log = logging.getLogger("coalmine.shared.aggregates")

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS proxy_minutes (
        proxy    TEXT NOT NULL,
        release  TEXT NOT NULL,
        arm      TEXT NOT NULL,
        minute   INTEGER NOT NULL,
        document TEXT NOT NULL,
        PRIMARY KEY (release, minute, arm, proxy)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS proxy_minutes_by_minute ON proxy_minutes (minute)",
)
BUSY_TIMEOUT_MS = 5000


class SqliteAggregateStore(SqliteFile):
    """The ``proxy_minutes`` table of a state file: written by the proxy ``proxy_id``
    (None: a reader only), read by the controller."""

    def __init__(
        self,
        path: Path,
        proxy_id: str | None = None,
        *,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        super().__init__(path)
        self.proxy_id = proxy_id or ""
        self.retention_seconds = retention_seconds

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, check_same_thread=False)
        try:
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode=WAL")
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.commit()
        except sqlite3.DatabaseError:
            connection.close()
            raise
        return connection

    def write(self, cells: Sequence[MinuteCell], now: float) -> int:
        if not self.proxy_id:
            raise PermissionError(f"{self.path}: opened to read proxy counts, not to write")
        oldest = oldest_minute(now, self.retention_seconds)
        rows = [
            (self.proxy_id, cell.release, cell.arm.value, cell.minute, encode_counts(cell))
            for cell in cells
            if cell.minute >= oldest
        ]
        with self._cursor() as connection, connection:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(
                "INSERT INTO proxy_minutes (proxy, release, arm, minute, document) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (release, minute, arm, proxy) "
                "DO UPDATE SET document = excluded.document",
                rows,
            )
            connection.execute("DELETE FROM proxy_minutes WHERE minute < ?", (oldest,))
        return 0

    def read(self, release: str, since: int, until: int) -> Readout:
        if not self.path.exists():
            return Readout({}, frozenset())
        with self._cursor() as connection:
            rows = connection.execute(
                "SELECT proxy, arm, minute, document FROM proxy_minutes "
                "WHERE release = ? AND minute >= ? AND minute < ?",
                (release, since, until),
            ).fetchall()
        cells: list[MinuteCell] = []
        proxies: set[str] = set()
        problems: list[str] = []
        for proxy, arm_name, minute, document in rows:
            where = (
                f"{self.path}: proxy_minutes row of proxy {proxy!r}, release {release!r}, "
                f"arm {arm_name!r}, minute {minute}"
            )
            try:
                arm = parse_arm(str(arm_name), where)
                cells.append(decode_counts(str(document), release, arm, int(minute), where=where))
            except BadAggregatesError as error:
                log.warning("proxy counts left out: %s", error)
                problems.append(str(error))
                continue
            proxies.add(str(proxy))
        summed = {(cell.arm, cell.minute): cell for cell in merge(cells).values()}
        return Readout(summed, frozenset(proxies), tuple(problems))
