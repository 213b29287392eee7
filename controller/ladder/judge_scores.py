"""The Langfuse-managed judges' scores on a run's items, read back.

A judge on the dataset's experiments writes its score asynchronously, with source EVAL,
named as the evaluator, on the item's task span (the experiment item's root
observation). ``read_judge_scores`` reads them for the traces still waiting
(``GET /api/public/v3/scores`` by trace id, name and source); a score elsewhere in the
trace is not the item's. Langfuse lists the newest first, so a judge's later score on
the same span wins. ``await_judge_scores`` reads again until every trace has its score
or the deadline passed, waiting ``interval`` seconds per batch of trace ids read
between two reads, so that a large dataset's reads keep within Langfuse's rate limits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from controller.ladder.langfuse_api import TRACE_BATCH, LadderApi, RunStoppedError

__all__ = ["await_judge_scores", "read_judge_scores"]


def read_judge_scores(
    api: LadderApi, waiting: Mapping[str, str], name: str, stop: threading.Event
) -> dict[str, object]:
    """Trace id to the value of the newest EVAL score ``name`` on its task span, for the
    ``waiting`` traces (trace id to task span id) that have one."""
    found: dict[str, object] = {}
    for score in api.eval_scores(list(waiting), name, stop):
        subject = score.get("subject")
        if not isinstance(subject, dict) or subject.get("kind") != "observation":
            continue
        trace_id = subject.get("traceId")
        if not isinstance(trace_id, str) or trace_id in found:
            continue
        if waiting.get(trace_id) == subject.get("id"):
            found[trace_id] = score.get("value")
    return found


def await_judge_scores(
    api: LadderApi,
    waiting: Mapping[str, str],
    name: str,
    *,
    take: Callable[[str, object], None],
    clock: Callable[[], float],
    deadline: float,
    interval: float,
    stop: threading.Event,
) -> set[str]:
    """Hand each score's value to ``take(trace_id, value)`` as it comes; the traces left
    without one when ``clock()`` reaches ``deadline``. ``RunStoppedError`` when stopped."""
    left = dict(waiting)
    while left:
        batches = -(-len(left) // TRACE_BATCH)
        for trace_id, value in read_judge_scores(api, left, name, stop).items():
            del left[trace_id]
            take(trace_id, value)
        if not left or clock() >= deadline:
            break
        if stop.wait(interval * batches):
            raise RunStoppedError
    return set(left)
