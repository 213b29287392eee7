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
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from coalmine.emulator.auth import require_project, require_scores_access
from coalmine.emulator.errors import INVALID_JSON, bad_request, invalid, issue, js_type
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store
from coalmine.emulator.wire import format_ms, now_ms, parse_json, parse_time_ms

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


Problems = list[dict[str, Any]]
ValueCheck = Callable[[Any, Problems], tuple[float | None, str | None]]
"""Checks a score's value for its data type: (number, text) to store, or a problem."""


def _number_value(value: Any, problems: Problems) -> tuple[float | None, str | None]:
    if not _is_number(value) or not math.isfinite(value):
        problems.append(
            issue(
                "invalid_type",
                ["value"],
                f"Invalid input: expected number, received {js_type(value)}",
            )
        )
        return None, None
    return float(value), None


def _boolean_value(value: Any, problems: Problems) -> tuple[float | None, str | None]:
    number, _ = _number_value(value, problems)
    if number is None:
        return None, None
    if number not in (0, 1):
        problems.append(
            issue(
                "custom",
                ["value"],
                "Value must be a number equal to either 0 or 1 for data type BOOLEAN",
            )
        )
        return None, None
    return number, "True" if number == 1 else "False"


def _string_value(value: Any, problems: Problems) -> tuple[float | None, str | None]:
    if not isinstance(value, str):
        problems.append(
            issue(
                "invalid_type",
                ["value"],
                f"Invalid input: expected string, received {js_type(value)}",
            )
        )
        return None, None
    return None, value


def _text_value(value: Any, problems: Problems) -> tuple[float | None, str | None]:
    _, text = _string_value(value, problems)
    if text is None:
        return None, None
    if not 1 <= len(text) <= TEXT_MAX_CHARS:
        problems.append(
            issue(
                "too_small" if not text else "too_big",
                ["value"],
                f"Text score values must be between 1 and {TEXT_MAX_CHARS} characters",
            )
        )
        return None, None
    return None, text


_VALUE_CHECKS: dict[str, ValueCheck] = {
    "NUMERIC": _number_value,
    "BOOLEAN": _boolean_value,
    "CATEGORICAL": _string_value,
    "TEXT": _text_value,
    "CORRECTION": _string_value,
}
"""The value each data type takes, by data type (``DATA_TYPES``)."""


def _checked_value(
    body: Mapping[str, Any], problems: Problems
) -> tuple[Any, float | None, str | None]:
    """(dataType, number, text): the data type defaults from the value."""
    value = body.get("value")
    data_type = body.get("dataType")
    if data_type is None:
        data_type = "NUMERIC" if _is_number(value) else "CATEGORICAL"
    check = _VALUE_CHECKS.get(data_type) if isinstance(data_type, str) else None
    if check is None:
        problems.append(
            issue(
                "invalid_union",
                ["dataType"],
                f"Invalid input: dataType must be one of {', '.join(DATA_TYPES)}",
            )
        )
        return data_type, None, None
    if value is None:
        problems.append(issue("invalid_type", ["value"], "Invalid input: value is required"))
        return data_type, None, None
    number, text = check(value, problems)
    return data_type, number, text


def _checked_name(body: Mapping[str, Any], problems: Problems) -> Any:
    name = body.get("name")
    if not isinstance(name, str):
        problems.append(issue("invalid_type", ["name"], "Invalid input: expected non-empty string"))
    elif not name:
        problems.append(
            issue("too_small", ["name"], "Too small: expected string to have >=1 characters")
        )
    return name


def _checked_config(body: Mapping[str, Any], data_type: Any, problems: Problems) -> str | None:
    config_id = _optional_string(body, "configId", problems)
    if data_type == "CORRECTION" and config_id is not None:
        problems.append(
            issue("invalid_type", ["configId"], "Correction scores cannot have a config")
        )
    return config_id


def _checked_source(
    body: Mapping[str, Any], data_type: Any, config_id: str | None, problems: Problems
) -> Any:
    source = body.get("source")
    if source is None:
        return "API"
    if source == "EVAL":
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
    return source


