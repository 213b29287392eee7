"""Scores: ``POST /api/public/scores`` and ``GET /api/public/v3/scores``.

Creating scores (``web/src/pages/api/public/scores/index.ts`` and the score schemas in
``packages/shared``):

- One score object is answered 200 ``{"id"}``, as the 4.16 spec says. A list of scores
  (what SDK 5.x sends, Langfuse >= 4.59) is answered 202 ``{"message": "Accepted"}``
  when every score is stored, and 207 ``{"accepted", "rejected", "errors":
  [{"message"}]}`` when some are rejected; the valid ones are stored either way
  (``compat.py`` records both answers).
- ``name`` and ``value`` are required. ``dataType`` defaults from the value (a number is
  NUMERIC, a string CATEGORICAL). NUMERIC takes a finite number, BOOLEAN 0 or 1,
  CATEGORICAL a string, TEXT a string of 1 to 500 characters, CORRECTION a string (its
  name is always ``output`` and it takes no ``configId``).
- Exactly one subject: ``traceId`` (with an optional ``observationId``), ``sessionId``
  or ``datasetRunId``.
- ``source`` is ``API`` (default) or ``ANNOTATION`` (which needs a ``configId`` unless
  the score is a CORRECTION); ``EVAL`` is reserved for Langfuse's own evaluators.
- ``environment`` defaults to ``default``: lowercase letters, digits, ``-`` and ``_``,
  at most 40 characters, not starting with ``langfuse``.
- ``id`` is the upsert key: sending a score with a stored id replaces it (its
  ``createdAt`` stays). ``timestamp`` defaults to the time of the request.

  Difference: ClickHouse keys scores by id *and* timestamp, so Langfuse replaces a
  score only when it is sent again with the same id and timestamp; the emulator keys
  by id alone. Score configs are not modelled: a ``configId`` is stored as given.

Reading scores (``web/src/pages/api/public/v3/scores/index.ts``,
``listScoresV3ForPublicApi``): newest first (``timestamp`` desc, then ``id`` desc),
paged with a keyset cursor, base64url of ``{"v": 1, "lastTimestamp", "lastId"}``.
Scores created while a client pages (timestamped now) sort before its cursor, so paging
neither skips nor repeats a score. Filters take comma-separated values, OR within a
parameter and AND across parameters.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from coalmine.emulator.auth import require_project, require_scores_access
from coalmine.emulator.errors import INVALID_JSON, bad_request, invalid, issue, js_type
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store

router = APIRouter()

DATA_TYPES = ("NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT", "CORRECTION")
SOURCES = ("API", "EVAL", "ANNOTATION")
CREATE_SOURCES = ("API", "ANNOTATION")
FIELD_GROUPS = ("core", "details", "subject", "annotation")
CORRECTION_NAME = "output"
TEXT_MAX_CHARS = 500
ENVIRONMENT_RE = re.compile(r"^(?!langfuse)[a-z0-9_-]{1,40}$")
DEFAULT_LIMIT = 50
MAX_LIMIT = 100

# ---------------------------------------------------------------------------- time

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)
_STRICT_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time_ms(text: str, *, strict: bool = False) -> int | None:
    """Epoch milliseconds of an ISO 8601 time, or None if it is not one.

    ``strict`` takes only what zod's ``datetime({offset: true})`` takes: date, ``T``,
    time with seconds, and ``Z`` or an offset. Otherwise a date alone, a time without
    seconds and a time without offset (read as UTC) pass too, like JavaScript's
    ``new Date(...)``. Fractions of a millisecond are dropped, as Langfuse stores
    milliseconds.
    """
    text = text.strip()
    if strict and not _STRICT_ISO_RE.match(text):
        return None
    match = _ISO_RE.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    offset = timedelta(0)
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or minutes > 59:
            return None
        offset = sign * timedelta(hours=hours, minutes=minutes)
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:3].ljust(3, "0")) * 1000,
            tzinfo=timezone(offset),
        )
    except ValueError:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def format_ms(ms: int) -> str:
    """``2026-10-01T12:00:00.000Z``: how Langfuse's API writes times."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes) -> Any:
    """``JSON.parse``: like ``json.loads``, but ``NaN`` and ``Infinity`` are errors."""
    return json.loads(text, parse_constant=_no_constant)


