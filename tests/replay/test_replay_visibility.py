"""What each look of a replay sees: exactly what a controller looking at that time would."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pytest

from bench.streams import SCENARIOS, generate
from controller.judge import Judgement, MetricResult, Trace, judge_samples
from controller.replay import Event, Replay
from controller.stream import LateScores, parse_line, parse_ts
from policies.loader import load_policy
from policies.model import Policy


@pytest.fixture
def policy(one_step: Path) -> Policy:
    return load_policy(one_step)


def at(clock: str) -> float:
    return parse_ts(f"2026-11-22T{clock}Z", 1)


def records(lines: Iterable[str]) -> list[Trace | LateScores]:
    parsed = [parse_line(line, number) for number, line in enumerate(lines, start=1)]
    return [record for record in parsed if record is not None]


def metric(judgement: Judgement | None, name: str) -> MetricResult:
    assert judgement is not None
    return next(m for m in judgement.metrics if m.name == name)


def test_a_late_score_is_not_seen_before_it_arrives(policy: Policy) -> None:
    engine = Replay(policy)
    stream = records(
        [
            '{"ts": "2026-11-22T10:00:00Z", "arm": "baseline", "trace_id": "b-1", '
            '"error": false, "scores": {"helpfulness": 0.8}}',
            '{"ts": "2026-11-22T10:00:10Z", "arm": "canary", "trace_id": "c-1", "error": false}',
            '{"ts": "2026-11-22T10:01:30Z", "trace_id": "c-1", "scores": {"helpfulness": 0.4}}',
            '{"ts": "2026-11-22T10:02:30Z", "arm": "baseline", "trace_id": "b-2", "error": false}',
        ]
    )
    for record in stream[:2]:
        assert list(engine.feed(record)) == []
    assert engine.last is None  # no look before the first interval has passed

    list(engine.feed(stream[2]))  # the look at 10:01 happens before the score is read
    assert engine.counters.looks == 1
    assert engine.last is not None
    assert engine.last.at == at("10:01:00")
    helpfulness = metric(engine.last, "helpfulness")
    assert (helpfulness.n_baseline, helpfulness.n_canary) == (1, 0)
    errors = metric(engine.last, "errors")
    assert (errors.n_baseline, errors.n_canary) == (1, 1)  # the trace itself is visible

    list(engine.feed(stream[3]))  # the look at 10:02 sees the score that came at 10:01:30
    assert engine.counters.looks == 2
    assert engine.last.at == at("10:02:00")
    helpfulness = metric(engine.last, "helpfulness")
    assert (helpfulness.n_baseline, helpfulness.n_canary) == (1, 1)
    assert metric(engine.last, "errors").n_baseline == 1  # b-2 started after 10:02

    list(engine.finish())
    assert engine.counters.looks == 3
    assert engine.last.at == at("10:03:00")
    assert metric(engine.last, "errors").n_baseline == 2


def test_a_sample_at_the_time_of_a_look_is_seen_by_it(policy: Policy) -> None:
    engine = Replay(policy)
    stream = records(
        [
            '{"ts": "2026-11-22T10:00:00Z", "arm": "canary", "trace_id": "c-1", "error": false}',
            '{"ts": "2026-11-22T10:01:00Z", "arm": "canary", "trace_id": "c-2", "error": false, '
            '"scores": {"helpfulness": 0.5}}',
            '{"ts": "2026-11-22T10:01:00Z", "trace_id": "c-1", "scores": {"helpfulness": 0.6}}',
            '{"ts": "2026-11-22T10:01:00.001Z", "arm": "canary", "trace_id": "c-3", '
            '"error": false}',
        ]
    )
    for record in stream:
        list(engine.feed(record))
    assert engine.last is not None
    assert engine.last.at == at("10:01:00")
    assert metric(engine.last, "errors").n_canary == 2
    assert metric(engine.last, "helpfulness").n_canary == 2
    traces = [r for r in stream if isinstance(r, Trace)]
    late = [(r.trace_id, dict(r.scores), r.ts) for r in stream if isinstance(r, LateScores)]
    same = judge_samples(
        policy, traces, at("10:01:00"), started_at=at("10:00:00"), late_scores=late
    )
    assert same.metrics == engine.last.metrics


def looks_of(engine: Replay, stream: list[Trace | LateScores]) -> list[Judgement]:
    """Every judgement the replay makes, decisions or not."""
    seen: list[Judgement] = []
    last: Judgement | None = None

    def collect(events: Iterable[Event]) -> None:
        nonlocal last
        looks = engine.counters.looks
        list(events)
        judgement = engine.last
        if judgement is not None and judgement is not last:
            assert engine.counters.looks == looks + 1, "one look per record in these streams"
            last = judgement
            seen.append(judgement)

    for record in stream:
        collect(engine.feed(record))
    collect(engine.finish())
    return seen


def test_every_look_sees_what_the_judge_would_see_at_that_time(policy: Policy) -> None:
    """Replaying record by record agrees with judging, at each look, the samples up to it."""
    stream = records(generate(SCENARIOS["bad"], 12, seed=7, per_minute=60))
    started = stream[0].ts
    engine = Replay(policy)
    judgements = looks_of(engine, stream)
    assert len(judgements) == engine.counters.looks >= 10
    traces = [r for r in stream if isinstance(r, Trace)]
    late = [(r.trace_id, dict(r.scores), r.ts) for r in stream if isinstance(r, LateScores)]
    for judgement in judgements:
        expected = judge_samples(policy, traces, judgement.at, started_at=started, late_scores=late)
        assert judgement.decision == expected.decision
        for got, want in zip(judgement.metrics, expected.metrics, strict=True):
            assert (got.name, got.verdict, got.n_baseline, got.n_canary) == (
                want.name,
                want.verdict,
                want.n_baseline,
                want.n_canary,
            )
            for field in ("estimate", "lower", "upper", "log_evalue"):
                value, wanted = getattr(got, field), getattr(want, field)
                if wanted is None or not math.isfinite(wanted):
                    assert value == wanted or (math.isnan(value) and math.isnan(wanted))
                else:
                    assert value == pytest.approx(wanted, rel=1e-9, abs=1e-12)


def test_the_interval_sets_the_looks(policy: Policy) -> None:
    stream = records(generate(SCENARIOS["neutral"], 10, seed=2))
    by_interval = {}
    for interval in (None, 60.0, 30.0, 20.0):
        engine = Replay(policy, interval)
        for record in stream:
            list(engine.feed(record))
        list(engine.finish())
        by_interval[interval] = engine.counters.looks
    span = stream[-1].ts - stream[0].ts
    assert by_interval[None] == by_interval[60.0]
    for interval in (60.0, 30.0, 20.0):
        # the last look is the first one at or after the end of the stream
        assert by_interval[interval] == math.ceil(span / interval)
    with pytest.raises(ValueError, match="interval must be positive"):
        Replay(policy, 0.0)
