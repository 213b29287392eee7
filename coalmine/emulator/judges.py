"""What Langfuse-managed evaluators (LLM-as-a-judge) write, as an admin route of the
emulator (``/emulator``, outside the public API, same Basic auth), so tests and demos
can play a judge:

- ``POST /emulator/eval-scores`` ``{traceId, observationId?, name, value, dataType?,
  comment?, metadata?, id?}`` saves a score with ``source`` EVAL, which the public API
  refuses on writes. As the worker's ``evalService`` writes them: no ``configId``, the
  environment of the judged observation (``default`` when there is none), the target
  trace and observation in ``metadata``. The value is checked as a public score's is
  (a finite number for NUMERIC, 0 or 1 for BOOLEAN, a string for CATEGORICAL); an
  ``id`` already stored is replaced, as a re-delivered judge job writes the same id.

Answered with the stored score as ``GET /api/public/v3/scores`` shows it (``core``,
``details``, ``subject``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import invalid
from coalmine.emulator.scores import NewScore, score_v3, store_scores, validate_score
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store
from coalmine.emulator.wire import now_ms

router = APIRouter(prefix="/emulator", dependencies=[Depends(require_project)])


class EvalScore(BaseModel):
    """A judge's score on a trace or one of its observations."""

    model_config = ConfigDict(extra="forbid")

    traceId: Annotated[str, Field(min_length=1)]  # noqa: N815
    observationId: str | None = None  # noqa: N815
    name: Annotated[str, Field(min_length=1)]
    value: float | bool | str
    dataType: Literal["NUMERIC", "BOOLEAN", "CATEGORICAL"] | None = None  # noqa: N815
    comment: str | None = None
    metadata: dict[str, Any] | None = None
    id: Annotated[str, Field(min_length=1)] | None = None


def _environment(store: Store, trace_id: str, observation_id: str | None) -> str:
    if observation_id is None:
        return "default"
    rows = store.query(
        "SELECT environment FROM observations WHERE id = ? AND trace_id = ?",
        [observation_id, trace_id],
    )
    return str(rows[0]["environment"]) if rows else "default"


@router.post("/eval-scores")
def save_eval_score(body: EvalScore, request: Request) -> dict[str, Any]:
    """Save a managed judge's score (source EVAL)."""
    store: Store = request.app.state.store
    settings: EmulatorSettings = request.app.state.settings
    received = now_ms()
    metadata = {
        "target_trace_id": body.traceId,
        **({"target_observation_id": body.observationId} if body.observationId else {}),
        **(body.metadata or {}),
    }
    value: float | str = body.value
    data_type = body.dataType
    if isinstance(body.value, bool):  # a BOOLEAN judge stores 1 or 0
        value, data_type = float(body.value), data_type or "BOOLEAN"
    payload = {
        field: given
        for field, given in {
            "id": body.id,
            "traceId": body.traceId,
            "observationId": body.observationId,
            "name": body.name,
            "value": value,
            "dataType": data_type,
            "comment": body.comment,
            "metadata": metadata,
            "environment": _environment(store, body.traceId, body.observationId),
        }.items()
        if given is not None
    }
    checked = validate_score(payload, received)
    if not isinstance(checked, NewScore):
        raise invalid(checked)
    score = dataclasses.replace(checked, source="EVAL")
    store_scores(store, [score], received)
    row = store.query("SELECT * FROM scores WHERE id = ?", [score.id])[0]
    return score_v3(row, ["core", "details", "subject"], settings.project_id)
