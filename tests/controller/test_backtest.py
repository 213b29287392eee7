"""`coalmine backtest` against a live emulator holding a recorded canary: ~400 requests
of the past (root spans as the proxy sends them) and their scores, read back window by
window with the real Langfuse source and judged as `coalmine replay` judges a stream."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from coalmine import cli
from coalmine.cli import backtest as backtest_commands
from coalmine.emulator.settings import EmulatorSettings
from controller.backtest import History, LangfuseHistorySource
from controller.errors import BacktestError
from controller.judge import Trace
from controller.replay import Replay
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource, SourceSettings
from controller.stream import LateScores
from policies.domain import Arm
from policies.loader import load_policy_text
from tests.controller.source_support import (
    FakeClock,
    LiveEmulator,
    iso,
    live_emulator,
    root,
    send_roots,
)

POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: {name}
target:
  prompt: {{name: support-agent}}
steps:
  - {{weight: 50, minDuration: 10m}}
analysis:
  interval: 1m
  minSamples: 30
  scoreTimeout: 3m
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.05, critical: true}}
    - name: helpfulness
      source: score
      score: helpfulness
      tolerance: 0.1
      effectSize: 0.2
      critical: true
"""

START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC).timestamp()
"""The recorded canaries ran from here, for MINUTES minutes, before the tests ran."""
MINUTES = 40
RATE = 10
"""Requests a minute."""
FROM, TO = "2026-11-20T10:00:00Z", "2026-11-20T10:40:00Z"


@dataclass(frozen=True)
class Recorded:
    """How one recorded canary behaved."""

    release: str
    canary_error: float
    canary_score: float
    seed: int


GOOD = Recorded("good", canary_error=0.01, canary_score=0.8, seed=1)
BAD = Recorded("bad", canary_error=0.25, canary_score=0.6, seed=2)


def record(http: httpx.Client, canary: Recorded, first_trace: int) -> None:
    """Write the canary's requests and their scores into Langfuse."""
    rng = random.Random(canary.seed)
    outcomes = []
    scores: list[dict[str, Any]] = []
    for index in range(MINUTES * RATE):
        number = first_trace + index
        ts = START + index * 60.0 / RATE + rng.random() * 5.0
        arm = Arm.CANARY if rng.random() < 0.5 else Arm.BASELINE
        error = rng.random() < (canary.canary_error if arm is Arm.CANARY else 0.01)
        outcomes.append(root(canary.release, arm, number, ts, status=500 if error else 200))
        if not error:
            mean = canary.canary_score if arm is Arm.CANARY else 0.8
            scores.append(
                {
                    "traceId": f"{number:032x}",
                    "name": "helpfulness",
                    "value": min(1.0, max(0.0, rng.gauss(mean, 0.1))),
                    "timestamp": iso(ts + 20.0 + rng.random() * 40.0),
                }
            )
    send_roots(http, outcomes)
    for chunk in range(0, len(scores), 200):
        response = http.post("/api/public/scores", json=scores[chunk : chunk + 200])
        assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def langfuse() -> Iterator[LiveEmulator]:
    settings = EmulatorSettings(public_key="pk-lf-backtest", secret_key="sk-lf-backtest")
    with live_emulator(settings) as emulator:
        with emulator.client() as http:
            record(http, GOOD, 1)
            record(http, BAD, 100_000)
        yield emulator


@pytest.fixture
def env(langfuse: LiveEmulator, monkeypatch: pytest.MonkeyPatch) -> LiveEmulator:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", langfuse.settings.public_key)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", langfuse.settings.secret_key)
    monkeypatch.setenv("LANGFUSE_BASE_URL", langfuse.base_url)
    monkeypatch.delenv("LANGFUSE_HOST", raising=False)
    return langfuse


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


Coalmine = Callable[..., Run]


