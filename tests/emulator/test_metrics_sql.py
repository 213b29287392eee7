"""Metrics v2 computed in SQL (``metrics_sql``) and in Python (``metrics``) give the
same rows: a table of queries and generated ones, run through both paths on one store
whose rows cover blanks, NULLs, tag lists, ties and window edges."""

from __future__ import annotations

import functools
import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from coalmine.emulator import metrics_sql
from coalmine.emulator.errors import ApiError
from coalmine.emulator.metrics import parse_query, run_query
from coalmine.emulator.store import Store

WINDOW = {"fromTimestamp": "2026-09-21T13:00:00Z", "toTimestamp": "2026-09-21T17:00:00Z"}
START = 1_789_995_600_000  # fromTimestamp
END = 1_790_010_000_000  # toTimestamp

TAG_LISTS = [[], ["a"], ["b"], ["a", "b"], ["b", "a"], ["a", "a"], ["c", "a"], ["Ünï", "b"]]


def _row(rng: random.Random, index: int, trace: str, parent: str | None) -> dict[str, Any]:
    # Starts on a coarse grid so that groups often share their newest start time, and a
    # few at or just past the window's ends.
    start = rng.choice(
        [START - 1, START, END, END + 1]
        if index % 17 == 0
        else [START + 60_000 * rng.randrange(0, 235)]
    )
    end = None if rng.random() < 0.1 else start + rng.choice([0, 1, 5, 100, 250, 1_000, 4_321])
    cost = rng.choice([None, None, 0.1, 0.2, 0.3, 1e-7, 1e15, 2.5, rng.random() / 1000])
    return {
        "id": f"{index:04x}{rng.randrange(16**4):04x}",
        "trace_id": trace,
        "parent_observation_id": parent,
        "type": rng.choice(["SPAN", "GENERATION", "EVENT"]),
        "name": rng.choice(["chat", "llm", "", None]),
        "start_time": "2026-09-21T13:33:20.000Z",
        "start_ms": start,
        "end_ms": end,
        "level": rng.choice(["DEFAULT", "DEFAULT", "ERROR", "WARNING", "DEBUG"]),
        "version": rng.choice([None, "", "1.0"]),
        "environment": rng.choice(["default", "production", ""]),
        "user_id": rng.choice([None, "", "u1", "u2", "u3"]),
        "session_id": rng.choice([None, "", "s1", "s2"]),
        "is_root": 1 if parent in (None, "") else 0,
        "tags": json.dumps(rng.choice(TAG_LISTS)),
        "release": rng.choice([None, "", "v1", "v2"]),
        "trace_name": rng.choice([None, "", "support"]),
        "prompt_name": rng.choice([None, "", "answer", "summary"]),
        "prompt_version": rng.choice([None, 1, 2, 3]),
        "model": rng.choice([None, "", "gpt-x"]),
        "total_cost": cost,
        "created_at": "2026-09-21T13:33:20.000Z",
        "updated_at": "2026-09-21T13:33:20.000Z",
    }


def _insert(store: Store, rows: list[dict[str, Any]], table: str = "observations") -> None:
    with store.transaction() as db:
        for row in rows:
            db.execute(
                f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )


def _score(
    rng: random.Random, index: int, trace: str | None, observation: str | None
) -> dict[str, Any]:
    data_type = rng.choice(["NUMERIC", "NUMERIC", "BOOLEAN", "CATEGORICAL"])
    value: float | None = rng.choice([0.25, 0.5, 0.1, 0.7, 1.0, 3.0, 1e15, rng.random()])
    string_value = None
    if data_type == "BOOLEAN":
        value = rng.choice([0.0, 1.0, 1.0, 0.0, None])
        string_value = "True" if value else "False"
    elif data_type == "CATEGORICAL":
        value, string_value = None, rng.choice(["calm", "harsh", ""])
    elif rng.random() < 0.05:
        value = None
    stamp = rng.choice(
        [START - 1, START, END, END + 1]
        if index % 13 == 0
        else [START + 61_000 * rng.randrange(0, 235)]
    )
    return {
        "id": f"score-{index}",
        "name": rng.choice(["helpfulness", "accuracy", "thumbs", "tone"]),
        "value": value,
        "string_value": string_value,
        "data_type": data_type,
        "source": rng.choice(["API", "ANNOTATION"]),
        "trace_id": trace,
        "observation_id": observation,
        "session_id": rng.choice([None, "s1", ""]),
        "dataset_run_id": rng.choice([None, "", "run-1", "run-2"]),
        "config_id": rng.choice([None, "c1"]),
        "environment": rng.choice(["default", "production", ""]),
        "timestamp": "2026-09-21T13:33:20.000Z",
        "timestamp_ms": stamp,
        "created_at": "2026-09-21T13:33:20.000Z",
        "updated_at": "2026-09-21T13:33:20.000Z",
    }


