"""Cost of ``AggregateRecorder.record`` on the request path, beside ``ProxyMetrics.observe``.

Run: ``python -m bench.aggregates_record`` (prints µs per call; no
assertions: timings are not tested).
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable, Sequence

from coalmine.shared.aggregates.model import MinuteCell
from policies.domain import Arm
from proxy.aggregates import AggregateRecorder
from proxy.metrics import ProxyMetrics
from proxy.outcome import RequestOutcome

CALLS = 200
REPEAT = 7


class _NoStore:
    proxy_id = "bench"

    def write(self, cells: Sequence[MinuteCell], now: float) -> int:
        return 0

    def close(self) -> None:
        pass


def _outcomes(count: int) -> list[RequestOutcome]:
    now = time.time_ns()
    return [
        RequestOutcome(
            release="support",
            arm=Arm.CANARY if index % 2 else Arm.BASELINE,
            method="POST",
            path="/v1/chat/completions",
            status=500 if index % 10 == 0 else 200,
            start_ns=now,
            end_ns=now + 50_000_000 + index * 997_000,
            trace_id="0" * 32,
            span_id="0" * 16,
            parent_span_id=None,
            request_id="r",
            prompt_label=None,
        )
        for index in range(count)
    ]


def _per_call(call: Callable[[RequestOutcome], None], outcomes: list[RequestOutcome]) -> float:
    def run() -> None:
        for outcome in outcomes:
            call(outcome)

    run()  # the cells exist before timing: the steady state of a busy minute
    best = min(timeit.repeat(run, number=CALLS, repeat=REPEAT))
    return best / (CALLS * len(outcomes)) * 1e6


def main() -> None:
    outcomes = _outcomes(1000)
    recorder = AggregateRecorder(_NoStore(), ProxyMetrics(), interval=10.0)
    print(f"AggregateRecorder.record: {_per_call(recorder.record, outcomes):.3f} µs per call")
    metrics = ProxyMetrics()
    print(f"ProxyMetrics.observe:     {_per_call(metrics.observe, outcomes):.3f} µs per call")


if __name__ == "__main__":
    main()
