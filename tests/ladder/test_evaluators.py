"""Reading a score out of what an evaluator answers, and calling the HTTP and Python
evaluators."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import httpx
import pytest
from langfuse import Evaluation as SdkEvaluation

from controller.ladder.evaluators import (
    Evaluation,
    EvaluatorError,
    EvaluatorLoadError,
    FunctionCache,
    HttpScorer,
    PythonScorer,
    pick,
)
from policies.model import HttpEvaluator


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (0.75, Evaluation(0.75, "NUMERIC")),
        (1, Evaluation(1.0, "NUMERIC")),
        (True, Evaluation(1.0, "BOOLEAN")),
        ({"value": 0.5, "comment": "half"}, Evaluation(0.5, "NUMERIC", "half")),
        ({"name": "correctness", "value": False}, Evaluation(0.0, "BOOLEAN")),
        (
            SdkEvaluation(name="correctness", value=0.25, comment="why"),
            Evaluation(0.25, "NUMERIC", "why"),
        ),
        (
            [{"name": "length", "value": 9}, SdkEvaluation(name="correctness", value=1.0)],
            Evaluation(1.0, "NUMERIC"),
        ),
    ],
)
def test_pick_reads_every_shape_an_evaluator_may_answer(answer: Any, expected: Evaluation) -> None:
    assert pick(answer, "correctness") == expected


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([{"name": "length", "value": 9}], "no evaluation named 'correctness' (got length)"),
        ({"name": "length", "value": 9}, "the evaluation is named 'length', not 'correctness'"),
        ({"score": 1}, "the evaluation has no value"),
        ({"value": "good"}, "the score 'good' is not a number"),
        (math.nan, "is not a finite number"),
        ("good", "cannot read a score from a str"),
        (None, "cannot read a score from a NoneType"),
    ],
)
def test_pick_refuses_what_is_not_the_metrics_score(answer: Any, message: str) -> None:
    with pytest.raises(EvaluatorError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pick(answer, "correctness")


def test_the_http_evaluator_posts_the_item_and_reads_the_answer() -> None:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"value": 0.5})

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        scorer = HttpScorer(HttpEvaluator(url="http://judge/score"), "correctness", http)
        evaluation = scorer(input={"q": 1}, output="a", expected_output="b", metadata={"m": 1})
    assert evaluation == Evaluation(0.5, "NUMERIC")
    assert seen == [{"input": {"q": 1}, "output": "a", "expectedOutput": "b", "metadata": {"m": 1}}]


@pytest.mark.parametrize(
    ("respond", "message"),
    [
        (lambda: httpx.Response(502), "the evaluator answered HTTP 502"),
        (lambda: httpx.Response(200, text="fine"), "the evaluator's answer is not JSON"),
    ],
)
def test_the_http_evaluators_failures_leave_the_item_unscored(respond: Any, message: str) -> None:
    with httpx.Client(transport=httpx.MockTransport(lambda _: respond())) as http:
        scorer = HttpScorer(HttpEvaluator(url="http://judge/score"), "correctness", http)
        with pytest.raises(EvaluatorError, match=message):
            scorer(input=1, output=2, expected_output=3, metadata=None)


def test_a_python_evaluator_is_imported_once() -> None:
    cache = FunctionCache()
    first = cache.get("tests.ladder.sample_evaluators:exact_match")
    module = sys.modules.pop("tests.ladder.sample_evaluators")
    try:
        assert cache.get("tests.ladder.sample_evaluators:exact_match") is first
        assert "tests.ladder.sample_evaluators" not in sys.modules
    finally:
        sys.modules["tests.ladder.sample_evaluators"] = module


def test_a_python_evaluator_that_cannot_load_says_why() -> None:
    with pytest.raises(EvaluatorLoadError, match="AttributeError"):
        FunctionCache().get("tests.ladder.sample_evaluators:nothing.here")


async def _async_score(**_: Any) -> dict[str, Any]:
    return {"value": 0.5}


def test_an_async_python_evaluator_is_awaited_and_an_exception_reported() -> None:
    assert PythonScorer(_async_score, "correctness")(
        input=1, output=2, expected_output=3, metadata=None
    ) == Evaluation(0.5, "NUMERIC")

    def broken(**_: Any) -> float:
        raise ZeroDivisionError("no")

    with pytest.raises(EvaluatorError, match="the evaluator raised ZeroDivisionError: no"):
        PythonScorer(broken, "correctness")(input=1, output=2, expected_output=3, metadata=None)
