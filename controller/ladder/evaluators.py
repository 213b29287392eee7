"""The dataset gate's own evaluators: an HTTP endpoint or a Python function scores each
answer, as the Langfuse SDK's item evaluators do.

Both are called with the item's input, the arm's output, the item's expected output and
metadata, and may answer a number, a bool (1 for true), an object with ``value`` (a
dict, or the SDK's ``Evaluation``), or a list of those, of which the one named as the
metric's score is taken. Anything else, an exception, a timeout or an error answer
leaves that item without a score (``EvaluatorError``, reported with the item).

A Python evaluator is imported once per process (``FunctionCache``); one that cannot be
imported ends the run without a verdict (``EvaluatorLoadError``). It is called from the
run's worker threads, several items at a time; an ``async`` function runs on an event
loop of its own per call.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from policies.model import HttpEvaluator

__all__ = [
    "Evaluation",
    "EvaluatorError",
    "EvaluatorLoadError",
    "FunctionCache",
    "HttpScorer",
    "PythonScorer",
    "Scorer",
    "pick",
]

MAX_COMMENT_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One answer's score, as written to Langfuse."""

    value: float
    data_type: str
    """``NUMERIC``, or ``BOOLEAN`` for a bool."""
    comment: str | None = None


class EvaluatorError(Exception):
    """No score for this answer; the message says why."""


class EvaluatorLoadError(Exception):
    """The Python evaluator cannot be imported."""


class Scorer(Protocol):
    def __call__(
        self, *, input: Any, output: Any, expected_output: Any, metadata: Any
    ) -> Evaluation: ...


# ----------------------------------------------------------------------------- results


def pick(result: object, score: str) -> Evaluation:
    """The evaluation called ``score`` out of what an evaluator answered."""
    if isinstance(result, list | tuple):
        named = [entry for entry in result if _name(entry) == score]
        if not named:
            names = sorted({str(_name(entry)) for entry in result})
            raise EvaluatorError(
                f"no evaluation named '{score}' (got {', '.join(names) or 'none'})"
            )
        return _evaluation(named[0])
    name = _name(result)
    if name is not None and name != score:
        raise EvaluatorError(f"the evaluation is named '{name}', not '{score}'")
    return _evaluation(result)


def _name(entry: object) -> object:
    if isinstance(entry, Mapping):
        return entry.get("name")
    if isinstance(entry, bool | int | float):
        return None
    return getattr(entry, "name", None)


def _evaluation(entry: object) -> Evaluation:
    comment: object = None
    if isinstance(entry, bool | int | float):
        value: object = entry
    elif isinstance(entry, Mapping):
        if "value" not in entry:
            raise EvaluatorError("the evaluation has no value")
        value, comment = entry["value"], entry.get("comment")
    elif hasattr(entry, "value"):
        value, comment = entry.value, getattr(entry, "comment", None)
    else:
        raise EvaluatorError(f"cannot read a score from a {type(entry).__name__}")
    if isinstance(value, bool):
        number, data_type = float(value), "BOOLEAN"
    elif isinstance(value, int | float):
        number, data_type = float(value), "NUMERIC"
    else:
        raise EvaluatorError(f"the score {value!r} is not a number")
    if not math.isfinite(number):
        raise EvaluatorError(f"the score {number} is not a finite number")
    text = comment[:MAX_COMMENT_CHARS] if isinstance(comment, str) and comment else None
    return Evaluation(number, data_type, text)


# ----------------------------------------------------------------------------- HTTP


class HttpScorer:
    """POSTs ``{"input", "output", "expectedOutput", "metadata"}`` to the endpoint."""

    def __init__(self, evaluator: HttpEvaluator, score: str, client: httpx.Client) -> None:
        self.url = evaluator.url
        self.timeout = evaluator.timeout
        self.score = score
        self._http = client

    def __call__(
        self, *, input: Any, output: Any, expected_output: Any, metadata: Any
    ) -> Evaluation:
        body = {
            "input": input,
            "output": output,
            "expectedOutput": expected_output,
            "metadata": metadata,
        }
        try:
            response = self._http.post(self.url, json=body, timeout=self.timeout)
        except httpx.TimeoutException:
            raise EvaluatorError(f"the evaluator gave no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as error:
            raise EvaluatorError(f"the evaluator is unreachable ({type(error).__name__})") from None
        if not 200 <= response.status_code < 300:
            raise EvaluatorError(f"the evaluator answered HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise EvaluatorError("the evaluator's answer is not JSON") from None
        return pick(answer, self.score)


# ----------------------------------------------------------------------------- Python


class FunctionCache:
    """Python evaluators by ``module:function``, each imported once."""

    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def get(self, spec: str) -> Callable[..., Any]:
        """The function ``spec`` names; ``EvaluatorLoadError`` when it cannot be loaded."""
        with self._lock:
            found = self._functions.get(spec)
            if found is None:
                found = self._functions[spec] = _load(spec)
            return found


def _load(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise EvaluatorLoadError(
            f"python evaluator '{spec}' cannot be loaded: {type(error).__name__}: {error}"
        ) from None
    except Exception as error:  # the module's own code failed while importing
        raise EvaluatorLoadError(
            f"python evaluator '{spec}' failed to import: {type(error).__name__}: {error}"
        ) from None
    if not callable(found):
        raise EvaluatorLoadError(f"python evaluator '{spec}' is not callable")
    function: Callable[..., Any] = found
    return function


class PythonScorer:
    """Calls a function with the SDK's evaluator keywords."""

    def __init__(self, function: Callable[..., Any], score: str) -> None:
        self.function = function
        self.score = score

    def __call__(
        self, *, input: Any, output: Any, expected_output: Any, metadata: Any
    ) -> Evaluation:
        try:
            result = self.function(
                input=input, output=output, expected_output=expected_output, metadata=metadata
            )
            if inspect.isawaitable(result):
                result = asyncio.run(_wait(result))
        except Exception as error:  # the evaluator's own failure: this item is not scored
            raise EvaluatorError(f"the evaluator raised {type(error).__name__}: {error}") from None
        return pick(result, self.score)


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