@pytest.fixture
def coalmine(capsys: pytest.CaptureFixture[str]) -> Coalmine:
    """Run `coalmine ARGS...` in-process, with the backtest command on the CLI."""
    if not any(
        command.name == "backtest"
        or (command.name is None and getattr(command.callback, "__name__", "") == "backtest")
        for command in cli.app.registered_commands
    ):
        backtest_commands.register(cli.app)

    def run(*args: str | Path) -> Run:
        capsys.readouterr()
        code = cli.main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def policy_file(tmp_path: Path) -> Callable[[str], Path]:
    def write(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(POLICY.format(name=name), encoding="utf-8")
        return path

    return write


def backtest_args(policy: Path, *more: str) -> list[str | Path]:
    return [
        "backtest",
        "--policy",
        policy,
        "--from",
        FROM,
        "--to",
        TO,
        "--window",
        "3m",
        "--requests-per-minute",
        "1000",
        *more,
    ]


# ----------------------------------------------------------------------------- decisions


def test_a_good_recorded_canary_is_promoted(
    env: LiveEmulator, coalmine: Coalmine, policy_file: Callable[[str], Path]
) -> None:
    run = coalmine(*backtest_args(policy_file("good"), "--json"))
    assert run.code == 0, run.err
    *events, summary = run.json_lines()
    assert summary["outcome"] == "promoted"
    assert [event["decision"] for event in events] == ["promote"]
    assert summary["traces"]["canary"] + summary["traces"]["baseline"] > 300
    assert summary["late_score_lines"] > 250


def test_a_bad_recorded_canary_is_rolled_back(
    env: LiveEmulator, coalmine: Coalmine, policy_file: Callable[[str], Path]
) -> None:
    run = coalmine(*backtest_args(policy_file("bad"), "--json"))
    assert run.code == 0, run.err
    *events, summary = run.json_lines()
    assert summary["outcome"] == "rolled_back"
    assert [event["decision"] for event in events] == ["rollback"]
    verdicts = {m["name"]: m["verdict"] for m in events[0]["metrics"]}
    assert "fail" in verdicts.values(), verdicts
    decided = datetime.fromisoformat(summary["decided_at"]).timestamp()
    assert START < decided < START + MINUTES * 60


def test_the_output_has_the_shape_of_replay(
    env: LiveEmulator,
    coalmine: Coalmine,
    policy_file: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    policy = policy_file("bad")
    backtest = coalmine(*backtest_args(policy, "--json")).json_lines()
    stream = tmp_path / "stream.jsonl"
    stream.write_text(
        '{"ts": "2026-11-20T10:00:00Z", "arm": "canary", "trace_id": "t-1", "error": true}\n'
        '{"ts": "2026-11-20T10:00:01Z", "arm": "baseline", "trace_id": "t-2", "error": false}\n',
        encoding="utf-8",
    )
    replay = coalmine("replay", "--policy", policy, "--samples", stream, "--json").json_lines()
    assert backtest[-1].keys() == replay[-1].keys()
    assert backtest[0].keys() == {"ts", "decision", "phase", "step", "reason", "metrics", "checks"}
    assert backtest[0]["metrics"][0].keys() == {
        "name",
        "verdict",
        "estimate",
        "lower",
        "upper",
        "scale",
        "n_baseline",
        "n_canary",
        "e_value",
        "e_threshold",
        "worst_traces",
        "reason",
    }


def test_the_table_names_the_outcome(
    env: LiveEmulator, coalmine: Coalmine, policy_file: Callable[[str], Path]
) -> None:
    run = coalmine(*backtest_args(policy_file("bad")))
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith("release bad: ")
    assert lines[-1].startswith("outcome: rolled_back at 2026-11-20T10:")


def test_a_range_without_the_release_is_bad_input(
    env: LiveEmulator, coalmine: Coalmine, policy_file: Callable[[str], Path]
) -> None:
    run = coalmine(*backtest_args(policy_file("absent")))
    assert run.code == 2 and run.out == ""
    assert run.err == (
        "coalmine: no traces of release 'absent' "
        "from 2026-11-20T10:00:00Z to 2026-11-20T10:40:00Z\n"
    )


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--from", "yesterday"], "--from: 'yesterday' is not an ISO 8601 time"),
        (["--to", "2026-13-01"], "--to: '2026-13-01' is not an ISO 8601 time"),
        (["--to", FROM], f"--from ({FROM}) must be before --to ({FROM})"),
        (["--to", "2026-11-20T09:00:00Z"], "must be before --to"),
        (["--window", "0s"], "--window: must be longer than zero"),
        (["--window", "10"], "--window: "),
    ],
)
def test_bad_flags_are_bad_input(
    env: LiveEmulator,
    coalmine: Coalmine,
    policy_file: Callable[[str], Path],
    flags: list[str],
    message: str,
) -> None:
    run = coalmine(*backtest_args(policy_file("good")), *flags)
    assert run.code == 2 and run.out == ""
    assert run.err.startswith("coalmine: ") and message in run.err
    assert run.err.count("\n") == 1


def test_a_bad_policy_is_bad_input_naming_file_and_line(
    env: LiveEmulator, coalmine: Coalmine, tmp_path: Path
) -> None:
    policy = tmp_path / "broken.yaml"
    policy.write_text(POLICY.format(name="good").replace("weight: 50", "weight: 150"))
    run = coalmine(*backtest_args(policy))
    assert run.code == 2
    assert run.err == f"coalmine: {policy}:7:14: steps[0].weight: must be <= 100\n"


