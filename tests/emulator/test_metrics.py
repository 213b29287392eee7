"""Metrics v2 (GET /v2/metrics): observations written straight into the store, scores
through the API, aggregates checked against values computed here."""

from __future__ import annotations

import itertools
import json
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from coalmine.emulator.store import Store
from tests.emulator.emulator_support import LiveEmulator

METRICS = "/api/public/v2/metrics"
T0 = datetime(2026, 10, 1, 10, 0, tzinfo=UTC)
WINDOW = {"fromTimestamp": "2026-10-01T09:00:00Z", "toTimestamp": "2026-10-01T12:00:00Z"}
_ids = itertools.count()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def metric(measure: str, aggregation: str) -> dict[str, str]:
    return {"measure": measure, "aggregation": aggregation}


def where(column: str, operator: str, value: Any, kind: str, **extra: Any) -> dict[str, Any]:
    """One filter of the query object."""
    return {"column": column, "operator": operator, "value": value, "type": kind, **extra}


COUNT = metric("count", "count")


def store_of(emulator: LiveEmulator) -> Store:
    """The live app's store."""
    store: Store = emulator.app.state.store
    return store


def add_observation(
    store: Store,
    *,
    trace_id: str,
    parent: str | None = None,
    start: datetime = T0,
    latency_ms: int | None = 100,
    tags: list[str] | None = None,
    **columns: Any,
) -> str:
    """Insert one row into the observations table as the OTel ingestion would."""
    row: dict[str, Any] = {
        "id": columns.pop("id", f"obs-{next(_ids)}"),
        "trace_id": trace_id,
        "parent_observation_id": parent,
        "type": "SPAN",
        "name": "handle",
        "start_time": iso(start),
        "start_ms": ms(start),
        "end_time": None if latency_ms is None else iso(start + timedelta(milliseconds=latency_ms)),
        "end_ms": None if latency_ms is None else ms(start) + latency_ms,
        "is_root": 1 if parent is None else 0,
        "tags": json.dumps(tags or []),
        "created_at": iso(start),
        "updated_at": iso(start),
        **columns,
    }
    for key in ("usage_details", "cost_details", "metadata"):
        if isinstance(row.get(key), dict):
            row[key] = json.dumps(row[key])
    with store.transaction() as db:
        db.execute(
            f"INSERT INTO observations ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
    return str(row["id"])


def query(client: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    response = client.get(METRICS, params={"query": json.dumps({**WINDOW, **body})})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def refused(client: httpx.Client, body: Any) -> dict[str, Any]:
    text = body if isinstance(body, str) else json.dumps(body)
    response = client.get(METRICS, params={"query": text})
    assert response.status_code == 400, response.text
    answer: dict[str, Any] = response.json()
    return answer


def by(rows: list[dict[str, Any]], *keys: str) -> dict[Any, dict[str, Any]]:
    def key(row: dict[str, Any]) -> Any:
        values = tuple(tuple(row[k]) if isinstance(row[k], list) else row[k] for k in keys)
        return values[0] if len(values) == 1 else values

    return {key(row): row for row in rows}


def p95(values: list[float]) -> float:
    """Type-7 quantile, computed independently of the emulator."""
    return statistics.quantiles(values, n=100, method="inclusive")[94]


# ------------------------------------------------------------------------- fixtures


@pytest.fixture
def arms(emulator: LiveEmulator, client: httpx.Client) -> dict[str, Any]:
    """Two arms of traffic: root spans tagged by arm, child generations with latency,
    cost, prompt and level, and a helpfulness score per trace through the API."""
    store = store_of(emulator)
    plan = {
        "baseline": {"latencies": [100, 120, 140, 160, 180, 200, 220, 240], "errors": 1},
        "canary": {"latencies": [150, 300, 450, 600, 750], "errors": 2},
    }
    truth: dict[str, Any] = {}
    scores = []
    for arm, spec in plan.items():
        latencies = spec["latencies"]
        for i, latency in enumerate(latencies):
            trace = f"{arm}-trace-{i}"
            start = T0 + timedelta(minutes=i)
            root = add_observation(
                store,
                trace_id=trace,
                start=start,
                latency_ms=latency + 10,
                tags=[arm],
                name="chat",
                trace_name="chat",
                release="v2" if arm == "canary" else "v1",
            )
            add_observation(
                store,
                trace_id=trace,
                parent=root,
                start=start,
                latency_ms=latency,
                tags=[arm],
                type="GENERATION",
                name="llm",
                level="ERROR" if i < spec["errors"] else "DEFAULT",
                prompt_name="answer",
                prompt_version=2 if arm == "canary" else 1,
                model="gpt-x",
                total_cost=0.001 * (i + 1),
                usage_details={"input": 10, "output": 5, "total": 15},
                release="v2" if arm == "canary" else "v1",
            )
            scores.append(
                {
                    "name": "helpfulness",
                    "value": 0.5 + 0.05 * i,
                    "traceId": trace,
                    "timestamp": iso(start + timedelta(seconds=30)),
                }
            )
        truth[arm] = {
            "n": len(latencies),
            "p95": p95([float(v) for v in latencies]),
            "cost": sum(0.001 * (i + 1) for i in range(len(latencies))),
            "help": statistics.fmean(0.5 + 0.05 * i for i in range(len(latencies))),
            "errors": spec["errors"],
        }
    assert client.post("/api/public/scores", json=scores).status_code == 202
    return truth


# ------------------------------------------------------------------------- answers


def test_average_score_and_count_per_arm(client: httpx.Client, arms: dict[str, Any]) -> None:
    rows = query(
        client,
        view="scores-numeric",
        dimensions=[{"field": "tags"}],
        metrics=[metric("value", "avg"), COUNT],
        filters=[
            where("name", "=", "helpfulness", "string"),
            where("tags", "any of", ["canary", "baseline"], "arrayOptions"),
        ],
    )
    groups = by(rows, "tags")
    assert set(groups) == {("baseline",), ("canary",)}
    for arm, truth in arms.items():
        row = groups[(arm,)]
        assert row["tags"] == [arm]
        assert row["avg_value"] == pytest.approx(truth["help"])
        assert row["count_count"] == str(truth["n"])  # 64-bit counts come as strings
    assert rows[0]["avg_value"] >= rows[1]["avg_value"]  # first metric, descending


def test_latency_cost_and_traces_per_arm(client: httpx.Client, arms: dict[str, Any]) -> None:
    rows = query(
        client,
        view="observations",
        dimensions=[{"field": "tags"}],
        metrics=[
            metric("latency", "p95"),
            metric("totalCost", "sum"),
            metric("traceId", "uniq"),
            COUNT,
            metric("latency", "max"),
        ],
        filters=[where("type", "=", "GENERATION", "string")],
    )
    groups = by(rows, "tags")
    for arm, truth in arms.items():
        row = groups[(arm,)]
        assert row["p95_latency"] == pytest.approx(truth["p95"])
        assert row["sum_totalCost"] == pytest.approx(truth["cost"])
        assert row["uniq_traceId"] == str(truth["n"])
        assert row["count_count"] == str(truth["n"])
        assert isinstance(row["max_latency"], str)  # Int64 in ClickHouse: quoted


def test_error_counts_by_arm_and_level(client: httpx.Client, arms: dict[str, Any]) -> None:
    rows = query(
        client,
        view="observations",
        dimensions=[{"field": "tags"}, {"field": "level"}],
        metrics=[COUNT],
    )
    counts = {(row["tags"][0], row["level"]): int(row["count_count"]) for row in rows}
    for arm, truth in arms.items():
        assert counts[(arm, "ERROR")] == truth["errors"]
        assert counts[(arm, "DEFAULT")] == 2 * truth["n"] - truth["errors"]


def test_trace_level_latency_from_root_observations(
    client: httpx.Client, arms: dict[str, Any]
) -> None:
    rows = query(
        client,
        view="observations",
        dimensions=[{"field": "traceRelease"}],
        metrics=[metric("latency", "avg")],
        filters=[where("isRootObservation", "=", True, "boolean")],
    )
    releases = by(rows, "traceRelease")
    assert releases["v1"]["avg_latency"] == pytest.approx(170 + 10)
    assert releases["v2"]["avg_latency"] == pytest.approx(450 + 10)


def test_prompt_versions_as_dimensions(client: httpx.Client, arms: dict[str, Any]) -> None:
    rows = query(
        client,
        view="observations",
        dimensions=[{"field": "promptName"}, {"field": "promptVersion"}],
        metrics=[metric("totalTokens", "sum")],
        filters=[where("promptName", "any of", ["answer"], "stringOptions")],
    )
    assert by(rows, "promptName", "promptVersion") == {
        ("answer", 1): {"promptName": "answer", "promptVersion": 1, "sum_totalTokens": "120"},
        ("answer", 2): {"promptName": "answer", "promptVersion": 2, "sum_totalTokens": "75"},
    }


def test_scores_by_observation_prompt_version(emulator: LiveEmulator, client: httpx.Client) -> None:
    store = store_of(emulator)
    root = add_observation(store, trace_id="tr", tags=["canary"])
    generation = add_observation(
        store, trace_id="tr", parent=root, prompt_name="p", prompt_version=7
    )
    stamp = iso(T0)
    batch = [
        {
            "name": "ok",
            "value": 1,
            "traceId": "tr",
            "observationId": generation,
            "timestamp": stamp,
        },
        {"name": "ok", "value": 0, "traceId": "tr", "timestamp": stamp},
    ]
    assert client.post("/api/public/scores", json=batch).status_code == 202
    rows = query(
        client,
        view="scores-numeric",
        dimensions=[{"field": "observationPromptName"}, {"field": "observationPromptVersion"}],
        metrics=[metric("value", "sum")],
    )
    # Only the score on the observation joins; the trace-level score drops out.
    assert rows == [{"observationPromptName": "p", "observationPromptVersion": 7, "sum_value": 1.0}]


def test_tags_group_as_whole_arrays(emulator: LiveEmulator, client: httpx.Client) -> None:
    store = store_of(emulator)
    add_observation(store, trace_id="t1", tags=["a", "b"])
    add_observation(store, trace_id="t2", tags=["a"])
    add_observation(store, trace_id="t3", tags=["b"])
    add_observation(store, trace_id="t4", tags=["a", "b"])
    add_observation(store, trace_id="t5")

    rows = query(
        client,
        view="observations",
        dimensions=[{"field": "tags"}],
        metrics=[COUNT],
        orderBy=[{"field": "tags", "direction": "asc"}],
    )
    assert [(row["tags"], row["count_count"]) for row in rows] == [
        ([], "1"),
        (["a"], "1"),
        (["a", "b"], "2"),
        (["b"], "1"),
    ]

    def traces(operator: str, value: list[str]) -> str:
        [row] = query(
            client,
            view="observations",
            metrics=[metric("traceId", "uniq")],
            filters=[where("tags", operator, value, "arrayOptions")],
        )
        return str(row["uniq_traceId"])

    assert traces("any of", ["a"]) == "3"
    assert traces("all of", ["a", "b"]) == "2"
    assert traces("none of", ["a"]) == "2"
    assert traces("none of", []) == "5"


def test_score_tags_come_from_the_root_span(emulator: LiveEmulator, client: httpx.Client) -> None:
    store = store_of(emulator)
    root = add_observation(store, trace_id="rooted", tags=[])
    add_observation(store, trace_id="rooted", parent=root, tags=["canary"])
    batch = [
        {"name": "q", "value": 1, "traceId": "rooted", "timestamp": iso(T0)},
        {"name": "q", "value": 1, "traceId": "rootless", "timestamp": iso(T0)},
    ]
    assert client.post("/api/public/scores", json=batch).status_code == 202

    grouped = query(
        client,
        view="scores-numeric",
        dimensions=[{"field": "tags"}],
        metrics=[COUNT],
    )
    # The root span carries no tags, so neither does its score; the score of a trace
    # without a root span in the window drops out of trace-dimension queries.
    assert grouped == [{"tags": [], "count_count": "1"}]
    [total] = query(client, view="scores-numeric", metrics=[COUNT])
    assert total == {"count_count": "2"}


def test_boolean_and_categorical_score_views(client: httpx.Client) -> None:
    def scored(name: str, value: Any, **extra: Any) -> dict[str, Any]:
        return {"name": name, "value": value, "traceId": "t", "timestamp": iso(T0), **extra}

    batch = [scored("thumbs", v, dataType="BOOLEAN") for v in (1, 1, 1, 0)]
    batch += [scored("tone", v) for v in ("calm", "calm", "harsh")]
    batch += [scored("accuracy", 0.5)]
    assert client.post("/api/public/scores", json=batch).status_code == 202

    [rate] = query(client, view="scores-boolean", metrics=[metric("value", "avg")])
    assert rate == {"avg_value": 0.75}
    split = query(
        client,
        view="scores-boolean",
        dimensions=[{"field": "booleanValue"}],
        metrics=[COUNT],
    )
    assert by(split, "booleanValue") == {
        True: {"booleanValue": True, "count_count": "3"},
        False: {"booleanValue": False, "count_count": "1"},
    }
    tones = query(
        client,
        view="scores-categorical",
        dimensions=[{"field": "stringValue"}],
        metrics=[COUNT],
    )
    assert tones == [
        {"stringValue": "calm", "count_count": "2"},
        {"stringValue": "harsh", "count_count": "1"},
    ]
    names = query(
        client,
        view="scores-numeric",
        dimensions=[{"field": "name"}],
        metrics=[COUNT],
    )
    assert by(names, "name") == {  # numeric holds NUMERIC and BOOLEAN scores
        "thumbs": {"name": "thumbs", "count_count": "4"},
        "accuracy": {"name": "accuracy", "count_count": "1"},
    }


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([where("name", "=", "llm", "string")], 13),
        ([where("name", "starts with", "ch", "string")], 13),
        ([where("name", "does not contain", "l", "string")], 13),
        ([where("level", "none of", ["ERROR"], "stringOptions")], 23),
        ([where("level", "any of", ["ERROR"], "categoryOptions", key="level")], 3),
        ([where("promptVersion", ">=", 2, "number")], 5),
        ([where("promptName", "is null", "", "null")], 13),
        ([where("isRootObservation", "<>", True, "boolean")], 13),
        ([where("start_time", ">=", "2026-10-01T10:05:00Z", "datetime")], 6),
        ([where("release", "=", "v2", "string"), where("type", "=", "GENERATION", "string")], 5),
        ([where("traceId", "any of", ["canary-trace-0"], "stringOptions")], 2),
    ],
)
def test_filters(
    client: httpx.Client, arms: dict[str, Any], filters: list[dict[str, Any]], expected: int
) -> None:
    [row] = query(
        client,
        view="observations",
        metrics=[COUNT],
        filters=filters,
    )
    assert row["count_count"] == str(expected)


