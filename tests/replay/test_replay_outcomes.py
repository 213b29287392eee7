"""`coalmine replay` end to end: decisions, outcomes and both output formats."""

from __future__ import annotations

import io
import itertools
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from bench.streams import SCENARIOS, generate
from controller.judge import Trace
from controller.replay import Replay
from controller.stream import format_ts, parse_line, parse_ts
from policies.domain import Arm
from policies.loader import load_policy
from tests.replay.replay_support import METRICS, Run

Coalmine = Callable[..., Run]
Write = Callable[[str, str | Iterable[str]], Path]

EVENT_KEYS = {"ts", "decision", "phase", "step", "reason", "metrics", "checks"}
METRIC_KEYS = {"name", "verdict", "estimate", "lower", "upper", "n_baseline", "n_canary"}
SUMMARY_KEYS = {
    "final",
    "outcome",
    "decided_at",
    "reason",
    "step",
    "steps",
    "lines",
    "traces",
    "late_score_lines",
    "out_of_order_lines",
    "looks",
}


def following_steps(policy_path: Path, lines: Iterable[str], seed: int) -> Iterator[str]:
    """Thin a 50/50 stream so the canary's share follows the release's current step.

    bench.streams keeps one split for the whole stream; a router sends each step's weight
    to the canary. Each canary trace (and its late scores) is kept with the probability
    that turns a 50% share into the step's weight, the step being the one a replay of the
    lines kept so far is in: the controller's decisions steer the traffic, as they would.
    """
    policy = load_policy(policy_path)
    engine = Replay(policy)
    rng = random.Random(seed)
    kept: set[str] = set()
    for number, text in enumerate(lines, start=1):
        record = parse_line(text, number)
        assert record is not None
        if isinstance(record, Trace):
            share = policy.steps[engine.step].weight / 100.0
            if record.arm is Arm.CANARY and rng.random() >= share / (1.0 - share):
                continue
            kept.add(record.trace_id)
        elif record.trace_id not in kept:
            continue
        for _ in engine.feed(record):
            pass
        yield text


def check_event_shapes(run: Run) -> None:
    for event in run.events:
        assert event.keys() >= EVENT_KEYS
        assert parse_ts(event["ts"], 1) > 0
        assert [m["name"] for m in event["metrics"]] == list(METRICS)
        for metric in event["metrics"]:
            assert metric.keys() >= METRIC_KEYS
            assert metric["verdict"] in {"pass", "fail", "inconclusive", "nodata"}
            assert metric["n_baseline"] >= 0
            assert metric["n_canary"] >= 0
    summary = run.summary
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["final"] is True


def test_bad_canary_is_rolled_back(coalmine: Coalmine, write: Write, one_step: Path) -> None:
    stream = write("bad.jsonl", generate(SCENARIOS["bad"], 60, seed=7))
    run = coalmine("replay", "--policy", one_step, "--samples", stream, "--json")
    assert run.code == 0, run.err
    assert run.err == ""
    check_event_shapes(run)
    summary = run.summary
    assert summary["outcome"] == "rolled_back"
    assert summary["decided_at"] is not None
    assert parse_ts(summary["decided_at"], 1) < parse_ts("2026-11-22T11:00:00Z", 1)
    *_, decision = run.events
    assert decision["decision"] == "rollback"
    assert decision["phase"] == "rolled_back"
    assert decision["step"] == 1
    assert decision["ts"] == summary["decided_at"]
    assert summary["reason"] == decision["reason"]
    assert any(m["verdict"] == "fail" for m in decision["metrics"])
    assert summary["lines"] == len(stream.read_text(encoding="utf-8").splitlines())
    assert summary["out_of_order_lines"] == 0


def test_good_canary_advances_step_by_step_then_promotes(
    coalmine: Coalmine, write: Write, three_steps: Path
) -> None:
    lines = generate(SCENARIOS["good"], 60, seed=1, canary_share=0.5)
    stream = write("good.jsonl", following_steps(three_steps, lines, seed=1))
    run = coalmine("replay", "--policy", three_steps, "--samples", stream, "--json")
    assert run.code == 0, run.err
    check_event_shapes(run)
    events = run.events
    assert [(e["decision"], e["phase"], e["step"]) for e in events] == [
        ("advance", "canary", 2),
        ("advance", "canary", 3),
        ("promote", "promoted", 3),
    ]
    for event in events:
        assert all(m["verdict"] == "pass" for m in event["metrics"])
    times = [parse_ts(e["ts"], 1) for e in events]
    assert times == sorted(times)
    assert all(later - earlier >= 300 for earlier, later in itertools.pairwise(times))
    summary = run.summary
    assert summary["outcome"] == "promoted"
    assert summary["decided_at"] == events[-1]["ts"]
    assert (summary["step"], summary["steps"]) == (3, 3)


