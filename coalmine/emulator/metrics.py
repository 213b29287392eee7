"""Metrics v2: ``GET /api/public/v2/metrics?query=<JSON>``.

Follows ``web/src/pages/api/public/v2/metrics.ts`` and the query engine in
``packages/shared/src/features/query`` (``dataModel.ts`` v2 views, ``queryBuilder.ts``,
``validateQuery.ts``). Instead of ClickHouse SQL, the common observation queries are
compiled to SQLite (`coalmine.emulator.metrics_sql`: filters, groups, counts, sums,
extremes), and the rest is computed in Python over the rows loaded from the store; both
paths give the same rows.

Views:

- ``observations``: one row per observation (the events table in Langfuse v4). Trace
  fields (``tags``, ``release``, ``traceName``...) are the ones sent on each span.
- ``scores-numeric`` (NUMERIC and BOOLEAN scores), ``scores-boolean`` and
  ``scores-categorical``. Trace dimensions (``tags``, ``traceName``, ``traceRelease``,
  ``traceVersion``, ``userId``) come from the trace's root observation (no parent), and
  observation dimensions (``observationName``, ``observationPromptName``...) from the
  observation a score names. Like Langfuse's INNER JOINs, a query that uses a trace
  (observation) dimension, in a grouping or a filter, keeps only the scores whose root
  (scored observation) started inside the query's window.

As in Langfuse:

- The window is ``fromTimestamp <= time <= toTimestamp`` (both ends inclusive) on the
  observation's start time or the score's timestamp; ``fromTimestamp < toTimestamp`` is
  required.
- ``tags`` is grouped as a whole array, not exploded: a span tagged ``["a", "b"]`` forms
  the group ``["a", "b"]``, not ``["a"]`` and ``["b"]``. Filter it with
  ``arrayOptions`` (``any of``, ``none of``, ``all of``).
- Result keys are ``{aggregation}_{measure}`` (``count_count``, ``p95_latency``) and
  ``time_dimension`` for the time bucket.
- Without ``orderBy`` rows come by time bucket, else by the first metric descending,
  else by the first dimension; time series without ``orderBy`` have their empty buckets
  filled (ClickHouse ``WITH FILL``). ``config.row_limit`` (default 100) cuts the rows.
- ``id``, ``traceId``, ``userId``, ``sessionId`` and other high-cardinality dimensions
  need ``config.row_limit`` and a descending ``orderBy`` on a metric, and no time
  dimension.
- Numbers are typed the way ClickHouse's JSON output types them: counts (``count``,
  ``uniq``) and ``sum``/``min``/``max`` of integer measures (latencies, tokens) are
  64-bit integers and come as strings (``"134"``); averages, percentiles, costs and
  score values are numbers. Aggregates over no values are null.

Differences, by design:

- Percentiles (``p50`` ... ``p99``) are exact: linear interpolation between the closest
  ranks (``(n - 1) * q``, "type 7"). Langfuse uses ClickHouse ``quantile()``, which
  interpolates the same way over a reservoir sample of up to 8192 values: identical up
  to 8192 values per group, approximate (and not deterministic) beyond.
- ``uniq`` counts exactly; ClickHouse ``uniq()`` is approximate above ~65k values.
- ``histogram`` splits [min, max] into ``config.bins`` (default 10) equal-width bins and
  answers ``[lower, upper, count]`` per non-empty bin; ClickHouse ``histogram()`` is an
  adaptive streaming histogram with bins of unequal width.
- ``categoryOptions`` filters need a ``key``, as Langfuse's schema says, and match the
  dimension's value against the listed values (Langfuse compiles them to
  ``hasAny(column, ['key:value'])``, which is meant for score-category arrays).
- Time buckets are written ``2026-10-01T10:00:00Z`` (minute, hour) and ``2026-10-01``
  (day, week from Monday, month from the 1st). Filled buckets carry ``"0"`` counts and
  nulls elsewhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request

from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import MISSING, bad_request, invalid, issue, js_type
from coalmine.emulator.scores import parse_json, parse_time_ms
from coalmine.emulator.store import Store

router = APIRouter()

Entity = dict[str, Any]

AGGREGATIONS = (
    "sum",
    "avg",
    "count",
    "max",
    "min",
    "p50",
    "p75",
    "p90",
    "p95",
    "p99",
    "histogram",
    "uniq",
)
QUANTILES = {"p50": 0.5, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99}
GRANULARITIES = ("auto", "minute", "hour", "day", "week", "month")
DEFAULT_ROW_LIMIT = 100
MAX_ROW_LIMIT = 1000
DEFAULT_BINS = 10
MAX_BINS = 100
TIME_DIMENSION = "time_dimension"

FILTER_OPERATORS: dict[str, tuple[str, ...]] = {
    "datetime": (">", "<", ">=", "<="),
    "string": ("=", "contains", "does not contain", "starts with", "ends with"),
    "stringOptions": ("any of", "none of"),
    "categoryOptions": ("any of", "none of"),
    "arrayOptions": ("any of", "none of", "all of"),
    "number": ("=", ">", "<", ">=", "<="),
    "stringObject": ("=", "contains", "does not contain", "starts with", "ends with"),
    "numberObject": ("=", ">", "<", ">=", "<="),
    "boolean": ("=", "<>"),
    "null": ("is null", "is not null"),
    "positionInTrace": ("=",),
}

# ---------------------------------------------------------------------------- views


@dataclass(frozen=True)
class Dimension:
    """A field to group or filter by."""

    get: Callable[[Entity], Any]
    kind: str = "string"  # string, number, boolean or array
    relation: str | None = None  # "trace" or "observation" (score views): needs a join
    high_cardinality: bool = False
    nullable: bool = True  # '' and NULL are one value (Langfuse's nullIf(column, ''))


@dataclass(frozen=True)
class Measure:
    """A per-row quantity to aggregate."""

    get: Callable[[Entity], Any]
    type: str  # integer, decimal, number (all aggregations) or string (count, uniq)
    relation: str | None = None  # "scores": only observations with scores


@dataclass(frozen=True)
class View:
    name: str
    dimensions: dict[str, Dimension]
    measures: dict[str, Measure]
    time_column: str  # the column a datetime filter names
    data_types: tuple[str, ...] = ()  # score views: the data types they hold


def _blank(value: Any) -> Any:
    """``nullIf(value, '')``."""
    return None if value in ("", None) else value


def _month(ms: int) -> str:
    return _utc(ms).strftime("%Y-%m")


def _day(ms: int) -> str:
    return _utc(ms).strftime("%Y-%m-%d")


def _utc(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def _diff_ms(start: int | None, end: int | None) -> int | None:
    return None if start is None or end is None else end - start


def _diff_seconds(start: int | None, end: int | None) -> int | None:
    """ClickHouse ``date_diff('second', start, end)``: whole-second boundaries crossed."""
    return None if start is None or end is None else end // 1000 - start // 1000


def _sum_keys(details: Mapping[str, Any], part: str) -> float:
    """Sum of the values whose key contains ``part`` (case-insensitive)."""
    return sum(
        float(v)
        for k, v in details.items()
        if part in k.lower() and isinstance(v, int | float) and not isinstance(v, bool)
    )


def _per_second(amount: float, seconds: int | None) -> float | None:
    return None if not seconds else amount / seconds


def _trace_name(e: Entity) -> Any:
    """``COALESCE(nullIf(trace_name, ''), if(root, nullIf(name, ''), NULL))``."""
    return _blank(e["trace_name"]) or (
        _blank(e["name"]) if not e["parent_observation_id"] else None
    )


def _total(details: Mapping[str, Any]) -> float:
    """``usage_details['total']``: 0 when absent, like a ClickHouse map lookup."""
    found = details.get("total", 0)
    return float(found) if isinstance(found, int | float) and not isinstance(found, bool) else 0.0


OBSERVATIONS = View(
    name="observations",
    time_column="start_time",
    dimensions={
        "id": Dimension(lambda e: e["id"], high_cardinality=True, nullable=False),
        "traceId": Dimension(lambda e: e["trace_id"], high_cardinality=True, nullable=False),
        "environment": Dimension(lambda e: _blank(e["environment"])),
        "parentObservationId": Dimension(
            lambda e: _blank(e["parent_observation_id"]), high_cardinality=True
        ),
        "type": Dimension(lambda e: e["type"] or "", nullable=False),
        "name": Dimension(lambda e: e["name"] or "", nullable=False),
        "level": Dimension(lambda e: e["level"] or "", nullable=False),
        "version": Dimension(lambda e: _blank(e["version"])),
        "userId": Dimension(lambda e: _blank(e["user_id"]), high_cardinality=True),
        "sessionId": Dimension(lambda e: _blank(e["session_id"]), high_cardinality=True),
        "tags": Dimension(lambda e: e["tags"], kind="array", nullable=False),
        "release": Dimension(lambda e: _blank(e["release"])),
        "traceName": Dimension(_trace_name),
        "traceRelease": Dimension(lambda e: _blank(e["release"])),
        "traceVersion": Dimension(lambda e: _blank(e["version"])),
        "providedModelName": Dimension(lambda e: _blank(e["model"])),
        "promptName": Dimension(lambda e: _blank(e["prompt_name"])),
        "promptVersion": Dimension(lambda e: e["prompt_version"], kind="number"),
        "isRootObservation": Dimension(
            lambda e: bool(e["is_root"]), kind="boolean", nullable=False
        ),
        "startTimeMonth": Dimension(lambda e: _month(e["start_ms"]), nullable=False),
    },
    measures={
        "count": Measure(lambda e: 1, "integer"),
        "traceId": Measure(lambda e: e["trace_id"], "string"),
        "uniqueUserIds": Measure(lambda e: _blank(e["user_id"]), "string"),
        "uniqueSessionIds": Measure(lambda e: _blank(e["session_id"]), "string"),
        "latency": Measure(lambda e: _diff_ms(e["start_ms"], e["end_ms"]), "integer"),
        "streamingLatency": Measure(
            lambda e: _diff_ms(e["completion_start_ms"], e["end_ms"]), "integer"
        ),
        "inputTokens": Measure(lambda e: int(_sum_keys(e["usage_details"], "input")), "integer"),
        "outputTokens": Measure(lambda e: int(_sum_keys(e["usage_details"], "output")), "integer"),
        "totalTokens": Measure(lambda e: int(_total(e["usage_details"])), "integer"),
        "outputTokensPerSecond": Measure(
            lambda e: _per_second(
                _sum_keys(e["usage_details"], "output"),
                _diff_seconds(e["completion_start_ms"], e["end_ms"]),
            ),
            "decimal",
        ),
        "tokensPerSecond": Measure(
            lambda e: _per_second(
                _total(e["usage_details"]), _diff_seconds(e["start_ms"], e["end_ms"])
            ),
            "decimal",
        ),
        "inputCost": Measure(lambda e: _sum_keys(e["cost_details"], "input"), "decimal"),
        "outputCost": Measure(lambda e: _sum_keys(e["cost_details"], "output"), "decimal"),
        "totalCost": Measure(lambda e: e["total_cost"], "decimal"),
        "timeToFirstToken": Measure(
            lambda e: _diff_ms(e["start_ms"], e["completion_start_ms"]), "integer"
        ),
        "countScores": Measure(lambda e: e["score_count"], "integer", relation="scores"),
    },
)


def _score_view(name: str, data_types: tuple[str, ...], value: dict[str, Dimension]) -> View:
    dimensions: dict[str, Dimension] = {
        "id": Dimension(lambda e: e["id"], high_cardinality=True, nullable=False),
        "environment": Dimension(lambda e: e["environment"] or "", nullable=False),
        "name": Dimension(lambda e: e["name"], nullable=False),
        "source": Dimension(lambda e: e["source"], nullable=False),
        "dataType": Dimension(lambda e: e["data_type"], nullable=False),
        "traceId": Dimension(lambda e: e["trace_id"], high_cardinality=True),
        "observationId": Dimension(lambda e: e["observation_id"], high_cardinality=True),
        "sessionId": Dimension(lambda e: e["session_id"], high_cardinality=True),
        "datasetRunId": Dimension(lambda e: _blank(e["dataset_run_id"]), high_cardinality=True),
        "configId": Dimension(lambda e: e["config_id"]),
        "timestampMonth": Dimension(lambda e: _month(e["timestamp_ms"]), nullable=False),
        "timestampDay": Dimension(lambda e: _day(e["timestamp_ms"]), nullable=False),
        "traceName": Dimension(
            lambda e: _blank(e["r_trace_name"]) or _blank(e["r_name"]), relation="trace"
        ),
        "userId": Dimension(
            lambda e: _blank(e["r_user_id"]), relation="trace", high_cardinality=True
        ),
        "tags": Dimension(lambda e: e["r_tags"], kind="array", relation="trace", nullable=False),
        "traceRelease": Dimension(lambda e: _blank(e["r_release"]), relation="trace"),
        "traceVersion": Dimension(lambda e: _blank(e["r_version"]), relation="trace"),
        "observationName": Dimension(
            lambda e: e["o_name"] or "", relation="observation", nullable=False
        ),
        "observationModelName": Dimension(lambda e: _blank(e["o_model"]), relation="observation"),
        "observationPromptName": Dimension(
            lambda e: _blank(e["o_prompt_name"]), relation="observation"
        ),
        "observationPromptVersion": Dimension(
            lambda e: e["o_prompt_version"], kind="number", relation="observation"
        ),
        **value,
    }
    measures = {"count": Measure(lambda e: 1, "integer")}
    if "CATEGORICAL" not in data_types:
        measures["value"] = Measure(lambda e: e["value"], "number")
    return View(name, dimensions, measures, "timestamp", data_types)


_VALUE = {"value": Dimension(lambda e: e["value"], kind="number")}
VIEWS: dict[str, View] = {
    "observations": OBSERVATIONS,
    "scores-numeric": _score_view("scores-numeric", ("NUMERIC", "BOOLEAN"), _VALUE),
    "scores-boolean": _score_view(
        "scores-boolean",
        ("BOOLEAN",),
        {
            **_VALUE,
            "booleanValue": Dimension(lambda e: e["value"] == 1, kind="boolean", nullable=False),
        },
    ),
    "scores-categorical": _score_view(
        "scores-categorical",
        ("CATEGORICAL",),
        {"stringValue": Dimension(lambda e: e["string_value"] or "", nullable=False)},
    ),
}

# -------------------------------------------------------------------------- loading

_OBSERVATION_COLUMNS = (
    "id, trace_id, parent_observation_id, type, name, start_ms, end_ms, "
    "completion_start_time, level, version, environment, user_id, session_id, is_root, "
    "tags, release, trace_name, prompt_name, prompt_version, model, usage_details, "
    "cost_details, total_cost, metadata"
)


def json_column(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _load_observations(store: Store, lo: int, hi: int, relations: set[str]) -> list[Entity]:
    rows = store.query(
        f"SELECT {_OBSERVATION_COLUMNS} FROM observations WHERE start_ms >= ? AND start_ms <= ? "
        "ORDER BY start_ms DESC, id DESC",  # index order; groups keep their first appearance
        (lo, hi),
    )
    counts: dict[str, int] = {}
    if "scores" in relations:
        counts = {
            row[0]: row[1]
            for row in store.query(
                "SELECT observation_id, COUNT(DISTINCT id) FROM scores "
                "WHERE observation_id IS NOT NULL AND timestamp_ms >= ? AND timestamp_ms <= ? "
                "GROUP BY observation_id",
                (lo, hi),
            )
        }
    entities = []
    for row in rows:
        e = dict(row)
        if "scores" in relations:
            if e["id"] not in counts:
                continue  # INNER JOIN scores
            e["score_count"] = counts[e["id"]]
        e["tags"] = json_column(e["tags"], [])
        e["usage_details"] = json_column(e["usage_details"], {})
        e["cost_details"] = json_column(e["cost_details"], {})
        e["metadata"] = json_column(e["metadata"], {})
        completion = e.pop("completion_start_time")
        e["completion_start_ms"] = parse_time_ms(completion) if completion else None
        entities.append(e)
    return entities


_SCORES_SQL = """
SELECT s.*,
       r.seq AS r_seq, r.name AS r_name, r.trace_name AS r_trace_name, r.tags AS r_tags,
       r.release AS r_release, r.version AS r_version, r.user_id AS r_user_id,
       o.seq AS o_seq, o.name AS o_name, o.model AS o_model,
       o.prompt_name AS o_prompt_name, o.prompt_version AS o_prompt_version
