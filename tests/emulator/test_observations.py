"""GET /api/public/v2/observations: fixed parameters, the filter parameter, field groups,
and cursor paging that neither skips nor repeats while spans keep arriving."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from coalmine.emulator.settings import EmulatorSettings
from tests.emulator.emulator_support import LiveEmulator, start_emulator

OTEL = "/api/public/otel/v1/traces"
OBSERVATIONS = "/api/public/v2/observations"

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in milliseconds


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_value(item) for item in value]}}
    return {"stringValue": value}


def span(
    span_id: int,
    start_ms: int,
    *,
    trace: int = 1,
    parent: int | None = None,
    name: str = "span",
    duration_ms: int = 10,
    **attributes: Any,
) -> dict[str, Any]:
    """An OTLP/JSON span; attribute names use ``__`` for ``.``."""
    entry: dict[str, Any] = {
        "traceId": f"{trace:032x}",
        "spanId": f"{span_id:016x}",
        "name": name,
        "startTimeUnixNano": str(start_ms * 1_000_000),
        "endTimeUnixNano": str((start_ms + duration_ms) * 1_000_000),
        "attributes": [
            {"key": key.replace("__", "."), "value": _value(value)}
            for key, value in attributes.items()
        ],
    }
    if parent is not None:
        entry["parentSpanId"] = f"{parent:016x}"
    return entry


def ingest(client: httpx.Client, spans: list[dict[str, Any]]) -> None:
    document = {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]}
    response = client.post(OTEL, json=document)
    assert response.status_code == 200, response.text


def ids(client: httpx.Client, **params: Any) -> list[int]:
    """Ids (as ints) of one page, in the order served."""
    if "filter" in params and not isinstance(params["filter"], str):
        params["filter"] = json.dumps(params["filter"])
    response = client.get(OBSERVATIONS, params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return [int(item["id"], 16) for item in response.json()["data"]]


def tag_filter(operator: str, values: list[str], column: str = "tags") -> dict[str, Any]:
    return {"type": "arrayOptions", "column": column, "operator": operator, "value": values}


@pytest.fixture(scope="module")
def stored() -> Iterator[httpx.Client]:
    """Three traces of spans with distinct attributes; ids grow with start time.

    Shared by the read-only tests of this module; every response is still checked
    against the spec.
    """
    live = start_emulator(EmulatorSettings())
    try:
        with live.client() as client:
            ingest(client, STORED_SPANS)
            yield client
    finally:
        live.stop()
    assert not live.checked.violations, "\n".join(live.checked.violations)


STORED_SPANS = [
    span(
        1,
        T0,
        name="request",
        duration_ms=900,
        langfuse__trace__tags=["arm:canary", "team:a"],
        langfuse__environment="production",
        user__id="u1",
        session__id="s1",
        langfuse__version="v1",
    ),
    span(
        2,
        T0 + 100,
        parent=1,
        name="llm",
        langfuse__observation__type="generation",
        langfuse__trace__tags=["arm:canary"],
        langfuse__observation__prompt__name="answer",
        langfuse__observation__prompt__version=2,
        langfuse__environment="production",
        langfuse__observation__level="ERROR",
    ),
    span(
        3,
        T0 + 200,
        parent=1,
        name="tool",
        langfuse__observation__type="tool",
        langfuse__trace__tags=["arm:canary", "team:a"],
        langfuse__environment="staging",
    ),
    span(
        4,
        T0 + 300,
        trace=2,
        name="request",
        duration_ms=2500,
        langfuse__trace__tags=["arm:baseline", "team:a"],
        langfuse__environment="production",
        user__id="u2",
        langfuse__version="v2",
    ),
    span(
        5,
        T0 + 400,
        trace=2,
        parent=4,
        name="llm",
        langfuse__observation__type="generation",
        langfuse__trace__tags=["arm:baseline"],
        langfuse__observation__prompt__name="answer",
        langfuse__observation__prompt__version=1,
        langfuse__observation__level="WARNING",
    ),
    span(6, T0 + 500, trace=3, name="untagged"),
]


# ------------------------------------------------------------------ fixed parameters


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [6, 5, 4, 3, 2, 1]),
        ({"name": "llm"}, [5, 2]),
        ({"userId": "u1"}, [1]),
        ({"sessionId": "s1"}, [1]),
        ({"type": "GENERATION"}, [5, 2]),
        ({"traceId": f"{2:032x}"}, [5, 4]),
        ({"level": "ERROR"}, [2]),
        ({"parentObservationId": f"{1:016x}"}, [3, 2]),
        ({"parentObservationId": ""}, [6, 4, 1]),
        ({"isRootObservation": "true"}, [6, 4, 1]),
        ({"isRootObservation": "false"}, [5, 3, 2]),
        ({"environment": "staging"}, [3]),
        ({"environment": ["staging", "production"]}, [4, 3, 2, 1]),
        ({"version": "v2"}, [4]),
        ({"fromStartTime": "2026-01-01T00:00:00.200Z"}, [6, 5, 4, 3]),
        ({"toStartTime": "2026-01-01T00:00:00.200Z"}, [2, 1]),
        (
            {
                "fromStartTime": "2026-01-01T00:00:00.100Z",
                "toStartTime": "2026-01-01T01:00:00.200+01:00",
            },
            [2],
        ),
    ],
)
def test_fixed_parameters(
    stored: httpx.Client, params: dict[str, Any], expected: list[int]
) -> None:
    assert ids(stored, **params) == expected


# ------------------------------------------------------------------ the filter parameter


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([tag_filter("any of", ["arm:canary"])], [3, 2, 1]),
        ([tag_filter("any of", ["arm:canary", "arm:baseline"])], [5, 4, 3, 2, 1]),
        ([tag_filter("all of", ["arm:canary", "team:a"], "traceTags")], [3, 1]),
        ([tag_filter("all of", [])], [6, 5, 4, 3, 2, 1]),
        (
            [
                tag_filter("any of", ["team:a"]),
                {"type": "string", "column": "traceId", "operator": "=", "value": f"{1:032x}"},
            ],
            [3, 1],
        ),
        ([tag_filter("none of", ["arm:canary"])], [6, 5, 4]),
        ([tag_filter("none of", ["team:a", "arm:baseline"])], [6, 2]),
        (
            [
                tag_filter("any of", ["arm:canary"]),
                {"type": "boolean", "column": "isRootObservation", "operator": "=", "value": True},
            ],
            [1],
        ),
        (
            [{"type": "boolean", "column": "isRootObservation", "operator": "<>", "value": True}],
            [5, 3, 2],
        ),
        ([{"type": "string", "column": "level", "operator": "=", "value": "ERROR"}], [2]),
        (
            [
                {
                    "type": "stringOptions",
                    "column": "level",
                    "operator": "any of",
                    "value": ["ERROR", "WARNING"],
                }
            ],
            [5, 2],
        ),
        ([{"type": "string", "column": "traceId", "operator": "=", "value": f"{3:032x}"}], [6]),
        ([{"type": "string", "column": "name", "operator": "starts with", "value": "req"}], [4, 1]),
        ([{"type": "string", "column": "name", "operator": "contains", "value": "ntagg"}], [6]),
        ([{"type": "string", "column": "type", "operator": "=", "value": "TOOL"}], [3]),
        (
            [
                {
                    "type": "stringOptions",
                    "column": "environment",
                    "operator": "none of",
                    "value": ["production"],
                }
            ],
            [6, 5, 3],
        ),
        (
            [
                {
                    "type": "datetime",
                    "column": "startTime",
                    "operator": ">=",
                    "value": "2026-01-01T00:00:00.100Z",
                },
                {
                    "type": "datetime",
                    "column": "startTime",
                    "operator": "<",
                    "value": "2026-01-01T00:00:00.400Z",
                },
            ],
            [4, 3, 2],
        ),
        ([{"type": "string", "column": "promptName", "operator": "=", "value": "answer"}], [5, 2]),
        ([{"type": "number", "column": "promptVersion", "operator": "=", "value": 2}], [2]),
        ([{"type": "number", "column": "promptVersion", "operator": ">=", "value": 1}], [5, 2]),
        ([{"type": "number", "column": "latency", "operator": ">", "value": 1}], [4]),
        ([{"type": "null", "column": "userId", "operator": "is not null", "value": ""}], [4, 1]),
    ],
)
def test_filter_conditions(
    stored: httpx.Client, conditions: list[dict[str, Any]], expected: list[int]
) -> None:
    assert ids(stored, filter=conditions) == expected


def test_filter_takes_precedence_over_fixed_parameters(stored: httpx.Client) -> None:
    on_name = [{"type": "string", "column": "name", "operator": "=", "value": "tool"}]
    assert ids(stored, name="llm", filter=on_name) == [3]
    on_time = [{"type": "datetime", "column": "startTime", "operator": ">=", "value": "2026-01-01"}]
    late = "2026-01-01T00:00:00.450Z"
    assert ids(stored, fromStartTime=late, filter=on_time) == [6, 5, 4, 3, 2, 1]
    # A fixed parameter on another column still applies.
    assert ids(stored, type="GENERATION", filter=on_time) == [5, 2]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[{", "Invalid JSON in filter parameter"),
        ('{"type": "string"}', "Invalid request data"),
        ('[{"type": "string", "column": "name", "operator": "=="}]', "Invalid request data"),
        (
            '[{"type": "strung", "column": "name", "operator": "=", "value": "x"}]',
            "Invalid request",
        ),
        ('[{"type": "string", "column": "name", "operator": "=", "value": 3}]', "Invalid request"),
        ('[{"type": "arrayOptions", "column": "tags", "operator": "any of", "value": []}]', "Inv"),
        (
            '[{"type": "string", "column": "nope", "operator": "=", "value": "x"}]',
            "Column nope does not match a UI / CH table mapping.",
        ),
        (
            '[{"type": "string", "column": "tags", "operator": "=", "value": "x"}]',
            "Invalid filter type 'string' for column 'tags'",
        ),
        (
            '[{"type": "string", "column": "input", "operator": "contains", "value": "x"}]',
            "Filters on input or output must include",
        ),
    ],
)
def test_a_malformed_filter_is_refused(stored: httpx.Client, raw: str, message: str) -> None:
    response = stored.get(OBSERVATIONS, params={"filter": raw})
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(message)


# ------------------------------------------------------------------ other parameters


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "1001"},
        {"limit": "0"},
        {"limit": "ten"},
        {"limit": "2.5"},
        {"type": "generation"},
        {"level": "FATAL"},
        {"isRootObservation": "yes"},
        {"fromStartTime": "yesterday"},
        {"toStartTime": "2026-01-01T00:00:00"},  # no offset
        {"parseIoAsJson": "true"},
    ],
)
def test_invalid_parameters_are_refused(stored: httpx.Client, params: dict[str, str]) -> None:
    response = stored.get(OBSERVATIONS, params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["message"] == "Invalid request data"
    assert body["error"][0]["path"] == [next(iter(params))]


def test_limit_of_1000_is_the_maximum(stored: httpx.Client) -> None:
    assert stored.get(OBSERVATIONS, params={"limit": 1000}).status_code == 200
    refused = stored.get(OBSERVATIONS, params={"limit": 1001})
    assert refused.json()["error"][0]["message"] == "Too big: expected number to be <=1000"


def test_a_malformed_cursor_is_refused(stored: httpx.Client) -> None:
    for cursor in ("not base64!", "bm90IGpzb24", "e30"):  # "not json", "{}"
        response = stored.get(OBSERVATIONS, params={"cursor": cursor})
        assert response.status_code == 400
        assert response.json()["message"] == "Invalid cursor format"


def test_field_groups(stored: httpx.Client) -> None:
    core = {"id", "traceId", "startTime", "endTime", "projectId", "parentObservationId", "type"}
    required = {"modelId", "inputPrice", "outputPrice", "totalPrice"}

    def keys(fields: str) -> set[str]:
        return set(stored.get(OBSERVATIONS, params={"fields": fields}).json()["data"][0])

    assert keys("usage") == core | required | {
        "usageDetails",
        "costDetails",
        "totalCost",
        "usagePricingTierName",
    }
    assert keys("prompt,bogus") == core | required | {"promptId", "promptName", "promptVersion"}
    assert keys("metrics") == core | required | {"latency", "timeToFirstToken"}
    assert keys("trace_context") == core | required | {"tags", "release", "traceName"}
    assert keys("time") == core | required | {"completionStartTime", "createdAt", "updatedAt"}
    assert keys("io") == core | required | {"input", "output"}
    assert keys("model") == core | required | {
        "providedModelName",
        "internalModelId",
        "modelParameters",
    }
    assert keys("metadata") == core | required | {"metadata"}
    assert keys("") == keys("core,basic")
    assert keys("bogus") == core | required  # unknown groups are dropped


def test_long_metadata_values_are_truncated_unless_expanded(client: httpx.Client) -> None:
    long = "x" * 300
    ingest(
        client,
        [
            span(
                1,
                T0,
                langfuse__observation__metadata__long=long,
                langfuse__observation__metadata__other=long,
                langfuse__observation__metadata__short="s",
            )
        ],
    )

    def metadata(**params: str) -> dict[str, Any]:
        response = client.get(OBSERVATIONS, params={"fields": "metadata", **params})
        result: dict[str, Any] = response.json()["data"][0]["metadata"]
        return result

    assert metadata()["long"] == "x" * 200 and metadata()["short"] == "s"
    expanded = metadata(expandMetadata="long")
    assert expanded["long"] == long and expanded["other"] == "x" * 200
    assert metadata(expandMetadata="*")["other"] == long


# ------------------------------------------------------------------ paging


def page_through(client: httpx.Client, limit: int, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        response = client.get(OBSERVATIONS, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["data"])
        cursor = body["meta"].get("cursor")
        if cursor is None:
            return items


def test_paging_returns_every_row_once_in_order(client: httpx.Client) -> None:
    # Three spans share each millisecond, so the id breaks the ties.
    ingest(client, [span(i, T0 + i // 3) for i in range(1, 301)])
    items = page_through(client, 7)
    assert [int(item["id"], 16) for item in items] == list(range(300, 0, -1))
    last = client.get(OBSERVATIONS, params={"limit": 300}).json()
    assert len(last["data"]) == 300 and last["meta"] == {}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"filter": json.dumps([tag_filter("any of", ["even"])])},  # walks observation_tags
        {"filter": json.dumps([tag_filter("any of", ["even", "never"])])},
        {"isRootObservation": "true"},
    ],
    ids=["all", "one-tag", "two-tags", "roots"],
)
def test_paging_neither_skips_nor_repeats_while_newer_spans_arrive(
    client: httpx.Client, emulator: LiveEmulator, extra: dict[str, str]
) -> None:
    initial = 1200

    def make(i: int, start_ms: int) -> dict[str, Any]:
        return span(
            i, start_ms, trace=i % 7 + 1, langfuse__trace__tags=["even" if i % 2 == 0 else "odd"]
        )

    ingest(client, [make(i, T0 + i // 4) for i in range(1, initial + 1)])
    expected = list(range(initial, 0, -1))
    if "filter" in extra:
        expected = [i for i in expected if i % 2 == 0]

    first = client.get(OBSERVATIONS, params={"limit": 40, **extra}).json()
    seen = [int(item["id"], 16) for item in first["data"]]
    cursor = first["meta"]["cursor"]

    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        next_id = 10_000_000
        with emulator.client() as other:
            while not stop.is_set():
                batch = [make(next_id + k, T0 + 1_000_000 + next_id + k) for k in range(25)]
                ingest(other, batch)
                written.extend(range(next_id, next_id + 25))
                next_id += 25

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while cursor is not None:
            query = {"limit": 40, "cursor": cursor, **extra}
            page = client.get(OBSERVATIONS, params=query).json()
            seen.extend(int(item["id"], 16) for item in page["data"])
            cursor = page["meta"].get("cursor")
    finally:
        stop.set()
        thread.join(timeout=30)

    assert written, "no spans arrived while paging"
    assert len(seen) == len(set(seen)), "a row was served twice"
    assert seen == expected
    newest = ids(client, limit=len(written))
    assert set(newest) == set(written)  # the newcomers are there, on top


def test_cursor_is_url_safe_and_standard_base64_works_too(client: httpx.Client) -> None:
    ingest(client, [span(i, T0 + i) for i in range(1, 4)])
    cursor = client.get(OBSERVATIONS, params={"limit": 1}).json()["meta"]["cursor"]
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    standard = cursor.replace("-", "+").replace("_", "/") + "=" * (-len(cursor) % 4)
    for form in (cursor, standard):
        page = client.get(OBSERVATIONS, params={"limit": 1, "cursor": form}).json()
        assert [int(item["id"], 16) for item in page["data"]] == [2]