def _checked_environment(body: Mapping[str, Any], problems: Problems) -> Any:
    environment = body.get("environment")
    if environment is None:
        return "default"
    if not isinstance(environment, str) or not ENVIRONMENT_RE.match(environment):
        problems.append(
            issue(
                "invalid_format",
                ["environment"],
                "Environment must be lowercase alphanumeric with hyphens and underscores, "
                "at most 40 characters, and must not start with 'langfuse'",
            )
        )
    return environment


_STRING_FIELDS = (
    "id",
    "traceId",
    "observationId",
    "sessionId",
    "datasetRunId",
    "comment",
    "queueId",
)
"""The optional text fields, checked in this order."""


def _one_subject(strings: Mapping[str, str | None]) -> bool:
    """Exactly one of trace (with an optional observation), session or dataset run."""
    trace, observation = strings["traceId"], strings["observationId"]
    session, run = strings["sessionId"], strings["datasetRunId"]
    return (
        (bool(trace) and not session and not run)
        or (bool(session) and not trace and not run and not observation)
        or (bool(run) and not trace and not session and not observation)
    )


def _checked_timestamp(body: Mapping[str, Any], received_ms: int, problems: Problems) -> int:
    stamp = body.get("timestamp")
    if stamp is None:
        return received_ms
    parsed = parse_time_ms(stamp, strict=True) if isinstance(stamp, str) else None
    if parsed is None:
        problems.append(
            issue(
                "invalid_format",
                ["timestamp"],
                "Invalid ISO datetime: expected a date-time with a UTC offset",
            )
        )
        return received_ms
    return parsed


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return value if isinstance(value, dict) else {"metadata": value}