FROM scores s
LEFT JOIN observations r
       ON r.trace_id = s.trace_id
      AND (r.parent_observation_id IS NULL OR r.parent_observation_id = '')
      AND r.start_ms >= :lo AND r.start_ms <= :hi
LEFT JOIN observations o
       ON o.id = s.observation_id AND o.trace_id = s.trace_id
      AND o.start_ms >= :lo AND o.start_ms <= :hi
WHERE s.timestamp_ms >= :lo AND s.timestamp_ms <= :hi AND s.data_type IN ({types})
ORDER BY s.seq, r.seq
"""


def _load_scores(store: Store, view: View, lo: int, hi: int, relations: set[str]) -> list[Entity]:
    types = ", ".join(f"'{t}'" for t in view.data_types)
    rows = store.query(_SCORES_SQL.format(types=types), {"lo": lo, "hi": hi})
    entities: dict[str, Entity] = {}
    for row in rows:
        if row["id"] in entities:
            continue  # one row per score, like Langfuse's per-id inner query
        if "trace" in relations and row["r_seq"] is None:
            continue
        if "observation" in relations and row["o_seq"] is None:
            continue
        e = dict(row)
        e["r_tags"] = json_column(e["r_tags"], [])
        e["metadata"] = json_column(e["metadata"], {})
        entities[e["id"]] = e
    return list(entities.values())


# ------------------------------------------------------------------------ the query


@dataclass
class Query:
    """A checked metrics query."""

    view: View
    dimensions: list[str]
    metrics: list[tuple[str, str]]  # (measure, aggregation)
    filters: list[dict[str, Any]]
    granularity: str | None
    from_ms: int
    to_ms: int
    order_by: list[tuple[str, str]] | None
    row_limit: int
    row_limit_given: bool
    bins: int
    relations: set[str] = field(default_factory=set)


def _kind(value: Any) -> str:
    """zod's type name, for values read with ``dict.get``: None means absent."""
    return js_type(MISSING if value is None else value)