@functools.cache
def dataset() -> Store:
    """About 600 observations in 200 traces: roots (NULL or '' parent, a second root in
    some traces) and children; and about 400 scores of those traces (on the trace, on one
    of its observations or on another trace's), of traces never seen, or of no trace."""
    rng = random.Random(7)
    rows: list[dict[str, Any]] = []
    for trace_index in range(200):
        trace = f"trace-{trace_index}"
        root = _row(rng, len(rows), trace, rng.choice([None, None, ""]))
        rows.append(root)
        for _ in range(rng.randrange(0, 5)):
            rows.append(_row(rng, len(rows), trace, root["id"]))
        if rng.random() < 0.1:
            rows.append(_row(rng, len(rows), trace, None))
    scores: list[dict[str, Any]] = []
    for trace_index in range(220):
        trace = rng.choice([f"trace-{trace_index}", f"trace-{trace_index}", None])
        own = [row["id"] for row in rows if row["trace_id"] == trace] or [None]
        for _ in range(rng.randrange(0, 4)):
            observation = rng.choice(
                [None, rng.choice(own), rng.choice(own), rng.choice(rows)["id"], "nowhere"]
            )
            scores.append(_score(rng, len(scores), trace, observation))
    for row in rows:  # scores of the observations at the window's ends, and of their roots
        if row["start_ms"] in (START - 1, START, END, END + 1):
            scores.append(_score(rng, len(scores), row["trace_id"], row["id"]))
            scores.append(_score(rng, len(scores), row["trace_id"], None))
    store = Store(None, max_bytes=1 << 30)
    _insert(store, rows)
    _insert(store, scores, "scores")
    return store


def both_paths(body: dict[str, Any], store: Store | None = None) -> list[dict[str, Any]]:
    """The answer of the SQL path, checked equal to the Python path's; fails if SQL
    did not take the query."""
    store = store or dataset()
    query = {**WINDOW, **body}
    assert metrics_sql.grouped_rows(store, parse_query(query)) is not None, "not taken by SQL"
    fast = run_query(store, parse_query(query))
    slow = run_query(store, parse_query(query), sql=False)
    assert fast == slow
    return fast


def metric(measure: str, aggregation: str) -> dict[str, str]:
    return {"measure": measure, "aggregation": aggregation}


def where(column: str, operator: str, value: Any, kind: str, **extra: Any) -> dict[str, Any]:
    return {"column": column, "operator": operator, "value": value, "type": kind, **extra}


def dims(*names: str) -> list[dict[str, str]]:
    return [{"field": name} for name in names]


COUNT = metric("count", "count")
ALL_METRICS = [
    COUNT,
    metric("latency", "p50"),
    metric("latency", "p95"),
    metric("latency", "p99"),
    metric("latency", "avg"),
    metric("latency", "sum"),
    metric("latency", "min"),
    metric("latency", "max"),
    metric("latency", "uniq"),
    metric("latency", "histogram"),
    metric("totalCost", "sum"),
    metric("totalCost", "avg"),
    metric("totalCost", "p75"),
    metric("totalCost", "min"),
    metric("totalCost", "max"),
    metric("totalCost", "uniq"),
    metric("totalCost", "count"),
    metric("totalCost", "histogram"),
    metric("traceId", "uniq"),
    metric("traceId", "count"),
    metric("uniqueUserIds", "uniq"),
    metric("uniqueSessionIds", "uniq"),
    metric("count", "sum"),
    metric("count", "p90"),
]
ARMS = where("tags", "any of", ["a", "b"], "arrayOptions")
ROOTS = where("isRootObservation", "=", True, "boolean")

