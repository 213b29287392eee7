"""What sampled score reads rely on: ``GET /v3/scores`` takes ``traceId`` as a
comma-separated list (the spec's wording; the server splits on commas, trims, and drops
empty parts: ``GetScoresQueryV3``), ANDed with ``name``; and ``GET /v2/observations``
ANDs two tag conditions of its ``filter`` (the server's ``FilterList`` joins every
condition with AND)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from langfuse import Langfuse

from tests.emulator.emulator_support import LiveEmulator, langfuse_client, sdk_emulator_settings
from tests.emulator.test_observations import T0, ids, ingest, span, tag_filter

SCORES = "/api/public/scores"
V3_SCORES = "/api/public/v3/scores"
TRACES = [f"{n:032x}" for n in range(1, 5)]


def _post_scores(client: httpx.Client) -> None:
    scores = [
        {"id": f"{name}-{n}", "name": name, "value": n / 10, "traceId": trace}
        for n, trace in enumerate(TRACES, start=1)
        for name in ("helpfulness", "resolved", "tone")
    ]
    assert client.post(SCORES, json=scores).status_code == 202


def _ids(client: httpx.Client, **params: str) -> set[str]:
    response = client.get(V3_SCORES, params={"limit": "100", **params})
    assert response.status_code == 200, response.text
    return {score["id"] for score in response.json()["data"]}


def test_trace_ids_as_a_comma_separated_list(client: httpx.Client) -> None:
    _post_scores(client)
    assert _ids(client, traceId=f"{TRACES[0]},{TRACES[2]}", name="helpfulness,resolved") == {
        "helpfulness-1",
        "resolved-1",
        "helpfulness-3",
        "resolved-3",
    }
    # parts are trimmed and empty parts dropped, as the server's zod transform does
    assert _ids(client, traceId=f" {TRACES[1]} ,,{TRACES[3]},", name="tone") == {
        "tone-2",
        "tone-4",
    }
    assert _ids(client, traceId="f" * 32) == set()


def test_a_list_of_trace_ids_pages_like_any_filter(client: httpx.Client) -> None:
    _post_scores(client)
    seen: list[str] = []
    params = {"traceId": ",".join(TRACES[:3]), "limit": "4", "fields": "subject"}
    while True:
        body = client.get(V3_SCORES, params=params).json()
        seen += [score["id"] for score in body["data"]]
        assert {score["subject"]["id"] for score in body["data"]} <= set(TRACES[:3])
        if "cursor" not in body["meta"]:
            break
        params["cursor"] = body["meta"]["cursor"]
    assert len(seen) == len(set(seen)) == 9


@pytest.fixture
def sdk(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator) as langfuse:
        yield langfuse


emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)


def test_the_sdk_reads_scores_of_a_list_of_traces(sdk: Langfuse) -> None:
    for n, trace in enumerate(TRACES, start=1):
        sdk.create_score(name="helpfulness", value=n / 10, trace_id=trace)
    sdk.flush()
    page = sdk.api.scores.get_many(trace_id=",".join(TRACES[1:3]), fields="subject")
    assert sorted(score.value for score in page.data) == [0.2, 0.3]


def test_two_tag_conditions_are_both_required(client: httpx.Client) -> None:
    ingest(
        client,
        [
            span(1, T0, trace=1, langfuse__trace__tags=["release:a", "sampled"]),
            span(2, T0 + 1, trace=2, langfuse__trace__tags=["release:a"]),
            span(3, T0 + 2, trace=3, langfuse__trace__tags=["release:b", "sampled"]),
            span(4, T0 + 3, trace=4, langfuse__trace__tags=["release:c", "sampled"]),
            span(5, T0 + 4, trace=5, langfuse__trace__tags=["sampled"]),
        ],
    )
    releases = tag_filter("any of", ["release:a", "release:b"])
    sampled = tag_filter("any of", ["sampled"])
    assert ids(client, filter=json.dumps([releases, sampled])) == [3, 1]
    assert ids(client, filter=json.dumps([sampled, releases])) == [3, 1]
    assert ids(client, filter=json.dumps([releases])) == [3, 2, 1]