# ------------------------------------------------------------------------ creating


@dataclass(frozen=True)
class NewScore:
    """A validated score, ready to store."""

    id: str
    name: str
    value: float | None
    string_value: str | None
    data_type: str
    source: str
    trace_id: str | None
    observation_id: str | None
    session_id: str | None
    dataset_run_id: str | None
    comment: str | None
    metadata: dict[str, Any]
    config_id: str | None
    queue_id: str | None
    environment: str
    timestamp_ms: int


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional_string(
    body: Mapping[str, Any], key: str, problems: list[dict[str, Any]]
) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(
            issue(
                "invalid_type", [key], f"Invalid input: expected string, received {js_type(value)}"
            )
        )
        return None
    return value


def validate_score(body: Any, received_ms: int) -> NewScore | list[dict[str, Any]]:
    """A score body checked as Langfuse checks it: the score, or zod-shaped issues."""
    if not isinstance(body, dict):
        return [
            issue("invalid_type", [], f"Invalid input: expected object, received {js_type(body)}")
        ]
    problems: list[dict[str, Any]] = []

    name = body.get("name")
    if not isinstance(name, str) or not name:
        problems.append(
            issue("invalid_type", ["name"], "Invalid input: expected non-empty string")
            if not isinstance(name, str)
            else issue("too_small", ["name"], "Too small: expected string to have >=1 characters")
        )

    value = body.get("value")
    data_type = body.get("dataType")
    if data_type is None:
        data_type = "NUMERIC" if _is_number(value) else "CATEGORICAL"
    number: float | None = None
    text: str | None = None
    if data_type not in DATA_TYPES:
        problems.append(
            issue(
                "invalid_union",
                ["dataType"],
                f"Invalid input: dataType must be one of {', '.join(DATA_TYPES)}",
            )
        )
    elif "value" not in body or value is None:
        problems.append(issue("invalid_type", ["value"], "Invalid input: value is required"))
    elif data_type in ("NUMERIC", "BOOLEAN"):
        if not _is_number(value) or not math.isfinite(value):
            problems.append(
                issue(
                    "invalid_type",
                    ["value"],
                    f"Invalid input: expected number, received {js_type(value)}",
                )
            )
        elif data_type == "BOOLEAN" and value not in (0, 1):
            problems.append(
                issue(
                    "custom",
                    ["value"],
                    "Value must be a number equal to either 0 or 1 for data type BOOLEAN",
                )
            )
        else:
            number = float(value)
            if data_type == "BOOLEAN":
                text = "True" if number == 1 else "False"
    elif not isinstance(value, str):
        problems.append(
            issue(
                "invalid_type",
                ["value"],
                f"Invalid input: expected string, received {js_type(value)}",
            )
        )
    elif data_type == "TEXT" and not 1 <= len(value) <= TEXT_MAX_CHARS:
        problems.append(
            issue(
                "too_small" if not value else "too_big",
                ["value"],
                f"Text score values must be between 1 and {TEXT_MAX_CHARS} characters",
            )
        )
    else:
        text = value

    config_id = _optional_string(body, "configId", problems)
    if data_type == "CORRECTION":
        name = CORRECTION_NAME
        if config_id is not None:
            problems.append(
                issue("invalid_type", ["configId"], "Correction scores cannot have a config")
            )

    source = body.get("source")
    if source is None:
        source = "API"
    elif source == "EVAL":
        problems.append(
            issue(
                "invalid_value",
                ["source"],
                "Source EVAL is reserved for Langfuse's evaluators and is not accepted "
                "on this endpoint; use API or ANNOTATION",
            )
        )
    elif source not in CREATE_SOURCES:
        problems.append(
            issue("invalid_value", ["source"], 'Invalid option: expected one of "API"|"ANNOTATION"')
        )
    elif source == "ANNOTATION" and config_id is None and data_type != "CORRECTION":
        problems.append(
            issue(
                "custom",
                ["configId"],
                "Scores with source ANNOTATION need a configId, unless their dataType is "
                "CORRECTION",
            )
        )

    environment = body.get("environment")
    if environment is None:
        environment = "default"
    elif not isinstance(environment, str) or not ENVIRONMENT_RE.match(environment):
        problems.append(
            issue(
                "invalid_format",
                ["environment"],
                "Environment must be lowercase alphanumeric with hyphens and underscores, "
                "at most 40 characters, and must not start with 'langfuse'",
            )
        )

    score_id = _optional_string(body, "id", problems) or str(uuid.uuid4())
    trace_id = _optional_string(body, "traceId", problems)
    observation_id = _optional_string(body, "observationId", problems)
    session_id = _optional_string(body, "sessionId", problems)
    dataset_run_id = _optional_string(body, "datasetRunId", problems)
    comment = _optional_string(body, "comment", problems)
    queue_id = _optional_string(body, "queueId", problems)
    subject_ok = (
        (bool(trace_id) and not session_id and not dataset_run_id)
        or (bool(session_id) and not trace_id and not dataset_run_id and not observation_id)
        or (bool(dataset_run_id) and not trace_id and not session_id and not observation_id)
    )
    if not subject_ok:
        problems.append(
            issue(
                "custom",
                ["traceId", "sessionId", "datasetRunId", "observationId"],
                "Provide exactly one of the following: traceId (with optional "
                "observationId), sessionId or datasetRunId. ObservationId requires traceId.",
            )
        )

    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        metadata = {"metadata": metadata}

    timestamp_ms = received_ms
    if body.get("timestamp") is not None:
        stamp = body["timestamp"]
        parsed = parse_time_ms(stamp, strict=True) if isinstance(stamp, str) else None
        if parsed is None:
            problems.append(
                issue(
                    "invalid_format",
                    ["timestamp"],
                    "Invalid ISO datetime: expected a date-time with a UTC offset",
                )
            )
        else:
            timestamp_ms = parsed

    if problems:
        return problems
    assert isinstance(name, str) and isinstance(environment, str) and isinstance(source, str)
    return NewScore(
        id=score_id,
        name=name,
        value=number,
        string_value=text,
        data_type=data_type,
        source=source,
        trace_id=trace_id,
        observation_id=observation_id,
        session_id=session_id,
        dataset_run_id=dataset_run_id,
        comment=comment,
        metadata=metadata,
        config_id=config_id,
        queue_id=queue_id,
        environment=environment,
        timestamp_ms=timestamp_ms,
    )