def test_steps_change_only_when_decisions_say(
    coalmine: Coalmine, write: Write, three_steps: Path
) -> None:
    """Whatever the stream, the step in the output moves by one, and only on an advance."""
    decisions: set[str] = set()
    for seed, scenario in ((2, "good"), (6, "neutral"), (3, "slow"), (4, "bad")):
        lines = generate(SCENARIOS[scenario], 60, seed=seed, canary_share=0.5)
        stream = write(f"{scenario}.jsonl", following_steps(three_steps, lines, seed=seed))
        run = coalmine("replay", "--policy", three_steps, "--samples", stream, "--json")
        assert run.code == 0, run.err
        step = 1
        for event in run.events:
            advanced = event["decision"] == "advance"
            assert event["step"] == (step + 1 if advanced else step)
            assert event["phase"] == ("canary" if advanced else run.summary["outcome"])
            step = event["step"]
            decisions.add(event["decision"])
        assert run.summary["step"] == step
        assert run.summary["decided_at"] == (
            run.events[-1]["ts"] if run.summary["outcome"] != "running" else None
        )
    assert {"advance", "rollback"} <= decisions  # these streams do move the release


def test_neutral_short_stream_is_still_running(
    coalmine: Coalmine, write: Write, one_step: Path
) -> None:
    stream = write("neutral.jsonl", generate(SCENARIOS["neutral"], 10, seed=3))
    run = coalmine("replay", "--policy", one_step, "--samples", stream, "--json")
    assert run.code == 0, run.err
    assert run.events == []
    summary = run.summary
    assert summary["outcome"] == "running"
    assert summary["decided_at"] is None
    assert summary["step"] == 1
    assert summary["reason"].startswith("waiting: ")
    assert summary["looks"] == 10


def test_half_the_interval_makes_twice_the_looks(
    coalmine: Coalmine, write: Write, one_step: Path
) -> None:
    lines = list(generate(SCENARIOS["neutral"], 15, seed=5))
    first = parse_line(lines[0], 1)
    assert first is not None
    end = first.ts + 15 * 60  # the last line falls on a look of both intervals
    lines.append(
        f'{{"ts": "{format_ts(end)}", "arm": "baseline", "trace_id": "last", "error": false}}'
    )
    stream = write("neutral.jsonl", lines)
    looks = {}
    for interval in ("60s", "30s"):
        run = coalmine(
            "replay", "--policy", one_step, "--samples", stream, "--interval", interval, "--json"
        )
        assert run.code == 0, run.err
        assert run.summary["outcome"] == "running"
        looks[interval] = run.summary["looks"]
    assert looks == {"60s": 15, "30s": 30}
    run = coalmine("replay", "--policy", one_step, "--samples", stream, "--json")
    assert run.summary["looks"] == 15  # the policy's analysis.interval is 1m


def test_table_output(coalmine: Coalmine, write: Write, one_step: Path) -> None:
    stream = write("bad.jsonl", generate(SCENARIOS["bad"], 60, seed=7))
    as_json = coalmine("replay", "--policy", one_step, "--samples", stream, "--json").summary
    run = coalmine("replay", "--policy", one_step, "--samples", stream)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0] == (f"release one-step: {as_json['lines']} lines, {as_json['looks']} looks")
    assert f"outcome: rolled_back at {as_json['decided_at']}: {as_json['reason']}" in lines
    header = [line for line in lines if line.split()[:2] == ["metric", "verdict"]]
    assert len(header) == 1
    for name in METRICS:
        rows = [line for line in lines if line.split()[:1] == [name]]
        assert len(rows) == 1, name
        verdict = rows[0].split()[1]
        assert verdict in {"pass", "fail", "inconclusive", "nodata"}


def test_table_of_an_undecided_release_shows_the_last_look(
    coalmine: Coalmine, write: Write, one_step: Path
) -> None:
    stream = write("neutral.jsonl", generate(SCENARIOS["neutral"], 10, seed=3))
    run = coalmine("replay", "--policy", one_step, "--samples", stream)
    assert run.code == 0, run.err
    assert "(last look)" in run.out
    assert any(line.startswith("outcome: running at -: waiting: ") for line in run.out.splitlines())
    for name in METRICS:
        assert sum(line.split()[:1] == [name] for line in run.out.splitlines()) == 1


def test_samples_from_standard_input(
    coalmine: Coalmine, write: Write, one_step: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = list(generate(SCENARIOS["bad"], 30, seed=7))
    from_file = coalmine("replay", "--policy", one_step, "--samples", write("s.jsonl", lines))
    stdin = io.StringIO("".join(f"{line}\n" for line in lines))
    monkeypatch.setattr(sys, "stdin", stdin)
    from_stdin = coalmine("replay", "--policy", one_step, "--samples", "-")
    assert from_stdin.code == 0, from_stdin.err
    assert from_stdin.out == from_file.out
    assert "outcome: rolled_back at " in from_stdin.out
    assert not stdin.closed  # standard input is the caller's to close