def _expect(problems: list[dict[str, Any]], path: list[str | int], value: Any, kind: str) -> bool:
    if _kind(value) == kind and not (kind == "number" and not math.isfinite(value)):
        return True
    problems.append(
        issue(
            "invalid_type",
            path,
            f"Invalid input: expected {kind}, received {_kind(value)}",
            expected=kind,
        )
    )
    return False


def _options(
    problems: list[dict[str, Any]], path: list[str | int], value: Any, options: Sequence[str]
) -> bool:
    if value in options:
        return True
    problems.append(
        issue(
            "invalid_value",
            path,
            "Invalid option: expected one of " + "|".join(f'"{o}"' for o in options),
            values=list(options),
        )
    )
    return False


def _check_filter(problems: list[dict[str, Any]], path: list[str | int], raw: Any) -> None:
    if not _expect(problems, path, raw, "object"):
        return
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in FILTER_OPERATORS:
        problems.append(
            issue(
                "invalid_union",
                [*path, "type"],
                "Invalid input: filter type must be one of " + ", ".join(FILTER_OPERATORS),
                note="No matching discriminator",
            )
        )
        return
    _expect(problems, [*path, "column"], raw.get("column"), "string")
    _options(problems, [*path, "operator"], raw.get("operator"), FILTER_OPERATORS[kind])
    value = raw.get("value")
    if kind in ("stringObject", "numberObject", "categoryOptions"):
        _expect(problems, [*path, "key"], raw.get("key"), "string")
    if kind == "datetime":
        if not (isinstance(value, str) and parse_time_ms(value) is not None):
            problems.append(issue("invalid_type", [*path, "value"], "Invalid input: expected date"))
    elif kind in ("string", "stringObject"):
        _expect(problems, [*path, "value"], value, "string")
    elif kind in ("number", "numberObject"):
        _expect(problems, [*path, "value"], value, "number")
    elif kind == "boolean":
        _expect(problems, [*path, "value"], value, "boolean")
    elif kind == "null":
        if value != "":
            problems.append(issue("invalid_value", [*path, "value"], 'Invalid input: expected ""'))
    elif kind in ("stringOptions", "categoryOptions", "arrayOptions") and _expect(
        problems, [*path, "value"], value, "array"
    ):
        for index, item in enumerate(value):
            _expect(problems, [*path, "value", index], item, "string")
        if not value and (
            kind == "stringOptions" or (kind == "arrayOptions" and raw.get("operator") == "any of")
        ):
            problems.append(issue("custom", [*path, "value"], "Value array must not be empty"))