_UPSERT = """
INSERT INTO scores (
    id, name, value, string_value, data_type, source, trace_id, observation_id,
    session_id, dataset_run_id, comment, metadata, config_id, queue_id, author_user_id,
    environment, timestamp, timestamp_ms, created_at, updated_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    name = excluded.name, value = excluded.value, string_value = excluded.string_value,
    data_type = excluded.data_type, source = excluded.source,
    trace_id = excluded.trace_id, observation_id = excluded.observation_id,
    session_id = excluded.session_id, dataset_run_id = excluded.dataset_run_id,
    comment = excluded.comment, metadata = excluded.metadata,
    config_id = excluded.config_id, queue_id = excluded.queue_id,
    environment = excluded.environment, timestamp = excluded.timestamp,
    timestamp_ms = excluded.timestamp_ms, updated_at = excluded.updated_at
"""


def store_scores(store: Store, scores: Iterable[NewScore], received_ms: int) -> None:
    """Insert or replace (by id) scores in one transaction."""
    stamp = format_ms(received_ms)
    rows = [
        (
            s.id,
            s.name,
            s.value,
            s.string_value,
            s.data_type,
            s.source,
            s.trace_id,
            s.observation_id,
            s.session_id,
            s.dataset_run_id,
            s.comment,
            json.dumps(s.metadata),
            s.config_id,
            s.queue_id,
            s.environment,
            format_ms(s.timestamp_ms),
            s.timestamp_ms,
            stamp,
            stamp,
        )
        for s in scores
    ]
    if not rows:
        return
    with store.transaction() as db:
        db.executemany(_UPSERT, rows)


def _rejection(index: int, body: Any, problems: list[dict[str, Any]]) -> dict[str, str]:
    label = f"Score at index {index}"
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        label += f" (id {body['id']})"
    details = "; ".join(
        (".".join(str(p) for p in problem["path"]) + ": " if problem["path"] else "")
        + problem["message"]
        for problem in problems
    )
    return {"message": f"{label}: {details}"}