def test_row_limit_and_order(client: httpx.Client, arms: dict[str, Any]) -> None:
    body = {
        "view": "observations",
        "dimensions": [{"field": "name"}, {"field": "tags"}],
        "metrics": [metric("latency", "sum")],
    }
    rows = query(client, **body)
    assert len(rows) == 4
    sums = [int(row["sum_latency"]) for row in rows]
    assert sums == sorted(sums, reverse=True)
    assert query(client, **body, config={"row_limit": 2}) == rows[:2]
    by_name = [{"field": "name", "direction": "asc"}, {"field": "sum_latency", "direction": "asc"}]
    ordered = query(client, **body, orderBy=by_name)
    assert [(r["name"], int(r["sum_latency"])) for r in ordered] == sorted(
        (r["name"], int(r["sum_latency"])) for r in rows
    )


def test_time_series_fills_empty_buckets(emulator: LiveEmulator, client: httpx.Client) -> None:
    store = store_of(emulator)
    add_observation(store, trace_id="a", start=T0 + timedelta(minutes=5))
    add_observation(store, trace_id="b", start=T0 + timedelta(minutes=6))
    add_observation(store, trace_id="c", start=T0 + timedelta(hours=1, minutes=30))
    rows = query(
        client,
        view="observations",
        timeDimension={"granularity": "hour"},
        metrics=[COUNT, metric("latency", "avg")],
    )
    assert rows == [
        {"time_dimension": "2026-10-01T09:00:00Z", "count_count": "0", "avg_latency": None},
        {"time_dimension": "2026-10-01T10:00:00Z", "count_count": "2", "avg_latency": 100.0},
        {"time_dimension": "2026-10-01T11:00:00Z", "count_count": "1", "avg_latency": 100.0},
    ]
    auto = query(client, view="observations", timeDimension={"granularity": "auto"}, metrics=[])
    assert [(row["time_dimension"], row["count"]) for row in auto] == [  # 3 hours: by hour
        ("2026-10-01T09:00:00Z", "0"),
        ("2026-10-01T10:00:00Z", "2"),
        ("2026-10-01T11:00:00Z", "1"),
    ]
    daily = query(
        client,
        view="observations",
        timeDimension={"granularity": "day"},
        metrics=[COUNT],
        fromTimestamp="2026-09-29T00:00:00Z",
    )
    assert daily == [
        {"time_dimension": "2026-09-29", "count_count": "0"},
        {"time_dimension": "2026-09-30", "count_count": "0"},
        {"time_dimension": "2026-10-01", "count_count": "3"},
    ]