def validate_score(body: Any, received_ms: int) -> NewScore | list[dict[str, Any]]:
    """A score body checked as Langfuse checks it: the score, or zod-shaped issues."""
    if not isinstance(body, dict):
        return [
            issue("invalid_type", [], f"Invalid input: expected object, received {js_type(body)}")
        ]
    problems: Problems = []
    name = _checked_name(body, problems)
    data_type, number, text = _checked_value(body, problems)
    if data_type == "CORRECTION":
        name = CORRECTION_NAME
    config_id = _checked_config(body, data_type, problems)
    source = _checked_source(body, data_type, config_id, problems)
    environment = _checked_environment(body, problems)
    strings = {key: _optional_string(body, key, problems) for key in _STRING_FIELDS}
    if not _one_subject(strings):
        problems.append(
            issue(
                "custom",
                ["traceId", "sessionId", "datasetRunId", "observationId"],
                "Provide exactly one of the following: traceId (with optional "
                "observationId), sessionId or datasetRunId. ObservationId requires traceId.",
            )
        )
    timestamp_ms = _checked_timestamp(body, received_ms, problems)
    if problems:
        return problems
    return NewScore(
        id=strings["id"] or str(uuid.uuid4()),
        name=name,
        value=number,
        string_value=text,
        data_type=data_type,
        source=source,
        trace_id=strings["traceId"],
        observation_id=strings["observationId"],
        session_id=strings["sessionId"],
        dataset_run_id=strings["datasetRunId"],
        comment=strings["comment"],
        metadata=_metadata(body.get("metadata")),
        config_id=config_id,
        queue_id=strings["queueId"],
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


@dataclass
class ListQuery:
    """A checked ``GET /v3/scores`` request."""

    limit: int
    fields: list[str]
    cursor: tuple[int, str] | None
    where: list[str]
    params: list[Any]


Condition = tuple[str, list[Any]]
Parsed = Mapping[str, Any]
"""The parameters given, each parsed by its `_Param`."""


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _parse_csv(_key: str, text: str, _problems: Problems) -> list[str]:
    return _csv(text)


def _parse_text(_key: str, text: str, _problems: Problems) -> str:
    return text


def _parse_limit(key: str, text: str, problems: Problems) -> int | None:
    try:
        limit = int(text)
    except ValueError:
        problems.append(issue("invalid_type", [key], "Invalid input: expected int, received NaN"))
        return None
    if limit < 1:
        problems.append(issue("too_small", [key], "Too small: expected number to be >0"))
    elif limit > MAX_LIMIT:
        problems.append(issue("too_big", [key], f"Too big: expected number to be <={MAX_LIMIT}"))
    return limit


def _parse_field_groups(key: str, text: str, problems: Problems) -> list[str]:
    groups = _csv(text)
    problems.extend(
        issue(
            "invalid_value",
            [key],
            "Invalid option: expected one of " + "|".join(f'"{g}"' for g in FIELD_GROUPS),
        )
        for group in groups
        if group not in FIELD_GROUPS
    )
    return groups


def _parse_choices(allowed: Sequence[str]) -> Callable[[str, str, Problems], list[str]]:
    """A parser of a comma-separated list of ``allowed`` values, in any case."""

    def parse(key: str, text: str, problems: Problems) -> list[str]:
        values = [value.upper() for value in _csv(text)]
        problems.extend(
            issue("custom", [key], f'Invalid {key} value: "{v}". Allowed: {", ".join(allowed)}')
            for v in values
            if v not in allowed
        )
        return values

    return parse


def _parse_number(key: str, text: str, problems: Problems) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        problems.append(
            issue("invalid_type", [key], "Invalid input: expected number, received NaN")
        )
    return number


def _parse_date(key: str, text: str, problems: Problems) -> int | None:
    parsed = parse_time_ms(text)
    if parsed is None:
        problems.append(issue("invalid_type", [key], "Invalid input: expected date"))
    return parsed


def _parse_cursor(_key: str, text: str, _problems: Problems) -> tuple[int, str]:
    return _decode_cursor(text)


def _in(column: str) -> Callable[[list[Any], Parsed], Condition | None]:
    """``column IN (...)`` for a non-empty list of values."""

    def where(values: list[Any], _parsed: Parsed) -> Condition | None:
        if not values:
            return None
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    return where


def _bound(sql: str) -> Callable[[Any, Parsed], Condition | None]:
    """``sql`` with the parameter's value as its one placeholder."""
    return lambda value, _parsed: (sql, [value])


@dataclass(frozen=True)
class _ValueFilter:
    """How the ``value`` filter reads its values for one data type."""

    accepts: Callable[[str], bool]
    requirement: str  # what the error says each value must be
    column: str
    convert: Callable[[str], Any]


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


_VALUE_FILTERS = {
    "NUMERIC": _ValueFilter(_is_finite_number, "to be a finite number", "value", float),
    "BOOLEAN": _ValueFilter(
        lambda text: text in ("true", "false"),
        'to be "true" or "false"',
        "value",
        lambda text: 1.0 if text == "true" else 0.0,
    ),
    "CATEGORICAL": _ValueFilter(lambda _text: True, "", "string_value", str),
}


def _value_in(values: list[str], parsed: Parsed) -> Condition | None:
    """The ``value`` filter: numbers, booleans or categories, by the one ``dataType``."""
    if not values:
        return None
    reading = _VALUE_FILTERS[parsed["dataType"][0]]
    return _in(reading.column)([reading.convert(value) for value in values], parsed)


@dataclass(frozen=True)
class _Param:
    """A query parameter: how its text is parsed (problems appended to a list), and the
    SQL condition its parsed value adds, if any."""

    parse: Callable[[str, str, Problems], Any]
    where: Callable[[Any, Parsed], Condition | None] | None = None


_PARAMS: dict[str, _Param] = {
    # parsed, then turned into conditions, in this order
    "limit": _Param(_parse_limit),
    "fields": _Param(_parse_field_groups),
    **{key: _Param(_parse_csv, _in(column)) for key, column in _LIST_FILTERS.items()},
    "source": _Param(_parse_choices(SOURCES), _in("source")),
    "dataType": _Param(_parse_choices(DATA_TYPES), _in("data_type")),
    "value": _Param(_parse_csv, _value_in),
    "valueMin": _Param(_parse_number, _bound("value >= ?")),
    "valueMax": _Param(_parse_number, _bound("value <= ?")),
    "fromTimestamp": _Param(_parse_date, _bound("timestamp_ms >= ?")),
    "toTimestamp": _Param(_parse_date, _bound("timestamp_ms < ?")),
    "userId": _Param(_parse_text),  # refused by the rules across parameters
    "traceTags": _Param(_parse_text),
    "cursor": _Param(_parse_cursor),  # last: a bad cursor is answered alone
}


def _single_params(query: Mapping[str, list[str]]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    problems: list[dict[str, Any]] = []
    unknown = sorted(key for key in query if key not in _PARAMS)
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
        if key not in _PARAMS:
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


def _custom(message: str) -> dict[str, Any]:
    return issue("custom", [], message)


def _join_filters(parsed: Parsed) -> Problems:
    return [
        _custom(
            f"{key} filter requires a trace JOIN and is not supported in v3 — use v2 "
            "or omit this filter"
        )
        for key in ("userId", "traceTags")
        if parsed.get(key)
    ]


def _value_filter(parsed: Parsed) -> Problems:
    values: list[str] = parsed.get("value", [])
    if not values:
        return []
    data_types = parsed.get("dataType", [])
    if len(data_types) != 1:
        return [
            _custom("value filter requires a single dataType from: NUMERIC, BOOLEAN, CATEGORICAL")
        ]
    reading = _VALUE_FILTERS.get(data_types[0])
    if reading is None:
        return [
            _custom(
                "value filter requires dataType to be NUMERIC, BOOLEAN, or CATEGORICAL "
                f'(got "{data_types[0]}")'
            )
        ]
    return [
        _custom(
            f"value filter with dataType={data_types[0]} requires each value "
            f'{reading.requirement} (got "{value}")'
        )
        for value in values
        if not reading.accepts(value)
    ]


def _value_bounds(parsed: Parsed) -> Problems:
    if ("valueMin" in parsed or "valueMax" in parsed) and parsed.get("dataType") != ["NUMERIC"]:
        return [_custom("valueMin and valueMax require dataType=NUMERIC as a single value")]
    return []


def _subjects(parsed: Parsed) -> Problems:
    problems = []
    if parsed.get("observationId") and not parsed.get("traceId"):
        problems.append(
            _custom("observationId filter requires traceId — observation IDs are scoped to a trace")
        )
    if sum(1 for key in ("traceId", "sessionId", "experimentId") if parsed.get(key)) > 1:
        problems.append(_custom("At most one of traceId, sessionId, experimentId may be specified"))
    return problems


_RULES: tuple[Callable[[Parsed], Problems], ...] = (
    _join_filters,
    _value_filter,
    _value_bounds,
    _subjects,
)
"""The rules across parameters (the route's superRefine), in the order it reports them."""


def parse_list_query(query: Mapping[str, list[str]]) -> ListQuery:
    """Check the query string of ``GET /v3/scores`` as Langfuse does: first each
    parameter (all problems at once), then the rules across parameters."""
    single, problems = _single_params(query)
    parsed = {
        key: param.parse(key, single[key], problems)
        for key, param in _PARAMS.items()
        if single.get(key)
    }
    if problems:
        raise invalid(problems)
    problems = [problem for rule in _RULES for problem in rule(parsed)]
    if problems:
        raise invalid(problems)
    conditions = [
        param.where(parsed[key], parsed)
        for key, param in _PARAMS.items()
        if param.where is not None and key in parsed
    ]
    where = [condition for condition in conditions if condition is not None]
    return ListQuery(
        limit=parsed.get("limit", DEFAULT_LIMIT),
        fields=parsed.get("fields", ["core"]),
        cursor=parsed.get("cursor"),
        where=[sql for sql, _ in where],
        params=[value for _, values in where for value in values],
    )


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