def _create(store: Store, payload: Any) -> Response:
    received = now_ms()
    if isinstance(payload, list):
        if not payload:
            raise invalid([issue("too_small", [], "Too small: expected array to have >=1 items")])
        accepted: list[NewScore] = []
        errors: list[dict[str, str]] = []
        for index, body in enumerate(payload):
            checked = validate_score(body, received)
            if isinstance(checked, NewScore):
                accepted.append(checked)
            else:
                errors.append(_rejection(index, body, checked))
        store_scores(store, accepted, received)
        if not errors:
            return JSONResponse({"message": "Accepted"}, status_code=202)
        return JSONResponse(
            {"accepted": len(accepted), "rejected": len(errors), "errors": errors},
            status_code=207,
        )
    checked = validate_score(payload, received)
    if not isinstance(checked, NewScore):
        raise invalid(checked)
    store_scores(store, [checked], received)
    return JSONResponse({"id": checked.id})


@router.post("/api/public/scores", dependencies=[Depends(require_scores_access)])
async def create_scores(request: Request) -> Response:
    """Create one score (``{id}``) or a list of scores (202/207)."""
    raw = await request.body()
    try:
        payload = parse_json(raw)
    except (ValueError, UnicodeDecodeError):
        return PlainTextResponse(INVALID_JSON, status_code=400)
    store: Store = request.app.state.store
    return await run_in_threadpool(_create, store, payload)


# ------------------------------------------------------------------------- reading

_LIST_FILTERS = {
    # query parameter: column
    "id": "id",
    "name": "name",
    "environment": "environment",
    "configId": "config_id",
    "queueId": "queue_id",
    "authorUserId": "author_user_id",
    "traceId": "trace_id",
    "sessionId": "session_id",
    "observationId": "observation_id",
    "experimentId": "dataset_run_id",
}
_KNOWN_PARAMS = {
    "limit",
    "cursor",
    "fields",
    "source",
    "dataType",
    "value",
    "valueMin",
    "valueMax",
    "fromTimestamp",
    "toTimestamp",
    "userId",
    "traceTags",
    *_LIST_FILTERS,
}


