"""One item through one arm: the call, and the score written for its answer.

The item's input is POSTed as JSON to the arm's URL plus the gate's path, with the
arm's headers and a ``traceparent`` naming the item's task span (the app's own spans
join the item's trace under it). The answer's body, JSON when it parses and text
otherwise, is the item's output. Any answer other than 2xx, a timeout or a connection
failure is a failed call: the side takes the worst value in the paired test. A 4xx
counts too: an app that refuses the inputs (a wrong path, say) must not look like one
that answers them.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from controller.ladder.endpoints import ArmEndpoint
from controller.ladder.evaluators import Evaluation
from controller.ladder.experiment_spans import ItemIds

__all__ = ["call_arm", "score_body"]


def call_arm(
    http: httpx.Client,
    endpoint: ArmEndpoint,
    path: str,
    payload: Any,
    *,
    timeout: float,
    ids: ItemIds,
) -> tuple[Any, str | None]:
    """The arm's answer to one input, and why the call failed (None: it did not)."""
    headers = dict(endpoint.headers)
    headers["traceparent"] = ids.traceparent
    url = endpoint.url.rstrip("/") + path
    try:
        response = http.post(url, json=payload, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        return None, f"no answer within {timeout:g}s"
    except httpx.HTTPError as error:
        return None, f"the call failed ({type(error).__name__})"
    try:
        output: Any = response.json()
    except ValueError:
        output = response.text
    if not 200 <= response.status_code < 300:
        return output, f"HTTP {response.status_code}"
    return output, None


def score_body(
    ids: ItemIds, name: str, evaluation: Evaluation, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The score of one answer as the SDK runner writes an evaluator's: an observation
    score on the item's task span."""
    # One id per task span and score name: a write tried again replaces, never doubles.
    digest = hashlib.sha256(f"{ids.task_span_id}/{name}".encode()).hexdigest()
    body: dict[str, Any] = {
        "id": str(uuid.UUID(digest[:32])),
        "traceId": ids.trace_id,
        "observationId": ids.task_span_id,
        "name": name,
        "value": evaluation.value,
        "dataType": evaluation.data_type,
        "metadata": dict(metadata),
    }
    if evaluation.comment is not None:
        body["comment"] = evaluation.comment
    return body