def parse_query(raw: Any) -> Query:
    """Check a query object as ``MetricsQueryObject`` (zod) does, then as the query
    builder does. Raises the 400 ``ApiError`` Langfuse answers."""
    problems: list[dict[str, Any]] = []
    base: list[str | int] = ["query"]
    if not _expect(problems, base, raw, "object"):
        raise invalid(problems)

    view_name = raw.get("view")
    _options(problems, [*base, "view"], view_name, tuple(VIEWS))

    dimensions: list[str] = []
    raw_dims = raw.get("dimensions")
    if raw_dims is not None and _expect(problems, [*base, "dimensions"], raw_dims, "array"):
        for index, item in enumerate(raw_dims):
            path: list[str | int] = [*base, "dimensions", index]
            if _expect(problems, path, item, "object") and _expect(
                problems, [*path, "field"], item.get("field"), "string"
            ):
                dimensions.append(item["field"])

    metrics: list[tuple[str, str]] = []
    raw_metrics = raw.get("metrics")
    if _expect(problems, [*base, "metrics"], raw_metrics, "array"):
        for index, item in enumerate(raw_metrics):
            path = [*base, "metrics", index]
            if not _expect(problems, path, item, "object"):
                continue
            ok = _expect(problems, [*path, "measure"], item.get("measure"), "string")
            ok &= _options(problems, [*path, "aggregation"], item.get("aggregation"), AGGREGATIONS)
            if ok:
                metrics.append((item["measure"], item["aggregation"]))

    filters: list[dict[str, Any]] = []
    raw_filters = raw.get("filters")
    if raw_filters is not None and _expect(problems, [*base, "filters"], raw_filters, "array"):
        for index, item in enumerate(raw_filters):
            before = len(problems)
            _check_filter(problems, [*base, "filters", index], item)
            if len(problems) == before:
                filters.append(item)

    granularity: str | None = None
    raw_time = raw.get("timeDimension")
    if raw_time is not None and _expect(problems, [*base, "timeDimension"], raw_time, "object"):
        path = [*base, "timeDimension", "granularity"]
        if _options(problems, path, raw_time.get("granularity"), GRANULARITIES):
            granularity = raw_time["granularity"]

    times: dict[str, int] = {}
    for key in ("fromTimestamp", "toTimestamp"):
        value = raw.get(key)
        if _expect(problems, [*base, key], value, "string"):
            parsed = parse_time_ms(value, strict=True)
            if parsed is None:
                problems.append(
                    issue("invalid_format", [*base, key], "Invalid ISO datetime", format="datetime")
                )
            else:
                times[key] = parsed

    order_by: list[tuple[str, str]] | None = None
    raw_order = raw.get("orderBy")
    if raw_order is not None and _expect(problems, [*base, "orderBy"], raw_order, "array"):
        order_by = []
        for index, item in enumerate(raw_order):
            path = [*base, "orderBy", index]
            if not _expect(problems, path, item, "object"):
                continue
            ok = _expect(problems, [*path, "field"], item.get("field"), "string")
            ok &= _options(problems, [*path, "direction"], item.get("direction"), ("asc", "desc"))
            if ok:
                order_by.append((item["field"], item["direction"]))

    row_limit, bins, row_limit_given = DEFAULT_ROW_LIMIT, DEFAULT_BINS, False
    config = raw.get("config")
    if config is not None and _expect(problems, [*base, "config"], config, "object"):
        for key, top in (("bins", MAX_BINS), ("row_limit", MAX_ROW_LIMIT)):
            if config.get(key) is None:
                continue
            value = config[key]
            path = [*base, "config", key]
            if not _expect(problems, path, value, "number"):
                continue
            if value != int(value):
                problems.append(
                    issue("invalid_type", path, "Invalid input: expected int, received number")
                )
            elif value < 1:
                problems.append(issue("too_small", path, "Too small: expected number to be >=1"))
            elif value > top:
                problems.append(issue("too_big", path, f"Too big: expected number to be <={top}"))
            elif key == "bins":
                bins = int(value)
            else:
                row_limit, row_limit_given = int(value), True

    if not problems and times["fromTimestamp"] >= times["toTimestamp"]:
        problems.append(issue("custom", base, "fromTimestamp must be before toTimestamp"))
    if problems:
        raise invalid(problems)

    query = Query(
        view=VIEWS[view_name],
        dimensions=dimensions,
        metrics=metrics,
        filters=filters,
        granularity=granularity,
        from_ms=times["fromTimestamp"],
        to_ms=times["toTimestamp"],
        order_by=order_by,
        row_limit=row_limit,
        row_limit_given=row_limit_given,
        bins=bins,
    )
    _check_high_cardinality(query)
    _check_fields(query)
    return query


