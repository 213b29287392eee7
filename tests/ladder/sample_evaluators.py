"""Python evaluators the dataset gate's tests name as ``module:function``, in the Langfuse
SDK's evaluator signature."""

from __future__ import annotations

import asyncio
from typing import Any

from langfuse import Evaluation

from tests.ladder.support import exact


def exact_match(*, input: Any, output: Any, expected_output: Any, metadata: Any) -> Evaluation:
    """The SDK's ``Evaluation``: 1 when the answer is the expected one."""
    return Evaluation(name="correctness", value=exact(output, expected_output), comment="exact")


def as_bool(*, output: Any, expected_output: Any, **_: Any) -> bool:
    """A bare bool (1 for true)."""
    return exact(output, expected_output) == 1.0


async def several(*, output: Any, expected_output: Any, **_: Any) -> list[dict[str, Any]]:
    """An async evaluator answering several scores; the gate takes its metric's."""
    await asyncio.sleep(0)
    value = exact(output, expected_output)
    return [{"name": "length", "value": 3.0}, {"name": "correctness", "value": value}]


def fragile(*, input: Any, output: Any, expected_output: Any, metadata: Any) -> float:
    """Raises on the questions whose number ends in 7."""
    if input["question"].endswith("7"):
        raise KeyError("rubric")
    return exact(output, expected_output)


def out_of_range(*, input: Any, **_: Any) -> float:
    """A score of 5 on a 0..1 metric for question 3, else 1."""
    return 5.0 if input["question"] == "q3" else 1.0


not_callable = 42
