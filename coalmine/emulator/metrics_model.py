"""What a metrics v2 query is made of: the views with their dimensions and measures,
the checked query, and its time buckets.

The views read the entities (dicts of one observation's or score's columns) that both
ways of computing a query see: `coalmine.emulator.metrics_python` computes over them,
`coalmine.emulator.metrics_sql` mirrors each dimension and measure as SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

Entity = dict[str, Any]

TIME_DIMENSION = "time_dimension"


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


def filter_dimension_name(view: View, column: str) -> str | None:
    """The dimension a filter on ``column`` tests."""
    if column in view.dimensions:
        return column
    if column.endswith("Name") and "name" in view.dimensions:
        return "name"  # Langfuse's fallback: scoreName, traceName -> name
    return None


def filter_dimension(view: View, column: str) -> Dimension | None:
    name = filter_dimension_name(view, column)
    return None if name is None else view.dimensions[name]


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


def next_bucket(ms: int, granularity: str) -> int:
    if granularity == "month":
        moment = _utc(ms)
        year, month = (
            (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        )
        return (moment.replace(year=year, month=month) - _utc(0)) // timedelta(milliseconds=1)
    step = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "week": 604_800_000}
    return ms + step[granularity]


def format_bucket(ms: int, granularity: str) -> str:
    if granularity in ("minute", "hour"):
        return _utc(ms).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _day(ms)


def _metric_key(measure: str, aggregation: str) -> str:
    return f"{aggregation}_{measure}"


def output_names(query: Query) -> list[str]:
    """Result keys of the metrics: ``count`` alone for a query without metrics."""
    return [_metric_key(m, a) for m, a in query.metrics] or ["count"]


def query_metrics(query: Query) -> list[tuple[str, str]]:
    """(measure, aggregation) pairs to compute: a count for a query without metrics."""
    return query.metrics or [("count", "count")]
