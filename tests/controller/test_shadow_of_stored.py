"""The state file keeps a shadow copy's primary (``shadow_of``) with its trace, and a
state file written before that column opens, keeps its rows, and stores it from then on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from controller.release_store import ControllerState
from controller.samples import Cursors, TraceSample
from policies.domain import Arm

PRIMARY = "0" * 31 + "1"
COPY = "0" * 31 + "2"
CURSORS = Cursors(observations_from=100.0, scores_from=100.0)

# The traces table as the state file had it before shadow_of (with the table the file
# also held then, so the file is recognised as coalmine's).
OLD_SCHEMA = """
CREATE TABLE releases (name TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE traces (
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
INSERT INTO traces VALUES ('alpha', 'old-trace', 'baseline', 10.0, 0, 120.0, NULL, 3);
"""


def sample(trace_id: str, arm: Arm, ts: float, shadow_of: str | None = None) -> TraceSample:
    return TraceSample(
        release="alpha",
        trace_id=trace_id,
        arm=arm,
        ts=ts,
        error=False,
        latency_ms=250.0,
        cost_usd=0.002,
        prompt_version=None,
        shadow_of=shadow_of,
    )


def test_a_copy_keeps_its_primary(tmp_path: Path) -> None:
    state = ControllerState(tmp_path / "state.db")
    try:
        primary = sample(PRIMARY, Arm.BASELINE, 20.0)
        copy = sample(COPY, Arm.SHADOW, 20.5, shadow_of=PRIMARY)
        new, _ = state.store_poll("langfuse", CURSORS, [primary, copy], [])
        assert new == [primary, copy]
        assert state.traces("alpha", 0.0) == [primary, copy]
        assert state.traces_after("alpha", 0.0, 0) == [primary, copy]
    finally:
        state.close()
    reopened = ControllerState(tmp_path / "state.db")
    try:
        assert [t.shadow_of for t in reopened.traces("alpha", 0.0)] == [None, PRIMARY]
    finally:
        reopened.close()


def test_a_state_file_from_before_shadow_of_opens_and_gains_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    db.close()
    state = ControllerState(path)
    try:
        [old] = state.traces("alpha", 0.0)
        assert (old.trace_id, old.arm, old.prompt_version, old.shadow_of) == (
            "old-trace",
            Arm.BASELINE,
            3,
            None,
        )
        copy = sample(COPY, Arm.SHADOW, 20.5, shadow_of=PRIMARY)
        state.store_poll("langfuse", CURSORS, [copy], [])
        assert state.traces("alpha", 15.0) == [copy]
        assert [t.trace_id for t in state.traces_after("alpha", 0.0, 1)] == [COPY]
    finally:
        state.close()
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(traces)")]
    db.close()
    assert columns[-1] == "shadow_of"
