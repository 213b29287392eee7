"""Where routing tables live: a Protocol, the local SQLite store and a static store.

The controller writes with compare-and-set on the version; proxies poll the versions
(one indexed read) and load a document only when its version changed. The SQLite file runs
in WAL mode so that readers never block the writer; other processes may read it at the
same time. A cluster store (a ConfigMap) follows the same Protocol.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from coalmine.shared.routing_tables.table import RoutingTable
from coalmine.shared.sqlite_file import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS routing_tables (
    release  TEXT PRIMARY KEY,
    version  INTEGER NOT NULL,
    document TEXT NOT NULL
)
"""


class VersionConflictError(Exception):
    """A write expected one version of a table and found another (permanent for this
    write: read again and decide again)."""


class BadRoutingTableError(Exception):
    """A stored document is not a valid routing table."""


class BadStoreFileError(Exception):
    """The store's file is not SQLite, or is damaged (nothing was written to it)."""


class RoutingTableStore(Protocol):
    """Reads and writes routing tables by release."""

    def versions(self) -> dict[str, int]:
        """The current version of every stored table, by release."""
        ...

    def read(self, release: str) -> RoutingTable | None:
        """The stored table of a release, None when there is none.

        Raises BadRoutingTableError when the stored document is not valid.
        """
        ...

    def write(self, table: RoutingTable, expected_version: int | None) -> RoutingTable:
        """Store ``table`` as version ``expected_version + 1`` (1 when None, which also
        requires that no table exists yet) and return what was stored.

        Raises VersionConflictError when the stored version is not ``expected_version``.
        """
        ...


def parse_table(document: str, release: str, version: int, *, where: str) -> RoutingTable:
    """A stored document as the routing table of ``release`` at ``version``.

    Raises BadRoutingTableError, naming ``where`` it was stored, when it is not one.
    """
    try:
        table = RoutingTable.model_validate_json(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(document)'}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        raise BadRoutingTableError(
            f"{where}: routing table of '{release}' v{version}: {problems}"
        ) from None
    if table.release != release or table.version != version:
        raise BadRoutingTableError(
            f"{where}: routing table stored as '{release}' v{version} says "
            f"'{table.release}' v{table.version}"
        )
    return table


class SqliteRoutingStore(SqliteFile):
    """Routing tables in one SQLite file, safe to share between processes."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        super().__init__(path)
        self.readonly = readonly

    def _open(self) -> sqlite3.Connection:
        """Raises BadStoreFileError when the file is not SQLite or is damaged."""
        if self.readonly:
            uri = f"file:{self.path}?mode=ro"
            connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, check_same_thread=False)
        try:
            self._prepare(connection)
        except sqlite3.DatabaseError as error:
            connection.close()
            if isinstance(error, sqlite3.OperationalError):
                raise
            raise BadStoreFileError(
                f"{self.path}: not a SQLite state file, or damaged: {error}"
            ) from None
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA busy_timeout=5000")
        # reading the schema first fails on a file that is not SQLite before any write
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if not self.readonly:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)
            connection.commit()

    def versions(self) -> dict[str, int]:
        if self.readonly and not self.path.exists():
            return {}
        try:
            with self._cursor() as connection:
                rows = connection.execute("SELECT release, version FROM routing_tables")
                return {str(release): int(version) for release, version in rows}
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return {}
            raise

    def read(self, release: str) -> RoutingTable | None:
        with self._cursor() as connection:
            row = connection.execute(
                "SELECT version, document FROM routing_tables WHERE release = ?", (release,)
            ).fetchone()
        if row is None:
            return None
        version, document = row
        return parse_table(document, release, int(version), where=str(self.path))

    def write(self, table: RoutingTable, expected_version: int | None) -> RoutingTable:
        if self.readonly:
            raise PermissionError(f"{self.path}: opened read-only")
        stored = table.model_copy(update={"version": (expected_version or 0) + 1})
        document = stored.model_dump_json(by_alias=True)
        with self._cursor() as connection, connection:
            connection.execute("BEGIN IMMEDIATE")
            row = connection.execute(
                "SELECT version FROM routing_tables WHERE release = ?", (table.release,)
            ).fetchone()
            current = None if row is None else int(row[0])
            if current != expected_version:
                raise VersionConflictError(
                    f"routing table of '{table.release}': expected version "
                    f"{expected_version}, found {current}"
                )
            connection.execute(
                "INSERT INTO routing_tables (release, version, document) VALUES (?, ?, ?) "
                "ON CONFLICT(release) DO UPDATE SET version = excluded.version, "
                "document = excluded.document",
                (stored.release, stored.version, document),
            )
        return stored


class StaticRoutingStore:
    """Fixed tables held in memory: for ``--weight`` pins and tests."""

    def __init__(self, tables: Mapping[str, RoutingTable] | None = None) -> None:
        self._tables = dict(tables or {})
        self._lock = threading.Lock()

    def versions(self) -> dict[str, int]:
        with self._lock:
            return {release: table.version for release, table in self._tables.items()}

    def read(self, release: str) -> RoutingTable | None:
        with self._lock:
            return self._tables.get(release)

    def write(self, table: RoutingTable, expected_version: int | None) -> RoutingTable:
        with self._lock:
            current = self._tables.get(table.release)
            found = None if current is None else current.version
            if found != expected_version:
                raise VersionConflictError(
                    f"routing table of '{table.release}': expected version "
                    f"{expected_version}, found {found}"
                )
            stored = table.model_copy(update={"version": (expected_version or 0) + 1})
            self._tables[table.release] = stored
            return stored