def _check_high_cardinality(query: Query) -> None:
    """``validateQuery``: high-cardinality dimensions only in bounded top-N queries."""
    view = query.view
    high = [
        d for d in query.dimensions if d in view.dimensions and view.dimensions[d].high_cardinality
    ]
    if not high:
        return
    names = ", ".join(high)
    if query.granularity is not None:
        raise bad_request(
            f"High cardinality dimension(s) '{names}' cannot be used with timeDimension. "
            "Time series queries with high cardinality dimensions produce unbounded result "
            "sets."
        )
    desc = [f for f, direction in query.order_by or [] if direction == "desc"]
    if not query.row_limit_given or not desc:
        raise bad_request(
            f"High cardinality dimension(s) '{names}' require both 'config.row_limit' and "
            "'orderBy' with direction 'desc' on a measure field."
        )
    measures = [m for m, _ in query.metrics]
    wrong = [f for f in desc if not any(f == m or f.endswith(f"_{m}") for m in measures)]
    if wrong:
        raise bad_request(
            f"High cardinality dimension(s) '{names}' require 'orderBy' with direction "
            f"'desc' on a measure field. '{', '.join(wrong)}' "
            f"{'is' if len(wrong) == 1 else 'are'} not a measure in this query."
        )


def _check_fields(query: Query) -> None:
    """The query builder's checks of dimensions, metrics, filters and orderBy."""
    view = query.view
    for name in query.dimensions:
        if name not in view.dimensions:
            raise bad_request(
                f"Invalid dimension {name}. Must be one of {','.join(view.dimensions)}"
            )
        query.relations.add(view.dimensions[name].relation or "")
    for measure, aggregation in query.metrics:
        if measure not in view.measures:
            raise bad_request(f"Invalid metric {measure}. Must be one of {','.join(view.measures)}")
        spec = view.measures[measure]
        valid = AGGREGATIONS if spec.type in ("integer", "decimal", "number") else ("count", "uniq")
        if aggregation not in valid:
            raise bad_request(
                f'Aggregation "{aggregation}" is not valid for measure "{measure}" '
                f"(type: {spec.type}). Valid aggregations: {', '.join(valid)}"
            )
        query.relations.add(spec.relation or "")
    for raw in query.filters:
        column = raw["column"]
        dimension = _filter_dimension(view, column)
        if dimension is not None:
            query.relations.add(dimension.relation or "")
            if dimension.kind == "array" and raw["type"] not in ("arrayOptions", "null"):
                if raw["type"] == "string":
                    raise bad_request(
                        f"Invalid filter for field '{column}': Array fields require type "
                        "'arrayOptions', not 'string'. Use operators like 'any of', 'all of', "
                        "or 'none of' with an array of values."
                    )
                raise bad_request(
                    f"Invalid filter for field '{column}': Array fields require type "
                    f"'arrayOptions', not '{raw['type']}'."
                )
            if dimension.kind != "array" and raw["type"] == "arrayOptions":
                raise bad_request(
                    f"Invalid filter for field '{column}': 'arrayOptions' filters apply to "
                    "array fields (tags)."
                )
            if raw["type"] in ("datetime", "stringObject", "numberObject", "positionInTrace"):
                raise bad_request(
                    f"Invalid filter for field '{column}': type '{raw['type']}' does not "
                    "apply to it."
                )
        elif column == view.time_column:
            if raw["type"] != "datetime":
                raise bad_request(f"Invalid filter for field '{column}': use type 'datetime'.")
        elif column == "metadata":
            if raw["type"] not in ("stringObject", "numberObject"):
                raise bad_request(
                    "Invalid filter for field 'metadata': Metadata filters require type "
                    f"'stringObject' with a 'key' property, not '{raw['type']}'. "
                    'Example: {"column": "metadata", "type": "stringObject", "key": '
                    '"environment", "operator": "=", "value": "production"}'
                )
        else:
            raise bad_request(
                f"Invalid filter column {column}. Must be one of {','.join(view.dimensions)} "
                f"or {view.time_column}"
            )
    query.relations.discard("")
    allowed = [TIME_DIMENSION] if query.granularity else []
    for field_name, _ in query.order_by or []:
        if field_name in allowed or field_name in query.dimensions:
            continue
        prefix, _, measure = field_name.partition("_")
        if prefix in AGGREGATIONS and prefix != "histogram" and (measure, prefix) in query.metrics:
            continue
        raise bad_request(
            f"Invalid orderBy field: {field_name}. Must be one of the dimension or metric fields."
        )


