"""The controller's local state: one SQLite file (WAL), one writer.

What it holds, per release: phase, step, weights and versions (``releases``); an
append-only decision log with each decision's evidence (``decisions``); an action journal
(``actions``): the intent is written in the same transaction as the decision that
requires it and completed after it is carried out, so a crash at any point leaves
pending actions that the next start finishes; the label history Langfuse does not keep
(``label_moves``); the samples read from Langfuse with the cursors of the read that
returned them (``traces``, ``scores``, ``cursors``), so a restart rebuilds the judge's
evidence without reading Langfuse's history again; and per running release a checkpoint
of its evidence (``checkpoints``): the samples it holds are forgotten, except those a
poll may read again, so the file does not grow with a release's age. Routing tables live
in the same file (``coalmine.shared.routing_tables.store``) so the proxy reads what the
controller writes.

An exclusive lock on ``<file>.lock`` makes one controller process the single writer.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from controller.errors import StateFileError, StateLockedError
from controller.judge import ScoreValue
from controller.lifecycle import ActionKind, ReleaseState
from controller.samples import Cursors, ScoreSample, TraceSample
from policies.domain import Arm, Phase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    name TEXT PRIMARY KEY,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release TEXT NOT NULL,
    at REAL NOT NULL,
    decision TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    phase TEXT NOT NULL,
    step INTEGER NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_release ON decisions (release, id);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release TEXT NOT NULL,
    decision_id INTEGER,
    kind TEXT NOT NULL,
    intent TEXT NOT NULL,
    status TEXT NOT NULL,
    observed TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS actions_pending ON actions (status, id);
CREATE TABLE IF NOT EXISTS label_moves (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release TEXT NOT NULL,
    prompt TEXT NOT NULL,
    label TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    action_id INTEGER UNIQUE
);
CREATE TABLE IF NOT EXISTS traces (
    release TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    arm TEXT NOT NULL,
    ts REAL NOT NULL,
    error INTEGER NOT NULL,
    latency_ms REAL,
    cost_usd REAL,
    prompt_version INTEGER,
    PRIMARY KEY (release, trace_id)
);
CREATE INDEX IF NOT EXISTS traces_by_id ON traces (trace_id);
CREATE TABLE IF NOT EXISTS scores (
    score_id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scores_by_trace ON scores (trace_id);
CREATE TABLE IF NOT EXISTS cursors (
    source TEXT PRIMARY KEY,
    observations_from REAL NOT NULL,
    scores_from REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    release TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    at REAL NOT NULL,
    traces_through INTEGER NOT NULL,
    scores_through INTEGER NOT NULL,
    observations_from REAL,
    scores_from REAL,
    document TEXT NOT NULL
);
"""

WAL_SIZE_LIMIT = 16 * 1024 * 1024
"""Bytes the write-ahead log is cut back to once its pages are in the file."""

_COALMINE_TABLES = frozenset(
    {"releases", "decisions", "actions", "label_moves", "traces", "scores", "cursors"}
    | {"checkpoints"}
    | {"routing_tables"}  # coalmine.shared.routing_tables.store, in the same file
)


class ActionStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Action:
    """One step of carrying out a decision, as journalled."""

    id: int
    release: str
    kind: ActionKind
    intent: dict[str, Any]
    status: ActionStatus
    observed: dict[str, Any] | None = None
    decision_id: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One entry of the decision log."""

    id: int
    release: str
    at: float
    decision: str
    actor: str
    reason: str
    phase: Phase
    step: int
    evidence: dict[str, Any] = field(default_factory=dict)
    rollout: int = 0
    """The rollout the decision belongs to (0: the release had none yet)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A running release's evidence as it was once every sample stored until then was
    in it: samples stored later have larger row ids than ``traces_through`` and
    ``scores_through``."""

    release: str
    started_at: float
    at: float
    traces_through: int
    scores_through: int
    cursors: Cursors | None
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LabelMove:
    """One move of a prompt label that coalmine made."""

    release: str
    prompt: str
    label: str
    from_version: int | None
    to_version: int
    at: float
    actor: str
    reason: str
    rollout: int = 0
    """The rollout that moved the label."""


class ControllerState:
    """The state file. Methods are safe to call from several threads (one connection,
    one lock); every change is one transaction."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the state file and take its lock.

        Raises StateLockedError when another process holds it, StateFileError when it is
        not a coalmine state file (nothing is written to it then)."""
        self.path = path
        if path.is_dir():
            raise StateFileError(f"state file {path}: is a directory, not a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _take_lock(path)
        self._lock = threading.RLock()
        try:
            self._db = _open(path)
        except BaseException:
            _release_lock(self._lock_file)
            raise

    def refresh(self) -> None:
        """Forget what was read from a shared store (a SQLite file has one writer, this
        process, so there is nothing to forget here)."""

    def close(self) -> None:
        with self._lock:
            self._db.close()
            _release_lock(self._lock_file)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: everything in the block or nothing."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # -- releases ------------------------------------------------------------------------

    def release(self, name: str) -> ReleaseState | None:
        rows = self._query("SELECT document FROM releases WHERE name = ?", (name,))
        return ReleaseState.from_json(rows[0][0]) if rows else None

    def releases(self) -> list[ReleaseState]:
        rows = self._query("SELECT document FROM releases ORDER BY name")
        return [ReleaseState.from_json(row[0]) for row in rows]

    @staticmethod
    def put_release(db: sqlite3.Connection, release: ReleaseState) -> None:
        db.execute(
            "INSERT INTO releases (name, document) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET document = excluded.document",
            (release.name, release.to_json()),
        )

    def save_release(self, release: ReleaseState) -> None:
        with self.transaction() as db:
            self.put_release(db, release)

    def delete_release(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM releases WHERE name = ?", (name,))
            db.execute("DELETE FROM traces WHERE release = ?", (name,))
            db.execute("DELETE FROM checkpoints WHERE release = ?", (name,))

    # -- decisions and actions -------------------------------------------------------------

    def decide(
        self,
        release: ReleaseState,
        *,
        at: float,
        decision: str,
        actor: str,
        reason: str,
        evidence: dict[str, Any],
        actions: Sequence[tuple[ActionKind, dict[str, Any]]],
    ) -> int:
        """Log a decision, store the release's new state and journal the actions it
        requires, all in one transaction. Returns the decision's id."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO decisions (release, at, decision, actor, reason, phase, step, "
                "evidence, rollout) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    release.name,
                    at,
                    decision,
                    actor,
                    reason,
                    release.phase.value,
                    release.step,
                    json.dumps(evidence, default=str),
                    release.rollout,
                ),
            )
            decision_id = int(cursor.lastrowid or 0)
            self.put_release(db, release)
            for kind, intent in actions:
                db.execute(
                    "INSERT INTO actions (release, decision_id, kind, intent, status, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        release.name,
                        decision_id,
                        kind.value,
                        json.dumps(intent),
                        ActionStatus.PENDING.value,
                        at,
                    ),
                )
        return decision_id

    def pending_actions(self, release: str | None = None) -> list[Action]:
        sql = "SELECT id, release, kind, intent, status, observed, decision_id, error FROM actions"
        sql += " WHERE status = ?"
        args: list[Any] = [ActionStatus.PENDING.value]
        if release is not None:
            sql += " AND release = ?"
            args.append(release)
        return [_action(row) for row in self._query(sql + " ORDER BY id", args)]

    def actions(self, release: str) -> list[Action]:
        rows = self._query(
            "SELECT id, release, kind, intent, status, observed, decision_id, error "
            "FROM actions WHERE release = ? ORDER BY id",
            (release,),
        )
        return [_action(row) for row in rows]

    def observe_action(self, action: Action, observed: dict[str, Any]) -> None:
        """Record what was there before acting (a label's version before the move)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE actions SET observed = ? WHERE id = ?",
                (json.dumps(observed), action.id),
            )

    def finish_action(
        self,
        action: Action,
        *,
        at: float,
        status: ActionStatus = ActionStatus.DONE,
        error: str | None = None,
        label_move: LabelMove | None = None,
    ) -> None:
        """Mark an action done (or failed) and, in the same transaction, record the
        label move it made."""
        with self.transaction() as db:
            db.execute(
                "UPDATE actions SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                (status.value, at, error, action.id),
            )
            if label_move is not None:
                db.execute(
                    "INSERT OR IGNORE INTO label_moves (release, prompt, label, from_version, "
                    "to_version, at, actor, reason, action_id, rollout) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        label_move.release,
                        label_move.prompt,
                        label_move.label,
                        label_move.from_version,
                        label_move.to_version,
                        label_move.at,
                        label_move.actor,
                        label_move.reason,
                        action.id,
                        label_move.rollout,
                    ),
                )

    def decisions(self, release: str, limit: int | None = None) -> list[DecisionRecord]:
        sql = (
            "SELECT id, release, at, decision, actor, reason, phase, step, evidence, rollout "
            "FROM decisions WHERE release = ? ORDER BY id DESC"
        )
        args: list[Any] = [release]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._query(sql, args)
        return [
            DecisionRecord(
                id=row[0],
                release=row[1],
                at=row[2],
                decision=row[3],
                actor=row[4],
                reason=row[5],
                phase=Phase(row[6]),
                step=row[7],
                evidence=json.loads(row[8]),
                rollout=row[9],
            )
            for row in reversed(rows)
        ]

    def decision_counts(self, release: str) -> Counter[str]:
        """How many decisions of each kind the release's log holds."""
        rows = self._query(
            "SELECT decision, COUNT(*) FROM decisions WHERE release = ? GROUP BY decision",
            (release,),
        )
        return Counter({str(row[0]): int(row[1]) for row in rows})

    def action_counts(self, release: str) -> Counter[tuple[str, str]]:
        """How many actions of each (kind, status) the release's journal holds."""
        rows = self._query(
            "SELECT kind, status, COUNT(*) FROM actions WHERE release = ? GROUP BY kind, status",
            (release,),
        )
        return Counter({(str(row[0]), str(row[1])): int(row[2]) for row in rows})

    def label_moves(self, release: str | None = None) -> list[LabelMove]:
        sql = (
            "SELECT release, prompt, label, from_version, to_version, at, actor, reason, "
            "rollout FROM label_moves"
        )
        args: list[Any] = []
        if release is not None:
            sql += " WHERE release = ?"
            args.append(release)
        return [LabelMove(*row) for row in self._query(sql + " ORDER BY id", args)]

    # -- samples -------------------------------------------------------------------------

    def cursors(self, source: str) -> Cursors | None:
        rows = self._query(
            "SELECT observations_from, scores_from FROM cursors WHERE source = ?", (source,)
        )
        return Cursors(rows[0][0], rows[0][1]) if rows else None

    def store_poll(
        self,
        source: str,
        cursors: Cursors,
        traces: Sequence[TraceSample],
        scores: Sequence[ScoreSample],
    ) -> tuple[list[TraceSample], list[ScoreSample]]:
        """Store new samples and the cursors after them in one transaction; return the
        samples not stored before (polls overlap)."""
        new_traces: list[TraceSample] = []
        new_scores: list[ScoreSample] = []
        with self.transaction() as db:
            for trace in traces:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO traces (release, trace_id, arm, ts, error, "
                    "latency_ms, cost_usd, prompt_version, shadow_of) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        trace.release,
                        trace.trace_id,
                        trace.arm.value,
                        trace.ts,
                        int(trace.error),
                        trace.latency_ms,
                        trace.cost_usd,
                        trace.prompt_version,
                        trace.shadow_of,
                    ),
                )
                if cursor.rowcount:
                    new_traces.append(trace)
            for score in scores:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO scores (score_id, trace_id, name, value, at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (score.score_id, score.trace_id, score.name, json.dumps(score.value), score.at),
                )
                if cursor.rowcount:
                    new_scores.append(score)
            db.execute(
                "INSERT INTO cursors (source, observations_from, scores_from) VALUES (?, ?, ?) "
                "ON CONFLICT(source) DO UPDATE SET observations_from = excluded.observations_from,"
                " scores_from = excluded.scores_from",
                (source, cursors.observations_from, cursors.scores_from),
            )
        return new_traces, new_scores

    def traces(self, release: str, since: float) -> list[TraceSample]:
        rows = self._query(
            f"SELECT {_TRACE_COLUMNS} FROM traces WHERE release = ? AND ts >= ? ORDER BY ts",
            (release, since),
        )
        return [_trace(row) for row in rows]

    def scores_for_release(self, release: str, since: float) -> list[ScoreSample]:
        rows = self._query(
            "SELECT s.score_id, s.trace_id, s.name, s.value, s.at FROM scores s "
            "JOIN traces t ON t.trace_id = s.trace_id "
            "WHERE t.release = ? AND t.ts >= ? ORDER BY s.at",
            (release, since),
        )
        return [_score(row) for row in rows]

    def scores_of(self, trace_ids: Sequence[str]) -> list[ScoreSample]:
        """Stored scores of the given traces."""
        found: list[ScoreSample] = []
        ids = list(trace_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                "SELECT score_id, trace_id, name, value, at FROM scores "
                f"WHERE trace_id IN ({marks}) ORDER BY at",
                chunk,
            )
            found.extend(_score(row) for row in rows)
        return found

    def release_of_traces(self, trace_ids: Sequence[str]) -> dict[str, str]:
        """The release of each known trace id."""
        found: dict[str, str] = {}
        ids = list(trace_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT trace_id, release FROM traces WHERE trace_id IN ({marks})", chunk
            )
            found.update((row[0], row[1]) for row in rows)
        return found

    def prune_samples(self, running: Sequence[str], scores_before: float) -> int:
        """Forget samples no running release needs: the traces of every other release
        (finished releases keep their evidence in the decision log) and scores older
        than ``scores_before`` that belong to no stored trace. Returns rows deleted."""
        marks = ",".join("?" * len(running))
        keep = f"release NOT IN ({marks})" if running else "1"
        with self.transaction() as db:
            db.execute(f"DELETE FROM checkpoints WHERE {keep}", list(running))
            traces = db.execute(f"DELETE FROM traces WHERE {keep}", list(running)).rowcount
            scores = db.execute(
                "DELETE FROM scores WHERE at < ? AND trace_id NOT IN (SELECT trace_id FROM traces)",
                (scores_before,),
            ).rowcount
        return int(traces) + int(scores)

    # -- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(
        self,
        release: str,
        *,
        started_at: float,
        at: float,
        document: dict[str, Any],
        keep_from: float,
    ) -> int:
        """Store a release's checkpoint, made when its evidence held every sample stored,
        and forget, in the same transaction, the samples it holds: the release's traces
        that started before ``keep_from`` (later ones stay, so a poll reading them again
        finds them known) with their scores, and scores before ``keep_from`` whose trace
        is not stored and that every release's checkpoint holds (their trace will not
        come any more, or was forgotten here). The
        newest row of each table stays, so row ids only grow. Returns rows deleted."""
        with self.transaction() as db:
            traces_through = _last_row(db, "traces")
            scores_through = _last_row(db, "scores")
            cursors = db.execute(
                "SELECT observations_from, scores_from FROM cursors ORDER BY source LIMIT 1"
            ).fetchone()
            db.execute(
                "INSERT INTO checkpoints (release, started_at, at, traces_through, "
                "scores_through, observations_from, scores_from, document) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(release) DO UPDATE SET "
                "started_at = excluded.started_at, at = excluded.at, "
                "traces_through = excluded.traces_through, "
                "scores_through = excluded.scores_through, "
                "observations_from = excluded.observations_from, "
                "scores_from = excluded.scores_from, document = excluded.document",
                (
                    release,
                    started_at,
                    at,
                    traces_through,
                    scores_through,
                    None if cursors is None else cursors[0],
                    None if cursors is None else cursors[1],
                    json.dumps(document, separators=(",", ":")),
                ),
            )
            covered = (release, traces_through, keep_from)
            scores = db.execute(
                "DELETE FROM scores WHERE rowid < ? AND trace_id IN (SELECT trace_id FROM "
                "traces WHERE release = ? AND rowid < ? AND ts < ?)",
                (scores_through, *covered),
            ).rowcount
            traces = db.execute(
                "DELETE FROM traces WHERE release = ? AND rowid < ? AND ts < ?", covered
            ).rowcount
            # a score of a forgotten trace that came after another release's checkpoint
            # is in none yet: only what every checkpoint holds goes
            strays = db.execute(
                "DELETE FROM scores WHERE rowid < (SELECT MIN(scores_through) FROM "
                "checkpoints) AND at < ? AND trace_id NOT IN (SELECT trace_id FROM traces)",
                (keep_from,),
            ).rowcount
        with self._lock:
            # the checkpoint was one large transaction: fold the log into the file and cut
            # it back now (a reader that holds it makes this a no-op until the next one)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(scores) + int(traces) + int(strays)

    def checkpoint(self, release: str) -> Checkpoint | None:
        rows = self._query(
            "SELECT release, started_at, at, traces_through, scores_through, "
            "observations_from, scores_from, document FROM checkpoints WHERE release = ?",
            (release,),
        )
        if not rows:
            return None
        row = rows[0]
        cursors = None if row[5] is None else Cursors(row[5], row[6])
        return Checkpoint(row[0], row[1], row[2], row[3], row[4], cursors, json.loads(row[7]))

    def traces_after(self, release: str, since: float, row: int) -> list[TraceSample]:
        """The release's traces stored after row ``row`` that started at ``since`` or
        later, by start time."""
        rows = self._query(
            f"SELECT {_TRACE_COLUMNS} FROM traces "
            "WHERE release = ? AND ts >= ? AND rowid > ? ORDER BY ts",
            (release, since, row),
        )
        return [_trace(found) for found in rows]

    def scores_after(self, row: int) -> list[ScoreSample]:
        """Every score stored after row ``row``, by creation time."""
        rows = self._query(
            "SELECT score_id, trace_id, name, value, at FROM scores WHERE rowid > ? ORDER BY at",
            (row,),
        )
        return [_score(found) for found in rows]

    def sample_counts(self) -> tuple[int, int]:
        """(traces, scores) stored."""
        traces = self._query("SELECT COUNT(*) FROM traces")[0][0]
        scores = self._query("SELECT COUNT(*) FROM scores")[0][0]
        return int(traces), int(scores)