QUERIES: list[tuple[str, dict[str, Any]]] = [
    (
        "arms: count, p95 latency, cost, traces of root spans",
        {
            "view": "observations",
            "dimensions": dims("tags"),
            "metrics": [
                COUNT,
                metric("latency", "p95"),
                metric("totalCost", "sum"),
                metric("traceId", "uniq"),
            ],
            "filters": [ARMS, ROOTS],
        },
    ),
    (
        "error rate by tags and level",
        {
            "view": "observations",
            "dimensions": dims("tags", "level"),
            "metrics": [COUNT],
            "filters": [ARMS],
        },
    ),
    ("every metric, no grouping", {"view": "observations", "metrics": ALL_METRICS}),
    (
        "every metric by tags",
        {"view": "observations", "dimensions": dims("tags"), "metrics": ALL_METRICS},
    ),
    (
        "every metric by name and type, bins",
        {
            "view": "observations",
            "dimensions": dims("name", "type"),
            "metrics": ALL_METRICS,
            "config": {"bins": 3},
        },
    ),
    ("no metrics", {"view": "observations", "metrics": []}),
    ("no metrics, by level", {"view": "observations", "dimensions": dims("level"), "metrics": []}),
    (
        "empty result, no grouping",
        {
            "view": "observations",
            "metrics": ALL_METRICS,
            "filters": [where("name", "=", "nothing", "string")],
        },
    ),
    (
        "empty result, grouped",
        {
            "view": "observations",
            "dimensions": dims("tags"),
            "metrics": [COUNT],
            "filters": [where("tags", "any of", ["zzz"], "arrayOptions")],
        },
    ),
    *[
        (
            f"by {name}",
            {
                "view": "observations",
                "dimensions": dims(name),
                "metrics": [COUNT, metric("latency", "avg"), metric("totalCost", "sum")],
            },
        )
        for name in [
            "environment",
            "type",
            "name",
            "level",
            "version",
            "release",
            "traceName",
            "traceRelease",
            "traceVersion",
            "providedModelName",
            "promptName",
            "promptVersion",
            "isRootObservation",
            "tags",
        ]
    ],
    *[
        (
            f"top by {name}",
            {
                "view": "observations",
                "dimensions": dims(name),
                "metrics": [metric("latency", "max"), COUNT],
                "orderBy": [{"field": "max_latency", "direction": "desc"}],
                "config": {"row_limit": 7},
            },
        )
        for name in ["id", "traceId", "parentObservationId", "userId", "sessionId"]
    ],
    *[
        (
            f"tags {operator} {value}",
            {
                "view": "observations",
                "dimensions": dims("tags"),
                "metrics": [COUNT, metric("traceId", "uniq")],
                "filters": [where("tags", operator, value, "arrayOptions")],
            },
        )
        for operator, value in [
            ("any of", ["a"]),
            ("any of", ["Ünï", "c"]),
            ("all of", ["a", "b"]),
            ("all of", ["a", "a"]),
            ("all of", []),
            ("none of", ["a"]),
            ("none of", []),
        ]
    ],
    *[
        (
            f"tags {operator}",
            {
                "view": "observations",
                "metrics": [COUNT],
                "filters": [where("tags", operator, "", "null")],
            },
        )
        for operator in ["is null", "is not null"]
    ],
    *[
        (
            f"filter {column} {kind} {operator} {value!r}",
            {
                "view": "observations",
                "dimensions": dims("level"),
                "metrics": [COUNT, metric("latency", "p90")],
                "filters": [where(column, operator, value, kind, **extra)],
            },
        )
        for column, kind, operator, value, extra in [
            ("name", "string", "=", "llm", {}),
            ("name", "string", "=", "", {}),
            ("name", "string", "contains", "l", {}),
            ("name", "string", "contains", "", {}),
            ("name", "string", "does not contain", "l", {}),
            ("name", "string", "does not contain", "", {}),
            ("name", "string", "starts with", "ch", {}),
            ("name", "string", "starts with", "", {}),
            ("name", "string", "ends with", "at", {}),
            ("name", "string", "ends with", "", {}),
            ("name", "string", "ends with", "xchat", {}),
            ("environment", "string", "=", "", {}),
            ("environment", "string", "does not contain", "x", {}),
            ("environment", "string", "does not contain", "", {}),
            ("environment", "string", "starts with", "", {}),
            ("environment", "string", "ends with", "", {}),
            ("release", "string", "contains", "", {}),
            ("traceName", "string", "=", "support", {}),
            ("traceName", "string", "=", "chat", {}),
            ("scoreName", "string", "=", "llm", {}),  # *Name falls back to name
            ("type", "string", "=", "GENERATION", {}),
            ("level", "stringOptions", "any of", ["ERROR", "WARNING"], {}),
            ("level", "stringOptions", "none of", ["ERROR"], {}),
            ("level", "categoryOptions", "any of", ["ERROR"], {"key": "level"}),
            ("level", "categoryOptions", "none of", [], {"key": "level"}),
            ("release", "stringOptions", "any of", ["v1", ""], {}),
            ("release", "stringOptions", "none of", ["v1"], {}),
            ("name", "stringOptions", "none of", ["chat"], {}),
            ("version", "stringOptions", "any of", ["1.0"], {}),
            ("promptName", "stringOptions", "any of", ["answer"], {}),
            ("providedModelName", "string", "=", "gpt-x", {}),
            ("userId", "stringOptions", "any of", ["u1", "u2"], {}),
            ("sessionId", "string", "=", "", {}),
            ("parentObservationId", "null", "is null", "", {}),
            ("parentObservationId", "null", "is not null", "", {}),
            ("promptName", "null", "is null", "", {}),
            ("promptVersion", "null", "is not null", "", {}),
            ("name", "null", "is null", "", {}),
            ("isRootObservation", "null", "is null", "", {}),
            ("promptVersion", "number", "=", 2, {}),
            ("promptVersion", "number", ">=", 2, {}),
            ("promptVersion", "number", "<", 2.5, {}),
            ("promptVersion", "number", ">", 1, {}),
            ("promptVersion", "number", "<=", 1, {}),
            ("isRootObservation", "boolean", "=", True, {}),
            ("isRootObservation", "boolean", "=", False, {}),
            ("isRootObservation", "boolean", "<>", True, {}),
            ("start_time", "datetime", ">=", "2026-09-21T15:00:00Z", {}),
            ("start_time", "datetime", "<", "2026-09-21T15:00:00Z", {}),
            ("start_time", "datetime", ">", "2026-09-21T13:00:00Z", {}),
            ("start_time", "datetime", "<=", "2026-09-21T16:00:00.5Z", {}),
        ]
    ],
    *[
        (
            f"time series by {granularity}",
            {
                "view": "observations",
                "dimensions": dims("tags"),
                "timeDimension": {"granularity": granularity},
                "metrics": [COUNT, metric("latency", "p50"), metric("totalCost", "sum")],
            },
        )
        for granularity in ["minute", "hour", "day", "week", "auto"]
    ],
    (
        "time series, ordered and cut",
        {
            "view": "observations",
            "dimensions": dims("level"),
            "timeDimension": {"granularity": "hour"},
            "metrics": [COUNT],
            "orderBy": [{"field": "count_count", "direction": "desc"}],
            "config": {"row_limit": 5},
        },
    ),
    *[
        (
            f"ordered by {order}, limit {limit}",
            {
                "view": "observations",
                "dimensions": dims("name", "level"),
                "metrics": [COUNT, metric("totalCost", "sum")],
                "orderBy": order,
                "config": {"row_limit": limit},
            },
        )
        for order, limit in [
            ([{"field": "count_count", "direction": "asc"}], 3),
            ([{"field": "sum_totalCost", "direction": "asc"}], 100),
            ([{"field": "level", "direction": "desc"}], 4),
            (
                [
                    {"field": "name", "direction": "asc"},
                    {"field": "count_count", "direction": "asc"},
                ],
                6,
            ),
        ]
    ],
]