def test_missing_keys_are_bad_input(
    coalmine: Coalmine, policy_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-backtest")
    run = coalmine(*backtest_args(policy_file("good")))
    assert run.code == 2
    assert run.err.startswith("coalmine: LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY must be set")


def test_keys_langfuse_refuses_are_bad_input(
    env: LiveEmulator,
    coalmine: Coalmine,
    policy_file: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-wrong")
    run = coalmine(*backtest_args(policy_file("good")))
    assert run.code == 2 and run.out == ""
    assert run.err.startswith("coalmine: Langfuse refused the backtest's request: ")
    assert "HTTP 401" in run.err and run.err.count("\n") == 1


# ----------------------------------------------------------------------------- reading


def _source(emulator: LiveEmulator, budget: RequestBudget, **options: Any) -> LangfuseSource:
    return LangfuseHistorySource(
        emulator.base_url,
        emulator.settings.public_key,
        emulator.settings.secret_key,
        budget=budget,
        rng=random.Random(5),
        **options,
    )


def _policy(name: str) -> Any:
    return load_policy_text(POLICY.format(name=name), f"{name}.yaml")


def test_records_come_in_time_order_each_score_after_its_trace(langfuse: LiveEmulator) -> None:
    budget = RequestBudget(BudgetSettings(per_minute=1_000))
    with _source(langfuse, budget, settings=SourceSettings(max_window=180.0)) as source:
        history = History(source, _policy("good"), START, START + MINUTES * 60)
        records = list(history.records())
    times = [record.ts for record in records]
    assert times == sorted(times)
    opened: dict[str, float] = {}
    for item in records:
        if isinstance(item, Trace):
            opened[item.trace_id] = item.ts
        else:
            assert isinstance(item, LateScores)
            assert item.ts >= opened[item.trace_id]
            # Written long after the fact: each score counts from its timestamp.
            assert 20.0 <= item.ts - opened[item.trace_id] <= 60.0
    assert len(opened) == history.traces
    assert MINUTES * RATE - 10 <= history.traces <= MINUTES * RATE
    assert history.polls == math.ceil(MINUTES * 60 / 180)
    assert history.failed_polls == 0


def test_reading_stops_once_the_judge_has_decided(langfuse: LiveEmulator) -> None:
    budget = RequestBudget(BudgetSettings(per_minute=1_000))
    policy = _policy("bad")
    with _source(langfuse, budget, settings=SourceSettings(max_window=180.0)) as source:
        history = History(source, policy, START, START + MINUTES * 60)
        engine = Replay(policy)
        for item in history.records():
            list(engine.feed(item))
            if engine.finished:
                break
    assert engine.outcome() == "rolled_back"
    assert history.polls < MINUTES * 60 / 180


def test_the_request_budget_is_waited_for(langfuse: LiveEmulator) -> None:
    clock = FakeClock()
    budget = RequestBudget(BudgetSettings(per_minute=4), clock=clock)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    with _source(langfuse, budget, settings=SourceSettings(max_window=600.0)) as source:
        history = History(
            source, _policy("good"), START, START + MINUTES * 60, clock=clock, sleep=sleep
        )
        records = list(history.records())
        spent = sum(source.request_counts.values())
    assert history.traces >= MINUTES * RATE - 10 and len(records) > history.traces
    assert waits and all(wait <= 60.0 for wait in waits)
    assert clock.now - 1_000.0 >= 60.0 * (spent // 4 - 1)  # never more than 4 a minute


def test_langfuse_down_ends_the_reading_after_a_few_tries(closed_url: str) -> None:
    clock = FakeClock()
    budget = RequestBudget(BudgetSettings(per_minute=1_000), clock=clock)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    with LangfuseSource(
        closed_url, "pk-lf-x", "sk-lf-x", budget=budget, rng=random.Random(5)
    ) as source:
        history = History(
            source, _policy("good"), START, START + 600, clock=clock, sleep=sleep, max_failures=3
        )
        with pytest.raises(BacktestError) as raised:
            list(history.records())
    assert not raised.value.permanent
    assert "connection failed" in str(raised.value) and "4 failed polls in a row" in str(
        raised.value
    )
    assert len(waits) == 3 and waits == sorted(waits)  # the source's growing backoff


@pytest.fixture
def closed_url() -> str:
    from tests.controller.release_rig import closed_port_url  # noqa: PLC0415

    return closed_port_url()