def _last_row(db: sqlite3.Connection, table: str) -> int:
    found = db.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()
    return 0 if found is None or found[0] is None else int(found[0])


_TRACE_COLUMNS = (
    "release, trace_id, arm, ts, error, latency_ms, cost_usd, prompt_version, shadow_of"
)
"""The columns ``_trace`` reads, in its order."""


def _trace(row: tuple[Any, ...]) -> TraceSample:
    return TraceSample(
        release=row[0],
        trace_id=row[1],
        arm=Arm(row[2]),
        ts=row[3],
        error=bool(row[4]),
        latency_ms=row[5],
        cost_usd=row[6],
        prompt_version=row[7],
        shadow_of=row[8],
    )


def _action(row: tuple[Any, ...]) -> Action:
    return Action(
        id=row[0],
        release=row[1],
        kind=ActionKind(row[2]),
        intent=json.loads(row[3]),
        status=ActionStatus(row[4]),
        observed=None if row[5] is None else json.loads(row[5]),
        decision_id=row[6],
        error=row[7],
    )


def _score(row: tuple[Any, ...]) -> ScoreSample:
    value: ScoreValue = json.loads(row[3])
    return ScoreSample(score_id=row[0], trace_id=row[1], name=row[2], value=value, at=row[4])


def _open(path: Path) -> sqlite3.Connection:
    """The state file's connection, its schema in place.

    Raises StateFileError, before anything is written, when the file is not SQLite, is
    damaged, or holds only tables that are not coalmine's."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        tables = _tables(db, path)
        if tables and not tables & _COALMINE_TABLES:
            raise StateFileError(
                f"state file {path}: not a coalmine state file (a SQLite file with other "
                f"tables: {', '.join(sorted(tables))})"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        # a checkpoint rewrites a large row: without a limit the WAL file keeps the size
        # of the largest transaction since the file was opened
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        db.executescript(_SCHEMA)
        _add_columns(db)
    except sqlite3.DatabaseError as error:
        db.close()
        raise StateFileError(f"state file {path}: cannot be opened: {error}") from None
    except BaseException:
        db.close()
        raise
    return db


_ADDED_COLUMNS = (
    ("decisions", "rollout", "INTEGER NOT NULL DEFAULT 0"),
    ("label_moves", "rollout", "INTEGER NOT NULL DEFAULT 0"),
    ("traces", "shadow_of", "TEXT"),
)
"""Columns added since the first schema: a file written before them gains them, empty."""


def _add_columns(db: sqlite3.Connection) -> None:
    for table, column, kind in _ADDED_COLUMNS:
        present = {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _tables(db: sqlite3.Connection, path: Path) -> set[str]:
    """The file's own tables (a read: a file that is not SQLite fails here unchanged)."""
    try:
        rows = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    except sqlite3.DatabaseError as error:
        raise StateFileError(
            f"state file {path}: not a coalmine state file (not SQLite, or damaged: {error})"
        ) from None
    return {str(name) for (name,) in rows}


def _release_lock(descriptor: int) -> None:
    fcntl.flock(descriptor, fcntl.LOCK_UN)
    os.close(descriptor)


def _take_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StateLockedError(
            f"{path}: another controller holds this state file ({lock_path})"
        ) from None
    return descriptor