SCORE_METRICS = [
    COUNT,
    metric("value", "avg"),
    metric("value", "sum"),
    metric("value", "min"),
    metric("value", "max"),
    metric("value", "p50"),
    metric("value", "p95"),
    metric("value", "uniq"),
    metric("value", "count"),
    metric("value", "histogram"),
]
HELPFULNESS = where("name", "=", "helpfulness", "string")

QUERIES += [
    (
        "scores: average helpfulness per arm",
        {
            "view": "scores-numeric",
            "dimensions": dims("tags"),
            "metrics": [metric("value", "avg"), COUNT],
            "filters": [HELPFULNESS, ARMS],
        },
    ),
    ("scores: every metric", {"view": "scores-numeric", "metrics": SCORE_METRICS}),
    (
        "scores: every metric by name",
        {"view": "scores-numeric", "dimensions": dims("name"), "metrics": SCORE_METRICS},
    ),
    *[
        (
            f"scores by {name}",
            {
                "view": "scores-numeric",
                "dimensions": dims(name),
                "metrics": [COUNT, metric("value", "avg")],
            },
        )
        for name in [
            "environment",
            "name",
            "source",
            "dataType",
            "configId",
            "traceName",
            "tags",
            "traceRelease",
            "traceVersion",
            "observationName",
            "observationModelName",
            "observationPromptName",
            "observationPromptVersion",
            "value",
        ]
    ],
    *[
        (
            f"scores: top by {name}",
            {
                "view": "scores-numeric",
                "dimensions": dims(name),
                "metrics": [metric("value", "max"), COUNT],
                "orderBy": [{"field": "max_value", "direction": "desc"}],
                "config": {"row_limit": 5},
            },
        )
        for name in ["id", "traceId", "observationId", "sessionId", "datasetRunId", "userId"]
    ],
    (
        "boolean scores by value",
        {
            "view": "scores-boolean",
            "dimensions": dims("booleanValue", "name"),
            "metrics": [COUNT, metric("value", "avg")],
        },
    ),
    (
        "categorical scores by value",
        {
            "view": "scores-categorical",
            "dimensions": dims("stringValue"),
            "metrics": [COUNT],
            "filters": [where("stringValue", "none of", ["harsh"], "stringOptions")],
        },
    ),
    (
        "scores: time series by hour",
        {
            "view": "scores-numeric",
            "dimensions": dims("name"),
            "timeDimension": {"granularity": "hour"},
            "metrics": [COUNT, metric("value", "p75")],
        },
    ),
    *[
        (
            f"scores: filter {column} {kind} {operator} {value!r}",
            {
                "view": view,
                "dimensions": dims("name"),
                "metrics": [COUNT, metric("value", "sum")],
                "filters": [where(column, operator, value, kind)],
            },
        )
        for view, column, kind, operator, value in [
            ("scores-numeric", "name", "string", "starts with", "help"),
            ("scores-numeric", "scoreName", "string", "=", "accuracy"),
            ("scores-numeric", "environment", "string", "=", ""),
            ("scores-numeric", "source", "stringOptions", "any of", ["API"]),
            ("scores-numeric", "traceId", "null", "is null", ""),
            ("scores-numeric", "observationId", "null", "is not null", ""),
            ("scores-numeric", "sessionId", "string", "=", ""),
            ("scores-numeric", "datasetRunId", "null", "is null", ""),
            ("scores-numeric", "tags", "arrayOptions", "none of", ["a"]),
            ("scores-numeric", "tags", "arrayOptions", "all of", []),
            ("scores-numeric", "traceName", "string", "=", "support"),
            ("scores-numeric", "userId", "stringOptions", "any of", ["u1", ""]),
            ("scores-numeric", "observationName", "string", "=", "llm"),
            ("scores-numeric", "observationPromptVersion", "number", ">", 1),
            ("scores-numeric", "value", "number", ">=", 0.5),
            ("scores-numeric", "timestamp", "datetime", ">", "2026-09-21T15:00:00Z"),
            ("scores-boolean", "booleanValue", "boolean", "=", True),
            ("scores-boolean", "booleanValue", "boolean", "<>", True),
        ]
    ],
]


