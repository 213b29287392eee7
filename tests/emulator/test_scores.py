"""Scores: creating one or a list (POST /scores), reading them back (GET /v3/scores).

Every response here is also checked against the Langfuse spec by the fixtures; the list
form's 202 and 207 answers, which the 4.16 spec does not describe, are checked here.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from coalmine.emulator.compat import difference
from tests.emulator.emulator_support import LiveEmulator

SCORES = "/api/public/scores"
V3 = "/api/public/v3/scores"
TRACE = "0af7651916cd43dd8448eb211c80319c"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create(client: httpx.Client, **score: Any) -> str:
    score.setdefault("traceId", TRACE)
    response = client.post(SCORES, json=score)
    assert response.status_code == 200, response.text
    score_id = response.json()["id"]
    assert isinstance(score_id, str)
    return score_id


def read(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get(V3, params=params)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def ids(client: httpx.Client, **params: Any) -> set[str]:
    return {score["id"] for score in read(client, **params)}


# ---------------------------------------------------------------------------- create


def test_one_score_is_answered_with_its_id_and_defaults_are_filled(
    client: httpx.Client,
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    score_id = create(client, name="helpfulness", value=0.75)

    [score] = read(client, fields="details,subject,annotation")
    assert score["id"] == score_id
    assert score["dataType"] == "NUMERIC"
    assert score["value"] == 0.75
    assert score["source"] == "API"
    assert score["environment"] == "default"
    assert score["projectId"] == "coalmine-local"
    assert score["subject"] == {"kind": "trace", "id": TRACE}
    assert score["metadata"] == {}
    assert score["comment"] is None and score["authorUserId"] is None
    stamp = datetime.fromisoformat(score["timestamp"])
    assert before <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert score["timestamp"].endswith("Z") and score["createdAt"] == score["updatedAt"]


def test_list_of_valid_scores_is_answered_202_accepted(client: httpx.Client) -> None:
    batch = [
        {"name": "accuracy", "value": 0.9, "traceId": TRACE},
        {"name": "helpful", "value": 1, "dataType": "BOOLEAN", "traceId": TRACE},
        {"name": "tone", "value": "friendly", "sessionId": "session-1"},
    ]
    response = client.post(SCORES, json=batch)
    assert response.status_code == 202
    assert response.json() == {"message": "Accepted"}
    assert difference("post", SCORES, 202) is not None
    assert {s["name"] for s in read(client)} == {"accuracy", "helpful", "tone"}


def test_list_with_invalid_scores_is_answered_207_and_keeps_the_valid_ones(
    client: httpx.Client,
) -> None:
    batch = [
        {"id": "good-1", "name": "accuracy", "value": 0.9, "traceId": TRACE},
        {"id": "bad-bool", "name": "helpful", "value": 2, "dataType": "BOOLEAN", "traceId": TRACE},
        {"id": "good-2", "name": "tone", "value": "calm", "traceId": TRACE},
        {"id": "bad-subject", "name": "orphan", "value": 1},
    ]
    response = client.post(SCORES, json=batch)
    assert response.status_code == 207
    body = response.json()
    assert set(body) == {"accepted", "rejected", "errors"}
    assert (body["accepted"], body["rejected"]) == (2, 2)
    messages = [error["message"] for error in body["errors"]]
    assert all(set(error) == {"message"} for error in body["errors"])
    assert "index 1 (id bad-bool)" in messages[0] and "0 or 1" in messages[0]
    assert "index 3 (id bad-subject)" in messages[1] and "exactly one" in messages[1]
    assert difference("post", SCORES, 207) is not None
    assert ids(client) == {"good-1", "good-2"}


def test_an_empty_list_is_refused(client: httpx.Client) -> None:
    response = client.post(SCORES, json=[])
    assert response.status_code == 400


def test_a_body_that_is_not_json_is_refused_as_next_js_does(client: httpx.Client) -> None:
    for body in (b"{nope", b'{"name": "n", "value": NaN, "traceId": "t"}'):
        response = client.post(SCORES, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.text == "Invalid JSON"


SUBJECT = ["traceId", "sessionId", "datasetRunId", "observationId"]


def trace_score(**fields: Any) -> dict[str, Any]:
    """A valid trace score with some fields changed; None removes a field."""
    body = {"name": "n", "value": 1, "traceId": TRACE, **fields}
    return {key: value for key, value in body.items() if value is not None}


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        (trace_score(name=None), ["name"], "string"),
        (trace_score(name=""), ["name"], ">=1"),
        (trace_score(value=None), ["value"], "required"),
        (trace_score(value=True), ["value"], "expected string"),
        (trace_score(value="x", dataType="NUMERIC"), ["value"], "number"),
        (trace_score(value=0.5, dataType="BOOLEAN"), ["value"], "0 or 1"),
        (trace_score(value=3, dataType="CATEGORICAL"), ["value"], "string"),
        (trace_score(value="", dataType="TEXT"), ["value"], "500"),
        (trace_score(value="x" * 501, dataType="TEXT"), ["value"], "500"),
        (trace_score(dataType="PERCENT"), ["dataType"], "one of"),
        (trace_score(source="EVAL"), ["source"], "reserved"),
        (trace_score(source="HUMAN"), ["source"], "API"),
        (trace_score(source="ANNOTATION"), ["configId"], "need"),
        (trace_score(environment="Prod"), ["environment"], "lower"),
        (trace_score(environment="langfuse-x"), ["environment"], "langfuse"),
        (trace_score(traceId=None), SUBJECT, "exactly one"),
        (trace_score(sessionId="s"), SUBJECT, "exactly one"),
        (trace_score(traceId=None, sessionId="s", observationId="o"), SUBJECT, "requires traceId"),
        (trace_score(timestamp="2026-10-01T10:00:00"), ["timestamp"], "offset"),
        (trace_score(comment=5), ["comment"], "string"),
    ],
)
def test_invalid_scores_are_refused_with_zod_shaped_issues(
    client: httpx.Client, body: dict[str, Any], path: list[str], fragment: str
) -> None:
    response = client.post(SCORES, json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["message"] == "Invalid request data"
    matching = [problem for problem in answer["error"] if problem["path"] == path]
    assert matching, answer["error"]
    assert fragment in matching[0]["message"]
    assert read(client) == []


def test_each_data_type_reads_back_with_its_typed_value(client: httpx.Client) -> None:
    create(client, id="n", name="accuracy", value=0.25)
    create(client, id="t", name="helpful", value=1, dataType="BOOLEAN")
    create(client, id="f", name="helpful", value=0.0, dataType="BOOLEAN")
    create(client, id="c", name="tone", value="friendly")
    create(client, id="x", name="critique", value="Too long.", dataType="TEXT")
    create(client, id="k", name="ignored", value="Better answer", dataType="CORRECTION")

    scores = {score["id"]: score for score in read(client)}
    assert {i: (s["dataType"], s["value"]) for i, s in scores.items()} == {
        "n": ("NUMERIC", 0.25),
        "t": ("BOOLEAN", True),
        "f": ("BOOLEAN", False),
        "c": ("CATEGORICAL", "friendly"),
        "x": ("TEXT", "Too long."),
        "k": ("CORRECTION", "Better answer"),
    }
    assert scores["k"]["name"] == "output"  # corrections are always named "output"


def test_bearer_public_key_may_create_scores_but_not_read_them(emulator: LiveEmulator) -> None:
    bearer = {"authorization": f"Bearer {emulator.settings.public_key}"}
    with httpx.Client(base_url=emulator.base_url, headers=bearer) as http:
        created = http.post(SCORES, json={"name": "n", "value": 1, "traceId": TRACE})
        assert created.status_code == 200
        assert http.get(V3).status_code == 401
    with httpx.Client(base_url=emulator.base_url) as anonymous:
        assert anonymous.post(SCORES, json={"name": "n", "value": 1}).status_code == 401


def test_a_score_sent_again_with_its_id_replaces_the_stored_one(client: httpx.Client) -> None:
    create(client, id="same", name="accuracy", value=0.1, comment="first")
    [first] = read(client, fields="details")
    time.sleep(0.005)
    create(client, id="same", name="accuracy", value=0.9, comment="second")

    [second] = read(client, fields="details")
    assert (second["value"], second["comment"]) == (0.9, "second")
    assert second["createdAt"] == first["createdAt"]
    assert second["updatedAt"] > first["updatedAt"]


# ---------------------------------------------------------------------------- read


@pytest.fixture
def catalogue(client: httpx.Client) -> datetime:
    """A varied set of scores; returns the earliest timestamp."""
    t0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
    scores = [
        {"id": "a", "name": "accuracy", "value": 0.2, "traceId": "t1", "environment": "prod"},
        {"id": "b", "name": "accuracy", "value": 0.8, "traceId": "t2", "configId": "cfg-1"},
        {"id": "c", "name": "helpful", "value": 1, "dataType": "BOOLEAN", "traceId": "t1"},
        {"id": "d", "name": "helpful", "value": 0, "dataType": "BOOLEAN", "traceId": "t2"},
        {"id": "e", "name": "tone", "value": "calm", "sessionId": "s1", "queueId": "q1"},
        {"id": "f", "name": "tone", "value": "harsh", "datasetRunId": "run-1"},
        {"id": "g", "name": "latency-ok", "value": 0.5, "traceId": "t1", "observationId": "o1"},
        {
            "id": "h",
            "name": "review",
            "value": 3,
            "traceId": "t3",
            "source": "ANNOTATION",
            "configId": "cfg-2",
        },
    ]
    for offset, score in enumerate(scores):
        score["timestamp"] = iso(t0 + timedelta(minutes=offset))
        assert client.post(SCORES, json=score).status_code == 200
    return t0


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "abcdefgh"),
        ({"id": "a,c,zz"}, "ac"),
        ({"name": "accuracy,tone"}, "abef"),
        ({"source": "annotation"}, "h"),
        ({"source": "API,EVAL"}, "abcdefg"),
        ({"dataType": "boolean"}, "cd"),
        ({"dataType": "NUMERIC,CATEGORICAL"}, "abefgh"),
        ({"environment": "prod"}, "a"),
        ({"environment": "default"}, "bcdefgh"),
        ({"configId": "cfg-1,cfg-2"}, "bh"),
        ({"queueId": "q1"}, "e"),
        ({"authorUserId": "someone"}, ""),
        ({"traceId": "t1"}, "acg"),
        ({"traceId": "t1,t2", "name": "helpful"}, "cd"),
        ({"traceId": "t1", "observationId": "o1"}, "g"),
        ({"sessionId": "s1"}, "e"),
        ({"experimentId": "run-1"}, "f"),
        ({"dataType": "NUMERIC", "value": "0.2,3"}, "ah"),
        ({"dataType": "BOOLEAN", "value": "true"}, "c"),
        ({"dataType": "BOOLEAN", "value": "false"}, "d"),
        ({"dataType": "CATEGORICAL", "value": "harsh"}, "f"),
        ({"dataType": "NUMERIC", "valueMin": "0.5"}, "bgh"),
        ({"dataType": "NUMERIC", "valueMin": "0.2", "valueMax": "0.5"}, "ag"),
        ({"fromTimestamp": "2026-10-01T12:02:00Z"}, "cdefgh"),
        ({"toTimestamp": "2026-10-01T12:02:00.000Z"}, "ab"),
        ({"fromTimestamp": "2026-10-01T14:01+02:00", "toTimestamp": "2026-10-01T12:03Z"}, "bc"),
        ({"name": "accuracy", "environment": "prod,default", "traceId": "t2"}, "b"),
    ],
)
def test_filters_or_within_a_parameter_and_across_parameters(
    client: httpx.Client, catalogue: datetime, params: dict[str, str], expected: str
) -> None:
    assert ids(client, **params) == set(expected)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"traceTags": "canary"}, "traceTags filter requires a trace JOIN and is not supported"),
        ({"userId": "u1"}, "userId filter requires a trace JOIN and is not supported in v3"),
        ({"limit": "101"}, "<=100"),
        ({"limit": "0"}, ">0"),
        ({"limit": "ten"}, "expected int"),
        ({"value": "1"}, "value filter requires a single dataType"),
        ({"value": "1", "dataType": "TEXT"}, 'got "TEXT"'),
        ({"value": "yes", "dataType": "BOOLEAN"}, '"true" or "false"'),
        ({"value": "abc", "dataType": "NUMERIC"}, "finite number"),
        ({"valueMin": "1", "dataType": "CATEGORICAL"}, "require dataType=NUMERIC"),
        ({"valueMax": "1"}, "require dataType=NUMERIC"),
        ({"valueMin": "low", "dataType": "NUMERIC"}, "expected number"),
        ({"observationId": "o1"}, "requires traceId"),
        ({"traceId": "t1", "sessionId": "s1"}, "At most one of traceId, sessionId, experimentId"),
        ({"dataType": "PERCENT"}, 'Invalid dataType value: "PERCENT"'),
        ({"source": "HUMAN"}, 'Invalid source value: "HUMAN"'),
        ({"fields": "details,trace"}, "Invalid option"),
        ({"fromTimestamp": "yesterday"}, "expected date"),
        ({"pageSize": "3"}, 'Unrecognized key: "pageSize"'),
    ],
)
def test_requests_langfuse_refuses_are_answered_400(
    client: httpx.Client, params: dict[str, str], fragment: str
) -> None:
    response = client.get(V3, params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["message"] == "Invalid request data"
    assert any(fragment in problem["message"] for problem in body["error"]), body


def test_a_cursor_that_is_not_one_is_refused(client: httpx.Client) -> None:
    response = client.get(V3, params={"cursor": "%%%not-base64"})
    assert response.status_code == 400
    assert response.json() == {"message": "Invalid cursor format", "error": "InvalidRequestError"}
    foreign = base64.urlsafe_b64encode(json.dumps({"page": 2}).encode()).decode()
    assert client.get(V3, params={"cursor": foreign}).status_code == 400


def test_field_groups_add_details_subject_and_annotation(
    client: httpx.Client, catalogue: datetime
) -> None:
    core = {"id", "projectId", "name", "dataType", "value", "source", "timestamp"}
    core |= {"environment", "createdAt", "updatedAt"}
    [plain] = read(client, id="b")
    assert set(plain) == core

    [detailed] = read(client, id="b", fields="details")
    assert set(detailed) == core | {"comment", "configId", "metadata"}
    assert detailed["configId"] == "cfg-1"

    [annotated] = read(client, id="e", fields="annotation")
    assert set(annotated) == core | {"authorUserId", "queueId"}
    assert annotated["queueId"] == "q1"

    subjects = {s["id"]: s["subject"] for s in read(client, fields="subject,core")}
    assert subjects["a"] == {"kind": "trace", "id": "t1"}
    assert subjects["g"] == {"kind": "observation", "id": "o1", "traceId": "t1"}
    assert subjects["e"] == {"kind": "session", "id": "s1"}
    assert subjects["f"] == {"kind": "experiment", "id": "run-1"}


def test_metadata_is_kept_as_an_object(client: httpx.Client) -> None:
    create(client, id="m1", name="n", value=1, metadata={"judge": "gpt", "run": 3})
    create(client, id="m2", name="n", value=1, metadata="free text")
    scores = {s["id"]: s["metadata"] for s in read(client, fields="details")}
    assert scores == {"m1": {"judge": "gpt", "run": 3}, "m2": {"metadata": "free text"}}


def test_default_page_is_50_newest_first(client: httpx.Client) -> None:
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    batch = [
        trace_score(id=f"s{i:03d}", value=i, timestamp=iso(t0 + timedelta(seconds=i)))
        for i in range(60)
    ]
    assert client.post(SCORES, json=batch).status_code == 202
    response = client.get(V3)
    body = response.json()
    assert body["meta"]["limit"] == 50 and "cursor" in body["meta"]
    assert [s["id"] for s in body["data"]] == [f"s{i:03d}" for i in range(59, 9, -1)]
    last = client.get(V3, params={"cursor": body["meta"]["cursor"]}).json()
    assert [s["id"] for s in last["data"]] == [f"s{i:03d}" for i in range(9, -1, -1)]
    assert last["meta"] == {"limit": 50}


def test_paging_neither_skips_nor_repeats_while_newer_scores_arrive(
    emulator: LiveEmulator, client: httpx.Client
) -> None:
    # 150 scores over 50 distinct timestamps: ties are broken by id.
    t0 = datetime.now(UTC) - timedelta(hours=1)
    batch = [
        trace_score(id=f"old-{i:03d}", value=i, timestamp=iso(t0 + timedelta(seconds=i // 3)))
        for i in range(150)
    ]
    assert client.post(SCORES, json=batch).status_code == 202

    stop = threading.Event()
    inserted: list[str] = []

    def keep_inserting() -> None:
        with emulator.client() as writer:
            while not stop.is_set():
                score_id = f"new-{len(inserted):04d}"
                body = {"id": score_id, "name": "n", "value": 1, "traceId": TRACE}
                assert writer.post(SCORES, json=body).status_code == 200
                inserted.append(score_id)

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    try:
        while len(inserted) < 3:
            time.sleep(0.005)
        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(100):
            params: dict[str, Any] = {"limit": 7, "name": "n"}
            if cursor:
                params["cursor"] = cursor
            body = client.get(V3, params=params).json()
            seen.extend(body["data"])
            cursor = body["meta"].get("cursor")
            if cursor is None:
                break
    finally:
        stop.set()
        writer.join(timeout=10)

    assert len(inserted) > 3
    old = [s["id"] for s in seen if s["id"].startswith("old-")]
    assert len(old) == len(set(old)) == 150
    keys = [(s["timestamp"], s["id"]) for s in seen]
    assert keys == sorted(keys, reverse=True)
    assert len(seen) == len({s["id"] for s in seen})
