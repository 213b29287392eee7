"""What ``AggregateRecorder.record`` counts of a request's sample flag and usage."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from coalmine.shared.aggregates.model import MinuteCell
from policies.domain import Arm
from proxy.aggregates import AggregateRecorder
from proxy.metrics import ProxyMetrics
from proxy.outcome import Failure, RequestOutcome, Usage

T = 1_800_000_000 // 60 * 60
S = 1_000_000_000
B, C = Arm.BASELINE, Arm.CANARY


class NoStore:
    proxy_id = "test"

    def write(self, cells: Sequence[MinuteCell], now: float) -> int:
        return 0

    def close(self) -> None:
        pass


def outcome(
    arm: Arm,
    *,
    sampled: bool = False,
    usage: Usage | None = None,
    status: int = 200,
    failure: Failure | None = None,
    at: int = T,
) -> RequestOutcome:
    return RequestOutcome(
        release="support",
        arm=arm,
        method="POST",
        path="/v1/chat",
        status=status,
        start_ns=at * S,
        end_ns=at * S + 40_000_000,
        trace_id="0" * 32,
        span_id="0" * 16,
        parent_span_id=None,
        request_id="r",
        prompt_label=None,
        failure=failure,
        sampled=sampled,
        usage=usage,
    )


def counted(outcomes: Sequence[RequestOutcome]) -> dict[tuple[Arm, int], tuple[object, ...]]:
    recorder = AggregateRecorder(NoStore(), ProxyMetrics(), interval=10.0, clock=lambda: T)
    for each in outcomes:
        recorder.record(each)
    return {
        (cell.arm, cell.minute): (
            cell.requests,
            cell.sampled,
            cell.usage,
            cell.prompt_tokens,
            cell.completion_tokens,
            cell.cost_n,
            cell.cost_sum,
            cell.cost_sumsq,
        )
        for cell in recorder.cells()
    }


def test_sampled_requests_usage_tokens_and_cost_moments_are_counted_per_cell() -> None:
    found = counted(
        [
            outcome(C, sampled=True, usage=Usage(100, 20, 0.5)),
            outcome(C, sampled=True, usage=Usage(50, 10, None)),  # tokens, no cost
            outcome(C, usage=Usage(7, 3, 0.25)),
            outcome(C, sampled=True),  # no usage: a 5xx, a stream cut, an app without it
            outcome(C, status=502, failure=Failure.CONNECT),
            outcome(B, usage=Usage(0, 0, 0.0)),  # a zero cost is a cost
            outcome(B, sampled=True, at=T + 60),
        ]
    )
    assert found == {
        (C, T): (5, 3, 3, 157, 33, 2, 0.75, 0.3125),
        (B, T): (1, 0, 1, 0, 0, 1, 0.0, 0.0),
        (B, T + 60): (1, 1, 0, 0, 0, 0, 0.0, 0.0),
    }


def test_a_cell_without_sample_or_usage_has_them_at_zero() -> None:
    assert counted([outcome(B), outcome(B)]) == {(B, T): (2, 0, 0, 0, 0, 0, 0.0, 0.0)}


def _usage_metrics(metrics: ProxyMetrics, arm: Arm) -> tuple[float | None, ...]:
    def value(name: str, **more: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"release": "support", "arm": arm, **more})

    return (
        value("coalmine_proxy_usage_responses_total", cost="reported"),
        value("coalmine_proxy_usage_responses_total", cost="none"),
        value("coalmine_proxy_tokens_total", type="input"),
        value("coalmine_proxy_tokens_total", type="output"),
        value("coalmine_proxy_cost_usd_total"),
    )


def test_the_proxy_metrics_count_reported_tokens_and_cost_per_arm() -> None:
    metrics = ProxyMetrics()
    for each in (
        outcome(C, usage=Usage(120, 30, 0.0025)),
        outcome(C, usage=Usage(80, 20, None)),  # no cost reported: tokens only
        outcome(C),  # no usage: nothing
        outcome(C, status=502, failure=Failure.UPSTREAM, usage=Usage(10, 0, 0.0005)),
        outcome(B, usage=Usage(100, 40, 0.001)),
        outcome(Arm.SHADOW, usage=Usage(7, 3, None)),  # tokens, never a cost
    ):
        metrics.observe(each)
    assert _usage_metrics(metrics, C) == pytest.approx((2.0, 1.0, 210.0, 50.0, 0.003))
    assert _usage_metrics(metrics, B) == pytest.approx((1.0, 0.0, 100.0, 40.0, 0.001))
    # no cost reported: no cost series, rather than a cost of 0
    assert _usage_metrics(metrics, Arm.SHADOW) == (0.0, 1.0, 7.0, 3.0, None)
