"""Langfuse Cloud rate limits: buckets, fixed windows, 429 with headers; none by default."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from coalmine.emulator.ratelimit import (
    ANNOTATION_QUEUES,
    DATASETS,
    INGESTION,
    PROMPTS,
    PUBLIC_API,
    PUBLIC_API_LEGACY,
    PUBLIC_API_METRICS,
    PUBLIC_API_V2_METRICS,
    RateLimiter,
    bucket_of,
)
from coalmine.emulator.settings import EmulatorSettings, Plan
from tests.emulator.emulator_support import LiveEmulator, start_emulator

VERSION_1 = "/api/public/v2/prompts/p/versions/1"
JS_DATE = re.compile(
    r"^[A-Z][a-z]{2} [A-Z][a-z]{2} \d{2} \d{4} \d{2}:\d{2}:\d{2} GMT\+0000 "
    r"\(Coordinated Universal Time\)$"
)


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hobby(clock: FakeClock) -> Iterator[LiveEmulator]:
    live = start_emulator(EmulatorSettings(plan=Plan.HOBBY), clock=clock)
    try:
        yield live
    finally:
        live.stop()
    assert not live.checked.violations, "\n".join(live.checked.violations)


def label_moves(http: httpx.Client, count: int) -> list[httpx.Response]:
    return [http.patch(VERSION_1, json={"newLabels": ["production"]}) for _ in range(count)]


def test_hobby_public_api_allows_30_a_minute_then_429s(
    hobby: LiveEmulator, clock: FakeClock
) -> None:
    with hobby.client() as http:
        assert (
            http.post("/api/public/v2/prompts", json={"name": "p", "prompt": "x"}).status_code
            == 201
        )
        allowed = label_moves(http, 30)
        assert {response.status_code for response in allowed} == {200}
        assert "x-ratelimit-limit" not in allowed[0].headers  # as on Langfuse: only on 429
        [limited] = label_moves(http, 1)
        assert limited.status_code == 429
        assert limited.text == "429 - rate limit exceeded"
        assert limited.headers["retry-after"] == "60"
        assert limited.headers["x-ratelimit-limit"] == "30"
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert JS_DATE.match(limited.headers["x-ratelimit-reset"])

        clock.advance(59.5)
        [still] = label_moves(http, 1)
        assert (still.status_code, still.headers["retry-after"]) == (429, "1")
        clock.advance(0.5)
        assert label_moves(http, 1)[0].status_code == 200


def test_prompt_fetches_are_never_limited(hobby: LiveEmulator) -> None:
    with hobby.client() as http:
        http.post(
            "/api/public/v2/prompts", json={"name": "p", "prompt": "x", "labels": ["production"]}
        )
        codes = {http.get("/api/public/v2/prompts/p").status_code for _ in range(60)}
    assert codes == {200}


def test_requests_with_bad_keys_are_not_counted(hobby: LiveEmulator) -> None:
    with httpx.Client(base_url=hobby.base_url) as anonymous:
        codes = {anonymous.patch(VERSION_1, json={"newLabels": []}).status_code for _ in range(35)}
    assert codes == {401}
    with hobby.client() as http:
        assert label_moves(http, 1)[0].status_code == 404


def test_no_limits_without_a_plan(client: httpx.Client) -> None:
    client.post("/api/public/v2/prompts", json={"name": "p", "prompt": "x"})
    codes = {response.status_code for response in label_moves(client, 40)}
    assert codes == {200}


@pytest.mark.parametrize(
    ("method", "path", "bucket"),
    [
        ("POST", "/api/public/otel/v1/traces", INGESTION),
        ("POST", "/api/public/ingestion", INGESTION),
        ("GET", "/api/public/v2/prompts", PROMPTS),
        ("POST", "/api/public/v2/prompts", PROMPTS),
        ("GET", "/api/public/v2/prompts/a/b", PROMPTS),
        ("DELETE", "/api/public/v2/prompts/p", PROMPTS),
        ("PATCH", "/api/public/v2/prompts/p/versions/2", PUBLIC_API),
        ("GET", "/api/public/v2/metrics", PUBLIC_API_V2_METRICS),
        ("GET", "/api/public/metrics", PUBLIC_API_METRICS),
        ("GET", "/api/public/traces", PUBLIC_API_LEGACY),
        ("GET", "/api/public/observations", PUBLIC_API_LEGACY),
        ("GET", "/api/public/v2/observations", PUBLIC_API),
        ("GET", "/api/public/v3/scores", PUBLIC_API),
        ("POST", "/api/public/scores", PUBLIC_API),
        ("GET", "/api/public/health", None),
        ("POST", "/emulator/faults", None),
        ("POST", "/api/public/v2/datasets", DATASETS),
        ("GET", "/api/public/datasets/golden/runs", DATASETS),
        ("POST", "/api/public/dataset-items", DATASETS),
        ("POST", "/api/public/dataset-run-items", DATASETS),
        ("GET", "/api/public/annotation-queues/q1/items", ANNOTATION_QUEUES),
        ("GET", "/api/public/experiments", PUBLIC_API),
        ("GET", "/api/public/experiment-items", PUBLIC_API),
        ("POST", "/api/public/score-configs", PUBLIC_API),
    ],
)
def test_buckets_follow_from_method_and_path(method: str, path: str, bucket: str | None) -> None:
    assert bucket_of(method, path) == bucket


@pytest.mark.parametrize(
    ("plan", "bucket", "points", "window"),
    [
        (Plan.HOBBY, PUBLIC_API_V2_METRICS, 100, 86_400),
        (Plan.CORE, PUBLIC_API_V2_METRICS, 100, 3_600),
        (Plan.PRO, PUBLIC_API_V2_METRICS, 500, 3_600),
        (Plan.HOBBY, INGESTION, 1_000, 60),
        (Plan.CORE, PUBLIC_API, 100, 60),
        (Plan.PRO, PUBLIC_API, 1_000, 60),
    ],
)
def test_fixed_windows_per_plan_and_bucket(
    clock: FakeClock, plan: Plan, bucket: str, points: int, window: int
) -> None:
    limiter = RateLimiter(plan, clock)
    verdicts = [limiter.consume(bucket) for _ in range(points + 1)]
    assert not any(verdict.limited for verdict in verdicts[:-1] if verdict)
    last = verdicts[-1]
    assert last is not None and last.limited
    assert (last.points, last.remaining, last.seconds_to_reset) == (points, 0, window)
    clock.advance(window)
    fresh = limiter.consume(bucket)
    assert fresh is not None and not fresh.limited and fresh.remaining == points - 1
    assert limiter.consume(PROMPTS) is None
    assert RateLimiter(None, clock).consume(bucket) is None