@pytest.mark.parametrize("body", [body for _, body in QUERIES], ids=[name for name, _ in QUERIES])
def test_sql_and_python_paths_agree(body: dict[str, Any]) -> None:
    both_paths(body)


def test_the_queries_select_rows() -> None:
    """The table is not vacuous: most of its queries find something."""
    found = [bool(both_paths(body)) for _, body in QUERIES]
    assert sum(found) > len(found) * 3 // 4


def test_groups_that_tie_keep_the_python_order() -> None:
    """Equal counts: the order (and the rows a limit keeps) follows each group's newest row."""
    store = Store(None, max_bytes=1 << 30)
    rng = random.Random(3)
    rows = [_row(rng, index, f"t{index}", None) for index in range(40)]
    for index, row in enumerate(rows):
        row.update(start_ms=START + 1000 * (index % 3), level=["DEFAULT", "ERROR"][index % 2])
        row.update(tags=json.dumps([f"arm-{index % 4}"]))
    _insert(store, rows)
    for limit in (1, 2, 3, 100):
        rows_out = both_paths(
            {
                "view": "observations",
                "dimensions": dims("tags", "level"),
                "metrics": [COUNT],
                "config": {"row_limit": limit},
            },
            store,
        )
        assert len(rows_out) == min(limit, 4)


