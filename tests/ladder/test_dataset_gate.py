"""The dataset rung's runner against the emulator and an application with two arms on
loopback ports: verdicts, evaluators, failures, managed judges, cancelling, and the two
experiments as Langfuse lists them."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from controller.ladder import langfuse_api
from controller.ladder.dataset_gate import GateOutcome
from controller.ladder.experiment_spans import experiment_id
from tests.controller.source_support import add_fault
from tests.ladder.support import (
    FakeApp,
    Judge,
    exact,
    experiment_items,
    gate,
    make_dataset,
    right,
    since,
    stack,
    wait_for,
)

DATASET = "golden-qa"


def wrong_on(numbers: set[int], arm: str = "canary") -> Any:
    """The arm answers the questions ``numbers`` wrong; the other arm answers right."""

    def answer(called: str, payload: Any) -> tuple[int, Any]:
        number = int(payload["question"][1:])
        if called == arm and number in numbers:
            return 200, {"answer": "no idea"}
        return right(called, payload)

    return answer


def failing_on(numbers: set[int], arm: str = "canary", status: int = 503) -> Any:
    def answer(called: str, payload: Any) -> tuple[int, Any]:
        if called == arm and int(payload["question"][1:]) in numbers:
            return status, "upstream exploded"
        return right(called, payload)

    return answer


# ------------------------------------------------------------------------------ verdicts


def test_a_clearly_worse_candidate_is_blocked() -> None:
    with stack(FakeApp(answer=wrong_on(set(range(0, 40, 2))))) as s:
        make_dataset(s.emulator, DATASET, range(40))
        s.run(gate(evaluator={"http": {"url": f"{s.app_url}/evaluate"}}))
        result = s.outcome()
    assert result.outcome is GateOutcome.BLOCKED, result.reason
    assert "worse by more than tolerance 0.05" in result.reason
    assert result.reason.startswith("dataset golden-qa: 40 pairs, candidate - baseline = -0.5 ")
    summary = result.summary
    assert (summary["items"], summary["pairs"]) == (40, 40)
    assert (summary["candidateMean"], summary["baselineMean"]) == (0.5, 1.0)
    assert summary["estimate"] == -0.5
    assert summary["upper"] < -0.05  # the bound on the worse side, beyond tolerance
    assert summary["unscored"]["count"] == 0
    assert s.app.evaluations == 80


def test_an_equal_candidate_passes_over_sixty_items(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(langfuse_api, "ITEMS_PAGE", 7)  # the items come in ten pages
    with stack() as s:
        make_dataset(s.emulator, DATASET, range(64), archived=[60, 61])
        s.run(gate(minPairs=30))
        result = s.outcome()
    assert result.outcome is GateOutcome.PASSED, result.reason
    assert result.reason.startswith("dataset golden-qa: 62 pairs, candidate - baseline = +0 ")
    assert result.reason.endswith("within promote tolerance 0.05")
    assert result.summary["items"] == 62  # archived items are not run
    assert sorted({call.arm for call in s.app.calls}) == ["baseline", "canary"]
    assert len(s.app.calls) == 124


def test_the_two_runs_are_experiments_of_the_dataset_side_by_side() -> None:
    with stack(FakeApp(answer=failing_on({3}))) as s:
        make_dataset(s.emulator, DATASET, range(12))
        s.run(gate(), rollout=2, attempt=3)
        result = s.outcome(rollout=2, attempt=3)
        ids, names = result.summary["experimentIds"], result.summary["runNames"]
        with s.http() as http:
            dataset_id = http.get(f"/api/public/v2/datasets/{DATASET}").json()["id"]
            listed = http.get("/api/public/experiments", params={"fromStartTime": since()}).json()[
                "data"
            ]
            items = {arm: experiment_items(http, ids[arm]) for arm in ("baseline", "candidate")}
    assert names == {
        "baseline": "coalmine support-bot rollout 2 attempt 3 baseline",
        "candidate": "coalmine support-bot rollout 2 attempt 3 candidate",
    }
    assert ids["candidate"] == experiment_id("coalmine-local", dataset_id, names["candidate"])
    assert ids["baseline"] != ids["candidate"]
    assert sorted((e["name"], e["id"], e["itemCount"], e["datasetId"]) for e in listed) == [
        (names["baseline"], ids["baseline"], 12, dataset_id),
        (names["candidate"], ids["candidate"], 12, dataset_id),
    ]
    for arm, arm_items in items.items():
        by_item = {item["experimentItemId"]: item for item in arm_items}
        assert set(by_item) == {f"item-{n}" for n in range(12)}
        assert {item["environment"] for item in arm_items} == {"sdk-experiment"}
        assert {item["experimentDatasetId"] for item in arm_items} == {dataset_id}
        ok = by_item["item-5"]
        assert (ok["input"], ok["output"], ok["expectedOutput"]) == (
            {"question": "q5"},
            {"answer": "a5"},
            "a5",
        )
        assert [(s["name"], s["value"], s["source"]) for s in ok["scores"]] == [
            ("correctness", 1.0, "API")
        ]
        failed = by_item["item-3"]
        if arm == "candidate":  # the failed call: level ERROR, no score, the worst value
            assert (failed["level"], failed["scores"]) == ("ERROR", [])
        else:
            assert failed["level"] == "DEFAULT"
    # The app's own spans join the item's trace, under the task span.
    traceparents = {call.headers["traceparent"] for call in s.app.calls}
    item = items["candidate"][0]
    assert f"00-{item['traceId']}-{item['id']}-01" in traceparents
    assert result.summary["candidateFailed"] == 1


def test_a_dataset_named_like_a_folder_is_found() -> None:
    with stack() as s:
        make_dataset(s.emulator, "team/golden qa", range(10))
        s.run(gate(name="team/golden qa"))
        result = s.outcome()
    assert (result.summary["dataset"], result.summary["pairs"]) == ("team/golden qa", 10)
    assert result.summary["datasetId"]


def test_ensuring_a_run_again_does_not_run_it_twice() -> None:
    with stack() as s:
        make_dataset(s.emulator, DATASET, range(10))
        s.run(gate())
        s.run(gate())
        s.outcome()
        assert s.gates.result("support-bot", 1, 2, s.clock()) is None  # no such attempt
    assert len(s.app.calls) == 20


# ------------------------------------------------------------------------------ evaluators


def test_the_http_evaluator_may_answer_several_scores_and_fail_on_some() -> None:
    def evaluate(body: dict[str, Any]) -> tuple[int, Any]:
        if body["input"]["question"] == "q5":
            return 500, {"error": "judge down"}
        value = exact(body["output"], body["expectedOutput"])
        return 200, [{"name": "length", "value": 3}, {"name": "correctness", "value": value}]

    app = FakeApp(answer=wrong_on({1, 2, 3}), evaluate=evaluate)
    with stack(app) as s:
        make_dataset(s.emulator, DATASET, range(20))
        s.run(gate(evaluator={"http": {"url": f"{s.app_url}/evaluate"}}))
        result = s.outcome()
    summary = result.summary
    assert (summary["pairs"], summary["evaluator"]) == (19, "http")
    assert summary["candidateMean"] == 16 / 19
    unscored = summary["unscored"]
    assert (unscored["count"], unscored["itemIds"]) == (1, ["item-5"])
    assert unscored["reasons"] == {
        "baseline: evaluator failed": 1,
        "candidate: evaluator failed": 1,
    }
    assert unscored["firstDetail"] == "item item-5, baseline: the evaluator answered HTTP 500"


def test_python_evaluators_of_every_shape() -> None:
    with stack(FakeApp(answer=wrong_on(set(range(0, 30, 2))))) as s:
        make_dataset(s.emulator, DATASET, range(30))
        for attempt, function in enumerate(("exact_match", "as_bool", "several"), start=1):
            spec = f"tests.ladder.sample_evaluators:{function}"
            s.run(gate(evaluator={"python": spec}), attempt=attempt)
            result = s.outcome(attempt=attempt)
            assert result.outcome is GateOutcome.BLOCKED, (function, result.reason)
            assert (result.summary["candidateMean"], result.summary["baselineMean"]) == (0.5, 1)
            assert result.summary["evaluator"] == "python"


def test_an_evaluator_that_raises_leaves_its_items_unscored_and_reported() -> None:
    with stack() as s:
        make_dataset(s.emulator, DATASET, range(40))
        fragile = "tests.ladder.sample_evaluators:fragile"
        s.run(gate(evaluator={"python": fragile}))
        tolerated = s.outcome()
        s.run(gate(evaluator={"python": fragile}, maxUnscored=0.05), attempt=2)
        strict = s.outcome(attempt=2)
    unscored = tolerated.summary["unscored"]
    assert sorted(unscored["itemIds"]) == ["item-17", "item-27", "item-37", "item-7"]
    assert unscored["count"] == 4
    assert unscored["reasons"] == {
        "baseline: evaluator failed": 4,
        "candidate: evaluator failed": 4,
    }
    assert "the evaluator raised KeyError: 'rubric'" in unscored["firstDetail"]
    assert tolerated.summary["pairs"] == 36
    assert tolerated.outcome is GateOutcome.PASSED, tolerated.reason  # 4 of 40: maxUnscored 0.1
    assert strict.outcome is GateOutcome.INCONCLUSIVE
    assert "4 of 40 items are unscored or failed on both arms (maxUnscored 0.05)" in strict.reason


def test_a_score_outside_the_range_is_refused_and_counted() -> None:
    with stack() as s:
        make_dataset(s.emulator, DATASET, range(12))
        s.run(gate(evaluator={"python": "tests.ladder.sample_evaluators:out_of_range"}))
        result = s.outcome()
    assert result.summary["refused"] == 2
    assert result.summary["unscored"]["reasons"] == {
        "baseline: score outside the range": 1,
        "candidate: score outside the range": 1,
    }
    assert "score 5.0 outside 0..1" in result.summary["unscored"]["firstDetail"]


def test_a_python_evaluator_that_cannot_be_loaded_ends_the_run_inconclusive() -> None:
    specs = {
        "tests.ladder.sample_evaluators:missing": "AttributeError",
        "tests.ladder.no_such_module:evaluate": "ModuleNotFoundError",
        "tests.ladder.sample_evaluators:not_callable": "is not callable",
    }
    with stack() as s:
        make_dataset(s.emulator, DATASET, range(4))
        for attempt, (spec, why) in enumerate(specs.items(), start=1):
            s.run(gate(evaluator={"python": spec}), attempt=attempt)
            result = s.outcome(attempt=attempt)
            assert result.outcome is GateOutcome.INCONCLUSIVE
            assert f"python evaluator '{spec}'" in result.reason
            assert why in result.reason
    assert s.app.calls == []


# ------------------------------------------------------------------------------ failures


def test_a_failed_candidate_call_counts_as_the_worst_value() -> None:
    def answer(arm: str, payload: Any) -> tuple[int, Any]:
        if arm == "canary" and payload["question"] in ("q1", "q2"):
            return 503, "upstream exploded"
        if arm == "canary" and payload["question"] == "q3":
            return 404, {"detail": "not found"}
        return right(arm, payload)

    with stack(FakeApp(answer=answer)) as s:
        make_dataset(s.emulator, DATASET, range(20))
        s.run(gate())
        result = s.outcome()
    summary = result.summary
    assert (summary["pairs"], summary["candidateFailed"], summary["baselineFailed"]) == (20, 3, 0)
    assert summary["candidateMean"] == 17 / 20
    assert summary["unscored"]["count"] == 0  # a failed call is not unscored
    assert result.outcome is not GateOutcome.PASSED, result.reason


def test_both_arms_failing_every_call_never_passes() -> None:
    with stack(FakeApp(answer=lambda arm, payload: (500, "down"))) as s:
        make_dataset(s.emulator, DATASET, range(40))
        s.run(gate(minPairs=30))
        result = s.outcome()
    assert result.summary["bothFailed"] == 40
    assert result.outcome is GateOutcome.INCONCLUSIVE, result.reason
    assert "40 of 40 items are unscored or failed on both arms" in result.reason


def test_a_missing_dataset_is_inconclusive() -> None:
    with stack() as s:
        s.run(gate())
        result = s.outcome()
    assert result.outcome is GateOutcome.INCONCLUSIVE
    assert result.reason == (
        "dataset golden-qa: no dataset named 'golden-qa' in the Langfuse project "
        "(create it and its items first)"
    )
    assert s.app.calls == []


def test_a_dataset_without_active_items_is_inconclusive() -> None:
    with stack() as s:
        make_dataset(s.emulator, DATASET, range(3), archived=[0, 1, 2])
        s.run(gate())
        result = s.outcome()
    assert result.outcome is GateOutcome.INCONCLUSIVE
    assert result.reason == "dataset golden-qa: dataset 'golden-qa' has no active items"


def test_a_langfuse_refusal_is_inconclusive_naming_the_endpoint_and_status() -> None:
    with stack() as s:
        make_dataset(s.emulator, DATASET, range(6))
        with s.http() as http:
            add_fault(http, "POST:/api/public/otel=status:403")
        s.run(gate())
        result = s.outcome()
    assert result.outcome is GateOutcome.INCONCLUSIVE
    assert "Langfuse refused POST /api/public/otel/v1/traces: HTTP 403" in result.reason
    assert s.gates.request_counts[("otel_traces", "4xx")] >= 1


def test_temporary_langfuse_errors_are_tried_again() -> None:
    with stack() as s:
        make_dataset(s.emulator, DATASET, range(20))
        with s.http() as http:
            add_fault(http, "GET:/api/public/dataset-items=status:503,times:2")
            add_fault(http, "POST:/api/public/scores=status:429,times:3")
        s.run(gate(metric={"score": "correctness", "tolerance": 0.1}))
        result = s.outcome()
        with s.http() as http:
            add_fault(http, "GET:/api/public/projects=status:502")
        s.run(gate(), attempt=2)
        gave_up = s.outcome(attempt=2)
    assert result.outcome is GateOutcome.PASSED, result.reason
    assert s.gates.request_counts[("dataset_items", "5xx")] == 2
    assert s.gates.request_counts[("scores_write", "429")] == 3
    assert gave_up.outcome is GateOutcome.INCONCLUSIVE
    assert "GET /api/public/projects: HTTP 502" in gave_up.reason
    assert gave_up.reason.endswith("after 4 tries")


def test_a_hard_threshold_blocks_a_candidate_as_good_as_the_baseline() -> None:
    def answer(arm: str, payload: Any) -> tuple[int, Any]:
        if int(payload["question"][1:]) % 5 < 2:  # both arms wrong on 40%
            return 200, {"answer": "no idea"}
        return right(arm, payload)

    metric = {"score": "correctness", "tolerance": 0.05, "minScore": 0.8}
    with stack(FakeApp(answer=answer)) as s:
        make_dataset(s.emulator, DATASET, range(60))
        s.run(gate(minPairs=30))
        without = s.outcome()
        s.run(gate(minPairs=30, metric=metric), attempt=2)
        result = s.outcome(attempt=2)
    assert without.outcome is GateOutcome.PASSED, without.reason
    assert result.outcome is GateOutcome.BLOCKED
    assert result.reason == (
        "dataset golden-qa: candidate mean 0.6 over 60 pairs is below minScore 0.8"
    )


# ------------------------------------------------------------------------------ judges


def _judge_value(item: dict[str, Any]) -> float:
    return exact(item["output"], item["expectedOutput"])


def test_managed_judge_scores_are_read_back_into_a_verdict() -> None:
    with stack(FakeApp(answer=wrong_on(set(range(0, 30, 2))))) as s:
        make_dataset(s.emulator, DATASET, range(30))
        with Judge(s.emulator, "correctness", _judge_value):
            s.run(gate(evaluator={"langfuse": True}))
            result = s.outcome()
    assert result.outcome is GateOutcome.BLOCKED, result.reason
    summary = result.summary
    assert (summary["evaluator"], summary["pairs"], summary["candidateMean"]) == (
        "langfuse",
        30,
        0.5,
    )
    assert s.gates.request_counts[("scores", "2xx")] >= 1


def test_judge_scores_that_never_come_end_the_run_after_the_score_timeout() -> None:
    def candidate_only(item: dict[str, Any]) -> float | None:
        return _judge_value(item) if item["experimentName"].endswith("candidate") else None

    def judged_out_of_range(item: dict[str, Any]) -> float | None:
        return 7.0 if item["experimentItemId"] == "item-4" else _judge_value(item)

    with stack() as s:
        make_dataset(s.emulator, DATASET, range(20))
        with Judge(s.emulator, "correctness", candidate_only):
            s.run(gate(evaluator={"langfuse": True}, scoreTimeout="10m"))
            wait_for(
                "the run to read the candidate's scores",
                lambda: _candidate_read(s.gates.result("support-bot", 1, 1, s.clock())),
            )
            s.clock.advance(599)
            assert _waiting(s.gates.result("support-bot", 1, 1, s.clock()))
            s.clock.advance(2)
            result = s.outcome()
        with Judge(s.emulator, "correctness", judged_out_of_range):
            s.run(gate(evaluator={"langfuse": True}), attempt=2)
            refused = s.outcome(attempt=2)
    assert result.outcome is GateOutcome.INCONCLUSIVE, result.reason
    assert result.summary["unscored"]["count"] == 20
    assert result.summary["unscored"]["reasons"] == {
        "baseline: no judge score within scoreTimeout": 20
    }
    assert result.reason == "dataset golden-qa: 0 pairs of 20 items (20 unscored), need 10"
    assert refused.summary["refused"] == 2
    assert refused.summary["pairs"] == 19


def _candidate_read(result: Any) -> bool | None:
    """True once the run waits for scores and has every candidate score."""
    if not _waiting(result):
        return None
    reasons = result.summary["unscored"]["reasons"]
    return "candidate: awaiting a judge score" not in reasons or None


def _waiting(result: Any) -> bool | None:
    assert result is not None
    if result.outcome is not None:
        raise AssertionError(f"the run ended: {result.reason}")
    return result.summary["phase"] == "waiting for the judges' scores" or None


# ------------------------------------------------------------------------------ cancel


def test_cancel_stops_the_calls_and_the_writes() -> None:
    app = FakeApp(hold=threading.Event())
    with stack(app) as s:
        make_dataset(s.emulator, DATASET, range(10))
        s.run(gate(concurrency=1))
        wait_for("a call on each arm", lambda: len(app.arms_called()) == 2 or None)
        s.gates.cancel("support-bot")
        assert s.gates.result("support-bot", 1, 1, s.clock()) is None
        assert app.hold is not None
        app.hold.set()
        wait_for("the run's threads to end", lambda: not _run_threads() or None)
        with s.http() as http:
            listed = http.get("/api/public/experiments", params={"fromStartTime": since()})
    assert sorted(app.arms_called()) == ["baseline", "canary"]
    assert listed.json()["data"] == []  # the answers in flight were dropped, not recorded


def _run_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("coalmine-dataset")]
