"""The policy model: defaults, durations, and use from Python code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from policies import (
    EXAMPLES_DIR,
    Analysis,
    Direction,
    Metric,
    MetricSource,
    OnApprovalTimeout,
    OnMaxDuration,
    Policy,
    PromptTarget,
    RuleError,
    ScoreRange,
    ScoreType,
    Shadow,
    Step,
    Stickiness,
    Target,
    Upstreams,
    format_duration,
    load_policy,
    load_policy_text,
    parse_duration,
)

MINIMAL = """\
apiVersion: coalmine/v1
kind: Release
name: minimal
target:
  upstreams: {stable: "http://127.0.0.1:8000", canary: "https://canary.example.com"}
steps:
  - {weight: 50}
analysis:
  metrics:
    - {name: quality, source: score, score: quality, tolerance: 0.05}
    - {name: judged-ok, source: score, score: ok, scoreType: boolean, tolerance: 0.02}
    - {name: tone, source: score, score: tone, scoreType: categorical, badValues: [rude],
       tolerance: 0.01}
    - {name: errors, source: error_rate, tolerance: 0.01}
    - {name: cost, source: cost, tolerancePercent: 10}
    - {name: latency, source: latency, tolerance: 250}
"""


@pytest.fixture(scope="module")
def minimal() -> Policy:
    return load_policy_text(MINIMAL, "minimal.yaml")


# ------------------------------------------------------------------ examples


EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


def test_the_three_examples_exist() -> None:
    assert {path.name for path in EXAMPLES} >= {
        "prompt-canary.yaml",
        "agent-canary.yaml",
        "prompt-shadow.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_loads(path: object) -> None:
    policy = load_policy(str(path))
    assert policy.api_version == "coalmine/v1"
    assert policy.kind == "Release"
    assert policy.steps
    assert policy.analysis.metrics


def test_prompt_canary_example() -> None:
    policy = load_policy(EXAMPLES_DIR / "prompt-canary.yaml")
    assert policy.target.prompt is not None
    assert policy.target.upstreams is None
    assert len(policy.steps) == 3
    # trace_error_rate is error_rate's twin for traffic from the proxies (docs/policy.md)
    every_source = set(MetricSource) - {MetricSource.TRACE_ERROR_RATE}
    assert {metric.source for metric in policy.analysis.metrics} == every_source


def test_prompt_canary_example_waits_for_approval() -> None:
    policy = load_policy(EXAMPLES_DIR / "prompt-canary.yaml")
    assert policy.approval is not None
    assert policy.approval.timeout == 8 * 3600
    assert policy.approval.on_timeout is OnApprovalTimeout.PAUSE
    assert policy.approval.queue is None


def test_agent_canary_example() -> None:
    policy = load_policy(EXAMPLES_DIR / "agent-canary.yaml")
    assert policy.target.prompt is None
    assert policy.target.upstreams is not None
    assert policy.target.upstreams.canary is not None
    assert policy.routing.stickiness == Stickiness(cookie="session_id")
    assert policy.analysis.on_max_duration is OnMaxDuration.ROLLBACK
    sources = {metric.name: metric.source for metric in policy.analysis.metrics}
    assert sources["tool-errors"] is MetricSource.TRACE_ERROR_RATE
    assert sources["errors"] is MetricSource.ERROR_RATE


def test_prompt_shadow_example() -> None:
    policy = load_policy(EXAMPLES_DIR / "prompt-shadow.yaml")
    assert policy.target.prompt is not None
    assert policy.shadow is not None
    assert policy.shadow.percent == 10


# ------------------------------------------------------------------ defaults


def test_policy_defaults(minimal: Policy) -> None:
    assert minimal.routing.stickiness == Stickiness(header="x-user-id")
    assert minimal.shadow is None
    step = minimal.steps[0]
    assert (step.min_duration, step.max_duration, step.min_samples) == (0.0, None, None)
    analysis = minimal.analysis
    assert analysis.interval == 60.0
    assert analysis.alpha == 0.05
    assert analysis.on_max_duration is OnMaxDuration.PAUSE
    assert analysis.min_samples == 30
    assert (analysis.score_settle, analysis.score_timeout) == (0.0, 1800.0)
    assert analysis.coverage_tolerance == 0.02
    assert analysis.sample_ratio.alpha == 0.001
    assert (analysis.circuit_breaker.error_rate, analysis.circuit_breaker.min_requests) == (
        0.5,
        20,
    )


def test_metric_defaults(minimal: Policy) -> None:
    metrics = {metric.name: metric for metric in minimal.analysis.metrics}
    assert [metrics[name].direction for name in metrics] == [
        Direction.HIGHER,  # numeric score
        Direction.HIGHER,  # boolean score
        Direction.LOWER,  # categorical score: the rate of bad values
        Direction.LOWER,
        Direction.LOWER,
        Direction.LOWER,
    ]
    assert metrics["quality"].range == ScoreRange(min=0, max=1)
    assert metrics["judged-ok"].range is None
    assert metrics["latency"].quantile == 0.95
    assert metrics["cost"].quantile is None
    assert metrics["quality"].score_type is ScoreType.NUMERIC
    assert metrics["tone"].bad_values == ("rude",)
    assert all(metric.critical is False for metric in metrics.values())
    assert all(metric.alpha_weight == 1.0 for metric in metrics.values())
    assert all(metric.effect_size is None for metric in metrics.values())


def test_explicit_direction_is_kept() -> None:
    metric = Metric(
        name="hallucination",
        source=MetricSource.SCORE,
        score="hallucination",
        score_type=ScoreType.BOOLEAN,
        direction=Direction.LOWER,
        tolerance=0.01,
    )
    assert metric.direction is Direction.LOWER


def test_stickiness_none_and_cookie() -> None:
    text = MINIMAL.replace("steps:", "routing: {stickiness: none}\nsteps:")
    assert load_policy_text(text, "x.yaml").routing.stickiness is None
    text = MINIMAL.replace("steps:", "routing: {stickiness: {cookie: sid}}\nsteps:")
    assert load_policy_text(text, "x.yaml").routing.stickiness == Stickiness(cookie="sid")


def test_latency_takes_either_tolerance() -> None:
    for tolerance in ("tolerance: 250", "tolerancePercent: 20"):
        text = MINIMAL.replace("tolerance: 250", tolerance)
        assert load_policy_text(text, "x.yaml").analysis.metrics[-1].source is MetricSource.LATENCY


# ------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("0s", 0.0),
        ("1.5h", 5400.0),
        ("2h0m10s", 7210.0),
        ("1m30.5s", 90.5),
        ("1s500ms", 1.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "10 minutes",
        "10",
        "",
        "m",
        "10d",
        "-5s",
        "1e3s",
        "30m1h",
        "1h1h",
        " 10m",
        "10m ",
        "1.s",
        "٣s",
    ],
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.25, "250ms"),
        (30.0, "30s"),
        (600.0, "10m"),
        (5400.0, "1h30m"),
        (7200.0, "2h"),
        (90.5, "1m30.5s"),
        (86400.0, "24h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan")])
def test_format_duration_refuses(seconds: float) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        format_duration(seconds)


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_round_trip(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == seconds


def test_yaml_duration_fields_hold_seconds() -> None:
    text = MINIMAL.replace("{weight: 50}", "{weight: 50, minDuration: 1h30m, maxDuration: 2h}")
    text = text.replace("analysis:\n", "analysis:\n  interval: 90s\n")
    policy = load_policy_text(text, "x.yaml")
    assert (policy.steps[0].min_duration, policy.steps[0].max_duration) == (5400.0, 7200.0)
    assert policy.analysis.interval == 90.0


# ------------------------------------------------------------------ Python use


def test_models_are_built_by_attribute_name() -> None:
    policy = Policy(
        api_version="coalmine/v1",
        kind="Release",
        name="from-code",
        target=Target(prompt=PromptTarget(name="support")),
        steps=(Step(weight=10, min_duration=600), Step(weight=50, max_duration=3600.0)),
        analysis=Analysis(
            metrics=(Metric(name="errors", source=MetricSource.ERROR_RATE, tolerance=0.01),)
        ),
    )
    assert policy.steps[0].min_duration == 600.0
    assert policy.target.prompt is not None
    assert policy.target.prompt.stable_label == "production"
    assert policy.target.prompt.canary_label == "canary"


def test_models_also_accept_yaml_spelling_from_python() -> None:
    step = Step.model_validate({"weight": 5, "minDuration": "10m", "maxDuration": "1h"})
    assert (step.min_duration, step.max_duration) == (600.0, 3600.0)


def test_models_are_frozen(minimal: Policy) -> None:
    with pytest.raises(ValidationError):
        minimal.name = "other"  # type: ignore[misc]
    assert hash(minimal.steps[0]) == hash(Step(weight=50))


def test_rule_violation_from_python_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Step(weight=5, min_duration=600, max_duration=60)
    cause = caught.value.errors()[0]["ctx"]["error"]
    assert isinstance(cause, RuleError)
    assert cause.violations == ((("maxDuration",), "must be >= minDuration (10m)"),)
    assert "maxDuration: must be >= minDuration (10m)" in str(caught.value)


def test_upstreams_accept_http_and_https_only() -> None:
    assert Upstreams(stable="https://a.example.com/v1").stable.startswith("https://")
    for bad in ("ftp://a", "a.example.com", "http://", "http://a b", "http://a:99999"):
        with pytest.raises(ValidationError, match="must be an http or https URL"):
            Upstreams(stable=bad)


@pytest.mark.parametrize(
    "url", ["https://a.example.com/v1?x=1", "http://a/?", "http://a/v1#top", "http://a#"]
)
def test_upstreams_refuse_a_query_or_fragment(url: str) -> None:
    # a request would reach the upstream as the URL's path with its own path lost
    with pytest.raises(ValidationError, match=r"stable\n.*must not have a query"):
        Upstreams(stable=url)
    with pytest.raises(ValidationError, match=r"upstream\n.*must not have a query"):
        Shadow(upstream=url, percent=5)


def test_json_round_trip(minimal: Policy) -> None:
    for path in EXAMPLES:
        policy = load_policy(path)
        as_json = policy.model_dump_json(by_alias=True)
        assert '"minDuration":"' in as_json  # durations are written the way policies spell them
        assert Policy.model_validate_json(as_json) == policy
        assert Policy.model_validate(policy.model_dump()) == policy
    assert Policy.model_validate_json(minimal.model_dump_json()) == minimal
