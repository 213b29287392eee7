"""The sample stream (JSON Lines): recorded traces and late scores, one per line.

A line with ``arm`` opens a trace; a line without it adds scores that arrived later for
an earlier trace. ``ts`` is ISO 8601. Unknown keys are ignored; anything else wrong with a
line is a ``StreamError`` naming the line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.errors import StreamError
from controller.judge.model import ScoreValue, Trace
from policies.domain import Arm

ARMS = {arm.value: arm for arm in Arm}


@dataclass(frozen=True, slots=True)
class LateScores:
    """Scores that arrived at ``ts`` for a trace opened earlier."""

    trace_id: str
    ts: float
    scores: dict[str, ScoreValue]


def parse_ts(raw: object, line: int) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp (naive times are UTC)."""
    if not isinstance(raw, str):
        raise StreamError(line, "ts: must be an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise StreamError(line, f"ts: {raw!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_ts(seconds: float) -> str:
    """ISO 8601 in UTC with a Z, to the millisecond when it has one."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_line(text: str, line: int) -> Trace | LateScores | None:
    """One stream line; None for a blank line."""
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except ValueError:
        raise StreamError(line, _json_problem(text)) from None
    if not isinstance(record, dict):
        raise StreamError(line, "must be a JSON object")
    ts = parse_ts(record.get("ts"), line)
    trace_id = record.get("trace_id")
    if not isinstance(trace_id, str) or not trace_id:
        raise StreamError(line, "trace_id: must be a non-empty string")
    scores = _scores(record.get("scores"), line)
    arm_raw = record.get("arm")
    if arm_raw is None:
        if "arm" in record:
            raise StreamError(line, "arm: must be baseline, canary or shadow")
        if not scores:
            raise StreamError(line, "a line without arm must carry scores")
        return LateScores(trace_id=trace_id, ts=ts, scores=scores)
    arm = ARMS.get(arm_raw) if isinstance(arm_raw, str) else None
    if arm is None:
        raise StreamError(line, f"arm: {arm_raw!r} is not one of baseline, canary, shadow")
    failed = record.get("error")
    if failed is not None and not isinstance(failed, bool):
        raise StreamError(line, "error: must be true or false")
    return Trace(
        trace_id=trace_id,
        arm=arm,
        ts=ts,
        error=failed,
        latency_ms=_amount(record, "latency_ms", line),
        cost_usd=_amount(record, "cost_usd", line),
        scores=scores,
    )


def _json_problem(text: str) -> str:
    """Why a line is not JSON, with the column on the line (not past its line break)."""
    try:
        json.loads(text.rstrip(" \t\r\n"))
    except json.JSONDecodeError as error:
        return f"not valid JSON ({error.msg} at column {error.colno})"
    except ValueError:  # an integer literal longer than Python converts (4300 digits)
        return "not valid JSON (a number too long to read)"
    return "not valid JSON"


def _amount(record: dict[str, object], key: str, line: int) -> float | None:
    raw = record.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise StreamError(line, f"{key}: must be a number")
    if not _finite(raw) or raw < 0:
        raise StreamError(line, f"{key}: must be a finite number >= 0")
    return float(raw)


def _scores(raw: object, line: int) -> dict[str, ScoreValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StreamError(line, "scores: must be an object of name to value")
    for name, value in raw.items():
        if isinstance(value, bool | str):
            continue
        if isinstance(value, int | float) and _finite(value):
            continue
        label = name if name.isprintable() else repr(name)
        raise StreamError(line, f"scores.{label}: must be a number, true/false or a string")
    return raw


def _finite(value: int | float) -> bool:
    """A finite number that fits a float (JSON integers can be arbitrarily large)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
