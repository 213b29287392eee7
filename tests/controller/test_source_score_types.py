"""Score types: a BOOLEAN score serves a numeric metric as 1/0 (written with the official
SDK, read back from the emulator, judged); a score whose type cannot serve its metric is
reported once (log, counter, health) instead of vanishing."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from controller.judge.evidence import metric_value
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource
from controller.source.score_types import ScoreTypeMismatch, serves
from policies.model import Policy, ScoreType
from tests.controller.source_support import (
    T0,
    FakeClock,
    live_emulator,
    policy,
    post_score,
    trace_id,
)
from tests.emulator.emulator_support import LiveEmulator, langfuse_client, sdk_emulator_settings

ALPHA = policy("alpha", scores=["helpfulness"])
KEY = ("alpha", "s-helpfulness")


def typed_policy(name: str, score: str, score_type: str, **extra: Any) -> Policy:
    metric = {
        "name": f"s-{score}",
        "source": "score",
        "score": score,
        "scoreType": score_type,
        "tolerance": 0.05,
        **extra,
    }
    return Policy.model_validate(
        {
            "apiVersion": "coalmine/v1",
            "kind": "Release",
            "name": name,
            "target": {"upstreams": {"stable": "http://127.0.0.1:9001"}},
            "steps": [{"weight": 10}],
            "analysis": {"metrics": [metric]},
        }
    )


@pytest.mark.parametrize(
    ("expected", "seen", "value", "served"),
    [
        (ScoreType.NUMERIC, "NUMERIC", 0.7, True),
        (ScoreType.NUMERIC, "BOOLEAN", 1.0, True),
        (ScoreType.NUMERIC, "BOOLEAN", 0.0, True),
        (ScoreType.NUMERIC, "CATEGORICAL", "good", False),
        (ScoreType.NUMERIC, "TEXT", "a long answer", False),
        (ScoreType.BOOLEAN, "BOOLEAN", 1.0, True),
        (ScoreType.BOOLEAN, "NUMERIC", 1.0, True),
        (ScoreType.BOOLEAN, "NUMERIC", 0.7, False),
        (ScoreType.BOOLEAN, "CATEGORICAL", "True", True),
        (ScoreType.BOOLEAN, "CATEGORICAL", "yes", False),
        (ScoreType.CATEGORICAL, "CATEGORICAL", "rude", True),
        (ScoreType.CATEGORICAL, "NUMERIC", 0.2, False),
        (ScoreType.CATEGORICAL, "BOOLEAN", 1.0, False),
    ],
)
def test_which_score_types_serve_which_metrics(
    expected: ScoreType, seen: str, value: float | str, served: bool
) -> None:
    assert serves(expected, seen, value) is served


@pytest.fixture
def source(emulator: LiveEmulator, clock: FakeClock) -> Iterator[LangfuseSource]:
    with LangfuseSource(
        emulator.base_url,
        emulator.settings.public_key,
        emulator.settings.secret_key,
        budget=RequestBudget(BudgetSettings(per_minute=1000), clock=clock),
        rng=random.Random(7),
    ) as made:
        yield made


def test_boolean_scores_from_the_sdk_are_judged_as_one_and_zero() -> None:
    releases = {"beta": policy("beta", scores=["resolved"])}  # scoreType left at numeric
    (metric,) = [m for m in releases["beta"].analysis.metrics if m.score == "resolved"]
    with live_emulator(sdk_emulator_settings()) as emulator:
        with langfuse_client(emulator) as langfuse:
            langfuse.create_score(
                name="resolved", value=1, trace_id=trace_id(1), data_type="BOOLEAN"
            )
            langfuse.create_score(
                name="resolved", value=0, trace_id=trace_id(2), data_type="BOOLEAN"
            )
        with LangfuseSource(
            emulator.base_url,
            emulator.settings.public_key,
            emulator.settings.secret_key,
            budget=RequestBudget(BudgetSettings(per_minute=100)),
        ) as source:
            now = time.time() + 5
            poll = source.poll(releases, None, now)
            health = source.health(now)
    assert poll.ok
    values = {score.trace_id: score.value for score in poll.scores}
    assert values == {trace_id(1): 1.0, trace_id(2): 0.0}
    assert all(type(value) is float for value in values.values())
    assert [metric_value(metric, values[trace_id(n)]) for n in (1, 2)] == [1.0, 0.0]
    assert health.score_type_mismatches == ()


def test_a_json_boolean_is_read_as_one_or_zero() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/observations"):
            return httpx.Response(200, json={"data": [], "meta": {}})
        rows = [
            {
                "id": f"score-{n}",
                "name": "helpfulness",
                "value": value,
                "timestamp": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "subject": {"kind": "trace", "id": trace_id(n)},
                **({"dataType": data_type} if data_type else {}),
            }
            for n, (value, data_type) in enumerate(
                [(True, "BOOLEAN"), (False, "BOOLEAN"), (1, "BOOLEAN"), (True, None)]
            )
        ]
        return httpx.Response(200, json={"data": rows, "meta": {}})

    with LangfuseSource(
        "http://langfuse.invalid",
        "pk-lf-test",
        "sk-lf-test",
        budget=RequestBudget(BudgetSettings(per_minute=100)),
        transport=httpx.MockTransport(answer),
    ) as source:
        poll = source.poll({"alpha": ALPHA}, None, T0 + 10)
        health = source.health(T0 + 10)
    values = [score.value for score in sorted(poll.scores, key=lambda s: s.score_id)]
    assert values == [1.0, 0.0, 1.0, 1.0]
    assert all(type(value) is float for value in values)  # not bool: numeric metrics take it
    assert health.score_type_mismatches == ()


def test_a_mismatch_is_reported_once_and_counted(
    http: httpx.Client, source: LangfuseSource, caplog: pytest.LogCaptureFixture
) -> None:
    now = T0 + 100
    post_score(http, "helpfulness", "good", at=now - 30, trace=1)  # CATEGORICAL
    post_score(http, "helpfulness", 0.75, at=now - 20, trace=2)  # serves the metric

    with caplog.at_level(logging.WARNING, logger="coalmine.controller.source"):
        first = source.poll({"alpha": ALPHA}, None, now)
        source.poll({"alpha": ALPHA}, first.cursors, now + 10)  # reads the first again
    warnings = [r.getMessage() for r in caplog.records if "score type mismatch" in r.getMessage()]
    assert warnings == [
        "release alpha: score type mismatch: metric s-helpfulness expects a numeric score, "
        "but Langfuse holds 'helpfulness' as CATEGORICAL (e.g. 'good'); 1 score left out of "
        "the judgement (set the metric's scoreType to categorical (with badValues), or fix "
        "what writes the score)"
    ]
    health = source.health(now + 10)
    assert health.score_type_mismatch_counts == {KEY: 1}
    assert health.score_type_mismatches == (
        ScoreTypeMismatch(
            release="alpha",
            metric="s-helpfulness",
            score="helpfulness",
            seen="CATEGORICAL",
            expected="numeric",
            example="'good'",
            first_seen=now,
            last_seen=now + 10,
            scores=1,
        ),
    )
    # the scores that can serve the metric are still read
    assert {score.value for score in first.scores} == {"good", 0.75}

    post_score(http, "helpfulness", "bad", at=now + 15, trace=3)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="coalmine.controller.source"):
        source.poll({"alpha": ALPHA}, first.cursors, now + 20)
    assert not [r for r in caplog.records if "score type mismatch" in r.getMessage()]
    assert source.health(now + 20).score_type_mismatch_counts == {KEY: 2}
    assert source.health(now + 20).score_type_mismatches[0].scores == 2


def test_a_mismatch_ends_with_the_rollout_or_a_fixed_policy(
    http: httpx.Client, source: LangfuseSource
) -> None:
    now = T0 + 100
    post_score(http, "helpfulness", "good", at=now - 30, trace=1)
    source.poll({"alpha": ALPHA}, None, now)
    assert len(source.health(now).score_type_mismatches) == 1

    fixed = typed_policy("alpha", "helpfulness", "categorical", badValues=["bad"])
    source.poll({"alpha": fixed}, None, now + 1)
    assert source.health(now + 1).score_type_mismatches == ()

    source.poll({"alpha": ALPHA}, None, now + 2)
    assert len(source.health(now + 2).score_type_mismatches) == 1
    source.poll({"other": policy("other", scores=["tone"])}, None, now + 3)  # alpha ended
    health = source.health(now + 3)
    assert health.score_type_mismatches == ()
    assert health.score_type_mismatch_counts == {KEY: 1}  # a counter never goes back


@pytest.mark.parametrize(
    ("score_type", "value", "data_type", "seen"),
    [
        ("boolean", 0.7, None, "NUMERIC"),
        ("categorical", 0.2, None, "NUMERIC"),
        ("categorical", 1, "BOOLEAN", "BOOLEAN"),
    ],
)
def test_numbers_for_boolean_and_categorical_metrics_are_mismatches(
    http: httpx.Client,
    source: LangfuseSource,
    score_type: str,
    value: float,
    data_type: str | None,
    seen: str,
) -> None:
    extra = {"badValues": ["bad"]} if score_type == "categorical" else {}
    releases = {"alpha": typed_policy("alpha", "tone", score_type, **extra)}
    post_score(http, "tone", value, at=T0 + 70, trace=1, data_type=data_type)
    source.poll(releases, None, T0 + 100)
    (mismatch,) = source.health(T0 + 100).score_type_mismatches
    assert (mismatch.metric, mismatch.seen, mismatch.expected) == ("s-tone", seen, score_type)