@pytest.mark.parametrize(
    "body",
    [
        {"view": "observations", "metrics": [metric("totalTokens", "sum")]},
        {"view": "observations", "metrics": [metric("countScores", "sum")]},
        {"view": "observations", "dimensions": dims("startTimeMonth"), "metrics": [COUNT]},
        {"view": "observations", "timeDimension": {"granularity": "month"}, "metrics": [COUNT]},
        {
            "view": "observations",
            "metrics": [COUNT],
            "filters": [where("metadata", "=", "x", "stringObject", key="k")],
        },
        {
            "view": "observations",
            "metrics": [COUNT],
            "filters": [where("promptVersion", "any of", ["1"], "stringOptions")],
        },
        {"view": "scores-numeric", "dimensions": dims("timestampDay"), "metrics": [COUNT]},
        {
            "view": "scores-numeric",
            "metrics": [COUNT],
            "filters": [where("metadata", "=", "x", "stringObject", key="k")],
        },
    ],
)
def test_other_queries_go_to_python(body: dict[str, Any]) -> None:
    store = dataset()
    query = {**WINDOW, **body}
    assert metrics_sql.grouped_rows(store, parse_query(query)) is None
    assert run_query(store, parse_query(query)) == run_query(store, parse_query(query), sql=False)


def test_two_texts_of_one_tag_list_go_to_python() -> None:
    """``["a", "b"]`` and ``["a","b"]`` (or text that is not JSON, read as ``[]``, next
    to ``[]``) are one group in Python: SQL, which groups texts, hands the query over."""
    store = Store(None, max_bytes=1 << 30)
    rng = random.Random(5)
    rows = [_row(rng, index, f"t{index}", None) for index in range(6)]
    for row, text in zip(
        rows, ['["a", "b"]', '["a","b"]', "[]", "not json", "", '["a"]'], strict=True
    ):
        row.update(start_ms=START + 1, tags=text)
    _insert(store, rows)
    for body in (
        {"view": "observations", "dimensions": dims("tags"), "metrics": [COUNT]},
        {
            "view": "observations",
            "dimensions": dims("tags"),
            "metrics": [COUNT],
            "filters": [where("tags", "any of", ["a"], "arrayOptions")],
        },
    ):
        query = {**WINDOW, **body}
        assert metrics_sql.grouped_rows(store, parse_query(query)) is None
        assert run_query(store, parse_query(query)) == run_query(
            store, parse_query(query), sql=False
        )
    [row] = both_paths(  # filtering alone stays in SQL: each text is tested on its own
        {
            "view": "observations",
            "metrics": [COUNT],
            "filters": [where("tags", "none of", ["b"], "arrayOptions")],
        },
        store,
    )
    assert row == {"count_count": "4"}


# ------------------------------------------------------------------ generated queries