def test_histogram_bins(emulator: LiveEmulator, client: httpx.Client) -> None:
    store = store_of(emulator)
    for latency in (0, 10, 20, 30, 40, 100):
        add_observation(store, trace_id="h", latency_ms=latency)
    [row] = query(
        client,
        view="observations",
        metrics=[metric("latency", "histogram")],
        config={"bins": 5},
    )
    # [lower, upper, height]; empty bins are left out.
    assert row["histogram_latency"] == [
        [0.0, 20.0, 2.0],
        [20.0, 40.0, 2.0],
        [40.0, 60.0, 1.0],
        [80.0, 100.0, 1.0],
    ]


def test_an_empty_window_still_answers_one_row_without_grouping(client: httpx.Client) -> None:
    rows = query(
        client,
        view="observations",
        metrics=[COUNT, metric("latency", "p95")],
    )
    assert rows == [{"count_count": "0", "p95_latency": None}]
    grouped = query(client, view="observations", dimensions=[{"field": "name"}], metrics=[])
    assert grouped == []


def test_window_ends_are_inclusive(emulator: LiveEmulator, client: httpx.Client) -> None:
    store = store_of(emulator)
    for minute in (0, 30, 60):
        add_observation(store, trace_id="w", start=T0 + timedelta(minutes=minute))
    [row] = client.get(
        METRICS,
        params={
            "query": json.dumps(
                {
                    "view": "observations",
                    "metrics": [COUNT],
                    "fromTimestamp": iso(T0),
                    "toTimestamp": iso(T0 + timedelta(minutes=60)),
                }
            )
        },
    ).json()["data"]
    assert row == {"count_count": "3"}


