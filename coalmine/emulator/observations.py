"""``GET /api/public/v2/observations``: observations with cursor paging, filters and
field groups, as Langfuse v4 serves them from its events table.

Behaviour follows ``web/src/pages/api/public/v2/observations/index.ts``, the query
schema ``GetObservationsV2Query`` and the filter factory of ``packages/shared``:

* ordered by start time, newest first; ``limit`` 1..1000 (default 50); the next page's
  cursor is in ``meta.cursor`` only while more rows follow. The cursor is a keyset
  position, base64url of ``{"lastStartTimeTo", "lastTraceId", "lastId"}``; rows are
  ordered by (start_ms, id), so paging while spans arrive neither skips nor repeats;
* the fixed parameters filter with ``=``; a ``filter`` condition on the same column
  replaces them;
* the response holds the requested field groups (default ``core,basic``) plus the
  fields the spec marks required (``modelId`` and the prices, null here).

Rows are rendered to JSON by SQLite (``json_object``), which keeps a 1000-row page
cheap. Tag filters go through ``observation_tags`` (see `run_query`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import QueryParams

from coalmine.emulator import otlp
from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import bad_request, invalid, issue, js_type
from coalmine.emulator.store import Store

router = APIRouter()

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
METADATA_VALUE_CHARS = 200

FIELD_GROUPS = (
    "core",
    "basic",
    "time",
    "io",
    "metadata",
    "model",
    "usage",
    "prompt",
    "metrics",
    "trace_context",
)
DEFAULT_FIELD_GROUPS = ("core", "basic")

_FALSE = "json('false')"


def _flag(column: str) -> str:
    return f"json(CASE WHEN {column} THEN 'true' ELSE 'false' END)"


_GROUP_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "core": (
        ("id", "o.id"),
        ("traceId", "o.trace_id"),
        ("startTime", "o.start_time"),
        ("endTime", "o.end_time"),
        ("projectId", "?"),  # bound to the project id
        ("parentObservationId", "o.parent_observation_id"),
        ("type", "o.type"),
        # Required by the spec in every group selection; no model matching here.
        ("modelId", "NULL"),
        ("inputPrice", "NULL"),
        ("outputPrice", "NULL"),
        ("totalPrice", "NULL"),
    ),
    "basic": (
        ("name", "o.name"),
        ("level", "o.level"),
        ("statusMessage", "o.status_message"),
        ("version", "o.version"),
        ("environment", "o.environment"),
        ("bookmarked", _FALSE),
        ("public", _flag("o.public")),
        ("userId", "o.user_id"),
        ("sessionId", "o.session_id"),
        ("isRootObservation", _flag("o.is_root")),
    ),
    "time": (
        ("completionStartTime", "o.completion_start_time"),
        ("createdAt", "o.created_at"),
        ("updatedAt", "o.updated_at"),
    ),
    "io": (("input", "o.input"), ("output", "o.output")),
    "metadata": (),  # rendered in Python: long values are truncated
    "model": (
        ("providedModelName", "o.model"),
        ("internalModelId", "NULL"),
        ("modelParameters", "json(o.model_parameters)"),
    ),
    "usage": (
        ("usageDetails", "json(o.usage_details)"),
        ("costDetails", "json(o.cost_details)"),
        ("totalCost", "o.total_cost"),
        ("usagePricingTierName", "NULL"),
    ),
    "prompt": (
        ("promptId", "o.prompt_id"),
        ("promptName", "o.prompt_name"),
        ("promptVersion", "o.prompt_version"),
    ),
    "metrics": (
        ("latency", "(o.end_ms - o.start_ms) / 1000.0"),
        ("timeToFirstToken", "(o.completion_start_ms - o.start_ms) / 1000.0"),
    ),
    "trace_context": (
        ("tags", "json(o.tags)"),
        ("release", "o.release"),
        ("traceName", "o.trace_name"),
    ),
}

OBSERVATION_TYPES = tuple(sorted(otlp.OBSERVATION_TYPES))
LEVELS = ("DEBUG", "DEFAULT", "WARNING", "ERROR")

# ------------------------------------------------------------------ filter columns

_STRING, _DATETIME, _NUMBER, _BOOLEAN, _ARRAY, _OBJECT = (
    "string",
    "datetime",
    "number",
    "boolean",
    "arrayOptions",
    "stringObject",
)


@dataclass(frozen=True)
class Column:
    """A filterable column of the v2 API: its SQL and the kind of filter it takes."""

    sql: str
    kind: str
    empty_is_null: bool = False


COLUMNS: dict[str, Column] = {
    "id": Column("o.id", _STRING),
    "type": Column("o.type", _STRING),
    "name": Column("o.name", _STRING),
    "traceId": Column("o.trace_id", _STRING),
    "startTime": Column("o.start_ms", _DATETIME),
    "endTime": Column("o.end_ms", _DATETIME),
    "environment": Column("o.environment", _STRING),
    "traceEnvironment": Column("o.environment", _STRING),
    "level": Column("o.level", _STRING),
    "statusMessage": Column("o.status_message", _STRING),
    "version": Column("o.version", _STRING),
    "userId": Column("o.user_id", _STRING),
    "sessionId": Column("o.session_id", _STRING),
    "traceName": Column("o.trace_name", _STRING),
    "model": Column("o.model", _STRING),
    "providedModelName": Column("o.model", _STRING),
    "modelId": Column("NULL", _STRING),
    "promptName": Column("o.prompt_name", _STRING),
    "promptVersion": Column("o.prompt_version", _NUMBER),
    "input": Column("o.input", _STRING),
    "output": Column("o.output", _STRING),
    "parentObservationId": Column("o.parent_observation_id", _STRING, empty_is_null=True),
    "isRootObservation": Column("o.is_root", _BOOLEAN),
    "hasParentObservation": Column("(o.parent_observation_id IS NOT NULL)", _BOOLEAN),
    "traceTags": Column("o.tags", _ARRAY),
    "tags": Column("o.tags", _ARRAY),
    "latency": Column("((o.end_ms - o.start_ms) / 1000.0)", _NUMBER),
    "timeToFirstToken": Column("((o.completion_start_ms - o.start_ms) / 1000.0)", _NUMBER),
    "tokensPerSecond": Column(
        "(o.output_tokens / (NULLIF(o.end_ms - o.start_ms, 0) / 1000.0))", _NUMBER
    ),
    "inputTokens": Column("o.input_tokens", _NUMBER),
    "outputTokens": Column("o.output_tokens", _NUMBER),
    "totalTokens": Column("o.total_tokens", _NUMBER),
    "tokens": Column("o.total_tokens", _NUMBER),
    "inputCost": Column("o.input_cost", _NUMBER),
    "outputCost": Column("o.output_cost", _NUMBER),
    "totalCost": Column("o.total_cost", _NUMBER),
    "metadata": Column("o.metadata", _OBJECT),
}

_FILTER_KINDS = {
    _STRING: ("string", "stringOptions", "categoryOptions", "null"),
    _DATETIME: ("datetime", "null"),
    _NUMBER: ("number", "null"),
    _BOOLEAN: ("boolean", "null"),
    _ARRAY: ("arrayOptions", "null"),
    _OBJECT: ("stringObject", "numberObject", "categoryOptions", "null"),
}

OPERATORS: dict[str, tuple[str, ...]] = {
    "datetime": (">", "<", ">=", "<="),
    "string": ("=", "contains", "does not contain", "starts with", "ends with", "matches"),
    "stringOptions": ("any of", "none of"),
    "categoryOptions": ("any of", "none of"),
    "arrayOptions": ("any of", "none of", "all of"),
    "number": ("=", ">", "<", ">=", "<="),
    "stringObject": (
        "=",
        "contains",
        "does not contain",
        "starts with",
        "ends with",
        "matches",
    ),
    "numberObject": ("=", ">", "<", ">=", "<="),
    "boolean": ("=", "<>"),
    "null": ("is null", "is not null"),
    "positionInTrace": ("=",),
}

_MATCHES_COLUMNS = frozenset({"input", "output", "metadata"})


@dataclass
class Condition:
    """One SQL condition; ``field`` names the column, for filter precedence.

    ``drive_tag``: every matching row has this tag, so the query may walk that tag's
    entries in ``observation_tags`` instead of all observations.
    """

    field: str
    sql: str
    params: list[Any]
    drive_tag: str | None = None


@dataclass
class ObservationsQuery:
    """A parsed request."""

    groups: tuple[str, ...]
    limit: int
    conditions: list[Condition] = field(default_factory=list)
    after: tuple[int, str] | None = None
    expand_metadata: frozenset[str] | None = None
    expand_all_metadata: bool = False


# ------------------------------------------------------------------ parsing

Problems = list[dict[str, Any]]


def _too_big(path: str, maximum: int) -> dict[str, Any]:
    return issue(
        "too_big",
        [path],
        f"Too big: expected number to be <={maximum}",
        origin="number",
        maximum=maximum,
        inclusive=True,
    )


def _option_issue(path: str, options: Sequence[str]) -> dict[str, Any]:
    listed = "|".join(f'"{option}"' for option in options)
    return issue(
        "invalid_value", [path], f"Invalid option: expected one of {listed}", values=list(options)
    )


def _parse_limit(raw: str | None, issues: list[dict[str, Any]]) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        number = float(raw)
    except ValueError:
        issues.append(
            issue("invalid_type", ["limit"], "Invalid input: expected number, received NaN")
        )
        return DEFAULT_LIMIT
    if not number.is_integer():
        issues.append(
            issue("invalid_type", ["limit"], "Invalid input: expected int, received number")
        )
    elif number > MAX_LIMIT:
        issues.append(_too_big("limit", MAX_LIMIT))
    elif number < 1:
        issues.append(
            issue(
                "too_small",
                ["limit"],
                "Too small: expected number to be >=1",
                origin="number",
                minimum=1,
                inclusive=True,
            )
        )
    else:
        return int(number)
    return DEFAULT_LIMIT


def _parse_bool(name: str, raw: str | None, issues: list[dict[str, Any]]) -> bool | None:
    if raw is None or raw == "":
        return None
    if raw in ("true", "false"):
        return raw == "true"
    issues.append(_option_issue(name, ("true", "false")))
    return None


_OFFSET = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE)


def _parse_query_datetime(name: str, raw: str | None, issues: list[dict[str, Any]]) -> int | None:
    """A ``z.string().datetime({offset: true})`` parameter as epoch milliseconds."""
    if raw is None or raw == "":
        return None
    millis = otlp.parse_iso_ms(raw) if "T" in raw and _OFFSET.search(raw) else None
    if millis is None:
        issues.append(issue("invalid_format", [name], "Invalid ISO datetime", format="datetime"))
    return millis


def encode_cursor(start_ms: int, trace_id: str, observation_id: str) -> str:
    """The opaque cursor of the page after the row (start_ms, id)."""
    payload = json.dumps(
        {
            "lastStartTimeTo": otlp.iso_ms(start_ms),
            "lastTraceId": trace_id,
            "lastId": observation_id,
        },
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(payload.encode()).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(start_ms, id) of a cursor (base64 or base64url, padded or not)."""
    text = cursor.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        payload = json.loads(base64.b64decode(text, validate=True))
        start_ms = otlp.parse_iso_ms(str(payload["lastStartTimeTo"]))
        last_id = payload["lastId"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise bad_request("Invalid cursor format") from None
    if start_ms is None or not isinstance(last_id, str):
        raise bad_request("Invalid cursor format")
    return start_ms, last_id


def _check_parse_io(raw: str | None, issues: Problems) -> None:
    if raw in (None, "", "false"):
        return
    if raw == "true":
        issues.append(
            issue(
                "custom",
                ["parseIoAsJson"],
                "parseIoAsJson=true is no longer supported on the v2 observations "
                "endpoint. Input/output fields are always returned as raw strings. "
                "Remove the parseIoAsJson parameter or set it to false.",
            )
        )
    else:
        issues.append(_option_issue("parseIoAsJson", ("true", "false")))


ParameterParser = Callable[[QueryParams, str, Problems], list[Condition]]
"""Reads one query parameter: the conditions it sets, problems appended to a list."""


def _equals(column: str) -> ParameterParser:
    """``column = value`` for a non-empty value."""

    def parse(params: QueryParams, name: str, _issues: Problems) -> list[Condition]:
        value = params.get(name)
        return [Condition(column, f"{column} = ?", [value])] if value else []

    return parse


def _one_of(options: Sequence[str], column: str) -> ParameterParser:
    """``column = value`` for a non-empty value among ``options``."""

    def parse(params: QueryParams, name: str, issues: Problems) -> list[Condition]:
        value = params.get(name)
        if not value:
            return []
        if value not in options:
            issues.append(_option_issue(name, options))
            return []
        return [Condition(column, f"{column} = ?", [value])]

    return parse


def _parent(params: QueryParams, name: str, _issues: Problems) -> list[Condition]:
    """The parent's id; given empty, the observations without one."""
    parent = params.get(name)
    column = "o.parent_observation_id"
    if parent is None:
        return []
    if parent == "":
        return [Condition(column, f"{column} IS NULL", [])]
    return [Condition(column, f"{column} = ?", [parent])]


def _is_root(params: QueryParams, name: str, issues: Problems) -> list[Condition]:
    is_root = _parse_bool(name, params.get(name), issues)
    if is_root is None:
        return []
    return [Condition("o.is_root", "o.is_root = ?", [int(is_root)])]


def _environments(params: QueryParams, name: str, _issues: Problems) -> list[Condition]:
    """Any of the environments given (the parameter repeats)."""
    environments = [value for value in params.getlist(name) if value]
    if not environments:
        return []
    marks = ", ".join("?" * len(environments))
    return [Condition("o.environment", f"o.environment IN ({marks})", environments)]


def _start_time(operator: str) -> ParameterParser:
    """``start_ms <operator> time`` for an ISO time with an offset."""

    def parse(params: QueryParams, name: str, issues: Problems) -> list[Condition]:
        millis = _parse_query_datetime(name, params.get(name), issues)
        if millis is None:
            return []
        return [Condition("o.start_ms", f"o.start_ms {operator} ?", [millis])]

    return parse


_PARAMETERS: tuple[tuple[str, ParameterParser], ...] = (
    ("name", _equals("o.name")),
    ("userId", _equals("o.user_id")),
    ("sessionId", _equals("o.session_id")),
    ("traceId", _equals("o.trace_id")),
    ("version", _equals("o.version")),
    ("type", _one_of(OBSERVATION_TYPES, "o.type")),
    ("level", _one_of(LEVELS, "o.level")),
    ("parentObservationId", _parent),
    ("isRootObservation", _is_root),
    ("environment", _environments),
    ("fromStartTime", _start_time(">=")),
    ("toStartTime", _start_time("<")),
)
"""The filtering parameters besides ``filter``, read in this order."""


def parse_query(params: QueryParams) -> ObservationsQuery:
    """The request's parameters, or a 400 ``ApiError`` in Langfuse's shape."""
    issues: Problems = []
    groups = _parse_fields(params.get("fields"))
    limit = _parse_limit(params.get("limit"), issues)
    _check_parse_io(params.get("parseIoAsJson"), issues)
    simple = [condition for name, parse in _PARAMETERS for condition in parse(params, name, issues)]
    advanced = parse_filter(params.get("filter"), issues)
    if issues:
        raise invalid(issues)
    overridden = {condition.field for condition in advanced}
    conditions = advanced + [c for c in simple if c.field not in overridden]
    cursor = params.get("cursor")
    expand = params.get("expandMetadata")
    keys = [key.strip() for key in expand.split(",") if key.strip()] if expand else []
    return ObservationsQuery(
        groups=groups,
        limit=limit,
        conditions=conditions,
        after=decode_cursor(cursor) if cursor else None,
        expand_metadata=frozenset(keys) if keys else None,
        expand_all_metadata=bool({"true", "*"} & set(keys)),
    )


def _parse_fields(raw: str | None) -> tuple[str, ...]:
    """The requested groups. As on the server, unknown names are dropped, and a list
    of unknown names only leaves ``core`` (it is not the same as no list)."""
    if not raw:
        return DEFAULT_FIELD_GROUPS
    names = [part.strip() for part in raw.split(",")]
    return tuple(group for group in FIELD_GROUPS if group in names) or ("core",)


# ------------------------------------------------------------------ the filter parameter


def parse_filter(raw: str | None, issues: list[dict[str, Any]]) -> list[Condition]:
    """Conditions of the ``filter`` JSON parameter (the server's ``singleFilter``)."""
    if not raw:
        return []
    try:
        entries = json.loads(raw)
    except ValueError:
        raise bad_request("Invalid JSON in filter parameter") from None
    if not isinstance(entries, list):
        issues.append(
            issue(
                "invalid_type",
                ["filter"],
                f"Invalid input: expected array, received {js_type(entries)}",
                expected="array",
            )
        )
        return []
    checked = []
    for index, entry in enumerate(entries):
        problem = _check_filter(entry, ["filter", index])
        if problem is not None:
            issues.append(problem)
        else:
            checked.append(entry)
    if issues:
        return []
    # positionInTrace conditions are dropped, as the server's filter factory drops them.
    conditions = [_compile(entry) for entry in checked if entry["type"] != "positionInTrace"]
    io_filters = [e for e in checked if e.get("column") in ("input", "output")]
    if io_filters and not any(e["operator"] in ("=", "matches") for e in io_filters):
        raise bad_request(
            "Filters on input or output must include at least one '=' or 'matches' "
            "filter on input or output; 'contains', 'starts with', 'ends with' and "
            "'does not contain' cannot stand alone on these columns."
        )
    return conditions


ValueCheck = Callable[[Any, Any, list[Any]], dict[str, Any] | None]
"""Checks a filter's value, given its operator and the value's path: a zod issue or None."""


def _typed_value(expected: str, accepts: Callable[[Any], bool]) -> ValueCheck:
    def check(value: Any, _operator: Any, path: list[Any]) -> dict[str, Any] | None:
        return None if accepts(value) else _type_issue(path, expected, value)

    return check


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _texts(empty_refused: Callable[[Any], bool]) -> ValueCheck:
    """An array of strings; ``empty_refused(operator)``: whether it must not be empty."""

    def check(value: Any, operator: Any, path: list[Any]) -> dict[str, Any] | None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return _type_issue(path, "array", value)
        if not value and empty_refused(operator):
            return issue(
                "custom",
                path,
                "Value array must not be empty unless operator is 'all of' or 'none of' "
                "(which represent waiting for selection)",
            )
        return None

    return check


def _date_value(value: Any, _operator: Any, path: list[Any]) -> dict[str, Any] | None:
    if _filter_datetime(value) is None:
        return issue("invalid_type", path, "Invalid input: expected date")
    return None


def _null_value(value: Any, _operator: Any, path: list[Any]) -> dict[str, Any] | None:
    if value not in ("", None):
        return issue("invalid_value", path, 'Invalid input: expected ""')
    return None


def _any_value(_value: Any, _operator: Any, _path: list[Any]) -> dict[str, Any] | None:
    return None


_VALUE_CHECKS: dict[str, ValueCheck] = {
    "datetime": _date_value,
    "string": _typed_value("string", lambda value: isinstance(value, str)),
    "stringOptions": _texts(lambda _operator: True),
    "categoryOptions": _texts(lambda _operator: False),
    "arrayOptions": _texts(lambda operator: operator == "any of"),
    "number": _typed_value("number", _is_number),
    "stringObject": _typed_value("string", lambda value: isinstance(value, str)),
    "numberObject": _typed_value("number", _is_number),
    "boolean": _typed_value("boolean", lambda value: isinstance(value, bool)),
    "null": _null_value,
    "positionInTrace": _any_value,
}
"""The value each filter type takes (the types of ``OPERATORS``)."""

_KEYED = frozenset({"stringObject", "numberObject", "categoryOptions"})
"""Filter types that take a ``key`` too."""


def _check_filter(entry: Any, path: list[Any]) -> dict[str, Any] | None:
    """A zod issue for a malformed filter condition, else None."""
    if not isinstance(entry, dict):
        return issue(
            "invalid_type",
            path,
            f"Invalid input: expected object, received {js_type(entry)}",
            expected="object",
        )
    kind = entry.get("type")
    if kind not in OPERATORS:
        return issue(
            "invalid_union",
            [*path, "type"],
            "Invalid input: filter type must be one of " + ", ".join(OPERATORS),
            note="No matching discriminator",
            discriminator="type",
        )
    if not isinstance(entry.get("column"), str):
        return _type_issue([*path, "column"], "string", entry.get("column"))
    operator = entry.get("operator")
    if operator not in OPERATORS[kind]:
        return _option_issue_at([*path, "operator"], OPERATORS[kind])
    if kind in _KEYED and not isinstance(entry.get("key"), str):
        return _type_issue([*path, "key"], "string", entry.get("key"))
    return _VALUE_CHECKS[kind](entry.get("value"), operator, [*path, "value"])


def _type_issue(path: list[Any], expected: str, value: Any) -> dict[str, Any]:
    return issue(
        "invalid_type",
        path,
        f"Invalid input: expected {expected}, received {js_type(value)}",
        expected=expected,
    )


def _option_issue_at(path: list[Any], options: Sequence[str]) -> dict[str, Any]:
    listed = "|".join(f'"{option}"' for option in options)
    return issue(
        "invalid_value", path, f"Invalid option: expected one of {listed}", values=list(options)
    )


def _filter_datetime(value: Any) -> int | None:
    """``z.coerce.date()``: an ISO string (naive taken as UTC) or epoch milliseconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return otlp.parse_iso_ms(value)
    return None


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string_sql(sql: str, operator: str, value: str, *, case_sensitive: bool) -> Condition:
    if operator == "=":
        return Condition(sql, f"{sql} = ?", [value])
    if operator == "matches":
        if case_sensitive:
            return Condition(sql, f"instr({sql}, ?) > 0", [value])
        return Condition(sql, f"instr(lower({sql}), lower(?)) > 0", [value])
    pattern = {
        "contains": "%{}%",
        "does not contain": "%{}%",
        "starts with": "{}%",
        "ends with": "%{}",
    }[operator].format(_like(value))
    if operator == "does not contain":
        return Condition(sql, f"COALESCE({sql}, '') NOT LIKE ? ESCAPE '\\'", [pattern])
    return Condition(sql, f"{sql} LIKE ? ESCAPE '\\'", [pattern])


def _compile(entry: dict[str, Any]) -> Condition:
    """The SQL condition of a well-formed filter entry, or a 400 ``ApiError``."""
    name: str = entry["column"]
    kind: str = entry["type"]
    operator: str = entry["operator"]
    value: Any = entry.get("value")
    column = COLUMNS.get(name)
    if column is None:
        raise bad_request(f"Column {name} does not match a UI / CH table mapping.")
    if kind not in _FILTER_KINDS[column.kind]:
        raise bad_request(
            f"Invalid filter type '{kind}' for column '{name}'. "
            f"Expected filter type '{column.kind}'."
        )
    if operator == "matches" and name not in _MATCHES_COLUMNS:
        raise bad_request(
            "The 'matches' operator is only supported for input, output and metadata filters."
        )
    if kind == "null":
        return _null_condition(column, operator)
    if column.kind == _ARRAY:
        return _tags_condition(operator, value)
    if column.kind == _OBJECT:
        return _metadata_condition(kind, operator, entry["key"], value)
    return _COMPILERS[kind](column, operator, value)


def _null_condition(column: Column, operator: str) -> Condition:
    sql = column.sql
    if operator == "is null":
        empty = f" OR {sql} = ''" if column.empty_is_null else ""
        return Condition(sql, f"({sql} IS NULL{empty})", [])
    empty = f" AND {sql} <> ''" if column.empty_is_null else ""
    return Condition(sql, f"({sql} IS NOT NULL{empty})", [])


def _string_condition(column: Column, operator: str, value: Any) -> Condition:
    if column.empty_is_null and value == "" and operator == "=":
        return Condition(column.sql, f"{column.sql} IS NULL", [])
    return _string_sql(column.sql, operator, value, case_sensitive=False)


def _options_condition(column: Column, operator: str, value: Any) -> Condition:
    sql = column.sql
    marks = ", ".join("?" * len(value))
    if operator == "any of":
        return Condition(sql, f"{sql} IN ({marks})", list(value))
    if not value:
        return Condition(sql, "1", [])
    return Condition(sql, f"({sql} IS NULL OR {sql} NOT IN ({marks}))", list(value))


def _datetime_condition(column: Column, operator: str, value: Any) -> Condition:
    return Condition(column.sql, f"{column.sql} {operator} ?", [_filter_datetime(value)])


def _number_condition(column: Column, operator: str, value: Any) -> Condition:
    return Condition(column.sql, f"{column.sql} {operator} ?", [value])


def _boolean_condition(column: Column, operator: str, value: Any) -> Condition:
    comparison = "=" if operator == "=" else "<>"
    return Condition(column.sql, f"{column.sql} {comparison} ?", [int(bool(value))])


_COMPILERS: dict[str, Callable[[Column, str, Any], Condition]] = {
    "string": _string_condition,
    "stringOptions": _options_condition,
    "categoryOptions": _options_condition,
    "datetime": _datetime_condition,
    "number": _number_condition,
    "boolean": _boolean_condition,
}
"""The condition of a filter on a column of plain values, by filter type."""


def _tags_condition(operator: str, tags: list[str]) -> Condition:
    """A tag filter, as probes of ``observation_tags`` by (tag, seq)."""
    unique = list(dict.fromkeys(tags))
    marks = ", ".join("?" * len(unique))
    if not unique:  # "all of" / "none of" with nothing selected: no restriction
        return Condition("o.tags", "1", [])
    probe = f"SELECT 1 FROM observation_tags AS x WHERE x.tag IN ({marks}) AND x.seq = o.seq"
    if operator == "any of":
        drive = unique[0] if len(unique) == 1 else None
        return Condition("o.tags", f"EXISTS ({probe})", unique, drive_tag=drive)
    if operator == "none of":
        return Condition("o.tags", f"NOT EXISTS ({probe})", unique)
    count = (
        f"(SELECT COUNT(*) FROM observation_tags AS x WHERE x.tag IN ({marks}) AND x.seq = o.seq)"
    )
    return Condition("o.tags", f"{count} = ?", [*unique, len(unique)], drive_tag=unique[0])


def _metadata_condition(kind: str, operator: str, key: str, value: Any) -> Condition:
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    sql = "json_extract(o.metadata, '" + path.replace("'", "''") + "')"
    field_name = f"o.metadata.{key}"
    if kind == "stringObject":
        condition = _string_sql(sql, operator, str(value), case_sensitive=True)
        return Condition(field_name, condition.sql, condition.params)
    if kind == "numberObject":
        return Condition(field_name, f"CAST({sql} AS REAL) {operator} ?", [value])
    marks = ", ".join("?" * len(value))
    if operator == "any of":
        return Condition(field_name, f"{sql} IN ({marks})", list(value))
    return Condition(field_name, f"({sql} IS NULL OR {sql} NOT IN ({marks}))", list(value))


# ------------------------------------------------------------------ the query


def _select(groups: Iterable[str]) -> str:
    pairs = [
        f"'{key}', {sql}"
        for group in ("core", *[g for g in groups if g != "core"])
        for key, sql in _GROUP_FIELDS[group]
    ]
    return f"json_object({', '.join(pairs)})"


_INDEXED_EQUALITY = frozenset({"o.trace_id", "o.id"})


def run_query(store: Store, query: ObservationsQuery, *, project_id: str) -> bytes:
    """The JSON body of one page (``ObservationsV2Response``).

    With a tag every row must carry, the query walks that tag's rows of
    ``observation_tags`` newest first (index ``observation_tags_start``) and stops at
    the page size, however rare or common the tag; otherwise it walks
    ``observations_start``. Either way the page needs no sort.
    """
    with_metadata = "metadata" in query.groups
    columns = [_select(query.groups), "o.start_ms", "o.trace_id", "o.id"]
    if with_metadata:
        columns.append("o.metadata")
    drive = next((c.drive_tag for c in query.conditions if c.drive_tag is not None), None)
    if any(c.field in _INDEXED_EQUALITY and c.sql.endswith(" = ?") for c in query.conditions):
        drive = None  # one trace (or one id) is fewer rows than any tag
    key = "t" if drive is not None else "o"
    where: list[str] = []
    params: list[Any] = []
    if drive is not None:
        where.append("t.tag = ?")
        params.append(drive)
    for condition in query.conditions:
        sql = condition.sql
        if drive is not None and condition.field == "o.start_ms":
            sql = sql.replace("o.start_ms", "t.start_ms")  # range on the walked index
        where.append(sql)
        params.extend(condition.params)
    if query.after is not None:
        where.append(f"({key}.start_ms, {key}.id) < (?, ?)")
        params.extend(query.after)
    source = (
        "observation_tags AS t CROSS JOIN observations AS o ON o.seq = t.seq"
        if drive is not None
        else "observations AS o"
    )
    sql = (
        f"SELECT {', '.join(columns)} FROM {source}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {key}.start_ms DESC, {key}.id DESC LIMIT ?"
    )
    rows = store.query(sql, [project_id, *params, query.limit + 1])
    more = len(rows) > query.limit
    page = rows[: query.limit]
    if with_metadata:
        items = [_with_metadata(row[0], row[4], query) for row in page]
    else:
        items = [row[0] for row in page]
    meta = {}
    if more and page:
        last = page[-1]
        meta["cursor"] = encode_cursor(last[1], last[2], last[3])
    return ('{"data":[' + ",".join(items) + '],"meta":' + json.dumps(meta) + "}").encode()


def _with_metadata(rendered: str, stored: str, query: ObservationsQuery) -> str:
    metadata = json.loads(stored)
    if isinstance(metadata, dict) and not query.expand_all_metadata:
        expand = query.expand_metadata or frozenset()
        metadata = {
            key: value[:METADATA_VALUE_CHARS]
            if isinstance(value, str) and len(value) > METADATA_VALUE_CHARS and key not in expand
            else value
            for key, value in metadata.items()
        }
    return rendered[:-1] + ',"metadata":' + json.dumps(metadata, ensure_ascii=False) + "}"


@router.get("/api/public/v2/observations", dependencies=[Depends(require_project)])
def list_observations(request: Request) -> Response:
    """A page of observations, newest first."""
    query = parse_query(request.query_params)
    store: Store = request.app.state.store
    body = run_query(store, query, project_id=request.app.state.settings.project_id)
    return Response(body, media_type="application/json")