def filter_dimension_name(view: View, column: str) -> str | None:
    """The dimension a filter on ``column`` tests."""
    if column in view.dimensions:
        return column
    if column.endswith("Name") and "name" in view.dimensions:
        return "name"  # Langfuse's fallback: scoreName, traceName -> name
    return None


def _filter_dimension(view: View, column: str) -> Dimension | None:
    name = filter_dimension_name(view, column)
    return None if name is None else view.dimensions[name]


# ----------------------------------------------------------------------- filtering


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool | list | dict):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _compare(left: float, operator: str, right: float) -> bool:
    return {
        "=": left == right,
        "<>": left != right,
        ">": left > right,
        "<": left < right,
        ">=": left >= right,
        "<=": left <= right,
    }[operator]


def _string_match(text: str, operator: str, value: str, *, nullable: bool) -> bool:
    if nullable and value == "" and operator != "does not contain":
        return text == ""
    if operator == "=":
        return text == value
    if operator == "contains":
        return value in text
    if operator == "does not contain":
        return value not in text and (not nullable or text != "")
    if operator == "starts with":
        return text.startswith(value)
    return text.endswith(value)


def predicate(view: View, raw: dict[str, Any]) -> Callable[[Entity], bool]:
    kind, operator, value, column = raw["type"], raw["operator"], raw["value"], raw["column"]
    if column == view.time_column and kind == "datetime":
        bound = parse_time_ms(value)
        assert bound is not None
        key = "start_ms" if view is OBSERVATIONS else "timestamp_ms"
        return lambda e: _compare(e[key], operator, bound)
    if column == "metadata" and column not in view.dimensions:
        meta_key = raw["key"]

        def meta(e: Entity) -> bool:
            metadata = e["metadata"] if isinstance(e["metadata"], dict) else {}
            if meta_key not in metadata:
                return False
            found = metadata[meta_key]
            if kind == "numberObject":
                number = _number(found)
                return number is not None and _compare(number, operator, value)
            text = found if isinstance(found, str) else json.dumps(found)
            return _string_match(text, operator, value, nullable=False)

        return meta
    dimension = _filter_dimension(view, column)
    assert dimension is not None
    get, nullable = dimension.get, dimension.nullable
    if kind == "arrayOptions":
        wanted = set(value)
        if operator == "any of":
            return lambda e: bool(wanted & set(get(e) or []))
        if operator == "none of":
            return lambda e: not wanted & set(get(e) or [])
        return lambda e: wanted <= set(get(e) or [])
    if kind == "null":

        def is_null(e: Entity) -> bool:
            found = get(e)
            return found is None or (nullable and found == "")

        return is_null if operator == "is null" else (lambda e: not is_null(e))
    if kind == "boolean":
        return lambda e: get(e) is not None and (bool(get(e)) == value) == (operator == "=")
    if kind == "number":

        def number_match(e: Entity) -> bool:
            number = _number(get(e))
            return number is not None and _compare(number, operator, value)

        return number_match
    if kind in ("stringOptions", "categoryOptions"):
        options = set(value)
        if operator == "any of":
            return lambda e: _text(get(e)) in options
        return lambda e: _text(get(e)) not in options and not (nullable and _text(get(e)) == "")
    return lambda e: _string_match(_text(get(e)), operator, value, nullable=nullable)