# ----------------------------------------------------------------------- refusals

GOOD = {"view": "observations", "metrics": [COUNT], **WINDOW}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"view": "traces"}, "Invalid option"),
        ({"metrics": [metric("count", "median")]}, "Invalid option"),
        ({"fromTimestamp": None}, "expected string"),
        ({"toTimestamp": "2026-10-01"}, "Invalid ISO datetime"),
        ({"fromTimestamp": "2026-10-01T12:00:00Z"}, "fromTimestamp must be before toTimestamp"),
        ({"toTimestamp": "2026-10-01T08:00:00Z"}, "fromTimestamp must be before toTimestamp"),
        ({"config": {"row_limit": 1001}}, "<=1000"),
        ({"config": {"row_limit": 0}}, ">=1"),
        ({"config": {"bins": 101}}, "<=100"),
        ({"filters": [where("name", "is", "x", "string")]}, "Invalid option"),
        ({"filters": [where("name", "any of", [], "stringOptions")]}, "empty"),
        ({"filters": [where("level", "any of", ["x"], "categoryOptions")]}, "expected string"),
        ({"filters": [where("name", "=", "x", "text")]}, "filter type must be one of"),
        ({"timeDimension": {"granularity": "second"}}, "Invalid option"),
    ],
)
def test_malformed_queries_are_refused_as_invalid_request_data(
    client: httpx.Client, change: dict[str, Any], fragment: str
) -> None:
    body = {key: value for key, value in {**GOOD, **change}.items() if value is not None}
    answer = refused(client, body)
    assert answer["message"] == "Invalid request data"
    assert any(fragment in problem["message"] for problem in answer["error"]), answer


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"metrics": [metric("speed", "avg")]}, "Invalid metric speed. Must be one of count,"),
        ({"dimensions": [{"field": "colour"}]}, "Invalid dimension colour. Must be one of"),
        ({"metrics": [metric("traceId", "avg")]}, 'Aggregation "avg" is not valid for measure'),
        ({"dimensions": [{"field": "traceId"}]}, "require both 'config.row_limit' and 'orderBy'"),
        (
            {"dimensions": [{"field": "userId"}], "timeDimension": {"granularity": "hour"}},
            "cannot be used with timeDimension",
        ),
        (
            {"filters": [where("tags", "=", "a", "string")]},
            "Array fields require type 'arrayOptions'",
        ),
        ({"filters": [where("colour", "=", "a", "string")]}, "Invalid filter column colour"),
        ({"orderBy": [{"field": "p95_latency", "direction": "desc"}]}, "Invalid orderBy field"),
        (
            {"view": "scores-categorical", "metrics": [metric("value", "avg")]},
            "Invalid metric value",
        ),
    ],
)
def test_unknown_fields_are_refused_as_invalid_request_error(
    client: httpx.Client, change: dict[str, Any], fragment: str
) -> None:
    answer = refused(client, {**GOOD, **change})
    assert answer["error"] == "InvalidRequestError"
    assert fragment in answer["message"], answer


