"""The sandbox judge against a live Langfuse emulator: it scores each finished trace
once, only after the delay, with seeded noise kept inside [0, 1]."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langfuse import Langfuse, propagate_attributes
from langfuse.types import SpanLevel
from opentelemetry.sdk.trace import TracerProvider

from coalmine.demo.evaluator import Evaluator, EvaluatorSettings, main
from coalmine.shared.conventions import trace_tags
from policies.domain import Arm
from tests.emulator.emulator_support import LiveEmulator, langfuse_client

DELAY = 300.0
"""Long enough that the generations of a test have surely not aged past it by itself."""


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator, tracer_provider=TracerProvider()) as client:
        yield client


@pytest.fixture
def http(emulator: LiveEmulator) -> Iterator[httpx.Client]:
    with emulator.client() as client:
        yield client


def record(langfuse: Langfuse, *qualities: float | None, level: SpanLevel | None = None) -> str:
    """One traced request with a generation per quality (None: no quality recorded)."""
    with (
        propagate_attributes(tags=trace_tags("support-agent", Arm.CANARY)),
        langfuse.start_as_current_observation(name="request"),
    ):
        for quality in qualities:
            metadata = None if quality is None else {"quality": quality}
            with langfuse.start_as_current_observation(
                name="llm",
                as_type="generation",
                metadata=metadata,
                level=level,
            ):
                pass
        trace_id = langfuse.get_current_trace_id()
    assert trace_id is not None
    return trace_id


def scores(http: httpx.Client) -> list[dict[str, Any]]:
    """The helpfulness scores stored, each with its trace id as ``traceId``."""
    params: dict[str, str | int] = {"name": "helpfulness", "limit": 100, "fields": "subject"}
    response = http.get("/api/public/v3/scores", params=params)
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    for score in data:
        assert score["subject"]["kind"] == "trace"
        score["traceId"] = score["subject"]["id"]
    return data


def test_each_finished_trace_is_scored_once_after_the_delay(
    langfuse: Langfuse, http: httpx.Client
) -> None:
    traces = [record(langfuse, quality) for quality in (0.9, 0.5, 0.2)]
    langfuse.flush()
    now = time.time()
    evaluator = Evaluator(http, EvaluatorSettings(delay_seconds=DELAY, noise=0.1, seed=1))

    assert evaluator.run_once(now) == []  # not finished long enough ago
    assert scores(http) == []

    judged = evaluator.run_once(now + DELAY + 1)
    assert sorted(j.trace_id for j in judged) == sorted(traces)
    by_trace = {j.trace_id: j for j in judged}
    for trace_id, quality in zip(traces, (0.9, 0.5, 0.2), strict=True):
        assert by_trace[trace_id].quality == pytest.approx(quality)
        assert 0.0 <= by_trace[trace_id].value <= 1.0
    assert evaluator.run_once(now + DELAY + 60) == []

    stored = scores(http)
    assert sorted(s["traceId"] for s in stored) == sorted(traces)
    for score in stored:
        assert score["dataType"] == "NUMERIC"
        assert score["value"] == pytest.approx(by_trace[score["traceId"]].value)


def test_the_noise_is_seeded_per_trace(langfuse: Langfuse, http: httpx.Client) -> None:
    first, second = (
        Evaluator(http, EvaluatorSettings(seed=1)),
        Evaluator(http, EvaluatorSettings(seed=1)),
    )
    other = Evaluator(http, EvaluatorSettings(seed=2))
    ids = [f"{n:032x}" for n in range(1, 6)]
    values = [first.judge(t, 0.6).value for t in ids]
    assert values == [second.judge(t, 0.6).value for t in reversed(ids)][::-1]
    assert values != [other.judge(t, 0.6).value for t in ids]
    assert len(set(values)) == len(values)


def test_the_noise_has_the_asked_spread_and_stays_in_bounds(http: httpx.Client) -> None:
    evaluator = Evaluator(http, EvaluatorSettings(noise=0.1, seed=7))
    ids = [f"{n:032x}" for n in range(1, 2001)]
    middle = [evaluator.judge(t, 0.5).value - 0.5 for t in ids]
    assert statistics.mean(middle) == pytest.approx(0.0, abs=0.01)
    assert statistics.stdev(middle) == pytest.approx(0.1, abs=0.01)
    top = [evaluator.judge(t, 0.98).value for t in ids]
    bottom = [evaluator.judge(t, 0.02).value for t in ids]
    assert max(top) == 1.0 and min(bottom) == 0.0
    assert all(0.0 <= value <= 1.0 for value in top + bottom)
    exact = Evaluator(http, EvaluatorSettings(noise=0.0))
    assert exact.judge(ids[0], 0.42).value == 0.42


def test_only_answers_with_a_quality_are_scored(langfuse: Langfuse, http: httpx.Client) -> None:
    two = record(langfuse, 0.8, 0.4)
    record(langfuse, None)
    record(langfuse, None, level="ERROR")
    langfuse.flush()
    evaluator = Evaluator(http, EvaluatorSettings(delay_seconds=DELAY, noise=0.0))
    [judgement] = evaluator.run_once(time.time() + DELAY + 1)
    assert judgement.trace_id == two
    assert judgement.value == pytest.approx(0.6)  # the mean of its answers


def test_a_refused_post_is_retried_and_a_restart_scores_nothing_twice(
    langfuse: Langfuse, http: httpx.Client
) -> None:
    trace_id = record(langfuse, 0.7)
    langfuse.flush()
    later = time.time() + DELAY + 1
    settings = EvaluatorSettings(delay_seconds=DELAY, noise=0.1, seed=3)
    fault = http.post(
        "/emulator/faults", json={"spec": "POST:/api/public/scores=status:503,times:1"}
    )
    assert fault.status_code == 201

    evaluator = Evaluator(http, settings)
    with pytest.raises(httpx.HTTPStatusError):
        evaluator.run_once(later)
    assert evaluator.scored == {}
    [judgement] = evaluator.run_once(later)

    restarted = Evaluator(http, settings)
    assert restarted.run_once(later) == [judgement]  # same id: the score replaces itself
    [stored] = scores(http)
    assert stored["traceId"] == trace_id and stored["value"] == pytest.approx(judgement.value)


def test_traces_out_of_the_window_are_forgotten(langfuse: Langfuse, http: httpx.Client) -> None:
    record(langfuse, 0.7)
    langfuse.flush()
    settings = EvaluatorSettings(delay_seconds=DELAY, lookback_seconds=3600.0)
    evaluator = Evaluator(http, settings)
    now = time.time() + DELAY + 1
    assert len(evaluator.run_once(now)) == 1
    assert len(evaluator.scored) == 1
    assert evaluator.run_once(now + 3600 + DELAY + 1) == []  # the trace is out of the window
    assert evaluator.scored == {}


def test_the_command_polls_once(
    langfuse: Langfuse,
    http: httpx.Client,
    emulator: LiveEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trace_id = record(langfuse, 0.9)
    langfuse.flush()
    monkeypatch.setenv("LANGFUSE_BASE_URL", emulator.base_url)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", emulator.settings.public_key)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", emulator.settings.secret_key)
    assert main(["--delay-seconds", "0", "--noise", "0.1", "--seed", "1", "--once"]) == 0
    assert [s["traceId"] for s in scores(http)] == [trace_id]


def test_the_command_needs_the_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("LANGFUSE_BASE_URL", "LANGFUSE_HOST", "LANGFUSE_PUBLIC_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--once"]) == 2
    assert "LANGFUSE_PUBLIC_KEY" in capsys.readouterr().err