FAST_DIMENSIONS = sorted(metrics_sql.OBSERVATION_DIMENSIONS)
LOW_CARDINALITY = [
    d
    for d in FAST_DIMENSIONS
    if d not in ("id", "traceId", "parentObservationId", "userId", "sessionId")
]
FILTERS = [
    ARMS,
    ROOTS,
    where("tags", "all of", ["a", "b"], "arrayOptions"),
    where("tags", "none of", ["c"], "arrayOptions"),
    where("isRootObservation", "<>", True, "boolean"),
    where("level", "any of", ["ERROR", "DEFAULT"], "stringOptions"),
    where("type", "=", "GENERATION", "string"),
    where("name", "does not contain", "c", "string"),
    where("name", "ends with", "m", "string"),
    where("environment", "none of", ["production"], "stringOptions"),
    where("release", "is not null", "", "null"),
    where("traceName", "starts with", "sup", "string"),
    where("promptName", "any of", ["answer", ""], "stringOptions"),
    where("promptVersion", ">=", 2, "number"),
    where("version", "is null", "", "null"),
    where("userId", "=", "", "string"),
    where("start_time", ">=", "2026-09-21T14:00:00Z", "datetime"),
    where("start_time", "<", "2026-09-21T16:30:00Z", "datetime"),
]


@st.composite
def generated_query(draw: st.DrawFn) -> dict[str, Any]:
    dimensions = draw(st.lists(st.sampled_from(LOW_CARDINALITY), max_size=2, unique=True))
    metrics = draw(st.lists(st.sampled_from(ALL_METRICS), max_size=4, unique_by=json.dumps))
    body: dict[str, Any] = {
        "view": "observations",
        "dimensions": dims(*dimensions),
        "metrics": metrics,
        "filters": draw(st.lists(st.sampled_from(FILTERS), max_size=3)),
    }
    if draw(st.booleans()):
        body["timeDimension"] = {"granularity": draw(st.sampled_from(["hour", "day", "auto"]))}
    fields = dimensions + [
        f"{m['aggregation']}_{m['measure']}" for m in metrics if m["aggregation"] != "histogram"
    ]
    if draw(st.booleans()) and fields:
        body["orderBy"] = [
            {
                "field": draw(st.sampled_from(fields)),
                "direction": draw(st.sampled_from(["asc", "desc"])),
            }
        ]
    if draw(st.booleans()):
        body["config"] = {"row_limit": draw(st.integers(1, 12))}
    return body


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_query())
def test_generated_queries_agree(body: dict[str, Any]) -> None:
    try:
        parse_query({**WINDOW, **body})
    except ApiError:
        assume(False)
    both_paths(body)


SCORE_FILTERS = [
    HELPFULNESS,
    ARMS,
    where("tags", "none of", ["b"], "arrayOptions"),
    where("name", "any of", ["thumbs", "accuracy"], "stringOptions"),
    where("source", "=", "API", "string"),
    where("environment", "does not contain", "prod", "string"),
    where("traceName", "is not null", "", "null"),
    where("observationName", "ends with", "m", "string"),
    where("value", "<", 0.6, "number"),
    where("configId", "is null", "", "null"),
    where("timestamp", "<=", "2026-09-21T16:00:00Z", "datetime"),
]
SCORE_DIMENSIONS = [
    "environment",
    "name",
    "source",
    "dataType",
    "configId",
    "traceName",
    "tags",
    "traceRelease",
    "observationName",
    "observationPromptVersion",
    "value",
]


@st.composite
def generated_score_query(draw: st.DrawFn) -> dict[str, Any]:
    dimensions = draw(st.lists(st.sampled_from(SCORE_DIMENSIONS), max_size=2, unique=True))
    metrics = draw(st.lists(st.sampled_from(SCORE_METRICS), max_size=3, unique_by=json.dumps))
    body: dict[str, Any] = {
        "view": draw(st.sampled_from(["scores-numeric", "scores-boolean"])),
        "dimensions": dims(*dimensions),
        "metrics": metrics,
        "filters": draw(st.lists(st.sampled_from(SCORE_FILTERS), max_size=3)),
    }
    if draw(st.booleans()):
        body["timeDimension"] = {"granularity": draw(st.sampled_from(["hour", "auto"]))}
    if draw(st.booleans()):
        body["config"] = {"row_limit": draw(st.integers(1, 6))}
    return body


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_score_query())
def test_generated_score_queries_agree(body: dict[str, Any]) -> None:
    try:
        parse_query({**WINDOW, **body})
    except ApiError:
        assume(False)
    both_paths(body)