def test_query_that_is_not_json_is_refused(client: httpx.Client) -> None:
    assert refused(client, "{view: observations") == {
        "message": "Invalid JSON in query parameter",
        "error": "InvalidRequestError",
    }
    response = client.get(METRICS)
    assert response.status_code == 400 and response.json()["message"] == "Invalid request data"


def test_high_cardinality_dimension_in_a_bounded_top_n_query(
    client: httpx.Client, arms: dict[str, Any]
) -> None:
    rows = query(
        client,
        view="observations",
        dimensions=[{"field": "traceId"}],
        metrics=[metric("latency", "max")],
        orderBy=[{"field": "max_latency", "direction": "desc"}],
        config={"row_limit": 3},
    )
    assert [row["traceId"] for row in rows] == [
        "canary-trace-4",
        "canary-trace-3",
        "canary-trace-2",
    ]


def test_metrics_need_the_secret_key(emulator: LiveEmulator) -> None:
    bearer = {"authorization": f"Bearer {emulator.settings.public_key}"}
    with httpx.Client(base_url=emulator.base_url, headers=bearer) as http:
        response = http.get(METRICS, params={"query": json.dumps(GOOD)})
    assert response.status_code == 401


def test_a_filter_type_that_is_not_a_string_is_a_400(client: httpx.Client) -> None:
    query = {
        "view": "observations",
        "metrics": [{"measure": "count", "aggregation": "count"}],
        "filters": [{"column": "level", "operator": "=", "value": "ERROR", "type": ["string"]}],
        "fromTimestamp": "2026-01-01T00:00:00Z",
        "toTimestamp": "2026-01-02T00:00:00Z",
    }
    response = client.get("/api/public/v2/metrics", params={"query": json.dumps(query)})
    assert response.status_code == 400
    assert "filter type" in response.text