# ---------------------------------------------------------------------- aggregating


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks ("type 7"), as ClickHouse
    ``quantile()`` computes it over its sample (all values, up to 8192)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def histogram(values: Sequence[float], bins: int) -> list[list[float]]:
    """``[lower, upper, count]`` of equal-width bins over [min, max], empty bins left out."""
    if not values:
        return []
    low, high = min(values), max(values)
    if low == high:
        return [[low, high, float(len(values))]]
    width = (high - low) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / width), bins - 1)] += 1
    return [
        [low + i * width, high if i == bins - 1 else low + (i + 1) * width, float(n)]
        for i, n in enumerate(counts)
        if n
    ]


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def aggregate(aggregation: str, values: Sequence[Any], measure_type: str, bins: int) -> Any:
    """One aggregate, as a raw (sortable) value: counts as int, integer sums as int."""
    present = [v for v in values if v is not None]
    if aggregation == "count":
        return len(present)
    if aggregation == "uniq":
        return len(set(present))
    numbers = [float(v) for v in present]
    if aggregation == "histogram":
        return histogram(numbers, bins)
    if not numbers:
        return None
    integer = measure_type == "integer"
    if aggregation == "sum":
        return int(sum(numbers)) if integer else finite(math.fsum(numbers))
    if aggregation in ("min", "max"):
        found = min(numbers) if aggregation == "min" else max(numbers)
        return int(found) if integer else found
    if aggregation == "avg":
        return finite(math.fsum(numbers) / len(numbers))
    return finite(quantile(numbers, QUANTILES[aggregation]))


def _is_64bit_integer(aggregation: str, measure_type: str) -> bool:
    """ClickHouse types the aggregate UInt64/Int64, which its JSON quotes."""
    return aggregation in ("count", "uniq") or (
        measure_type == "integer" and aggregation in ("sum", "min", "max")
    )


# --------------------------------------------------------------------- time buckets


def granularity_of(query: Query) -> str | None:
    if query.granularity != "auto":
        return query.granularity
    hours = (query.to_ms - query.from_ms) / 3_600_000
    if hours < 2:
        return "minute"
    if hours < 72:
        return "hour"
    if hours < 1440:
        return "day"
    if hours < 8760:
        return "week"
    return "month"


def bucket_start(ms: int, granularity: str) -> int:
    """Epoch ms of the start of the bucket holding ``ms`` (UTC)."""
    moment = _utc(ms)
    if granularity == "minute":
        moment = moment.replace(second=0, microsecond=0)
    elif granularity == "hour":
        moment = moment.replace(minute=0, second=0, microsecond=0)
    else:
        moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if granularity == "week":
            moment -= timedelta(days=moment.weekday())
        elif granularity == "month":
            moment = moment.replace(day=1)
    return (moment - _utc(0)) // timedelta(milliseconds=1)


def _next_bucket(ms: int, granularity: str) -> int:
    if granularity == "month":
        moment = _utc(ms)
        year, month = (
            (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        )
        return (moment.replace(year=year, month=month) - _utc(0)) // timedelta(milliseconds=1)
    step = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "week": 604_800_000}
    return ms + step[granularity]


def _format_bucket(ms: int, granularity: str) -> str:
    if granularity in ("minute", "hour"):
        return _utc(ms).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _day(ms)


# ------------------------------------------------------------------------ execution


def _metric_key(measure: str, aggregation: str) -> str:
    return f"{aggregation}_{measure}"