@dataclass
class ListQuery:
    """A checked ``GET /v3/scores`` request."""

    limit: int
    fields: list[str]
    cursor: tuple[int, str] | None
    where: list[str]
    params: list[Any]


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _single_params(query: Mapping[str, list[str]]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    problems: list[dict[str, Any]] = []
    unknown = sorted(key for key in query if key not in _KNOWN_PARAMS)
    if unknown:
        problems.append(
            issue(
                "unrecognized_keys",
                [],
                "Unrecognized key"
                + ("s" if len(unknown) > 1 else "")
                + ": "
                + ", ".join(f'"{key}"' for key in unknown),
                keys=unknown,
            )
        )
    single: dict[str, str] = {}
    for key, values in query.items():
        if key not in _KNOWN_PARAMS:
            continue
        if len(values) > 1:
            problems.append(
                issue("invalid_type", [key], "Invalid input: expected string, received array")
            )
        else:
            single[key] = values[0]
    return single, problems


def _decode_cursor(text: str) -> tuple[int, str]:
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = json.loads(decoded.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad_request("Invalid cursor format") from None
    last_ms = (
        parse_time_ms(cursor["lastTimestamp"])
        if isinstance(cursor, dict) and isinstance(cursor.get("lastTimestamp"), str)
        else None
    )
    if (
        not isinstance(cursor, dict)
        or cursor.get("v") != 1
        or last_ms is None
        or not isinstance(cursor.get("lastId"), str)
    ):
        raise invalid([issue("invalid_union", ["cursor"], "Invalid input: not a v1 scores cursor")])
    return last_ms, cursor["lastId"]


def encode_cursor(timestamp_ms: int, score_id: str) -> str:
    body = json.dumps(
        {"v": 1, "lastTimestamp": format_ms(timestamp_ms), "lastId": score_id},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def parse_list_query(query: Mapping[str, list[str]]) -> ListQuery:
    """Check the query string of ``GET /v3/scores`` as Langfuse does: first each
    parameter (all problems at once), then the rules across parameters."""
    single, problems = _single_params(query)
    where: list[str] = []
    params: list[Any] = []

    limit = DEFAULT_LIMIT
    if single.get("limit", "") != "":
        try:
            limit = int(single["limit"])
        except ValueError:
            problems.append(
                issue("invalid_type", ["limit"], "Invalid input: expected int, received NaN")
            )
        else:
            if limit < 1:
                problems.append(
                    issue("too_small", ["limit"], "Too small: expected number to be >0")
                )
            elif limit > MAX_LIMIT:
                problems.append(
                    issue("too_big", ["limit"], f"Too big: expected number to be <={MAX_LIMIT}")
                )

    fields = _csv(single["fields"]) if single.get("fields") else ["core"]
    for group in fields:
        if group not in FIELD_GROUPS:
            problems.append(
                issue(
                    "invalid_value",
                    ["fields"],
                    "Invalid option: expected one of " + "|".join(f'"{g}"' for g in FIELD_GROUPS),
                )
            )

    lists: dict[str, list[str]] = {}
    for key in _LIST_FILTERS:
        if single.get(key):
            lists[key] = _csv(single[key])
    for key, allowed in (("source", SOURCES), ("dataType", DATA_TYPES)):
        if single.get(key):
            values = [v.upper() for v in _csv(single[key])]
            for v in values:
                if v not in allowed:
                    problems.append(
                        issue(
                            "custom",
                            [key],
                            f'Invalid {key} value: "{v}". Allowed: {", ".join(allowed)}',
                        )
                    )
            lists[key] = values
    values = _csv(single["value"]) if single.get("value") else []

    bounds: dict[str, float] = {}
    for key in ("valueMin", "valueMax"):
        if single.get(key, "") != "":
            try:
                bounds[key] = float(single[key])
            except ValueError:
                bounds[key] = math.nan
            if not math.isfinite(bounds[key]):
                problems.append(
                    issue("invalid_type", [key], "Invalid input: expected number, received NaN")
                )

    times: dict[str, int] = {}
    for key in ("fromTimestamp", "toTimestamp"):
        if single.get(key, "") != "":
            parsed = parse_time_ms(single[key])
            if parsed is None:
                problems.append(issue("invalid_type", [key], "Invalid input: expected date"))
            else:
                times[key] = parsed

    cursor = _decode_cursor(single["cursor"]) if single.get("cursor") else None
    if problems:
        raise invalid(problems)

    # The rules across parameters (the route's superRefine).
    for key in ("userId", "traceTags"):
        if single.get(key):
            problems.append(
                issue(
                    "custom",
                    [],
                    f"{key} filter requires a trace JOIN and is not supported in v3 — use v2 "
                    "or omit this filter",
                )
            )
    data_types = lists.get("dataType", [])
    if values:
        if len(data_types) != 1:
            problems.append(
                issue(
                    "custom",
                    [],
                    "value filter requires a single dataType from: NUMERIC, BOOLEAN, CATEGORICAL",
                )
            )
        elif data_types[0] not in ("NUMERIC", "BOOLEAN", "CATEGORICAL"):
            problems.append(
                issue(
                    "custom",
                    [],
                    "value filter requires dataType to be NUMERIC, BOOLEAN, or CATEGORICAL "
                    f'(got "{data_types[0]}")',
                )
            )
        elif data_types[0] == "NUMERIC":
            for v in values:
                try:
                    finite = math.isfinite(float(v))
                except ValueError:
                    finite = False
                if not finite:
                    problems.append(
                        issue(
                            "custom",
                            [],
                            "value filter with dataType=NUMERIC requires each value to be a "
                            f'finite number (got "{v}")',
                        )
                    )
        elif data_types[0] == "BOOLEAN":
            for v in values:
                if v not in ("true", "false"):
                    problems.append(
                        issue(
                            "custom",
                            [],
                            "value filter with dataType=BOOLEAN requires each value to be "
                            f'"true" or "false" (got "{v}")',
                        )
                    )
    if bounds and data_types != ["NUMERIC"]:
        problems.append(
            issue("custom", [], "valueMin and valueMax require dataType=NUMERIC as a single value")
        )
    if lists.get("observationId") and not lists.get("traceId"):
        problems.append(
            issue(
                "custom",
                [],
                "observationId filter requires traceId — observation IDs are scoped to a trace",
            )
        )
    if sum(1 for key in ("traceId", "sessionId", "experimentId") if lists.get(key)) > 1:
        problems.append(
            issue("custom", [], "At most one of traceId, sessionId, experimentId may be specified")
        )
    if problems:
        raise invalid(problems)

    for key, column in (*_LIST_FILTERS.items(), ("source", "source"), ("dataType", "data_type")):
        options = lists.get(key)
        if options:
            where.append(f"{column} IN ({', '.join('?' * len(options))})")
            params.extend(options)
    if values:
        if data_types[0] == "CATEGORICAL":
            where.append(f"string_value IN ({', '.join('?' * len(values))})")
            params.extend(values)
        else:
            numbers = (
                [1.0 if v == "true" else 0.0 for v in values]
                if data_types[0] == "BOOLEAN"
                else [float(v) for v in values]
            )
            where.append(f"value IN ({', '.join('?' * len(numbers))})")
            params.extend(numbers)
    if "valueMin" in bounds:
        where.append("value >= ?")
        params.append(bounds["valueMin"])
    if "valueMax" in bounds:
        where.append("value <= ?")
        params.append(bounds["valueMax"])
    if "fromTimestamp" in times:
        where.append("timestamp_ms >= ?")
        params.append(times["fromTimestamp"])
    if "toTimestamp" in times:
        where.append("timestamp_ms < ?")
        params.append(times["toTimestamp"])
    return ListQuery(limit=limit, fields=fields, cursor=cursor, where=where, params=params)


def _subject(row: sqlite3.Row) -> dict[str, str]:
    if row["dataset_run_id"]:
        return {"kind": "experiment", "id": row["dataset_run_id"]}
    if row["observation_id"]:
        subject = {"kind": "observation", "id": row["observation_id"]}
        if row["trace_id"]:
            subject["traceId"] = row["trace_id"]
        return subject
    if row["session_id"]:
        return {"kind": "session", "id": row["session_id"]}
    return {"kind": "trace", "id": row["trace_id"]}


def score_v3(row: sqlite3.Row, fields: list[str], project_id: str) -> dict[str, Any]:
    """A stored score as ``ScoreV3``: the core fields and the requested groups."""
    data_type = row["data_type"]
    value: Any
    if data_type == "NUMERIC":
        value = row["value"]
    elif data_type == "BOOLEAN":
        value = row["value"] == 1
    else:
        value = row["string_value"] or ""
    score: dict[str, Any] = {
        "id": row["id"],
        "projectId": project_id,
        "name": row["name"],
        "dataType": data_type,
        "value": value,
        "source": row["source"],
        "timestamp": row["timestamp"],
        "environment": row["environment"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }
    if "details" in fields:
        score["comment"] = row["comment"]
        score["configId"] = row["config_id"]
        score["metadata"] = json.loads(row["metadata"])
    if "annotation" in fields:
        score["authorUserId"] = row["author_user_id"]
        score["queueId"] = row["queue_id"]
    if "subject" in fields:
        score["subject"] = _subject(row)
    return score


def list_scores_page(store: Store, query: ListQuery, project_id: str) -> dict[str, Any]:
    """One page of ``GET /v3/scores``."""
    where = list(query.where)
    params = list(query.params)
    if query.cursor is not None:
        where.append("(timestamp_ms < ? OR (timestamp_ms = ? AND id < ?))")
        params.extend([query.cursor[0], query.cursor[0], query.cursor[1]])
    sql = "SELECT * FROM scores"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY timestamp_ms DESC, id DESC LIMIT ?"
    rows = store.query(sql, [*params, query.limit + 1])
    page = rows[: query.limit]
    meta: dict[str, Any] = {"limit": query.limit}
    if len(rows) > query.limit:
        meta["cursor"] = encode_cursor(page[-1]["timestamp_ms"], page[-1]["id"])
    return {"data": [score_v3(row, query.fields, project_id) for row in page], "meta": meta}


@router.get("/api/public/v3/scores", dependencies=[Depends(require_project)])
def list_scores(request: Request) -> dict[str, Any]:
    """Scores, newest first, with a cursor to the next page."""
    query = parse_list_query(
        {key: request.query_params.getlist(key) for key in request.query_params}
    )
    settings: EmulatorSettings = request.app.state.settings
    store: Store = request.app.state.store
    return list_scores_page(store, query, settings.project_id)