def group_key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _order(rows: list[dict[str, Any]], order: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Sort like ClickHouse ``ORDER BY``: NULLs last in either direction, stable."""
    for field_name, direction in reversed(order):
        present = [r for r in rows if r.get(field_name) is not None]
        missing = [r for r in rows if r.get(field_name) is None]
        present.sort(key=lambda r: r[field_name], reverse=direction == "desc")
        rows = present + missing
    return rows


def run_query(store: Store, query: Query, *, sql: bool = True) -> list[dict[str, Any]]:
    """The rows of ``{"data": rows}``.

    Aggregates in SQL where `metrics_sql` can express the query (``sql=True``), in
    Python over the loaded rows otherwise; both give the same rows.
    """
    rows = None
    if sql:
        from coalmine.emulator import metrics_sql  # noqa: PLC0415 (it imports this module)

        rows = metrics_sql.grouped_rows(store, query)
    if rows is None:
        rows = _grouped_rows(store, query)
    return _finish(query, rows)


def output_names(query: Query) -> list[str]:
    """Result keys of the metrics: ``count`` alone for a query without metrics."""
    return [_metric_key(m, a) for m, a in query.metrics] or ["count"]


def query_metrics(query: Query) -> list[tuple[str, str]]:
    """(measure, aggregation) pairs to compute: a count for a query without metrics."""
    return query.metrics or [("count", "count")]


def _grouped_rows(store: Store, query: Query) -> list[dict[str, Any]]:
    """One row per group, with raw aggregates, in order of each group's first row
    (newest first): loaded, filtered and aggregated in Python."""
    view = query.view
    if view is OBSERVATIONS:
        entities = _load_observations(store, query.from_ms, query.to_ms, query.relations)
        time_key = "start_ms"
    else:
        entities = _load_scores(store, view, query.from_ms, query.to_ms, query.relations)
        time_key = "timestamp_ms"
    predicates = [predicate(view, raw) for raw in query.filters]
    entities = [e for e in entities if all(p(e) for p in predicates)]

    granularity = granularity_of(query)
    metrics = query_metrics(query)
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in entities:
        dims = [view.dimensions[d].get(e) for d in query.dimensions]
        bucket = bucket_start(e[time_key], granularity) if granularity else None
        key = (*(group_key(d) for d in dims), bucket)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"dims": dims, "bucket": bucket, "values": [[] for _ in metrics]}
        for index, (measure, _) in enumerate(metrics):
            group["values"][index].append(view.measures[measure].get(e))
    if not groups and not query.dimensions and not granularity:
        groups[()] = {"dims": [], "bucket": None, "values": [[] for _ in metrics]}

    names = output_names(query)
    rows: list[dict[str, Any]] = []
    for group in groups.values():
        row: dict[str, Any] = dict(zip(query.dimensions, group["dims"], strict=True))
        if granularity:
            row[TIME_DIMENSION] = group["bucket"]
        for name, (measure, aggregation), values in zip(
            names, metrics, group["values"], strict=True
        ):
            spec = view.measures[measure]
            row[name] = aggregate(aggregation, values, spec.type, query.bins)
        rows.append(row)
    return rows


def _finish(query: Query, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order, fill, cut and type the grouped rows as Langfuse answers them."""
    view = query.view
    granularity = granularity_of(query)
    metrics = query_metrics(query)
    names = output_names(query)
    order = query.order_by
    if not order:
        if granularity:
            order = [(TIME_DIMENSION, "asc")]
        elif query.metrics:
            order = [(names[0], "desc")]
        elif query.dimensions:
            order = [(query.dimensions[0], "asc")]
        else:
            order = []
    rows = _order(rows, order)
    if granularity and not query.order_by:
        rows = _fill(rows, query, granularity, names, metrics)
    rows = rows[: query.row_limit]

    for row in rows:
        if granularity:
            row[TIME_DIMENSION] = _format_bucket(row[TIME_DIMENSION], granularity)
        for name, (measure, aggregation) in zip(names, metrics, strict=True):
            spec = view.measures[measure]
            if row[name] is not None and _is_64bit_integer(aggregation, spec.type):
                row[name] = str(row[name])
    return rows


def _fill(
    rows: list[dict[str, Any]],
    query: Query,
    granularity: str,
    names: list[str],
    metrics: list[tuple[str, str]],
) -> list[dict[str, Any]]:
    """ClickHouse ``WITH FILL FROM bucket(from) TO bucket(to)``: a row for each empty
    bucket in between (the end bucket excluded), in time order."""
    present = {row[TIME_DIMENSION] for row in rows}
    end = bucket_start(query.to_ms, granularity)
    cursor = bucket_start(query.from_ms, granularity)
    filled: list[dict[str, Any]] = []
    while cursor < end:
        if cursor not in present:
            row: dict[str, Any] = dict.fromkeys(query.dimensions)
            row[TIME_DIMENSION] = cursor
            for name, (_, aggregation) in zip(names, metrics, strict=True):
                row[name] = 0 if aggregation in ("count", "uniq") else None
                if aggregation == "histogram":
                    row[name] = []
            filled.append(row)
        cursor = _next_bucket(cursor, granularity)
    return _order(rows + filled, [(TIME_DIMENSION, "asc")])


@router.get("/api/public/v2/metrics", dependencies=[Depends(require_project)])
def metrics(request: Request) -> dict[str, Any]:
    """Aggregates over observations or scores, grouped by dimensions and time."""
    texts = request.query_params.getlist("query")
    if len(texts) != 1:
        expected = "received undefined" if not texts else "received array"
        raise invalid(
            [issue("invalid_type", ["query"], f"Invalid input: expected string, {expected}")]
        )
    try:
        raw = parse_json(texts[0])
    except ValueError:
        raise bad_request("Invalid JSON in query parameter") from None
    query = parse_query(raw)
    store: Store = request.app.state.store
    return {"data": run_query(store, query)}
